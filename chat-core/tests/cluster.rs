//! Several engines on one `MemoryBroker` behave as one cluster: one seq order on every node,
//! recovery without gaps or duplicates, resets, and slow consumers that harm nobody else.

mod common;

use std::collections::HashMap;

use chat_core::client::{Client, Event, HistoryQuery, Member, PresenceEntry, Reset};
use chat_core::protocol::Since;
use chat_core::{Engine, MemoryBroker};
use common::{client, event, event_where, message, Raw};
use serde_json::json;

fn member(room: &str, user: &str) -> Member {
    Member { room: room.into(), user: user.into() }
}

fn entry(user: &str, sessions: u64) -> PresenceEntry {
    PresenceEntry { user: user.into(), sessions }
}

async fn cluster(n: usize) -> (MemoryBroker, Vec<Engine>) {
    let broker = MemoryBroker::new();
    let mut engines = Vec::new();
    for i in 0..n {
        let engine = Engine::builder()
            .node_id(format!("node-{i}"))
            .broker(broker.clone())
            .tune(|c| c.rate_per_sec = 100_000)
            .tune(|c| c.rate_burst = 100_000)
            .build()
            .await
            .unwrap();
        engines.push(engine);
    }
    (broker, engines)
}

/// Reads `client`'s messages of `room` until it has seen seq `last`; returns (seq, body) pairs.
async fn messages_until(client: &mut Client, room: &str, last: u64) -> Vec<(u64, serde_json::Value)> {
    let mut seen = Vec::new();
    while seen.last().map(|(s, _)| *s) != Some(last) {
        let m = message(client).await;
        if m.room == room {
            seen.push((m.seq.expect("a stored message"), m.body));
        }
    }
    seen
}

async fn concurrent_senders_see_one_order(nodes: usize) {
    let (_broker, engines) = cluster(nodes).await;
    let per_sender = 50u64;
    let mut members = Vec::new();
    for (i, engine) in engines.iter().enumerate() {
        for j in 0..2 {
            let c = client(engine, &format!("u{i}-{j}")).await;
            assert_eq!(c.welcome().node, format!("node-{i}"));
            c.join("room", None).await.unwrap();
            members.push(c);
        }
    }
    // Every member sends concurrently, from every node.
    let mut senders = Vec::new();
    for (i, engine) in engines.iter().enumerate() {
        let c = client(engine, &format!("sender-{i}")).await;
        c.join("room", None).await.unwrap();
        senders.push(tokio::spawn(async move {
            for n in 0..per_sender {
                c.send("room", json!({"from": i, "n": n})).await.unwrap();
            }
            c
        }));
    }
    let total = per_sender * nodes as u64;
    let mut views = Vec::new();
    for m in &mut members {
        views.push(messages_until(m, "room", total).await);
    }
    for s in senders {
        s.await.unwrap();
    }
    let first = &views[0];
    assert_eq!(first.iter().map(|(s, _)| *s).collect::<Vec<_>>(), (1..=total).collect::<Vec<_>>(), "no gap, no dup");
    for view in &views[1..] {
        assert_eq!(view, first, "every member on every node sees one order");
    }
    // Each sender's own messages stay in the order it sent them.
    let mut next: HashMap<u64, u64> = HashMap::new();
    for (_, body) in first {
        let from = body["from"].as_u64().unwrap();
        let n = body["n"].as_u64().unwrap();
        assert_eq!(*next.entry(from).or_default(), n);
        *next.get_mut(&from).unwrap() += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_one_order() {
    concurrent_senders_see_one_order(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_engines_one_order() {
    concurrent_senders_see_one_order(3).await;
}

#[tokio::test]
async fn presence_and_member_events_span_the_cluster() {
    let (_broker, engines) = cluster(2).await;
    let mut a = client(&engines[0], "alice").await;
    a.join("r", None).await.unwrap();
    event_where(&mut a, |e| matches!(e, Event::MemberJoined(_)).then_some(())).await;
    let b = client(&engines[1], "bob").await;
    b.join("r", None).await.unwrap();
    assert_eq!(event(&mut a).await, Event::MemberJoined(member("r", "bob")));
    let p = a.presence("r").await.unwrap();
    assert_eq!(p.members, [entry("alice", 1), entry("bob", 1)]);
    drop(b);
    assert_eq!(event(&mut a).await, Event::MemberLeft(member("r", "bob")));
}

#[tokio::test]
async fn a_dropped_node_leaves_presence() {
    let (broker, engines) = cluster(1).await;
    let mut a = client(&engines[0], "alice").await;
    a.join("r", None).await.unwrap();
    event_where(&mut a, |e| matches!(e, Event::MemberJoined(_)).then_some(())).await;
    {
        // A second node whose sessions vanish with it (no graceful shutdown).
        let other = Engine::builder().broker(broker.clone()).build().await.unwrap();
        let mut raw = Raw::hello(&other, "bob").await;
        raw.join("r").await;
        assert!(matches!(event(&mut a).await, Event::MemberJoined(m) if m.user == "bob"));
        raw.task.abort();
        drop(raw);
        drop(other);
    }
    assert_eq!(event(&mut a).await, Event::MemberLeft(member("r", "bob")));
    assert_eq!(a.presence("r").await.unwrap().members, [entry("alice", 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_replays_what_was_missed_then_goes_live_without_gap_or_duplicate() {
    let (_broker, engines) = cluster(2).await;
    let writer = client(&engines[0], "writer").await;
    writer.join("r", None).await.unwrap();
    for n in 1..=5 {
        writer.send("r", json!(n)).await.unwrap();
    }
    let mut reader = client(&engines[1], "reader").await;
    let joined = reader.join("r", None).await.unwrap();
    assert_eq!((joined.seq, joined.recovered), (5, false));
    for n in 6..=8 {
        writer.send("r", json!(n)).await.unwrap();
    }
    let seen = messages_until(&mut reader, "r", 8).await;
    assert_eq!(seen.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![6, 7, 8]);
    drop(reader);

    // Missed while away: 9..=20, and more arrives while it recovers.
    for n in 9..=20 {
        writer.send("r", json!(n)).await.unwrap();
    }
    let background = tokio::spawn(async move {
        for n in 21..=60 {
            writer.send("r", json!(n)).await.unwrap();
        }
        writer
    });
    let mut back = client(&engines[1], "reader").await;
    let joined = back.join("r", Some(Since::new(&joined.epoch, 8))).await.unwrap();
    assert!(joined.recovered, "{joined:?}");
    assert!(joined.seq >= 20);
    let seen = messages_until(&mut back, "r", 60).await;
    assert_eq!(seen.iter().map(|(s, _)| *s).collect::<Vec<_>>(), (9..=60).collect::<Vec<_>>());
    assert!(seen.iter().all(|(s, body)| body.as_u64() == Some(*s)));
    background.await.unwrap();
}

#[tokio::test]
async fn recovery_fails_honestly() {
    let broker = MemoryBroker::new();
    let engine = Engine::builder().broker(broker.clone()).tune(|c| c.history_size = 5).build().await.unwrap();
    let writer = client(&engine, "writer").await;
    let joined = writer.join("r", None).await.unwrap();
    for n in 1..=3 {
        writer.send("r", json!(n)).await.unwrap();
    }
    let mut c = client(&engine, "c").await;
    // nothing missed
    let j = c.join("r", Some(Since::new(&joined.epoch, 3))).await.unwrap();
    assert!(j.recovered);
    c.leave("r").await.unwrap();
    // a seq from the future
    let j = c.join("r", Some(Since::new(&joined.epoch, 4))).await.unwrap();
    assert!(!j.recovered);
    c.leave("r").await.unwrap();
    // another epoch
    let j = c.join("r", Some(Since::new("another-epoch", 1))).await.unwrap();
    assert!(!j.recovered);
    c.leave("r").await.unwrap();
    // trimmed history: 10 missed, 5 kept
    for n in 4..=13 {
        writer.send("r", json!(n)).await.unwrap();
    }
    let j = c.join("r", Some(Since::new(&joined.epoch, 3))).await.unwrap();
    assert_eq!((j.recovered, j.seq), (false, 13));
    let page = c.history("r", HistoryQuery::default()).await.unwrap();
    assert_eq!(page.seqs(), vec![9, 10, 11, 12, 13]);
    // what was kept still recovers
    c.leave("r").await.unwrap();
    let j = c.join("r", Some(Since::new(&joined.epoch, 8))).await.unwrap();
    assert!(j.recovered);
    let replay = messages_until(&mut c, "r", 13).await;
    assert_eq!(replay.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![9, 10, 11, 12, 13]);
}

#[tokio::test]
async fn lost_history_resets_connected_members_and_refuses_old_epochs() {
    let (broker, engines) = cluster(2).await;
    let mut a = client(&engines[0], "alice").await;
    let before = a.join("r", None).await.unwrap();
    let b = client(&engines[1], "bob").await;
    b.join("r", None).await.unwrap();
    b.send("r", json!("old")).await.unwrap();
    messages_until(&mut a, "r", 1).await;
    broker.wipe();
    let Reset { room, epoch, seq } = event_where(&mut a, |e| match e {
        Event::Reset(r) => Some(r),
        _ => None,
    })
    .await;
    assert_eq!(room, "r");
    assert_eq!(seq, 0);
    assert_ne!(epoch, before.epoch);
    assert_eq!(b.send("r", json!("new")).await.unwrap(), Some(1), "the new epoch starts at 1");
    let m = message(&mut a).await;
    assert_eq!((m.seq, m.body.as_str()), (Some(1), Some("new")));
    let mut c = client(&engines[1], "carol").await;
    let j = c.join("r", Some(Since::new(&before.epoch, 1))).await.unwrap();
    assert!(!j.recovered);
    assert_eq!(j.epoch, epoch);
    event_where(&mut c, |e| matches!(e, Event::MemberJoined(_)).then_some(())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_never_reads_is_closed_and_nobody_else_notices() {
    let broker = MemoryBroker::new();
    let engine = Engine::builder()
        .broker(broker)
        .tune(|c| {
            // Small enough for the stalled member to overflow early, large enough that a
            // reader whose task a loaded machine delays now and then never lags this far
            // behind the writer's round trips.
            c.outbox_frames = 256;
            c.rate_per_sec = 100_000;
            c.rate_burst = 100_000;
        })
        .build()
        .await
        .unwrap();
    // The stalled member: its outbound sink is a zero-capacity channel nobody reads.
    let (tx, inbound) = futures::channel::mpsc::unbounded();
    let (outbound, stalled_rx) = futures::channel::mpsc::channel::<bytes::Bytes>(0);
    let server = engine.clone();
    let stalled = tokio::spawn(async move { server.serve(inbound, outbound, chat_core::ConnInfo::default()).await });
    let send = |s: &str| tx.unbounded_send(Ok::<_, std::io::Error>(chat_core::Inbound::Frame(s.to_owned().into())));
    send(r#"{"type":"hello","protocol":1,"user":"stalled"}"#).unwrap();
    send(r#"{"type":"join","room":"r"}"#).unwrap();

    let mut readers = Vec::new();
    for i in 0..3 {
        let c = client(&engine, &format!("reader{i}")).await;
        c.join("r", None).await.unwrap();
        readers.push(c);
    }
    let writer = client(&engine, "writer").await;
    writer.join("r", None).await.unwrap();
    let total = 1_000;
    let sending = tokio::spawn(async move {
        for n in 1..=total {
            writer.send("r", json!(n)).await.unwrap();
        }
        writer
    });
    for r in &mut readers {
        let seen = messages_until(r, "r", total).await;
        assert_eq!(seen.iter().map(|(s, _)| *s).collect::<Vec<_>>(), (1..=total).collect::<Vec<_>>());
    }
    sending.await.unwrap();
    // The stalled session was closed as a slow consumer while nobody read its socket. Now its
    // peer reads again, within the close grace: what it gets ends with bye slow_consumer.
    use futures::StreamExt;
    let frames: Vec<_> = tokio::time::timeout(common::WAIT, stalled_rx.collect()).await.expect("closed");
    tokio::time::timeout(common::WAIT, stalled).await.expect("the stalled session ends").unwrap();
    assert!(frames.len() < 300, "the overflow dropped its queue: {} frames", frames.len());
    let last: serde_json::Value = serde_json::from_slice(frames.last().unwrap()).unwrap();
    assert_eq!(last, json!({"type":"bye","reason":"slow_consumer","reconnect":true}));
    let p = readers[0].presence("r").await.unwrap();
    assert!(!p.members.iter().any(|m| m.user == "stalled"));
}

#[tokio::test]
async fn member_events_stay_off_even_when_the_broker_announces_a_dead_node() {
    let broker = MemoryBroker::new();
    let quiet = Engine::builder().broker(broker.clone()).member_events(|_| false).build().await.unwrap();
    let mut a = client(&quiet, "alice").await;
    a.join("r", None).await.unwrap();
    let other = Engine::builder().broker(broker.clone()).member_events(|_| false).build().await.unwrap();
    let mut raw = Raw::new(&other);
    raw.ask(r#"{"type":"hello","id":0,"protocol":1,"user":"bob"}"#).await;
    raw.ask(r#"{"type":"join","id":1,"room":"r"}"#).await;
    raw.task.abort();
    drop(raw);
    drop(other); // the broker announces bob's departure; this engine keeps it to itself
    let p = a.presence("r").await.unwrap();
    assert_eq!(p.members, [entry("alice", 1)]);
    a.sync().await.unwrap();
    assert!(a.try_next_frame().is_none(), "no member event reached alice");
}
