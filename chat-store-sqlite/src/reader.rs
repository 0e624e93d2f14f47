//! The readers: a few read-only connections, used on tokio's blocking threads.
//!
//! In WAL mode readers see the last committed state and run beside the writer without
//! blocking it or each other. A semaphore bounds how many reads run at once (and so how many
//! connections and blocking threads they hold); connections are opened when first needed and
//! kept for the next read. Every read here is one SQL statement, so one consistent snapshot.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chat_core::broker::{HistoryQuery, Position};
use chat_core::{Record, RoomName, StoreError};
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::Semaphore;

use crate::{error, schema};

/// The pool of read connections.
pub(crate) struct Readers {
    path: Arc<PathBuf>,
    busy: Duration,
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

impl Readers {
    /// A pool of at most `size` connections to the database at `path`.
    pub(crate) fn new(path: Arc<PathBuf>, busy: Duration, size: usize) -> Arc<Readers> {
        let size = size.max(1);
        Arc::new(Readers {
            path,
            busy,
            idle: Mutex::new(Vec::with_capacity(size)),
            permits: Arc::new(Semaphore::new(size)),
        })
    }

    /// Runs `read` with a connection on a blocking thread, once a connection is free.
    pub(crate) async fn run<T, F>(self: &Arc<Self>, read: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &Path) -> Result<T, StoreError> + Send + 'static,
    {
        let permit = self.permits.clone().acquire_owned().await.map_err(|_| {
            StoreError::Unavailable(format!("sqlite store {}: the store is closed", self.path.display()))
        })?;
        let pool = self.clone();
        let task = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let conn = pool.take()?;
            let result = read(&conn, &pool.path);
            pool.idle.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
            result
        });
        task.await
            .map_err(|e| StoreError::Internal(format!("sqlite store {}: a read failed: {e}", self.path.display())))?
    }

    /// An idle connection, or a new one.
    fn take(&self) -> Result<Connection, StoreError> {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match idle {
            Some(conn) => Ok(conn),
            None => schema::open_reader(&self.path, self.busy),
        }
    }
}

/// The inclusive seq range and the direction a query reads, or `None` if it cannot match.
fn range(q: &HistoryQuery) -> Option<(i64, i64, bool)> {
    if q.limit == 0 {
        return None;
    }
    let high = match q.before {
        None => i64::MAX,
        Some(0) => return None,
        Some(before) => i64::try_from(before - 1).unwrap_or(i64::MAX),
    };
    let low = match q.after {
        None => 0,
        Some(after) => i64::try_from(after).ok().and_then(|a| a.checked_add(1))?,
    };
    (low <= high).then_some((low, high, q.after.is_some()))
}

/// The oldest messages of (room ?1, epoch ?2) with seqs in ?3..=?4, at most ?5.
const PAGE_OLDEST_FIRST: &str = "SELECT seq, sender, ts, body, idem_key FROM messages WHERE epoch_id = \
     (SELECT e.id FROM epochs e JOIN rooms r ON r.id = e.room_id WHERE r.name = ?1 AND e.epoch = ?2) \
     AND seq BETWEEN ?3 AND ?4 ORDER BY seq ASC LIMIT ?5";

/// The newest messages of (room ?1, epoch ?2) with seqs in ?3..=?4, at most ?5, newest first.
const PAGE_NEWEST_FIRST: &str = "SELECT seq, sender, ts, body, idem_key FROM messages WHERE epoch_id = \
     (SELECT e.id FROM epochs e JOIN rooms r ON r.id = e.room_id WHERE r.name = ?1 AND e.epoch = ?2) \
     AND seq BETWEEN ?3 AND ?4 ORDER BY seq DESC LIMIT ?5";

/// The page of `room` in `epoch` that `q` asks for, oldest first.
pub(crate) fn page(
    conn: &Connection,
    path: &Path,
    room: &RoomName,
    epoch: &Arc<str>,
    q: HistoryQuery,
) -> Result<Vec<Record>, StoreError> {
    let Some((low, high, oldest_first)) = range(&q) else { return Ok(Vec::new()) };
    let fail = |e| error::sql(path, "reading a page", e);
    let sql = if oldest_first { PAGE_OLDEST_FIRST } else { PAGE_NEWEST_FIRST };
    let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
    let mut statement = conn.prepare_cached(sql).map_err(fail)?;
    let mut rows = statement.query(params![room.as_str(), &**epoch, low, high, limit]).map_err(fail)?;
    let mut records = Vec::with_capacity(q.limit.min(256));
    while let Some(row) = rows.next().map_err(fail)? {
        let seq: i64 = row.get(0).map_err(fail)?;
        let from: String = row.get(1).map_err(fail)?;
        let ts: i64 = row.get(2).map_err(fail)?;
        let body: Option<Vec<u8>> = row.get(3).map_err(fail)?;
        let key: Option<String> = row.get(4).map_err(fail)?;
        records.push(Record {
            room: room.clone(),
            epoch: epoch.clone(),
            seq: u64::try_from(seq).map_err(|_| error::bad_value(path, "a seq"))?,
            from: Arc::from(from),
            ts: u64::try_from(ts).map_err(|_| error::bad_value(path, "a timestamp"))?,
            body: body.map(Bytes::from),
            key: key.map(Arc::from),
        });
    }
    if !oldest_first {
        records.reverse();
    }
    Ok(records)
}

/// Where `room` stands, if it was ever stored.
pub(crate) fn latest(conn: &Connection, path: &Path, room: &RoomName) -> Result<Option<Position>, StoreError> {
    let found: Option<(String, i64)> = conn
        .prepare_cached("SELECT e.epoch, r.seq FROM rooms r JOIN epochs e ON e.id = r.epoch_id WHERE r.name = ?1")
        .and_then(|mut s| s.query_row(params![room.as_str()], |row| Ok((row.get(0)?, row.get(1)?))).optional())
        .map_err(|e| error::sql(path, "reading a room's latest position", e))?;
    found
        .map(|(epoch, seq)| {
            let seq = u64::try_from(seq).map_err(|_| error::bad_value(path, "a room's latest seq"))?;
            Ok(Position { epoch: Arc::from(epoch), seq })
        })
        .transpose()
}

/// A room as retention sees it before deciding whether to touch it.
pub(crate) struct RoomSummary {
    /// The room's row id (rooms are walked in id order).
    pub(crate) id: i64,
    /// Its name, as stored.
    pub(crate) name: String,
    /// How many messages it holds, in all its epochs.
    pub(crate) count: u64,
    /// The `ts` of its oldest message, if it has any.
    pub(crate) oldest_ts: Option<i64>,
}

/// Up to `limit` rooms with ids above `after`, in id order.
pub(crate) fn rooms(conn: &Connection, path: &Path, after: i64, limit: usize) -> Result<Vec<RoomSummary>, StoreError> {
    let fail = |e| error::sql(path, "listing rooms for retention", e);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut statement = conn
        .prepare_cached(
            "SELECT r.id, r.name, \
               (SELECT coalesce(sum(count), 0) FROM epochs WHERE room_id = r.id), \
               (SELECT m.ts FROM messages m WHERE m.epoch_id = \
                  (SELECT min(id) FROM epochs WHERE room_id = r.id AND count > 0) ORDER BY m.seq LIMIT 1) \
             FROM rooms r WHERE r.id > ?1 ORDER BY r.id LIMIT ?2",
        )
        .map_err(fail)?;
    let rows = statement
        .query_map(params![after, limit], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?, row.get::<_, i64>(2)?, row.get::<_, Option<i64>>(3)?))
        })
        .map_err(fail)?;
    let mut rooms = Vec::new();
    for row in rows {
        let (id, name, count, oldest_ts) = row.map_err(fail)?;
        let count = u64::try_from(count).map_err(|_| error::bad_value(path, "a room's message count"))?;
        rooms.push(RoomSummary { id, name, count, oldest_ts });
    }
    Ok(rooms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(before: Option<u64>, after: Option<u64>, limit: usize) -> HistoryQuery {
        HistoryQuery { before, after, limit }
    }

    #[test]
    fn ranges() {
        assert_eq!(range(&q(None, None, 5)), Some((0, i64::MAX, false)));
        assert_eq!(range(&q(Some(10), None, 5)), Some((0, 9, false)));
        assert_eq!(range(&q(None, Some(3), 5)), Some((4, i64::MAX, true)));
        assert_eq!(range(&q(Some(10), Some(3), 5)), Some((4, 9, true)));
        assert_eq!(range(&q(Some(4), Some(3), 5)), None);
        assert_eq!(range(&q(Some(0), None, 5)), None);
        assert_eq!(range(&q(None, None, 0)), None);
        assert_eq!(range(&q(None, Some(u64::MAX), 5)), None);
        assert_eq!(range(&q(None, Some(i64::MAX as u64), 5)), None);
        assert_eq!(range(&q(Some(u64::MAX), None, 5)), Some((0, i64::MAX, false)));
    }

    /// A page is one range scan of the messages table's primary key.
    #[test]
    fn a_page_is_one_range_scan() {
        let conn = Connection::open_in_memory().expect("an in-memory database");
        for (_, sql) in schema::MIGRATIONS {
            conn.execute_batch(sql).expect("the schema");
        }
        for query in [PAGE_OLDEST_FIRST, PAGE_NEWEST_FIRST] {
            let sql = format!("EXPLAIN QUERY PLAN {query}");
            let mut statement = conn.prepare(&sql).expect("the query");
            let plan: Vec<String> = statement
                .query_map(params!["r", "e", 1, 2, 3], |row| row.get::<_, String>(3))
                .expect("the plan")
                .collect::<Result<_, _>>()
                .expect("the plan");
            let messages: Vec<&String> = plan.iter().filter(|step| step.contains("messages")).collect();
            assert_eq!(messages.len(), 1, "{plan:?}");
            assert!(
                messages[0].starts_with("SEARCH messages USING PRIMARY KEY (epoch_id=? AND seq>? AND seq<?)"),
                "{plan:?}"
            );
            assert!(!plan.iter().any(|step| step.contains("TEMP B-TREE")), "no sort: {plan:?}");
        }
    }
}
