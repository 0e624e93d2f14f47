//! A session does not wait for the broker between sends: a client that sends without waiting
//! for `sent` has several publishes in flight at once (up to the session's bound), its messages
//! are stored in the order it sent them, and every reply still comes back in request order,
//! a failed send's error, a `history` and a `pong` behind it included. The broker is the
//! `MemoryBroker` behind a wrapper that stores at once and answers late, each publish after a
//! different number of scheduler turns, as a remote broker's replies arrive.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use chat_core::broker::{
    DeliverySink, HistoryPage, HistoryQuery, Notice, Origin, Position, PresenceEntry, Publication, PublishOpts,
    Published, Transient,
};
use chat_core::{Broker, BrokerError, BrokerNode, Engine, MemoryBroker, RoomName};
use common::Raw;

/// A `MemoryBroker` whose publishes are stored at once and answered after 0–4 turns of the
/// scheduler (by seq), so that they complete out of order; it counts how many are in flight.
#[derive(Clone, Default)]
struct Lagging {
    inner: MemoryBroker,
    in_flight: Arc<AtomicUsize>,
    most_in_flight: Arc<AtomicUsize>,
}

struct LaggingNode {
    inner: Arc<dyn BrokerNode>,
    broker: Lagging,
}

#[async_trait]
impl Broker for Lagging {
    async fn attach(
        &self,
        node: &str,
        sink: Arc<dyn DeliverySink>,
        origin: Option<Arc<dyn Origin>>,
    ) -> Result<Arc<dyn BrokerNode>, BrokerError> {
        let inner = self.inner.attach(node, sink, origin).await?;
        Ok(Arc::new(LaggingNode { inner, broker: self.clone() }))
    }
}

#[async_trait]
impl BrokerNode for LaggingNode {
    async fn publish(&self, room: &RoomName, msg: Publication, opts: &PublishOpts) -> Result<Published, BrokerError> {
        let b = &self.broker;
        let now = b.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        b.most_in_flight.fetch_max(now, Ordering::SeqCst);
        let published = self.inner.publish(room, msg, opts).await;
        let turns = published.as_ref().map_or(0, |p| (p.seq * 7) % 5);
        for _ in 0..turns {
            tokio::task::yield_now().await;
        }
        b.in_flight.fetch_sub(1, Ordering::SeqCst);
        published
    }
    async fn broadcast(&self, room: &RoomName, what: Transient) -> Result<(), BrokerError> {
        self.inner.broadcast(room, what).await
    }
    async fn notify(&self, users: &[Arc<str>], notice: &Notice) -> Result<(), BrokerError> {
        self.inner.notify(users, notice).await
    }
    async fn subscribe(&self, room: &RoomName) -> Result<Position, BrokerError> {
        self.inner.subscribe(room).await
    }
    async fn unsubscribe(&self, room: &RoomName) -> Result<(), BrokerError> {
        self.inner.unsubscribe(room).await
    }
    async fn history(&self, room: &RoomName, query: HistoryQuery) -> Result<HistoryPage, BrokerError> {
        self.inner.history(room, query).await
    }
    async fn presence_add(&self, room: &RoomName, session: &str, user: &str) -> Result<bool, BrokerError> {
        self.inner.presence_add(room, session, user).await
    }
    async fn presence_remove(&self, room: &RoomName, session: &str, user: &str) -> Result<bool, BrokerError> {
        self.inner.presence_remove(room, session, user).await
    }
    async fn presence(&self, room: &RoomName) -> Result<Vec<PresenceEntry>, BrokerError> {
        self.inner.presence(room).await
    }
    async fn erase(&self, room: &RoomName, seq: u64) -> Result<bool, BrokerError> {
        self.inner.erase(room, seq).await
    }
    async fn erase_user(&self, user: &str) -> Result<u64, BrokerError> {
        self.inner.erase_user(user).await
    }
    async fn detach(&self) {
        self.inner.detach().await
    }
}

#[tokio::test]
async fn sends_in_flight_keep_the_order_of_requests_and_replies() {
    const SENDS: u64 = 200;
    const BAD: u64 = 77; // sent to a room the session has not joined
    let broker = Lagging::default();
    let engine = Engine::builder().broker(broker.clone()).tune(|c| c.rate_per_sec = 0).build().await.unwrap();
    let mut alice = Raw::hello(&engine, "alice").await;
    alice.join("r").await;
    for i in 1..=SENDS {
        let room = if i == BAD { "elsewhere" } else { "r" };
        alice.send(&format!(r#"{{"type":"send","id":{i},"room":"{room}","body":{i}}}"#));
    }
    alice.send(r#"{"type":"history","id":5000,"room":"r","limit":500}"#);
    alice.send(r#"{"type":"ping","id":5001}"#);

    let mut replies = Vec::new();
    while replies.len() < SENDS as usize + 2 {
        let frame = alice.recv().await;
        if frame["type"] != "message" {
            replies.push(frame);
        }
    }
    let ids: Vec<u64> = replies.iter().map(|f| f["id"].as_u64().expect("every reply has its id")).collect();
    let expected: Vec<u64> = (1..=SENDS).chain([5000, 5001]).collect();
    assert_eq!(ids, expected, "replies in request order");
    assert_eq!(replies[BAD as usize - 1]["type"], "error", "{}", replies[BAD as usize - 1]);
    let seqs: Vec<u64> = replies[..SENDS as usize].iter().filter_map(|f| f["seq"].as_u64()).collect();
    assert_eq!(seqs, (1..SENDS).collect::<Vec<_>>(), "stored in the order sent, one seq each");
    let history = &replies[SENDS as usize];
    assert_eq!(history["type"], "history", "{history}");
    let bodies: Vec<u64> =
        history["messages"].as_array().unwrap().iter().map(|m| m["body"].as_u64().unwrap()).collect();
    let stored: Vec<u64> = (1..=SENDS).filter(|&i| i != BAD).collect();
    assert!(!bodies.is_empty() && stored.ends_with(&bodies), "history answers after every send: {bodies:?}");
    assert_eq!(replies[SENDS as usize + 1]["type"], "pong");

    let most = broker.most_in_flight.load(Ordering::SeqCst);
    assert!(most > 1, "the session waited for each send: {most} in flight at most");
    assert!(most <= 32, "more sends in flight than the session's bound: {most}");
}

#[tokio::test]
async fn a_send_in_flight_when_the_client_goes_away_is_still_stored() {
    let broker = Lagging::default();
    let engine = Engine::builder().broker(broker.clone()).tune(|c| c.rate_per_sec = 0).build().await.unwrap();
    let mut alice = Raw::hello(&engine, "alice").await;
    alice.join("r").await;
    for i in 1..=20 {
        alice.send(&format!(r#"{{"type":"send","id":{i},"room":"r","body":{i}}}"#));
    }
    drop(alice.tx); // the connection ends at once
    alice.task.await.expect("the session ends");
    let mut bob = Raw::hello(&engine, "bob").await;
    bob.join("r").await;
    let page = bob.ask(r#"{"type":"history","id":9,"room":"r","limit":100}"#).await;
    assert_eq!(page["messages"].as_array().map(Vec::len), Some(20), "{page}");
}

#[tokio::test]
async fn large_sends_in_flight_are_bounded_by_their_bytes() {
    let broker = Lagging::default();
    let engine = Engine::builder().broker(broker.clone()).tune(|c| c.rate_per_sec = 0).build().await.unwrap();
    let mut alice = Raw::hello(&engine, "alice").await;
    alice.join("r").await;
    let body = "x".repeat(15_000); // a JSON string of 15,002 bytes
    for i in 1..=30 {
        alice.send(&format!(r#"{{"type":"send","id":{i},"room":"r","body":"{body}"}}"#));
    }
    let mut sent = 0;
    while sent < 30 {
        if alice.recv().await["type"] == "sent" {
            sent += 1;
        }
    }
    // 64 KiB of bodies at most, and the send that crosses it: five of 15 KB.
    let most = broker.most_in_flight.load(Ordering::SeqCst);
    assert!((2..=5).contains(&most), "{most} large sends in flight at most");
}
