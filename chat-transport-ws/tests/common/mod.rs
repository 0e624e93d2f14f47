//! Helpers shared by the behaviour tests: a server on a loopback port, a raw WebSocket client
//! (tokio-tungstenite, to send what the real client never would), and waiting with a timeout.

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use chat_core::client::{Client, Event};
use chat_core::Engine;
use chat_transport_ws::{WsOptions, WsServer};
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A raw WebSocket client connection.
pub type Raw = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long any awaited event may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// Awaits `f`, failing the test after [`WAIT`].
pub async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(WAIT, f).await.expect("timed out")
}

/// A default engine (in-memory broker, anonymous users).
pub async fn engine() -> Engine {
    Engine::builder().build().await.expect("engine")
}

/// Serves `engine` on 127.0.0.1:0 with `options`; returns the address.
pub async fn serve_with(engine: &Engine, options: WsOptions) -> SocketAddr {
    let server = WsServer::bind("127.0.0.1:0", engine.clone(), options).await.expect("bind");
    let addr = server.local_addr();
    tokio::spawn(server.run());
    addr
}

/// Serves `engine` with default options.
pub async fn serve(engine: &Engine) -> SocketAddr {
    serve_with(engine, WsOptions::default()).await
}

/// The endpoint's URL.
pub fn url(addr: SocketAddr) -> String {
    format!("ws://{addr}/ws")
}

/// A raw connection, offering `chat.v1`.
pub async fn raw(addr: SocketAddr) -> Raw {
    let mut request = url(addr).into_client_request().expect("request");
    request.headers_mut().insert("sec-websocket-protocol", "chat.v1".parse().expect("header"));
    within(tokio_tungstenite::connect_async(request)).await.expect("connect").0
}

/// Sends one text message.
pub async fn send_text(ws: &mut Raw, text: impl Into<String>) {
    within(ws.send(Message::text(text.into()))).await.expect("send");
}

/// A raw connection that has said hello as `user`.
pub async fn raw_hello(addr: SocketAddr, user: &str) -> Raw {
    let mut ws = raw(addr).await;
    send_text(&mut ws, format!(r#"{{"type":"hello","id":1,"protocol":1,"user":"{user}"}}"#)).await;
    let welcome = next_json(&mut ws).await.expect("welcome");
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    ws
}

/// The next text message, parsed; `None` when the connection closes first.
pub async fn next_json(ws: &mut Raw) -> Option<Value> {
    within(async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => return Some(serde_json::from_str(&text).expect("json")),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => {}
            }
        }
    })
    .await
}

/// Reads until the server's close frame; returns it (`None` if the socket ended without one).
/// Text messages on the way are returned too.
pub async fn until_close(ws: &mut Raw) -> (Vec<Value>, Option<CloseFrame>) {
    within(async {
        let mut texts = Vec::new();
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => texts.push(serde_json::from_str(&text).expect("json")),
                Some(Ok(Message::Close(frame))) => return (texts, frame),
                None | Some(Err(_)) => return (texts, None),
                Some(Ok(_)) => {}
            }
        }
    })
    .await
}

/// Asserts that the connection got the fatal error `code`, then `bye` with `reason`, then a
/// close frame with `close_code`.
pub async fn expect_fatal(ws: &mut Raw, code: &str, reason: &str, close_code: u16) {
    let (texts, close) = until_close(ws).await;
    assert_eq!(texts.len(), 2, "{texts:?}");
    assert_eq!((texts[0]["type"].as_str(), texts[0]["code"].as_str()), (Some("error"), Some(code)), "{texts:?}");
    assert_eq!((texts[1]["type"].as_str(), texts[1]["reason"].as_str()), (Some("bye"), Some(reason)), "{texts:?}");
    let close = close.expect("a close frame");
    assert_eq!(u16::from(close.code), close_code);
}

/// The next event of the core client that `pick` takes (others are skipped).
pub async fn next_where<T>(client: &mut Client, pick: impl Fn(Event) -> Option<T>) -> T {
    within(async {
        loop {
            if let Some(found) = pick(client.next_event().await.expect("connection open")) {
                return found;
            }
        }
    })
    .await
}

/// The next `message` event of the core client.
pub async fn next_message(client: &mut Client) -> chat_core::client::Message {
    next_where(client, |e| match e {
        Event::Message(m) => Some(m),
        _ => None,
    })
    .await
}

/// The next `bye` event of the core client.
pub async fn next_bye(client: &mut Client) -> chat_core::client::Bye {
    next_where(client, |e| match e {
        Event::Bye(bye) => Some(bye),
        _ => None,
    })
    .await
}

/// A WebSocket handshake written by hand on a raw TCP socket (`extra` holds more header lines,
/// each ending in `\r\n`). Returns the socket and the response head.
pub async fn handshake(addr: SocketAddr, extra: &str) -> (TcpStream, String) {
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    );
    request_head(addr, &request).await
}

/// Writes `request` (a whole HTTP request head) on a new raw TCP socket; returns the socket and
/// the response head.
pub async fn request_head(addr: SocketAddr, request: &str) -> (TcpStream, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = within(TcpStream::connect(addr)).await.expect("connect");
    within(tcp.write_all(request.as_bytes())).await.expect("write");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let n = within(tcp.read(&mut byte)).await.expect("read");
        assert_eq!(n, 1, "connection closed in the response head: {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    (tcp, String::from_utf8(head).expect("ascii head"))
}

/// A hand-made WebSocket connection (see [`handshake`]) on which `user` said `hello` and got
/// `welcome`.
pub async fn raw_tcp_hello(addr: SocketAddr, user: &str) -> TcpStream {
    use tokio::io::AsyncWriteExt;
    let (mut tcp, head) = handshake(addr, "").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let hello = format!(r#"{{"type":"hello","id":1,"protocol":1,"user":"{user}"}}"#);
    within(tcp.write_all(&masked_frame(0x1, hello.as_bytes()))).await.expect("write");
    let (opcode, welcome) = read_frame(&mut tcp).await.expect("welcome");
    assert!(opcode == 0x1 && welcome.starts_with(br#"{"type":"welcome""#), "{:?}", String::from_utf8_lossy(&welcome));
    tcp
}

/// One masked client frame (FIN set) with `opcode` (RSV bits may be added to it) and
/// `payload`, built by hand.
pub fn masked_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= 0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Reads one (unmasked) server frame from a raw socket: (opcode, payload); `None` at the end.
pub async fn read_frame(tcp: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    read_frame_whole(tcp).await.map(|(first, payload)| (first & 0x0f, payload))
}

/// Reads one (unmasked) server frame from a raw socket: (its first byte, with FIN, the RSV
/// bits and the opcode; payload); `None` at the end.
pub async fn read_frame_whole(tcp: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    within(async {
        let mut head = [0u8; 2];
        tcp.read_exact(&mut head).await.ok()?;
        let len = match head[1] & 0x7f {
            126 => {
                let mut n = [0u8; 2];
                tcp.read_exact(&mut n).await.ok()?;
                u64::from(u16::from_be_bytes(n))
            }
            127 => {
                let mut n = [0u8; 8];
                tcp.read_exact(&mut n).await.ok()?;
                u64::from_be_bytes(n)
            }
            n => u64::from(n),
        };
        let mut payload = vec![0u8; usize::try_from(len).ok()?];
        tcp.read_exact(&mut payload).await.ok()?;
        Some((head[0], payload))
    })
    .await
}
