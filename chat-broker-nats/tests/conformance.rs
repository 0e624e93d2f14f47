//! The broker conformance suite (chat-testkit's `conformance`) run against the NATS broker, on
//! a real `nats-server -js` each case starts. Losing history is deleting the stream (every
//! room's records); interrupting deliveries is killing the server and starting it again on
//! the same port and storage, which cuts every node's connection (the case goes on once
//! JetStream serves the stream again).

use std::sync::Mutex;

use async_trait::async_trait;
use chat_broker_nats::NatsBroker;
use chat_core::Broker;
use chat_testkit::conformance::Subject;
use chat_testkit::NatsServer;

struct Nats {
    server: Mutex<NatsServer>,
    url: String,
    broker: NatsBroker,
}

#[async_trait]
impl Subject for Nats {
    fn broker(&self) -> &dyn Broker {
        &self.broker
    }

    async fn lose_history(&self) {
        let client = async_nats::connect(&self.url).await.expect("connect");
        let js = async_nats::jetstream::new(client);
        js.delete_stream("conf-rooms").await.expect("delete the stream");
    }

    async fn interrupt_deliveries(&self) {
        tokio::task::block_in_place(|| {
            let mut server = self.server.lock().unwrap_or_else(|e| e.into_inner());
            server.kill();
            server.restart();
        });
        // Back once JetStream serves the stream again (the nodes reconnect within a quarter
        // second of that).
        chat_testkit::eventually("the stream to be served again", chat_testkit::conformance::WAIT, || async {
            let client = async_nats::connect(&self.url).await.ok()?;
            async_nats::jetstream::new(client).get_stream("conf-rooms").await.ok()
        })
        .await;
    }
}

chat_testkit::broker_conformance!(async {
    let server = NatsServer::start();
    let url = server.url();
    let broker = NatsBroker::builder(url.as_str()).prefix("conf").build().expect("a valid broker");
    Nats { server: Mutex::new(server), url, broker }
});
