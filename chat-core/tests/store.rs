//! The engine with a store (issue 12): `sent` waits for the commit and appends are grouped,
//! history and recovery reach past the broker's window, and a node restarted on the same
//! store (a new memory broker: everything in memory is gone) goes on in the same epoch.
//!
//! The store here is a small map behind a mutex that a test can take down or hold at a gate,
//! so that what the engine does around the store can be watched; the real stores run the same
//! engine paths in their own crates' tests.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chat_core::broker::{HistoryQuery, Position};
use chat_core::store::{Record, RetentionPolicy};
use chat_core::{Engine, MemoryBroker, RoomName, Store, StoreError};
use common::{client, event_of, WAIT};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

/// Records by (room, epoch, seq); `latest` per room.
#[derive(Default)]
struct Kept {
    records: BTreeMap<(String, String, u64), Record>,
    latest: BTreeMap<String, Position>,
    appends: usize,
    down: bool,
}

/// A store in memory, with a switch to take it down and a gate that holds appends.
#[derive(Clone, Default)]
struct TestStore {
    kept: Arc<Mutex<Kept>>,
    gate: Option<Arc<Semaphore>>,
}

impl TestStore {
    fn kept(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept.lock().unwrap()
    }
}

#[async_trait]
impl Store for TestStore {
    async fn append(&self, batch: &[Record]) -> Result<Vec<usize>, StoreError> {
        if let Some(gate) = &self.gate {
            gate.acquire().await.expect("gate open").forget();
        }
        let mut kept = self.kept();
        if kept.down {
            return Err(StoreError::Unavailable("the test store is down".into()));
        }
        kept.appends += 1;
        for r in batch {
            kept.records.entry((r.room.to_string(), r.epoch.to_string(), r.seq)).or_insert_with(|| r.clone());
            let p = Position { epoch: r.epoch.clone(), seq: r.seq };
            let latest = kept.latest.entry(r.room.to_string()).or_insert_with(|| p.clone());
            if latest.epoch == p.epoch {
                latest.seq = latest.seq.max(p.seq);
            }
        }
        Ok(Vec::new())
    }

    async fn page(&self, room: &RoomName, epoch: &str, q: HistoryQuery) -> Result<Vec<Record>, StoreError> {
        let kept = self.kept();
        let lo = q.after.map_or(1, |a| a + 1);
        let hi = q.before.map_or(u64::MAX, |b| b.saturating_sub(1));
        if lo > hi {
            return Ok(Vec::new());
        }
        let range =
            kept.records.range((room.to_string(), epoch.to_string(), lo)..=(room.to_string(), epoch.to_string(), hi));
        let mut page: Vec<Record> = if q.after.is_some() {
            range.take(q.limit).map(|(_, r)| r.clone()).collect()
        } else {
            let mut newest: Vec<Record> = range.rev().take(q.limit).map(|(_, r)| r.clone()).collect();
            newest.reverse();
            newest
        };
        page.sort_by_key(|r| r.seq);
        Ok(page)
    }

    async fn latest(&self, room: &RoomName) -> Result<Option<Position>, StoreError> {
        let kept = self.kept();
        if kept.down {
            return Err(StoreError::Unavailable("the test store is down".into()));
        }
        Ok(kept.latest.get(room.as_str()).cloned())
    }

    async fn retain(&self, _: &RetentionPolicy, _: u64) -> Result<u64, StoreError> {
        Ok(0)
    }

    async fn erase(&self, _: &RoomName, _: &str, _: u64) -> Result<bool, StoreError> {
        Ok(false)
    }

    async fn erase_user(&self, _: &str) -> Result<u64, StoreError> {
        Ok(0)
    }
}

/// An engine on its own memory broker (keeping 3 messages) and `store`.
async fn engine_on(store: &TestStore) -> Engine {
    Engine::builder()
        .broker(MemoryBroker::new())
        .store(store.clone())
        .tune(|c| c.history_size = 3)
        .build()
        .await
        .expect("engine")
}

fn bodies(page: &Value) -> Vec<u64> {
    page["messages"].as_array().expect("messages").iter().map(|m| m["body"].as_u64().expect("a number")).collect()
}

fn seqs(page: &Value) -> Vec<u64> {
    page["messages"].as_array().expect("messages").iter().map(|m| m["seq"].as_u64().expect("a seq")).collect()
}

#[tokio::test]
async fn history_reaches_past_the_brokers_window_into_the_store() {
    let store = TestStore::default();
    let engine = engine_on(&store).await;
    let alice = client(&engine, "alice").await;
    alice.join("r", None).await.unwrap();
    for n in 1..=10 {
        assert_eq!(alice.send("r", json!(n)).await.unwrap(), Some(n));
    }
    assert_eq!(store.kept().records.len(), 10, "every sent message is in the store");
    let all = alice.history("r", None, None, Some(10)).await.unwrap();
    assert_eq!(bodies(&all), (1..=10).collect::<Vec<_>>(), "the window holds 8..10, the store the rest");
    let older = alice.history("r", Some(5), None, Some(50)).await.unwrap();
    assert_eq!(seqs(&older), vec![1, 2, 3, 4]);
    let after = alice.history("r", None, Some(2), Some(3)).await.unwrap();
    assert_eq!(seqs(&after), vec![3, 4, 5]);
    let across = alice.history("r", None, Some(6), Some(3)).await.unwrap();
    assert_eq!(seqs(&across), vec![7, 8, 9], "one from the store, two from the window");
    let newest = alice.history("r", None, None, Some(5)).await.unwrap();
    assert_eq!(seqs(&newest), vec![6, 7, 8, 9, 10]);
    engine.shutdown().await;
}

#[tokio::test]
async fn recovery_replays_from_the_store_what_the_window_lost() {
    let store = TestStore::default();
    let engine = engine_on(&store).await;
    let alice = client(&engine, "alice").await;
    let epoch = alice.join("r", None).await.unwrap().epoch;
    for n in 1..=10 {
        alice.send("r", json!(n)).await.unwrap();
    }
    let mut bob = client(&engine, "bob").await;
    let joined = bob.join("r", Some((&epoch, 2))).await.unwrap();
    assert!(joined.recovered, "3..10 are kept, 8..10 only in the window");
    let mut replayed = Vec::new();
    while replayed.len() < 8 {
        replayed.push(event_of(&mut bob, "message").await["seq"].as_u64().unwrap());
    }
    assert_eq!(replayed, (3..=10).collect::<Vec<_>>());
    engine.shutdown().await;
}

#[tokio::test]
async fn a_node_restarted_on_its_store_goes_on_in_the_same_epoch() {
    let store = TestStore::default();
    let first = engine_on(&store).await;
    let alice = client(&first, "alice").await;
    let epoch = alice.join("r", None).await.unwrap().epoch;
    for n in 1..=5 {
        alice.send("r", json!(n)).await.unwrap();
    }
    first.shutdown().await;
    drop(alice);

    // A new broker: nothing of the room is in memory any more.
    let second = engine_on(&store).await;
    let mut bob = client(&second, "bob").await;
    let joined = bob.join("r", Some((&epoch, 3))).await.unwrap();
    assert_eq!((joined.epoch.as_str(), joined.seq, joined.recovered), (epoch.as_str(), 5, true));
    for seq in [4, 5] {
        assert_eq!(event_of(&mut bob, "message").await["seq"], seq);
    }
    assert_eq!(bob.send("r", json!(6)).await.unwrap(), Some(6), "the next seq, not 1");
    let page = bob.history("r", None, None, Some(50)).await.unwrap();
    assert_eq!((page["epoch"].as_str(), seqs(&page)), (Some(epoch.as_str()), vec![1, 2, 3, 4, 5, 6]));
    second.shutdown().await;
}

#[tokio::test]
async fn sent_means_committed_and_a_failed_commit_can_be_resent() {
    let store = TestStore::default();
    let engine = engine_on(&store).await;
    let mut alice = client(&engine, "alice").await;
    alice.join("r", None).await.unwrap();
    store.kept().down = true;
    let err = alice.send_with("r", json!("kept?"), Some("k1"), false).await.unwrap_err();
    assert_eq!(err.code(), Some("unavailable"), "{err}");
    // Ordered and delivered, but not kept: the reply says so, and a resend with the key
    // stores it under its seq.
    assert_eq!(event_of(&mut alice, "message").await["seq"], 1);
    assert!(store.kept().records.is_empty());
    store.kept().down = false;
    assert_eq!(alice.send_with("r", json!("kept?"), Some("k1"), false).await.unwrap(), Some(1));
    assert_eq!(store.kept().records.len(), 1);
    engine.shutdown().await;
}

#[tokio::test]
async fn appends_waiting_for_a_commit_go_in_one() {
    let gate = Arc::new(Semaphore::new(0));
    let store = TestStore { gate: Some(gate.clone()), ..TestStore::default() };
    let engine = engine_on(&store).await;
    let mut watcher = client(&engine, "watcher").await;
    watcher.join("r", None).await.unwrap();
    const SENDERS: usize = 20;
    let mut sends = Vec::new();
    for i in 0..SENDERS {
        let sender = client(&engine, &format!("u{i}")).await;
        sender.join("r", None).await.unwrap();
        sends
            .push(tokio::spawn(async move { sender.send("r", json!(i)).await.map(|_| ()).map_err(|e| e.to_string()) }));
    }
    // Every message is ordered and delivered before its commit: once the watcher saw them all,
    // the first append holds the gate and the others wait behind it.
    for _ in 0..SENDERS {
        event_of(&mut watcher, "message").await;
    }
    gate.add_permits(SENDERS);
    for send in sends {
        tokio::time::timeout(WAIT, send).await.expect("sent in time").expect("task").expect("sent");
    }
    let (records, appends) = {
        let kept = store.kept();
        (kept.records.len(), kept.appends)
    };
    assert_eq!(records, SENDERS);
    assert!(appends <= 2, "{appends} appends for {SENDERS} messages queued together");
    engine.shutdown().await;
}
