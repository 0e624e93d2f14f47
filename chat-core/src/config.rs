//! [`Config`]: every limit and timing of an engine a host may tune, with defaults that are
//! safe on the open internet, and [`RequestCosts`], what each request takes from a session's
//! token bucket.

use std::time::Duration;

use crate::store::Retention;

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
    /// With a store ([`EngineBuilder::store`](crate::EngineBuilder::store)): what it keeps of each room unless
    /// [`EngineBuilder::retention`](crate::EngineBuilder::retention) decides per room. Default 24 h and 1,000 messages, as the
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
