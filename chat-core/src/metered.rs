//! Latency of the engine's two outside boundaries, recorded by decorators: [`MeteredNode`]
//! wraps the node's [`BrokerNode`] and [`MeteredStore`] the [`Store`], and time every call by
//! operation (`chat_broker_call_duration_seconds`, `chat_store_call_duration_seconds`, and
//! their `_errors_total`: see [`crate::metrics`]). The engine wraps them when it is built, so
//! no call site records anything itself. Without the `metrics` feature nothing is wrapped.
//!
//! The broker is wrapped below the keeper ([`KeptNode`](crate::keeper::KeptNode)): a broker
//! call's time is the broker's alone, and the store's commit is timed on the store's side.

use std::sync::Arc;

use crate::broker::BrokerNode;
use crate::store::Store;

/// The node's broker, timed (with the `metrics` feature).
pub(crate) fn node(broker: Arc<dyn BrokerNode>) -> Arc<dyn BrokerNode> {
    #[cfg(feature = "metrics")]
    let broker: Arc<dyn BrokerNode> = Arc::new(on::MeteredNode(broker));
    broker
}

/// The engine's store, timed (with the `metrics` feature).
pub(crate) fn store(store: Arc<dyn Store>) -> Arc<dyn Store> {
    #[cfg(feature = "metrics")]
    let store: Arc<dyn Store> = Arc::new(on::MeteredStore(store));
    store
}

#[cfg(feature = "metrics")]
mod on {
    use std::sync::Arc;

    use async_trait::async_trait;

    use crate::broker::{
        BrokerError, BrokerNode, Held, HistoryPage, HistoryQuery, Notice, Position, PresenceEntry, Publication,
        PublishOpts, Published, Transient,
    };
    use crate::metrics::{self, BrokerOp, StoreOp};
    use crate::protocol::RoomName;
    use crate::store::{Record, RetentionPolicy, Store, StoreError};

    /// A [`BrokerNode`] whose calls are timed by operation. A publish that stores a new
    /// message also counts it (`chat_messages_stored_total`).
    pub(crate) struct MeteredNode(pub(crate) Arc<dyn BrokerNode>);

    /// Counts a publish's new message.
    fn count_stored<T>(result: &Result<T, BrokerError>, published: impl Fn(&T) -> &Published) {
        if result.as_ref().is_ok_and(|p| !published(p).duplicate) {
            metrics::stored();
        }
    }

    #[async_trait]
    impl BrokerNode for MeteredNode {
        async fn publish(
            &self,
            room: &RoomName,
            msg: Publication,
            opts: &PublishOpts,
        ) -> Result<Published, BrokerError> {
            let result = BrokerOp::Publish.timed(self.0.publish(room, msg, opts)).await;
            count_stored(&result, |p| p);
            result
        }

        /// Forwarded as such: the broker below may hold the message back (the memory broker).
        async fn publish_held(
            &self,
            room: &RoomName,
            msg: Publication,
            opts: &PublishOpts,
        ) -> Result<(Published, Held), BrokerError> {
            let result = BrokerOp::Publish.timed(self.0.publish_held(room, msg, opts)).await;
            count_stored(&result, |(p, _)| p);
            result
        }

        async fn notify(&self, users: &[Arc<str>], notice: &Notice) -> Result<(), BrokerError> {
            BrokerOp::Notify.timed(self.0.notify(users, notice)).await
        }

        async fn broadcast(&self, room: &RoomName, what: Transient) -> Result<(), BrokerError> {
            BrokerOp::Broadcast.timed(self.0.broadcast(room, what)).await
        }

        async fn subscribe(&self, room: &RoomName) -> Result<Position, BrokerError> {
            BrokerOp::Subscribe.timed(self.0.subscribe(room)).await
        }

        async fn unsubscribe(&self, room: &RoomName) -> Result<(), BrokerError> {
            BrokerOp::Unsubscribe.timed(self.0.unsubscribe(room)).await
        }

        async fn history(&self, room: &RoomName, query: HistoryQuery) -> Result<HistoryPage, BrokerError> {
            BrokerOp::History.timed(self.0.history(room, query)).await
        }

        async fn presence_add(&self, room: &RoomName, session: &str, user: &str) -> Result<bool, BrokerError> {
            BrokerOp::PresenceAdd.timed(self.0.presence_add(room, session, user)).await
        }

        async fn presence_remove(&self, room: &RoomName, session: &str, user: &str) -> Result<bool, BrokerError> {
            BrokerOp::PresenceRemove.timed(self.0.presence_remove(room, session, user)).await
        }

        async fn presence(&self, room: &RoomName) -> Result<Vec<PresenceEntry>, BrokerError> {
            BrokerOp::Presence.timed(self.0.presence(room)).await
        }

        async fn erase(&self, room: &RoomName, seq: u64) -> Result<bool, BrokerError> {
            BrokerOp::Erase.timed(self.0.erase(room, seq)).await
        }

        async fn erase_user(&self, user: &str) -> Result<u64, BrokerError> {
            BrokerOp::EraseUser.timed(self.0.erase_user(user)).await
        }

        async fn detach(&self) {
            self.0.detach().await
        }
    }

    /// A [`Store`] whose calls are timed by operation; each append also records its batch's
    /// size (`chat_store_append_records`).
    pub(crate) struct MeteredStore(pub(crate) Arc<dyn Store>);

    #[async_trait]
    impl Store for MeteredStore {
        async fn append(&self, batch: &[Record]) -> Result<Vec<usize>, StoreError> {
            metrics::append_records(batch.len());
            StoreOp::Append.timed(self.0.append(batch)).await
        }

        async fn page(&self, room: &RoomName, epoch: &str, query: HistoryQuery) -> Result<Vec<Record>, StoreError> {
            StoreOp::Page.timed(self.0.page(room, epoch, query)).await
        }

        async fn latest(&self, room: &RoomName) -> Result<Option<Position>, StoreError> {
            StoreOp::Latest.timed(self.0.latest(room)).await
        }

        async fn retain(&self, policy: &RetentionPolicy, now_ms: u64) -> Result<u64, StoreError> {
            StoreOp::Retain.timed(self.0.retain(policy, now_ms)).await
        }

        async fn erase(&self, room: &RoomName, epoch: &str, seq: u64) -> Result<bool, StoreError> {
            StoreOp::Erase.timed(self.0.erase(room, epoch, seq)).await
        }

        async fn erase_user(&self, user: &str) -> Result<u64, StoreError> {
            StoreOp::EraseUser.timed(self.0.erase_user(user)).await
        }
    }
}
