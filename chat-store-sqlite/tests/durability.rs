//! What the database file guarantees beyond the Store contract: everything is there after a
//! reopen; a schema from a newer version, a file that is not a database, damaged pages, a lock
//! held elsewhere and a record SQLite cannot hold are errors that name the file, never
//! panics, and commit nothing.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chat_core::broker::HistoryQuery;
use chat_core::{Record, Retention, RoomName, Store, StoreError};
use chat_store_sqlite::{SqliteOptions, SqliteStore};
use chat_testkit::store_conformance::{all, record, records, room};

fn newest(limit: usize) -> HistoryQuery {
    HistoryQuery { before: None, after: None, limit }
}

/// Fills a store with something of everything: two epochs, a tombstone, a retention floor.
async fn fill(store: &SqliteStore) {
    store.append(&records("kept", "e1", 1..=20)).await.expect("append");
    store.append(&records("kept", "e2", 1..=5)).await.expect("append");
    store.append(&records("other", "e1", 1..=3)).await.expect("append");
    assert!(store.erase(&room("kept"), "e2", 2).await.expect("erase"));
    let policy = |r: &RoomName| {
        let max_count = if r.as_str() == "kept" { 15 } else { 1_000 };
        Retention { max_age: Duration::from_secs(3600), max_count }
    };
    assert_eq!(store.retain(&policy, 10_000).await.expect("retain"), 10);
}

/// What [`fill`] left, read back.
async fn check_filled(store: &SqliteStore) {
    assert_eq!(all(store, "kept", "e1").await, records("kept", "e1", 11..=20));
    let mut e2 = records("kept", "e2", 1..=5);
    e2[1].body = None;
    assert_eq!(all(store, "kept", "e2").await, e2);
    assert_eq!(all(store, "other", "e1").await, records("other", "e1", 1..=3));
    let latest = store.latest(&room("kept")).await.expect("latest").expect("a position");
    assert_eq!((&*latest.epoch, latest.seq), ("e2", 5));
    store.append(&records("kept", "e1", [3])).await.expect("a resend below the retention floor");
    assert_eq!(all(store, "kept", "e1").await.len(), 10, "the retention floor was kept too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopening_finds_everything() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("reopen.db");
    let store = SqliteStore::open(&path).await.expect("open");
    fill(&store).await;
    drop(store); // without waiting for the writer thread
    let store = SqliteStore::open(&path).await.expect("reopen after a drop");
    check_filled(&store).await;
    store.close().await;
    let store = SqliteStore::open(&path).await.expect("reopen after a close");
    check_filled(&store).await;
    assert_eq!(store.path(), path);
}

/// Closing checkpoints the write-ahead log into the file and removes it. (Only when the store
/// closes the file's last connection: a store merely dropped may still hold one for a while,
/// which is why this is a test of its own.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_leaves_no_write_ahead_log() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("close.db");
    let store = SqliteStore::open(&path).await.expect("open");
    fill(&store).await;
    check_filled(&store).await;
    store.close().await;
    let wal = path.with_file_name("close.db-wal");
    assert!(!wal.exists(), "closing checkpoints the write-ahead log into the file and removes it");
    let store = SqliteStore::open(&path).await.expect("reopen after a close");
    check_filled(&store).await;
}

/// Sets the file's `user_version` with a connection of the test's own.
fn set_user_version(path: &std::path::Path, version: i64) {
    let conn = rusqlite::Connection::open(path).expect("open with rusqlite");
    conn.pragma_update(None, "user_version", version).expect("set user_version");
}

fn user_version(path: &std::path::Path) -> i64 {
    let conn = rusqlite::Connection::open(path).expect("open with rusqlite");
    conn.query_row("PRAGMA user_version", [], |row| row.get(0)).expect("user_version")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("future.db");
    let store = SqliteStore::open(&path).await.expect("open");
    store.append(&records("r", "e", 1..=3)).await.expect("append");
    store.close().await;
    let current = user_version(&path);
    assert!(current >= 1);
    set_user_version(&path, current + 1);
    match SqliteStore::open(&path).await {
        Err(StoreError::Internal(message)) => {
            assert!(message.contains("newer"), "{message}");
            assert!(message.contains(&path.display().to_string()), "names the file: {message}");
        }
        other => panic!("a schema from a newer version must be refused: {other:?}"),
    }
    assert_eq!(user_version(&path), current + 1, "the refused file is left as it was");
    set_user_version(&path, current);
    let store = SqliteStore::open(&path).await.expect("open at the version it knows");
    assert_eq!(all(&store, "r", "e").await.len(), 3);
}

/// A file written by the first schema (before idempotency keys were kept) opens, is migrated,
/// reads back its messages without keys, and keeps the keys of new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_of_the_first_schema_is_migrated() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("v1.db");
    let store = SqliteStore::open(&path).await.expect("open");
    store.close().await;
    {
        // Back to version 1, with a message in it, as the first release left its files.
        let conn = rusqlite::Connection::open(&path).expect("open with rusqlite");
        conn.execute_batch(
            "ALTER TABLE messages DROP COLUMN idem_key; PRAGMA user_version = 1; \
             INSERT INTO rooms (id, name, epoch_id, seq) VALUES (1, 'r', 1, 1); \
             INSERT INTO epochs (id, room_id, epoch, count) VALUES (1, 1, 'e', 1); \
             INSERT INTO messages (epoch_id, seq, sender, ts, body) VALUES (1, 1, 'u1', 1001, X'6f6c64');",
        )
        .expect("the first schema");
    }
    let store = SqliteStore::open(&path).await.expect("open and migrate");
    assert!(user_version(&path) >= 2);
    let old = Record { body: Some(Bytes::from_static(b"old")), key: None, ..record("r", "e", 1) };
    store.append(&records("r", "e", [2])).await.expect("append");
    assert_eq!(all(&store, "r", "e").await, vec![old, record("r", "e", 2)], "seq 2 has its key");
}

/// Pseudo-random bytes (xorshift), the same every run.
fn garbage(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_is_not_a_database_is_an_error() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("garbage.db");
    std::fs::write(&path, garbage(64 * 1024)).expect("write garbage");
    match SqliteStore::open(&path).await {
        Err(StoreError::Internal(message)) => {
            assert!(message.contains("not a usable SQLite database"), "{message}");
            assert!(message.contains(&path.display().to_string()), "names the file: {message}");
        }
        other => panic!("garbage must not open: {other:?}"),
    }
    assert_eq!(std::fs::read(&path).expect("read it back"), garbage(64 * 1024), "left as it was");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_pages_are_errors_not_panics() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("damaged.db");
    let store = SqliteStore::open(&path).await.expect("open");
    let big = |seq| Record { body: Some(Bytes::from(vec![b'x'; 600])), ..record("big", "e", seq) };
    store.append(&(1..=200).map(big).collect::<Vec<_>>()).await.expect("append");
    store.close().await;
    // Keep the header page (so it opens), damage every page after the first few.
    let mut bytes = std::fs::read(&path).expect("read the database");
    assert!(bytes.len() > 64 * 1024, "{} bytes", bytes.len());
    let damage = garbage(bytes.len() - 16 * 1024);
    bytes[16 * 1024..].copy_from_slice(&damage);
    std::fs::write(&path, &bytes).expect("write it back damaged");
    let read = async {
        let store = SqliteStore::open(&path).await?;
        store.page(&room("big"), "e", newest(500)).await?;
        store.append(&records("big", "e", [201])).await?;
        Ok::<_, StoreError>(())
    };
    match read.await {
        Err(StoreError::Internal(message)) => {
            assert!(message.contains(&path.display().to_string()), "names the file: {message}");
        }
        other => panic!("a damaged database must give an error: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_that_cannot_be_opened_is_an_error() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    for path in [dir.path().join("no-such-dir").join("x.db"), dir.path().to_path_buf()] {
        match SqliteStore::open(&path).await {
            Err(StoreError::Internal(message)) => {
                assert!(message.contains(&path.display().to_string()), "names the file: {message}");
            }
            other => panic!("{}: must not open: {other:?}", path.display()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_held_elsewhere_makes_writes_unavailable() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("locked.db");
    let store = SqliteOptions::new().busy_timeout(Duration::from_millis(100)).open(&path).await.expect("open");
    store.append(&records("r", "e", 1..=2)).await.expect("append");
    let other = rusqlite::Connection::open(&path).expect("another connection");
    other.execute_batch("BEGIN IMMEDIATE").expect("take the write lock");
    match store.append(&records("r", "e", [3])).await {
        Err(StoreError::Unavailable(message)) => {
            assert!(message.contains("locked"), "{message}");
            assert!(message.contains(&path.display().to_string()), "names the file: {message}");
        }
        other => panic!("a write while another process holds the lock: {other:?}"),
    }
    let seqs: Vec<u64> =
        store.page(&room("r"), "e", newest(10)).await.expect("reads go on").iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [1, 2]);
    other.execute_batch("ROLLBACK").expect("let go");
    store.append(&records("r", "e", [3])).await.expect("the lock is free again");
    assert_eq!(all(&store, "r", "e").await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_append_commits_nothing() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = SqliteStore::open(dir.path().join("atomic.db")).await.expect("open");
    let mut batch = records("atomic", "e", 1..=5);
    batch.insert(3, Record { seq: u64::MAX, ..record("atomic-too", "e", 1) });
    match store.append(&batch).await {
        Err(StoreError::Internal(message)) => assert!(message.contains("larger than SQLite can store"), "{message}"),
        other => panic!("a seq beyond SQLite's integers: {other:?}"),
    }
    assert_eq!(store.latest(&room("atomic")).await.expect("latest"), None, "nothing of the batch");
    assert!(all(&store, "atomic", "e").await.is_empty());
    let late = Record { ts: u64::MAX, ..record("atomic", "e", 1) };
    assert!(store.append(&[late]).await.is_err(), "a ts beyond SQLite's integers");
    assert_eq!(store.append(&records("atomic", "e", 1..=5)).await.expect("append"), Vec::<usize>::new());
    let epoch: Arc<str> = Arc::from("e");
    assert_eq!(store.latest(&room("atomic")).await.expect("latest").map(|p| (p.epoch, p.seq)), Some((epoch, 5)));
}
