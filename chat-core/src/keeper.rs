//! Keeping: the engine's side of its [`Store`] (DESIGN.md: ordering is the broker's job,
//! keeping is the store's). [`KeptNode`] wraps the node's [`BrokerNode`] and is what the rest
//! of the engine talks to, so sessions, recovery and gap repair keep one code path whether or
//! not a store is configured.
//!
//! * **Publish**: the broker orders the message (its seq) and fans it out; then the message is
//!   appended to the store, and only once that is committed does the sender get `sent`. A
//!   broker that can (the memory broker) holds the message back until the commit is done, so
//!   no member sees a message that a crash could take from the store (the process would hand
//!   its seq out again); the Redis broker fans out at once, and a node that delivered a message
//!   the store then lacks makes the room start a new epoch if Redis loses it too. One
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

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use crate::broker::{
    BrokerError, BrokerNode, HistoryPage, HistoryQuery, KeptKey, Message, Notice, Origin, Position, PresenceEntry,
    Publication, PublishOpts, Published, Transient,
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
    /// records at a time, with up to `queue` more waiting (and as many that the store could
    /// not take, to be appended again). The task ends with the keeper.
    pub(crate) fn new(store: Arc<dyn Store>, max_batch: usize, queue: usize) -> Keeper {
        let (tx, rx) = mpsc::channel(queue.max(1));
        tokio::spawn(commit(store.clone(), rx, max_batch.max(1), queue.max(1)));
        Keeper { store, queue: tx }
    }

    /// The store.
    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// What the broker asks when it holds nothing of a room: the store's position, and the
    /// keys of its recent messages sent within `window` (the engine's idempotency window).
    pub(crate) fn origin(&self, window: Duration) -> Arc<dyn Origin> {
        Arc::new(StoreOrigin { store: self.store.clone(), window })
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
    /// Orders through the broker, then waits until the store committed the message. A broker
    /// that can holds the message back until then (see [`BrokerNode::publish_held`]); it goes
    /// out once the commit is done, or failed: the sender is then told it may have reached the
    /// room, as with a broker that cannot hold it.
    async fn publish(&self, room: &RoomName, msg: Publication, opts: &PublishOpts) -> Result<Published, BrokerError> {
        let (from, ts, body) = (msg.from.clone(), msg.ts, msg.body.clone());
        let (published, held) = self.broker.publish_held(room, msg, opts).await?;
        let (epoch, seq) = (published.epoch.clone(), published.seq);
        let key = opts.key.as_deref().map(Arc::from);
        let kept = self.keeper.keep(Record { room: room.clone(), epoch, seq, from, ts, body: Some(body), key }).await;
        held.release();
        kept.map(|()| published)
    }

    async fn notify(&self, users: &[Arc<str>], notice: &Notice) -> Result<(), BrokerError> {
        self.broker.notify(users, notice).await
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

/// The first wait before appending again what the store could not take, doubled after each
/// failure up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Appends what sessions queued, a batch at a time, and answers each of them. A batch the
/// store refuses as a whole for a reason other than being unreachable (`Internal`: a record it
/// cannot take, say) is appended again one record at a time, so that one session's bad record
/// fails only that session's send.
///
/// A batch the store could not take (`Unavailable`) is answered as such, and kept to be
/// appended again in the background, with growing pauses, until the store takes it: those
/// messages were ordered and may have reached members, and the store must not lack them once
/// it is back, whether or not their senders resend (a resend is skipped as a duplicate). At
/// most `unkept_limit` records wait so; beyond that the oldest are given up, with a warning.
async fn commit(store: Arc<dyn Store>, mut queue: mpsc::Receiver<Pending>, max_batch: usize, unkept_limit: usize) {
    let mut pending = Vec::with_capacity(max_batch.min(1024));
    let mut unkept: VecDeque<Record> = VecDeque::new();
    let mut pause = RETRY_MIN;
    loop {
        let received = if unkept.is_empty() {
            queue.recv_many(&mut pending, max_batch).await
        } else {
            tokio::select! {
                n = queue.recv_many(&mut pending, max_batch) => n,
                _ = tokio::time::sleep(pause) => {
                    pause = append_unkept(&*store, &mut unkept, max_batch, pause).await;
                    continue;
                }
            }
        };
        if received == 0 {
            break;
        }
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
                if let Err(StoreError::Unavailable(_)) = &outcome {
                    unkept.extend(records);
                    let over = unkept.len().saturating_sub(unkept_limit);
                    if over > 0 {
                        unkept.drain(..over);
                        tracing::warn!(records = over, "the store stayed unavailable; gave up appending these again");
                    }
                }
                let mut conflicts = outcome.as_deref().unwrap_or_default().iter().copied().peekable();
                for (i, p) in pending.drain(..).enumerate() {
                    let conflict = outcome.as_ref().map(|_| conflicts.next_if_eq(&i).is_some()).map_err(Clone::clone);
                    answer(p, conflict);
                }
            }
        }
    }
    if !unkept.is_empty() {
        tracing::warn!(records = unkept.len(), "stopping with records the store never took");
    }
}

/// Appends the oldest batch of `unkept`; returns the pause before the next try.
async fn append_unkept(
    store: &dyn Store,
    unkept: &mut VecDeque<Record>,
    max_batch: usize,
    pause: Duration,
) -> Duration {
    let batch: Vec<Record> = unkept.iter().take(max_batch).cloned().collect();
    match store.append(&batch).await {
        Ok(conflicts) => {
            unkept.drain(..batch.len());
            if !conflicts.is_empty() {
                // The room has gone on under another epoch since: what the store holds stays.
                tracing::warn!(records = conflicts.len(), "records appended late conflict with stored ones");
            }
            RETRY_MIN
        }
        Err(StoreError::Unavailable(_)) => (pause * 2).min(RETRY_MAX),
        Err(StoreError::Internal(why)) => {
            unkept.drain(..batch.len());
            tracing::warn!(records = batch.len(), error = %why, "the store refused records appended late; gave them up");
            RETRY_MIN
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

/// How many of a room's newest stored messages the [`Origin`] looks through for keys.
const ORIGIN_KEYS_SCAN: usize = 1024;
/// How many it reads at a time: a room quiet for longer than the window costs one small page.
const ORIGIN_KEYS_PAGE: usize = 64;

/// The store as the broker's [`Origin`].
struct StoreOrigin {
    store: Arc<dyn Store>,
    /// The engine's idempotency window: older keys are not handed back.
    window: Duration,
}

#[async_trait]
impl Origin for StoreOrigin {
    async fn origin(&self, room: &RoomName) -> Result<Option<Position>, BrokerError> {
        self.store.latest(room).await.map_err(broker_error)
    }

    /// Reads the newest messages a page at a time, back to the first sent before the window
    /// began or [`ORIGIN_KEYS_SCAN`] messages, whichever comes first (seqs follow the order
    /// of the servers' clocks closely enough that what lies further back is older).
    async fn keys(&self, room: &RoomName, at: &Position) -> Result<Vec<KeptKey>, BrokerError> {
        let now = crate::time::now_ms();
        let window = u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX);
        let since = now.saturating_sub(window);
        let mut keys = Vec::new();
        let (mut before, mut read) = (at.seq.saturating_add(1), 0);
        while read < ORIGIN_KEYS_SCAN && before > 1 {
            let query = HistoryQuery { before: Some(before), after: None, limit: ORIGIN_KEYS_PAGE };
            let page = self.store.page(room, &at.epoch, query).await.map_err(broker_error)?;
            let Some(first) = page.first() else { break };
            (before, read) = (first.seq, read + page.len());
            let old = first.ts < since;
            for r in page.into_iter().rev() {
                let Some(key) = r.key else { continue };
                let left = r.ts.saturating_add(window).saturating_sub(now);
                if left > 0 {
                    keys.push(KeptKey { from: r.from, key, seq: r.seq, remaining: Duration::from_millis(left) });
                }
            }
            if old {
                break;
            }
        }
        keys.reverse();
        Ok(keys)
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

    /// Records 1..=`n` of room "r" in epoch "e", `age(seq)` ms old, each with key `k<seq>`
    /// but those `unkeyed` says.
    async fn kept(n: u64, age: impl Fn(u64) -> u64, unkeyed: impl Fn(u64) -> bool) -> StoreOrigin {
        let store = crate::MemoryStore::new();
        let now = crate::time::now_ms();
        let records: Vec<Record> = (1..=n)
            .map(|seq| Record {
                room: RoomName::new("r").unwrap(),
                epoch: Arc::from("e"),
                seq,
                from: Arc::from("a"),
                ts: now - age(seq),
                body: Some(Bytes::from_static(b"1")),
                key: (!unkeyed(seq)).then(|| Arc::from(format!("k{seq}"))),
            })
            .collect();
        store.append(&records).await.unwrap();
        StoreOrigin { store: Arc::new(store), window: Duration::from_secs(60) }
    }

    async fn seqs_of_keys(origin: &StoreOrigin, at: u64) -> Vec<u64> {
        let (room, at) = (RoomName::new("r").unwrap(), Position { epoch: Arc::from("e"), seq: at });
        let keys = origin.keys(&room, &at).await.unwrap();
        for k in &keys {
            assert_eq!(&*k.key, format!("k{}", k.seq));
            assert!(!k.remaining.is_zero() && k.remaining <= Duration::from_secs(60), "{k:?}");
        }
        keys.iter().map(|k| k.seq).collect()
    }

    #[tokio::test]
    async fn the_origin_hands_back_the_keys_still_in_their_window() {
        // 1..=100 sent 100..=1 s ago: the last 59 are in the 60 s window; odd seqs have no key.
        let origin = kept(100, |seq| (101 - seq) * 1000, |seq| seq % 2 == 1).await;
        let young: Vec<u64> = (42..=100).filter(|s| s % 2 == 0).collect();
        assert_eq!(seqs_of_keys(&origin, 100).await, young, "oldest first, across pages of 64");
        assert_eq!(seqs_of_keys(&origin, 50).await, vec![42, 44, 46, 48, 50], "up to the position only");
        let (room, at) = (RoomName::new("r").unwrap(), Position { epoch: Arc::from("e"), seq: 100 });
        let newest = origin.keys(&room, &at).await.unwrap().pop().unwrap();
        assert!(newest.remaining > Duration::from_secs(57), "about 59 s left: {newest:?}");
        assert_eq!(seqs_of_keys(&origin, 0).await, Vec::<u64>::new());
    }

    #[tokio::test]
    async fn the_origin_looks_back_a_bounded_number_of_messages() {
        let n = ORIGIN_KEYS_SCAN as u64 + 500;
        let origin = kept(n, |_| 0, |_| false).await;
        let seqs = seqs_of_keys(&origin, n).await;
        assert_eq!(seqs, (n + 1 - ORIGIN_KEYS_SCAN as u64..=n).collect::<Vec<_>>(), "only the newest");
        // A room quiet for longer than the window has none.
        let quiet = kept(n, |_| 120_000, |_| false).await;
        assert_eq!(seqs_of_keys(&quiet, n).await, Vec::<u64>::new());
    }
}
