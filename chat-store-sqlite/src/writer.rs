//! The writer: one OS thread owning the one writing connection, fed by a bounded channel.
//!
//! SQLite takes one writer at a time anyway; a thread of its own keeps its blocking calls
//! (and fsyncs) off the async runtime, and lets it commit several `append` calls that arrived
//! together in one transaction (group commit: one fsync for all of them). Every write is a
//! `BEGIN IMMEDIATE` transaction; retention and `erase_user` come here in bounded chunks, one
//! transaction each, so appends get the lock between them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chat_core::{Record, RoomName, StoreError};
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use crate::{error, schema, Synchronous};

/// At most this many `append` calls share one transaction.
const GROUP_BATCHES: usize = 64;
/// A group stops growing once it holds this many records.
const GROUP_RECORDS: usize = 8_192;

/// A record as it is written: seq and ts checked to fit SQLite's signed 64-bit integers.
pub(crate) struct Row {
    room: RoomName,
    epoch: Arc<str>,
    seq: i64,
    from: Arc<str>,
    ts: i64,
    body: Option<Bytes>,
    key: Option<Arc<str>>,
}

impl Row {
    /// `record`, or an error naming it if its seq or ts does not fit.
    pub(crate) fn new(record: &Record, path: &Path) -> Result<Row, StoreError> {
        let fits = |value: u64, what: &str| {
            i64::try_from(value).map_err(|_| {
                StoreError::Internal(format!(
                    "sqlite store {}: {}/{}/{}: {what} {value} is larger than SQLite can store (2^63 - 1)",
                    path.display(),
                    record.room,
                    record.epoch,
                    record.seq
                ))
            })
        };
        Ok(Row {
            room: record.room.clone(),
            epoch: record.epoch.clone(),
            seq: fits(record.seq, "seq")?,
            from: record.from.clone(),
            ts: fits(record.ts, "ts")?,
            body: record.body.clone(),
            key: record.key.clone(),
        })
    }
}

/// What one step of retention in one room did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RetainStep {
    /// Messages deleted.
    pub(crate) deleted: u64,
    /// Whether another step may find more to delete.
    pub(crate) more: bool,
}

/// Work for the writer thread; each carries where to send its answer.
pub(crate) enum Command {
    /// Commit these records (one `Store::append` call); answers the positions of conflicts.
    Append { rows: Vec<Row>, reply: oneshot::Sender<Result<Vec<usize>, StoreError>> },
    /// Delete up to `chunk` of the oldest messages of a room that retention no longer keeps.
    Retain {
        room_id: i64,
        cutoff: i64,
        max_count: u64,
        chunk: usize,
        reply: oneshot::Sender<Result<RetainStep, StoreError>>,
    },
    /// Erase one message's body.
    Erase { room: RoomName, epoch: String, seq: i64, reply: oneshot::Sender<Result<bool, StoreError>> },
    /// Erase up to `chunk` of a user's messages; answers how many.
    EraseUser { user: String, chunk: usize, reply: oneshot::Sender<Result<u64, StoreError>> },
}

/// The handle to the writer thread.
pub(crate) struct Writer {
    path: Arc<PathBuf>,
    commands: mpsc::Sender<Command>,
}

impl Writer {
    /// Starts the thread, which opens the database (creating and migrating it as needed) and
    /// then serves commands until every handle is dropped. Returns once the database is open,
    /// with a receiver that completes when the thread has ended and closed its connection.
    pub(crate) async fn start(
        path: Arc<PathBuf>,
        synchronous: Synchronous,
        busy: Duration,
        queue: usize,
    ) -> Result<(Writer, oneshot::Receiver<()>), StoreError> {
        let (commands, inbox) = mpsc::channel(queue.max(1));
        let (ready, opened) = oneshot::channel();
        let (ended, done) = oneshot::channel::<()>();
        let thread_path = path.clone();
        std::thread::Builder::new()
            .name("chat-store-sqlite".into())
            .spawn(move || {
                let _ended = ended; // dropped when the thread ends, however it ends
                match schema::open_writer(&thread_path, synchronous, busy) {
                    Ok(conn) => {
                        if ready.send(Ok(())).is_ok() {
                            serve(conn, &thread_path, inbox);
                        }
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                    }
                }
            })
            .map_err(|e| {
                StoreError::Internal(format!("sqlite store {}: cannot start the writer thread: {e}", path.display()))
            })?;
        opened.await.map_err(|_| error::writer_gone(&path))??;
        Ok((Writer { path, commands }, done))
    }

    /// Sends a command made with `reply` and waits for its answer.
    pub(crate) async fn call<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Command,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(command(reply)).await.map_err(|_| error::writer_gone(&self.path))?;
        answer.await.map_err(|_| error::writer_gone(&self.path))?
    }
}

/// The thread's loop: commands in order, consecutive appends grouped into one transaction.
fn serve(mut conn: Connection, path: &Path, mut inbox: mpsc::Receiver<Command>) {
    let mut next: Option<Command> = None;
    loop {
        let Some(command) = next.take().or_else(|| inbox.blocking_recv()) else { return };
        match command {
            Command::Append { rows, reply } => {
                let mut records = rows.len();
                let mut group = vec![(rows, reply)];
                while group.len() < GROUP_BATCHES && records < GROUP_RECORDS {
                    match inbox.try_recv() {
                        Ok(Command::Append { rows, reply }) => {
                            records += rows.len();
                            group.push((rows, reply));
                        }
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                append_group(&mut conn, path, group);
            }
            Command::Retain { room_id, cutoff, max_count, chunk, reply } => {
                let _ = reply.send(retain_step(&mut conn, path, room_id, cutoff, max_count, chunk));
            }
            Command::Erase { room, epoch, seq, reply } => {
                let _ = reply.send(erase(&mut conn, path, &room, &epoch, seq));
            }
            Command::EraseUser { user, chunk, reply } => {
                let _ = reply.send(erase_user(&mut conn, path, &user, chunk));
            }
        }
    }
}

type Reply = oneshot::Sender<Result<Vec<usize>, StoreError>>;

/// Commits the group's batches in one transaction. If that fails and there was more than one,
/// each is tried alone, so that one batch's failure (a body over SQLite's size limit) is not
/// every caller's.
fn append_group(conn: &mut Connection, path: &Path, group: Vec<(Vec<Row>, Reply)>) {
    let together = {
        let batches: Vec<&[Row]> = group.iter().map(|(rows, _)| rows.as_slice()).collect();
        commit_batches(conn, path, &batches)
    };
    match together {
        Err(e) if group.len() > 1 => {
            tracing::warn!(error = %e, batches = group.len(), "group commit failed; committing each batch alone");
            for (rows, reply) in group {
                let _ = reply.send(commit_batches(conn, path, &[&rows]).map(|mut c| c.pop().unwrap_or_default()));
            }
        }
        Err(e) => {
            for (_, reply) in group {
                let _ = reply.send(Err(e.clone()));
            }
        }
        Ok(conflicts) => {
            for ((_, reply), conflicts) in group.into_iter().zip(conflicts) {
                let _ = reply.send(Ok(conflicts));
            }
        }
    }
}

/// One (room, epoch) as the current transaction sees it.
struct EpochState {
    id: i64,
    room_id: i64,
    floor: i64,
    /// Messages inserted by this transaction.
    added: i64,
    /// The highest seq inserted by this transaction.
    max_seq: i64,
}

/// Writes `batches` in one transaction: each record's message unless already stored (or
/// deleted by retention), its room and epoch if new (a new epoch becomes the room's current
/// one), then each touched epoch's count and each room's latest seq. Returns, per batch, the
/// positions of the records that conflict with a stored message (see [`conflicts`]).
fn commit_batches(conn: &mut Connection, path: &Path, batches: &[&[Row]]) -> Result<Vec<Vec<usize>>, StoreError> {
    let fail = |e| error::sql(path, "appending", e);
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(fail)?;
    let mut epochs: HashMap<(RoomName, Arc<str>), EpochState> = HashMap::new();
    let mut conflicting = vec![Vec::new(); batches.len()];
    {
        let mut insert = tx
            .prepare_cached(
                "INSERT OR IGNORE INTO messages (epoch_id, seq, sender, ts, body, idem_key) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .map_err(fail)?;
        let rows =
            batches.iter().enumerate().flat_map(|(b, rows)| rows.iter().enumerate().map(move |(i, r)| (b, i, r)));
        for (batch, index, row) in rows {
            let key = (row.room.clone(), row.epoch.clone());
            let state = match epochs.entry(key) {
                std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
                std::collections::hash_map::Entry::Vacant(entry) => {
                    entry.insert(epoch_state(&tx, &row.room, &row.epoch).map_err(fail)?)
                }
            };
            if row.seq <= state.floor {
                continue; // retention deleted it: it stays deleted
            }
            let body = row.body.as_deref();
            let key = row.key.as_deref();
            let inserted = insert.execute(params![state.id, row.seq, &*row.from, row.ts, body, key]).map_err(fail)?;
            if inserted > 0 {
                state.added += 1;
                state.max_seq = state.max_seq.max(row.seq);
            } else if conflicts(&tx, state.id, row).map_err(fail)? {
                conflicting[batch].push(index);
            }
        }
    }
    for state in epochs.values().filter(|s| s.added > 0) {
        tx.prepare_cached("UPDATE epochs SET count = count + ?1 WHERE id = ?2")
            .and_then(|mut s| s.execute(params![state.added, state.id]))
            .map_err(fail)?;
        tx.prepare_cached("UPDATE rooms SET seq = max(seq, ?1) WHERE id = ?2 AND epoch_id = ?3")
            .and_then(|mut s| s.execute(params![state.max_seq, state.room_id, state.id]))
            .map_err(fail)?;
    }
    tx.commit().map_err(|e| error::sql(path, "committing an append", e))?;
    Ok(conflicting)
}

/// Whether `row`, whose seq is already stored in epoch `epoch_id`, differs from the stored
/// message in sender or body (a resend may differ in `ts`). An erased message has no body, so
/// a resend of it (with its body) conflicts, as the contract's letter has it.
fn conflicts(tx: &Transaction<'_>, epoch_id: i64, row: &Row) -> rusqlite::Result<bool> {
    let (sender, body): (String, Option<Vec<u8>>) = tx
        .prepare_cached("SELECT sender, body FROM messages WHERE epoch_id = ?1 AND seq = ?2")?
        .query_row(params![epoch_id, row.seq], |r| Ok((r.get(0)?, r.get(1)?)))?;
    // A tombstone (no body) matches a resend from the same sender: it stays erased.
    Ok(sender != *row.from || body.is_some_and(|b| Some(&b[..]) != row.body.as_deref()))
}

/// Finds (room, epoch), creating the room and the epoch as needed; a new epoch becomes the
/// room's current one.
fn epoch_state(tx: &Transaction<'_>, room: &RoomName, epoch: &str) -> rusqlite::Result<EpochState> {
    let found: Option<(i64, Option<i64>, Option<i64>)> = tx
        .prepare_cached(
            "SELECT r.id, e.id, e.floor FROM rooms r LEFT JOIN epochs e ON e.room_id = r.id AND e.epoch = ?2 \
             WHERE r.name = ?1",
        )?
        .query_row(params![room.as_str(), epoch], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .optional()?;
    let room_id = match found {
        Some((room_id, Some(id), Some(floor))) => {
            return Ok(EpochState { id, room_id, floor, added: 0, max_seq: 0 });
        }
        Some((room_id, _, _)) => room_id,
        None => {
            tx.prepare_cached("INSERT INTO rooms (name, epoch_id, seq) VALUES (?1, 0, 0)")?
                .execute(params![room.as_str()])?;
            tx.last_insert_rowid()
        }
    };
    tx.prepare_cached("INSERT INTO epochs (room_id, epoch) VALUES (?1, ?2)")?.execute(params![room_id, epoch])?;
    let id = tx.last_insert_rowid();
    tx.prepare_cached("UPDATE rooms SET epoch_id = ?1, seq = 0 WHERE id = ?2")?.execute(params![id, room_id])?;
    Ok(EpochState { id, room_id, floor: 0, added: 0, max_seq: 0 })
}

/// One step of retention in a room: in its oldest epoch that still holds messages, deletes
/// the oldest run (up to `chunk`) of messages that are beyond the newest `max_count` of the
/// room or older than `cutoff`; stops at the first message kept, so the seqs left stay
/// contiguous.
fn retain_step(
    conn: &mut Connection,
    path: &Path,
    room_id: i64,
    cutoff: i64,
    max_count: u64,
    chunk: usize,
) -> Result<RetainStep, StoreError> {
    let fail = |e| error::sql(path, "applying retention", e);
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(fail)?;
    let counts: Vec<(i64, i64)> = tx
        .prepare_cached("SELECT id, count FROM epochs WHERE room_id = ?1 AND count > 0 ORDER BY id")
        .map_err(fail)?
        .query_map(params![room_id], |row| Ok((row.get(0)?, row.get(1)?)))
        .map_err(fail)?
        .collect::<Result<_, _>>()
        .map_err(fail)?;
    let total: u64 = counts.iter().map(|(_, n)| u64::try_from(*n).unwrap_or(0)).sum();
    let excess = total.saturating_sub(max_count);
    let done = RetainStep { deleted: 0, more: false };
    let Some(&(epoch_id, _)) = counts.first() else { return Ok(done) };
    let limit = i64::try_from(chunk.max(1)).unwrap_or(i64::MAX);
    let oldest: Vec<(i64, i64)> = tx
        .prepare_cached("SELECT seq, ts FROM messages WHERE epoch_id = ?1 ORDER BY seq LIMIT ?2")
        .map_err(fail)?
        .query_map(params![epoch_id, limit], |row| Ok((row.get(0)?, row.get(1)?)))
        .map_err(fail)?
        .collect::<Result<_, _>>()
        .map_err(fail)?;
    let run = oldest.iter().zip(0u64..).take_while(|((_, ts), index)| *index < excess || *ts < cutoff).count();
    let Some(&(last, _)) = run.checked_sub(1).and_then(|i| oldest.get(i)) else { return Ok(done) };
    let deleted = tx
        .prepare_cached("DELETE FROM messages WHERE epoch_id = ?1 AND seq <= ?2")
        .and_then(|mut s| s.execute(params![epoch_id, last]))
        .map_err(fail)?;
    let deleted_i64 = i64::try_from(deleted).map_err(|_| error::bad_value(path, "a deleted count"))?;
    tx.prepare_cached("UPDATE epochs SET count = count - ?1, floor = max(floor, ?2) WHERE id = ?3")
        .and_then(|mut s| s.execute(params![deleted_i64, last, epoch_id]))
        .map_err(fail)?;
    tx.commit().map_err(fail)?;
    Ok(RetainStep { deleted: deleted as u64, more: run == oldest.len() })
}

/// Erases one message's body; whether it is stored.
fn erase(conn: &mut Connection, path: &Path, room: &RoomName, epoch: &str, seq: i64) -> Result<bool, StoreError> {
    let fail = |e| error::sql(path, "erasing a message", e);
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(fail)?;
    let changed = tx
        .prepare_cached(
            "UPDATE messages SET body = NULL WHERE epoch_id = \
             (SELECT e.id FROM epochs e JOIN rooms r ON r.id = e.room_id WHERE r.name = ?1 AND e.epoch = ?2) \
             AND seq = ?3",
        )
        .and_then(|mut s| s.execute(params![room.as_str(), epoch, seq]))
        .map_err(fail)?;
    tx.commit().map_err(fail)?;
    Ok(changed > 0)
}

/// Erases up to `chunk` of `user`'s messages that still have a body; how many it erased.
fn erase_user(conn: &mut Connection, path: &Path, user: &str, chunk: usize) -> Result<u64, StoreError> {
    let fail = |e| error::sql(path, "erasing a user's messages", e);
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(fail)?;
    let limit = i64::try_from(chunk.max(1)).unwrap_or(i64::MAX);
    let changed = tx
        .prepare_cached(
            "UPDATE messages SET body = NULL WHERE (epoch_id, seq) IN \
             (SELECT epoch_id, seq FROM messages WHERE sender = ?1 AND body IS NOT NULL LIMIT ?2)",
        )
        .and_then(|mut s| s.execute(params![user, limit]))
        .map_err(fail)?;
    tx.commit().map_err(fail)?;
    Ok(changed as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(seqs: std::ops::RangeInclusive<i64>) -> Vec<Row> {
        let room = RoomName::new("full").expect("a room name");
        seqs.map(|seq| Row {
            room: room.clone(),
            epoch: Arc::from("e"),
            seq,
            from: Arc::from("u"),
            ts: 1,
            body: Some(Bytes::from(vec![b'x'; 4096])),
            key: None,
        })
        .collect()
    }

    /// A full disk (here: the database at its `max_page_count`) fails the append with
    /// `Unavailable`, naming the file, and commits nothing of the batch; later appends that fit
    /// go through.
    #[test]
    fn a_full_disk_is_unavailable_and_commits_nothing() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("full.db");
        let mut conn = schema::open_writer(&path, Synchronous::Full, Duration::from_secs(1)).expect("open");
        let pages: i64 = conn.query_row("PRAGMA page_count", [], |row| row.get(0)).expect("page_count");
        conn.pragma_update(None, "max_page_count", pages + 20).expect("max_page_count");
        let mut stored = 0;
        let error = loop {
            assert!(stored < 1_000, "the database never filled up");
            match commit_batches(&mut conn, &path, &[&rows(stored + 1..=stored + 4)]) {
                Ok(_) => stored += 4,
                Err(e) => break e,
            }
        };
        match error {
            StoreError::Unavailable(message) => {
                assert!(message.contains("disk is full"), "{message}");
                assert!(message.contains(&path.display().to_string()), "{message}");
            }
            other => panic!("a full disk: {other:?}"),
        }
        let count: i64 = conn.query_row("SELECT count(*) FROM messages", [], |row| row.get(0)).expect("count");
        assert_eq!(count, stored, "nothing of the failed batch");
        let latest: i64 = conn.query_row("SELECT seq FROM rooms", [], |row| row.get(0)).expect("latest");
        assert_eq!(latest, stored);
        conn.pragma_update(None, "max_page_count", pages + 1_000).expect("max_page_count");
        commit_batches(&mut conn, &path, &[&rows(stored + 1..=stored + 4)]).expect("room again");
    }
}
