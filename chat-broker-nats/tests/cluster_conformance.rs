//! The broker conformance suite (chat-testkit's `conformance`) run against the NATS broker on a
//! three-server JetStream cluster storing every record on all three (replicas 3), each case on
//! a cluster of its own. Losing history is deleting the stream; interrupting deliveries is
//! killing every server and starting them again on their storage, which cuts every node's
//! connection.
//!
//! Every case but `notices_reach_every_node`, which notifies the moment after a node attaches:
//! a cluster spreads a new subscription to the other servers a moment after the server it was
//! made on has it, and a core NATS message published on another server meanwhile does not
//! reach it (notices are at most once on every broker; the single-server suite runs that case).

use std::sync::Mutex;

use async_trait::async_trait;
use chat_broker_nats::NatsBroker;
use chat_core::Broker;
use chat_testkit::conformance::Subject;
use chat_testkit::NatsCluster;

struct Cluster {
    servers: Mutex<NatsCluster>,
    urls: Vec<String>,
    broker: NatsBroker,
}

#[async_trait]
impl Subject for Cluster {
    fn broker(&self) -> &dyn Broker {
        &self.broker
    }

    async fn lose_history(&self) {
        let client = async_nats::connect(self.urls.clone()).await.expect("connect");
        let js = async_nats::jetstream::new(client);
        js.delete_stream("conf-rooms").await.expect("delete the stream");
    }

    async fn interrupt_deliveries(&self) {
        tokio::task::block_in_place(|| {
            let mut servers = self.servers.lock().unwrap_or_else(|e| e.into_inner());
            for i in 0..3 {
                servers.server_mut(i).kill();
            }
            for i in 0..3 {
                servers.server_mut(i).restart();
            }
            servers.wait_ready();
        });
        // Back once JetStream serves the stream again (the nodes reconnect within a quarter
        // second of that).
        chat_testkit::eventually("the stream to be served again", chat_testkit::conformance::WAIT, || async {
            let client = async_nats::connect(self.urls.clone()).await.ok()?;
            async_nats::jetstream::new(client).get_stream("conf-rooms").await.ok()
        })
        .await;
    }
}

chat_testkit::broker_conformance!(@cases async {
    let servers = tokio::task::block_in_place(NatsCluster::start);
    let urls = servers.urls();
    let broker = NatsBroker::builder(urls.join(",")).prefix("conf").replicas(3).build().expect("a valid broker");
    Cluster { servers: Mutex::new(servers), urls, broker }
};
    seq_and_delivery_order, history_bounds, history_age, idempotency,
    lost_history_starts_a_new_epoch, presence_counts_sessions_across_nodes,
    transient_fan_out_is_not_stored, unsubscribed_nodes_get_nothing, one_order_across_nodes,
    interrupted_deliveries_are_repaired, erasure_leaves_tombstones, concurrent_publishes_from_one_node);
