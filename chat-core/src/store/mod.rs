//! The `Store` boundary: durable conversation history, next to the [`Broker`](crate::Broker).
//!
//! Ordering is the broker's job, keeping is the store's. The broker assigns every stored
//! message its `seq` within the room's epoch and fans it out; with a store configured, the
//! engine then appends it here (many sessions' messages in one commit) and answers `sent` only
//! once it is committed. History and recovery read recent pages from the broker and older ones
//! from the store. When the broker has lost a room's state (Redis flushed or restarted empty,
//! a process with the memory broker restarted), it asks the store where the room stood
//! ([`Store::latest`]) and goes on from there, in the same epoch.
//!
//! Implementations: [`MemoryStore`](memory::MemoryStore) (this process's memory: for tests, and
//! for what must outlive a broker but not the process), `chat-store-sqlite` (an embedded
//! database file, the example server's default) and `chat-store-postgres` (one database
//! shared by every node of a cluster). The conformance suite in `chat-testkit` holds every
//! implementation to the contract below.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::broker::{Epoch, HistoryQuery, Position};
use crate::protocol::RoomName;

pub mod memory;

/// What can go wrong talking to a store.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store cannot be reached or did not answer in time; nothing was committed, or the
    /// caller cannot know. Becomes `unavailable`.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Anything else (a bug, a corrupt database, a schema from a newer version). Becomes
    /// `internal`.
    #[error("store error: {0}")]
    Internal(String),
}

/// One stored message as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The room.
    pub room: RoomName,
    /// The epoch its seq belongs to.
    pub epoch: Epoch,
    /// Its position in the room within the epoch, from 1.
    pub seq: u64,
    /// The sender's user name.
    pub from: Arc<str>,
    /// Milliseconds since the Unix epoch, set by the server that accepted it.
    pub ts: u64,
    /// The body's JSON text; `None` once erased (a tombstone: it keeps its place and seq).
    pub body: Option<Bytes>,
    /// The idempotency key it was sent with, if any (scoped to sender and room). Kept so that
    /// a broker that lost its state can be told which recent keys it had seen (see
    /// [`Origin::keys`](crate::broker::Origin::keys)): a resend after the loss still gets the
    /// original seq. Not part of a record's identity: a resend is the same message.
    pub key: Option<Arc<str>>,
}

/// How much of a room the store keeps: messages older than `max_age` go, and all but the
/// newest `max_count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Messages older than this (by their `ts`) are deleted.
    pub max_age: Duration,
    /// At most this many messages are kept per room (the newest).
    pub max_count: u64,
}

impl Default for Retention {
    /// 24 hours and 1,000 messages, the broker's defaults.
    fn default() -> Self {
        Retention { max_age: Duration::from_secs(24 * 3600), max_count: 1_000 }
    }
}

/// The retention of each room, as the host decides it (see [`Store::retain`]).
pub type RetentionPolicy = dyn Fn(&RoomName) -> Retention + Send + Sync;

/// Durable message storage, shared by every node that uses it.
///
/// The contract (checked by `chat_testkit::store_conformance!`):
///
/// * [`append`](Store::append) commits a batch in one transaction. A record whose (room,
///   epoch, seq) is already stored with the same sender and body is skipped (a resend, or two
///   nodes storing the same message; its `ts` may differ): appends are idempotent. So is one
///   whose stored message was erased since, from the same sender: it stays erased. One stored
///   with another sender or body is a conflict (the broker handed the same seq out twice, as
///   after it came back older): it is not stored, the stored one stays, and `append` returns
///   its position in the batch; the rest of the batch is committed. Within one batch, the
///   first of two records under one seq is the one stored. A record that retention already
///   deleted is skipped and stays deleted (a late resend must not reopen a hole below what is
///   kept). An error commits nothing.
/// * [`page`](Store::page) answers like `history` (PROTOCOL.md §4, bounds exclusive), within
///   one epoch, oldest first; erased messages come back with `body: None`, and every record
///   with the idempotency key it was first stored with.
/// * [`latest`](Store::latest) is the room's current epoch and the highest seq stored in it.
///   The current epoch is the one whose first record was appended last: a late append of an
///   earlier epoch does not move it back.
/// * Retention deletes from the oldest end only (earlier epochs first, then by seq), so a
///   room's stored seqs stay contiguous, and never touches [`latest`](Store::latest): a room
///   whose messages all expired still knows where it stood. The count is per room across its
///   epochs. Age stops at the first message young enough (a message exactly `max_age` old is
///   kept), so a message stamped by a fast clock may hold older ones back until it expires.
/// * Erasing a tombstone again succeeds; [`erase_user`](Store::erase_user) counts only the
///   messages it erased now.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Commits `batch` (records of any rooms, in any order) in one transaction. Returns the
    /// positions in `batch` of the records that conflict with stored ones (see the contract
    /// above), in ascending order; usually none.
    async fn append(&self, batch: &[Record]) -> Result<Vec<usize>, StoreError>;

    /// A page of `room`'s messages in `epoch`: the oldest `query.limit` after `query.after` when
    /// it is given, else the newest `query.limit` before `query.before` (or the newest). Oldest
    /// first.
    async fn page(&self, room: &RoomName, epoch: &str, query: HistoryQuery) -> Result<Vec<Record>, StoreError>;

    /// Where `room` stands: its current epoch and the highest seq stored in it; `None` if the
    /// store never held a message of the room.
    async fn latest(&self, room: &RoomName) -> Result<Option<Position>, StoreError>;

    /// Applies retention: in every room, deletes the messages that `policy(room)` no longer
    /// keeps as of `now_ms`. Returns how many messages were deleted. Called in the background
    /// by every node; concurrent calls must be safe.
    async fn retain(&self, policy: &RetentionPolicy, now_ms: u64) -> Result<u64, StoreError>;

    /// Erases one message: its body is gone, its place stays (a tombstone). Returns false if
    /// the store does not hold it.
    async fn erase(&self, room: &RoomName, epoch: &str, seq: u64) -> Result<bool, StoreError>;

    /// Erases every message `user` sent, in every room. Returns how many were erased.
    async fn erase_user(&self, user: &str) -> Result<u64, StoreError>;
}
