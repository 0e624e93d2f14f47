//! Failures under running engines: a node that dies without a word (its sessions leave
//! presence within the expiry, with `member_left`), a node taken for dead that was alive (its
//! sessions come back), and Redis restarting empty under the nodes
//! (sends fail fast with `unavailable`, delivery resumes by itself, the epoch changes).

mod common;

use std::time::{Duration, Instant};

use chat_broker_redis::RedisBroker;
use chat_core::client::{HistoryQuery, PresenceEntry};
use chat_core::protocol::Since;
use chat_core::{Engine, ErrorCode};
use common::{connect, engine, eventually, member, messages, next_matching, reset, seqs, RedisServer};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

fn entry(user: &str, sessions: u64) -> PresenceEntry {
    PresenceEntry { user: user.into(), sessions }
}

#[tokio::test]
async fn a_dropped_node_leaves_presence_within_the_expiry() {
    let redis = RedisServer::start();
    let a = engine(&redis, "drop:", "a").await;
    let b = engine(&redis, "drop:", "b").await;
    let (mut alice, _ta) = connect(&a, "alice").await;
    alice.join("r", None).await.unwrap();
    let (bob, bob_task) = connect(&b, "bob").await;
    bob.join("r", None).await.unwrap();
    next_matching(&mut alice, WAIT, |e| member(e, "bob", true)).await;
    let members = alice.presence("r").await.unwrap();
    assert_eq!(members.members, [entry("alice", 1), entry("bob", 1)]);

    // Node b dies: its session task stops mid-flight and the engine is dropped, no shutdown.
    bob_task.abort();
    let _ = bob_task.await;
    drop(b);
    drop(bob);
    let died = Instant::now();
    next_matching(&mut alice, WAIT, |e| member(e, "bob", false)).await;
    let took = died.elapsed();
    // Within the 2 s expiry by design; the slack is for a loaded test machine.
    assert!(took <= Duration::from_secs(3), "bob left presence after {took:?} (expiry 2 s)");
    let members = alice.presence("r").await.unwrap();
    assert_eq!(members.members, [entry("alice", 1)]);

    // Node a serves on.
    assert_eq!(alice.send("r", json!("still here")).await.unwrap(), Some(1));
    assert_eq!(seqs(&messages(&mut alice, "r", 1, WAIT).await), vec![1]);
    a.shutdown().await;
}

/// A node that stalled past its deadline (here: its deadline moved into the past) is swept by
/// another: its users leave presence, and come back (`member_joined`, presence) on the node's
/// next beat, which finds it was swept.
#[tokio::test]
async fn a_node_taken_for_dead_registers_its_presence_again() {
    let redis = RedisServer::start();
    // Node a beats every 2 s, b every 500 ms: b's sweep mostly comes before a's next beat.
    let slow = RedisBroker::builder(redis.url())
        .key_prefix("stall:")
        .presence_ttl(Duration::from_secs(8))
        .op_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let a = Engine::builder().node_id("a").broker(slow).build().await.unwrap();
    let b = engine(&redis, "stall:", "b").await;
    let (alice, _ta) = connect(&a, "alice").await;
    alice.join("r", None).await.unwrap();
    let (mut bob, _tb) = connect(&b, "bob").await;
    bob.join("r", None).await.unwrap();
    let mut conn = common::conn(&redis).await;
    let live: Vec<String> =
        redis::cmd("ZRANGE").arg("stall:{nodes}:live").arg(0).arg(-1).query_async(&mut conn).await.unwrap();
    let node_a = live.iter().find(|n| n.starts_with("a-")).expect("node a is registered").clone();

    // Its deadline passes: a sweep of b's removes alice, unless a beat of a's comes first and
    // moves the deadline ahead again (about one time in four); then again.
    let deadline = Instant::now() + WAIT;
    loop {
        let _: i64 =
            redis::cmd("ZADD").arg("stall:{nodes}:live").arg(0).arg(&node_a).query_async(&mut conn).await.unwrap();
        let left =
            tokio::time::timeout(Duration::from_secs(1), next_matching(&mut bob, WAIT, |e| member(e, "alice", false)));
        if left.await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "node a was never swept");
    }
    next_matching(&mut bob, WAIT, |e| member(e, "alice", true)).await;
    let members = bob.presence("r").await.unwrap();
    assert_eq!(members.members, [entry("alice", 1), entry("bob", 1)]);
    let registry: Vec<String> =
        redis::cmd("HKEYS").arg(format!("stall:node:{{{node_a}}}")).query_async(&mut conn).await.unwrap();
    assert_eq!(registry.len(), 1, "the registry holds alice's session again: {registry:?}");
    a.shutdown().await;
    b.shutdown().await;
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
    assert_eq!(err.code(), Some(ErrorCode::Unavailable), "{err}");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "a send during the outage took {took:?}");

    redis.restart();
    // Connected members are told the history is gone, by each node on its own.
    let mut epochs = Vec::new();
    for c in [&mut alice, &mut bob] {
        let reset = next_matching(c, WAIT, reset).await;
        assert_eq!(reset.seq, 0);
        assert_ne!(reset.epoch, joined.epoch);
        epochs.push(reset.epoch.clone());
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
    let back = carol.join("r", Some(Since::new(&joined.epoch, 3))).await.unwrap();
    assert!(!back.recovered);
    assert_eq!((back.epoch, back.seq), (epochs[0].clone(), 2));
    a.shutdown().await;
    b.shutdown().await;
}

/// A leave while Redis is frozen cannot remove the session from presence; once Redis answers
/// again the node retries, and the ghost disappears (with `member_left`) within the expiry.
#[tokio::test]
async fn a_leave_while_redis_is_frozen_leaves_no_ghost() {
    let redis = RedisServer::start();
    let a = engine(&redis, "ghost:", "a").await;
    let (mut alice, _ta) = connect(&a, "alice").await;
    let (bob, _tb) = connect(&a, "bob").await;
    alice.join("r", None).await.unwrap();
    bob.join("r", None).await.unwrap();
    next_matching(&mut alice, WAIT, |e| member(e, "bob", true)).await;

    redis.pause();
    // The reply comes once the removal has failed (the op timeout): nothing was removed.
    bob.leave("r").await.expect("left");
    redis.resume();

    next_matching(&mut alice, WAIT, |e| member(e, "bob", false)).await;
    let members = alice.presence("r").await.unwrap();
    assert_eq!(members.members, [entry("alice", 1)]);
    a.shutdown().await;
}

/// A session in many rooms ends in bounded time while Redis is frozen: its rooms are left at
/// once under one deadline, not one after another (each call waiting for its timeout).
#[tokio::test]
async fn ending_a_session_while_redis_is_frozen_is_bounded() {
    const ROOMS: usize = 40;
    let redis = RedisServer::start();
    let a = engine(&redis, "frozen:", "a").await;
    let (bob, bob_task) = connect(&a, "bob").await;
    for i in 0..ROOMS {
        bob.join(&format!("r{i}"), None).await.unwrap();
    }
    assert_eq!(a.stats().rooms, ROOMS);
    redis.pause();
    let ended = Instant::now();
    drop(bob); // the peer goes away
               // One after another, each room's unsubscribe and presence removal would wait for the op
               // timeout (0.5 s): 40 s. At once, under the close deadline (5 s): about one op timeout.
    tokio::time::timeout(Duration::from_secs(20), bob_task).await.expect("the session ends").unwrap();
    let took = ended.elapsed();
    redis.resume();
    assert!(took < Duration::from_secs(ROOMS as u64 / 4), "ending took {took:?}");
    eventually("presence to forget bob", WAIT, || async {
        let (carol, _tc) = connect(&a, "carol").await;
        carol.join("r0", None).await.ok()?;
        let members = carol.presence("r0").await.ok()?;
        (members.members == [entry("carol", 1)]).then_some(())
    })
    .await;
    a.shutdown().await;
}

/// The issue's finding: Redis killed and restarted from an older snapshot. Its seq is behind
/// what the node delivered, so the room starts a new epoch holding what the snapshot kept:
/// connected members get `reset`, then that history and the next sends, and a client coming
/// back with a `since` of the old epoch is not told it recovered.
#[tokio::test]
async fn redis_coming_back_from_an_older_snapshot_starts_a_new_epoch() {
    let mut redis = RedisServer::start_persistent();
    let a = engine(&redis, "snap:", "a").await;
    let (mut alice, _ta) = connect(&a, "alice").await;
    let (mut bob, _tb) = connect(&a, "bob").await;
    let old = alice.join("r", None).await.unwrap().epoch;
    bob.join("r", None).await.unwrap();
    let send = |n: u64| json!({ "n": n });
    for n in 1..=5 {
        assert_eq!(alice.send("r", send(n)).await.unwrap(), Some(n));
    }
    let _: () = redis::cmd("SAVE").query_async(&mut common::conn(&redis).await).await.expect("SAVE");
    for n in 6..=10 {
        assert_eq!(alice.send("r", send(n)).await.unwrap(), Some(n));
    }
    for c in [&mut alice, &mut bob] {
        assert_eq!(seqs(&messages(c, "r", 10, WAIT).await), (1..=10).collect::<Vec<_>>());
    }

    redis.restart(); // SIGKILL, then back from the snapshot: seq 5 in the old epoch

    // The next three sends (retried while the node reconnects: `unavailable` stores nothing).
    let mut acked = Vec::new();
    for n in 11..=13 {
        let seq = eventually("a send to be stored", WAIT, || async { alice.send("r", send(n)).await.ok() }).await;
        acked.push(seq.expect("a stored seq"));
    }
    // The new epoch holds what the snapshot kept (1..5, renumbered from 1: the same here), then
    // the new messages.
    assert_eq!(acked, vec![6, 7, 8], "the new epoch goes on after what Redis kept");
    for c in [&mut alice, &mut bob] {
        let reset = next_matching(c, WAIT, |e| reset(e).filter(|r| r.room == "r")).await;
        assert_ne!(reset.epoch, old);
        let got = messages(c, "r", 8, WAIT).await;
        let expected: Vec<_> = (1..=5).chain(11..=13).zip(1..).map(|(n, seq)| (seq, send(n))).collect();
        assert_eq!(got, expected, "what Redis kept, then every ack");
    }
    let (carol, _tc) = connect(&a, "carol").await;
    let back = carol.join("r", Some(Since::new(&old, 10))).await.unwrap();
    assert!(!back.recovered, "{back:?}");
    assert_ne!(back.epoch, old);
    a.shutdown().await;
}

/// One of a room's keys evicted (or deleted) on its own: the seq, the stream, the epoch. Each
/// loses history or its numbering, so each starts a new epoch, announced with `reset`, holding
/// what is left of the stream; the next send follows it and reaches the member.
#[tokio::test]
async fn a_room_key_lost_on_its_own_starts_a_new_epoch() {
    let redis = RedisServer::start();
    let a = engine(&redis, "evict:", "a").await;
    let (mut alice, _ta) = connect(&a, "alice").await;
    for (i, key) in ["s", "h", "e"].into_iter().enumerate() {
        let room = format!("r{i}");
        let old = alice.join(&room, None).await.unwrap().epoch;
        for n in 1..=3 {
            assert_eq!(alice.send(&room, json!(n)).await.unwrap(), Some(n));
        }
        assert_eq!(seqs(&messages(&mut alice, &room, 3, WAIT).await), vec![1, 2, 3]);
        let _: i64 = redis::cmd("DEL")
            .arg(format!("evict:{{{room}}}:{key}"))
            .query_async(&mut common::conn(&redis).await)
            .await
            .expect("DEL");
        // Losing the seq or the epoch leaves the stream, which the new epoch keeps; losing the
        // stream leaves nothing to keep.
        let kept: Vec<_> = if key == "h" { vec![] } else { (1..=3).map(|n| (n, json!(n))).collect() };
        let next = kept.len() as u64 + 1;
        assert_eq!(alice.send(&room, json!("after")).await.unwrap(), Some(next), "key {key}");
        let reset = next_matching(&mut alice, WAIT, |e| reset(e).filter(|r| r.room == room.as_str())).await;
        assert_ne!(reset.epoch, old, "key {key}");
        let expected: Vec<_> = kept.into_iter().chain([(next, json!("after"))]).collect();
        assert_eq!(messages(&mut alice, &room, next as usize, WAIT).await, expected, "key {key}");
    }
    a.shutdown().await;
}

/// Redis comes back older, and before this node calls it again another node (one that was
/// behind) stores new messages under the seqs this node already delivered: Redis's seq has
/// caught up with this node's, but the message at it is another. The message ids tell, and the
/// room starts a new epoch (holding Redis's history) instead of this node taking the new
/// messages for duplicates.
#[tokio::test(flavor = "current_thread")]
async fn a_history_that_diverged_under_the_same_seqs_starts_a_new_epoch() {
    let mut redis = RedisServer::start_persistent();
    let a = engine(&redis, "lag:", "a").await;
    let (mut alice, _ta) = connect(&a, "alice").await;
    let old = alice.join("r", None).await.unwrap().epoch;
    for n in 1..=5 {
        assert_eq!(alice.send("r", json!(n)).await.unwrap(), Some(n));
    }
    let _: () = redis::cmd("SAVE").query_async(&mut common::conn(&redis).await).await.expect("SAVE");
    for n in 6..=8 {
        assert_eq!(alice.send("r", json!(n)).await.unwrap(), Some(n));
    }
    assert_eq!(seqs(&messages(&mut alice, "r", 8, WAIT).await), (1..=8).collect::<Vec<_>>());

    // No await from here to the end of the block: node a (on this test's one thread) cannot
    // run while Redis restarts from the snapshot (seq 5) and "another node" stores 6..8 anew,
    // with ids of its own, as lua/publish.lua would.
    {
        redis.restart();
        let mut other = redis::Client::open(redis.url()).unwrap().get_connection().expect("a blocking connection");
        for n in 6..=8u64 {
            let seq: u64 = redis::cmd("INCR").arg("lag:{r}:s").query(&mut other).unwrap();
            assert_eq!(seq, n);
            let _: String = redis::cmd("XADD")
                .arg("lag:{r}:h")
                .arg(format!("{n}-0"))
                .arg(&["f", "lagger", "t", "1", "b", "\"new\"", "x", "99999999999999", "i", &format!("{n}")])
                .query(&mut other)
                .unwrap();
        }
    }

    let seq = eventually("a send to be stored", WAIT, || async { alice.send("r", json!("after")).await.ok() }).await;
    assert_eq!(seq, Some(9), "after what Redis holds, in a new epoch");
    let reset = next_matching(&mut alice, WAIT, reset).await;
    assert_ne!(reset.epoch, old, "not seq 9 after messages alice never got, in the old epoch");
    // The new epoch holds Redis's history as it is (1..5 from the snapshot, the other node's
    // 6..8), then the new message: alice gets the other node's messages she had never seen.
    let got = messages(&mut alice, "r", 9, WAIT).await;
    let theirs = (6..=8).map(|n| (n, json!("new")));
    let expected: Vec<_> = (1..=5).map(|n| (n, json!(n))).chain(theirs).chain([(9, json!("after"))]).collect();
    assert_eq!(got, expected);
    a.shutdown().await;
}

/// `client` joins room `r` and sends 1..3, Redis saves a snapshot, then 4..6; returns the
/// room's epoch once the client got all six.
async fn six_messages_past_a_snapshot(redis: &RedisServer, client: &mut chat_core::client::Client) -> String {
    let epoch = client.join("r", None).await.unwrap().epoch;
    for n in 1..=3 {
        assert_eq!(client.send("r", json!(n)).await.unwrap(), Some(n));
    }
    let _: () = redis::cmd("SAVE").query_async(&mut common::conn(redis).await).await.expect("SAVE");
    for n in 4..=6 {
        assert_eq!(client.send("r", json!(n)).await.unwrap(), Some(n));
    }
    assert_eq!(seqs(&messages(client, "r", 6, WAIT).await), (1..=6).collect::<Vec<_>>());
    epoch
}

/// Found by the history checker (tests/faults.rs): Redis restarted twice from the same
/// snapshot. The first restart starts a new epoch (holding the snapshot's messages); the
/// second brings back the epoch the room had left, at the snapshot's seq. Going back to it
/// would hand out its seqs a second time (members already had other messages under them), so
/// that too starts a new epoch: epochs are named by when they began, and Redis holding one
/// older than a node knows is a rollback.
#[tokio::test]
async fn redis_back_to_one_snapshot_twice_starts_a_new_epoch_each_time() {
    let mut redis = RedisServer::start_persistent();
    let a = engine(&redis, "twice:", "a").await;
    let (mut alice, _ta) = connect(&a, "alice").await;
    let first = six_messages_past_a_snapshot(&redis, &mut alice).await;

    let mut epochs = vec![first];
    for round in 1..=2 {
        redis.restart(); // back to the snapshot: the first epoch, seq 3
        let text = format!("after restart {round}");
        let seq = eventually("a send to be stored", WAIT, || async { alice.send("r", json!(text)).await.ok() }).await;
        assert_eq!(seq, Some(4), "round {round}: after the snapshot's 1..3, in a new epoch");
        let reset = next_matching(&mut alice, WAIT, |e| reset(e).filter(|r| r.room == "r")).await;
        assert!(!epochs.contains(&reset.epoch), "round {round}: back to an old epoch {} ({epochs:?})", reset.epoch);
        epochs.push(reset.epoch.clone());
        let expected: Vec<_> = (1..=3).map(|n| (n, json!(n))).chain([(4, json!(text))]).collect();
        assert_eq!(messages(&mut alice, "r", 4, WAIT).await, expected);
        assert_eq!(alice.send("r", json!("more")).await.unwrap(), Some(5));
        assert_eq!(messages(&mut alice, "r", 1, WAIT).await, vec![(5, json!("more"))]);
    }
    a.shutdown().await;
}

/// Found by the history checker (tests/faults.rs): Redis comes back older, and a node that
/// holds nothing of the room (its first member joins now) cannot know: it answers the join at
/// Redis's older position and stores a message there, acknowledged. When a node that knows
/// better calls next, the room starts a new epoch; that acknowledged message is in it (the new
/// epoch holds everything Redis still has), not dropped with the rolled-back history.
#[tokio::test]
async fn a_message_stored_after_a_rollback_by_a_node_that_could_not_know_survives_its_detection() {
    let mut redis = RedisServer::start_persistent();
    let a = engine(&redis, "unknowing:", "a").await;
    let (mut alice, _ta) = connect(&a, "alice").await;
    let old = six_messages_past_a_snapshot(&redis, &mut alice).await;

    redis.restart(); // back to the snapshot: the old epoch at seq 3
    let b = engine(&redis, "unknowing:", "b").await;
    let (bob, _tb) = connect(&b, "bob").await;
    let joined = bob.join("r", None).await.unwrap();
    assert_eq!((joined.epoch.as_str(), joined.seq), (old.as_str(), 3), "b cannot know Redis went back");
    assert_eq!(bob.send("r", json!("bob's")).await.unwrap(), Some(4), "acknowledged in the old epoch");

    // Node a knows the old epoch went to 6: its next call starts the new epoch.
    let seq = eventually("a send to be stored", WAIT, || async { alice.send("r", json!("alice's")).await.ok() }).await;
    assert_eq!(seq, Some(5), "after what Redis holds: 1..3 and bob's");
    let reset = next_matching(&mut alice, WAIT, reset).await;
    assert_ne!(reset.epoch, old);
    let expected: Vec<_> = (1..=3).map(|n| (n, json!(n))).chain([(4, json!("bob's")), (5, json!("alice's"))]).collect();
    assert_eq!(messages(&mut alice, "r", 5, WAIT).await, expected, "bob's acknowledged message is kept");
    let page = bob.history("r", HistoryQuery::default()).await.unwrap();
    assert_eq!(page.epoch, reset.epoch);
    let history: Vec<_> = page.messages.into_iter().map(|m| (m.seq.unwrap_or_default(), m.body)).collect();
    assert_eq!(history, expected);
    a.shutdown().await;
    b.shutdown().await;
}

async fn keyed(client: &chat_core::client::Client, n: u64) -> Result<Option<u64>, chat_core::client::ClientError> {
    client.send_with("r", json!(n), Some(&format!("k{n}")), false).await
}

/// Found by the history checker: a new epoch keeps what Redis held, so it keeps idempotency
/// too. A message sent with a key before Redis came back older, and kept, is not stored again
/// when the key is resent in the new epoch: the resend gets the message's new seq.
#[tokio::test]
async fn a_kept_message_stays_idempotent_in_the_new_epoch() {
    let mut redis = RedisServer::start_persistent();
    let a = engine(&redis, "keys:", "a").await;
    let (mut alice, _ta) = connect(&a, "alice").await;
    let old = alice.join("r", None).await.unwrap().epoch;
    for n in 1..=3 {
        assert_eq!(keyed(&alice, n).await.unwrap(), Some(n));
    }
    let _: () = redis::cmd("SAVE").query_async(&mut common::conn(&redis).await).await.expect("SAVE");
    for n in 4..=5 {
        assert_eq!(keyed(&alice, n).await.unwrap(), Some(n));
    }
    assert_eq!(seqs(&messages(&mut alice, "r", 5, WAIT).await), (1..=5).collect::<Vec<_>>());

    redis.restart(); // back to 1..3
    let resent = eventually("a resend to be answered", WAIT, || async { keyed(&alice, 2).await.ok() }).await;
    let reset = next_matching(&mut alice, WAIT, reset).await;
    assert_ne!(reset.epoch, old);
    assert_eq!(resent, Some(2), "the kept message, under its seq in the new epoch");
    assert_eq!(keyed(&alice, 5).await.unwrap(), Some(4), "a lost message's key is stored anew");
    let got = messages(&mut alice, "r", 4, WAIT).await;
    assert_eq!(got, vec![(1, json!(1)), (2, json!(2)), (3, json!(3)), (4, json!(5))], "nothing twice");
    a.shutdown().await;
}
