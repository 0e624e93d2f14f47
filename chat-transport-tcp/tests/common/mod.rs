//! Helpers shared by the behaviour tests: an engine behind a real listener on 127.0.0.1:0, a
//! raw framed socket to poke at the server byte by byte, and timeouts instead of sleeps.

#![allow(dead_code)] // each test binary uses a different subset

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use chat_core::{Config, Engine};
use chat_transport_tcp::TcpServer;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long any awaited event may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(5);

/// Awaits `fut`, failing the test if it takes longer than [`WAIT`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// An engine with default settings except those `tune` changes.
pub async fn engine(tune: impl FnOnce(&mut Config)) -> Engine {
    Engine::builder().tune(tune).build().await.expect("engine")
}

/// Serves `engine` on a fresh loopback port; returns the address.
pub async fn serve(engine: &Engine) -> SocketAddr {
    let server = TcpServer::bind("127.0.0.1:0", engine.clone()).await.expect("bind");
    let addr = server.local_addr().expect("local_addr");
    tokio::spawn(server.run());
    addr
}

/// A default engine served on a fresh port.
pub async fn server() -> (Engine, SocketAddr) {
    let engine = engine(|_| {}).await;
    let addr = serve(&engine).await;
    (engine, addr)
}

/// A plain socket speaking the framing by hand.
pub struct Raw {
    pub stream: TcpStream,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        Raw { stream: within("connect", TcpStream::connect(addr)).await.expect("connect") }
    }

    /// Connects and completes `hello` as `user`.
    pub async fn hello(addr: SocketAddr, user: &str) -> Raw {
        let mut raw = Raw::connect(addr).await;
        raw.send_json(json!({"type": "hello", "id": 1, "protocol": 1, "user": user})).await;
        let welcome = raw.recv().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        raw
    }

    /// Writes bytes as they are (no prefix added).
    pub async fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Writes one frame: its length prefix, then `frame`.
    pub async fn send(&mut self, frame: &[u8]) {
        let mut bytes = (frame.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(frame);
        self.write(&bytes).await;
    }

    pub async fn send_json(&mut self, frame: Value) {
        self.send(frame.to_string().as_bytes()).await;
    }

    /// The next frame from the server, parsed; fails on timeout or close.
    pub async fn recv(&mut self) -> Value {
        within("a frame", async {
            let mut prefix = [0u8; 4];
            self.stream.read_exact(&mut prefix).await.expect("a frame, not a close");
            let mut frame = vec![0u8; u32::from_be_bytes(prefix) as usize];
            self.stream.read_exact(&mut frame).await.expect("a whole frame");
            serde_json::from_slice(&frame).expect("the server sends JSON")
        })
        .await
    }

    /// Expects an `error` with `code` (and returns it).
    pub async fn expect_error(&mut self, code: &str) -> Value {
        let error = self.recv().await;
        assert_eq!((&error["type"], &error["code"]), (&json!("error"), &json!(code)), "{error}");
        error
    }

    /// Expects `bye` with `reason`, then the close.
    pub async fn expect_bye(&mut self, reason: &str) {
        let bye = self.recv().await;
        assert_eq!((&bye["type"], &bye["reason"]), (&json!("bye"), &json!(reason)), "{bye}");
        self.expect_closed().await;
    }

    /// Expects the fatal error `code`, then `bye` with `reason`, then the close.
    pub async fn expect_fatal(&mut self, code: &str, reason: &str) {
        self.expect_error(code).await;
        self.expect_bye(reason).await;
    }

    /// Expects the server to close the connection, with nothing more sent.
    pub async fn expect_closed(&mut self) {
        let mut buf = [0u8; 64];
        let n = within("the close", self.stream.read(&mut buf)).await.unwrap_or(0);
        assert_eq!(n, 0, "expected the close, got {:?}", String::from_utf8_lossy(&buf[..n]));
    }

    /// Checks the connection still works: a `ping` with an id gets its `pong`.
    pub async fn expect_usable(&mut self, id: u64) {
        self.send_json(json!({"type": "ping", "id": id})).await;
        let pong = self.recv().await;
        assert_eq!((&pong["type"], &pong["id"]), (&json!("pong"), &json!(id)), "{pong}");
    }
}
