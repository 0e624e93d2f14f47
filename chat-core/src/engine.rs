//! The [`Engine`] a host application builds once and puts behind its transports: node id,
//! limits, broker, store, authentication, authorization and hooks, plus graceful shutdown and
//! the host's handle on live sessions (kick).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{AllowAll, AllowAnonymous, Authenticator, Authorizer};
use crate::broker::memory::MemoryBroker;
use crate::broker::{
    Broker, BrokerError, BrokerNode, DeliverySink, HistoryQuery, Notice, PresenceEntry, Publication, PublishOpts,
    Published,
};
use crate::config::Config;
use crate::heartbeat::{self, SessionEntry};
use crate::hooks::{Hooks, NoHooks};
use crate::keeper::{Keeper, KeptNode};
use crate::notices::{NodeSink, Users};
use crate::outbox::Outbox;
use crate::protocol::{ByeReason, RoomName};
use crate::rooms::Rooms;
use crate::store::{Retention, RetentionPolicy, Store};

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
    /// The host asked for something invalid (a body that is not JSON, say).
    #[error("invalid request: {0}")]
    Invalid(String),
}

/// Who a message the host publishes ([`Engine::publish`]) is from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender<'a> {
    /// A user (a bot, or a user on whose behalf the host speaks): its messages carry its name.
    User(&'a str),
    /// The system: its messages carry `"from":""`, a name no user can have (PROTOCOL.md §4).
    System,
}

impl Sender<'_> {
    /// The name messages carry: the user's (which must be a valid user name), or `""`.
    fn name(&self) -> Result<&str, EngineError> {
        match *self {
            Sender::System => Ok(""),
            Sender::User(user) if crate::auth::valid_user_name(user) => Ok(user),
            Sender::User(user) => Err(EngineError::Invalid(format!("{user:?} is not a user name"))),
        }
    }
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
        let users = Arc::new(Users::default());
        let sink: Arc<dyn DeliverySink> = Arc::new(NodeSink { rooms: rooms.clone(), users: users.clone() });
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
                users,
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
        spawn_heartbeat(Arc::downgrade(&engine.inner));
        if let Some(store) = retention {
            let fixed = engine.inner.config.retention;
            let policy = self.retention.unwrap_or_else(|| Arc::new(move |_: &RoomName| fixed));
            let every = engine.inner.config.retention_every;
            engine.inner.tracker.spawn(retain(store, policy, every, engine.inner.shutdown.clone()));
        }
        Ok(engine)
    }
}

/// Starts the engine's heartbeat task (see `heartbeat`): every tick, what is due for each
/// session happens. It ends with the engine (or its shutdown).
fn spawn_heartbeat(inner: Weak<Inner>) {
    let Some(strong) = inner.upgrade() else { return };
    let (start, period) = strong.clock.schedule();
    drop(strong);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(start, period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The gauges this engine adds to (`crate::metrics`), taken back when the task ends.
        let mut sampled = crate::metrics::Sampled::default();
        loop {
            ticks.tick().await;
            let Some(inner) = inner.upgrade() else { return };
            if inner.shutdown.is_cancelled() {
                return;
            }
            let mut gauges = crate::metrics::Gauges::default();
            let mut sessions = inner.lock_sessions();
            heartbeat::tick(&inner.clock, sessions.values_mut().inspect(|s| gauges.add(s)));
            drop(sessions);
            gauges.rooms(inner.rooms.len());
            sampled.update(gauges);
        }
    });
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
        match store.retain(&*policy, crate::time::now_ms()).await {
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

pub(crate) struct Inner {
    pub(crate) node: Arc<str>,
    pub(crate) config: Config,
    pub(crate) broker: Arc<dyn BrokerNode>,
    /// A store keeps the conversation (`broker` is then a `KeptNode`).
    pub(crate) keeps: bool,
    pub(crate) rooms: Arc<Rooms>,
    /// This node's sessions by user, for notices (`crate::notices`).
    pub(crate) users: Arc<Users>,
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

    /// Orders and stores a message (through the store when there is one), then announces it
    /// to a direct conversation's users (`invite`, PROTOCOL.md §4). The one way in for a
    /// stored message, a session's or the host's.
    pub(crate) async fn publish(
        &self,
        room: &RoomName,
        publication: Publication,
        key: Option<String>,
    ) -> Result<Published, BrokerError> {
        let c = &self.config;
        let opts = PublishOpts {
            key,
            idempotency_window: c.idempotency_window,
            history_size: c.history_size,
            history_ttl: c.history_ttl,
            max_history_bytes: c.max_history_bytes,
        };
        let from = publication.from.clone();
        let published = self.broker.publish(room, publication, &opts).await?;
        if !published.duplicate {
            if let Some(users) = crate::direct::users(room) {
                let users: Vec<Arc<str>> = users.into_iter().map(Arc::from).collect();
                let invite = Notice::Invite { room: room.clone(), from, seq: published.seq };
                // Best effort, like every notice: the message itself is stored either way, and
                // a client that joins (or comes back with `since`) gets it.
                if let Err(e) = self.broker.notify(&users, &invite).await {
                    tracing::warn!(%room, error = %e, "invite not sent");
                }
            }
        }
        Ok(published)
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
    /// [`kick_everywhere`](Self::kick_everywhere) does it on every node of the cluster.
    pub fn kick(&self, user: &str) -> usize {
        let sessions = self.inner.users.sessions(user);
        sessions.iter().filter(|(_, outbox)| outbox.close(ByeReason::Kicked, [])).count()
    }

    /// Closes every session of `user` with `bye kicked`, on every node of the cluster (through
    /// the broker). A node the broker cannot reach at that moment does not hear of it: the
    /// host's authenticator is what keeps a user out for good.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let engine = chat_core::Engine::builder().build().await.unwrap();
    /// engine.kick_everywhere("mallory").await.unwrap();
    /// # }
    /// ```
    pub async fn kick_everywhere(&self, user: &str) -> Result<(), EngineError> {
        Ok(self.inner.broker.notify(&[Arc::from(user)], &Notice::Kick).await?)
    }

    /// Removes `user` from `room`, on every node of the cluster: each of its sessions there
    /// leaves the room (as with `leave`: presence, `member_left`) and gets
    /// `{"type":"kicked","room":…}`. The user may join again unless the host's authorizer
    /// refuses it from then on.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let engine = chat_core::Engine::builder().build().await.unwrap();
    /// let room = chat_core::RoomName::new("lobby").unwrap();
    /// engine.kick_from_room(&room, "mallory").await.unwrap();
    /// # }
    /// ```
    pub async fn kick_from_room(&self, room: &RoomName, user: &str) -> Result<(), EngineError> {
        Ok(self.inner.broker.notify(&[Arc::from(user)], &Notice::KickFromRoom { room: room.clone() }).await?)
    }

    /// Publishes a message into `room` on the host's behalf, as a named user or as the system
    /// (bots, notices): stored, ordered and fanned out to the room's members on every node
    /// exactly as a client's `send` (through the store when there is one, and with `invite`s
    /// in a direct conversation). `body` is JSON text, at most `Config::max_body` bytes; it is
    /// kept compact, as a client's is. The send hook is not asked: the host is the sender.
    /// With a `key`, a second publish with the same sender and key within the idempotency
    /// window returns the first one's seq (`duplicate`).
    ///
    /// A direct conversation's messages come from its users or from the system.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use chat_core::{Engine, RoomName, Sender};
    /// let engine = Engine::builder().build().await.unwrap();
    /// let room = RoomName::new("lobby").unwrap();
    /// let first = engine.publish(&room, Sender::System, r#"{"text": "maintenance at 18:00"}"#, None).await.unwrap();
    /// assert_eq!((first.seq, first.duplicate), (1, false));
    /// let bot = engine.publish(&room, Sender::User("bot"), r#"{"text":"hello"}"#, Some("k1")).await.unwrap();
    /// let again = engine.publish(&room, Sender::User("bot"), r#"{"text":"hello"}"#, Some("k1")).await.unwrap();
    /// assert_eq!((bot.seq, again.seq, again.duplicate), (2, 2, true));
    /// # }
    /// ```
    pub async fn publish(
        &self,
        room: &RoomName,
        from: Sender<'_>,
        body: impl Into<bytes::Bytes>,
        key: Option<&str>,
    ) -> Result<Published, EngineError> {
        let body = body.into();
        let max_body = self.inner.config.max_body;
        if body.len() > max_body {
            return Err(EngineError::Invalid(format!("bodies are limited to {max_body} bytes")));
        }
        if serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err() {
            return Err(EngineError::Invalid("the body is not JSON".into()));
        }
        let from = from.name()?;
        if let Some(users) = crate::direct::users(room) {
            if !from.is_empty() && !users.contains(&from) {
                return Err(EngineError::Invalid(format!("{room} is a direct conversation of other users")));
            }
        }
        let publication =
            Publication { from: Arc::from(from), ts: crate::time::now_ms(), body: crate::protocol::compact(body) };
        Ok(self.inner.publish(room, publication, key.map(str::to_owned)).await?)
    }

    /// Sends `user` an `invite` to `room` from `from`, on every node of the cluster: each of its
    /// sessions that is not a member of the room gets
    /// `{"type":"invite","room":…,"from":…,"seq":…}`, `seq` being the room's latest. Any room,
    /// not only a direct conversation (where every stored message invites its users anyway);
    /// whether the user may join is still the authorizer's call. Best effort, as every
    /// notice: a node the broker cannot reach at that moment does not hear of it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use chat_core::{Engine, RoomName, Sender};
    /// let engine = Engine::builder().build().await.unwrap();
    /// let room = RoomName::new("release-party").unwrap();
    /// engine.invite(&room, "bob", Sender::User("alice")).await.unwrap();
    /// # }
    /// ```
    pub async fn invite(&self, room: &RoomName, user: &str, from: Sender<'_>) -> Result<(), EngineError> {
        let from = from.name()?;
        let latest = self.inner.broker.history(room, HistoryQuery { before: None, after: None, limit: 0 }).await?;
        let invite = Notice::Invite { room: room.clone(), from: Arc::from(from), seq: latest.latest };
        Ok(self.inner.broker.notify(&[Arc::from(user)], &invite).await?)
    }

    /// The members of `room` across the cluster: each user once, with its number of sessions
    /// there (what a client's `presence` gets).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let engine = chat_core::Engine::builder().build().await.unwrap();
    /// let room = chat_core::RoomName::new("lobby").unwrap();
    /// assert!(engine.members(&room).await.unwrap().is_empty());
    /// # }
    /// ```
    pub async fn members(&self, room: &RoomName) -> Result<Vec<PresenceEntry>, EngineError> {
        Ok(self.inner.broker.presence(room).await?)
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
