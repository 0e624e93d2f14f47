//! The broker conformance suite (chat-testkit's `conformance`) run against the memory broker.
//! Losing its history is `MemoryBroker::wipe`; it cannot drop deliveries, so there is nothing
//! to interrupt (gap repair must then hold trivially).

use async_trait::async_trait;
use chat_core::{Broker, MemoryBroker};
use chat_testkit::conformance::Subject;

struct Memory(MemoryBroker);

#[async_trait]
impl Subject for Memory {
    fn broker(&self) -> &dyn Broker {
        &self.0
    }

    async fn lose_history(&self) {
        self.0.wipe();
    }

    async fn interrupt_deliveries(&self) {}
}

chat_testkit::broker_conformance!(async { Memory(MemoryBroker::new()) });
