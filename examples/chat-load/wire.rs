//! The load generator's own `chat/1` connections, over TCP or WebSocket.
//!
//! The core's `Client` is built for applications: two tasks per connection, a JSON parse of each
//! frame's head, a channel per event and (on TCP) a 256-byte read buffer, so roughly one read
//! call per frame. A load generator has to read millions of frames a second on one core, so it
//! talks to the socket itself: large reads, whole frames handed to a callback as borrowed
//! slices, and outbound frames coalesced into one write per batch. Over WebSocket it does the
//! same with its own minimal framing (RFC 6455: an HTTP upgrade, then frames; ours are masked
//! with a zero key, the server's are not masked): a tungstenite client decoding every message
//! on one core was the bottleneck of the WS fan-out, not the server. With `--ws-deflate` it
//! offers permessage-deflate and inflates the compressed messages it receives (without context
//! takeover, as the server agrees: one inflater per connection, reset per message).

use std::io;

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::scan::{self, Kind};

/// Where a `chat/1` server listens.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// `host:port` of the length-prefixed TCP transport.
    Tcp(String),
    /// `ws://host:port/ws`.
    Ws(String),
    /// `ws://host:port/ws`, offering permessage-deflate (the server must accept it).
    WsDeflate(String),
}

/// How frames are delimited on the connection.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// A 4-byte big-endian length, then the frame.
    Prefix,
    /// WebSocket frames, one text message each.
    Ws,
}

/// What inflates compressed messages (RSV1) on a connection that negotiated permessage-deflate.
struct Inflater {
    codec: flate2::Decompress,
    out: Vec<u8>,
}

impl Inflater {
    /// `payload` (a compressed message, its tail removed) inflated.
    fn inflate(&mut self, payload: &[u8]) -> io::Result<&[u8]> {
        self.codec.reset(false);
        self.out.clear();
        for input in [payload, &[0, 0, 0xff, 0xff][..]] {
            let mut input = input;
            while !input.is_empty() {
                self.out.reserve(input.len().max(256) * 4);
                let before = self.codec.total_in();
                self.codec
                    .decompress_vec(input, &mut self.out, flate2::FlushDecompress::Sync)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                input = &input[(self.codec.total_in() - before) as usize..];
            }
        }
        Ok(&self.out)
    }
}

/// The read half of a connection.
pub struct Reader {
    io: OwnedReadHalf,
    buf: BytesMut,
    chunk: usize,
    framing: Framing,
    inflater: Option<Inflater>,
}

/// The write half: frames are queued with [`push`](Writer::push) and written by
/// [`flush`](Writer::flush), one write call per batch.
pub struct Writer {
    io: OwnedWriteHalf,
    buf: Vec<u8>,
    framing: Framing,
}

/// Opens a connection. `chunk` is the read size: large for the load, small for idle mode.
pub async fn open(endpoint: &Endpoint, chunk: usize) -> io::Result<(Reader, Writer)> {
    let (addr, framing) = match endpoint {
        Endpoint::Tcp(addr) => (addr.as_str(), Framing::Prefix),
        Endpoint::Ws(url) | Endpoint::WsDeflate(url) => {
            let authority = url.strip_prefix("ws://").and_then(|rest| rest.split('/').next()).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("{url}: expected ws://host:port/path"))
            })?;
            (authority, Framing::Ws)
        }
    };
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut buf = BytesMut::new();
    let mut inflater = None;
    if let Endpoint::Ws(url) | Endpoint::WsDeflate(url) = endpoint {
        let deflate = matches!(endpoint, Endpoint::WsDeflate(_));
        let path = url.strip_prefix("ws://").and_then(|rest| rest.find('/').map(|i| &rest[i..])).unwrap_or("/");
        let offer =
            if deflate { "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" } else { "" };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: chat.v1\r\n{offer}\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > 16 * 1024 || stream.read_buf(&mut buf).await? == 0 {
                return Err(io::Error::other(format!("{url}: no WebSocket upgrade response")));
            }
        };
        if !buf.starts_with(b"HTTP/1.1 101") {
            return Err(io::Error::other(format!("{url}: upgrade refused: {}", frame_text(&buf[..end]))));
        }
        if deflate {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            if !head.contains("sec-websocket-extensions: permessage-deflate") {
                return Err(io::Error::other(format!(
                    "{url}: permessage-deflate not accepted (chat-server --ws-deflate)"
                )));
            }
            inflater = Some(Inflater { codec: flate2::Decompress::new(false), out: Vec::new() });
        }
        buf.advance(end); // frames the server sent right after its response
    }
    let (r, w) = stream.into_split();
    Ok((Reader { io: r, buf, chunk, framing, inflater }, Writer { io: w, buf: Vec::new(), framing }))
}

/// One whole frame at the start of `buf`: (header length, payload length, opcode with RSV1 when
/// set), or `None` when more bytes are needed.
fn next_frame(framing: Framing, buf: &[u8]) -> Option<(usize, usize, u8)> {
    match framing {
        Framing::Prefix => {
            let n = u32::from_be_bytes(buf.get(..4)?.try_into().ok()?) as usize;
            Some((4, n, 1))
        }
        Framing::Ws => {
            let (b0, b1) = (*buf.first()?, *buf.get(1)?);
            let (header, n) = match b1 & 0x7f {
                126 => (4, u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize),
                127 => (10, u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize),
                n => (2, n as usize),
            };
            let masked = if b1 & 0x80 != 0 { 4 } else { 0 }; // a server does not mask; skip it if it did
            Some((header + masked, n, b0 & 0x4f))
        }
    }
}

impl Reader {
    /// Waits for data, then calls `f` with every whole frame that has arrived (the payload of
    /// every text message on WebSocket). `Ok(false)` once the connection is closed.
    pub async fn read_batch(&mut self, mut f: impl FnMut(&[u8])) -> io::Result<bool> {
        let Reader { io, buf, chunk, framing, inflater } = self;
        if buf.capacity() - buf.len() < *chunk / 4 {
            buf.reserve(*chunk);
        }
        if io.read_buf(buf).await? == 0 {
            return Ok(false);
        }
        let mut pos = 0;
        while let Some((header, n, opcode)) = next_frame(*framing, &buf[pos..]) {
            if buf.len() - pos < header + n {
                buf.reserve(header + n);
                break;
            }
            match opcode {
                1 => f(&buf[pos + header..pos + header + n]),
                0x41 => {
                    let inflater =
                        inflater.as_mut().ok_or_else(|| io::Error::other("a compressed message, not negotiated"))?;
                    f(inflater.inflate(&buf[pos + header..pos + header + n])?);
                }
                8 => return Ok(false), // close
                _ => {}                // pings, pongs, binary: not in this protocol's traffic
            }
            pos += header + n;
        }
        buf.advance(pos);
        Ok(true)
    }
}

impl Writer {
    /// Queues one frame (its JSON bytes).
    pub fn push(&mut self, payload: &[u8]) {
        let buf = &mut self.buf;
        match self.framing {
            Framing::Prefix => buf.put_u32(payload.len() as u32),
            Framing::Ws => {
                // FIN + text, then the length with the mask bit and a zero masking key (a
                // client must mask; a zero key leaves the payload as it is).
                buf.put_u8(0x81);
                match payload.len() {
                    n if n < 126 => buf.put_u8(0x80 | n as u8),
                    n if n <= 0xffff => {
                        buf.put_u8(0x80 | 126);
                        buf.put_u16(n as u16);
                    }
                    n => {
                        buf.put_u8(0x80 | 127);
                        buf.put_u64(n as u64);
                    }
                }
                buf.put_u32(0);
            }
        }
        buf.extend_from_slice(payload);
    }

    /// Writes every queued frame.
    pub async fn flush(&mut self) -> io::Result<()> {
        self.io.write_all(&self.buf).await?;
        self.buf.clear();
        Ok(())
    }

    /// Closes the connection politely.
    pub async fn close(&mut self) {
        if self.framing == Framing::Ws {
            // A close frame with no code, masked with a zero key.
            self.buf.extend_from_slice(&[0x88, 0x80, 0, 0, 0, 0]);
            let _ = self.flush().await;
        }
        let _ = self.io.shutdown().await;
    }
}

/// The outcome of a handshake: the latest seq of each joined room, in the order given.
pub struct Session {
    pub reader: Reader,
    pub writer: Writer,
    pub joined_seqs: Vec<u64>,
}

/// Opens a connection, says `hello` as `user` (with `token` when given) and joins `rooms`, all
/// in one write (requests take effect in order), then waits for `welcome` and every `joined`.
pub async fn handshake(
    endpoint: &Endpoint,
    chunk: usize,
    user: &str,
    token: Option<&str>,
    rooms: &[String],
) -> io::Result<Session> {
    let (mut reader, mut writer) = open(endpoint, chunk).await?;
    let mut hello = serde_json::json!({"type": "hello", "id": 1, "protocol": 1, "user": user});
    if let Some(token) = token {
        hello["token"] = token.into();
    }
    writer.push(hello.to_string().as_bytes());
    for (i, room) in rooms.iter().enumerate() {
        let join = serde_json::json!({"type": "join", "id": 2 + i as u64, "room": room});
        writer.push(join.to_string().as_bytes());
    }
    writer.flush().await?;
    let mut joined_seqs = vec![0; rooms.len()];
    let mut waiting = rooms.len() + 1;
    let mut failure: Option<String> = None;
    while waiting > 0 && failure.is_none() {
        let open = reader
            .read_batch(|frame| {
                let Ok(v) = serde_json::from_slice::<serde_json::Value>(frame) else { return };
                let ty = v["type"].as_str().unwrap_or("");
                match (ty, v["id"].as_u64()) {
                    ("welcome", Some(1)) => waiting -= 1,
                    ("joined", Some(id)) if id >= 2 => {
                        if let Some(slot) = joined_seqs.get_mut(id as usize - 2) {
                            *slot = v["seq"].as_u64().unwrap_or(0);
                        }
                        waiting -= 1;
                    }
                    ("error", _) | ("bye", _) => failure = Some(frame_text(frame)),
                    _ => {}
                }
            })
            .await?;
        if !open {
            failure.get_or_insert_with(|| "closed during the handshake".into());
        }
    }
    match failure {
        Some(why) => Err(io::Error::other(format!("{user}: {why}"))),
        None => Ok(Session { reader, writer, joined_seqs }),
    }
}

/// Holds a connection open, answering the server's heartbeat pings, until `stop` fires.
pub async fn hold(mut session: Session, mut stop: tokio::sync::watch::Receiver<bool>) -> io::Result<()> {
    loop {
        let mut pong = false;
        tokio::select! {
            read = session.reader.read_batch(|frame| pong |= scan::kind(frame) == Kind::Ping) => {
                if !read? {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed by the server"));
                }
            }
            _ = stop.changed() => break,
        }
        if pong {
            session.writer.push(br#"{"type":"pong"}"#);
            session.writer.flush().await?;
        }
    }
    session.writer.close().await;
    Ok(())
}

/// A frame as text for an error message.
pub fn frame_text(frame: &[u8]) -> String {
    String::from_utf8_lossy(&frame[..frame.len().min(300)]).into_owned()
}
