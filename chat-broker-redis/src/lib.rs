//! `chat-broker-redis`: the chat engine's [`Broker`](chat_core::Broker) on Redis, so that many
//! engine processes (nodes) serve one set of rooms with one order, one history and one presence.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use chat_broker_redis::RedisBroker;
//! use chat_core::Engine;
//!
//! let broker = RedisBroker::new("redis://127.0.0.1:6379/")?;
//! let engine = Engine::builder().node_id("node-1").broker(broker).build().await?;
//! // ... hand connections to `engine.serve(inbound, outbound, conn)` ...
//! engine.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # How rooms live in Redis
//!
//! Per room (every key carries the room as a hash tag, `<prefix>{room}:…`):
//!
//! * `:e` the epoch (when it began by Redis's clock, and a random part), `:s` the latest seq, `:h` the history, a stream whose
//!   entry ids are `<seq>-0`, so history reads are plain `XRANGE`/`XREVRANGE` over seq
//!   bounds with no secondary index, and Redis itself refuses an out-of-order append. Each entry
//!   holds the sender, the timestamp, the body and the time it expires. The stream is trimmed to
//!   the engine's `history_size` (`MAXLEN`), the room's keys expire `history_ttl` after the last
//!   publish, and reads drop entries past their age.
//! * `:i:<len>:<user>:<key>` an idempotency key (`seq epoch`, expiring after the window). A
//!   room that goes on from the engine's store after Redis lost it gets its recent keys back
//!   in the same script ([`Origin::keys`](chat_core::broker::Origin::keys)).
//! * `:ps` sessions (session → user) and `:pu` users (user → number of sessions) of presence.
//! * `:chan` is the room's pub/sub channel (a channel, not a key).
//!
//! Per node: `<prefix>node:{<node>}`, the node's presence registry (`<room> <session>` → user);
//! and for all nodes, `<prefix>{nodes}:live` (node → deadline) and `<prefix>{nodes}:swept`.
//!
//! **Publish** is one Lua script (`EVALSHA`) per *batch*: a node's publishes into one room that
//! arrive while the room's previous batch is in flight are stored together (up to 64), in the
//! order they arrived. The script makes sure the room has an epoch (creating one when the key
//! is missing: Redis lost or expired the history, so seq restarts at 1 under a new epoch),
//! checks each idempotency key, numbers the messages, `XADD`s them, refreshes expiries, trims
//! and `PUBLISH`es them to the room's channel as one payload, all atomically: every node
//! receives one order. The fixed part of that work is paid once per batch, so a room with many
//! publishers, or a node with many, costs Redis far less per message than one call each would
//! (docs/perf.md has the figures). Publishes go over a connection of their own, so presence
//! heartbeats, positions and history reads never queue behind them. Ephemeral messages and
//! membership events are only `PUBLISH`ed.
//!
//! **Subscriptions**: a node `SUBSCRIBE`s to the rooms that have local members, on one
//! dedicated connection, and reads the room's position once Redis confirmed the subscription.
//! Pub/sub is at-most-once, so when that connection drops the node reconnects with backoff,
//! subscribes again and reads each room's stream from the last seq it delivered: missed
//! messages go out in order, and a room whose epoch changed (Redis came back empty) first gets
//! `Delivery::Reset`. Commands run with a timeout and fail fast with `Unavailable` meanwhile.
//!
//! **Presence** is counted per session; each node keeps a deadline in a sorted set and a
//! registry of its sessions, refreshed every quarter of the presence expiry. Any node sweeps
//! nodes whose deadline passed (claiming each with a lease, so one sweeper at a time), removing
//! their sessions room by room and announcing `member_left` for users whose last session went,
//! within the expiry (30 s by default).
//!
//! # Why redis-rs
//!
//! The client is [`redis`] (redis-rs) with its tokio `ConnectionManager`: the de facto Rust
//! client, a multiplexed connection that pipelines concurrent commands (the engine's many
//! sessions publishing at once cost one round trip per batch, not per message), `EVALSHA` with
//! NOSCRIPT fallback built in, and reconnection with configurable backoff and timeouts. Its
//! pub/sub connection is deliberately a plain one (`get_async_pubsub`) driven by this crate's
//! own loop, rather than an automatically resubscribing client (redis-rs RESP3
//! resubscription, or fred's): automatic resubscription hides the moment the connection came
//! back, and that moment is exactly when the node must read the streams to fill the hole
//! pub/sub left. fred would have served as well; redis-rs was chosen for its smaller
//! dependency tree and because owning the reconnect loop removes fred's main advantage.
//!
//! # High availability
//!
//! With a `redis+sentinel://` URL (see [`RedisBroker::new`]) a node asks the sentinels where the
//! primary is when it attaches and again whenever its pub/sub connection comes back, and moves
//! its command connection there; a command that meets a read-only server (a primary demoted
//! to replica, which refuses every script of this broker, reads included) makes it ask at once. Replication is asynchronous, so a failover can lose
//! messages Redis acknowledged. It cannot lose them silently: each node passes the newest
//! message it delivered *or stored* in a room to every room script, and the new primary, finding
//! its history older, starts a new epoch (members get `reset`, returning clients
//! `recovered: false`). What is left is the case where the primary and every node that knew of
//! the lost messages die together.
//!
//! # Redis Cluster
//!
//! With a `redis+cluster://host:port[,host:port…]` URL the broker runs on a Redis Cluster (7.0
//! or later). Every key of a room, and its channel, carries the room as hash tag, so a room
//! lives on one shard: its scripts run there, atomically, as on one server, and rooms spread
//! over the shards. Live delivery uses sharded pub/sub (`SPUBLISH`, `SSUBSCRIBE`): a room's
//! messages go only to the nodes of the cluster's shard that owns it, not over the whole
//! cluster bus. Presence lives with its room; each node's registry has a slot of its own; only
//! the small sorted sets of node deadlines share one. Commands follow `MOVED` and `ASK`, and
//! the cluster's map is read again after a failover or a slot's move (redis-rs's
//! `ClusterConnection`); a shard's subscription connection that drops, or a room's channel
//! that the server unsubscribes (its slot moved away), makes the node subscribe again where
//! the slot now lives and catch up from the room's stream, as after any pub/sub outage. A
//! shard's failover is the case of Sentinel's above: what its replica missed starts a new
//! epoch of the rooms of that shard, announced, never silent.
//!
//! # With a store
//!
//! An engine with a [`Store`](chat_core::Store) attaches with it as the [`Origin`](chat_core::broker::Origin).
//! Then losing Redis's state does not start a new epoch: where the prologue would start one
//! (the room's keys are missing, or Redis came back older than a node knows), it refuses with
//! `ORIGIN`, the node asks the store where the room stands, and the script runs again with
//! that: the room goes on at the store's epoch and latest seq (its stream dropped; history
//! older than what Redis holds comes from the store). A node subscribing to a room asks the
//! store first, so a Redis that came back older than the store, with no node knowing better
//! (everything restarted together), goes on from the store too. Only a store that lacks what
//! a node delivered (a message ordered but never committed, when Redis lost it) still starts
//! a new epoch, announced as without a store.
//!
//! # Limits
//!
//! A publish that times out is reported `Unavailable` although Redis may have run it (the
//! reply was lost, not the request): clients that must not duplicate send with a `key`.
//! During a slot's migration, a room whose keys are split between the two shards gets
//! `TRYAGAIN`, retried until the op timeout: its publishes may fail `Unavailable` for that
//! long. Redis 7.0 or later is needed: the scripts carry the `#!lua` shebang, so a read-only
//! replica refuses them.

#![warn(missing_docs)]

mod broker;
mod error;
mod keys;
mod node;
mod presence;
mod primary;
mod publisher;
mod reply;
mod scripts;
mod subscriber;
mod wire;

pub use broker::{RedisBroker, RedisBrokerBuilder};
pub use error::RedisBrokerError;
