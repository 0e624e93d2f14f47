//! The crate's errors: [`Error`] for connecting (URL, server, schema), and the mapping of
//! PostgreSQL's and the pool's errors onto the engine's [`StoreError`]: what a retry may cure
//! (the server is down, restarting, overloaded, too slow) is `Unavailable`, the rest `Internal`.

use chat_core::StoreError;
use deadpool_postgres::PoolError;

/// What can go wrong connecting a [`PostgresStore`](crate::PostgresStore).
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The URL is not a PostgreSQL connection string.
    #[error("invalid PostgreSQL URL: {0}")]
    InvalidUrl(String),
    /// The server cannot be reached or did not answer in time.
    #[error("PostgreSQL unavailable: {0}")]
    Unavailable(String),
    /// The database was migrated by a newer version of this crate: this one refuses to use it
    /// rather than guess what the newer schema means.
    #[error(
        "the database's chat schema is at version {found}, newer than this chat-store-postgres \
         knows (up to {known}): run a newer version, or point it at another database"
    )]
    SchemaTooNew {
        /// The newest migration recorded in the database.
        found: i32,
        /// The newest migration this code has.
        known: i32,
    },
    /// A migration recorded in the database is not the one this code has under that number.
    #[error("migration {version} in the database is {found:?}, this code's is {expected:?}")]
    SchemaMismatch {
        /// The migration's number.
        version: i32,
        /// Its name as recorded in the database.
        found: String,
        /// Its name in this code.
        expected: String,
    },
    /// Anything else the server refused.
    #[error("PostgreSQL error: {0}")]
    Internal(String),
}

impl From<Error> for StoreError {
    fn from(e: Error) -> StoreError {
        match e {
            Error::Unavailable(m) => StoreError::Unavailable(m),
            other => StoreError::Internal(other.to_string()),
        }
    }
}

/// Whether a retry may cure it: no SQLSTATE (the connection broke), or one of the classes a
/// healthy server answers while it is starting, stopping, overloaded or out of time.
pub(crate) fn is_transient(e: &tokio_postgres::Error) -> bool {
    let Some(code) = e.code() else { return true };
    let code = code.code();
    code.starts_with("08") // connection exception
        || code.starts_with("53") // insufficient resources (too many connections, disk full)
        || code.starts_with("57") // operator intervention: shutdown, crash, statement timeout
        || code.starts_with("40") // transaction rollback: serialization failure, deadlock
        || code == "55P03" // lock not available
}

/// Whether the transaction was rolled back for a conflict with another and should simply run
/// again: serialization failure or deadlock.
pub(crate) fn is_conflict(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| c.code() == "40001" || c.code() == "40P01")
}

/// Whether the connection is still good after `e` (the server answered with an error).
pub(crate) fn connection_survives(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some() && !e.code().is_some_and(|c| c.code().starts_with("08") || c.code() == "57P01")
}

pub(crate) fn store_error(what: &str, e: &tokio_postgres::Error) -> StoreError {
    let message = format!("{what}: {}", describe(e));
    if is_transient(e) {
        StoreError::Unavailable(message)
    } else {
        StoreError::Internal(message)
    }
}

pub(crate) fn connect_error(what: &str, e: &tokio_postgres::Error) -> Error {
    match store_error(what, e) {
        StoreError::Unavailable(m) => Error::Unavailable(m),
        other => Error::Internal(other.to_string()),
    }
}

pub(crate) fn pool_error(e: &PoolError) -> StoreError {
    match e {
        PoolError::Backend(e) => store_error("connecting", e),
        other => StoreError::Unavailable(format!("connection pool: {other}")),
    }
}

/// The server's message when there is one (tokio-postgres's `Display` says only "db error").
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_too_new_says_what_to_do() {
        let text = Error::SchemaTooNew { found: 7, known: 1 }.to_string();
        assert!(text.contains("version 7") && text.contains("up to 1") && text.contains("newer version"), "{text}");
        assert!(matches!(StoreError::from(Error::SchemaTooNew { found: 7, known: 1 }), StoreError::Internal(_)));
        assert!(matches!(StoreError::from(Error::Unavailable("x".into())), StoreError::Unavailable(_)));
    }
}
