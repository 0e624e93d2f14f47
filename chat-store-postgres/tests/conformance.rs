//! The store conformance suite (chat-testkit's `store_conformance`) run against PostgreSQL:
//! each case on a database of its own, created on the test server and dropped afterwards.

use chat_core::Store;
use chat_store_postgres::PostgresStore;
use chat_testkit::store_conformance::StoreSubject;
use chat_testkit::PgDatabase;

/// A store and its database (dropped after the store's pool).
struct Postgres {
    store: PostgresStore,
    _db: PgDatabase,
}

impl StoreSubject for Postgres {
    fn store(&self) -> &dyn Store {
        &self.store
    }
}

async fn connect() -> Postgres {
    let db = PgDatabase::create();
    let store = PostgresStore::connect(&db.url()).await.expect("connect to the test database");
    Postgres { store, _db: db }
}

chat_testkit::store_conformance!(connect());
