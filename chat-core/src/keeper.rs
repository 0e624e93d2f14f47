//! Keeping: the engine's side of its [`Store`] (DESIGN.md: ordering is the broker's job,
//! keeping is the store's). Without a store everything here passes straight to the broker.
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
//! * **Retention**: every node applies the store's retention in the background.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use crate::broker::{BrokerError, BrokerNode, HistoryPage, HistoryQuery, Message, Origin, Position, Publication};
use crate::broker::{PublishOpts, Published};
use crate::protocol::RoomName;
use crate::store::{Record, Store, StoreError};

/// Why a publish or a history page failed.
#[derive(Debug)]
pub(crate) enum KeepError {
    /// The broker failed: nothing was ordered, or nothing could be read.
    Broker(BrokerError),
    /// The store failed. For a publish: the message was ordered and delivered but is not
    /// known to be committed.
    Store(StoreError),
}

impl From<BrokerError> for KeepError {
    fn from(e: BrokerError) -> Self {
        KeepError::Broker(e)
    }
}

impl From<StoreError> for KeepError {
    fn from(e: StoreError) -> Self {
        KeepError::Store(e)
    }
}

/// A record waiting for its commit, and who waits for it.
struct Pending {
    record: Record,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// The engine's store, if it has one, and the queue of its committer task.
pub(crate) struct Keeper {
    store: Option<(Arc<dyn Store>, mpsc::Sender<Pending>)>,
}

impl Keeper {
    /// A keeper that keeps nothing: the broker alone.
    pub(crate) fn none() -> Keeper {
        Keeper { store: None }
    }

    /// A keeper on `store`; starts its committer task, which appends at most `max_batch`
    /// records at a time, with up to `queue` more waiting. The task ends with the keeper.
    pub(crate) fn new(store: Arc<dyn Store>, max_batch: usize, queue: usize) -> Keeper {
        let (tx, rx) = mpsc::channel(queue.max(1));
        tokio::spawn(commit(store.clone(), rx, max_batch.max(1)));
        Keeper { store: Some((store, tx)) }
    }

    /// The store, if any.
    pub(crate) fn store(&self) -> Option<&Arc<dyn Store>> {
        self.store.as_ref().map(|(s, _)| s)
    }

    /// What the broker asks when it holds nothing of a room: the store's position.
    pub(crate) fn origin(&self) -> Option<Arc<dyn Origin>> {
        self.store().map(|s| Arc::new(StoreOrigin(s.clone())) as Arc<dyn Origin>)
    }

    /// Orders `publication` through the broker, then (with a store) waits until it is
    /// committed.
    pub(crate) async fn publish(
        &self,
        broker: &dyn BrokerNode,
        room: &RoomName,
        publication: Publication,
        opts: &PublishOpts,
    ) -> Result<Published, KeepError> {
        let Some((_, queue)) = &self.store else { return Ok(broker.publish(room, publication, opts).await?) };
        let (from, ts, body) = (publication.from.clone(), publication.ts, publication.body.clone());
        let published = broker.publish(room, publication, opts).await?;
        let record = Record {
            room: room.clone(),
            epoch: published.epoch.clone(),
            seq: published.seq,
            from,
            ts,
            body: Some(body),
        };
        let (done, committed) = oneshot::channel();
        let stopped = || StoreError::Unavailable("the store's committer stopped".into());
        queue.send(Pending { record, done }).await.map_err(|_| stopped())?;
        committed.await.map_err(|_| stopped())??;
        Ok(published)
    }

    /// A page of history: the broker's, completed from the store with what the broker's
    /// window no longer holds.
    pub(crate) async fn history(
        &self,
        broker: &dyn BrokerNode,
        room: &RoomName,
        query: HistoryQuery,
    ) -> Result<HistoryPage, KeepError> {
        let mut page = broker.history(room, query).await?;
        let Some(store) = self.store() else { return Ok(page) };
        let Some(older) = missing(&query, &page) else { return Ok(page) };
        let records = store.page(room, &page.epoch, older).await?;
        let mut messages: Vec<Message> = records.into_iter().filter_map(message).collect();
        messages.append(&mut page.messages);
        messages.truncate(query.limit);
        page.messages = messages;
        Ok(page)
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

/// A stored record as a message. An erased one (no body) is not turned into a message yet:
/// erasure, and its tombstones, are not wired into the engine.
fn message(r: Record) -> Option<Message> {
    Some(Message { seq: r.seq, from: r.from, ts: r.ts, body: r.body? })
}

/// Appends what sessions queued, a batch at a time, and answers each of them.
async fn commit(store: Arc<dyn Store>, mut queue: mpsc::Receiver<Pending>, max_batch: usize) {
    let mut pending = Vec::with_capacity(max_batch.min(1024));
    while queue.recv_many(&mut pending, max_batch).await > 0 {
        let records: Vec<Record> = pending.iter().map(|p| p.record.clone()).collect();
        let outcome = store.append(&records).await;
        let mut conflicts = outcome.as_deref().unwrap_or_default().iter().copied().peekable();
        for (i, p) in pending.drain(..).enumerate() {
            let answer = match &outcome {
                Err(e) => Err(e.clone()),
                Ok(_) if conflicts.next_if_eq(&i).is_some() => {
                    tracing::error!(
                        room = %p.record.room, epoch = %p.record.epoch, seq = p.record.seq,
                        "the store holds another message under this seq: the broker handed it out twice"
                    );
                    Err(StoreError::Internal(format!(
                        "seq {} of {} is stored with another message",
                        p.record.seq, p.record.room
                    )))
                }
                Ok(_) => Ok(()),
            };
            // A sender that gave up (its session ended) no longer listens.
            let _ = p.done.send(answer);
        }
    }
}

/// The store as the broker's [`Origin`].
struct StoreOrigin(Arc<dyn Store>);

#[async_trait]
impl Origin for StoreOrigin {
    async fn origin(&self, room: &RoomName) -> Result<Option<Position>, BrokerError> {
        self.0.latest(room).await.map_err(|e| match e {
            StoreError::Unavailable(m) => BrokerError::Unavailable(m),
            StoreError::Internal(m) => BrokerError::Internal(m),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn page(latest: u64, seqs: impl IntoIterator<Item = u64>) -> HistoryPage {
        let messages = seqs
            .into_iter()
            .map(|seq| Message { seq, from: Arc::from("a"), ts: 1, body: Bytes::from_static(b"1") })
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
