//! The engine with a store (issue 12): `sent` waits for the commit and appends are grouped,
//! history and recovery reach past the broker's window, and a node restarted on the same
//! store (a new memory broker: everything in memory is gone) goes on in the same epoch.
//!
//! The store here is the [`MemoryStore`] (which a test can switch off), once behind a gate that
//! holds appends, so that what the engine does around the store can be watched; the database
//! stores run the same engine paths in their own crates' tests.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use chat_core::broker::{HistoryQuery, Position};
use chat_core::client::{HistoryPage, HistoryQuery as Query};
use chat_core::protocol::Since;
use chat_core::store::{Record, RetentionPolicy};
use chat_core::{Engine, ErrorCode, MemoryBroker, MemoryStore, RoomName, Store, StoreError};
use common::{client, message, WAIT};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

/// A [`MemoryStore`] whose appends are counted and may be held at a gate, and that refuses
/// (`Internal`) any batch holding a message from `poison`, as a database refuses a value it
/// cannot take.
#[derive(Clone, Default)]
struct Gated {
    store: MemoryStore,
    gate: Option<Arc<Semaphore>>,
    appends: Arc<AtomicUsize>,
    poison: Option<&'static str>,
}

#[async_trait]
impl Store for Gated {
    async fn append(&self, batch: &[Record]) -> Result<Vec<usize>, StoreError> {
        if let Some(gate) = &self.gate {
            gate.acquire().await.expect("gate open").forget();
        }
        self.appends.fetch_add(1, Ordering::Relaxed);
        if batch.iter().any(|r| Some(&*r.from) == self.poison) {
            return Err(StoreError::Internal("a value this store cannot take".into()));
        }
        self.store.append(batch).await
    }
    async fn page(&self, room: &RoomName, epoch: &str, q: HistoryQuery) -> Result<Vec<Record>, StoreError> {
        self.store.page(room, epoch, q).await
    }
    async fn latest(&self, room: &RoomName) -> Result<Option<Position>, StoreError> {
        self.store.latest(room).await
    }
    async fn retain(&self, policy: &RetentionPolicy, now_ms: u64) -> Result<u64, StoreError> {
        self.store.retain(policy, now_ms).await
    }
    async fn erase(&self, room: &RoomName, epoch: &str, seq: u64) -> Result<bool, StoreError> {
        self.store.erase(room, epoch, seq).await
    }
    async fn erase_user(&self, user: &str) -> Result<u64, StoreError> {
        self.store.erase_user(user).await
    }
}

/// An engine on its own memory broker (keeping 3 messages) and `store`.
async fn engine_on(store: &(impl Store + Clone)) -> Engine {
    engine_with(store, MemoryBroker::new()).await
}

/// An engine on `broker` (keeping 3 messages) and `store`.
async fn engine_with(store: &(impl Store + Clone), broker: MemoryBroker) -> Engine {
    Engine::builder().broker(broker).store(store.clone()).tune(|c| c.history_size = 3).build().await.expect("engine")
}

fn bodies(page: &HistoryPage) -> Vec<u64> {
    page.messages.iter().map(|m| m.body.as_u64().expect("a number")).collect()
}

fn seqs(page: &HistoryPage) -> Vec<u64> {
    page.messages.iter().map(|m| m.seq.expect("a seq")).collect()
}

#[tokio::test]
async fn history_reaches_past_the_brokers_window_into_the_store() {
    let store = MemoryStore::new();
    let engine = engine_on(&store).await;
    let alice = client(&engine, "alice").await;
    alice.join("r", None).await.unwrap();
    for n in 1..=10 {
        assert_eq!(alice.send("r", json!(n)).await.unwrap(), Some(n));
    }
    assert_eq!(store.len(), 10, "every sent message is in the store");
    let all = alice.history("r", Query::latest(10)).await.unwrap();
    assert_eq!(bodies(&all), (1..=10).collect::<Vec<_>>(), "the window holds 8..10, the store the rest");
    let older = alice.history("r", Query::default().before(5).limit(50)).await.unwrap();
    assert_eq!(seqs(&older), vec![1, 2, 3, 4]);
    let after = alice.history("r", Query::default().after(2).limit(3)).await.unwrap();
    assert_eq!(seqs(&after), vec![3, 4, 5]);
    let across = alice.history("r", Query::default().after(6).limit(3)).await.unwrap();
    assert_eq!(seqs(&across), vec![7, 8, 9], "one from the store, two from the window");
    let newest = alice.history("r", Query::latest(5)).await.unwrap();
    assert_eq!(seqs(&newest), vec![6, 7, 8, 9, 10]);
    engine.shutdown().await;
}

#[tokio::test]
async fn recovery_replays_from_the_store_what_the_window_lost() {
    let store = MemoryStore::new();
    let engine = engine_on(&store).await;
    let alice = client(&engine, "alice").await;
    let epoch = alice.join("r", None).await.unwrap().epoch;
    for n in 1..=10 {
        alice.send("r", json!(n)).await.unwrap();
    }
    let mut bob = client(&engine, "bob").await;
    let joined = bob.join("r", Some(Since::new(&epoch, 2))).await.unwrap();
    assert!(joined.recovered, "3..10 are kept, 8..10 only in the window");
    let mut replayed = Vec::new();
    while replayed.len() < 8 {
        replayed.push(message(&mut bob).await.seq.unwrap());
    }
    assert_eq!(replayed, (3..=10).collect::<Vec<_>>());
    engine.shutdown().await;
}

#[tokio::test]
async fn a_node_restarted_on_its_store_goes_on_in_the_same_epoch() {
    let store = MemoryStore::new();
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
    let joined = bob.join("r", Some(Since::new(&epoch, 3))).await.unwrap();
    assert_eq!((joined.epoch.as_str(), joined.seq, joined.recovered), (epoch.as_str(), 5, true));
    for seq in [4, 5] {
        assert_eq!(message(&mut bob).await.seq, Some(seq));
    }
    assert_eq!(bob.send("r", json!(6)).await.unwrap(), Some(6), "the next seq, not 1");
    let page = bob.history("r", Query::latest(50)).await.unwrap();
    assert_eq!((page.epoch.as_str(), seqs(&page)), (epoch.as_str(), vec![1, 2, 3, 4, 5, 6]));
    second.shutdown().await;
}

#[tokio::test]
async fn sent_means_committed_and_a_failed_commit_can_be_resent() {
    let store = MemoryStore::new();
    let engine = engine_on(&store).await;
    let mut alice = client(&engine, "alice").await;
    alice.join("r", None).await.unwrap();
    store.set_available(false);
    let err = alice.send_with("r", json!("kept?"), Some("k1"), false).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Unavailable), "{err}");
    // Ordered and delivered, but not kept: the reply says so, and a resend with the key
    // stores it under its seq.
    assert_eq!(message(&mut alice).await.seq, Some(1));
    assert!(store.is_empty());
    store.set_available(true);
    assert_eq!(alice.send_with("r", json!("kept?"), Some("k1"), false).await.unwrap(), Some(1));
    assert_eq!(store.len(), 1);
    engine.shutdown().await;
}

/// A message the store could not take when it was sent (its sender answered `unavailable`)
/// is appended in the background once the store is back, resent or not: members received it,
/// so the store must not lack it.
#[tokio::test]
async fn what_the_store_could_not_take_is_appended_once_it_is_back() {
    let store = MemoryStore::new();
    let engine = engine_on(&store).await;
    let mut alice = client(&engine, "alice").await;
    alice.join("r", None).await.unwrap();
    store.set_available(false);
    for n in 1..=2 {
        let err = alice.send("r", json!(n)).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::Unavailable), "{err}");
        assert_eq!(message(&mut alice).await.seq, Some(n), "delivered, not kept");
    }
    store.set_available(true);
    chat_testkit::eventually("both appended", WAIT, || async { (store.len() == 2).then_some(()) }).await;
    for n in 3..=6 {
        alice.send("r", json!(n)).await.unwrap();
    }
    let page = alice.history("r", Query::latest(10)).await.unwrap();
    assert_eq!(bodies(&page), vec![1, 2, 3, 4, 5, 6], "1 and 2 from the store, past the window of 3");
    engine.shutdown().await;
}

#[tokio::test]
async fn appends_waiting_for_a_commit_go_in_one() {
    let gate = Arc::new(Semaphore::new(0));
    let store = Gated { gate: Some(gate.clone()), ..Gated::default() };
    let broker = MemoryBroker::new();
    let engine = engine_with(&store, broker.clone()).await;
    const SENDERS: usize = 20;
    let mut sends = Vec::new();
    for i in 0..SENDERS {
        let sender = client(&engine, &format!("u{i}")).await;
        sender.join("r", None).await.unwrap();
        sends
            .push(tokio::spawn(async move { sender.send("r", json!(i)).await.map(|_| ()).map_err(|e| e.to_string()) }));
    }
    // Every message is ordered (and held back) before its commit: once the broker holds them
    // all, the first append holds the gate and the others wait behind it.
    ordered(&broker, SENDERS).await;
    gate.add_permits(SENDERS);
    for send in sends {
        tokio::time::timeout(WAIT, send).await.expect("sent in time").expect("task").expect("sent");
    }
    let (records, appends) = (store.store.len(), store.appends.load(Ordering::Relaxed));
    assert_eq!(records, SENDERS);
    assert!(appends <= 2, "{appends} appends for {SENDERS} messages queued together");
    engine.shutdown().await;
}

/// Waits until `broker` holds `n` messages (ordered, whether or not they went out yet).
async fn ordered(broker: &MemoryBroker, n: usize) {
    chat_testkit::eventually("the messages ordered", WAIT, || async { (broker.stats().messages == n).then_some(()) })
        .await;
}

/// No member sees a message before the store kept it: the memory broker holds it back (and
/// the room's history and position with it) until the commit, so a process that dies first
/// leaves nobody holding a message it would hand out again. Messages sent meanwhile wait
/// behind it, in order.
#[tokio::test]
async fn a_message_goes_out_once_kept() {
    let gate = Arc::new(Semaphore::new(0));
    let store = Gated { gate: Some(gate.clone()), ..Gated::default() };
    let broker = MemoryBroker::new();
    let engine = engine_with(&store, broker.clone()).await;
    let mut watcher = client(&engine, "watcher").await;
    watcher.join("r", None).await.unwrap();
    let alice = client(&engine, "alice").await;
    alice.join("r", None).await.unwrap();
    let send = tokio::spawn(async move {
        let first = alice.send("r", json!(1)).await.map_err(|e| e.to_string());
        (first, alice)
    });
    ordered(&broker, 1).await;
    let page = watcher.history("r", Query::latest(10)).await.unwrap();
    assert_eq!(seqs(&page), Vec::<u64>::new(), "not shown before it is kept");
    let late = client(&engine, "late").await;
    assert_eq!(late.join("r", None).await.unwrap().seq, 0, "a join is not placed after it either");
    gate.add_permits(100);
    let (first, alice) = tokio::time::timeout(WAIT, send).await.expect("sent in time").expect("task");
    assert_eq!(first, Ok(Some(1)));
    assert_eq!(message(&mut watcher).await.seq, Some(1));
    assert_eq!(alice.send("r", json!(2)).await.unwrap(), Some(2));
    assert_eq!(message(&mut watcher).await.seq, Some(2));
    engine.shutdown().await;
}

/// One session's record that the store refuses fails that session's send only, though it
/// shared a commit with the others.
#[tokio::test]
async fn a_record_the_store_refuses_fails_only_its_sender() {
    let gate = Arc::new(Semaphore::new(0));
    let store = Gated { gate: Some(gate.clone()), poison: Some("mallory"), ..Gated::default() };
    let broker = MemoryBroker::new();
    let engine = engine_with(&store, broker.clone()).await;
    let mut sends = Vec::new();
    for user in ["alice", "mallory", "bob"] {
        let sender = client(&engine, user).await;
        sender.join("r", None).await.unwrap();
        sends.push(tokio::spawn(async move { sender.send("r", json!(user)).await.map_err(|e| e.code()) }));
    }
    ordered(&broker, 3).await;
    gate.add_permits(100);
    let mut outcomes = Vec::new();
    for send in sends {
        outcomes.push(tokio::time::timeout(WAIT, send).await.expect("answered in time").expect("task").map(|_| ()));
    }
    assert_eq!(outcomes, vec![Ok(()), Err(Some(ErrorCode::Internal)), Ok(())]);
    assert_eq!(store.store.len(), 2);
    engine.shutdown().await;
}

/// Erasure reaches the store and the broker's window: `history` and a recovery replay show
/// tombstones (`"deleted":true`, no body) in place, older than the window or not; erasing a
/// user reaches every room.
#[tokio::test]
async fn erased_messages_stay_as_tombstones() {
    let store = MemoryStore::new();
    let engine = engine_on(&store).await;
    let alice = client(&engine, "alice").await;
    let mallory = client(&engine, "mallory").await;
    let epoch = alice.join("r", None).await.unwrap().epoch;
    mallory.join("r", None).await.unwrap();
    mallory.join("s", None).await.unwrap();
    for n in 1..=6 {
        let sender = if n == 2 || n == 5 { &mallory } else { &alice };
        sender.send("r", json!(n)).await.unwrap();
    }
    mallory.send("s", json!("elsewhere")).await.unwrap();
    let r = RoomName::new("r").unwrap();
    assert!(engine.erase_message(&r, 1).await.unwrap(), "in the store only (the window holds 4..6)");
    assert!(!engine.erase_message(&r, 9).await.unwrap());
    assert_eq!(engine.erase_user("mallory").await.unwrap(), 3, "2 and 5 in r, 1 in s");

    let page = alice.history("r", Query::latest(10)).await.unwrap();
    let shown: Vec<(u64, bool)> = page.messages.iter().map(|m| (m.seq.unwrap(), m.deleted)).collect();
    assert_eq!(shown, vec![(1, true), (2, true), (3, false), (4, false), (5, true), (6, false)]);
    // On the wire, a tombstone has no body at all (the typed page shows it as `Null`).
    let raw = alice.request(json!({"type": "history", "room": "r", "limit": 10})).await.unwrap();
    for m in raw["messages"].as_array().unwrap() {
        assert_eq!(m.get("body").is_none(), m["deleted"] == true, "a tombstone has no body: {m}");
    }
    let mut bob = client(&engine, "bob").await;
    assert!(bob.join("r", Some(Since::new(&epoch, 3))).await.unwrap().recovered);
    let replayed = [message(&mut bob).await, message(&mut bob).await];
    assert_eq!((replayed[0].seq, &replayed[0].body, replayed[0].deleted), (Some(4), &json!(4), false));
    assert_eq!((replayed[1].seq, &replayed[1].body, replayed[1].deleted), (Some(5), &Value::Null, true));
    let s = alice.join("s", None).await;
    assert!(s.is_ok());
    let other = alice.history("s", Query::latest(10)).await.unwrap();
    assert!(other.messages[0].deleted);
    engine.shutdown().await;
}

/// A process restarted on its store (a new memory broker) still knows the idempotency keys of
/// the messages sent before: a client resending one gets the original seq, and nothing is
/// delivered twice.
#[tokio::test]
async fn a_resend_after_a_restart_gets_its_original_seq() {
    let store = MemoryStore::new();
    let first = engine_on(&store).await;
    let alice = client(&first, "alice").await;
    alice.join("r", None).await.unwrap();
    for n in 1..=4 {
        let key = format!("k{n}");
        assert_eq!(alice.send_with("r", json!(n), Some(&key), false).await.unwrap(), Some(n));
    }
    first.shutdown().await;
    drop(alice);

    let second = engine_on(&store).await;
    let mut alice = client(&second, "alice").await;
    alice.join("r", None).await.unwrap();
    for n in [2, 4, 1] {
        let key = format!("k{n}");
        assert_eq!(alice.send_with("r", json!(n), Some(&key), false).await.unwrap(), Some(n), "{key}");
    }
    assert_eq!(alice.send_with("r", json!(5), Some("k5"), false).await.unwrap(), Some(5));
    assert_eq!(message(&mut alice).await.seq, Some(5), "no resend was delivered again");
    let page = alice.history("r", Query::latest(50)).await.unwrap();
    assert_eq!(seqs(&page), vec![1, 2, 3, 4, 5]);
    second.shutdown().await;
}
