//! `MemoryBroker`: the embedded default broker, all in this process.
//!
//! One mutex per room makes publish atomic: assign the next seq, check the idempotency key,
//! store, and deliver to every subscribed node before the lock is released, so every node
//! receives the room's messages in one order. Several engines attached to one `MemoryBroker`
//! behave as a cluster, which is how the multi-node logic is tested without Redis.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{
    Broker, BrokerError, BrokerNode, Delivery, DeliverySink, Epoch, HistoryPage, HistoryQuery, Message, Position,
    PresenceEntry, Publication, PublishOpts, Published, Transient,
};
use crate::protocol::RoomName;

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

#[derive(Default)]
struct Hub {
    rooms: Mutex<HashMap<RoomName, Arc<Mutex<RoomData>>>>,
    next_node: AtomicU64,
    next_epoch: AtomicU64,
    /// The epoch of every room that has never had a message: such a room can be forgotten and
    /// created again without anyone's `since` becoming wrong.
    /// A wipe replaces it, so that no epoch name is ever reused for other messages.
    fresh_epoch: Mutex<Option<Epoch>>,
}

struct Subscriber {
    node: u64,
    sink: Arc<dyn DeliverySink>,
}

struct RoomData {
    epoch: Epoch,
    seq: u64,
    ttl: Duration,
    /// Stored messages, contiguous in seq, oldest first, with the time each was stored.
    history: VecDeque<(Instant, Arc<Message>)>,
    keys: HashMap<(Arc<str>, String), u64>,
    key_order: VecDeque<(Instant, (Arc<str>, String))>,
    /// user -> (session, node) pairs
    /// Per user, their sessions and each session's node. Most users have one session in a
    /// room: the lists are allocated to fit, not with spare room.
    presence: HashMap<Arc<str>, Vec<(Box<str>, u64)>>,
    subscribers: Vec<Subscriber>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take the whole broker down with it.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Hub {
    fn new_epoch(&self) -> Epoch {
        let n = self.next_epoch.fetch_add(1, Ordering::Relaxed);
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Arc::from(format!("m{:x}{:x}", t.as_millis(), n).as_str())
    }

    fn room(&self, room: &RoomName) -> Arc<Mutex<RoomData>> {
        let mut rooms = lock(&self.rooms);
        rooms
            .entry(room.clone())
            .or_insert_with(|| {
                Arc::new(Mutex::new(RoomData {
                    epoch: lock(&self.fresh_epoch).get_or_insert_with(|| self.new_epoch()).clone(),
                    seq: 0,
                    ttl: Duration::MAX,
                    history: VecDeque::new(),
                    keys: HashMap::new(),
                    key_order: VecDeque::new(),
                    presence: HashMap::new(),
                    subscribers: Vec::new(),
                }))
            })
            .clone()
    }
}

impl Hub {
    /// Drops a room that never had a message and holds nothing any more (no subscriber, no
    /// presence), so that rooms joined once and abandoned do not accumulate. A room with
    /// messages is kept: its seq must never restart within its epoch.
    fn forget_if_unused(&self, room: &RoomName) {
        let mut rooms = lock(&self.rooms);
        let Some(data) = rooms.get(room) else { return };
        let r = lock(data);
        let unused = r.seq == 0 && r.subscribers.is_empty() && r.presence.is_empty();
        drop(r);
        if unused {
            rooms.remove(room);
        }
    }
}

impl RoomData {
    fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.history.front() {
            if now.saturating_duration_since(*at) > self.ttl {
                self.history.pop_front();
            } else {
                break;
            }
        }
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

    /// Loses every room's history, as a broker that restarted empty would: each room gets a new
    /// epoch, its seq starts again from 1, and subscribed nodes receive a reset. Presence is
    /// kept. Meant for tests of recovery and `reset`.
    pub fn wipe(&self) {
        *lock(&self.hub.fresh_epoch) = None;
        let rooms: Vec<_> = lock(&self.hub.rooms).iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for (name, room) in rooms {
            let mut r = lock(&room);
            r.epoch = self.hub.new_epoch();
            r.seq = 0;
            r.history.clear();
            r.keys.clear();
            r.key_order.clear();
            let reset = Delivery::Reset { epoch: r.epoch.clone() };
            r.deliver(&name, &reset);
        }
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn attach(&self, _node: &str, sink: Arc<dyn DeliverySink>) -> Result<Arc<dyn BrokerNode>, BrokerError> {
        let node = self.hub.next_node.fetch_add(1, Ordering::Relaxed);
        Ok(Arc::new(MemoryNode { hub: self.hub.clone(), node, sink }))
    }
}

/// One engine's attachment to a [`MemoryBroker`]. Dropping it (an engine dropped without
/// shutdown) behaves like a node that died: its subscriptions and presence vanish.
struct MemoryNode {
    hub: Arc<Hub>,
    node: u64,
    sink: Arc<dyn DeliverySink>,
}

impl MemoryNode {
    fn detach_now(&self) {
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
        let data = self.hub.room(room);
        let mut r = lock(&data);
        let now = Instant::now();
        while let Some((at, _)) = r.key_order.front() {
            if now.saturating_duration_since(*at) > opts.idempotency_window {
                if let Some((_, k)) = r.key_order.pop_front() {
                    r.keys.remove(&k);
                }
            } else {
                break;
            }
        }
        if let Some(key) = &opts.key {
            if let Some(seq) = r.keys.get(&(msg.from.clone(), key.clone())) {
                return Ok(Published { epoch: r.epoch.clone(), seq: *seq, duplicate: true });
            }
        }
        r.seq += 1;
        let seq = r.seq;
        if let Some(key) = &opts.key {
            let k = (msg.from.clone(), key.clone());
            r.keys.insert(k.clone(), seq);
            r.key_order.push_back((now, k));
        }
        let message = Arc::new(Message { seq, from: msg.from, ts: msg.ts, body: msg.body });
        r.ttl = opts.history_ttl;
        r.history.push_back((now, message.clone()));
        while r.history.len() > opts.history_size {
            r.history.pop_front();
        }
        r.expire(now);
        let epoch = r.epoch.clone();
        r.deliver(room, &Delivery::Stored { epoch: epoch.clone(), message });
        Ok(Published { epoch, seq, duplicate: false })
    }

    async fn broadcast(&self, room: &RoomName, what: Transient) -> Result<(), BrokerError> {
        let data = self.hub.room(room);
        let r = lock(&data);
        r.deliver(room, &Delivery::Transient(what));
        Ok(())
    }

    async fn subscribe(&self, room: &RoomName) -> Result<Position, BrokerError> {
        let data = self.hub.room(room);
        let mut r = lock(&data);
        if !r.subscribers.iter().any(|s| s.node == self.node) {
            r.subscribers.push(Subscriber { node: self.node, sink: self.sink.clone() });
        }
        Ok(Position { epoch: r.epoch.clone(), seq: r.seq })
    }

    async fn unsubscribe(&self, room: &RoomName) -> Result<(), BrokerError> {
        let data = self.hub.room(room);
        lock(&data).subscribers.retain(|s| s.node != self.node);
        self.hub.forget_if_unused(room);
        Ok(())
    }

    async fn history(&self, room: &RoomName, q: HistoryQuery) -> Result<HistoryPage, BrokerError> {
        let data = self.hub.room(room);
        let mut r = lock(&data);
        r.expire(Instant::now());
        let page = |messages| HistoryPage { epoch: r.epoch.clone(), latest: r.seq, messages };
        let Some(first) = r.history.front().map(|(_, m)| m.seq) else {
            return Ok(page(Vec::new()));
        };
        let last = r.seq;
        let lo = q.after.map_or(first, |a| a.saturating_add(1)).max(first);
        let hi = q.before.map_or(last, |b| b.saturating_sub(1)).min(last);
        if q.limit == 0 || lo > hi || q.before == Some(0) {
            return Ok(page(Vec::new()));
        }
        let limit = q.limit as u64;
        let (from, to) = if q.after.is_some() {
            (lo, hi.min(lo.saturating_add(limit - 1)))
        } else {
            (lo.max(hi.saturating_sub(limit - 1)), hi)
        };
        let messages =
            (from..=to).filter_map(|seq| r.history.get((seq - first) as usize)).map(|(_, m)| (**m).clone()).collect();
        Ok(page(messages))
    }

    async fn presence_add(&self, room: &RoomName, session: &str, user: &str) -> Result<bool, BrokerError> {
        let data = self.hub.room(room);
        let mut r = lock(&data);
        let sessions = match r.presence.get_mut(user) {
            Some(sessions) => sessions,
            None => r.presence.entry(Arc::from(user)).or_insert_with(|| Vec::with_capacity(1)),
        };
        if !sessions.iter().any(|(s, _)| &**s == session) {
            sessions.push((session.into(), self.node));
        }
        Ok(sessions.len() == 1)
    }

    async fn presence_remove(&self, room: &RoomName, session: &str, user: &str) -> Result<bool, BrokerError> {
        let data = self.hub.room(room);
        let mut r = lock(&data);
        let last = match r.presence.get_mut(user) {
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
        };
        drop(r);
        self.hub.forget_if_unused(room);
        Ok(last)
    }

    async fn presence(&self, room: &RoomName) -> Result<Vec<PresenceEntry>, BrokerError> {
        let data = self.hub.room(room);
        let r = lock(&data);
        let mut members: Vec<_> = r
            .presence
            .iter()
            .map(|(user, s)| PresenceEntry { user: user.to_string(), sessions: s.len() as u64 })
            .collect();
        members.sort_by(|a, b| a.user.cmp(&b.user));
        Ok(members)
    }

    async fn detach(&self) {
        self.detach_now();
    }
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
        }
    }

    fn publication(n: u64) -> Publication {
        Publication { from: Arc::from("u"), ts: n, body: Bytes::from(n.to_string()) }
    }

    #[tokio::test]
    async fn seq_history_and_keys() {
        let broker = MemoryBroker::new();
        let sink = Arc::new(Sink(Mutex::new(Vec::new())));
        let node = broker.attach("a", sink.clone()).await.unwrap();
        let room = RoomName::new("r").unwrap();
        assert_eq!(node.subscribe(&room).await.unwrap().seq, 0);
        for n in 1..=10 {
            let p = node.publish(&room, publication(n), &opts(None, 5)).await.unwrap();
            assert_eq!(p.seq, n);
        }
        assert_eq!(lock(&sink.0).len(), 10);
        let seqs = |page: HistoryPage| page.messages.iter().map(|m| m.seq).collect::<Vec<_>>();
        let q = |before, after, limit| HistoryQuery { before, after, limit };
        assert_eq!(seqs(node.history(&room, q(None, None, 3)).await.unwrap()), vec![8, 9, 10]);
        assert_eq!(seqs(node.history(&room, q(None, None, 50)).await.unwrap()), vec![6, 7, 8, 9, 10]);
        assert_eq!(seqs(node.history(&room, q(Some(9), None, 2)).await.unwrap()), vec![7, 8]);
        assert_eq!(seqs(node.history(&room, q(None, Some(6), 2)).await.unwrap()), vec![7, 8]);
        assert_eq!(seqs(node.history(&room, q(Some(9), Some(6), 50)).await.unwrap()), vec![7, 8]);
        assert_eq!(seqs(node.history(&room, q(Some(1), None, 50)).await.unwrap()), Vec::<u64>::new());
        let first = node.publish(&room, publication(11), &opts(Some("k"), 5)).await.unwrap();
        let again = node.publish(&room, publication(12), &opts(Some("k"), 5)).await.unwrap();
        assert_eq!((again.seq, again.duplicate), (first.seq, true));
        assert_eq!(lock(&sink.0).len(), 11);
        let old_epoch = first.epoch;
        broker.wipe();
        assert!(matches!(lock(&sink.0).last(), Some(Delivery::Reset { epoch }) if *epoch != old_epoch));
        assert_eq!(node.publish(&room, publication(1), &opts(Some("k"), 5)).await.unwrap().seq, 1);
    }

    #[tokio::test]
    async fn abandoned_rooms_without_messages_are_forgotten() {
        let broker = MemoryBroker::new();
        let node = broker.attach("a", Arc::new(Sink(Mutex::new(Vec::new())))).await.unwrap();
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
    async fn presence_counts_sessions_and_dies_with_its_node() {
        let broker = MemoryBroker::new();
        let sink = Arc::new(Sink(Mutex::new(Vec::new())));
        let a = broker.attach("a", sink.clone()).await.unwrap();
        let b = broker.attach("b", sink.clone()).await.unwrap();
        let room = RoomName::new("r").unwrap();
        a.subscribe(&room).await.unwrap();
        assert!(a.presence_add(&room, "s1", "alice").await.unwrap());
        assert!(!b.presence_add(&room, "s2", "alice").await.unwrap());
        assert!(b.presence_add(&room, "s3", "bob").await.unwrap());
        let p = a.presence(&room).await.unwrap();
        assert_eq!(
            p,
            vec![
                PresenceEntry { user: "alice".into(), sessions: 2 },
                PresenceEntry { user: "bob".into(), sessions: 1 }
            ]
        );
        drop(b);
        assert_eq!(a.presence(&room).await.unwrap(), vec![PresenceEntry { user: "alice".into(), sessions: 1 }]);
        assert!(matches!(lock(&sink.0).last(), Some(Delivery::Transient(Transient::MemberLeft(u))) if &**u == "bob"));
        assert!(a.presence_remove(&room, "s1", "alice").await.unwrap());
    }
}
