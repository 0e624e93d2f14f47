//! `chat-core`: everything of the chat engine that is not a socket.
//!
//! A host application builds one [`Engine`] per process (a node), then hands every connection
//! to [`Engine::serve`] as a `Stream` of inbound frames and a `Sink` of outbound frames; the
//! transport crates (`chat-transport-tcp`, `chat-transport-ws`) do exactly that. Everything the
//! wire protocol `chat/1` says happens here, once: the handshake, heartbeats, rooms, ordered
//! fan-out, history and recovery, presence, idempotent sends, limits and errors.
//!
//! Several engines attached to one [`MemoryBroker`] form a cluster inside one process; across
//! processes a broker such as Redis plays that part through the same [`Broker`] trait. A
//! [`Store`] (given with [`EngineBuilder::store`]) keeps conversations durably beside the
//! broker: `sent` then means committed, and history outlives the broker's state.
//! Transports share [`ConnectionLimits`] (how many connections a node holds, in total and per IP
//! address) and [`io::WriteBuffer`], the outbound buffer that turns a batch of frames into
//! few writes and holds nothing while a connection is quiet.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use chat_core::{auth::JwtAuthenticator, Engine, MemoryBroker};
//!
//! let engine = Engine::builder()
//!     .node_id("node-1")
//!     .broker(MemoryBroker::new())
//!     .authenticator(JwtAuthenticator::new(b"a long random secret"))
//!     .tune(|c| c.history_size = 500)
//!     .build()
//!     .await
//!     .unwrap();
//! // ... hand connections to `engine.serve(inbound, outbound, conn)` ...
//! engine.shutdown().await;
//! # }
//! ```

#![warn(missing_docs)]

pub mod auth;
pub mod broker;
mod bucket;
pub mod client;
mod config;
pub mod direct;
mod driver;
mod engine;
mod frames;
mod heartbeat;
pub mod hooks;
pub mod io;
mod keeper;
mod limits;
mod metered;
pub mod metrics;
mod notices;
mod outbox;
pub mod protocol;
mod rooms;
mod session;
pub mod store;
mod time;
mod transport;

#[doc(hidden)]
#[cfg(feature = "bench")]
#[doc(hidden)]
pub mod bench {
    //! What the benches and the fuzzers reach inside the engine (the `bench` feature; not an
    //! API): the frame encoders and fan-out through the real delivery path.
    pub use crate::frames::*;
    pub use crate::rooms::bench::Fanout;
}

/// The attribute the [`Authenticator`], [`Authorizer`] and [`Hooks`] traits are written with:
/// `#[chat_core::async_trait]` on an `impl` of one of them.
pub use async_trait::async_trait;
#[cfg(feature = "jwt")]
pub use auth::JwtAuthenticator;
pub use auth::{
    valid_user_name, Action, AllowAll, AllowAnonymous, AuthError, Authenticator, Authorizer, Credentials, Identity,
    Refusal,
};
pub use broker::memory::{MemoryBroker, MemoryStats};
pub use broker::{Broker, BrokerError, BrokerNode};
pub use config::{Config, RequestCosts};
pub use engine::{Engine, EngineBuilder, EngineError, Sender, Stats};
pub use hooks::{Hooks, NoHooks};
pub use limits::{ConnectionLimits, ConnectionPermit, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_IP};
pub use protocol::{ByeReason, ErrorCode, RoomName};
pub use store::memory::MemoryStore;
pub use store::{Record, Retention, Store, StoreError};
pub use transport::{ConnInfo, Inbound};
