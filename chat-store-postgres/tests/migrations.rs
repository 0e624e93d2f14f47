//! Schema migrations: applied once when many nodes connect at the same moment, a no-op on the
//! next connect, and a database migrated by a newer version (or another) is refused.

mod common;

use chat_core::broker::HistoryQuery;
use chat_core::{Record, Store};
use chat_store_postgres::{Error, PostgresStore};
use chat_testkit::PgDatabase;
use common::*;

#[tokio::test]
async fn nodes_connecting_at_once_migrate_once() {
    let db = PgDatabase::create();
    let url = db.url();
    let connects = (0..8).map(|_| PostgresStore::builder(&url).pool_size(2).connect());
    let stores = futures::future::join_all(connects).await;
    for store in &stores {
        assert!(store.is_ok(), "{store:?}");
    }
    let c = client(&url).await;
    let rows = c.query("SELECT version, name FROM chat_schema_migrations ORDER BY version", &[]).await.unwrap();
    let applied: Vec<(i32, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(applied, vec![(1, "init".to_owned()), (2, "keys".to_owned())]);
    // And again, later: nothing to do.
    PostgresStore::connect(&url).await.unwrap();
    assert_eq!(count(&c, "SELECT 1 FROM chat_schema_migrations").await, 2);
}

#[tokio::test]
async fn a_schema_newer_than_the_code_is_refused() {
    let db = PgDatabase::create();
    PostgresStore::connect(&db.url()).await.unwrap();
    let c = client(&db.url()).await;
    c.execute("INSERT INTO chat_schema_migrations (version, name) VALUES (999, 'from_the_future')", &[]).await.unwrap();
    match PostgresStore::connect(&db.url()).await {
        Err(e @ Error::SchemaTooNew { found: 999, known: 2 }) => {
            let text = e.to_string();
            assert!(text.contains("999") && text.contains("newer"), "{text}");
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
}

/// A database of the first schema (before idempotency keys were kept) is migrated at connect:
/// its messages read back without keys, new ones keep theirs.
#[tokio::test]
async fn a_database_of_the_first_schema_is_migrated() {
    let db = PgDatabase::create();
    let store = PostgresStore::connect(&db.url()).await.unwrap();
    store.append(&[rec("r", "e", 1)]).await.unwrap();
    drop(store);
    // Back to the first schema, as the first release left its databases.
    let c = client(&db.url()).await;
    c.batch_execute(
        "ALTER TABLE chat_messages DROP COLUMN idem_key; DELETE FROM chat_schema_migrations WHERE version = 2;",
    )
    .await
    .unwrap();
    let store = PostgresStore::connect(&db.url()).await.unwrap();
    assert_eq!(count(&c, "SELECT 1 FROM chat_schema_migrations").await, 2);
    let keyed = Record { key: Some(std::sync::Arc::from("k2")), ..rec("r", "e", 2) };
    store.append(std::slice::from_ref(&keyed)).await.unwrap();
    let page = store.page(&room("r"), "e", HistoryQuery { before: None, after: None, limit: 10 }).await.unwrap();
    assert_eq!(page, vec![rec("r", "e", 1), keyed]);
}

#[tokio::test]
async fn a_migration_recorded_under_another_name_is_refused() {
    let db = PgDatabase::create();
    PostgresStore::connect(&db.url()).await.unwrap();
    let c = client(&db.url()).await;
    c.execute("UPDATE chat_schema_migrations SET name = 'something_else' WHERE version = 1", &[]).await.unwrap();
    match PostgresStore::connect(&db.url()).await {
        Err(Error::SchemaMismatch { version: 1, found, expected }) => {
            assert_eq!((found.as_str(), expected.as_str()), ("something_else", "init"));
        }
        other => panic!("expected SchemaMismatch, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_urls_and_absent_servers_are_errors_not_hangs() {
    assert!(matches!(PostgresStore::connect("postgres://[::1").await, Err(Error::InvalidUrl(_))));
    let port = chat_testkit::free_port(); // nothing listens there
    let started = std::time::Instant::now();
    let result = PostgresStore::builder(&format!("postgres://postgres@127.0.0.1:{port}/postgres"))
        .timeout(std::time::Duration::from_secs(3))
        .connect()
        .await;
    assert!(matches!(result, Err(Error::Unavailable(_))), "{result:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}
