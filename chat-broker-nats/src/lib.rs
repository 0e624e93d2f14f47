//! `chat-broker-nats`: the chat engine's [`Broker`](chat_core::Broker) on NATS JetStream, so
//! that many engine processes (nodes) serve one set of rooms with one order, one history and
//! one presence, and a `sent` means the message is stored on a quorum of NATS servers.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use chat_broker_nats::NatsBroker;
//! use chat_core::Engine;
//!
//! let broker = NatsBroker::new("nats://127.0.0.1:4222")?;
//! let engine = Engine::builder().node_id("node-1").broker(broker).build().await?;
//! // ... hand connections to `engine.serve(inbound, outbound, conn)` ...
//! engine.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # How rooms live in JetStream
//!
//! One stream, `<prefix>-rooms`, holds every room, a subject per room
//! (`<prefix>.r.<room>`, the name escaped into one token). Each room's subject holds
//! *records*: messages, tombstones of erased messages, and the record that starts an epoch.
//! Every record carries the room's epoch and its *head*, the room's latest seq once the record
//! is stored. Retention follows the engine's `Config`: the stream keeps messages for
//! `history_ttl` and up to twice `history_size` records per room (tombstones and epoch records
//! take places too; reads keep to the newest `history_size` seqs), and remembers idempotency
//! keys for `idempotency_window` (JetStream's duplicate window, no longer than the age limit).
//!
//! **Per-room seq by optimistic concurrency.** JetStream numbers a stream, not a subject. A
//! publisher reads the room's last record (one `STREAM.MSG.GET last_by_subj`), and publishes
//! the message numbered head + 1 with `Nats-Expected-Last-Subject-Sequence` set to that
//! record's stream sequence, which the record also names (`prev`): the stream stores it only if
//! no other record reached the room meanwhile, and a publisher that lost the race reads again
//! and retries (within the op timeout). So seqs grow by exactly one in every room, identical on
//! every node, whichever node publishes, with no server-side script or lock. The alternative, a
//! counter per room in a key-value bucket, costs the same round trips plus a second write that
//! can be lost between the two.
//!
//! On a **cluster**, NATS 2.9 checks the expected sequence on the stream leader *before*
//! replicating, against what it has stored, not against what is still being replicated: two
//! publishers that read the same last record can both be stored (152 of 200 races, measured on
//! three servers). So the records decide: the first record stored after the one it names wins;
//! the other is ignored by every reader, and its publisher, which checks after each publish
//! that the first record after `prev` is its own, numbers again (see the `record` module). A
//! publish then costs four round trips on a cluster (read, check the last record, publish,
//! check), two on one server, where JetStream enforces the expected sequence exactly.
//!
//! **Idempotency** is JetStream's own: a keyed publish carries `Nats-Msg-Id` (the room, the
//! sender and the key), and a duplicate within the window is answered with the original's
//! stream sequence, whose record gives the original seq.
//!
//! **Live delivery**: the stream republishes each record once stored (`RePublish`, to
//! `<prefix>.d.<room>`), and a node subscribes (core NATS) to the rooms it has members in;
//! transient deliveries go to the same subject. Core NATS is at-most-once, so a node delivers a
//! message only when it is the next seq and the record won its race (one server says so in the
//! republished `Nats-Last-Sequence`; a cluster fills that in before replicating, so there the
//! node asks the stream, one message get per record); a later seq, a reconnection, or a check
//! every quarter of the presence expiry makes it read the missed records from the stream
//! first. A record of another epoch means the room's history was lost: members get `reset`.
//!
//! **Epochs** change only when the room's history is really gone: the stream deleted or
//! purged, or every record of the room aged out. A node that knows of a seq the stream no
//! longer holds in the same epoch (NATS came back older) starts a new epoch rather than hand the
//! seq out again. With the engine's store as the [`Origin`](chat_core::broker::Origin), a room
//! the stream lost goes on from the store's epoch and seq instead, and a client resending a
//! message it sent before the loss gets its original seq (the store's recent keys are
//! restored before the room's first new record).
//!
//! **Presence** is a key-value bucket (`<prefix>-presence`) of per-node entries that expire
//! when the node stops refreshing them (see the `presence` module's notes).
//!
//! **Notices** (invites, kicks) are core NATS messages on `<prefix>.n`, which every node
//! subscribes to: at most once, as on the other brokers. On a cluster a node that attached a
//! moment ago may miss one: a subscription reaches the other servers a moment after its own.
//!
//! # Why async-nats
//!
//! [`async_nats`] is the NATS project's own Rust client: JetStream publishing with
//! acknowledgements, message gets, pull consumers and key-value in one crate on tokio, with
//! reconnection and resubscription built in. It is built here without TLS or nkeys features.
//!
//! # Limits
//!
//! A publish that times out is reported `Unavailable` although JetStream may have stored it:
//! clients that must not duplicate send with a `key`. A room the stream lost goes on from the
//! store, with the store's recent keys restored (as records with their message ids on the
//! room's key subject, `<prefix>.k.<room>`); a node subscribing to a room asks the store first,
//! so a stream that came back older than the store (a backup restored while every node
//! restarted) goes on from the store too. History reads scan the room's records (at most twice `history_size`)
//! through an ephemeral consumer. Each subscribed room costs one message get per quarter of the
//! presence expiry (the check for lost deliveries).
//!
//! NATS Server 2.9 (tested: Debian 12's 2.9.10, with its cluster race above) or 2.12 and later
//! (the fault tests pass on 2.12.8). From 2.10.14 through 2.11 the server keeps the message id
//! of a publish it refused for its expected sequence, so a keyed resend after a lost race is
//! answered as a duplicate of nothing until the duplicate window passes: the node logs a
//! warning when it attaches to one of those.

#![warn(missing_docs)]

mod broker;
mod names;
mod node;
mod presence;
mod record;
mod rooms;

pub use broker::{NatsBroker, NatsBrokerBuilder, NatsBrokerError};
