//! Where Redis is: one fixed address (`redis://`), wherever a set of Redis Sentinels says the
//! primary is (`redis+sentinel://`), or a Redis Cluster found from seed nodes
//! (`redis+cluster://`); and [`Conn`], a command connection to either kind.
//!
//! A node asks again every time its pub/sub connection comes back (subscriber.rs), so after a
//! failover it follows the new primary. Sentinel discovery is redis-rs's own (`SentinelClient`:
//! it asks each sentinel in turn for the primary of the service and checks that the server it
//! names says it is a primary); this module only parses the URL and bounds each lookup by the op
//! timeout. A cluster needs no lookup: redis-rs's `ClusterConnection` reads the slot map from the
//! seeds, sends each command to the primary of its first key's slot, follows `MOVED` and `ASK`,
//! and reads the map again when the cluster changes (a failover, a slot moved).

use std::time::Duration;

use chat_core::BrokerError;
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Cmd, FromRedisValue, RedisConnectionInfo, RedisFuture, RedisResult, Value};
use tokio::time::timeout;

use crate::broker::Settings;
use crate::error::{from_redis, timed_out, RedisBrokerError};

/// The scheme of a Sentinel URL.
const SENTINEL_SCHEME: &str = "redis+sentinel://";
/// The scheme of a Redis Cluster URL.
const CLUSTER_SCHEME: &str = "redis+cluster://";

/// How to find the primary.
pub(crate) enum Locator {
    /// A fixed server.
    Fixed(redis::Client),
    /// Whatever the sentinels say the primary of `service` is.
    Sentinel {
        client: tokio::sync::Mutex<SentinelClient>,
        /// The sentinels and the service, for messages.
        what: String,
    },
    /// A Redis Cluster.
    Cluster(Seeds),
}

/// A Redis Cluster's seed nodes (`redis://[user:password@]host:port/` each): where a cluster
/// client starts reading the slot map.
#[derive(Clone, Debug)]
pub(crate) struct Seeds(Vec<String>);

impl Seeds {
    /// A cluster client's settings for these seeds: a quarter of the op timeout bounds each
    /// connection (a client connects to every node it knows, and waits for all: a stalled node
    /// must not take the whole op timeout), the op timeout each reply, and a command that
    /// meets a cluster in transition (`CLUSTERDOWN` during a failover, `TRYAGAIN` during a
    /// slot's migration, a connection refused) is retried after 20 ms, then less and less
    /// often, up to the reconnect delay; the node's op timeout bounds the whole.
    pub(crate) fn builder(&self, settings: &Settings) -> ClusterClientBuilder {
        let max_wait = u64::try_from(settings.reconnect_max_delay.as_millis()).unwrap_or(u64::MAX).max(20);
        ClusterClientBuilder::new(self.0.clone())
            .connection_timeout(settings.op_timeout / 4)
            .response_timeout(settings.op_timeout)
            .min_retry_wait(20)
            .max_retry_wait(max_wait)
            .retry_wait_formula(20, 2)
            .retries(32)
    }
}

/// Where a node finds Redis as of now: one server (the primary), or a cluster.
#[derive(Clone)]
pub(crate) enum Source {
    /// One server.
    Single(redis::Client),
    /// A cluster, from its seeds.
    Cluster(Seeds),
}

/// A command connection: to one server (redis-rs's `ConnectionManager`, which reconnects by
/// itself) or to a cluster (`ClusterConnection`, which routes each command to its slot's
/// primary). Both pipeline concurrent commands.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Conn {
    /// Sends a pipeline to the server that holds `key` (on a cluster, the primary of its slot
    /// as this connection's map has it, or the node `at`, `host:port`, where Redis redirected
    /// it), all of it on one connection: the answers in order, errors among them as values.
    pub(crate) async fn pipeline_at(
        &mut self,
        pipe: &redis::Pipeline,
        key: &str,
        at: Option<&str>,
    ) -> RedisResult<Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipe, 0, pipe.len()).await,
            Conn::Cluster(c) => {
                let to = match at.and_then(|at| at.rsplit_once(':')) {
                    Some((host, port)) => SingleNodeRoutingInfo::ByAddress {
                        host: host.to_owned(),
                        port: port
                            .parse()
                            .map_err(|_| redis::RedisError::from((redis::ErrorKind::Parse, "a redirection's port")))?,
                    },
                    None => SingleNodeRoutingInfo::SpecificNode(Route::with_key(key, SlotAddr::Master)),
                };
                c.route_pipeline(pipe.clone(), 0, pipe.len(), to).await
            }
        }
    }

    /// Runs a keyless command (`SCAN`) on one primary: `None` is the only one of a single
    /// server, `Some((host, port))` one of a cluster's ([`primaries`](Self::primaries)).
    pub(crate) async fn query_on<T: FromRedisValue>(
        &mut self,
        cmd: &Cmd,
        primary: Option<&(String, u16)>,
    ) -> RedisResult<T> {
        match (self, primary) {
            (Conn::Cluster(c), Some((host, port))) => {
                let to = SingleNodeRoutingInfo::ByAddress { host: host.clone(), port: *port };
                let value = c.route_command(cmd.clone(), RoutingInfo::SingleNode(to)).await?;
                Ok(T::from_redis_value(value)?)
            }
            (conn, _) => cmd.query_async(conn).await,
        }
    }

    /// Every primary: `[None]` for a single server; each primary's address for a cluster, from
    /// `CLUSTER SHARDS` as one of its nodes sees it.
    pub(crate) async fn primaries(&mut self) -> RedisResult<Vec<Option<(String, u16)>>> {
        let Conn::Cluster(c) = self else { return Ok(vec![None]) };
        let slots: Value = c
            .route_command(
                redis::cmd("CLUSTER").arg("SLOTS").to_owned(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary),
            )
            .await?;
        let mut primaries = Vec::new();
        for range in crate::reply::array(slots).unwrap_or_default() {
            let mut range = crate::reply::array(range).unwrap_or_default().into_iter();
            let Some(primary) = range.nth(2).and_then(crate::reply::array) else { continue };
            let mut primary = primary.into_iter();
            let (Some(host), Some(port)) = (primary.next().and_then(crate::reply::string), primary.next()) else {
                continue;
            };
            let Some(port) = crate::reply::uint(&port).and_then(|p| u16::try_from(p).ok()) else { continue };
            if !primaries.contains(&Some((host.clone(), port))) {
                primaries.push(Some((host, port)));
            }
        }
        Ok(primaries)
    }

    /// Connects the command connection to `source` within the op timeout (on a cluster: reads
    /// the slot map and connects to every primary).
    pub(crate) async fn connect(source: &Source, settings: &Settings) -> Result<Conn, BrokerError> {
        let op = settings.op_timeout;
        let connect = async {
            match source {
                Source::Single(client) => {
                    let config = redis::aio::ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(op))
                        .set_response_timeout(Some(op))
                        .set_min_delay(Duration::from_millis(20))
                        .set_max_delay(settings.reconnect_max_delay)
                        .set_number_of_retries(4);
                    Ok(Conn::Single(client.get_connection_manager_with_config(config).await?))
                }
                Source::Cluster(seeds) => {
                    Ok(Conn::Cluster(seeds.builder(settings).build()?.get_async_connection().await?))
                }
            }
        };
        match timeout(op, connect).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(from_redis(e)),
            Err(_) => Err(timed_out("connect")),
        }
    }
}

impl std::fmt::Debug for Locator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Locator::Fixed(client) => write!(f, "Fixed({:?})", client.get_connection_info().addr()),
            Locator::Sentinel { what, .. } => write!(f, "Sentinel({what})"),
            Locator::Cluster(seeds) => write!(f, "Cluster({seeds:?})"),
        }
    }
}

impl Locator {
    /// A locator for `url`: `redis://…` (or `rediss://`, `unix://`: anything redis-rs opens),
    /// `redis+sentinel://[[user]:password@]host:port[,host:port…]/service[/db]`, where the hosts
    /// are sentinels and the credentials and database are the primary's, or
    /// `redis+cluster://[[user]:password@]host:port[,host:port…][/]`, where the hosts are nodes of
    /// a cluster (any of them, the more the better) and the credentials every node's.
    pub(crate) fn parse(url: &str) -> Result<Locator, RedisBrokerError> {
        if let Some(rest) = url.strip_prefix(CLUSTER_SCHEME) {
            return Self::parse_cluster(rest);
        }
        let Some(rest) = url.strip_prefix(SENTINEL_SCHEME) else {
            return Ok(Locator::Fixed(redis::Client::open(url).map_err(RedisBrokerError::InvalidUrl)?));
        };
        let bad = |why: &'static str| RedisBrokerError::Config(why);
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => (Some(userinfo), hosts),
            None => (None, authority),
        };
        let sentinels: Vec<String> =
            hosts.split(',').filter(|h| !h.is_empty()).map(|h| format!("redis://{h}/")).collect();
        if sentinels.is_empty() {
            return Err(bad("a redis+sentinel:// URL needs at least one sentinel host:port"));
        }
        let mut segments = path.split('/').filter(|s| !s.is_empty());
        let service = segments.next().ok_or(bad("a redis+sentinel:// URL needs the service name as its path"))?;
        let mut primary = RedisConnectionInfo::default();
        if let Some(db) = segments.next() {
            primary =
                primary.set_db(db.parse().map_err(|_| bad("the database in a redis+sentinel:// URL is a number"))?);
        }
        if segments.next().is_some() {
            return Err(bad("a redis+sentinel:// URL's path is /service or /service/db"));
        }
        if let Some(userinfo) = userinfo {
            let (user, password) = userinfo.split_once(':').unwrap_or(("", userinfo));
            if !user.is_empty() {
                primary = primary.set_username(percent_decode(user).ok_or(bad("bad %-escape in the user name"))?);
            }
            if !password.is_empty() {
                primary = primary.set_password(percent_decode(password).ok_or(bad("bad %-escape in the password"))?);
            }
        }
        let node = SentinelNodeConnectionInfo::default().set_redis_connection_info(primary);
        let what = format!("sentinels {hosts}, service {service}");
        let client = SentinelClient::build(sentinels, service.to_owned(), Some(node), SentinelServerType::Master)
            .map_err(RedisBrokerError::InvalidUrl)?;
        Ok(Locator::Sentinel { client: tokio::sync::Mutex::new(client), what })
    }

    /// The part of a `redis+cluster://` URL after the scheme.
    fn parse_cluster(rest: &str) -> Result<Locator, RedisBrokerError> {
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains('/') {
            return Err(RedisBrokerError::Config("a redis+cluster:// URL has no path (a cluster has one database)"));
        }
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => (format!("{userinfo}@"), hosts),
            None => (String::new(), authority),
        };
        let seeds: Vec<String> =
            hosts.split(',').filter(|h| !h.is_empty()).map(|h| format!("redis://{userinfo}{h}/")).collect();
        if seeds.is_empty() {
            return Err(RedisBrokerError::Config("a redis+cluster:// URL needs at least one host:port"));
        }
        // Checks every seed's form (nothing is connected).
        ClusterClientBuilder::new(seeds.clone()).build().map_err(RedisBrokerError::InvalidUrl)?;
        Ok(Locator::Cluster(Seeds(seeds)))
    }

    /// Where Redis is as of now (the primary, found within `op`, or the cluster).
    pub(crate) async fn source(&self, op: Duration) -> Result<Source, BrokerError> {
        match self {
            Locator::Fixed(client) => Ok(Source::Single(client.clone())),
            Locator::Cluster(seeds) => Ok(Source::Cluster(seeds.clone())),
            Locator::Sentinel { client, what } => {
                let lookup = async { client.lock().await.async_get_client().await };
                match timeout(op, lookup).await {
                    Ok(Ok(client)) => Ok(Source::Single(client)),
                    Ok(Err(e)) => {
                        tracing::debug!(%what, error = %e, "no primary from the sentinels");
                        Err(from_redis(e))
                    }
                    Err(_) => Err(timed_out("the sentinels' primary lookup")),
                }
            }
        }
    }
}

impl Source {
    /// Whether two sources are the same server, or both the cluster.
    pub(crate) fn same(&self, other: &Source) -> bool {
        match (self, other) {
            (Source::Single(a), Source::Single(b)) => a.get_connection_info().addr() == b.get_connection_info().addr(),
            (Source::Cluster(_), Source::Cluster(_)) => true,
            _ => false,
        }
    }

    /// Whether this is a cluster: live delivery then goes by sharded pub/sub.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Source::Cluster(_))
    }
}

/// `s` with `%XX` escapes decoded; `None` when an escape is malformed or the result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sentinel_urls() {
        let ok = |url: &str| match Locator::parse(url) {
            Ok(Locator::Sentinel { what, .. }) => what,
            other => panic!("{url}: {other:?}"),
        };
        assert_eq!(ok("redis+sentinel://127.0.0.1:26379/mymaster"), "sentinels 127.0.0.1:26379, service mymaster");
        assert_eq!(ok("redis+sentinel://:p%40ss@a:1,b:2,c:3/m/2"), "sentinels a:1,b:2,c:3, service m");
        assert_eq!(ok("redis+sentinel://user:pw@a:1/m"), "sentinels a:1, service m");
        for bad in [
            "redis+sentinel://a:1",
            "redis+sentinel:///m",
            "redis+sentinel://a:1/m/x",
            "redis+sentinel://a:1/m/0/extra",
            "redis+sentinel://:%4@a:1/m",
        ] {
            assert!(matches!(Locator::parse(bad), Err(RedisBrokerError::Config(_))), "{bad}");
        }
        assert!(matches!(Locator::parse("redis://127.0.0.1:6379/"), Ok(Locator::Fixed(_))));
        match Locator::parse("redis+cluster://u:p@10.0.0.1:7000,10.0.0.2:7001/") {
            Ok(Locator::Cluster(Seeds(seeds))) => {
                assert_eq!(seeds, ["redis://u:p@10.0.0.1:7000/", "redis://u:p@10.0.0.2:7001/"]);
            }
            other => panic!("{other:?}"),
        }
        for bad in ["redis+cluster://", "redis+cluster://a:1/0", "redis+cluster://,/"] {
            assert!(matches!(Locator::parse(bad), Err(RedisBrokerError::Config(_))), "{bad}");
        }
        assert!(matches!(Locator::parse("http://x"), Err(RedisBrokerError::InvalidUrl(_))));
    }

    #[test]
    fn decodes_percent_escapes() {
        assert_eq!(percent_decode("a%2Cb%40c").as_deref(), Some("a,b@c"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
    }
}
