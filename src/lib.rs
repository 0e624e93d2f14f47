//! `chat-engine`: one dependency for the whole engine.
//!
//! Re-exports the parts so that a host application can depend on this crate alone:
//! [`core`] (the engine, protocol, brokers, stores, auth, hooks), [`tcp`] and [`ws`] (the
//! transports), [`redis`] and [`nats`] (the Redis and NATS JetStream brokers for running many
//! nodes), and the stores that keep
//! conversations durably: [`sqlite`] (an embedded database file) and [`postgres`] (one database
//! for a cluster). The examples (`chat-server`, `chat-client`, `chat-load`) and the benches
//! live here too.
//!
//! Each part but the core is a cargo feature, all on by default: `tcp`, `ws`, `axum` (re-exports
//! the axum that [`ws::router`] returns a `Router` of), `tls`, `redis`, `nats`, `jwt`
//! (`core::JwtAuthenticator`), `sqlite`, `postgres`, `metrics` (`core::metrics`: counters and
//! histograms through the `metrics` facade, for whatever recorder the host installs). A host
//! that needs less turns the defaults off:
//! `chat-engine = { version = "0.1", default-features = false, features = ["ws"] }` builds the
//! engine and the WebSocket transport, and no Redis, NATS, TLS, JWT, metrics or database code.

#[cfg(feature = "axum")]
pub use axum;
#[cfg(feature = "nats")]
pub use chat_broker_nats as nats;
#[cfg(feature = "redis")]
pub use chat_broker_redis as redis;
pub use chat_core as core;
#[cfg(feature = "postgres")]
pub use chat_store_postgres as postgres;
#[cfg(feature = "sqlite")]
pub use chat_store_sqlite as sqlite;
#[cfg(feature = "tcp")]
pub use chat_transport_tcp as tcp;
#[cfg(feature = "ws")]
pub use chat_transport_ws as ws;

pub use chat_core::{async_trait, Config, Engine, MemoryBroker};

/// The README's Rust examples run as doc-tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
