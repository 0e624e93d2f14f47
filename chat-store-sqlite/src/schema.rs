//! Opening connections and keeping the schema: the pragmas every connection runs with, and
//! the migrations in `migrations/` applied in order, tracked by `PRAGMA user_version`.
//!
//! A migration is a file `migrations/NNN_name.sql`, listed in [`MIGRATIONS`] (a unit test
//! checks the list against the folder). `user_version` is the number of migrations applied. A
//! file whose version is higher than this build knows is refused: it was written by a newer
//! version, whose data this one could misread.

use std::path::Path;
use std::time::Duration;

use chat_core::StoreError;
use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use crate::error;
use crate::Synchronous;

/// The migrations, in order: (file name, SQL).
pub(crate) const MIGRATIONS: &[(&str, &str)] = &[
    ("001_initial.sql", include_str!("../migrations/001_initial.sql")),
    ("002_keys.sql", include_str!("../migrations/002_keys.sql")),
];

/// The write-ahead log is truncated to this size after a checkpoint (SQLite leaves it at its
/// largest otherwise).
const JOURNAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

/// Opens (creating it if needed) the database at `path` for writing: WAL mode, `synchronous`,
/// the schema migrated to the newest version.
pub(crate) fn open_writer(path: &Path, synchronous: Synchronous, busy: Duration) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(path, flags).map_err(|e| error::sql(path, "opening", e))?;
    conn.busy_timeout(busy).map_err(|e| error::sql(path, "setting the busy timeout", e))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .map_err(|e| error::sql(path, "switching to WAL mode", e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Internal(format!(
            "sqlite store {}: the database cannot use WAL mode here (journal mode stays {mode})",
            path.display()
        )));
    }
    let sync = match synchronous {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync).map_err(|e| error::sql(path, "setting synchronous", e))?;
    conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT)
        .map_err(|e| error::sql(path, "setting journal_size_limit", e))?;
    migrate(&mut conn, path)?;
    Ok(conn)
}

/// Opens a read-only connection to the database the writer opened.
pub(crate) fn open_reader(path: &Path, busy: Duration) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| error::sql(path, "opening a reader", e))?;
    conn.busy_timeout(busy).map_err(|e| error::sql(path, "setting the busy timeout", e))?;
    conn.pragma_update(None, "query_only", true).map_err(|e| error::sql(path, "making a reader read-only", e))?;
    Ok(conn)
}

/// Brings the schema to the newest version, in one transaction; refuses a newer one.
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| error::sql(path, "starting the schema migration", e))?;
    let version: i64 = tx
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(|e| error::sql(path, "reading the schema version", e))?;
    let known = MIGRATIONS.len();
    let applied = usize::try_from(version).map_err(|_| error::bad_value(path, "the schema version"))?;
    if applied > known {
        return Err(StoreError::Internal(format!(
            "sqlite store {}: the schema version is {applied}, newer than this build of chat-store-sqlite \
             knows ({known}): the file was written by a newer version; open it with that version or newer",
            path.display()
        )));
    }
    for (index, (name, sql)) in MIGRATIONS.iter().enumerate().skip(applied) {
        tx.execute_batch(sql).map_err(|e| error::sql(path, &format!("applying migration {name}"), e))?;
        let version = i64::try_from(index + 1).map_err(|_| error::bad_value(path, "the schema version"))?;
        tx.pragma_update(None, "user_version", version)
            .map_err(|e| error::sql(path, "recording the schema version", e))?;
    }
    tx.commit().map_err(|e| error::sql(path, "committing the schema migration", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file in `migrations/` is listed, in order, with its number; nothing else is.
    #[test]
    fn migrations_match_the_folder() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .expect("the migrations folder")
            .map(|entry| entry.expect("a migrations entry").file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        let listed: Vec<&str> = MIGRATIONS.iter().map(|(name, _)| *name).collect();
        assert_eq!(files, listed);
        for (index, name) in listed.iter().enumerate() {
            assert!(name.starts_with(&format!("{:03}_", index + 1)), "{name} is migration {}", index + 1);
            assert!(name.ends_with(".sql"));
        }
    }

    /// Migrating an empty database gives the newest version, and migrating again is a no-op.
    #[test]
    fn migrations_apply_once() {
        let mut conn = Connection::open_in_memory().expect("an in-memory database");
        let path = Path::new(":memory:");
        migrate(&mut conn, path).expect("migrate");
        migrate(&mut conn, path).expect("migrate again");
        let version: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0)).expect("user_version");
        assert_eq!(version, MIGRATIONS.len() as i64);
    }
}
