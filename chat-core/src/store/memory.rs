//! `MemoryStore`: a [`Store`] in this process's memory. It outlives a broker (a Redis flush, a
//! failover) but not the process, so it is for tests of what runs around a store, and for a
//! host that wants the engine's store semantics in one process without a database file. It
//! holds every message until retention deletes it: bound it with [`Retention`](super::Retention).

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;

use super::{Record, RetentionPolicy, Store, StoreError};
use crate::broker::{Epoch, HistoryQuery, Position};
use crate::protocol::RoomName;

/// A [`Store`] in memory. Clones share one store.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use chat_core::store::memory::MemoryStore;
/// use chat_core::{Engine, MemoryBroker};
///
/// let store = MemoryStore::new();
/// let engine = Engine::builder().broker(MemoryBroker::new()).store(store.clone()).build().await.unwrap();
/// // ... a new engine on a new broker and the same store goes on where this one stopped ...
/// engine.shutdown().await;
/// # }
/// ```
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    kept: Mutex<Kept>,
    down: AtomicBool,
}

#[derive(Default)]
struct Kept {
    /// Per room, its messages by (epoch, seq).
    rooms: HashMap<RoomName, Room>,
}

#[derive(Default)]
struct Room {
    messages: BTreeMap<(Epoch, u64), Record>,
    /// Every epoch that ever had a record here, with the highest seq retention deleted in it:
    /// only the first record of an epoch moves `latest` to it, and a record at or below the
    /// floor is not stored again.
    epochs: HashMap<Epoch, u64>,
    latest: Option<Position>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every call fail with [`StoreError::Unavailable`] (`false`) or work again
    /// (`true`), as a database that went away and came back: for tests.
    pub fn set_available(&self, available: bool) {
        self.inner.down.store(!available, Ordering::Relaxed);
    }

    /// How many messages it holds, across rooms.
    pub fn len(&self) -> usize {
        self.kept().rooms.values().map(|r| r.messages.len()).sum()
    }

    /// Whether it holds no message.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn kept(&self) -> MutexGuard<'_, Kept> {
        self.inner.kept.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.inner.down.load(Ordering::Relaxed) {
            return Err(StoreError::Unavailable("the memory store is switched off".into()));
        }
        Ok(())
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn append(&self, batch: &[Record]) -> Result<Vec<usize>, StoreError> {
        self.check()?;
        let mut kept = self.kept();
        let mut conflicts = Vec::new();
        for (i, record) in batch.iter().enumerate() {
            let room = kept.rooms.entry(record.room.clone()).or_default();
            let key = (record.epoch.clone(), record.seq);
            if let Some(stored) = room.messages.get(&key) {
                // A tombstone matches a resend from its sender: it stays erased.
                let erased = stored.body.is_none();
                if stored.from != record.from || (!erased && stored.body != record.body) {
                    conflicts.push(i);
                }
                continue;
            }
            let position = Position { epoch: record.epoch.clone(), seq: record.seq };
            match room.epochs.get(&record.epoch) {
                Some(floor) if record.seq <= *floor => continue, // deleted by retention
                Some(_) => {
                    if let Some(latest) = room.latest.as_mut().filter(|l| l.epoch == record.epoch) {
                        latest.seq = latest.seq.max(record.seq);
                    }
                }
                None => {
                    room.epochs.insert(record.epoch.clone(), 0);
                    room.latest = Some(position);
                }
            }
            room.messages.insert(key, record.clone());
        }
        Ok(conflicts)
    }

    async fn page(&self, room: &RoomName, epoch: &str, q: HistoryQuery) -> Result<Vec<Record>, StoreError> {
        self.check()?;
        let lo = q.after.map_or(1, |a| a.saturating_add(1));
        let Some(hi) = q.before.map_or(Some(u64::MAX), |b| b.checked_sub(1)) else { return Ok(Vec::new()) };
        if lo > hi || q.limit == 0 {
            return Ok(Vec::new());
        }
        let kept = self.kept();
        let Some(r) = kept.rooms.get(room) else { return Ok(Vec::new()) };
        let epoch: Epoch = Arc::from(epoch);
        let range = r.messages.range((Bound::Included((epoch.clone(), lo)), Bound::Included((epoch, hi))));
        let mut page: Vec<Record> = if q.after.is_some() {
            range.take(q.limit).map(|(_, m)| m.clone()).collect()
        } else {
            range.rev().take(q.limit).map(|(_, m)| m.clone()).collect()
        };
        page.sort_by_key(|m| m.seq);
        Ok(page)
    }

    async fn latest(&self, room: &RoomName) -> Result<Option<Position>, StoreError> {
        self.check()?;
        Ok(self.kept().rooms.get(room).and_then(|r| r.latest.clone()))
    }

    async fn retain(&self, policy: &RetentionPolicy, now_ms: u64) -> Result<u64, StoreError> {
        self.check()?;
        let mut kept = self.kept();
        let mut deleted = 0;
        for (name, room) in kept.rooms.iter_mut() {
            let keep = policy(name);
            let cutoff = now_ms.saturating_sub(u64::try_from(keep.max_age.as_millis()).unwrap_or(u64::MAX));
            let over = (room.messages.len() as u64).saturating_sub(keep.max_count);
            // From the oldest end: earlier epochs first, then the current one in seq order.
            let current = room.latest.as_ref().map(|l| l.epoch.clone());
            let is_current = |e: &Epoch| Some(e) == current.as_ref();
            let order: Vec<(Epoch, u64)> = (room.messages.keys().filter(|(e, _)| !is_current(e)))
                .chain(room.messages.keys().filter(|(e, _)| is_current(e)))
                .cloned()
                .collect();
            let mut gone = 0u64;
            for key in order {
                let old = room.messages.get(&key).is_some_and(|m| m.ts < cutoff);
                if gone < over || old {
                    room.messages.remove(&key);
                    if let Some(floor) = room.epochs.get_mut(&key.0) {
                        *floor = (*floor).max(key.1);
                    }
                    gone += 1;
                } else {
                    break;
                }
            }
            deleted += gone;
        }
        Ok(deleted)
    }

    async fn erase(&self, room: &RoomName, epoch: &str, seq: u64) -> Result<bool, StoreError> {
        self.check()?;
        let mut kept = self.kept();
        let message = kept.rooms.get_mut(room).and_then(|r| r.messages.get_mut(&(Arc::from(epoch), seq)));
        Ok(message.map(|m| m.body = None).is_some())
    }

    async fn erase_user(&self, user: &str) -> Result<u64, StoreError> {
        self.check()?;
        let mut kept = self.kept();
        let mut erased = 0;
        for m in kept.rooms.values_mut().flat_map(|r| r.messages.values_mut()) {
            if &*m.from == user && m.body.is_some() {
                m.body = None;
                erased += 1;
            }
        }
        Ok(erased)
    }
}
