//! The `Broker` boundary: what the engine needs from whatever orders, stores and distributes
//! messages between nodes. `memory` is the embedded default; `chat-broker-redis` is another.
//!
//! A [`Broker`] is shared by every node of a cluster; each engine [`attach`](Broker::attach)es
//! to it once and gets a [`BrokerNode`], its own view of the cluster. Deliveries for the rooms
//! the node subscribes to come back through the [`DeliverySink`] the engine hands over, the
//! node's own publications included: one path for every message, so every node sees one order.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::protocol::RoomName;

pub mod memory;
pub mod wire;

/// A random 64-bit number, for naming what must not collide: an epoch, a node's incarnation.
/// From the standard library's randomly keyed hasher over the clock and a counter, so no
/// `rand` crate is needed; not for secrets.
///
/// ```
/// assert_ne!(chat_core::broker::random_u64(), chat_core::broker::random_u64());
/// ```
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::UNIX_EPOCH.elapsed().unwrap_or_default().as_nanos());
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

/// What can go wrong talking to a broker.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The broker cannot be reached right now; nothing was stored. Becomes `unavailable`.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// Anything else (a bug, a corrupt store). Becomes `internal`.
    #[error("broker error: {0}")]
    Internal(String),
    /// The engine's store did not confirm that it keeps a message the broker ordered and
    /// delivered (see [`Store`](crate::Store)). Becomes `unavailable`: a resend with the same
    /// key keeps it under the same seq.
    #[error("not kept: {0}")]
    NotKept(String),
}

/// One incarnation of a room's history. It changes only when that history is lost.
pub type Epoch = Arc<str>;

/// A message as the broker stores and delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Position in the room within its epoch, from 1, without gaps.
    pub seq: u64,
    /// The sender's user name.
    pub from: Arc<str>,
    /// Milliseconds since the Unix epoch, set by the server that accepted it.
    pub ts: u64,
    /// The body's JSON text; `None` once erased (a tombstone keeps its place: PROTOCOL.md §4).
    pub body: Option<Bytes>,
}

/// A message handed to the broker, before it has a `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    /// The sender's user name.
    pub from: Arc<str>,
    /// Milliseconds since the Unix epoch.
    pub ts: u64,
    /// The body's JSON text.
    pub body: Bytes,
}

/// How a stored publication is to be treated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishOpts {
    /// The idempotency key, scoped to (sender, room).
    pub key: Option<String>,
    /// How long a key is remembered.
    pub idempotency_window: Duration,
    /// How many messages the room keeps.
    pub history_size: usize,
    /// How long a message is kept.
    pub history_ttl: Duration,
    /// The most bytes of history the broker may retain across all its rooms (the engine's
    /// `Config::max_history_bytes`). The [`MemoryBroker`](memory::MemoryBroker) evicts the
    /// oldest messages of the least recently active rooms beyond it, after every publish; the
    /// Redis and NATS brokers ignore it (Redis has its own `maxmemory`, a JetStream stream its
    /// own limits).
    pub max_history_bytes: usize,
}

/// A message a broker holds back (see [`BrokerNode::publish_held`]): released when this is
/// released or dropped, whichever comes first, so a publisher that gives up cannot block its
/// room.
///
/// ```
/// use std::sync::atomic::{AtomicBool, Ordering};
/// use std::sync::Arc;
/// use chat_core::broker::Held;
///
/// let released = Arc::new(AtomicBool::new(false));
/// let flag = released.clone();
/// let held = Held::new(move || flag.store(true, Ordering::Relaxed));
/// assert!(!released.load(Ordering::Relaxed));
/// drop(held);
/// assert!(released.load(Ordering::Relaxed));
/// ```
#[derive(Default)]
pub struct Held(Option<Box<dyn FnOnce() + Send + Sync>>);

impl Held {
    /// Runs `release` when released or dropped.
    pub fn new(release: impl FnOnce() + Send + Sync + 'static) -> Held {
        Held(Some(Box::new(release)))
    }

    /// Lets the message (and those held behind it) go out now.
    pub fn release(mut self) {
        if let Some(release) = self.0.take() {
            release();
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(release) = self.0.take() {
            release();
        }
    }
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Held" } else { "Held(released)" })
    }
}

/// Where a publication landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The room's epoch.
    pub epoch: Epoch,
    /// The message's seq (the original one when `duplicate`).
    pub seq: u64,
    /// The idempotency key had been seen: nothing new was stored or delivered.
    pub duplicate: bool,
}

/// A room's latest position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The room's epoch.
    pub epoch: Epoch,
    /// The latest seq (0 for a room with no messages in this epoch).
    pub seq: u64,
}

/// A history request; both bounds exclusive (PROTOCOL.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Only messages with `seq < before`.
    pub before: Option<u64>,
    /// Only messages with `seq > after`.
    pub after: Option<u64>,
    /// At most this many: the oldest ones when `after` is given, else the newest.
    pub limit: usize,
}

/// A page of history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    /// The epoch the seqs belong to.
    pub epoch: Epoch,
    /// The room's latest seq.
    pub latest: u64,
    /// The messages, oldest first.
    pub messages: Vec<Message>,
}

/// Something fanned out without being stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transient {
    /// An ephemeral message (no seq, may be dropped under load).
    Message(Publication),
    /// A user's first session joined the room.
    MemberJoined(Arc<str>),
    /// A user's last session left the room.
    MemberLeft(Arc<str>),
}

/// What a broker delivers to a subscribed node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// A stored message.
    Stored {
        /// Its epoch.
        epoch: Epoch,
        /// The message.
        message: Arc<Message>,
    },
    /// Something not stored.
    Transient(Transient),
    /// The room's history was lost; a new epoch starts at seq 1.
    Reset {
        /// The new epoch.
        epoch: Epoch,
    },
}

/// Something for named users wherever their sessions are, on every node of the cluster: not
/// tied to a room a node subscribes to, not stored, and not ordered with a room's deliveries
/// (see [`BrokerNode::notify`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Notice {
    /// A message was stored at `seq` in the direct conversation `room`, sent by `from`: the
    /// users' sessions that are not members of the room get an `invite` (PROTOCOL.md §4).
    Invite {
        /// The direct conversation.
        room: RoomName,
        /// Who sent the message.
        from: Arc<str>,
        /// Its seq.
        seq: u64,
    },
    /// The host removes the users from `room`: each of their sessions that is a member leaves
    /// it and gets `kicked`.
    KickFromRoom {
        /// The room.
        room: RoomName,
    },
    /// The host disconnects the users: each of their sessions is closed with `bye kicked`.
    Kick,
}

/// Receives a node's deliveries. Called synchronously by the broker, in seq order per room;
/// it must not block and must not call back into the broker.
pub trait DeliverySink: Send + Sync + 'static {
    /// One delivery for `room`.
    fn deliver(&self, room: &RoomName, delivery: Delivery);

    /// A [`Notice`] for `users`, sent by any node of the cluster (this one included). A sink
    /// that serves no sessions may ignore it: the default does.
    fn notify(&self, users: &[Arc<str>], notice: &Notice) {
        let _ = (users, notice);
    }
}

/// Where a room's history goes on from when the broker holds nothing of it: the engine's
/// [`Store`](crate::Store), when it has one. A broker that finds a room without state (never
/// used, expired, or lost: restarted empty, flushed) asks before it starts the room over:
/// with a position, the room goes on in that epoch after that seq; with `None`, under a new
/// epoch from seq 1.
///
/// A broker that does start a room over from the origin also asks for the room's
/// [`keys`](Origin::keys), and remembers them as if it had stored those messages itself, so
/// that a client resending after the loss gets the original seq, not a second one.
#[async_trait]
pub trait Origin: Send + Sync + 'static {
    /// The room's last kept position, `None` if nothing of it is kept.
    async fn origin(&self, room: &RoomName) -> Result<Option<Position>, BrokerError>;

    /// The idempotency keys still within their window among the newest messages the origin
    /// keeps of `room` in `at`'s epoch, oldest first. A bounded number: the origin decides how
    /// far back it looks (the engine's store: its newest 1,024 messages). None by default.
    async fn keys(&self, room: &RoomName, at: &Position) -> Result<Vec<KeptKey>, BrokerError> {
        let _ = (room, at);
        Ok(Vec::new())
    }
}

/// An idempotency key the [`Origin`] kept: a broker that starts a room over from the origin
/// remembers it for what is left of its window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptKey {
    /// The sender (keys are scoped to sender and room).
    pub from: Arc<str>,
    /// The key.
    pub key: Arc<str>,
    /// The seq of the message it was sent with.
    pub seq: u64,
    /// How much longer the key is to be remembered (more than zero).
    pub remaining: Duration,
}

/// A user in a room's presence, with its number of sessions there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceEntry {
    /// The user.
    pub user: String,
    /// How many of its sessions are in the room, across the cluster.
    pub sessions: u64,
}

/// A cluster-wide message broker. Shared by every node; cheap handles are fine.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Joins the cluster as node `node`. Deliveries for the rooms this node subscribes to go to
    /// `sink`. With an `origin`, a room the broker holds nothing of goes on from where the
    /// origin says it stands (see [`Origin`]).
    async fn attach(
        &self,
        node: &str,
        sink: Arc<dyn DeliverySink>,
        origin: Option<Arc<dyn Origin>>,
    ) -> Result<Arc<dyn BrokerNode>, BrokerError>;
}

/// One node's view of the broker.
#[async_trait]
pub trait BrokerNode: Send + Sync + 'static {
    /// Orders and stores a message and delivers it to every node subscribed to the room, this
    /// one included. A key seen within the window returns the original seq and delivers nothing.
    async fn publish(&self, room: &RoomName, msg: Publication, opts: &PublishOpts) -> Result<Published, BrokerError>;
    /// Like [`publish`](BrokerNode::publish), for a message the engine is about to keep in its
    /// store: a broker may hold the message back (no delivery, and neither history nor a
    /// position shows it) until the returned [`Held`] is released or dropped, and the messages
    /// after it in the room with it. The memory broker does, so that a process that dies
    /// before the commit leaves no member holding a message the store lacks (the restarted
    /// process goes on from the store, and would hand the seq out again). A broker whose
    /// deliveries start on other processes cannot (the Redis broker): by default the message
    /// goes out at once.
    async fn publish_held(
        &self,
        room: &RoomName,
        msg: Publication,
        opts: &PublishOpts,
    ) -> Result<(Published, Held), BrokerError> {
        Ok((self.publish(room, msg, opts).await?, Held::default()))
    }
    /// Hands `notice` for `users` to the [`DeliverySink`] of every node attached to the
    /// cluster, this one included, whatever rooms they subscribe to. At most once: a node that
    /// is not connected to the broker at that moment misses it.
    async fn notify(&self, users: &[Arc<str>], notice: &Notice) -> Result<(), BrokerError>;
    /// Fans out without storing.
    async fn broadcast(&self, room: &RoomName, what: Transient) -> Result<(), BrokerError>;
    /// This node starts receiving the room's deliveries. Returns the room's position, read after
    /// the subscription took effect.
    async fn subscribe(&self, room: &RoomName) -> Result<Position, BrokerError>;
    /// This node stops receiving the room's deliveries.
    async fn unsubscribe(&self, room: &RoomName) -> Result<(), BrokerError>;
    /// A page of the room's history.
    async fn history(&self, room: &RoomName, query: HistoryQuery) -> Result<HistoryPage, BrokerError>;
    /// Adds a session to the room's presence. Returns true when it is the user's first session
    /// in the room.
    async fn presence_add(&self, room: &RoomName, session: &str, user: &str) -> Result<bool, BrokerError>;
    /// Removes a session from the room's presence. Returns true when it was the user's last.
    async fn presence_remove(&self, room: &RoomName, session: &str, user: &str) -> Result<bool, BrokerError>;
    /// The room's members across the cluster.
    async fn presence(&self, room: &RoomName) -> Result<Vec<PresenceEntry>, BrokerError>;
    /// Erases the message at `seq` of the room's current epoch from what the broker holds: its
    /// body is gone, its place stays (a tombstone). Returns whether the broker held it.
    async fn erase(&self, room: &RoomName, seq: u64) -> Result<bool, BrokerError>;
    /// Erases every message `user` sent that the broker holds, in every room. Returns how many.
    async fn erase_user(&self, user: &str) -> Result<u64, BrokerError>;
    /// The node is going away: drop its subscriptions and whatever presence it still holds.
    async fn detach(&self);
}
