//! Turning SQLite's errors into [`StoreError`]s that say what went wrong and with which file.
//!
//! What may pass if the caller tries again later (the database is locked by another process,
//! the disk is full) is `Unavailable`; everything else (not a database, corrupt, unreadable,
//! read-only, a schema from the future, a bug) is `Internal`.

use std::path::Path;

use chat_core::StoreError;
use rusqlite::ErrorCode;

/// The [`StoreError`] for `err`, which happened while `doing` something with the database at
/// `path`.
pub(crate) fn sql(path: &Path, doing: &str, err: rusqlite::Error) -> StoreError {
    let file = path.display();
    let code = match &err {
        rusqlite::Error::SqliteFailure(failure, _) => Some(failure.code),
        _ => None,
    };
    match code {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::Unavailable(format!(
            "sqlite store {file}: {doing}: the database is locked by another connection or process \
             and stayed locked past the busy timeout: {err}"
        )),
        Some(ErrorCode::DiskFull) => {
            StoreError::Unavailable(format!("sqlite store {file}: {doing}: the disk is full: {err}"))
        }
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => StoreError::Internal(format!(
            "sqlite store {file}: {doing}: the file is not a usable SQLite database \
             (corrupt, or another kind of file): {err}"
        )),
        Some(ErrorCode::CannotOpen | ErrorCode::PermissionDenied) => {
            StoreError::Internal(format!("sqlite store {file}: {doing}: cannot open the file: {err}"))
        }
        Some(ErrorCode::ReadOnly) => {
            StoreError::Internal(format!("sqlite store {file}: {doing}: the database is read-only: {err}"))
        }
        Some(ErrorCode::SystemIoFailure) => {
            StoreError::Internal(format!("sqlite store {file}: {doing}: I/O error: {err}"))
        }
        _ => StoreError::Internal(format!("sqlite store {file}: {doing}: {err}")),
    }
}

/// A value read from the database that does not fit its Rust type: the file was written by
/// something else, or is damaged.
pub(crate) fn bad_value(path: &Path, what: &str) -> StoreError {
    StoreError::Internal(format!("sqlite store {}: {what} out of range in the database", path.display()))
}

/// The writer thread is gone (the store was closed, or the thread failed).
pub(crate) fn writer_gone(path: &Path) -> StoreError {
    StoreError::Unavailable(format!("sqlite store {}: the writer thread has stopped", path.display()))
}
