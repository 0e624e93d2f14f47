//! Errors: [`RedisBrokerError`] for building a broker, and the mapping of Redis failures onto
//! the engine's `BrokerError` (connection trouble is `Unavailable`, anything else `Internal`).

use chat_core::BrokerError;
use redis::{ErrorKind, RedisError, ServerErrorKind};

/// What can go wrong building a [`RedisBroker`](crate::RedisBroker).
#[derive(Debug, thiserror::Error)]
pub enum RedisBrokerError {
    /// The URL is not a Redis URL (`redis://host:port/db`) or a list of sentinels redis-rs
    /// accepts.
    #[error("invalid Redis URL: {0}")]
    InvalidUrl(#[source] RedisError),
    /// A setting is out of range.
    #[error("invalid setting: {0}")]
    Config(&'static str),
}

/// Maps a Redis error: what a retry later may cure is `Unavailable`, the rest `Internal`.
pub(crate) fn from_redis(e: RedisError) -> BrokerError {
    let transient = e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
        || matches!(
            e.kind(),
            ErrorKind::Io
                | ErrorKind::Client
                | ErrorKind::Server(
                    ServerErrorKind::BusyLoading
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::ClusterDown
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::ReadOnly
                )
        );
    if transient {
        BrokerError::Unavailable(e.to_string())
    } else {
        BrokerError::Internal(format!("redis: {e}"))
    }
}

/// An operation that did not finish within the op timeout.
pub(crate) fn timed_out(what: &str) -> BrokerError {
    BrokerError::Unavailable(format!("redis did not answer {what} in time"))
}

/// A reply that is not what the scripts return.
pub(crate) fn bad_reply(what: &str) -> BrokerError {
    BrokerError::Internal(format!("unexpected reply from redis to {what}"))
}
