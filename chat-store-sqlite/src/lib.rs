//! `chat-store-sqlite`: the chat engine's [`Store`] in an SQLite database file, the durable
//! history of a single node (the example server's default).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//!
//! use chat_core::broker::HistoryQuery;
//! use chat_core::{Record, RoomName, Store};
//! use chat_store_sqlite::SqliteStore;
//!
//! let dir = tempfile::tempdir()?;
//! let store = SqliteStore::open(dir.path().join("history.db")).await?;
//! let room = RoomName::new("lobby")?;
//! let batch: Vec<Record> = (1..=3)
//!     .map(|seq| Record {
//!         room: room.clone(),
//!         epoch: Arc::from("e1"),
//!         seq,
//!         from: Arc::from("alice"),
//!         ts: 1_700_000_000_000 + seq,
//!         body: Some(format!(r#"{{"text":"hello {seq}"}}"#).into()),
//!         key: None,
//!     })
//!     .collect();
//! let conflicts = store.append(&batch).await?; // one transaction: committed (and synced) when it returns
//! assert!(conflicts.is_empty());
//! let page = store.page(&room, "e1", HistoryQuery { before: None, after: None, limit: 2 }).await?;
//! assert_eq!(page.iter().map(|r| r.seq).collect::<Vec<_>>(), [2, 3]);
//! assert_eq!(store.latest(&room).await?.map(|p| p.seq), Some(3));
//! store.close().await; // or drop it: queued writes still finish
//! # Ok(()) }
//! ```
//!
//! # How it works
//!
//! * **One file, WAL mode.** The database is an ordinary SQLite file (with its `-wal` and
//!   `-shm` companions while open): stop the process, open it again, everything committed is
//!   there; `sqlite3 history.db` reads it.
//! * **One writer thread** owns the writing connection and is fed by a bounded channel. Each
//!   [`append`](Store::append) is one `BEGIN IMMEDIATE` transaction; appends that arrive while
//!   one is committing are committed together in the next (group commit, one sync for all).
//! * **Readers** (pages, `latest`) use a small pool of read-only connections on tokio's
//!   blocking threads; WAL lets them run beside the writer. A page is one range scan of the
//!   messages table's primary key, (epoch, seq), bounded by the query's `limit`.
//! * **Schema** comes from the migrations in `migrations/NNN_name.sql`, applied in order at open
//!   and counted in `PRAGMA user_version`; a file from a newer version is refused.
//! * **Rooms** keep their current epoch and latest seq in a table of their own, updated in the
//!   append's transaction and never deleted, so [`latest`](Store::latest) survives retention.
//!   A message that retention deleted stays deleted if it is appended again (each epoch keeps
//!   the highest seq retention deleted), so a room's stored seqs stay contiguous.
//! * **Conflicts**: a record whose seq is stored with another sender or body is not written
//!   and its position is returned by `append`; an erased message (a tombstone) has no body, so
//!   a resend of it conflicts (and it stays erased). A record at or below what retention
//!   deleted cannot be compared with anything and is skipped.
//! * **Retention** walks the rooms 256 at a time, skips those with nothing to delete, and
//!   deletes the rest in chunks of [`SqliteOptions::chunk`] messages, one transaction each, so
//!   appends are never held up for long. `erase_user` goes in the same chunks.
//!
//! # Durability
//!
//! An `append` that returned `Ok` survives the process being killed at any moment (tested
//! with SIGKILL), whichever [`Synchronous`] mode: in WAL mode a commit has reached the
//! operating system before it returns. What differs is a power loss or kernel crash:
//!
//! * [`Synchronous::Full`] (the default) syncs the WAL on every commit: what `append` said is
//!   committed survives a power loss too, on storage that honours its flushes.
//! * [`Synchronous::Normal`] syncs only at checkpoints: the database stays consistent, but the
//!   last commits before a power loss may be lost (rolled back, never half-applied).
//!
//! Group commit is what makes `Full` affordable: the engine appends many sessions' messages in
//! one call, and calls that overlap share a sync. Measured on the project's development machine
//! (2 cores, ext4 on a virtual disk whose flush takes a fraction of a millisecond) with
//! `cargo run --release -p chat-store-sqlite --example sync_cost /work`, three runs:
//!
//! | mode     | 1-record appends/s | records/s, batches of 100 | records/s, 16 tasks at once |
//! |----------|--------------------|---------------------------|-----------------------------|
//! | `Full`   | 1,900 – 5,600      | 285,000 – 300,000         | 23,000 – 25,000             |
//! | `Normal` | 23,000 – 24,000    | 417,000 – 473,000         | 31,000 – 34,000             |
//!
//! One record per commit, `Full` is 4 to 12 times slower (a sync per commit); as the engine
//! uses it, batched or with commits overlapping, it is 1.3 to 1.6 times slower, which is why it
//! is the default. On a disk whose flush takes milliseconds (a spinning disk, some network
//! volumes) one-record commits are capped at one per flush (100 to 200 a second at 5 to 10 ms)
//! while batches share each flush; choose `Normal` there only if losing the last moments
//! before a power cut is acceptable.
//!
//! # Why rusqlite
//!
//! [`rusqlite`] is the maintained, direct binding to SQLite's C API; with the `bundled`
//! feature it compiles a known, recent SQLite into the crate, so behaviour (WAL, row values,
//! `WITHOUT ROWID`) does not depend on the host's library. `sqlx` was considered and not
//! taken: its SQLite driver is async on top of the same blocking library (a worker thread per
//! connection behind channels), which is what this crate does itself with less machinery and
//! without sqlx's runtime and macro dependencies; and the store needs full control of the one
//! writing connection (group commit, `BEGIN IMMEDIATE`, chunked deletes), which a pool hides.

#![warn(missing_docs)]

mod error;
mod reader;
mod schema;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chat_core::broker::{HistoryQuery, Position};
use chat_core::store::RetentionPolicy;
use chat_core::{Record, RoomName, Store, StoreError};
use tokio::sync::oneshot;

use crate::reader::Readers;
use crate::writer::{Command, Row, Writer};

/// How many rooms retention reads at a time.
const ROOMS_PAGE: usize = 256;

/// When SQLite syncs the database file to storage (`PRAGMA synchronous`), in WAL mode.
///
/// Both keep every commit through a process crash; see the [crate documentation](crate#durability)
/// for power loss and the measured cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// Sync the write-ahead log at every commit: a committed append survives a power loss.
    #[default]
    Full,
    /// Sync only at checkpoints: faster commits; the last ones may be lost on a power loss.
    Normal,
}

/// How to open a [`SqliteStore`]; every setting has a default.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use chat_store_sqlite::{SqliteOptions, Synchronous};
///
/// let dir = tempfile::tempdir()?;
/// let store = SqliteOptions::new().synchronous(Synchronous::Normal).readers(2).open(dir.path().join("h.db")).await?;
/// # store.close().await;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    synchronous: Synchronous,
    busy_timeout: Duration,
    readers: usize,
    queue: usize,
    chunk: usize,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            synchronous: Synchronous::default(),
            busy_timeout: Duration::from_secs(5),
            readers: 4,
            queue: 256,
            chunk: 1_000,
        }
    }
}

impl SqliteOptions {
    /// The defaults: [`Synchronous::Full`], a 5 s busy timeout, 4 readers, 256 queued writes,
    /// chunks of 1,000 messages.
    pub fn new() -> Self {
        Self::default()
    }

    /// When commits are synced to storage (default [`Synchronous::Full`]).
    pub fn synchronous(mut self, synchronous: Synchronous) -> Self {
        self.synchronous = synchronous;
        self
    }

    /// How long an operation waits for a lock held by another process (another program with
    /// the file open) before failing with [`StoreError::Unavailable`]. Default 5 s.
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// At most this many reads at once, each with its own connection (at least 1; default 4).
    pub fn readers(mut self, readers: usize) -> Self {
        self.readers = readers.max(1);
        self
    }

    /// At most this many writes wait for the writer thread; more wait in their callers
    /// (at least 1; default 256).
    pub fn queue(mut self, queue: usize) -> Self {
        self.queue = queue.max(1);
        self
    }

    /// Retention and `erase_user` change at most this many messages per transaction
    /// (at least 1; default 1,000).
    pub fn chunk(mut self, chunk: usize) -> Self {
        self.chunk = chunk.max(1);
        self
    }

    /// Opens the database at `path`, creating it if it does not exist and bringing its schema
    /// up to date. Fails if the file is not an SQLite database, cannot be opened for writing,
    /// or was written by a newer version.
    pub async fn open(self, path: impl AsRef<Path>) -> Result<SqliteStore, StoreError> {
        let path = Arc::new(path.as_ref().to_path_buf());
        let (writer, done) = Writer::start(path.clone(), self.synchronous, self.busy_timeout, self.queue).await?;
        let readers = Readers::new(path.clone(), self.busy_timeout, self.readers);
        Ok(SqliteStore { path, readers, writer, done: Mutex::new(Some(done)), chunk: self.chunk })
    }
}

/// A [`Store`] in an SQLite database file. See the [crate documentation](crate).
pub struct SqliteStore {
    path: Arc<PathBuf>,
    /// Dropped before the writer, so that the writer's connection closes last: the last one
    /// to close checkpoints the WAL into the database, and that belongs on the writer thread,
    /// not on the async runtime.
    readers: Arc<Readers>,
    writer: Writer,
    /// Completes when the writer thread has ended.
    done: Mutex<Option<oneshot::Receiver<()>>>,
    chunk: usize,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.path).finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens the database at `path` with the default [`SqliteOptions`].
    pub async fn open(path: impl AsRef<Path>) -> Result<SqliteStore, StoreError> {
        SqliteOptions::default().open(path).await
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Closes the store: waits for the writes already queued to finish and for the database to
    /// be closed. (Dropping the store closes it too, without waiting.)
    pub async fn close(self) {
        let done = self.done.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(self);
        if let Some(done) = done {
            let _ = done.await; // the writer thread has ended when its sender is dropped
        }
    }

    async fn write<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Command,
    ) -> Result<T, StoreError> {
        self.writer.call(command).await
    }
}

/// `now_ms - max_age`, as a `ts` bound: messages with a smaller `ts` are older than `max_age`.
fn cutoff(now_ms: u64, max_age: Duration) -> i64 {
    let age = u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX);
    i64::try_from(now_ms.saturating_sub(age)).unwrap_or(i64::MAX)
}

#[async_trait]
impl Store for SqliteStore {
    async fn append(&self, batch: &[Record]) -> Result<Vec<usize>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let rows = batch.iter().map(|r| Row::new(r, &self.path)).collect::<Result<Vec<_>, _>>()?;
        self.write(|reply| Command::Append { rows, reply }).await
    }

    async fn page(&self, room: &RoomName, epoch: &str, query: HistoryQuery) -> Result<Vec<Record>, StoreError> {
        let (room, epoch) = (room.clone(), Arc::<str>::from(epoch));
        self.readers.run(move |conn, path| reader::page(conn, path, &room, &epoch, query)).await
    }

    async fn latest(&self, room: &RoomName) -> Result<Option<Position>, StoreError> {
        let room = room.clone();
        self.readers.run(move |conn, path| reader::latest(conn, path, &room)).await
    }

    async fn retain(&self, policy: &RetentionPolicy, now_ms: u64) -> Result<u64, StoreError> {
        let mut deleted = 0;
        let mut after = 0;
        loop {
            let rooms = self.readers.run(move |conn, path| reader::rooms(conn, path, after, ROOMS_PAGE)).await?;
            for room in &rooms {
                let name = RoomName::new(&room.name).map_err(|_| {
                    StoreError::Internal(format!(
                        "sqlite store {}: room {:?} in the database is not a valid room name",
                        self.path.display(),
                        room.name
                    ))
                })?;
                let keep = policy(&name);
                let cutoff = cutoff(now_ms, keep.max_age);
                if room.count <= keep.max_count && room.oldest_ts.is_none_or(|ts| ts >= cutoff) {
                    continue;
                }
                loop {
                    let (room_id, max_count, chunk) = (room.id, keep.max_count, self.chunk);
                    let step = self.write(|reply| Command::Retain { room_id, cutoff, max_count, chunk, reply }).await?;
                    deleted += step.deleted;
                    if !step.more {
                        break;
                    }
                }
            }
            match rooms.last() {
                Some(last) if rooms.len() == ROOMS_PAGE => after = last.id,
                _ => return Ok(deleted),
            }
        }
    }

    async fn erase(&self, room: &RoomName, epoch: &str, seq: u64) -> Result<bool, StoreError> {
        let Ok(seq) = i64::try_from(seq) else { return Ok(false) };
        let (room, epoch) = (room.clone(), epoch.to_owned());
        self.write(|reply| Command::Erase { room, epoch, seq, reply }).await
    }

    async fn erase_user(&self, user: &str) -> Result<u64, StoreError> {
        let mut erased = 0;
        loop {
            let (user, chunk) = (user.to_owned(), self.chunk);
            let now = self.write(|reply| Command::EraseUser { user, chunk, reply }).await?;
            erased += now;
            if now < self.chunk as u64 {
                return Ok(erased);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cutoffs() {
        assert_eq!(cutoff(10_000, Duration::from_millis(5)), 9_995);
        assert_eq!(cutoff(10_000, Duration::from_secs(3600)), 0);
        assert_eq!(cutoff(u64::MAX, Duration::ZERO), i64::MAX);
        assert_eq!(cutoff(5, Duration::MAX), 0);
    }
}
