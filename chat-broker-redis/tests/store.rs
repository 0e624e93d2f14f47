//! Redis with a store beside it (issue 12): losing Redis's state no longer loses the
//! conversation or changes the epoch. A flushed Redis, and a Redis restarted from a snapshot
//! older than what the store kept, both go on from the store's last seq in the same epoch.
//! Redis is a real `redis-server` each test starts; the store is the in-process `MemoryStore`
//! (it outlives Redis, which is all these tests need of it; the database stores are tested in
//! their own crates).

mod common;

use std::time::Duration;

use chat_core::client::{Event, HistoryPage, HistoryQuery};
use chat_core::protocol::Since;
use chat_core::{Engine, MemoryStore};
use common::{broker, connect, messages, next_matching, seqs, RedisServer};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

async fn engine(redis: &RedisServer, store: &MemoryStore, node: &str) -> Engine {
    Engine::builder()
        .node_id(node)
        .broker(broker(redis, "kept:"))
        .store(store.clone())
        .build()
        .await
        .expect("engine attaches")
}

fn page_seqs(page: &HistoryPage) -> Vec<u64> {
    page.messages.iter().map(|m| m.seq.expect("seq")).collect()
}

/// Two nodes serve a room; Redis is flushed. The next send gets the next seq in the same
/// epoch, both members receive it with no reset, and history holds every acknowledged message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_redis_goes_on_from_the_store_in_the_same_epoch() {
    let redis = RedisServer::start();
    let store = MemoryStore::new();
    let a = engine(&redis, &store, "a").await;
    let b = engine(&redis, &store, "b").await;
    let (mut alice, _ta) = connect(&a, "alice").await;
    let (mut bob, _tb) = connect(&b, "bob").await;
    let epoch = alice.join("r", None).await.unwrap().epoch;
    bob.join("r", None).await.unwrap();
    for n in 1..=5 {
        let sender = if n % 2 == 0 { &alice } else { &bob };
        assert_eq!(sender.send("r", json!(n)).await.unwrap(), Some(n));
    }
    for c in [&mut alice, &mut bob] {
        assert_eq!(seqs(&messages(c, "r", 5, WAIT).await), vec![1, 2, 3, 4, 5]);
    }

    let mut conn = common::conn(&redis).await;
    redis::cmd("FLUSHALL").query_async::<()>(&mut conn).await.expect("FLUSHALL");

    assert_eq!(bob.send("r", json!(6)).await.unwrap(), Some(6), "the next seq, not 1");
    for c in [&mut alice, &mut bob] {
        let next = next_matching(c, WAIT, |e| matches!(e, Event::Message(_) | Event::Reset(_)).then_some(e)).await;
        assert!(matches!(&next, Event::Message(m) if m.seq == Some(6)), "{next:?}");
    }
    let page = alice.history("r", HistoryQuery::latest(50)).await.unwrap();
    assert_eq!(page.epoch, epoch, "the same epoch");
    assert_eq!(page_seqs(&page), vec![1, 2, 3, 4, 5, 6], "1..5 from the store, 6 from Redis");
    let (carol, _tc) = connect(&b, "carol").await;
    let joined = carol.join("r", Some(Since::new(&epoch, 2))).await.unwrap();
    assert!(joined.recovered, "a returning client recovers across the flush");
    a.shutdown().await;
    b.shutdown().await;
}

/// Redis comes back from a snapshot older than the store, and the node restarts with it, so no
/// node remembers the newer messages: the store does, and the room goes on from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_older_than_the_store_goes_on_from_the_store() {
    let mut redis = RedisServer::start_persistent();
    let store = MemoryStore::new();
    let a = engine(&redis, &store, "a").await;
    let (alice, _ta) = connect(&a, "alice").await;
    let epoch = alice.join("r", None).await.unwrap().epoch;
    for n in 1..=3 {
        alice.send("r", json!(n)).await.unwrap();
    }
    let mut conn = common::conn(&redis).await;
    redis::cmd("SAVE").query_async::<()>(&mut conn).await.expect("SAVE");
    for n in 4..=6 {
        alice.send("r", json!(n)).await.unwrap();
    }
    a.shutdown().await;
    drop(alice);
    redis.kill();
    redis.restart(); // back at seq 3

    let b = engine(&redis, &store, "b").await;
    let (bob, _tb) = connect(&b, "bob").await;
    let joined = bob.join("r", None).await.unwrap();
    assert_eq!((joined.epoch.as_str(), joined.seq), (epoch.as_str(), 6), "where the store stands");
    assert_eq!(bob.send("r", json!(7)).await.unwrap(), Some(7));
    let page = bob.history("r", HistoryQuery::latest(50)).await.unwrap();
    assert_eq!(page_seqs(&page), (1..=7).collect::<Vec<_>>());
    b.shutdown().await;
}

/// Redis is flushed twice, and each time a client resends a message it had sent with a key
/// before the flush: it gets the original seq, and nothing is delivered a second time. The
/// room learns the keys from the store whichever operation reaches it first after the flush:
/// a send (first flush) or a node subscribing (second flush).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_after_a_flush_gets_its_original_seq() {
    let redis = RedisServer::start();
    let store = MemoryStore::new();
    let a = engine(&redis, &store, "a").await;
    let b = engine(&redis, &store, "b").await;
    let (mut alice, _ta) = connect(&a, "alice").await;
    let (mut bob, _tb) = connect(&b, "bob").await;
    alice.join("r", None).await.unwrap();
    bob.join("r", None).await.unwrap();
    for n in 1..=4 {
        let key = format!("k{n}");
        assert_eq!(bob.send_with("r", json!(n), Some(&key), false).await.unwrap(), Some(n));
    }
    assert_eq!(alice.send("r", json!(5)).await.unwrap(), Some(5), "one without a key");
    for c in [&mut alice, &mut bob] {
        assert_eq!(seqs(&messages(c, "r", 5, WAIT).await), vec![1, 2, 3, 4, 5]);
    }
    let mut conn = common::conn(&redis).await;

    redis::cmd("FLUSHALL").query_async::<()>(&mut conn).await.expect("FLUSHALL");
    assert_eq!(bob.send_with("r", json!(3), Some("k3"), false).await.unwrap(), Some(3), "the original seq");
    assert_eq!(bob.send_with("r", json!(6), Some("k6"), false).await.unwrap(), Some(6), "a new key: the next seq");
    for c in [&mut alice, &mut bob] {
        let next = next_matching(c, WAIT, |e| matches!(e, Event::Message(_) | Event::Reset(_)).then_some(e)).await;
        assert!(matches!(&next, Event::Message(m) if m.seq == Some(6)), "{next:?}");
    }

    redis::cmd("FLUSHALL").query_async::<()>(&mut conn).await.expect("FLUSHALL");
    let c = engine(&redis, &store, "c").await;
    let (carol, _tc) = connect(&c, "carol").await;
    assert_eq!(carol.join("r", None).await.unwrap().seq, 6, "a node subscribing first");
    assert_eq!(bob.send_with("r", json!(6), Some("k6"), false).await.unwrap(), Some(6), "the original seq");
    assert_eq!(bob.send_with("r", json!(1), Some("k1"), false).await.unwrap(), Some(1), "the original seq");
    assert_eq!(alice.send("r", json!(7)).await.unwrap(), Some(7));
    for c in [&mut alice, &mut bob] {
        let next = next_matching(c, WAIT, |e| matches!(e, Event::Message(_) | Event::Reset(_)).then_some(e)).await;
        assert!(matches!(&next, Event::Message(m) if m.seq == Some(7)), "{next:?}");
    }
    let page = alice.history("r", HistoryQuery::latest(50)).await.unwrap();
    assert_eq!(page_seqs(&page), (1..=7).collect::<Vec<_>>(), "each message once");
    for e in [a, b, c] {
        e.shutdown().await;
    }
}
