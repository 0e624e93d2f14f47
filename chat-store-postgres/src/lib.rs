//! `chat-store-postgres`: the chat engine's [`Store`](chat_core::Store) on PostgreSQL, one
//! database shared by every node of a cluster, so conversation history outlives the broker and
//! any node.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use chat_core::Store;
//! use chat_store_postgres::PostgresStore;
//!
//! // Connecting applies the migrations (safe when several nodes start at once).
//! let store = PostgresStore::builder("postgres://chat@127.0.0.1:5432/chat")
//!     .pool_size(16)
//!     .timeout(Duration::from_secs(5))
//!     .connect()
//!     .await?;
//! let room = chat_core::RoomName::new("lobby")?;
//! if let Some(position) = store.latest(&room).await? {
//!     println!("lobby is at {} in epoch {}", position.seq, position.epoch);
//! }
//! # Ok(()) }
//! ```
//!
//! # Why tokio-postgres and deadpool-postgres
//!
//! [`tokio_postgres`] is the asynchronous driver of the rust-postgres project, maintained for a
//! decade. It speaks the binary protocol, so a batch travels as typed arrays (`text[]`,
//! `int8[]`, `bytea[]`) into prepared statements of fixed text, and it pipelines the
//! statements of a transaction: an append of any size is three round trips. It needs no
//! database at build time (sqlx's checked macros do, or a checked-in offline cache; its runtime
//! API would have served, with a larger dependency tree). [`deadpool_postgres`] is a small,
//! maintained pool for it: a statement cache per connection, timeouts for waiting, creating
//! and recycling, and a way to close a connection instead of returning it (what this store
//! does with a connection whose call timed out or broke).
//!
//! Connections are plain TCP ([`NoTls`](tokio_postgres::NoTls)): run it on a trusted network
//! or through a local proxy that adds TLS.
//!
//! # Timeouts
//!
//! Every call is bounded: by [`timeout`](PostgresStoreBuilder::timeout) on this side (waiting
//! for a pooled connection included), and each statement by `statement_timeout` on the server.
//! A database that is down, hung or too slow gives [`StoreError::Unavailable`](chat_core::StoreError)
//! within the timeout, never a hang, and the store recovers by itself when it comes back: broken
//! connections are dropped and the pool opens new ones. An append that timed out may still
//! have committed; appends are idempotent, so the engine's retry is safe.
//!
//! # Schema
//!
//! Managed by the migrations in `migrations/NNN_name.sql`, compiled in and applied by
//! [`connect`](PostgresStoreBuilder::connect) in one transaction under an advisory lock, so
//! nodes starting together are safe; `chat_schema_migrations` records them. A database whose
//! schema is newer than this code is refused ([`Error::SchemaTooNew`]).
//!
//! * `chat_messages (room, epoch, seq, sender, ts, body)`, primary key `(room, epoch, seq)`: a
//!   history page is one range scan of that index, backwards for the newest, at any table
//!   size (`tests/explain.rs` checks the plan on 200,000 rows). The body is `bytea`, the JSON
//!   text byte for byte, `NULL` once erased (a tombstone keeps its row and seq). A partial index
//!   on `sender` for rows that still have a body makes `erase_user` a lookup.
//! * `chat_epochs (room, epoch, seq, deleted_through, started)`: every epoch of a room, its
//!   highest seq ever stored, how far retention has deleted it, and its order of beginning.
//! * `chat_rooms (room, epoch, seq)`: where the room stands, what `latest` reads; one row per
//!   room, updated in the transaction of each append, never by retention, so it survives the
//!   deletion of every message. Its row doubles as the room's lock.
//!
//! There is no index on `ts`: retention is decided per room (each room's
//! [`Retention`](chat_core::Retention)), and walking a room's messages from its oldest by the
//! primary key stops at the first one to keep, so the cost is what is deleted plus one probe.
//!
//! # Appends
//!
//! One transaction per batch, five pipelined statements: lock the batch's rooms (creating new
//! ones) in bytewise order, so two nodes appending the same rooms queue instead of deadlocking;
//! insert every record with one `INSERT … SELECT FROM unnest(…) ON CONFLICT DO NOTHING`; find
//! the records that differ (sender or body) from what is now stored under their seq, the
//! conflicts `append` returns; record each epoch's highest seq, numbering an epoch the first
//! time it is seen; set each room to its epoch that began last. So a resend (even with another
//! `ts`) or two nodes storing the same delivery store it once; the current epoch is the one
//! whose first record was appended last, and a late append of an earlier epoch stores its
//! records without moving the room back. An erased message has no body to compare: a record
//! of its seq conflicts only if its sender differs. A record that retention already deleted
//! (at or below the epoch's `deleted_through`) is skipped, not reported.
//!
//! # Retention
//!
//! [`retain`](chat_core::Store::retain) walks the rooms in pages (by name), plans each page in
//! one query, and deletes in chunks of at most [`chunk`](PostgresStoreBuilder::chunk) rows, each
//! chunk a transaction that locks its rooms, raises `deleted_through` and deletes seq ranges.
//! It deletes from the oldest end only (see the `retain` module for the count and age rules),
//! so stored seqs stay contiguous; `deleted_through` makes appends skip what was deleted, so a
//! late resend cannot reappear below the kept range. Several nodes may run it at once: they
//! queue on the room locks, and each deleted row is counted once.
//!
//! # Partitioning for billions of messages (not implemented)
//!
//! One table serves until its indexes no longer fit in memory or its vacuum falls behind the
//! deletes. Then `chat_messages` is partitioned; `chat_rooms` and `chat_epochs` (a row per room
//! and epoch) stay as they are.
//!
//! **By hash of room** (`PARTITION BY HASH (room)`, e.g. 128 partitions, chosen generously since
//! changing the modulus means rewriting the table). The primary key contains the partition key,
//! so it stays `(room, epoch, seq)` and still enforces one row per seq: `ON CONFLICT` and
//! idempotency are unchanged. A page query names its room, so PostgreSQL prunes to one
//! partition (at plan time with the value, at run time under a generic plan) and does the same
//! backward range scan in an index a hundredth of the size. Appends of a batch spread over
//! partitions, each row still one index insert. Retention is unchanged (per-room range
//! deletes), but each partition is vacuumed on its own, in parallel, and a bloated one can be
//! rewritten alone. `erase_user` probes each partition's small `sender` index. This is the
//! partitioning to do first.
//!
//! **By range of time** (`PARTITION BY RANGE (ts)`, a partition per day). PostgreSQL requires
//! the partition key in every unique constraint, so the key becomes `(room, epoch, seq, ts)`:
//! uniqueness of a seq holds only within a partition. Exact resends carry the broker's `ts`, so
//! they still land in the same partition and are skipped, but the database no longer guarantees
//! it. A page query has no `ts` bound, so it must open every partition's index (a Merge Append
//! of one backward scan per partition, cheap with `LIMIT` but growing with the days kept)
//! unless the store adds one (say, the `ts` of the epoch's oldest kept message, kept in
//! `chat_epochs`). The gain is retention by age: a day older than the longest `max_age` of any
//! room is `DETACH PARTITION … CONCURRENTLY` then `DROP TABLE` — no deletes, no vacuum, no
//! bloat — after raising `deleted_through` of the epochs it held. Rooms with shorter ages and
//! retention by count still delete rows, and dropping a day keeps seqs contiguous only because
//! `ts` grows with seq within a room (it is the accepting node's clock).
//!
//! For both at once, range by time sub-partitioned by hash of room. The migration to any of
//! these is a new numbered migration that creates the partitioned table, copies in batches and
//! swaps names; it is not written yet.

#![warn(missing_docs)]

mod error;
mod migrate;
mod retain;
pub mod sql;
mod store;

pub use error::Error;
pub use store::{PostgresStore, PostgresStoreBuilder};
