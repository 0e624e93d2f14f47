//! The store conformance suite (chat-testkit's `store_conformance`) run against SQLite: each
//! case on a database file of its own in a fresh temporary directory, once with the default
//! options and once with tiny chunks and one reader, so that retention and `erase_user` cross
//! many chunk boundaries and reads queue for their connection.

use chat_core::Store;
use chat_store_sqlite::{SqliteOptions, SqliteStore};
use chat_testkit::store_conformance::StoreSubject;

/// A store and the directory of its file (removed when the subject is dropped).
struct Sqlite {
    store: SqliteStore,
    _dir: tempfile::TempDir,
}

impl StoreSubject for Sqlite {
    fn store(&self) -> &dyn Store {
        &self.store
    }
}

async fn open(options: SqliteOptions) -> Sqlite {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = options.open(dir.path().join("store.db")).await.expect("open the store");
    Sqlite { store, _dir: dir }
}

mod defaults {
    use super::*;

    chat_testkit::store_conformance!(open(SqliteOptions::new()));
}

mod small_chunks {
    use super::*;

    chat_testkit::store_conformance!(open(SqliteOptions::new().chunk(7).readers(1)));
}
