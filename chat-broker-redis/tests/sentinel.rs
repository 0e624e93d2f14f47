//! Redis high availability: a primary, a replica and three sentinels, all real processes on
//! free loopback ports started by the test, and two engines on a `redis+sentinel://` broker.
//! The primary is killed; the sentinels promote the replica; the nodes follow it by themselves.
//! Members then see either continuity (the replica had everything) or `reset` (it had missed
//! acknowledged messages), never a silent loss.

mod common;

use std::time::Duration;

use chat_core::client::{Event, HistoryQuery};
use chat_core::protocol::Since;
use chat_core::{Engine, ErrorCode};
use common::{broker_at, connect, eventually, messages, next_matching, reset, seqs, RedisServer};
use redis::AsyncCommands;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);
/// How long a failover may take: the sentinels take the primary for down after 500 ms, agree,
/// elect a leader (a conflict costs a failover timeout, 2 s, before the next try) and promote.
const FAILOVER: Duration = Duration::from_secs(30);
const SERVICE: &str = "chat-primary";

/// A primary, its replica and three sentinels (quorum 2) that all know both and each other.
struct Ha {
    primary: RedisServer,
    replica: RedisServer,
    sentinels: Vec<RedisServer>,
}

impl Ha {
    async fn start() -> Ha {
        let primary = RedisServer::start();
        let replica = RedisServer::start_replica_of(&primary);
        let sentinels: Vec<RedisServer> = (0..3).map(|_| RedisServer::start_sentinel(&primary, SERVICE, 2)).collect();
        let ha = Ha { primary, replica, sentinels };
        // A failover needs every sentinel to know the replica (from the primary's INFO) and the
        // other sentinels (from their hellos on the primary), which takes them a few seconds.
        for sentinel in &ha.sentinels {
            eventually("the sentinels to know the replica and each other", FAILOVER, || async {
                let mut conn = common::conn(sentinel).await;
                let info: Vec<String> =
                    redis::cmd("SENTINEL").arg("MASTER").arg(SERVICE).query_async(&mut conn).await.ok()?;
                let field = |name: &str| info.iter().position(|f| f == name).and_then(|i| info.get(i + 1)).cloned();
                (field("num-slaves")? == "1" && field("num-other-sentinels")? == "2").then_some(())
            })
            .await;
        }
        ha
    }

    /// `redis+sentinel://` with every sentinel.
    fn url(&self) -> String {
        let hosts: Vec<String> = self.sentinels.iter().map(|s| format!("127.0.0.1:{}", s.port())).collect();
        format!("redis+sentinel://{}/{SERVICE}", hosts.join(","))
    }

    /// Waits until the replica has every write the primary took.
    async fn replica_in_sync(&self) {
        let conn = common::conn(&self.primary).await;
        eventually("the replica to acknowledge the writes", WAIT, || async {
            let acked: i64 = redis::cmd("WAIT").arg(1).arg(100).query_async(&mut conn.clone()).await.ok()?;
            (acked == 1).then_some(())
        })
        .await;
    }

    /// Kills the primary and waits until the sentinels have promoted the replica.
    async fn fail_over(&mut self) {
        self.primary.kill();
        let replica = self.replica.port().to_string();
        for sentinel in &self.sentinels {
            eventually("the sentinels to promote the replica", FAILOVER, || async {
                let mut conn = common::conn(sentinel).await;
                let addr: Vec<String> = redis::cmd("SENTINEL")
                    .arg("GET-MASTER-ADDR-BY-NAME")
                    .arg(SERVICE)
                    .query_async(&mut conn)
                    .await
                    .ok()?;
                (addr.get(1) == Some(&replica)).then_some(())
            })
            .await;
        }
    }
}

async fn engine(url: &str, node: &str) -> Engine {
    Engine::builder().node_id(node).broker(broker_at(url, "ha:")).build().await.expect("engine attaches")
}

/// The replica had every message: after the failover the room goes on in the same epoch, the
/// next send is seq 6 and reaches both nodes' members, and a client coming back with `since`
/// recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_follow_a_failover_to_an_up_to_date_replica_without_a_reset() {
    let mut ha = Ha::start().await;
    let a = engine(&ha.url(), "a").await;
    let b = engine(&ha.url(), "b").await;
    let (mut alice, _ta) = connect(&a, "alice").await;
    let (mut bob, _tb) = connect(&b, "bob").await;
    let epoch = alice.join("r", None).await.unwrap().epoch;
    bob.join("r", None).await.unwrap();
    for n in 1..=5 {
        assert_eq!(alice.send("r", json!(n)).await.unwrap(), Some(n));
    }
    for c in [&mut alice, &mut bob] {
        assert_eq!(seqs(&messages(c, "r", 5, WAIT).await), vec![1, 2, 3, 4, 5]);
    }
    ha.replica_in_sync().await;

    ha.fail_over().await;
    // Sends fail with `unavailable` (nothing stored) until the nodes found the new primary.
    let seq = eventually("a send after the failover", FAILOVER, || async { bob.send("r", json!(6)).await.ok() }).await;
    assert_eq!(seq, Some(6), "the same history goes on");
    for c in [&mut alice, &mut bob] {
        let next = next_matching(c, WAIT, |e| {
            matches!(&e, Event::Message(m) if m.room == "r")
                .then_some(())
                .or(matches!(e, Event::Reset(_)).then_some(()))
                .map(|()| e)
        })
        .await;
        assert!(matches!(&next, Event::Message(m) if m.seq == Some(6)), "{next:?}");
    }
    assert_eq!(alice.send("r", json!(7)).await.unwrap(), Some(7));
    for c in [&mut alice, &mut bob] {
        assert_eq!(seqs(&messages(c, "r", 1, WAIT).await), vec![7]);
    }
    let (carol, _tc) = connect(&a, "carol").await;
    let back = carol.join("r", Some(Since::new(&epoch, 4))).await.unwrap();
    assert!(back.recovered, "{back:?}");
    assert_eq!((back.epoch, back.seq), (epoch, 7));
    a.shutdown().await;
    b.shutdown().await;
}

/// The replica was frozen while the primary acknowledged three more messages, which it never
/// got: the history the new primary holds is older than what the nodes delivered, so the room
/// starts a new epoch, holding what the replica has (1..5). Both nodes' members get `reset`,
/// then that history and the next sends; a client coming back with the old epoch is told it did
/// not recover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_to_a_replica_that_missed_writes_starts_a_new_epoch() {
    let mut ha = Ha::start().await;
    let a = engine(&ha.url(), "a").await;
    let b = engine(&ha.url(), "b").await;
    let (mut alice, _ta) = connect(&a, "alice").await;
    let (mut bob, _tb) = connect(&b, "bob").await;
    let old = alice.join("r", None).await.unwrap().epoch;
    bob.join("r", None).await.unwrap();
    for n in 1..=5 {
        assert_eq!(alice.send("r", json!(n)).await.unwrap(), Some(n));
    }
    ha.replica_in_sync().await;
    // The replica freezes and the primary drops it (a frozen replica would still receive what
    // the primary sends, in its socket buffer): what comes next exists only on the primary.
    ha.replica.pause();
    let mut primary = common::conn(&ha.primary).await;
    let _: i64 =
        redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("replica").query_async(&mut primary).await.expect("KILL");
    for n in 6..=8 {
        assert_eq!(alice.send("r", json!(n)).await.unwrap(), Some(n));
    }
    for c in [&mut alice, &mut bob] {
        assert_eq!(seqs(&messages(c, "r", 8, WAIT).await), (1..=8).collect::<Vec<_>>());
    }
    // The primary dies; the replica wakes up without 6..8 and is promoted.
    ha.primary.kill();
    ha.replica.resume();
    ha.fail_over().await;
    let mut probe = common::conn(&ha.replica).await;
    let seq: Option<u64> = probe.get("ha:{r}:s").await.expect("GET");
    assert_eq!(seq, Some(5), "the new primary missed 6..8");

    let seq =
        eventually("a send after the failover", FAILOVER, || async { bob.send("r", json!("new")).await.ok() }).await;
    assert_eq!(seq, Some(6), "after the replica's 1..5, in a new epoch");
    for c in [&mut alice, &mut bob] {
        let reset = next_matching(c, WAIT, |e| reset(e).filter(|r| r.room == "r")).await;
        assert_ne!(reset.epoch, old, "not seq 6 again in the old epoch");
        let expected: Vec<_> = (1..=5).map(|n| (n, json!(n))).chain([(6, json!("new"))]).collect();
        assert_eq!(messages(c, "r", 6, WAIT).await, expected);
    }
    assert_eq!(alice.send("r", json!("more")).await.unwrap(), Some(7));
    for c in [&mut alice, &mut bob] {
        assert_eq!(messages(c, "r", 1, WAIT).await, vec![(7, json!("more"))]);
    }
    let (carol, _tc) = connect(&a, "carol").await;
    let back = carol.join("r", Some(Since::new(&old, 8))).await.unwrap();
    assert!(!back.recovered, "{back:?}");
    a.shutdown().await;
    b.shutdown().await;
}

/// `replicas_to_acknowledge(1)`: `sent` only once the replica has the message. With the
/// replica frozen the send is `unavailable` (the primary stored it, nobody else has it), and
/// so is its resend; once the replica answers again, the resend with the same key gets the
/// same seq, stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sent_can_wait_for_a_replica() {
    let ha = Ha::start().await;
    ha.replica_in_sync().await;
    let broker = chat_broker_redis::RedisBroker::builder(ha.url())
        .key_prefix("wait:")
        .op_timeout(Duration::from_millis(500))
        .replicas_to_acknowledge(1)
        .build()
        .expect("broker settings");
    let a = Engine::builder().node_id("a").broker(broker).build().await.expect("engine attaches");
    let (mut alice, _ta) = connect(&a, "alice").await;
    alice.join("r", None).await.unwrap();
    let keyed = |text: &'static str| alice.send_with("r", json!(text), Some(text), false);
    assert_eq!(keyed("one").await.unwrap(), Some(1), "the replica acknowledged it");

    ha.replica.pause();
    let err = keyed("two").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Unavailable), "{err}");
    // The resend finds the message stored, but the replica still lacks it: not `sent` yet
    // (found by the history checker: a failover then lost an acknowledged duplicate).
    let err = keyed("two").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Unavailable), "a duplicate waits for the replica too: {err}");
    ha.replica.resume();
    let seq = eventually("the resend to be acknowledged", WAIT, || async { keyed("two").await.ok() }).await;
    assert_eq!(seq, Some(2), "the same message, stored once");
    assert_eq!(seqs(&messages(&mut alice, "r", 2, WAIT).await), vec![1, 2]);
    a.shutdown().await;
}

/// A primary demoted to replica (as a failover does to a primary that comes back) answers no
/// room script, reads included: a node still connected to it gets `unavailable` for a join or
/// a history page, never the replica's possibly stale position (found by the history checker:
/// a join read an old seq from a primary that had just come back as a replica, so the member
/// missed messages until the next one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_primary_serves_no_stale_reads() {
    let primary = RedisServer::start();
    let replica = RedisServer::start_replica_of(&primary);
    let a = common::engine(&primary, "demoted:", "a").await;
    let (alice, _ta) = connect(&a, "alice").await;
    alice.join("r", None).await.unwrap();
    for n in 1..=3 {
        assert_eq!(alice.send("r", json!(n)).await.unwrap(), Some(n));
    }
    let mut old = common::conn(&primary).await;
    eventually("the replica to acknowledge the writes", WAIT, || async {
        let acked: i64 = redis::cmd("WAIT").arg(1).arg(100).query_async(&mut old.clone()).await.ok()?;
        (acked == 1).then_some(())
    })
    .await;

    // The roles swap, as after a failover: the replica takes writes, the primary follows it.
    let mut new = common::conn(&replica).await;
    let _: () = redis::cmd("REPLICAOF").arg("NO").arg("ONE").query_async(&mut new).await.unwrap();
    let _: () = redis::cmd("REPLICAOF").arg("127.0.0.1").arg(replica.port()).query_async(&mut old).await.unwrap();
    eventually("the old primary to follow the new one", WAIT, || async {
        let info: String = redis::cmd("INFO").arg("replication").query_async(&mut old.clone()).await.ok()?;
        (info.contains("role:slave") && info.contains("master_link_status:up")).then_some(())
    })
    .await;

    let (bob, _tb) = connect(&a, "bob").await;
    let err = bob.join("r", None).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Unavailable), "{err}");
    let err = alice.history("r", HistoryQuery::latest(10)).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Unavailable), "{err}");
    a.shutdown().await;
}
