//! Several engines on one real Redis: one order for every member on every node, history with
//! the memory broker's semantics, idempotency across nodes, seq and epoch across an engine
//! restart, and catch-up after the pub/sub connection was cut.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chat_core::broker::{Delivery, DeliverySink, HistoryPage, HistoryQuery, PresenceEntry, Publication, PublishOpts};
use chat_core::{Broker, RoomName};
use common::{broker, connect, engine, eventually, messages, seqs, RedisServer};
use futures::future::join_all;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

struct Sink(Mutex<Vec<Delivery>>);

impl DeliverySink for Sink {
    fn deliver(&self, _room: &RoomName, d: Delivery) {
        self.0.lock().unwrap().push(d);
    }
}

fn opts(key: Option<&str>, size: usize) -> PublishOpts {
    PublishOpts {
        key: key.map(str::to_owned),
        idempotency_window: Duration::from_secs(300),
        history_size: size,
        history_ttl: Duration::from_secs(3600),
        max_history_bytes: usize::MAX, // ignored by Redis
    }
}

fn publication(n: u64) -> Publication {
    Publication { from: Arc::from("u"), ts: n, body: Bytes::from(n.to_string()) }
}

#[tokio::test]
async fn broker_node_matches_memory_semantics() {
    let redis = RedisServer::start();
    let sink = Arc::new(Sink(Mutex::new(Vec::new())));
    let node = broker(&redis, "sem:").attach("a", sink.clone()).await.unwrap();
    let room = RoomName::new("r").unwrap();
    let start = node.subscribe(&room).await.unwrap();
    assert_eq!(start.seq, 0);
    for n in 1..=10 {
        let p = node.publish(&room, publication(n), &opts(None, 5)).await.unwrap();
        assert_eq!((p.seq, p.duplicate, &p.epoch), (n, false, &start.epoch));
    }
    let delivered = || sink.0.lock().unwrap().len();
    eventually("10 deliveries", WAIT, || async { (delivered() == 10).then_some(()) }).await;
    let got: Vec<u64> = sink
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|d| match d {
            Delivery::Stored { message, epoch } if *epoch == start.epoch => message.seq,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(got, (1..=10).collect::<Vec<_>>());

    let seqs = |page: HistoryPage| page.messages.iter().map(|m| m.seq).collect::<Vec<_>>();
    let q = |before, after, limit| HistoryQuery { before, after, limit };
    assert_eq!(seqs(node.history(&room, q(None, None, 3)).await.unwrap()), vec![8, 9, 10]);
    assert_eq!(seqs(node.history(&room, q(None, None, 50)).await.unwrap()), vec![6, 7, 8, 9, 10]);
    assert_eq!(seqs(node.history(&room, q(Some(9), None, 2)).await.unwrap()), vec![7, 8]);
    assert_eq!(seqs(node.history(&room, q(None, Some(6), 2)).await.unwrap()), vec![7, 8]);
    assert_eq!(seqs(node.history(&room, q(Some(9), Some(6), 50)).await.unwrap()), vec![7, 8]);
    assert_eq!(seqs(node.history(&room, q(Some(1), None, 50)).await.unwrap()), Vec::<u64>::new());
    assert_eq!(seqs(node.history(&room, q(Some(0), None, 50)).await.unwrap()), Vec::<u64>::new());
    assert_eq!(seqs(node.history(&room, q(None, Some(10), 50)).await.unwrap()), Vec::<u64>::new());
    let page = node.history(&room, q(None, Some(8), 50)).await.unwrap();
    assert_eq!((page.latest, &page.epoch), (10, &start.epoch));
    let m = &page.messages[0];
    assert_eq!((m.seq, &*m.from, m.ts, &m.body[..]), (9, "u", 9, &b"9"[..]));

    let first = node.publish(&room, publication(11), &opts(Some("k"), 5)).await.unwrap();
    let again = node.publish(&room, publication(12), &opts(Some("k"), 5)).await.unwrap();
    assert_eq!((again.seq, again.duplicate), (first.seq, true));
    eventually("11 deliveries", WAIT, || async { (delivered() == 11).then_some(()) }).await;

    // Redis loses everything: a new epoch, seq from 1, and the old key is forgotten.
    let mut conn = common::conn(&redis).await;
    redis::cmd("FLUSHALL").query_async::<()>(&mut conn).await.unwrap();
    let after = node.publish(&room, publication(1), &opts(Some("k"), 5)).await.unwrap();
    assert_eq!((after.seq, after.duplicate), (1, false));
    assert_ne!(after.epoch, start.epoch);
}

#[tokio::test]
async fn history_drops_messages_past_their_age() {
    let redis = RedisServer::start();
    let sink = Arc::new(Sink(Mutex::new(Vec::new())));
    let node = broker(&redis, "age:").attach("a", sink).await.unwrap();
    let room = RoomName::new("r").unwrap();
    let short = PublishOpts { history_ttl: Duration::from_millis(100), ..opts(None, 10) };
    let old = node.publish(&room, publication(1), &short).await.unwrap();
    let new = node.publish(&room, publication(2), &opts(None, 10)).await.unwrap();
    assert_eq!((old.seq, new.seq, &old.epoch), (1, 2, &new.epoch));
    let q = HistoryQuery { before: None, after: Some(0), limit: 10 };
    let page = eventually("the old message to age out", WAIT, || async {
        let page = node.history(&room, q).await.unwrap();
        (page.messages.len() == 1).then_some(page)
    })
    .await;
    assert_eq!((page.messages[0].seq, page.latest, &page.epoch), (2, 2, &new.epoch));
}

#[tokio::test]
async fn presence_counts_sessions_across_nodes() {
    let redis = RedisServer::start();
    let sink = Arc::new(Sink(Mutex::new(Vec::new())));
    let a = broker(&redis, "pres:").attach("a", sink.clone()).await.unwrap();
    let b = broker(&redis, "pres:").attach("b", sink.clone()).await.unwrap();
    let room = RoomName::new("r").unwrap();
    assert!(a.presence_add(&room, "s1", "alice").await.unwrap());
    assert!(!b.presence_add(&room, "s2", "alice").await.unwrap());
    assert!(b.presence_add(&room, "s3", "bob").await.unwrap());
    let expected =
        vec![PresenceEntry { user: "alice".into(), sessions: 2 }, PresenceEntry { user: "bob".into(), sessions: 1 }];
    assert_eq!(a.presence(&room).await.unwrap(), expected);
    assert!(!b.presence_remove(&room, "s2", "alice").await.unwrap());
    assert!(!b.presence_remove(&room, "s2", "alice").await.unwrap(), "removing twice is not a leave");
    assert!(a.presence_remove(&room, "s1", "alice").await.unwrap());
    b.detach().await;
    assert_eq!(a.presence(&room).await.unwrap(), vec![]);
}

/// `nodes` engines, two members on each, everyone sending at once: every member sees every
/// message once, seqs 1..=total in order, and the same message under each seq.
async fn one_order(nodes: usize) {
    let redis = RedisServer::start();
    let prefix = format!("order{nodes}:");
    let mut engines = Vec::new();
    for i in 0..nodes {
        engines.push(engine(&redis, &prefix, &format!("n{i}")).await);
    }
    let mut clients = Vec::new();
    for (i, e) in engines.iter().enumerate() {
        for j in 0..2 {
            let (client, _task) = connect(e, &format!("u{i}{j}")).await;
            assert_eq!(client.join("lobby", None).await.unwrap().seq, 0);
            clients.push(client);
        }
    }
    const EACH: usize = 15;
    let total = EACH * clients.len();
    let sends = clients.iter().enumerate().map(|(c, client)| async move {
        for k in 0..EACH {
            let seq = client.send("lobby", json!({"c": c, "k": k})).await.unwrap();
            assert!(seq.is_some());
        }
    });
    join_all(sends).await;
    let mut seen = Vec::new();
    for client in &mut clients {
        let got = messages(client, "lobby", total, WAIT).await;
        assert_eq!(seqs(&got), (1..=total as u64).collect::<Vec<_>>());
        seen.push(got);
    }
    for other in &seen[1..] {
        assert_eq!(other, &seen[0], "every member sees the same message under each seq");
    }
    for c in 0..clients.len() {
        let ks: Vec<_> = seen[0].iter().filter(|(_, b)| b["c"] == c).map(|(_, b)| b["k"].clone()).collect();
        assert_eq!(ks, (0..EACH).map(|k| json!(k)).collect::<Vec<_>>(), "one sender's messages keep their order");
    }
    for client in &clients {
        client.sync().await.unwrap();
    }
    for client in &mut clients {
        while let Some(frame) = client.try_next_frame() {
            assert!(!frame.starts_with(br#"{"type":"message""#), "duplicate delivery: {frame:?}");
        }
    }
    for e in &engines {
        e.shutdown().await;
    }
}

#[tokio::test]
async fn two_nodes_one_order() {
    one_order(2).await;
}

#[tokio::test]
async fn three_nodes_one_order() {
    one_order(3).await;
}

#[tokio::test]
async fn idempotency_key_holds_across_nodes() {
    let redis = RedisServer::start();
    let a = engine(&redis, "idem:", "a").await;
    let b = engine(&redis, "idem:", "b").await;
    let (mut alice_a, _t1) = connect(&a, "alice").await;
    let (alice_b, _t2) = connect(&b, "alice").await;
    let (mut bob, _t3) = connect(&b, "bob").await;
    for c in [&alice_a, &alice_b, &bob] {
        c.join("r", None).await.unwrap();
    }
    let first = alice_a.send_with("r", json!("once"), Some("k1"), false).await.unwrap();
    let again = alice_b.send_with("r", json!("twice"), Some("k1"), false).await.unwrap();
    assert_eq!(first, Some(1));
    assert_eq!(again, first);
    // Another user's same key is another message.
    let bobs = bob.send_with("r", json!("bob"), Some("k1"), false).await.unwrap();
    assert_eq!(bobs, Some(2));
    for c in [&mut alice_a, &mut bob] {
        let got = messages(c, "r", 2, WAIT).await;
        assert_eq!(got, vec![(1, json!("once")), (2, json!("bob"))]);
    }
    let history = bob.history("r", None, None, None).await.unwrap();
    assert_eq!(history["messages"].as_array().map(Vec::len), Some(2));
}

#[tokio::test]
async fn seq_and_epoch_survive_an_engine_restart() {
    let redis = RedisServer::start();
    let a = engine(&redis, "restart:", "a").await;
    let (alice, _t) = connect(&a, "alice").await;
    let joined = alice.join("r", None).await.unwrap();
    for n in 1..=3 {
        assert_eq!(alice.send("r", json!(n)).await.unwrap(), Some(n));
    }
    a.shutdown().await;
    drop(alice);

    let a2 = engine(&redis, "restart:", "a").await;
    let (mut alice, _t) = connect(&a2, "alice").await;
    let back = alice.join("r", Some((&joined.epoch, 1))).await.unwrap();
    assert_eq!((back.epoch.as_str(), back.seq, back.recovered), (joined.epoch.as_str(), 3, true));
    assert_eq!(seqs(&messages(&mut alice, "r", 2, WAIT).await), vec![2, 3]);
    assert_eq!(alice.send("r", json!(4)).await.unwrap(), Some(4));
    assert_eq!(seqs(&messages(&mut alice, "r", 1, WAIT).await), vec![4]);
    a2.shutdown().await;
}

#[tokio::test]
async fn missed_pubsub_messages_are_caught_up() {
    let redis = RedisServer::start();
    let a = engine(&redis, "gap:", "a").await;
    let b = engine(&redis, "gap:", "b").await;
    let (mut alice, _t1) = connect(&a, "alice").await;
    let (mut bob, _t2) = connect(&b, "bob").await;
    alice.join("r", None).await.unwrap();
    bob.join("r", None).await.unwrap();
    let publisher = engine(&redis, "gap:", "p").await;
    let (carol, _t3) = connect(&publisher, "carol").await;
    carol.join("r", None).await.unwrap();
    assert_eq!(alice.send("r", json!(1)).await.unwrap(), Some(1));
    // Cut every pub/sub connection, then publish at once, while the nodes wait to reconnect
    // (their first retry comes after 25 ms): pub/sub loses these, only the stream has them.
    let mut conn = common::conn(&redis).await;
    let killed: i64 = redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub").query_async(&mut conn).await.unwrap();
    assert_eq!(killed, 3);
    for n in 2..=6 {
        assert_eq!(carol.send("r", json!(n)).await.unwrap(), Some(n));
    }
    for c in [&mut alice, &mut bob] {
        assert_eq!(seqs(&messages(c, "r", 6, WAIT).await), (1..=6).collect::<Vec<_>>());
    }
    // Live delivery goes on after the catch-up.
    assert_eq!(bob.send("r", json!(7)).await.unwrap(), Some(7));
    for c in [&mut alice, &mut bob] {
        assert_eq!(seqs(&messages(c, "r", 1, WAIT).await), vec![7]);
    }
}
