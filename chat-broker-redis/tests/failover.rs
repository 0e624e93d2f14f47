//! Failures under running engines: a node that dies without a word (its sessions leave
//! presence within the expiry, with `member_left`), and Redis restarting empty under the nodes
//! (sends fail fast with `unavailable`, delivery resumes by itself, the epoch changes).

mod common;

use std::time::{Duration, Instant};

use common::{connect, engine, eventually, messages, next_matching, seqs, RedisServer};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_dropped_node_leaves_presence_within_the_expiry() {
    let redis = RedisServer::start();
    let a = engine(&redis, "drop:", "a").await;
    let b = engine(&redis, "drop:", "b").await;
    let (mut alice, _ta) = connect(&a, "alice").await;
    alice.join("r", None).await.unwrap();
    let (bob, bob_task) = connect(&b, "bob").await;
    bob.join("r", None).await.unwrap();
    next_matching(&mut alice, WAIT, |e| e["type"] == "member_joined" && e["user"] == "bob").await;
    let members = alice.presence("r").await.unwrap();
    assert_eq!(members["members"], json!([{"user": "alice", "sessions": 1}, {"user": "bob", "sessions": 1}]));

    // Node b dies: its session task stops mid-flight and the engine is dropped, no shutdown.
    bob_task.abort();
    let _ = bob_task.await;
    drop(b);
    drop(bob);
    let died = Instant::now();
    next_matching(&mut alice, WAIT, |e| e["type"] == "member_left" && e["user"] == "bob").await;
    let took = died.elapsed();
    // Within the 2 s expiry by design; the slack is for a loaded test machine.
    assert!(took <= Duration::from_secs(3), "bob left presence after {took:?} (expiry 2 s)");
    let members = alice.presence("r").await.unwrap();
    assert_eq!(members["members"], json!([{"user": "alice", "sessions": 1}]));

    // Node a serves on.
    assert_eq!(alice.send("r", json!("still here")).await.unwrap(), Some(1));
    assert_eq!(seqs(&messages(&mut alice, "r", 1, WAIT).await), vec![1]);
    a.shutdown().await;
}

#[tokio::test]
async fn redis_restarting_empty_under_the_nodes() {
    let mut redis = RedisServer::start();
    let a = engine(&redis, "outage:", "a").await;
    let b = engine(&redis, "outage:", "b").await;
    let (mut alice, _ta) = connect(&a, "alice").await;
    let (mut bob, _tb) = connect(&b, "bob").await;
    let joined = alice.join("r", None).await.unwrap();
    bob.join("r", None).await.unwrap();
    for n in 1..=3 {
        assert_eq!(alice.send("r", json!(n)).await.unwrap(), Some(n));
    }
    for c in [&mut alice, &mut bob] {
        assert_eq!(seqs(&messages(c, "r", 3, WAIT).await), vec![1, 2, 3]);
    }

    redis.kill();
    let started = Instant::now();
    let err = alice.send("r", json!("lost")).await.unwrap_err();
    assert_eq!(err.code(), Some("unavailable"), "{err}");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "a send during the outage took {took:?}");

    redis.restart();
    // Connected members are told the history is gone, by each node on its own.
    let mut epochs = Vec::new();
    for c in [&mut alice, &mut bob] {
        let reset = next_matching(c, WAIT, |e| e["type"] == "reset").await;
        assert_eq!(reset["seq"], 0);
        assert_ne!(reset["epoch"], joined.epoch.as_str());
        epochs.push(reset["epoch"].clone());
    }
    assert_eq!(epochs[0], epochs[1]);

    // Sending works again (the first try may still meet the old connection), from seq 1.
    let seq = eventually("a send to succeed", WAIT, || async { alice.send("r", json!("back")).await.ok() }).await;
    assert_eq!(seq, Some(1));
    for c in [&mut alice, &mut bob] {
        assert_eq!(messages(c, "r", 1, WAIT).await, vec![(1, json!("back"))]);
    }
    assert_eq!(bob.send("r", json!("and live")).await.unwrap(), Some(2));
    for c in [&mut alice, &mut bob] {
        assert_eq!(seqs(&messages(c, "r", 1, WAIT).await), vec![2]);
    }

    // A client coming back with the old epoch cannot recover.
    let (carol, _tc) = connect(&b, "carol").await;
    let back = carol.join("r", Some((&joined.epoch, 3))).await.unwrap();
    assert!(!back.recovered);
    assert_eq!((json!(back.epoch), back.seq), (epochs[0].clone(), 2));
    a.shutdown().await;
    b.shutdown().await;
}
