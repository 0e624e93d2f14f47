//! Several engines on one real Redis, end to end through clients: one order for every member on
//! every node, idempotency across nodes, seq and epoch across an engine restart, and catch-up
//! after the pub/sub connection was cut. The broker's own semantics (seq, history, epochs,
//! presence) are the conformance suite's (tests/conformance.rs).

mod common;

use std::time::Duration;

use chat_core::client::HistoryQuery;
use chat_core::protocol::Since;
use common::{connect, engine, messages, seqs, RedisServer};
use futures::future::join_all;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

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
    let history = bob.history("r", HistoryQuery::default()).await.unwrap();
    assert_eq!(history.messages.len(), 2);
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
    let back = alice.join("r", Some(Since::new(&joined.epoch, 1))).await.unwrap();
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
