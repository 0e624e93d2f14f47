//! Joining a room this node already receives, while deliveries are on their way (docs/faults.md,
//! finding 7: Redis frozen between answering a publish and passing it on): `joined.seq` is the
//! room's latest, never less than what a client was already acknowledged, and what was in
//! flight reaches a returning member by replay, once. The broker is the `MemoryBroker`, with
//! the node's deliveries held back at will.

mod common;

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chat_core::broker::{Delivery, DeliverySink, Origin};
use chat_core::protocol::Since;
use chat_core::{Broker, BrokerError, BrokerNode, Engine, MemoryBroker, RoomName};
use common::{client, message};
use serde_json::json;

/// Deliveries to the node, held while `held` is set and passed on in order once released.
#[derive(Default)]
struct Gate {
    held: Mutex<Option<Vec<(RoomName, Delivery)>>>,
    sink: Mutex<Option<Arc<dyn DeliverySink>>>,
}

impl Gate {
    fn hold(&self) {
        *self.held.lock().unwrap() = Some(Vec::new());
    }

    fn release(&self) {
        let mut held = self.held.lock().unwrap();
        let sink = self.sink.lock().unwrap().clone().expect("attached");
        for (room, delivery) in held.take().unwrap_or_default() {
            sink.deliver(&room, delivery);
        }
    }
}

struct GateSink(Arc<Gate>);

impl DeliverySink for GateSink {
    fn deliver(&self, room: &RoomName, delivery: Delivery) {
        let mut held = self.0.held.lock().unwrap();
        match held.as_mut() {
            Some(queue) => queue.push((room.clone(), delivery)),
            None => {
                let sink = self.0.sink.lock().unwrap().clone().expect("attached");
                sink.deliver(room, delivery);
            }
        }
    }
}

struct Gated(MemoryBroker, Arc<Gate>);

#[async_trait]
impl Broker for Gated {
    async fn attach(
        &self,
        node: &str,
        sink: Arc<dyn DeliverySink>,
        origin: Option<Arc<dyn Origin>>,
    ) -> Result<Arc<dyn BrokerNode>, BrokerError> {
        *self.1.sink.lock().unwrap() = Some(sink);
        self.0.attach(node, Arc::new(GateSink(self.1.clone())), origin).await
    }
}

#[tokio::test]
async fn a_join_during_deliveries_in_flight_is_at_the_rooms_latest() {
    let gate = Arc::new(Gate::default());
    let engine = Engine::builder().broker(Gated(MemoryBroker::new(), gate.clone())).build().await.expect("engine");
    let mut alice = client(&engine, "alice").await;
    let epoch = alice.join("r", None).await.unwrap().epoch;
    assert_eq!(alice.send("r", json!(1)).await.unwrap(), Some(1));
    assert_eq!(message(&mut alice).await.seq, Some(1));

    gate.hold();
    assert_eq!(alice.send("r", json!(2)).await.unwrap(), Some(2), "stored; its delivery is held");
    assert_eq!(alice.send("r", json!(3)).await.unwrap(), Some(3));
    let mut bob = client(&engine, "bob").await;
    let joined = bob.join("r", Some(Since::new(&epoch, 1))).await.unwrap();
    assert_eq!((joined.seq, joined.recovered), (3, true), "the room's latest, not the node's 1");
    let carol = client(&engine, "carol").await;
    assert_eq!(carol.join("r", None).await.unwrap().seq, 3);
    gate.release();

    // bob: 2 and 3 by replay, once, then the live 4.
    assert_eq!(alice.send("r", json!(4)).await.unwrap(), Some(4));
    for seq in [2, 3, 4] {
        assert_eq!(message(&mut bob).await.seq, Some(seq));
    }
    for seq in [2, 3, 4] {
        assert_eq!(message(&mut alice).await.seq, Some(seq), "the members before go on as before");
    }
    engine.shutdown().await;
}
