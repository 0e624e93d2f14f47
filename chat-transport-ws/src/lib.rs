//! `chat-transport-ws`: the WebSocket transport of the chat engine.
//!
//! One `chat/1` frame is one WebSocket text message holding one JSON object (PROTOCOL.md §1).
//! This crate only frames: every protocol rule lives in `chat-core`'s
//! [`Engine::serve`](chat_core::Engine::serve), which each connection is handed to.
//!
//! * [`router`] / [`handler`]: the endpoint for hosts that run axum already.
//! * [`WsServer`]: a standalone listener (plain or TLS), to which the host adds its own routes
//!   (the example server's browser page at `GET /`).
//! * [`connect`] / [`connect_tls`]: the Rust client, the core's
//!   [`Client`](chat_core::client::Client) over a WebSocket.
//!
//! What the transport does on the wire: the subprotocol `chat.v1` is selected when the client
//! offers it; a binary message is `bad_frame`; a message over the engine's `max_frame` is
//! refused from its header, before its payload is read (`frame_too_large`, close 1009); a text
//! message that is not UTF-8 closes the connection with 1007; WebSocket pings are answered with
//! pongs and count as signs of life; when the engine ends a session (after its `bye`) a close
//! frame is sent and the peer's close awaited briefly.
//!
//! # Why tokio-tungstenite
//!
//! * Conformance: tungstenite passes the Autobahn test suite, the reference for RFC 6455.
//! * Speed and memory: zero-copy inbound messages (`Bytes` out), explicit flushing so a batch
//!   of frames goes out in few writes (64 KiB each), and small buffers at rest: tungstenite
//!   defaults to 128 KiB per read and write buffer; here its read buffer is 128 bytes (fed from
//!   8 KiB socket reads) and the write buffer exists only while a batch is written (see
//!   [`WsOptions`]). Outbound text frames, the bulk of the traffic, are formatted by this crate
//!   straight into that write buffer (a 2–10 byte header, then the payload); tungstenite reads
//!   and sends the control frames.
//! * One stack: the server does the HTTP upgrade itself (hyper) and drives tokio-tungstenite's
//!   `WebSocketStream` directly, the client uses the same version (0.29, the one axum 0.8.9's
//!   `ws` feature would pin, which this crate does not enable), so a single WebSocket
//!   implementation is compiled.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use chat_transport_ws::{connect, WsOptions, WsServer};
//!
//! let engine = chat_core::Engine::builder().build().await.unwrap();
//! let server = WsServer::bind("127.0.0.1:0", engine.clone(), WsOptions::default()).await.unwrap();
//! let url = format!("ws://{}/ws", server.local_addr());
//! tokio::spawn(server.run());
//!
//! let mut alice = connect(&url, Some("alice"), None).await.unwrap();
//! alice.join("lobby", None).await.unwrap();
//! let seq = alice.send("lobby", serde_json::json!({"text": "hello"})).await.unwrap();
//! assert_eq!(seq, Some(1));
//! loop {
//!     let event = alice.next_event().await.unwrap();
//!     if event["type"] == "message" {
//!         assert_eq!(event["body"]["text"], "hello");
//!         break;
//!     }
//! }
//! engine.shutdown().await;
//! # }
//! ```

#![warn(missing_docs)]

mod adapter;
mod batch;
mod client;
mod error;
mod handler;
mod options;
mod server;
#[cfg(feature = "tls")]
pub mod tls;
mod upgrade;

pub use client::connect;
#[cfg(feature = "tls")]
pub use client::connect_tls;
pub use error::Error;
pub use handler::{handler, router, WsState};
pub use options::{WsOptions, SUBPROTOCOL};
pub use server::WsServer;
#[cfg(feature = "tls")]
pub use tokio_rustls::rustls;
