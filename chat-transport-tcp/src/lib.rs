//! `chat-transport-tcp`: the chat engine over TCP (and TLS), framed as PROTOCOL.md §1 says —
//! a 4-byte big-endian length, then that many bytes of JSON.
//!
//! This crate only frames. Each connection's bytes become whole frames for
//! [`Engine::serve`](chat_core::Engine::serve), and the frames the engine writes become bytes;
//! the handshake, heartbeats, limits and errors all happen in `chat-core`, exactly as for the
//! WebSocket transport. Likewise [`connect`] wraps the core's generic
//! [`Client`](chat_core::client::Client) around a framed socket.
//!
//! * Server: [`TcpServer`] (bind, optional [`TlsConfig`], `run` until the engine shuts down),
//!   or [`serve_connection`] for a stream accepted elsewhere.
//! * Client: [`connect`], [`connect_tls`], [`connect_io`], which fail with the core's
//!   [`ClientError`](chat_core::client::ClientError) like every transport's client
//!   ([`Error`] is the server side's).
//! * Framing: [`FrameCodec`]; an oversized length prefix is refused (`frame_too_large`) on the
//!   prefix alone, without reading or allocating its body.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use chat_core::client::Event;
//! use chat_core::Engine;
//! use chat_transport_tcp::{connect, TcpServer};
//! use serde_json::json;
//!
//! let engine = Engine::builder().build().await.expect("in-memory broker");
//! let server = TcpServer::bind("127.0.0.1:0", engine.clone()).await?;
//! let addr = server.local_addr()?;
//! tokio::spawn(server.run());
//!
//! let mut alice = connect(addr, Some("alice"), None).await?;
//! assert_eq!(alice.welcome().user, "alice");
//! alice.join("lobby", None).await?;
//! let seq = alice.send("lobby", json!({"text": "hello over TCP"})).await?;
//! assert_eq!(seq, Some(1));
//! // Alice's own arrival, then her message, come back as events.
//! assert!(matches!(alice.next_event().await?, Event::MemberJoined(m) if m.user == "alice"));
//! let Event::Message(message) = alice.next_event().await? else { panic!("a message") };
//! assert_eq!((message.seq, &message.body["text"]), (Some(1), &json!("hello over TCP")));
//!
//! engine.shutdown().await;
//! let Event::Bye(bye) = alice.next_event().await? else { panic!("bye") };
//! assert_eq!((bye.reason.as_str(), bye.reconnect), ("shutdown", true));
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod client;
mod codec;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod server;
#[cfg(feature = "tls")]
mod tls;

#[cfg(feature = "tls")]
pub use client::connect_tls;
pub use client::{connect, connect_io, CLIENT_MAX_FRAME};
pub use codec::{FrameCodec, PREFIX_LEN};
pub use error::Error;
pub use server::{serve_connection, TcpServer};
#[cfg(feature = "tls")]
pub use tls::{client_config_from_ca_file, client_config_from_ca_pem, TlsConfig};
/// The rustls version this crate uses, for building [`TlsConfig`] and client configurations.
#[cfg(feature = "tls")]
pub use tokio_rustls::rustls;
