//! [`RedisBroker`] and its builder: the settings a host may tune, and `attach`, which connects
//! one engine (a node) to Redis.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chat_core::broker::{DeliverySink, Origin};
use chat_core::{Broker, BrokerError, BrokerNode};

use crate::error::RedisBrokerError;
use crate::node::RedisNode;
use crate::primary::Locator;

/// Everything a host may tune; see [`RedisBrokerBuilder`] for each one's meaning and default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settings {
    pub(crate) key_prefix: String,
    pub(crate) presence_ttl: Duration,
    pub(crate) op_timeout: Duration,
    pub(crate) reconnect_max_delay: Duration,
    pub(crate) default_history_ttl: Duration,
    pub(crate) replicas_to_acknowledge: u32,
}

impl Settings {
    /// How often a node refreshes its liveness and sweeps dead nodes: a quarter of the presence
    /// expiry, so a dead node's sessions are gone within the expiry.
    pub(crate) fn heartbeat_interval(&self) -> Duration {
        self.presence_ttl / 4
    }
}

/// The chat engine's [`Broker`] on Redis. Clones share one configuration; every engine that
/// attaches gets its own connections.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use chat_broker_redis::RedisBroker;
/// use chat_core::Engine;
///
/// let broker = RedisBroker::builder("redis://127.0.0.1:6379/")
///     .key_prefix("chat:")
///     .presence_ttl(Duration::from_secs(30))
///     .build()?;
/// let engine = Engine::builder().node_id("node-1").broker(broker).build().await?;
/// // ... hand connections to `engine.serve(inbound, outbound, conn)` ...
/// engine.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RedisBroker {
    locator: Arc<Locator>,
    settings: Arc<Settings>,
}

impl RedisBroker {
    /// A broker on the Redis at `url`, with default settings. `url` is one server,
    /// `redis://[[user]:password@]host:port/db`; a primary managed by Redis Sentinel,
    /// `redis+sentinel://[[user]:password@]host:port[,host:port…]/service[/db]`: the hosts are
    /// sentinels (give all of them, or at least a majority), `service` is the name they monitor
    /// the primary under, and the credentials and database are the primary's (sentinels
    /// without a password); each node asks the sentinels where the primary is whenever its
    /// connection drops, so it follows a failover; or a Redis Cluster,
    /// `redis+cluster://[[user]:password@]host:port[,host:port…]`: the hosts are some of its
    /// nodes (the cluster's map is read from the first that answers), the credentials every
    /// node's.
    ///
    /// ```
    /// use chat_broker_redis::RedisBroker;
    ///
    /// assert!(RedisBroker::new("redis://127.0.0.1:6379/0").is_ok());
    /// assert!(RedisBroker::new("redis+sentinel://10.0.0.1:26379,10.0.0.2:26379,10.0.0.3:26379/chat").is_ok());
    /// assert!(RedisBroker::new("redis+sentinel://10.0.0.1:26379").is_err(), "the service name is missing");
    /// assert!(RedisBroker::new("redis+cluster://10.0.0.1:7000,10.0.0.2:7000,10.0.0.3:7000").is_ok());
    /// ```
    pub fn new(url: &str) -> Result<Self, RedisBrokerError> {
        Self::builder(url).build()
    }

    /// Starts building a broker on the Redis at `url` (see [`new`](Self::new) for its forms).
    pub fn builder(url: impl Into<String>) -> RedisBrokerBuilder {
        RedisBrokerBuilder {
            url: url.into(),
            settings: Settings {
                key_prefix: "chat:".to_owned(),
                presence_ttl: Duration::from_secs(30),
                op_timeout: Duration::from_secs(2),
                reconnect_max_delay: Duration::from_secs(1),
                default_history_ttl: Duration::from_secs(24 * 3600),
                replicas_to_acknowledge: 0,
            },
        }
    }
}

#[async_trait]
impl Broker for RedisBroker {
    async fn attach(
        &self,
        node: &str,
        sink: Arc<dyn DeliverySink>,
        origin: Option<Arc<dyn Origin>>,
    ) -> Result<Arc<dyn BrokerNode>, BrokerError> {
        let node = RedisNode::attach(self.locator.clone(), self.settings.clone(), node, sink, origin).await?;
        Ok(Arc::new(node))
    }
}

/// Builds a [`RedisBroker`]; see [`RedisBroker::builder`].
#[derive(Debug, Clone)]
pub struct RedisBrokerBuilder {
    url: String,
    settings: Settings,
}

impl RedisBrokerBuilder {
    /// Prefix of every key and channel, so that several clusters (or tests) can share one
    /// Redis. No braces. Default `chat:`.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.settings.key_prefix = prefix.into();
        self
    }

    /// How long the sessions of a node that died stay in presence, at most. Default 30 s.
    pub fn presence_ttl(mut self, ttl: Duration) -> Self {
        self.settings.presence_ttl = ttl;
        self
    }

    /// The longest any one Redis operation may take before it fails with
    /// `BrokerError::Unavailable`. Default 2 s.
    pub fn op_timeout(mut self, timeout: Duration) -> Self {
        self.settings.op_timeout = timeout;
        self
    }

    /// The longest wait between two reconnection attempts. Default 1 s.
    pub fn reconnect_max_delay(mut self, delay: Duration) -> Self {
        self.settings.reconnect_max_delay = delay;
        self
    }

    /// How long the epoch of a room that has no message yet is kept (publishing sets every
    /// room key's expiry to the engine's `history_ttl`). Default 24 h.
    pub fn default_history_ttl(mut self, ttl: Duration) -> Self {
        self.settings.default_history_ttl = ttl;
        self
    }

    /// How many replicas must have a stored message before the sender is told `sent`
    /// (Redis's `WAIT` after each publish, within half the op timeout; fewer in time is
    /// `unavailable`, and a resend with the same key is then answered with the same seq).
    /// Default 0: `sent` once the primary stored it.
    ///
    /// Replication is asynchronous: without this, a primary that fails over (or that was cut
    /// off, and takes writes until Sentinel demotes it) can lose messages it acknowledged;
    /// those losses are announced (a new epoch), not silent, but the sender was told `sent`.
    /// With 1, `sent` means two copies. The cost: each batch of a room's publishes waits for a
    /// replica's acknowledgement (`WAIT` on the node's publishing connection), so a room's
    /// publishing slows to about one replica round trip per batch; and with no replica
    /// reachable every send fails.
    pub fn replicas_to_acknowledge(mut self, replicas: u32) -> Self {
        self.settings.replicas_to_acknowledge = replicas;
        self
    }

    /// Checks the settings and the URL. Nothing is connected until an engine attaches.
    pub fn build(self) -> Result<RedisBroker, RedisBrokerError> {
        let s = &self.settings;
        if s.key_prefix.contains(['{', '}']) {
            return Err(RedisBrokerError::Config("key_prefix must not contain braces"));
        }
        if s.presence_ttl < Duration::from_millis(100) {
            return Err(RedisBrokerError::Config("presence_ttl must be at least 100 ms"));
        }
        if s.op_timeout.is_zero() || s.reconnect_max_delay.is_zero() || s.default_history_ttl < Duration::from_millis(1)
        {
            return Err(RedisBrokerError::Config(
                "op_timeout, reconnect_max_delay and default_history_ttl must be > 0",
            ));
        }
        let locator = Locator::parse(&self.url)?;
        Ok(RedisBroker { locator: Arc::new(locator), settings: Arc::new(self.settings) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates() {
        assert!(RedisBroker::new("redis://127.0.0.1:1/").is_ok());
        assert!(matches!(RedisBroker::new("http://x"), Err(RedisBrokerError::InvalidUrl(_))));
        let bad = RedisBroker::builder("redis://127.0.0.1/").key_prefix("{x}").build();
        assert!(matches!(bad, Err(RedisBrokerError::Config(_))));
        let bad = RedisBroker::builder("redis://127.0.0.1/").presence_ttl(Duration::ZERO).build();
        assert!(matches!(bad, Err(RedisBrokerError::Config(_))));
    }
}
