//! Keeping: the engine's side of its [`Store`] (DESIGN.md: ordering is the broker's job,
//! keeping is the store's). [`KeptNode`] wraps the node's [`BrokerNode`] and is what the rest
//! of the engine talks to, so sessions, recovery and gap repair keep one code path whether or
//! not a store is configured.
//!
//! * **Publish**: the broker orders the message (its seq) and fans it out; then the message is
//!   appended to the store, and only once that is committed does the sender get `sent`. One
//!   committer task per node appends whatever sessions have queued meanwhile in one call
//!   (group commit): while one commit is in flight the next batch gathers, so durability costs
//!   one transaction per batch, not one per message. A keyed resend that the broker answers as
//!   a duplicate is appended too (skipped by the store when it has it): the node that first
//!   published it may have died before its commit.
//! * **History**: a page comes from the broker's recent window; what the window no longer
//!   holds (older messages, or everything after the broker lost its state) comes from the
//!   store, merged by seq, so the client cannot tell where a page came from.
//! * **Origin**: the store tells the broker where a room stands when the broker holds nothing
//!   of it (see [`Origin`]), so a restarted or flushed broker goes on in the same epoch.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use crate::broker::{
    BrokerError, BrokerNode, HistoryPage, HistoryQuery, Message, Origin, Position, PresenceEntry, Publication,
    PublishOpts, Published, Transient,
};
use crate::protocol::RoomName;
use crate::store::{Record, Store, StoreError};

/// A record waiting for its commit, and who waits for it.
struct Pending {
    record: Record,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// A store and the queue of its committer task.
pub(crate) struct Keeper {
    store: Arc<dyn Store>,
    queue: mpsc::Sender<Pending>,
}

impl Keeper {
    /// A keeper on `store`; starts its committer task, which appends at most `max_batch`
    /// records at a time, with up to `queue` more waiting. The task ends with the keeper.
    pub(crate) fn new(store: Arc<dyn Store>, max_batch: usize, queue: usize) -> Keeper {
        let (tx, rx) = mpsc::channel(queue.max(1));
        tokio::spawn(commit(store.clone(), rx, max_batch.max(1)));
        Keeper { store, queue: tx }
    }

    /// The store.
    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// What the broker asks when it holds nothing of a room: the store's position.
    pub(crate) fn origin(&self) -> Arc<dyn Origin> {
        Arc::new(StoreOrigin(self.store.clone()))
    }

    /// Waits until `record` is committed.
    async fn keep(&self, record: Record) -> Result<(), BrokerError> {
        let (done, committed) = oneshot::channel();
        let stopped = || BrokerError::NotKept("the store's committer stopped".into());
        self.queue.send(Pending { record, done }).await.map_err(|_| stopped())?;
        committed.await.map_err(|_| stopped())?.map_err(|e| match e {
            StoreError::Unavailable(m) => BrokerError::NotKept(m),
            StoreError::Internal(m) => BrokerError::Internal(m),
        })
    }
}

/// A node's broker with the store beside it: what the engine uses when it has a store.
pub(crate) struct KeptNode {
    broker: Arc<dyn BrokerNode>,
    keeper: Keeper,
}

impl KeptNode {
    pub(crate) fn new(broker: Arc<dyn BrokerNode>, keeper: Keeper) -> KeptNode {
        KeptNode { broker, keeper }
    }
}

#[async_trait]
impl BrokerNode for KeptNode {
    /// Orders through the broker, then waits until the store committed the message.
    async fn publish(&self, room: &RoomName, msg: Publication, opts: &PublishOpts) -> Result<Published, BrokerError> {
        let (from, ts, body) = (msg.from.clone(), msg.ts, msg.body.clone());
        let published = self.broker.publish(room, msg, opts).await?;
        let (epoch, seq) = (published.epoch.clone(), published.seq);
        self.keeper.keep(Record { room: room.clone(), epoch, seq, from, ts, body: Some(body) }).await?;
        Ok(published)
    }

    async fn broadcast(&self, room: &RoomName, what: Transient) -> Result<(), BrokerError> {
        self.broker.broadcast(room, what).await
    }

    async fn subscribe(&self, room: &RoomName) -> Result<Position, BrokerError> {
        self.broker.subscribe(room).await
    }

    async fn unsubscribe(&self, room: &RoomName) -> Result<(), BrokerError> {
        self.broker.unsubscribe(room).await
    }

    /// The broker's page, completed from the store with what its window no longer holds.
    async fn history(&self, room: &RoomName, query: HistoryQuery) -> Result<HistoryPage, BrokerError> {
        let mut page = self.broker.history(room, query).await?;
        let Some(older) = missing(&query, &page) else { return Ok(page) };
        let records = self.keeper.store.page(room, &page.epoch, older).await.map_err(broker_error)?;
        let mut messages: Vec<Message> = records.into_iter().map(message).collect();
        messages.append(&mut page.messages);
        messages.truncate(query.limit);
        page.messages = messages;
        Ok(page)
    }

    async fn presence_add(&self, room: &RoomName, session: &str, user: &str) -> Result<bool, BrokerError> {
        self.broker.presence_add(room, session, user).await
    }

    async fn presence_remove(&self, room: &RoomName, session: &str, user: &str) -> Result<bool, BrokerError> {
        self.broker.presence_remove(room, session, user).await
    }

    async fn presence(&self, room: &RoomName) -> Result<Vec<PresenceEntry>, BrokerError> {
        self.broker.presence(room).await
    }

    /// Erases from the store (in the room's current epoch) and from the broker's window.
    async fn erase(&self, room: &RoomName, seq: u64) -> Result<bool, BrokerError> {
        let now = self.broker.history(room, HistoryQuery { before: None, after: None, limit: 0 }).await?;
        let kept = self.keeper.store.erase(room, &now.epoch, seq).await.map_err(broker_error)?;
        Ok(self.broker.erase(room, seq).await? || kept)
    }

    /// Erases from the store and from the broker's window; returns how many the store erased
    /// (the broker's are among them) or, without them, the broker's.
    async fn erase_user(&self, user: &str) -> Result<u64, BrokerError> {
        let kept = self.keeper.store.erase_user(user).await.map_err(broker_error)?;
        Ok(self.broker.erase_user(user).await?.max(kept))
    }

    async fn detach(&self) {
        self.broker.detach().await
    }
}

/// A store's failure to read, as the broker's.
fn broker_error(e: StoreError) -> BrokerError {
    match e {
        StoreError::Unavailable(m) => BrokerError::Unavailable(m),
        StoreError::Internal(m) => BrokerError::Internal(m),
    }
}

/// What `page` (the broker's answer to `query`) lacks at its old end that the store may hold,
/// as a query for the store; `None` when the page is complete. The broker's window is
/// contiguous and ends at the room's latest seq, so all it can lack is a run of the oldest.
fn missing(query: &HistoryQuery, page: &HistoryPage) -> Option<HistoryQuery> {
    let hi = query.before.map_or(page.latest, |b| b.saturating_sub(1)).min(page.latest);
    let lo = query.after.map_or(1, |a| a.saturating_add(1));
    if query.limit == 0 || lo > hi || query.before == Some(0) {
        return None;
    }
    let first = page.messages.first().map_or(hi + 1, |m| m.seq);
    if first <= lo {
        return None; // the page starts where the answer starts
    }
    if query.after.is_some() {
        // The oldest `limit` from `lo`: the store's part comes first, the page's after it.
        Some(HistoryQuery { after: query.after, before: Some(first), limit: query.limit })
    } else {
        // The newest `limit` up to `hi`: the page holds the newest; the rest is older.
        let wanted = ((hi - lo + 1) as usize).min(query.limit);
        let short = wanted.saturating_sub(page.messages.len());
        (short > 0).then_some(HistoryQuery { after: None, before: Some(first), limit: short })
    }
}

/// A stored record as a message (an erased one is a tombstone: no body).
fn message(r: Record) -> Message {
    Message { seq: r.seq, from: r.from, ts: r.ts, body: r.body }
}

/// Appends what sessions queued, a batch at a time, and answers each of them. A batch the
/// store refuses as a whole for a reason other than being unreachable (`Internal`: a record it
/// cannot take, say) is appended again one record at a time, so that one session's bad record
/// fails only that session's send.
async fn commit(store: Arc<dyn Store>, mut queue: mpsc::Receiver<Pending>, max_batch: usize) {
    let mut pending = Vec::with_capacity(max_batch.min(1024));
    while queue.recv_many(&mut pending, max_batch).await > 0 {
        let records: Vec<Record> = pending.iter().map(|p| p.record.clone()).collect();
        match store.append(&records).await {
            Err(StoreError::Internal(why)) if pending.len() > 1 => {
                tracing::warn!(records = pending.len(), error = %why, "a batch failed; appending its records one by one");
                for p in pending.drain(..) {
                    let outcome = store.append(std::slice::from_ref(&p.record)).await;
                    answer(p, outcome.map(|conflicts| !conflicts.is_empty()));
                }
            }
            outcome => {
                let mut conflicts = outcome.as_deref().unwrap_or_default().iter().copied().peekable();
                for (i, p) in pending.drain(..).enumerate() {
                    let conflict = outcome.as_ref().map(|_| conflicts.next_if_eq(&i).is_some()).map_err(Clone::clone);
                    answer(p, conflict);
                }
            }
        }
    }
}

/// Tells the sender of `p` how its append went (`Ok(true)`: a conflict).
fn answer(p: Pending, outcome: Result<bool, StoreError>) {
    let answer = match outcome {
        Err(e) => Err(e),
        Ok(true) => {
            tracing::error!(
                room = %p.record.room, epoch = %p.record.epoch, seq = p.record.seq,
                "the store holds another message under this seq: the broker handed it out twice"
            );
            Err(StoreError::Internal(format!(
                "seq {} of {} is stored with another message",
                p.record.seq, p.record.room
            )))
        }
        Ok(false) => Ok(()),
    };
    // A sender that gave up (its session ended) no longer listens.
    let _ = p.done.send(answer);
}

/// The store as the broker's [`Origin`].
struct StoreOrigin(Arc<dyn Store>);

#[async_trait]
impl Origin for StoreOrigin {
    async fn origin(&self, room: &RoomName) -> Result<Option<Position>, BrokerError> {
        self.0.latest(room).await.map_err(broker_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn page(latest: u64, seqs: impl IntoIterator<Item = u64>) -> HistoryPage {
        let messages = seqs
            .into_iter()
            .map(|seq| Message { seq, from: Arc::from("a"), ts: 1, body: Some(Bytes::from_static(b"1")) })
            .collect();
        HistoryPage { epoch: Arc::from("e"), latest, messages }
    }

    fn q(before: Option<u64>, after: Option<u64>, limit: usize) -> HistoryQuery {
        HistoryQuery { before, after, limit }
    }

    #[test]
    fn a_complete_page_needs_nothing_from_the_store() {
        assert_eq!(missing(&q(None, None, 5), &page(10, 6..=10)), None);
        assert_eq!(missing(&q(None, Some(5), 5), &page(10, 6..=10)), None);
        assert_eq!(missing(&q(None, None, 50), &page(3, 1..=3)), None);
        assert_eq!(missing(&q(None, None, 5), &page(0, None)), None, "an empty room");
        assert_eq!(missing(&q(Some(1), None, 5), &page(10, None)), None, "nothing below 1");
        assert_eq!(missing(&q(None, Some(10), 5), &page(10, None)), None, "nothing after the latest");
    }

    #[test]
    fn the_newest_pages_take_what_the_window_lacks_from_the_store() {
        // The window holds 8..=10; the newest 5 are 6..=10.
        assert_eq!(missing(&q(None, None, 5), &page(10, 8..=10)), Some(q(Some(8), None, 2)));
        // Nothing in the window below 8: all of it from the store.
        assert_eq!(missing(&q(Some(8), None, 5), &page(10, None)), Some(q(Some(8), None, 5)));
        // The broker lost everything: the store has all of it.
        assert_eq!(missing(&q(None, None, 50), &page(10, None)), Some(q(Some(11), None, 10)));
    }

    #[test]
    fn pages_after_a_seq_start_in_the_store() {
        assert_eq!(missing(&q(None, Some(2), 5), &page(10, 8..=10)), Some(q(Some(8), Some(2), 5)));
        assert_eq!(missing(&q(Some(6), Some(2), 5), &page(10, None)), Some(q(Some(6), Some(2), 5)));
    }
}
