//! A message published while a node subscribes to a room (after the subscription took effect,
//! before the room's position is read) reaches the node's members, even if the room stays quiet
//! afterwards. The broker here is the `MemoryBroker` behind a wrapper that publishes exactly in
//! that window, which a real Redis does only now and then.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use chat_core::broker::{
    DeliverySink, HistoryPage, HistoryQuery, Notice, Origin, Position, PresenceEntry, Publication, PublishOpts,
    Published, Transient,
};
use chat_core::{Broker, BrokerError, BrokerNode, Engine, MemoryBroker, RoomName};
use common::Raw;

/// A `MemoryBroker` whose nodes, when armed, publish one message into the room they are
/// subscribing to and then report the position from before it.
#[derive(Clone, Default)]
struct Racy {
    inner: MemoryBroker,
    armed: Arc<AtomicBool>,
}

struct RacyNode {
    inner: Arc<dyn BrokerNode>,
    armed: Arc<AtomicBool>,
}

#[async_trait]
impl Broker for Racy {
    async fn attach(
        &self,
        node: &str,
        sink: Arc<dyn DeliverySink>,
        origin: Option<Arc<dyn Origin>>,
    ) -> Result<Arc<dyn BrokerNode>, BrokerError> {
        let inner = self.inner.attach(node, sink, origin).await?;
        Ok(Arc::new(RacyNode { inner, armed: self.armed.clone() }))
    }
}

#[async_trait]
impl BrokerNode for RacyNode {
    async fn publish(&self, room: &RoomName, msg: Publication, opts: &PublishOpts) -> Result<Published, BrokerError> {
        self.inner.publish(room, msg, opts).await
    }
    async fn broadcast(&self, room: &RoomName, what: Transient) -> Result<(), BrokerError> {
        self.inner.broadcast(room, what).await
    }
    async fn notify(&self, users: &[Arc<str>], notice: &Notice) -> Result<(), BrokerError> {
        self.inner.notify(users, notice).await
    }
    async fn subscribe(&self, room: &RoomName) -> Result<Position, BrokerError> {
        let before = self.inner.subscribe(room).await?;
        if self.armed.swap(false, Ordering::SeqCst) {
            let msg =
                Publication { from: Arc::from("elsewhere"), ts: 1, body: Bytes::from_static(b"\"in the window\"") };
            let opts = PublishOpts {
                key: None,
                idempotency_window: std::time::Duration::from_secs(60),
                history_size: 100,
                history_ttl: std::time::Duration::from_secs(60),
                max_history_bytes: 1 << 20,
            };
            // Delivered to this node now, while its engine still waits for the position.
            self.inner.publish(room, msg, &opts).await?;
        }
        Ok(before)
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
async fn a_message_published_while_the_node_subscribes_is_not_lost() {
    let broker = Racy::default();
    let engine = Engine::builder().broker(broker.clone()).build().await.unwrap();
    broker.armed.store(true, Ordering::SeqCst);
    let mut alice = Raw::hello(&engine, "alice").await;
    let joined = alice.ask(r#"{"type":"join","id":1,"room":"quiet"}"#).await;
    assert_eq!(joined["type"], "joined", "{joined}");
    assert!(!broker.armed.load(Ordering::SeqCst), "the message went out in the window");
    // Either the join point covers it (it is history for alice: joined.seq 1), or it reaches
    // her live; never a join point of 0 with the message nowhere (the room stays quiet).
    if joined["seq"] == 0 {
        // (`recv_of` fails after `WAIT` without it.)
        assert_eq!(alice.recv_of("message").await["seq"], 1, "the message, live");
    } else {
        assert_eq!(joined["seq"], 1, "{joined}");
        alice.send(r#"{"type":"history","id":2,"room":"quiet"}"#);
        let page = alice.recv_of("history").await;
        assert_eq!(page["messages"][0]["body"], "in the window", "{page}");
    }
    // And the node's position agrees with the broker's: the next message is seq 2, no gap.
    alice.send(r#"{"type":"send","id":3,"room":"quiet","body":"next"}"#);
    assert_eq!(alice.recv_of("message").await["seq"], 2);
}
