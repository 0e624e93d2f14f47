//! The broker conformance suite (chat-testkit's `conformance`) run against the Redis broker, on
//! a real `redis-server` each case starts. Losing history is `FLUSHALL`; interrupting
//! deliveries is `CLIENT KILL TYPE pubsub` (every node's subscription connection drops).

mod common;

use async_trait::async_trait;
use chat_broker_redis::RedisBroker;
use chat_core::Broker;
use chat_testkit::conformance::Subject;
use common::{broker, RedisServer};

struct Redis {
    server: RedisServer,
    broker: RedisBroker,
}

#[async_trait]
impl Subject for Redis {
    fn broker(&self) -> &dyn Broker {
        &self.broker
    }

    async fn lose_history(&self) {
        let mut conn = common::conn(&self.server).await;
        redis::cmd("FLUSHALL").query_async::<()>(&mut conn).await.expect("FLUSHALL");
    }

    async fn interrupt_deliveries(&self) {
        let mut conn = common::conn(&self.server).await;
        let killed: i64 =
            redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub").query_async(&mut conn).await.expect("KILL");
        assert!(killed > 0, "no subscription connection to drop");
    }
}

chat_testkit::broker_conformance!(async {
    let server = RedisServer::start();
    let broker = broker(&server, "conf:");
    Redis { server, broker }
});
