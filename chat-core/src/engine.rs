//! The [`Engine`] a host application builds once and puts behind its transports: node id,
//! limits, broker, store, authentication, authorization and hooks, plus graceful shutdown and
//! the host's handle on live sessions (kick).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{AllowAll, AllowAnonymous, Authenticator, Authorizer};
use crate::broker::memory::MemoryBroker;
use crate::broker::{Broker, BrokerError, BrokerNode, DeliverySink};
use crate::heartbeat;
use crate::hooks::{Hooks, NoHooks};
use crate::keeper::{Keeper, KeptNode};
use crate::outbox::Outbox;
use crate::protocol::{ByeReason, RoomName};
use crate::rooms::{Rooms, RoomsSink};
use crate::store::{Retention, RetentionPolicy, Store};

/// Every limit and timing a host may tune. The defaults are safe on the open internet.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// The largest frame's JSON bytes (`welcome.max_frame`). Default 65,536.
    pub max_frame: usize,
    /// The largest `send` body's JSON bytes. Default 16,384.
    pub max_body: usize,
    /// The server pings after this long without sending; a client silent for twice this is
    /// closed (`welcome.heartbeat_ms`). Default 25 s. One task per engine checks every
    /// session 8 times per `min(heartbeat, handshake_timeout)` (every 1.25 s by default), so
    /// each happens up to that tick late, never early: sessions keep no timer of their own
    /// (memory per idle connection). The same check closes a session whose identity
    /// expired (a token's `exp`, `welcome.exp`) with `bye expired`: at `exp` (by the system
    /// clock) at the earliest, at most a tick after it.
    pub heartbeat: Duration,
    /// How many messages the broker keeps per room: its recent window, all the history there
    /// is without a store (with one, see [`retention`](Self::retention)). Default 1,000.
    pub history_size: usize,
    /// How long the broker keeps a message. Default 24 h.
    pub history_ttl: Duration,
    /// The most messages one `history` reply holds. Default 100.
    pub history_max_limit: usize,
    /// How long an idempotency key is remembered. Default 5 min.
    pub idempotency_window: Duration,
    /// Bound on a session's queued outbound frames, replies and the batch being written
    /// included. An event that would exceed it closes the session (`bye slow_consumer`); while
    /// replies fill it the session reads no more requests. Default 4,096.
    pub outbox_frames: usize,
    /// Bound on a session's queued outbound bytes, as [`outbox_frames`](Self::outbox_frames).
    /// A recovery replay may take at most half of each bound (beyond it `join` answers
    /// `recovered: false`). Default 4 MiB.
    pub outbox_bytes: usize,
    /// Request tokens per second per session: one bucket covers every request, each costing
    /// what [`costs`](Self::costs) says (a `send` 4 by default, so 50 sends per second); a
    /// request without tokens is answered `rate_limited`. 0 turns the limit off. Default 200.
    pub rate_per_sec: u32,
    /// The bucket's size: tokens a session may spend at once above the rate. Default 400 (100
    /// sends, or joining [`max_rooms_per_session`](Self::max_rooms_per_session) rooms at once).
    pub rate_burst: u32,
    /// `rate_limited` errors in a row after which the session is closed (`protocol_error`).
    /// Default 100.
    pub rate_limit_strikes: u32,
    /// What each request costs from the session's bucket.
    pub costs: RequestCosts,
    /// `member_joined` / `member_left` events per second that one room sends from this node;
    /// beyond the rate (and [`member_events_burst`](Self::member_events_burst)) they are
    /// dropped: presence stays the source of truth. 0 turns the limit off. Default 10.
    pub member_events_per_sec: u32,
    /// Membership events one room may send at once above the rate. Default 20.
    pub member_events_burst: u32,
    /// Rooms one session may be in at once (more is `forbidden`). Default 256.
    pub max_rooms_per_session: usize,
    /// How long a closing session may take to deliver its last frames, and to leave its rooms
    /// at the broker (all at once; what is left after it, the broker cleans up). Default 5 s.
    pub close_timeout: Duration,
    /// Rooms with members on this node; a join that would add one more answers `unavailable`.
    /// One client is in at most [`max_rooms_per_session`](Self::max_rooms_per_session) rooms;
    /// this bounds them all together. Default 100,000.
    pub max_rooms: usize,
    /// Bytes of history the broker retains across all rooms (bodies, senders, keys and a fixed
    /// overhead per message, key and room: see `chat_core::broker::memory`); beyond it the
    /// oldest messages of the least recently active rooms are evicted, and a `since` into them
    /// gets `recovered: false`. Enforced by the `MemoryBroker` (the Redis broker ignores it:
    /// there Redis's memory holds history). Default 48 MiB, so that clients flooding a node
    /// with messages cannot grow it by more than that; a host that wants more history in
    /// memory raises it.
    pub max_history_bytes: usize,
    /// The handshake deadline: a connection that has not completed `hello` this long after it
    /// was accepted (`ConnInfo::accepted`; the TLS handshake and the WebSocket upgrade count)
    /// is closed with `bye timeout`, as is one silent for `2 × heartbeat` before `hello`,
    /// whichever comes first. Default 10 s. The heartbeat task checks it, never early and at
    /// most one tick late (a tick is `min(heartbeat, handshake_timeout) / 8`).
    pub handshake_timeout: Duration,
    /// With a store ([`EngineBuilder::store`]): what it keeps of each room unless
    /// [`EngineBuilder::retention`] decides per room. Default 24 h and 1,000 messages, as the
    /// broker keeps; a host that wants the conversation kept longer raises both.
    pub retention: Retention,
    /// How often each node applies the store's retention. Default 1 min.
    pub retention_every: Duration,
    /// The most messages one commit appends to the store; sessions' messages queued while a
    /// commit is in flight go together into the next one. Default 1,024.
    pub store_batch: usize,
    /// Messages that may wait for a commit (beyond them, senders wait to queue). Default 8,192.
    pub store_queue: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_frame: 65_536,
            max_body: 16_384,
            heartbeat: Duration::from_secs(25),
            history_size: 1_000,
            history_ttl: Duration::from_secs(24 * 3600),
            history_max_limit: 100,
            idempotency_window: Duration::from_secs(300),
            outbox_frames: 4_096,
            outbox_bytes: 4 << 20,
            rate_per_sec: 200,
            rate_burst: 400,
            rate_limit_strikes: 100,
            costs: RequestCosts::default(),
            member_events_per_sec: 10,
            member_events_burst: 20,
            max_rooms_per_session: 256,
            close_timeout: Duration::from_secs(5),
            max_rooms: 100_000,
            max_history_bytes: 48 << 20,
            handshake_timeout: Duration::from_secs(10),
            retention: Retention::default(),
            retention_every: Duration::from_secs(60),
            store_batch: 1_024,
            store_queue: 8_192,
        }
    }
}

/// What each request costs from a session's token bucket ([`Config::rate_per_sec`]). A cost of
/// 0 makes that request free.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RequestCosts {
    /// `send`, stored or ephemeral. Default 4.
    pub send: u32,
    /// `join`. Default 1.
    pub join: u32,
    /// `leave`. Default 1.
    pub leave: u32,
    /// `history` (up to a page of messages). Default 4.
    pub history: u32,
    /// `presence`. Default 2.
    pub presence: u32,
    /// `refresh` (the authenticator checks a token). Default 2.
    pub refresh: u32,
    /// A client's `ping` with an `id` (a bare `ping` and `pong` are free signs of life).
    /// Default 1.
    pub ping: u32,
    /// A frame answered with an error before it became a request (`bad_frame`...). Default 1.
    pub invalid: u32,
}

impl Default for RequestCosts {
    fn default() -> Self {
        RequestCosts { send: 4, join: 1, leave: 1, history: 4, presence: 2, refresh: 2, ping: 1, invalid: 1 }
    }
}

/// A snapshot of what a node holds ([`Engine::stats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Connections handed to [`Engine::serve`] and not yet ended, before `hello` included.
    pub connections: usize,
    /// Sessions past `hello`.
    pub sessions: usize,
    /// Rooms with members on this node.
    pub rooms: usize,
    /// Outbound frames queued for all sessions, or taken by their writers and not yet written.
    pub queued_frames: usize,
    /// Their bytes.
    pub queued_bytes: usize,
    /// The most bytes queued for any one session.
    pub max_queued_bytes: usize,
}

/// Errors building or running an [`Engine`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The broker refused the node.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// A setting is out of range.
    #[error("invalid configuration: {0}")]
    Config(&'static str),
}

type RoomFilter = Arc<dyn Fn(&RoomName) -> bool + Send + Sync>;
type RoomRetention = Arc<RetentionPolicy>;

/// Builds an [`Engine`]; see [`Engine::builder`].
pub struct EngineBuilder {
    node_id: Option<String>,
    config: Config,
    broker: Option<Arc<dyn Broker>>,
    store: Option<Arc<dyn Store>>,
    retention: Option<RoomRetention>,
    authenticator: Arc<dyn Authenticator>,
    authorizer: Arc<dyn Authorizer>,
    hooks: Arc<dyn Hooks>,
    member_events: RoomFilter,
}

impl fmt::Debug for EngineBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EngineBuilder")
            .field("node_id", &self.node_id)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl EngineBuilder {
    /// This node's id (`welcome.node`). Default: a random one.
    pub fn node_id(mut self, id: impl Into<String>) -> Self {
        self.node_id = Some(id.into());
        self
    }

    /// Replaces every limit at once.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Changes some limits: `.tune(|c| c.max_body = 4096)`.
    pub fn tune(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(&mut self.config);
        self
    }

    /// The broker. Default: a [`MemoryBroker`] of this engine's own.
    pub fn broker(mut self, broker: impl Broker) -> Self {
        self.broker = Some(Arc::new(broker));
        self
    }

    /// The store that keeps conversations durably (see [`Store`]): `sent` then means
    /// committed to it, history and recovery reach back as far as it keeps, and a broker that
    /// lost its state goes on from it in the same epoch. Default: none (the broker's window
    /// is all the history there is).
    pub fn store(mut self, store: impl Store) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// What the store keeps of each room. Default: [`Config::retention`] for every room.
    pub fn retention(mut self, f: impl Fn(&RoomName) -> Retention + Send + Sync + 'static) -> Self {
        self.retention = Some(Arc::new(f));
        self
    }

    /// Who clients are. Default: [`AllowAnonymous`] (trusts `hello.user`; demos only).
    pub fn authenticator(mut self, a: impl Authenticator) -> Self {
        self.authenticator = Arc::new(a);
        self
    }

    /// What they may do. Default: [`AllowAll`] (tokens' room patterns still apply).
    pub fn authorizer(mut self, a: impl Authorizer) -> Self {
        self.authorizer = Arc::new(a);
        self
    }

    /// The host's hooks. Default: none.
    pub fn hooks(mut self, h: impl Hooks) -> Self {
        self.hooks = Arc::new(h);
        self
    }

    /// Which rooms send `member_joined` / `member_left`. Default: every room.
    pub fn member_events(mut self, f: impl Fn(&RoomName) -> bool + Send + Sync + 'static) -> Self {
        self.member_events = Arc::new(f);
        self
    }

    /// Attaches to the broker and returns the running engine.
    pub async fn build(self) -> Result<Engine, EngineError> {
        let c = &self.config;
        if c.max_frame < 256 || c.max_body == 0 || c.history_max_limit == 0 || c.heartbeat.is_zero() {
            return Err(EngineError::Config("max_frame >= 256, max_body, history_max_limit and heartbeat > 0"));
        }
        if c.handshake_timeout.is_zero() {
            return Err(EngineError::Config("handshake_timeout > 0"));
        }
        let clock = heartbeat::Clock::new(&self.config);
        let node: Arc<str> = Arc::from(self.node_id.unwrap_or_else(|| format!("n{:x}", unique())).as_str());
        let broker = self.broker.unwrap_or_else(|| Arc::new(MemoryBroker::new()));
        let rooms = Arc::new(Rooms::new(self.config.history_size, self.member_events.clone(), self.config.max_rooms));
        let sink: Arc<dyn DeliverySink> = Arc::new(RoomsSink(rooms.clone()));
        let store = self.store.map(crate::metered::store);
        let keeper = store.map(|s| Keeper::new(s, self.config.store_batch, self.config.store_queue));
        let broker_node =
            broker.attach(&node, sink, keeper.as_ref().map(|k| k.origin(self.config.idempotency_window))).await?;
        let broker_node = crate::metered::node(broker_node);
        let retention = keeper.as_ref().map(|k| k.store().clone());
        let keeps = keeper.is_some();
        let broker_node: Arc<dyn BrokerNode> = match keeper {
            Some(keeper) => Arc::new(KeptNode::new(broker_node, keeper)),
            None => broker_node,
        };
        rooms.set_broker(&broker_node);
        let engine = Engine {
            inner: Arc::new(Inner {
                session_prefix: format!("{node}-{:x}", unique() & 0xffff_ffff),
                node,
                config: self.config,
                broker: broker_node,
                keeps,
                rooms,
                authenticator: self.authenticator,
                authorizer: self.authorizer,
                hooks: self.hooks,
                member_events: self.member_events,
                shutdown: CancellationToken::new(),
                tracker: TaskTracker::new(),
                sessions: Mutex::new(HashMap::new()),
                next_session: AtomicU64::new(1),
                clock,
            }),
        };
        heartbeat::spawn(Arc::downgrade(&engine.inner));
        if let Some(store) = retention {
            let fixed = engine.inner.config.retention;
            let policy = self.retention.unwrap_or_else(|| Arc::new(move |_: &RoomName| fixed));
            let every = engine.inner.config.retention_every;
            engine.inner.tracker.spawn(retain(store, policy, every, engine.inner.shutdown.clone()));
        }
        Ok(engine)
    }
}

/// Applies the store's retention every `every` until shutdown.
async fn retain(store: Arc<dyn Store>, policy: RoomRetention, every: Duration, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(every.max(Duration::from_millis(1)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        match store.retain(&*policy, crate::session::now_ms()).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(deleted = n, "store retention"),
            Err(e) => tracing::warn!(error = %e, "store retention failed; retried at the next pass"),
        }
    }
}

/// A number unlikely to repeat across processes and restarts (time and a process-local
/// counter mixed by std's randomly keyed hasher); no extra dependency for ids.
fn unique() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

/// A live session as the engine tracks it, from its first byte (so that shutdown reaches
/// it) to its end.
pub(crate) struct SessionEntry {
    /// Set by `hello`.
    pub(crate) user: Option<Arc<str>>,
    pub(crate) outbox: Arc<Outbox>,
    /// Heartbeat ticks with nothing received, and with nothing sent (see `heartbeat`).
    pub(crate) quiet_in: u16,
    pub(crate) quiet_out: u16,
    /// One deadline, in a `u32` that fits in the entry's padding (an entry stays 32 bytes:
    /// memory per idle connection). Until `hello` succeeds (`user` is `None`): the heartbeat
    /// tick from which the session is past its handshake deadline (see `heartbeat::Clock`).
    /// After it: when the identity expires, in seconds since the Unix epoch (good until 2106;
    /// later expiries are kept as `u32::MAX`); 0: never.
    pub(crate) until: u32,
}

impl SessionEntry {
    /// Sets the identity's expiry (`None`: never), once `hello` succeeded.
    pub(crate) fn set_expiry(&mut self, unix_secs: Option<u64>) {
        self.until = unix_secs.map_or(0, |t| u32::try_from(t).unwrap_or(u32::MAX).max(1));
    }
}

pub(crate) struct Inner {
    pub(crate) node: Arc<str>,
    pub(crate) config: Config,
    pub(crate) broker: Arc<dyn BrokerNode>,
    /// A store keeps the conversation (`broker` is then a `KeptNode`).
    pub(crate) keeps: bool,
    pub(crate) rooms: Arc<Rooms>,
    pub(crate) authenticator: Arc<dyn Authenticator>,
    pub(crate) authorizer: Arc<dyn Authorizer>,
    pub(crate) hooks: Arc<dyn Hooks>,
    pub(crate) member_events: RoomFilter,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tracker: TaskTracker,
    pub(crate) sessions: Mutex<HashMap<u64, SessionEntry>>,
    next_session: AtomicU64,
    session_prefix: String,
    /// The heartbeat task's ticks, in which handshake deadlines are kept.
    pub(crate) clock: heartbeat::Clock,
}

impl Inner {
    /// Registers a new session and returns its key. A session registered once shutdown has
    /// begun is closed at once (shutdown closes those it finds registered), and so is one
    /// already past its handshake deadline (`accepted`: when the transport accepted the
    /// connection; `None` is now).
    pub(crate) fn register(&self, outbox: &Arc<Outbox>, accepted: Option<Instant>) -> u64 {
        let key = self.next_session.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let c = &self.config;
        let silent = now.checked_add(c.heartbeat.saturating_mul(2));
        let deadline = match (accepted.unwrap_or(now).checked_add(c.handshake_timeout), silent) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let hello_by = deadline.map_or(self.clock.never(now), |d| self.clock.tick_at(d));
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner).insert(
            key,
            SessionEntry { user: None, outbox: outbox.clone(), quiet_in: 0, quiet_out: 0, until: hello_by },
        );
        if self.shutdown.is_cancelled() {
            outbox.close(ByeReason::Shutdown, []);
        } else if deadline.is_some_and(|d| d <= now) {
            outbox.close(ByeReason::Timeout, []);
        }
        key
    }

    pub(crate) fn lock_sessions(&self) -> MutexGuard<'_, HashMap<u64, SessionEntry>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A session's id (`welcome.session`), unique across the cluster.
    pub(crate) fn session_id(&self, key: u64) -> String {
        format!("{}-{key}", self.session_prefix)
    }
}

/// The chat engine: one per node. Cheap to clone; every clone is the same engine.
///
/// A transport hands each connection to [`Engine::serve`]; everything else — the handshake,
/// heartbeats, rooms, fan-out, limits, errors — happens here, identically for every transport.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use chat_core::Engine;
/// let engine = Engine::builder()
///     .node_id("node-1")
///     .tune(|c| c.max_body = 4096)
///     .build()
///     .await
///     .expect("the in-memory broker always attaches");
/// assert_eq!(engine.node_id(), "node-1");
/// engine.shutdown().await;
/// # }
/// ```
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine").field("node", &self.inner.node).finish_non_exhaustive()
    }
}

impl Engine {
    /// Starts building an engine.
    pub fn builder() -> EngineBuilder {
        EngineBuilder {
            node_id: None,
            config: Config::default(),
            broker: None,
            store: None,
            retention: None,
            authenticator: Arc::new(AllowAnonymous),
            authorizer: Arc::new(AllowAll),
            hooks: Arc::new(NoHooks),
            member_events: Arc::new(|_| true),
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.inner.node
    }

    /// The limits in force.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// How many sessions (connections past `hello`) are connected to this node.
    pub fn session_count(&self) -> usize {
        self.inner.sessions.lock().unwrap_or_else(PoisonError::into_inner).values().filter(|s| s.user.is_some()).count()
    }

    /// How many rooms have members on this node.
    pub fn room_count(&self) -> usize {
        self.inner.rooms.len()
    }

    /// What this node holds for its clients right now: the engine's own accounting, for
    /// operators and for tests of its bounds. It visits every session (a lock each), so call it
    /// now and then, not per message.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let engine = chat_core::Engine::builder().build().await.unwrap();
    /// let stats = engine.stats();
    /// assert_eq!((stats.connections, stats.sessions, stats.queued_bytes), (0, 0, 0));
    /// # }
    /// ```
    pub fn stats(&self) -> Stats {
        let mut stats = Stats { rooms: self.inner.rooms.len(), ..Stats::default() };
        for session in self.inner.lock_sessions().values() {
            let (frames, bytes) = session.outbox.queued();
            stats.connections += 1;
            stats.sessions += usize::from(session.user.is_some());
            stats.queued_frames += frames;
            stats.queued_bytes += bytes;
            stats.max_queued_bytes = stats.max_queued_bytes.max(bytes);
        }
        stats
    }

    /// Whether [`shutdown`](Self::shutdown) has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutdown.is_cancelled()
    }

    /// A token cancelled when shutdown begins; transports stop accepting on it.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.inner.shutdown.clone()
    }

    /// Closes every session of `user` on this node with `bye kicked`. Returns how many.
    pub fn kick(&self, user: &str) -> usize {
        let sessions = self.inner.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        sessions
            .values()
            .filter(|s| s.user.as_deref() == Some(user))
            .filter(|s| s.outbox.close(ByeReason::Kicked, []))
            .count()
    }

    /// Erases the message at `seq` of `room` (in its current epoch), cluster-wide: its body is
    /// gone from the store and from the broker, and `history` and recovery replays return it as
    /// a tombstone (`"deleted":true`, no body: PROTOCOL.md §4), so seq stays gap-free. Members
    /// that already received it keep what they have. Returns whether it was found.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let engine = chat_core::Engine::builder().build().await.unwrap();
    /// let room = chat_core::RoomName::new("lobby").unwrap();
    /// assert!(!engine.erase_message(&room, 1).await.unwrap(), "nothing was sent there yet");
    /// # }
    /// ```
    pub async fn erase_message(&self, room: &RoomName, seq: u64) -> Result<bool, EngineError> {
        Ok(self.inner.broker.erase(room, seq).await?)
    }

    /// Erases every message `user` sent, in every room, as [`erase_message`](Self::erase_message)
    /// does one. Returns how many were erased.
    pub async fn erase_user(&self, user: &str) -> Result<u64, EngineError> {
        Ok(self.inner.broker.erase_user(user).await?)
    }

    /// Graceful shutdown: new connections are refused, every session gets `bye shutdown` and
    /// closes, then the node leaves the broker. Resolves when all of that is done.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        // Sessions registered from now on close themselves (`Inner::register`).
        for session in self.inner.sessions.lock().unwrap_or_else(PoisonError::into_inner).values() {
            session.outbox.close(ByeReason::Shutdown, []);
        }
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
        self.inner.broker.detach().await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_session_entry_stays_small() {
        // One per connection: the expiry lives in padding that was already there.
        assert!(std::mem::size_of::<super::SessionEntry>() <= 32);
    }
}
