//! The load generator's own `chat/1` connections, over TCP or WebSocket.
//!
//! The core's `Client` is built for applications: two tasks per connection, a JSON parse of each
//! frame's head, a channel per event and (on TCP) a 256-byte read buffer, so roughly one read
//! call per frame. A load generator has to read millions of frames a second on one core, so it
//! talks to the socket itself: large reads, whole frames handed to a callback as borrowed
//! slices, and outbound frames coalesced into one write per batch.

use std::io;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::stream::{SplitSink, SplitStream};
use futures::{FutureExt, SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::scan::{self, Kind};

/// Where a `chat/1` server listens.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// `host:port` of the length-prefixed TCP transport.
    Tcp(String),
    /// `ws://host:port/ws`.
    Ws(String),
}

type Ws = WebSocketStream<TcpStream>;

/// The read half of a connection.
pub enum Reader {
    Tcp { io: OwnedReadHalf, buf: BytesMut, chunk: usize },
    Ws(SplitStream<Ws>),
}

/// The write half: frames are queued with [`push`](Writer::push) and written by
/// [`flush`](Writer::flush), one write call per batch on TCP.
pub enum Writer {
    Tcp { io: OwnedWriteHalf, buf: Vec<u8> },
    Ws { sink: SplitSink<Ws, Message>, pending: Vec<Bytes> },
}

/// Opens a connection. `chunk` is the read size: large for the load, small for idle mode.
pub async fn open(endpoint: &Endpoint, chunk: usize) -> io::Result<(Reader, Writer)> {
    match endpoint {
        Endpoint::Tcp(addr) => {
            let stream = TcpStream::connect(addr.as_str()).await?;
            stream.set_nodelay(true)?;
            let (r, w) = stream.into_split();
            Ok((Reader::Tcp { io: r, buf: BytesMut::new(), chunk }, Writer::Tcp { io: w, buf: Vec::new() }))
        }
        Endpoint::Ws(url) => {
            let authority = url.strip_prefix("ws://").and_then(|rest| rest.split('/').next()).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("{url}: expected ws://host:port/path"))
            })?;
            let stream = TcpStream::connect(authority).await?;
            stream.set_nodelay(true)?;
            let config = WebSocketConfig::default()
                .read_buffer_size(chunk.max(1024))
                .write_buffer_size(chunk.max(1024))
                .max_write_buffer_size(64 << 20);
            let (socket, _) = tokio_tungstenite::client_async_with_config(url.as_str(), stream, Some(config))
                .await
                .map_err(io::Error::other)?;
            let (sink, stream) = socket.split();
            Ok((Reader::Ws(stream), Writer::Ws { sink, pending: Vec::new() }))
        }
    }
}

impl Reader {
    /// Waits for data, then calls `f` with every whole frame that has arrived. `Ok(false)` once
    /// the connection is closed.
    pub async fn read_batch(&mut self, mut f: impl FnMut(&[u8])) -> io::Result<bool> {
        match self {
            Reader::Tcp { io, buf, chunk } => {
                if buf.capacity() - buf.len() < *chunk / 4 {
                    buf.reserve(*chunk);
                }
                if io.read_buf(buf).await? == 0 {
                    return Ok(false);
                }
                let mut pos = 0;
                while buf.len() - pos >= 4 {
                    let n = u32::from_be_bytes([buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]]) as usize;
                    if buf.len() - pos - 4 < n {
                        buf.reserve(n + 4);
                        break;
                    }
                    f(&buf[pos + 4..pos + 4 + n]);
                    pos += 4 + n;
                }
                buf.advance(pos);
                Ok(true)
            }
            Reader::Ws(stream) => {
                if !ws_one(stream.next().await, &mut f)? {
                    return Ok(false);
                }
                // Whatever tungstenite has already buffered, without another wake-up.
                for _ in 0..1024 {
                    match stream.next().now_or_never() {
                        Some(item) => {
                            if !ws_one(item, &mut f)? {
                                return Ok(false);
                            }
                        }
                        None => break,
                    }
                }
                Ok(true)
            }
        }
    }
}

fn ws_one(
    item: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    f: &mut impl FnMut(&[u8]),
) -> io::Result<bool> {
    match item {
        Some(Ok(Message::Text(text))) => {
            f(text.as_bytes());
            Ok(true)
        }
        Some(Ok(Message::Close(_))) | None => Ok(false),
        Some(Ok(_)) => Ok(true),
        Some(Err(e)) => Err(io::Error::other(e)),
    }
}

impl Writer {
    /// Queues one frame (its JSON bytes).
    pub fn push(&mut self, payload: &[u8]) {
        match self {
            Writer::Tcp { buf, .. } => {
                buf.put_u32(payload.len() as u32);
                buf.extend_from_slice(payload);
            }
            Writer::Ws { pending, .. } => pending.push(Bytes::copy_from_slice(payload)),
        }
    }

    /// Writes every queued frame.
    pub async fn flush(&mut self) -> io::Result<()> {
        match self {
            Writer::Tcp { io, buf } => {
                io.write_all(buf).await?;
                buf.clear();
                Ok(())
            }
            Writer::Ws { sink, pending } => {
                for frame in pending.drain(..) {
                    let text = Utf8Bytes::try_from(frame).map_err(io::Error::other)?;
                    sink.feed(Message::Text(text)).await.map_err(io::Error::other)?;
                }
                sink.flush().await.map_err(io::Error::other)
            }
        }
    }

    /// Closes the connection politely.
    pub async fn close(&mut self) {
        match self {
            Writer::Tcp { io, .. } => {
                let _ = io.shutdown().await;
            }
            Writer::Ws { sink, .. } => {
                let _ = sink.close().await;
            }
        }
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
