//! `chat-engine`: one dependency for the whole engine.
//!
//! Re-exports the parts so that a host application can depend on this crate alone:
//! [`core`] (the engine, protocol, brokers, stores, auth, hooks), [`tcp`] and [`ws`] (the
//! transports), [`redis`] (the Redis broker for running many nodes), and the stores that keep
//! conversations durably: [`sqlite`] (an embedded database file) and [`postgres`] (one database
//! for a cluster). The examples (`chat-server`, `chat-client`, `chat-load`) and the benches
//! live here too.

pub use chat_broker_redis as redis;
pub use chat_core as core;
pub use chat_store_postgres as postgres;
pub use chat_store_sqlite as sqlite;
pub use chat_transport_tcp as tcp;
pub use chat_transport_ws as ws;

pub use chat_core::{async_trait, Config, Engine, MemoryBroker};

/// The README's Rust examples run as doc-tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
