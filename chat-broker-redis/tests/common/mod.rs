//! Test support: a real `redis-server` on a free loopback port that each test starts itself
//! (and can kill and start again on the same port), engines on a `RedisBroker` (on that server,
//! or on any URL the broker takes: Sentinel, Cluster), and clients wired to them in-process
//! through channels.

#![allow(dead_code)]

use std::time::Duration;

use bytes::Bytes;
use chat_broker_redis::RedisBroker;
use chat_core::client::{Client, Event, Message, Reset};
use chat_core::{ConnInfo, Engine, Inbound};
use futures::StreamExt;
use serde_json::Value;
use tokio::task::JoinHandle;

pub use chat_testkit::RedisServer;

/// A direct connection, for poking at Redis from a test.
pub async fn conn(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(redis.url()).expect("url");
    client.get_multiplexed_async_connection().await.expect("connect to redis")
}

/// A broker on `redis` with short timings for tests (presence expires after 2 s).
pub fn broker(redis: &RedisServer, prefix: &str) -> RedisBroker {
    broker_at(&redis.url(), prefix)
}

/// A broker on the Redis at `url` (any form `RedisBroker::new` takes), with short timings.
pub fn broker_at(url: &str, prefix: &str) -> RedisBroker {
    RedisBroker::builder(url)
        .key_prefix(prefix)
        .presence_ttl(Duration::from_secs(2))
        .op_timeout(Duration::from_millis(500))
        .reconnect_max_delay(Duration::from_millis(200))
        .build()
        .expect("broker settings")
}

/// An engine named `node` on `redis`.
pub async fn engine(redis: &RedisServer, prefix: &str, node: &str) -> Engine {
    engine_at(&redis.url(), prefix, node).await
}

/// An engine named `node` on the Redis at `url` (any form `RedisBroker::new` takes), with the
/// short timings of [`broker_at`].
pub async fn engine_at(url: &str, prefix: &str, node: &str) -> Engine {
    Engine::builder().node_id(node).broker(broker_at(url, prefix)).build().await.expect("engine attaches")
}

/// A client of `engine` as `user`, wired in-process; the handle runs the server side.
pub async fn connect(engine: &Engine, user: &str) -> (Client, JoinHandle<()>) {
    let (to_server, from_client) = futures::channel::mpsc::unbounded::<Bytes>();
    let (to_client, from_server) = futures::channel::mpsc::unbounded::<Bytes>();
    let server = engine.clone();
    let task = tokio::spawn(async move {
        let inbound = from_client.map(|b| Ok::<_, std::io::Error>(Inbound::Frame(b)));
        server.serve(inbound, to_client, ConnInfo::default()).await
    });
    let client =
        Client::connect(from_server.map(Ok::<_, std::io::Error>), to_server, Some(user), None).await.expect("hello");
    (client, task)
}

#[allow(unused_imports)] // each test binary uses a different subset
pub use chat_testkit::eventually;

/// The next event that `pick` takes, skipping others; panics after `within`.
pub async fn next_matching<T>(client: &mut Client, within: Duration, pick: impl Fn(Event) -> Option<T>) -> T {
    let found = tokio::time::timeout(within, async {
        loop {
            if let Some(found) = pick(client.next_event().await.expect("connection open")) {
                return found;
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("no matching event within {within:?}"))
}

/// A `reset` event, for [`next_matching`].
pub fn reset(e: Event) -> Option<Reset> {
    match e {
        Event::Reset(r) => Some(r),
        _ => None,
    }
}

/// A `member_joined` (`true`) or `member_left` (`false`) event of `user`, for [`next_matching`].
pub fn member(e: Event, user: &str, joined: bool) -> Option<()> {
    match e {
        Event::MemberJoined(m) if joined && m.user == user => Some(()),
        Event::MemberLeft(m) if !joined && m.user == user => Some(()),
        _ => None,
    }
}

/// The next `n` stored `message` events of `room` (other events skipped): (seq, body).
pub async fn messages(client: &mut Client, room: &str, n: usize, within: Duration) -> Vec<(u64, Value)> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        out.push(
            next_matching(client, within, |e| match e {
                Event::Message(Message { room: r, seq: Some(seq), body, .. }) if r == room => Some((seq, body)),
                _ => None,
            })
            .await,
        );
    }
    out
}

/// The seqs of `msgs`.
pub fn seqs(msgs: &[(u64, Value)]) -> Vec<u64> {
    msgs.iter().map(|(s, _)| *s).collect()
}
