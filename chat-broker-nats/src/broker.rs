//! [`NatsBroker`] and its builder: the settings a host may tune, and `attach`, which connects
//! one engine (a node) to NATS.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chat_core::broker::{DeliverySink, Origin};
use chat_core::{Broker, BrokerError, BrokerNode};

use crate::node::NatsNode;

/// Everything a host may tune; see [`NatsBrokerBuilder`] for each one's meaning and default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settings {
    pub(crate) urls: Vec<String>,
    pub(crate) prefix: String,
    pub(crate) replicas: usize,
    pub(crate) presence_ttl: Duration,
    pub(crate) op_timeout: Duration,
}

impl Settings {
    /// How often a node refreshes its presence entries: a quarter of their expiry.
    pub(crate) fn heartbeat_interval(&self) -> Duration {
        self.presence_ttl / 4
    }
}

/// What is wrong with a [`NatsBroker`]'s configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NatsBrokerError {
    /// The server list is not `nats://HOST:PORT[,nats://HOST:PORT…]`.
    #[error("invalid NATS url: {0}")]
    InvalidUrl(String),
    /// A setting is out of range.
    #[error("invalid setting: {0}")]
    Config(&'static str),
}

/// The chat engine's [`Broker`] on NATS JetStream. Clones share one configuration; every engine
/// that attaches gets its own connection.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use chat_broker_nats::NatsBroker;
/// use chat_core::Engine;
///
/// // Three servers of one JetStream cluster; a room's message is `sent` once two have it.
/// let broker = NatsBroker::builder("nats://10.0.0.1:4222,nats://10.0.0.2:4222,nats://10.0.0.3:4222")
///     .replicas(3)
///     .build()?;
/// let engine = Engine::builder().node_id("node-1").broker(broker).build().await?;
/// // ... hand connections to `engine.serve(inbound, outbound, conn)` ...
/// engine.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct NatsBroker {
    settings: Arc<Settings>,
}

impl NatsBroker {
    /// A broker on the NATS servers at `urls` (`nats://HOST:PORT`, several separated by
    /// commas), with default settings.
    ///
    /// ```
    /// use chat_broker_nats::NatsBroker;
    ///
    /// assert!(NatsBroker::new("nats://127.0.0.1:4222").is_ok());
    /// assert!(NatsBroker::new("nats://10.0.0.1:4222,nats://10.0.0.2:4222").is_ok());
    /// assert!(NatsBroker::new("redis://127.0.0.1:6379").is_err());
    /// ```
    pub fn new(urls: &str) -> Result<Self, NatsBrokerError> {
        Self::builder(urls).build()
    }

    /// Starts building a broker on the NATS servers at `urls` (see [`new`](Self::new)).
    pub fn builder(urls: impl Into<String>) -> NatsBrokerBuilder {
        NatsBrokerBuilder {
            urls: urls.into(),
            settings: Settings {
                urls: Vec::new(),
                prefix: "chat".to_owned(),
                replicas: 1,
                presence_ttl: Duration::from_secs(30),
                op_timeout: Duration::from_secs(2),
            },
        }
    }
}

#[async_trait]
impl Broker for NatsBroker {
    async fn attach(
        &self,
        node: &str,
        sink: Arc<dyn DeliverySink>,
        origin: Option<Arc<dyn Origin>>,
    ) -> Result<Arc<dyn BrokerNode>, BrokerError> {
        Ok(Arc::new(NatsNode::attach(self.settings.clone(), node, sink, origin).await?))
    }
}

/// Builds a [`NatsBroker`]; see [`NatsBroker::builder`].
#[derive(Debug, Clone)]
pub struct NatsBrokerBuilder {
    urls: String,
    settings: Settings,
}

impl NatsBrokerBuilder {
    /// Prefix of every subject, and the name of the stream (`<prefix>-rooms`) and of the
    /// presence bucket (`<prefix>-presence`), so several clusters (or tests) can share NATS.
    /// Letters, digits, `_` and `-`. Default `chat`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.settings.prefix = prefix.into();
        self
    }

    /// On how many JetStream servers the stream and the presence bucket keep each message:
    /// 1, 3 or 5. A message is acknowledged (`sent`) once a majority of them stored it. Applies
    /// when the stream is created. Default 1 (one server); use 3 on a three-server cluster.
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.settings.replicas = replicas;
        self
    }

    /// How long the sessions of a node that died stay in presence, at most. Default 30 s.
    pub fn presence_ttl(mut self, ttl: Duration) -> Self {
        self.settings.presence_ttl = ttl;
        self
    }

    /// The longest any one operation may take before it fails with
    /// `BrokerError::Unavailable`. Default 2 s.
    pub fn op_timeout(mut self, timeout: Duration) -> Self {
        self.settings.op_timeout = timeout;
        self
    }

    /// Checks the settings and the URLs. Nothing is connected until an engine attaches.
    pub fn build(mut self) -> Result<NatsBroker, NatsBrokerError> {
        let s = &mut self.settings;
        for url in self.urls.split(',').map(str::trim) {
            let hostport = url.strip_prefix("nats://").ok_or_else(|| NatsBrokerError::InvalidUrl(url.to_owned()))?;
            let valid =
                hostport.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !valid {
                return Err(NatsBrokerError::InvalidUrl(url.to_owned()));
            }
            s.urls.push(url.to_owned());
        }
        if s.prefix.is_empty() || !s.prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            return Err(NatsBrokerError::Config("prefix must be letters, digits, `_` and `-`"));
        }
        if ![1, 3, 5].contains(&s.replicas) {
            return Err(NatsBrokerError::Config("replicas must be 1, 3 or 5"));
        }
        if s.presence_ttl < Duration::from_millis(100) {
            return Err(NatsBrokerError::Config("presence_ttl must be at least 100 ms"));
        }
        if s.op_timeout.is_zero() {
            return Err(NatsBrokerError::Config("op_timeout must be > 0"));
        }
        Ok(NatsBroker { settings: Arc::new(self.settings) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates() {
        assert!(NatsBroker::new("nats://127.0.0.1:1").is_ok());
        assert!(matches!(NatsBroker::new("nats://x"), Err(NatsBrokerError::InvalidUrl(_))));
        assert!(matches!(NatsBroker::new("nats://a:1,http://b:2"), Err(NatsBrokerError::InvalidUrl(_))));
        let bad = NatsBroker::builder("nats://127.0.0.1:1").prefix("a.b").build();
        assert!(matches!(bad, Err(NatsBrokerError::Config(_))));
        let bad = NatsBroker::builder("nats://127.0.0.1:1").replicas(2).build();
        assert!(matches!(bad, Err(NatsBrokerError::Config(_))));
    }
}
