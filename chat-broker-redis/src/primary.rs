//! Where the Redis primary is: one fixed address (`redis://`), or wherever a set of Redis
//! Sentinels says it is (`redis+sentinel://`). A node asks again every time its pub/sub
//! connection comes back (subscriber.rs), so after a failover it follows the new primary.
//!
//! Sentinel discovery is redis-rs's own (`SentinelClient`: it asks each sentinel in turn for the
//! primary of the service and checks that the server it names says it is a primary); this
//! module only parses the URL and bounds each lookup by the op timeout.

use std::time::Duration;

use chat_core::BrokerError;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::RedisConnectionInfo;
use tokio::time::timeout;

use crate::error::{from_redis, timed_out, RedisBrokerError};

/// The scheme of a Sentinel URL.
const SENTINEL_SCHEME: &str = "redis+sentinel://";

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
}

impl std::fmt::Debug for Locator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Locator::Fixed(client) => write!(f, "Fixed({:?})", client.get_connection_info().addr()),
            Locator::Sentinel { what, .. } => write!(f, "Sentinel({what})"),
        }
    }
}

impl Locator {
    /// A locator for `url`: `redis://…` (or `rediss://`, `unix://`: anything redis-rs opens) or
    /// `redis+sentinel://[[user]:password@]host:port[,host:port…]/service[/db]`, where the hosts
    /// are sentinels and the credentials and database are the primary's.
    pub(crate) fn parse(url: &str) -> Result<Locator, RedisBrokerError> {
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

    /// A client for the primary as of now, found within `op`.
    pub(crate) async fn primary(&self, op: Duration) -> Result<redis::Client, BrokerError> {
        match self {
            Locator::Fixed(client) => Ok(client.clone()),
            Locator::Sentinel { client, what } => {
                let lookup = async { client.lock().await.async_get_client().await };
                match timeout(op, lookup).await {
                    Ok(Ok(client)) => Ok(client),
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

/// Whether two clients talk to the same server.
pub(crate) fn same_server(a: &redis::Client, b: &redis::Client) -> bool {
    a.get_connection_info().addr() == b.get_connection_info().addr()
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
        assert!(matches!(Locator::parse("http://x"), Err(RedisBrokerError::InvalidUrl(_))));
    }

    #[test]
    fn decodes_percent_escapes() {
        assert_eq!(percent_decode("a%2Cb%40c").as_deref(), Some("a,b@c"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
    }
}
