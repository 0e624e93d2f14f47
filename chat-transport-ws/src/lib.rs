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
//!   [`Client`](chat_core::client::Client) over a WebSocket; they fail with the core's
//!   [`ClientError`](chat_core::client::ClientError) like every transport's client ([`Error`]
//!   is the server side's).
//! * [`ConnectionHandler`] / [`router_with`]: the same WebSocket with something other than the
//!   engine on each connection (the Autobahn testee's echo, `examples/autobahn-testee.rs`).
//!
//! What the transport does on the wire: the subprotocol `chat.v1` is selected when the client
//! offers it; a binary message is `bad_frame`; a message over the engine's `max_frame` is
//! refused from its header, before its payload is read (`frame_too_large`, close 1009); a text
//! message that is not UTF-8 closes the connection with 1007; WebSocket pings are answered with
//! pongs and count as signs of life; when the engine ends a session (after its `bye`) a close
//! frame is sent and the peer's close awaited briefly.
//!
//! What a connection may hold before it is a session is bounded: connections beyond
//! [`WsOptions::connection_limits`] are answered `503` before any session exists, and the
//! engine's handshake deadline (`Config::handshake_timeout`, from accept to `welcome`) covers
//! [`WsServer`]'s TLS handshake and HTTP upgrade, whose request head is capped at
//! [`MAX_HEADER_BYTES`].
//!
//! # Framing: our own on the server, tokio-tungstenite on the client
//!
//! * The server reads and writes RFC 6455 frames itself (frame.rs, adapter.rs): the opening
//!   handshake is hyper's upgrade plus a few header checks, and a server's frames are simple
//!   (unmasked, one text frame per message). What it buys, measured: no read buffer kept
//!   between frames (tungstenite's grows to the largest message a connection ever received
//!   and stays there: 59.9 KB per connection after one 60 KB message), one copy per outbound
//!   frame straight into the socket's write buffer (`BatchedIo`), 0.87× the TCP transport's
//!   fan-out. It enforces what a server must: masked client frames, no reserved bits, whole
//!   and small control frames, fragments reassembled within `max_frame`, UTF-8 text (1007),
//!   close codes echoed, pings answered.
//! * The client ([`connect`]) uses tokio-tungstenite 0.29 (the version axum 0.8.9's `ws`
//!   feature would pin; this crate does not enable it), whose conformance is tested against
//!   the Autobahn suite.
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
//!     if let chat_core::client::Event::Message(message) = alice.next_event().await.unwrap() {
//!         assert_eq!(message.body["text"], "hello");
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
mod connection;
mod deflate;
mod error;
mod frame;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod handler;
mod options;
mod server;
#[cfg(feature = "tls")]
pub mod tls;
mod upgrade;

pub use client::connect;
#[cfg(feature = "tls")]
pub use client::connect_tls;
pub use connection::{router_with, ConnectionHandler, Incoming, Message};
pub use deflate::DeflateOptions;
pub use error::Error;
pub use handler::{handler, router, WsState};
pub use options::{WsOptions, SUBPROTOCOL};
pub use server::{WsServer, MAX_HEADER_BYTES};
#[cfg(feature = "tls")]
pub use tokio_rustls::rustls;
