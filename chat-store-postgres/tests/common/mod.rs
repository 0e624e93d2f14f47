//! What the store's tests share: a store on a database of its own, records to append, and a
//! plain client for looking at the tables directly.

#![allow(dead_code)] // each test file uses its own part

use std::sync::Arc;

use bytes::Bytes;
use chat_core::broker::HistoryQuery;
use chat_core::{Record, RoomName};
use chat_store_postgres::PostgresStore;
use chat_testkit::PgDatabase;

/// A fresh database and a store connected to it (kept together: the database is dropped with
/// the fixture).
pub struct Fixture {
    pub store: PostgresStore,
    pub db: PgDatabase,
}

pub async fn fixture() -> Fixture {
    let db = PgDatabase::create();
    let store = PostgresStore::connect(&db.url()).await.expect("connect to the test database");
    Fixture { store, db }
}

pub fn room(name: &str) -> RoomName {
    RoomName::new(name).expect("a valid room name")
}

/// A record of `room` in `epoch`: from `alice`, `ts` = 1,000 × seq, body `{"n":seq}`.
pub fn rec(room: &str, epoch: &str, seq: u64) -> Record {
    Record {
        room: self::room(room),
        epoch: Arc::from(epoch),
        seq,
        from: Arc::from("alice"),
        ts: 1_000 * seq,
        body: Some(Bytes::from(format!("{{\"n\":{seq}}}"))),
        key: None,
    }
}

/// Records `seqs` of (`room`, `epoch`).
pub fn recs(room: &str, epoch: &str, seqs: impl IntoIterator<Item = u64>) -> Vec<Record> {
    seqs.into_iter().map(|s| rec(room, epoch, s)).collect()
}

pub fn q(before: Option<u64>, after: Option<u64>, limit: usize) -> HistoryQuery {
    HistoryQuery { before, after, limit }
}

pub fn seqs(records: &[Record]) -> Vec<u64> {
    records.iter().map(|r| r.seq).collect()
}

/// A plain connection to `url`, for looking at the tables.
pub async fn client(url: &str) -> tokio_postgres::Client {
    let (client, connection) =
        tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("connect with psql's rights");
    tokio::spawn(connection);
    client
}

/// `SELECT count(*)` of `sql`'s rows.
pub async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(&format!("SELECT count(*) FROM ({sql}) AS x"), &[]).await.expect("count").get(0)
}
