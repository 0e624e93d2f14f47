//! `MemoryBroker`: the embedded default broker, all in this process.
//!
//! One mutex per room makes publish atomic: assign the next seq, check the idempotency key,
//! store, and deliver to every subscribed node before the lock is released, so every node
//! receives the room's messages in one order. Several engines attached to one `MemoryBroker`
//! behave as a cluster, which is how the multi-node logic is tested without Redis.
//!
//! It forgets, so that no client can make it hold more than its budget:
//! * A background sweep (one task per broker, started by the first `attach` made inside a
//!   Tokio runtime; it holds only a `Weak` to the broker and ends once the broker is dropped)
//!   applies each room's `history_ttl`, prunes its expired idempotency keys, and drops the rooms
//!   that hold nothing any more: no subscriber, no presence, no history, no key. Each room
//!   remembers the retention of its latest publish (`PublishOpts`).
//! * After every publish the retained bytes of all rooms are brought back under
//!   `PublishOpts::max_history_bytes`: the oldest messages of the least recently published-to
//!   rooms are evicted first, with their idempotency keys. How bytes are counted:
//!   [`MESSAGE_OVERHEAD`], [`KEY_OVERHEAD`], [`ROOM_OVERHEAD`].
//! * A room that had messages is never dropped and created again under its old epoch (see
//!   `Hub::fresh_epoch`), so a returning client's `since` into lost history is answered
//!   `recovered: false`, never with a silent gap. Unless the node has an
//!   [`Origin`] (the engine's store): a room it holds nothing of is then created
//!   where the store says the room stands, in its epoch, so a restarted process goes on.
//!
//! Lock order: the room map, then one room, then the LRU index; never the other way round.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{
    Broker, BrokerError, BrokerNode, Delivery, DeliverySink, Epoch, Held, HistoryPage, HistoryQuery, KeptKey, Message,
    Notice, Origin, Position, PresenceEntry, Publication, PublishOpts, Published, Transient,
};
use crate::protocol::RoomName;

/// Bytes counted for each retained message on top of its body and sender: its history slot
/// (store time and pointer, 24), the shared `Message` (64 plus the `Arc`'s 16), the body's
/// shared-buffer header once it has been cloned for a history page (24), and the allocator's
/// per-block headers (3 x 8), rounded up.
pub const MESSAGE_OVERHEAD: usize = 160;

/// Bytes counted for each remembered idempotency key on top of its sender and key text: its
/// map slot (two `Arc<str>` and a seq, 40, at the map's load factor), its slot in the expiry
/// queue (time, seq, the two `Arc<str>`: 56), the key text's `Arc` header (16) and allocator
/// headers, rounded up.
pub const KEY_OVERHEAD: usize = 128;

/// Bytes counted for a room while it retains any message or key, on top of its name: the room
/// itself (its mutex, queues, maps and counters: 336 with its `Arc`), its entries in the room
/// map and the LRU index (about 80), and the spare slots of the first allocations of its
/// queues and key map (which start at 4 slots), rounded up. A room that retains nothing costs
/// nothing here: it exists only while it has members, which `Config::max_rooms` bounds per node.
pub const ROOM_OVERHEAD: usize = 640;

/// The in-memory broker. Clones share one set of rooms.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use chat_core::{Engine, MemoryBroker};
/// let broker = MemoryBroker::new();
/// // Two engines on one broker form a two-node cluster.
/// let a = Engine::builder().node_id("a").broker(broker.clone()).build().await.unwrap();
/// let b = Engine::builder().node_id("b").broker(broker.clone()).build().await.unwrap();
/// # a.shutdown().await; b.shutdown().await;
/// # }
/// ```
#[derive(Clone, Default)]
pub struct MemoryBroker {
    hub: Arc<Hub>,
}

/// What a [`MemoryBroker`] holds right now; see [`MemoryBroker::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Rooms the broker knows: those with subscribers, presence, history or keys (and, until
    /// the next sweep, a room whose last message expired while nobody was there).
    pub rooms: usize,
    /// Retained messages, across all rooms.
    pub messages: usize,
    /// Retained bytes as `max_history_bytes` counts them: bodies, senders and keys, plus
    /// [`MESSAGE_OVERHEAD`] per message, [`KEY_OVERHEAD`] per key, and [`ROOM_OVERHEAD`] plus
    /// the name for each room that retains anything.
    pub retained_bytes: usize,
    /// Remembered idempotency keys, across all rooms.
    pub idempotency_keys: usize,
}

type Room = Arc<Mutex<RoomData>>;

#[derive(Default)]
struct Hub {
    rooms: Mutex<HashMap<RoomName, Room>>,
    next_node: AtomicU64,
    next_epoch: AtomicU64,
    /// The epoch of every room that has never had a message: such a room can be forgotten and
    /// created again without anyone's `since` becoming wrong.
    /// A wipe replaces it, so that no epoch name is ever reused for other messages. So does
    /// dropping a room that had messages: that room may have been created under the current
    /// fresh epoch, and coming back under it with seq from 1 would let an old `since` match
    /// other messages. Rotating it (under the room-map lock, so no room is created in between)
    /// costs only an extra epoch string, and a client whose `since` named an empty room's epoch
    /// gets `recovered: false` for a room where it missed nothing.
    fresh_epoch: Mutex<Option<Epoch>>,
    /// Rooms that retain anything, least recently published-to first, by their `stamp`.
    lru: Mutex<BTreeMap<u64, Room>>,
    /// The latest stamp handed out.
    last_stamp: AtomicU64,
    /// Totals over all rooms, kept by `settle`.
    bytes: AtomicUsize,
    messages: AtomicUsize,
    keys: AtomicUsize,
    /// The shortest `history_ttl` or `idempotency_window` seen, in ms (0: none yet).
    shortest_retention_ms: AtomicU64,
    /// The sweep's period set by [`MemoryBroker::sweep_every`], in ms (0: derived).
    sweep_every_ms: AtomicU64,
    /// A sweep task is running.
    sweeping: AtomicBool,
    /// Every attached node's sink, for [`Notice`]s.
    nodes: Mutex<Vec<Subscriber>>,
}

struct Subscriber {
    node: u64,
    sink: Arc<dyn DeliverySink>,
}

/// An idempotency key: (sender, key).
type KeyId = (Arc<str>, Arc<str>);

/// What a room adds to the hub's totals.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
struct Counted {
    bytes: usize,
    messages: usize,
    keys: usize,
}

struct RoomData {
    name: RoomName,
    epoch: Epoch,
    seq: u64,
    /// The retention of the latest publish, applied by the sweep.
    ttl: Duration,
    /// Stored messages, contiguous in seq, oldest first, with the time each was stored.
    history: VecDeque<(Instant, Arc<Message>)>,
    history_bytes: usize,
    /// Messages ordered after `seq` but held back (see `BrokerNode::publish_held`), in seq
    /// order from `seq + 1`, each with whether it was released: they go out, in order, once
    /// every one before them was released.
    held: VecDeque<(Arc<Message>, bool)>,
    held_bytes: usize,
    /// The history size of the latest publish, applied as held messages go out.
    size: usize,
    keys: HashMap<KeyId, u64>,
    /// The keys in the order they were stored (so in seq order), with when each expires and
    /// its seq.
    key_order: VecDeque<(Instant, u64, KeyId)>,
    key_bytes: usize,
    /// user -> (session, node) pairs
    /// Per user, their sessions and each session's node. Most users have one session in a
    /// room: the lists are allocated to fit, not with spare room.
    presence: HashMap<Arc<str>, Vec<(Box<str>, u64)>>,
    subscribers: Vec<Subscriber>,
    /// What the hub's totals hold for this room (see `Hub::settle`).
    counted: Counted,
    /// This room's key in the hub's LRU index; 0 when it retains nothing.
    stamp: u64,
    /// Removed from the room map: whoever locked it late must look the room up again.
    dropped: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take the whole broker down with it.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn message_cost(m: &Message) -> usize {
    MESSAGE_OVERHEAD + m.body.as_ref().map_or(0, |b| b.len()) + m.from.len()
}

/// When something remembered for `window` from `now` is forgotten.
fn expiry(now: Instant, window: Duration) -> Instant {
    // A window too long to add is as good as forever (136 years).
    now.checked_add(window).unwrap_or_else(|| now + Duration::from_secs(u64::from(u32::MAX)))
}

fn key_cost(k: &KeyId) -> usize {
    KEY_OVERHEAD + k.0.len() + k.1.len()
}

impl Hub {
    fn new_epoch(&self) -> Epoch {
        let n = self.next_epoch.fetch_add(1, Ordering::Relaxed);
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Arc::from(format!("m{:x}{:x}", t.as_millis(), n).as_str())
    }

    fn room(&self, room: &RoomName) -> Room {
        let mut rooms = lock(&self.rooms);
        rooms.entry(room.clone()).or_insert_with(|| RoomData::new(room, self.fresh_epoch(), 0)).clone()
    }

    /// Creates the room at `start` (its epoch and latest seq), remembering `keys` as if its
    /// messages had been published here, unless it exists; `None` is the fresh epoch.
    fn create_at(&self, room: &RoomName, start: Option<Position>, keys: Vec<KeptKey>) {
        let data = match start {
            Some(p) => RoomData::new(room, p.epoch, p.seq),
            None => RoomData::new(room, self.fresh_epoch(), 0),
        };
        // The keys are in before anyone can find the room. (Its lock is taken before the room
        // map's, against the lock order: nobody else can hold or wait for it yet.)
        let mut r = lock(&data);
        let now = Instant::now();
        for k in keys {
            r.push_key(expiry(now, k.remaining), k.seq, (k.from, k.key));
        }
        match lock(&self.rooms).entry(room.clone()) {
            Entry::Occupied(_) => return,
            Entry::Vacant(vacant) => vacant.insert(data.clone()),
        };
        self.settle(&data, &mut r, false);
    }

    /// Runs `f` on the room, created if need be.
    fn with_room<T>(&self, room: &RoomName, f: impl FnOnce(&Room, &mut RoomData) -> T) -> T {
        loop {
            let data = self.room(room);
            let mut r = lock(&data);
            if r.dropped {
                continue; // dropped between the lookup and the lock
            }
            return f(&data, &mut r);
        }
    }

    /// Runs `f` on the room if it exists; a room that does not exist is not created.
    fn with_existing<T>(&self, room: &RoomName, f: impl FnOnce(&Room, &mut RoomData) -> T) -> Option<T> {
        loop {
            let data = lock(&self.rooms).get(room).cloned()?;
            let mut r = lock(&data);
            if r.dropped {
                continue;
            }
            return Some(f(&data, &mut r));
        }
    }

    /// The epoch a room that does not exist would be created with.
    fn fresh_epoch(&self) -> Epoch {
        lock(&self.fresh_epoch).get_or_insert_with(|| self.new_epoch()).clone()
    }

    /// Brings the hub's totals and LRU index in line with what `r` retains; `touched` marks it
    /// the most recently active room.
    fn settle(&self, data: &Room, r: &mut RoomData, touched: bool) {
        let now = r.retained();
        let before = r.counted;
        if now != before {
            adjust(&self.bytes, before.bytes, now.bytes);
            adjust(&self.messages, before.messages, now.messages);
            adjust(&self.keys, before.keys, now.keys);
            r.counted = now;
        }
        if now.bytes == 0 {
            if r.stamp != 0 {
                lock(&self.lru).remove(&r.stamp);
                r.stamp = 0;
            }
        } else if r.stamp == 0 || (touched && r.stamp != self.last_stamp.load(Ordering::Relaxed)) {
            // A room published to again and again keeps its place without taking the lock.
            let mut lru = lock(&self.lru);
            if r.stamp != 0 {
                lru.remove(&r.stamp);
            }
            r.stamp = self.last_stamp.fetch_add(1, Ordering::Relaxed) + 1;
            lru.insert(r.stamp, data.clone());
        }
    }

    /// Removes `r` from the map (the caller holds the map's lock and made sure it retains
    /// nothing, so it is not in the LRU index).
    fn unlink(&self, r: &mut RoomData, rotate: &mut bool) {
        r.dropped = true;
        // See `fresh_epoch`: a room that had messages must not come back under its epoch.
        *rotate |= r.seq > 0;
    }

    /// Drops a room that holds nothing any more (no subscriber, no presence, no history, no
    /// key), so that rooms joined once and abandoned do not accumulate.
    fn forget_if_unused(&self, room: &RoomName) {
        let mut rooms = lock(&self.rooms);
        let Some(data) = rooms.get(room).cloned() else { return };
        let mut r = lock(&data);
        if !r.unused() {
            return;
        }
        let mut rotate = false;
        self.unlink(&mut r, &mut rotate);
        drop(r);
        rooms.remove(room);
        if rotate {
            *lock(&self.fresh_epoch) = None;
        }
    }

    /// One pass of the sweep as of `now`: every room's ttl and key window, then the rooms
    /// left unused.
    fn sweep(&self, now: Instant) {
        let mut rooms = lock(&self.rooms);
        let mut rotate = false;
        rooms.retain(|_, data| {
            let mut r = lock(data);
            r.expire(now);
            r.prune_keys(now);
            self.settle(data, &mut r, false);
            if r.unused() {
                self.unlink(&mut r, &mut rotate);
                false
            } else {
                true
            }
        });
        if rotate {
            *lock(&self.fresh_epoch) = None;
        }
        if rooms.capacity() > 2 * rooms.len() + 64 {
            rooms.shrink_to_fit(); // a spray of room names must not leave its table behind
        }
    }

    /// Evicts the oldest messages (and keys) of the least recently active rooms until the
    /// retained bytes are at most `cap`.
    fn enforce_cap(&self, cap: usize) {
        while self.bytes.load(Ordering::Relaxed) > cap {
            let Some((stamp, data)) = lock(&self.lru).first_key_value().map(|(s, d)| (*s, d.clone())) else {
                return;
            };
            let mut r = lock(&data);
            if r.stamp != stamp {
                continue; // published to or emptied meanwhile: look again
            }
            while self.bytes.load(Ordering::Relaxed) > cap && r.evict_oldest() {
                self.settle(&data, &mut r, false);
            }
            self.settle(&data, &mut r, false);
            let unused = r.unused();
            let name = r.name.clone();
            drop(r);
            if unused {
                self.forget_if_unused(&name);
            }
        }
    }

    /// Remembers the shortest retention seen, from which the sweep's period derives.
    fn note_retention(&self, opts: &PublishOpts) {
        let shortest = opts.history_ttl.min(opts.idempotency_window).as_millis().clamp(1, u128::from(u64::MAX)) as u64;
        let _ = self.shortest_retention_ms.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |current| {
            (current == 0 || shortest < current).then_some(shortest)
        });
    }

    /// The sweep's period: the one set, or a quarter of the shortest retention seen, within
    /// 1 to 10 s (10 s before any publish).
    fn sweep_period(&self) -> Duration {
        match self.sweep_every_ms.load(Ordering::Relaxed) {
            0 => match self.shortest_retention_ms.load(Ordering::Relaxed) {
                0 => Duration::from_secs(10),
                ms => Duration::from_millis(ms / 4).clamp(Duration::from_secs(1), Duration::from_secs(10)),
            },
            ms => Duration::from_millis(ms),
        }
    }
}

fn adjust(total: &AtomicUsize, before: usize, now: usize) {
    if now > before {
        total.fetch_add(now - before, Ordering::Relaxed);
    } else {
        total.fetch_sub(before - now, Ordering::Relaxed);
    }
}

/// Starts the hub's sweep task unless one runs (or there is no runtime here: the next attach
/// inside one starts it).
fn start_sweep(hub: &Arc<Hub>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
    if hub.sweeping.swap(true, Ordering::AcqRel) {
        return;
    }
    let guard = SweepGuard(Arc::downgrade(hub));
    runtime.spawn(async move {
        let guard = guard;
        loop {
            let Some(period) = guard.0.upgrade().map(|hub| hub.sweep_period()) else { return };
            tokio::time::sleep(period).await;
            let Some(hub) = guard.0.upgrade() else { return };
            hub.sweep(Instant::now());
        }
    });
}

/// Lets a later `attach` start the sweep again if its task ends with the broker still alive
/// (its runtime shut down).
struct SweepGuard(Weak<Hub>);

impl Drop for SweepGuard {
    fn drop(&mut self) {
        if let Some(hub) = self.0.upgrade() {
            hub.sweeping.store(false, Ordering::Release);
        }
    }
}

impl RoomData {
    fn new(name: &RoomName, epoch: Epoch, seq: u64) -> Room {
        Arc::new(Mutex::new(RoomData {
            name: name.clone(),
            epoch,
            seq,
            ttl: Duration::MAX,
            history: VecDeque::new(),
            history_bytes: 0,
            held: VecDeque::new(),
            held_bytes: 0,
            size: usize::MAX,
            keys: HashMap::new(),
            key_order: VecDeque::new(),
            key_bytes: 0,
            presence: HashMap::new(),
            subscribers: Vec::new(),
            counted: Counted::default(),
            stamp: 0,
            dropped: false,
        }))
    }

    /// What this room adds to the hub's totals.
    fn retained(&self) -> Counted {
        if self.history.is_empty() && self.keys.is_empty() && self.held.is_empty() {
            return Counted::default();
        }
        Counted {
            bytes: ROOM_OVERHEAD + self.name.len() + self.history_bytes + self.held_bytes + self.key_bytes,
            messages: self.history.len() + self.held.len(),
            keys: self.keys.len(),
        }
    }

    /// Holds nothing that anyone needs: it can be dropped and created again later.
    fn unused(&self) -> bool {
        self.subscribers.is_empty()
            && self.presence.is_empty()
            && self.history.is_empty()
            && self.keys.is_empty()
            && self.held.is_empty()
    }

    /// The seq the next message gets.
    fn next_seq(&self) -> u64 {
        self.seq + self.held.len() as u64 + 1
    }

    /// Releases held message `seq` of `epoch` (nothing if the room has left that epoch), and
    /// stores and delivers every released message at the front of the held ones, in order.
    /// Whether any went out.
    fn release(&mut self, room: &RoomName, epoch: &Epoch, seq: u64) -> bool {
        if self.epoch != *epoch || seq <= self.seq {
            return false;
        }
        if let Some(held) = usize::try_from(seq - self.seq - 1).ok().and_then(|i| self.held.get_mut(i)) {
            held.1 = true;
        }
        let now = Instant::now();
        let mut out = false;
        while self.held.front().is_some_and(|(_, released)| *released) {
            let Some((message, _)) = self.held.pop_front() else { break };
            self.held_bytes -= message_cost(&message);
            self.go_out(room, now, message);
            out = true;
        }
        if out {
            self.expire(now);
        }
        out
    }

    /// Stores `message`, the next after `seq`, in the history and delivers it.
    fn go_out(&mut self, room: &RoomName, now: Instant, message: Arc<Message>) {
        self.seq = message.seq;
        self.push_message(now, message.clone());
        while self.history.len() > self.size {
            self.pop_message();
        }
        self.deliver(room, &Delivery::Stored { epoch: self.epoch.clone(), message });
    }

    fn push_message(&mut self, now: Instant, message: Arc<Message>) {
        self.history_bytes += message_cost(&message);
        self.history.push_back((now, message));
    }

    /// Replaces the retained messages `which` picks (that still have a body) with tombstones;
    /// returns how many. The caller settles the room's accounting.
    fn erase(&mut self, which: impl Fn(&Message) -> bool) -> u64 {
        let mut erased = 0;
        let mut tombstone = |m: &mut Arc<Message>, bytes: &mut usize| {
            if m.body.is_some() && which(m) {
                *bytes -= message_cost(m);
                *m = Arc::new(Message { body: None, ..(**m).clone() });
                *bytes += message_cost(m);
                erased += 1;
            }
        };
        for (_, m) in &mut self.history {
            tombstone(m, &mut self.history_bytes);
        }
        for (m, _) in &mut self.held {
            tombstone(m, &mut self.held_bytes);
        }
        erased
    }

    fn pop_message(&mut self) -> Option<u64> {
        let (_, m) = self.history.pop_front()?;
        self.history_bytes -= message_cost(&m);
        Some(m.seq)
    }

    fn push_key(&mut self, expires: Instant, seq: u64, key: KeyId) {
        self.key_bytes += key_cost(&key);
        self.keys.insert(key.clone(), seq);
        self.key_order.push_back((expires, seq, key));
    }

    fn pop_key(&mut self) {
        if let Some((_, _, key)) = self.key_order.pop_front() {
            self.key_bytes -= key_cost(&key);
            self.keys.remove(&key);
        }
    }

    /// Drops the messages older than the ttl.
    fn expire(&mut self, now: Instant) {
        while self.history.front().is_some_and(|(at, _)| now.saturating_duration_since(*at) > self.ttl) {
            self.pop_message();
        }
    }

    /// Forgets the keys whose window has passed.
    fn prune_keys(&mut self, now: Instant) {
        while self.key_order.front().is_some_and(|(expires, _, _)| now > *expires) {
            self.pop_key();
        }
    }

    /// Evicts the oldest thing the room retains: a key whose message is gone already, or else
    /// the oldest message with its key. False when there was nothing to evict.
    fn evict_oldest(&mut self) -> bool {
        let oldest_message = self.history.front().map(|(_, m)| m.seq);
        let oldest_key = self.key_order.front().map(|(_, seq, _)| *seq);
        match (oldest_message, oldest_key) {
            (Some(message), Some(key)) if key < message => self.pop_key(),
            (Some(_), _) => {
                let seq = self.pop_message().unwrap_or(0);
                while self.key_order.front().is_some_and(|(_, s, _)| *s <= seq) {
                    self.pop_key();
                }
            }
            (None, Some(_)) => self.pop_key(),
            (None, None) => return false,
        }
        true
    }

    /// Loses everything stored (a wipe).
    fn clear_retained(&mut self) {
        self.history.clear();
        self.history_bytes = 0;
        self.held.clear();
        self.held_bytes = 0;
        self.keys.clear();
        self.key_order.clear();
        self.key_bytes = 0;
    }

    fn deliver(&self, room: &RoomName, delivery: &Delivery) {
        for s in &self.subscribers {
            s.sink.deliver(room, delivery.clone());
        }
    }
}

impl MemoryBroker {
    /// An empty broker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the sweep's period (default: a quarter of the shortest `history_ttl` or
    /// `idempotency_window` published with, within 1 to 10 s). Meant for tests; takes effect
    /// from the sweep's next wait.
    ///
    /// ```
    /// use std::time::Duration;
    /// let broker = chat_core::MemoryBroker::new().sweep_every(Duration::from_millis(50));
    /// # drop(broker);
    /// ```
    pub fn sweep_every(self, period: Duration) -> Self {
        let ms = period.as_millis().clamp(1, u128::from(u64::MAX)) as u64;
        self.hub.sweep_every_ms.store(ms, Ordering::Relaxed);
        self
    }

    /// What the broker holds right now, across all rooms.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use chat_core::broker::memory::{MemoryStats, MESSAGE_OVERHEAD, ROOM_OVERHEAD};
    /// use chat_core::broker::{Broker, Delivery, DeliverySink, Publication, PublishOpts};
    /// use chat_core::{MemoryBroker, RoomName};
    ///
    /// struct Ignore;
    /// impl DeliverySink for Ignore {
    ///     fn deliver(&self, _: &RoomName, _: Delivery) {}
    /// }
    /// let broker = MemoryBroker::new();
    /// let node = broker.attach("a", Arc::new(Ignore), None).await.unwrap();
    /// let opts = PublishOpts {
    ///     key: None,
    ///     idempotency_window: Duration::from_secs(300),
    ///     history_size: 100,
    ///     history_ttl: Duration::from_secs(3600),
    ///     max_history_bytes: 1 << 20,
    /// };
    /// let hi = Publication { from: Arc::from("alice"), ts: 1, body: "\"hi\"".into() };
    /// node.publish(&RoomName::new("lobby").unwrap(), hi, &opts).await.unwrap();
    /// assert_eq!(
    ///     broker.stats(),
    ///     MemoryStats {
    ///         rooms: 1,
    ///         messages: 1,
    ///         retained_bytes: ROOM_OVERHEAD + "lobby".len() + MESSAGE_OVERHEAD + "alice".len() + "\"hi\"".len(),
    ///         idempotency_keys: 0,
    ///     }
    /// );
    /// # }
    /// ```
    pub fn stats(&self) -> MemoryStats {
        let rooms = lock(&self.hub.rooms).len();
        MemoryStats {
            rooms,
            messages: self.hub.messages.load(Ordering::Relaxed),
            retained_bytes: self.hub.bytes.load(Ordering::Relaxed),
            idempotency_keys: self.hub.keys.load(Ordering::Relaxed),
        }
    }

    /// Loses every room's history, as a broker that restarted empty would: each room gets a new
    /// epoch, its seq starts again from 1, and subscribed nodes receive a reset. Presence is
    /// kept. Meant for tests of recovery and `reset`.
    pub fn wipe(&self) {
        *lock(&self.hub.fresh_epoch) = None;
        let rooms: Vec<_> = lock(&self.hub.rooms).iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for (name, room) in rooms {
            let mut r = lock(&room);
            if r.dropped {
                continue;
            }
            r.epoch = self.hub.new_epoch();
            r.seq = 0;
            r.clear_retained();
            self.hub.settle(&room, &mut r, false);
            let reset = Delivery::Reset { epoch: r.epoch.clone() };
            r.deliver(&name, &reset);
        }
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn attach(
        &self,
        _node: &str,
        sink: Arc<dyn DeliverySink>,
        origin: Option<Arc<dyn Origin>>,
    ) -> Result<Arc<dyn BrokerNode>, BrokerError> {
        start_sweep(&self.hub);
        let node = self.hub.next_node.fetch_add(1, Ordering::Relaxed);
        lock(&self.hub.nodes).push(Subscriber { node, sink: sink.clone() });
        Ok(Arc::new(MemoryNode { hub: self.hub.clone(), node, sink, origin }))
    }
}

/// One engine's attachment to a [`MemoryBroker`]. Dropping it (an engine dropped without
/// shutdown) behaves like a node that died: its subscriptions and presence vanish.
struct MemoryNode {
    hub: Arc<Hub>,
    node: u64,
    sink: Arc<dyn DeliverySink>,
    /// Where a room this broker holds nothing of goes on from (the engine's store).
    origin: Option<Arc<dyn Origin>>,
}

impl MemoryNode {
    /// Runs `f` on the room, created if need be: where the origin says the room stands when
    /// there is one (a process restarted on a store goes on in the same epoch), else under the
    /// fresh epoch.
    async fn with_room<T>(&self, room: &RoomName, f: impl FnOnce(&Room, &mut RoomData) -> T) -> Result<T, BrokerError> {
        let Some(origin) = &self.origin else { return Ok(self.hub.with_room(room, f)) };
        let mut f = Some(f);
        loop {
            let ran = self.hub.with_existing(room, |data, r| f.take().map(|f| f(data, r)));
            if let Some(Some(done)) = ran {
                return Ok(done);
            }
            let start = origin.origin(room).await?;
            let keys = match &start {
                Some(at) if at.seq > 0 => origin.keys(room, at).await?,
                _ => Vec::new(),
            };
            self.hub.create_at(room, start, keys);
            // Looked up again: the sweep may drop a room that nothing uses yet in between.
        }
    }

    /// Orders `msg` in room `r` (locked, `data` its handle): its seq (or, for a key seen within
    /// the window, the original one), held back behind the room's held messages; with `hold`
    /// false, released at once. A plain function, not a future: publishing stays one future.
    fn order(
        &self,
        room: &RoomName,
        (data, r): (&Room, &mut RoomData),
        msg: Publication,
        opts: &PublishOpts,
        hold: bool,
    ) -> Published {
        let now = Instant::now();
        r.ttl = opts.history_ttl;
        r.size = opts.history_size;
        r.prune_keys(now);
        let key = opts.key.as_deref().map(|k| (msg.from.clone(), Arc::<str>::from(k)));
        if let Some(seq) = key.as_ref().and_then(|k| r.keys.get(k)) {
            let published = Published { epoch: r.epoch.clone(), seq: *seq, duplicate: true };
            self.hub.settle(data, r, false);
            return published;
        }
        let seq = r.next_seq();
        if let Some(key) = key {
            r.push_key(expiry(now, opts.idempotency_window), seq, key);
        }
        let message = Arc::new(Message { seq, from: msg.from, ts: msg.ts, body: Some(msg.body) });
        let epoch = r.epoch.clone();
        if !hold && r.held.is_empty() {
            // Nothing to wait behind: out at once (the common case, kept short).
            r.go_out(room, now, message);
            r.expire(now);
        } else {
            r.held_bytes += message_cost(&message);
            r.held.push_back((message, false));
            if !hold {
                r.release(room, &epoch, seq);
            }
        }
        self.hub.settle(data, r, true);
        Published { epoch, seq, duplicate: false }
    }

    fn detach_now(&self) {
        lock(&self.hub.nodes).retain(|s| s.node != self.node);
        let rooms: Vec<_> = lock(&self.hub.rooms).iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for (name, room) in rooms {
            let mut r = lock(&room);
            r.subscribers.retain(|s| s.node != self.node);
            let mut gone = Vec::new();
            r.presence.retain(|user, sessions| {
                sessions.retain(|(_, node)| *node != self.node);
                if sessions.is_empty() {
                    gone.push(user.clone());
                }
                !sessions.is_empty()
            });
            for user in gone {
                r.deliver(&name, &Delivery::Transient(Transient::MemberLeft(user)));
            }
            let unused = r.unused();
            drop(r);
            if unused {
                self.hub.forget_if_unused(&name);
            }
        }
    }
}

impl Drop for MemoryNode {
    fn drop(&mut self) {
        self.detach_now();
    }
}

#[async_trait]
impl BrokerNode for MemoryNode {
    async fn publish(&self, room: &RoomName, msg: Publication, opts: &PublishOpts) -> Result<Published, BrokerError> {
        let published = self.with_room(room, |data, r| self.order(room, (data, r), msg, opts, false)).await?;
        self.hub.note_retention(opts);
        if !published.duplicate {
            self.hub.enforce_cap(opts.max_history_bytes);
        }
        Ok(published)
    }

    /// Orders the message and holds it back until the [`Held`] goes: the room's position,
    /// history and deliveries stay where they were until then (and for the messages after it).
    async fn publish_held(
        &self,
        room: &RoomName,
        msg: Publication,
        opts: &PublishOpts,
    ) -> Result<(Published, Held), BrokerError> {
        let published = self.with_room(room, |data, r| self.order(room, (data, r), msg, opts, true)).await?;
        self.hub.note_retention(opts);
        if published.duplicate {
            return Ok((published, Held::default()));
        }
        let (hub, room, epoch, seq, cap) =
            (self.hub.clone(), room.clone(), published.epoch.clone(), published.seq, opts.max_history_bytes);
        let held = Held::new(move || {
            let out = hub.with_existing(&room, |data, r| {
                let out = r.release(&room, &epoch, seq);
                hub.settle(data, r, out);
                out
            });
            if out == Some(true) {
                hub.enforce_cap(cap);
            }
        });
        Ok((published, held))
    }

    async fn notify(&self, users: &[Arc<str>], notice: &Notice) -> Result<(), BrokerError> {
        // Cloned out of the lock: a sink must not be called with the broker's locks held.
        let sinks: Vec<_> = lock(&self.hub.nodes).iter().map(|s| s.sink.clone()).collect();
        for sink in sinks {
            sink.notify(users, notice);
        }
        Ok(())
    }

    async fn broadcast(&self, room: &RoomName, what: Transient) -> Result<(), BrokerError> {
        // A room that does not exist has nobody to deliver to.
        self.hub.with_existing(room, |_, r| r.deliver(room, &Delivery::Transient(what)));
        Ok(())
    }

    async fn subscribe(&self, room: &RoomName) -> Result<Position, BrokerError> {
        self.with_room(room, |_, r| {
            if !r.subscribers.iter().any(|s| s.node == self.node) {
                r.subscribers.push(Subscriber { node: self.node, sink: self.sink.clone() });
            }
            Position { epoch: r.epoch.clone(), seq: r.seq }
        })
        .await
    }

    async fn unsubscribe(&self, room: &RoomName) -> Result<(), BrokerError> {
        self.hub.with_existing(room, |_, r| r.subscribers.retain(|s| s.node != self.node));
        self.hub.forget_if_unused(room);
        Ok(())
    }

    async fn history(&self, room: &RoomName, q: HistoryQuery) -> Result<HistoryPage, BrokerError> {
        if self.origin.is_some() {
            // Where the room stands may be the origin's to say.
            return self
                .with_room(room, |data, r| {
                    r.expire(Instant::now());
                    self.hub.settle(data, r, false);
                    history_page(r, q)
                })
                .await;
        }
        let page = self.hub.with_existing(room, |data, r| {
            r.expire(Instant::now());
            self.hub.settle(data, r, false);
            history_page(r, q)
        });
        // A room that does not exist is empty, under the epoch it would be created with.
        Ok(page.unwrap_or_else(|| HistoryPage { epoch: self.hub.fresh_epoch(), latest: 0, messages: Vec::new() }))
    }

    async fn presence_add(&self, room: &RoomName, session: &str, user: &str) -> Result<bool, BrokerError> {
        self.with_room(room, |_, r| {
            let sessions = match r.presence.get_mut(user) {
                Some(sessions) => sessions,
                None => r.presence.entry(Arc::from(user)).or_insert_with(|| Vec::with_capacity(1)),
            };
            if !sessions.iter().any(|(s, _)| &**s == session) {
                sessions.push((session.into(), self.node));
            }
            sessions.len() == 1
        })
        .await
    }

    async fn presence_remove(&self, room: &RoomName, session: &str, user: &str) -> Result<bool, BrokerError> {
        let last = self.hub.with_existing(room, |_, r| match r.presence.get_mut(user) {
            Some(sessions) => {
                let before = sessions.len();
                sessions.retain(|(s, _)| &**s != session);
                let removed = sessions.len() < before;
                let empty = sessions.is_empty();
                if empty {
                    r.presence.remove(user);
                }
                removed && empty
            }
            None => false,
        });
        self.hub.forget_if_unused(room);
        Ok(last.unwrap_or(false))
    }

    async fn presence(&self, room: &RoomName) -> Result<Vec<PresenceEntry>, BrokerError> {
        let mut members = self
            .hub
            .with_existing(room, |_, r| {
                r.presence
                    .iter()
                    .map(|(user, s)| PresenceEntry { user: user.to_string(), sessions: s.len() as u64 })
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        members.sort_by(|a, b| a.user.cmp(&b.user));
        Ok(members)
    }

    async fn erase(&self, room: &RoomName, seq: u64) -> Result<bool, BrokerError> {
        let erased = self.hub.with_existing(room, |data, r| {
            let done = r.erase(|m| m.seq == seq) > 0;
            self.hub.settle(data, r, false);
            done
        });
        Ok(erased.unwrap_or(false))
    }

    async fn erase_user(&self, user: &str) -> Result<u64, BrokerError> {
        let rooms: Vec<RoomName> = lock(&self.hub.rooms).keys().cloned().collect();
        let mut erased = 0;
        for room in rooms {
            erased += self
                .hub
                .with_existing(&room, |data, r| {
                    let n = r.erase(|m| &*m.from == user);
                    self.hub.settle(data, r, false);
                    n
                })
                .unwrap_or(0);
        }
        Ok(erased)
    }

    async fn detach(&self) {
        self.detach_now();
    }
}

/// The page of `r`'s history that `q` asks for.
fn history_page(r: &RoomData, q: HistoryQuery) -> HistoryPage {
    let page = |messages| HistoryPage { epoch: r.epoch.clone(), latest: r.seq, messages };
    let Some(first) = r.history.front().map(|(_, m)| m.seq) else {
        return page(Vec::new());
    };
    let last = r.seq;
    let lo = q.after.map_or(first, |a| a.saturating_add(1)).max(first);
    let hi = q.before.map_or(last, |b| b.saturating_sub(1)).min(last);
    if q.limit == 0 || lo > hi || q.before == Some(0) {
        return page(Vec::new());
    }
    let limit = q.limit as u64;
    let (from, to) = if q.after.is_some() {
        (lo, hi.min(lo.saturating_add(limit - 1)))
    } else {
        (lo.max(hi.saturating_sub(limit - 1)), hi)
    };
    let messages =
        (from..=to).filter_map(|seq| r.history.get((seq - first) as usize)).map(|(_, m)| (**m).clone()).collect();
    page(messages)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    struct Sink(Mutex<Vec<Delivery>>);
    impl DeliverySink for Sink {
        fn deliver(&self, _room: &RoomName, d: Delivery) {
            lock(&self.0).push(d);
        }
    }

    fn opts(key: Option<&str>, size: usize) -> PublishOpts {
        PublishOpts {
            key: key.map(str::to_owned),
            idempotency_window: Duration::from_secs(300),
            history_size: size,
            history_ttl: Duration::from_secs(3600),
            max_history_bytes: usize::MAX,
        }
    }

    fn publication(n: u64) -> Publication {
        Publication { from: Arc::from("u"), ts: n, body: Bytes::from(n.to_string()) }
    }

    fn name(s: &str) -> RoomName {
        RoomName::new(s).unwrap()
    }

    async fn node(broker: &MemoryBroker) -> Arc<dyn BrokerNode> {
        broker.attach("a", Arc::new(Sink(Mutex::new(Vec::new()))), None).await.unwrap()
    }

    /// Long enough for the sweep task (every 10 ms here) to run many times on a loaded machine.
    const SWEEP_DEADLINE: Duration = Duration::from_secs(30);

    /// The broker's semantics are the conformance suite's (tests/broker_conformance.rs); what
    /// is the memory broker's own is here: a wipe frees everything and tells subscribers.
    #[tokio::test]
    async fn a_wipe_frees_everything_and_resets_subscribers() {
        let broker = MemoryBroker::new();
        let sink = Arc::new(Sink(Mutex::new(Vec::new())));
        let node = broker.attach("a", sink.clone(), None).await.unwrap();
        let room = RoomName::new("r").unwrap();
        node.subscribe(&room).await.unwrap();
        let first = node.publish(&room, publication(1), &opts(Some("k"), 5)).await.unwrap();
        broker.wipe();
        assert!(matches!(lock(&sink.0).last(), Some(Delivery::Reset { epoch }) if *epoch != first.epoch));
        assert_eq!(broker.stats(), MemoryStats { rooms: 1, ..MemoryStats::default() }, "a wipe frees everything");
        assert_eq!(node.publish(&room, publication(1), &opts(Some("k"), 5)).await.unwrap().seq, 1);
    }

    #[tokio::test]
    async fn abandoned_rooms_without_messages_are_forgotten() {
        let broker = MemoryBroker::new();
        let node = broker.attach("a", Arc::new(Sink(Mutex::new(Vec::new()))), None).await.unwrap();
        let (quiet, busy) = (RoomName::new("quiet").unwrap(), RoomName::new("busy").unwrap());
        let epoch = node.subscribe(&quiet).await.unwrap().epoch;
        node.subscribe(&busy).await.unwrap();
        node.publish(&busy, publication(1), &opts(None, 5)).await.unwrap();
        node.unsubscribe(&quiet).await.unwrap();
        node.unsubscribe(&busy).await.unwrap();
        assert_eq!(lock(&broker.hub.rooms).len(), 1, "only the room with a message is kept");
        let again = node.subscribe(&quiet).await.unwrap();
        assert_eq!((again.epoch, again.seq), (epoch, 0), "nothing was lost, so the epoch holds");
    }

    #[tokio::test]
    async fn presence_dies_with_a_dropped_node() {
        let broker = MemoryBroker::new();
        let sink = Arc::new(Sink(Mutex::new(Vec::new())));
        let a = broker.attach("a", sink.clone(), None).await.unwrap();
        let b = broker.attach("b", sink.clone(), None).await.unwrap();
        let room = RoomName::new("r").unwrap();
        a.subscribe(&room).await.unwrap();
        assert!(a.presence_add(&room, "s1", "alice").await.unwrap());
        assert!(!b.presence_add(&room, "s2", "alice").await.unwrap());
        assert!(b.presence_add(&room, "s3", "bob").await.unwrap());
        drop(b); // no detach: as a node that died
        assert_eq!(a.presence(&room).await.unwrap(), vec![PresenceEntry { user: "alice".into(), sessions: 1 }]);
        assert!(matches!(lock(&sink.0).last(), Some(Delivery::Transient(Transient::MemberLeft(u))) if &**u == "bob"));
        assert!(a.presence_remove(&room, "s1", "alice").await.unwrap());
    }

    #[tokio::test]
    async fn the_sweep_applies_the_ttl_without_any_publish() {
        let broker = MemoryBroker::new().sweep_every(Duration::from_millis(10));
        let node = node(&broker).await;
        let (kept, dropped) = (name("kept"), name("dropped"));
        node.subscribe(&kept).await.unwrap();
        let short = PublishOpts { history_ttl: Duration::from_millis(200), ..opts(None, 10) };
        for room in [&kept, &dropped] {
            node.publish(room, publication(1), &short).await.unwrap();
            node.publish(room, publication(2), &short).await.unwrap();
        }
        // Nothing is published from here on: only the sweep can expire them.
        chat_testkit::eventually("the sweep to expire every message", SWEEP_DEADLINE, || async {
            (broker.stats().messages == 0).then_some(())
        })
        .await;
        let stats = broker.stats();
        assert_eq!(stats, MemoryStats { rooms: 1, ..MemoryStats::default() }, "the subscribed room stays, emptied");
        let page = node.history(&kept, HistoryQuery { before: None, after: None, limit: 10 }).await.unwrap();
        assert_eq!((page.latest, page.messages.len()), (2, 0), "the seq holds, the messages are gone");
    }

    #[tokio::test]
    async fn the_sweep_prunes_expired_keys() {
        let broker = MemoryBroker::new().sweep_every(Duration::from_millis(10));
        let node = node(&broker).await;
        let room = name("r");
        node.subscribe(&room).await.unwrap();
        let short = PublishOpts { idempotency_window: Duration::from_millis(200), ..opts(Some("k"), 10) };
        let first = node.publish(&room, publication(1), &short).await.unwrap();
        chat_testkit::eventually("the sweep to prune the key", SWEEP_DEADLINE, || async {
            (broker.stats().idempotency_keys == 0).then_some(())
        })
        .await;
        assert_eq!(broker.stats().messages, 1, "the message outlives its key");
        let again = node.publish(&room, publication(2), &short).await.unwrap();
        assert_eq!((again.seq, again.duplicate), (first.seq + 1, false), "a pruned key is new again");
    }

    #[tokio::test]
    async fn unused_rooms_are_dropped_and_come_back_under_another_epoch() {
        let broker = MemoryBroker::new();
        let node = node(&broker).await;
        let (room, never) = (name("r"), name("never"));
        let fresh = node.subscribe(&room).await.unwrap().epoch;
        let short = PublishOpts { history_ttl: Duration::from_secs(1), ..opts(Some("k"), 10) };
        let p = node.publish(&room, publication(1), &short).await.unwrap();
        assert_eq!(p.epoch, fresh, "created under the fresh epoch");
        node.unsubscribe(&room).await.unwrap();
        assert_eq!(broker.stats().rooms, 1, "its message and key keep it");
        // The message has expired (1 s); the key has not (5 min): the room stays.
        let now = Instant::now();
        broker.hub.sweep(now + Duration::from_secs(2));
        let stats = broker.stats();
        assert_eq!((stats.rooms, stats.messages, stats.idempotency_keys), (1, 0, 1));
        assert_eq!(stats.retained_bytes, ROOM_OVERHEAD + 1 + KEY_OVERHEAD + 2);
        broker.hub.sweep(now + Duration::from_secs(301));
        assert_eq!(broker.stats(), MemoryStats::default(), "nothing retained, nobody there: dropped");
        let back = node.subscribe(&room).await.unwrap();
        assert_eq!(back.seq, 0);
        assert_ne!(back.epoch, fresh, "seq 1 of the old epoch must not match anything new");
        let other = node.subscribe(&never).await.unwrap();
        assert_ne!(other.epoch, fresh, "the fresh epoch rotated with the drop");
    }

    #[tokio::test]
    async fn the_sweep_ends_with_its_broker() {
        let broker = MemoryBroker::new().sweep_every(Duration::from_millis(10));
        let node = node(&broker).await;
        assert!(broker.hub.sweeping.load(Ordering::Acquire));
        let weak = Arc::downgrade(&broker.hub);
        drop((broker, node));
        assert!(weak.upgrade().is_none(), "the sweep task holds only a weak reference");
    }

    #[tokio::test]
    async fn byte_cap_evicts_the_least_recently_active_rooms_first() {
        let broker = MemoryBroker::new();
        let node = node(&broker).await;
        let (a, b, c) = (name("a"), name("b"), name("c"));
        let message = MESSAGE_OVERHEAD + "u".len() + "1".len(); // publication(1)
        let key = KEY_OVERHEAD + "u".len() + "k".len();
        let room = ROOM_OVERHEAD + 1 + message; // one message, one-letter name
        let cap = |cap| PublishOpts { max_history_bytes: cap, ..opts(None, 10) };
        let keyed = PublishOpts { max_history_bytes: 3 * room + key, ..opts(Some("k"), 10) };
        node.publish(&a, publication(1), &keyed).await.unwrap();
        node.publish(&b, publication(1), &cap(3 * room + key)).await.unwrap();
        node.publish(&c, publication(1), &cap(3 * room + key)).await.unwrap();
        let full = MemoryStats { rooms: 3, messages: 3, retained_bytes: 3 * room + key, idempotency_keys: 1 };
        assert_eq!(broker.stats(), full, "exactly at the cap: all kept");
        node.publish(&b, publication(1), &cap(3 * room + key + message)).await.unwrap();
        assert_eq!(broker.stats().retained_bytes, 3 * room + key + message, "exactly at the cap again");
        // One byte over: `a`, the least recently active, loses its message and its key.
        node.publish(&c, publication(1), &cap(3 * room + key + 2 * message - 1)).await.unwrap();
        let stats = broker.stats();
        assert_eq!(
            stats,
            MemoryStats { rooms: 2, messages: 4, retained_bytes: 2 * room + 2 * message, idempotency_keys: 0 }
        );
        let again = node.publish(&a, publication(1), &keyed).await.unwrap();
        assert_eq!((again.seq, again.duplicate), (1, false), "the key went with its message; the room is new");
        // `b` is now the least recently active: a cap that only `c` and `a` fit in drops `b`.
        node.publish(&c, publication(1), &cap(room + 2 * message + room + key)).await.unwrap();
        assert!(lock(&broker.hub.rooms).get("b").is_none());
        assert_eq!(broker.stats().retained_bytes, room + 2 * message + room + key);
    }

    #[tokio::test]
    async fn keys_whose_messages_are_gone_are_evicted_first_one_by_one() {
        let broker = MemoryBroker::new();
        let node = node(&broker).await;
        let room = name("r");
        for k in ["k1", "k2", "k3"] {
            node.publish(&room, publication(1), &opts(Some(k), 1)).await.unwrap();
            // keeps 1 message
        }
        let full = broker.stats();
        assert_eq!((full.messages, full.idempotency_keys), (1, 3));
        let key = KEY_OVERHEAD + "u".len() + "k1".len();
        // The next publish adds a message and trims one: the same bytes. One byte under: one key.
        let tight = PublishOpts { max_history_bytes: full.retained_bytes - 1, ..opts(None, 1) };
        node.publish(&room, publication(1), &tight).await.unwrap();
        let stats = broker.stats();
        assert_eq!((stats.messages, stats.idempotency_keys), (1, 2), "only the oldest key went");
        assert_eq!(stats.retained_bytes, full.retained_bytes - key);
        assert!(!node.publish(&room, publication(1), &opts(Some("k1"), 1)).await.unwrap().duplicate);
        assert!(node.publish(&room, publication(1), &opts(Some("k2"), 1)).await.unwrap().duplicate);
    }

    #[tokio::test]
    async fn a_room_evicted_empty_comes_back_under_another_epoch() {
        let broker = MemoryBroker::new();
        let node = node(&broker).await;
        let (old, new) = (name("old"), name("new"));
        let first = node.publish(&old, publication(1), &opts(None, 10)).await.unwrap();
        node.publish(&new, publication(1), &PublishOpts { max_history_bytes: 1, ..opts(None, 10) }).await.unwrap();
        assert_eq!(broker.stats(), MemoryStats::default(), "a cap of one byte keeps nothing");
        let back = node.subscribe(&old).await.unwrap();
        assert_eq!(back.seq, 0);
        assert_ne!(back.epoch, first.epoch);
    }

    #[tokio::test]
    async fn a_subscribed_room_keeps_its_epoch_and_seq_through_eviction() {
        let broker = MemoryBroker::new();
        let node = node(&broker).await;
        let (kept, other) = (name("kept"), name("other"));
        let at = node.subscribe(&kept).await.unwrap();
        for n in 1..=3 {
            node.publish(&kept, publication(n), &opts(None, 10)).await.unwrap();
        }
        node.publish(&other, publication(1), &PublishOpts { max_history_bytes: 1, ..opts(None, 10) }).await.unwrap();
        let page = node.history(&kept, HistoryQuery { before: None, after: Some(1), limit: 10 }).await.unwrap();
        assert_eq!((page.epoch, page.latest, page.messages.len()), (at.epoch, 3, 0), "a `since` of 1 cannot recover");
    }
}
