//! The broker conformance suite (chat-testkit's `conformance`) run against the NATS broker, on
//! a real `nats-server -js` each case starts. Losing history is deleting the stream (every
//! room's records); interrupting deliveries is killing the server and starting it again on
//! the same port and storage, which cuts every node's connection.

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
        let mut server = self.server.lock().unwrap_or_else(|e| e.into_inner());
        server.kill();
        server.restart();
    }
}

chat_testkit::broker_conformance!(async {
    let server = NatsServer::start();
    let url = server.url();
    let broker = NatsBroker::builder(url.as_str()).prefix("conf").build().expect("a valid broker");
    Nats { server: Mutex::new(server), url, broker }
});
