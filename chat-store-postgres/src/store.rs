//! [`PostgresStore`] and its builder: the connection pool, the time bound on every call, and
//! the [`Store`] operations over the statements of [`sql`](crate::sql).
//!
//! Every call runs under [`timeout`](PostgresStoreBuilder::timeout) (waiting for a connection
//! included) and each statement under the server's `statement_timeout`; a connection whose call
//! timed out or broke is closed rather than returned to the pool, so the next call starts clean.
//! The statements of one transaction are pipelined: an append is three round trips (begin, its
//! five statements, commit), whatever the batch's size.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chat_core::broker::{HistoryQuery, Position};
use chat_core::store::RetentionPolicy;
use chat_core::{Record, RoomName, Store, StoreError};
use deadpool_postgres::{ClientWrapper, Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

use crate::error::{connection_survives, is_conflict, pool_error, store_error, Error};
use crate::retain::{self, EpochFacts, Target};
use crate::{migrate, sql};

/// How many times a transaction that lost a deadlock or serialization conflict runs again.
const CONFLICT_RETRIES: usize = 5;

/// The [`Store`] on PostgreSQL. Cheap to clone: clones share one connection pool.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    timeout: Duration,
    retention_page: i64,
    chunk: i64,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").field("pool", &self.pool.status()).field("timeout", &self.timeout).finish()
    }
}

/// Configures a [`PostgresStore`]; made by [`PostgresStore::builder`].
#[derive(Debug, Clone)]
pub struct PostgresStoreBuilder {
    config: Result<tokio_postgres::Config, Error>,
    pool_size: usize,
    connect_timeout: Duration,
    statement_timeout: Duration,
    timeout: Duration,
    retention_page: usize,
    chunk: usize,
}

impl PostgresStore {
    /// Connects with the defaults of [`builder`](Self::builder): applies the migrations, and
    /// refuses a database whose schema is newer than this code.
    pub async fn connect(url: &str) -> Result<PostgresStore, Error> {
        Self::builder(url).connect().await
    }

    /// A builder for the store at `url`: a `postgres://user:password@host:port/database` URL or
    /// a `host=… user=…` string, as [`tokio_postgres::Config`] parses them (without TLS).
    ///
    /// ```
    /// use std::time::Duration;
    /// use chat_store_postgres::PostgresStore;
    ///
    /// let builder = PostgresStore::builder("postgres://chat@db.internal/chat")
    ///     .pool_size(32)
    ///     .timeout(Duration::from_secs(5));
    /// # drop(builder);
    /// ```
    pub fn builder(url: &str) -> PostgresStoreBuilder {
        PostgresStoreBuilder {
            config: url.parse().map_err(|e: tokio_postgres::Error| Error::InvalidUrl(e.to_string())),
            pool_size: 16,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(15),
            retention_page: 500,
            chunk: 5_000,
        }
    }

    /// Runs `work` under the call timeout; `what` names it in the error.
    async fn bounded<T>(&self, what: &str, work: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Unavailable(format!("{what}: no answer within {:?}", self.timeout))),
        }
    }

    async fn conn(&self) -> Result<Conn, StoreError> {
        self.pool.get().await.map(|obj| Conn(Some(obj))).map_err(|e| pool_error(&e))
    }

    /// One statement, its rows.
    async fn query(&self, what: &str, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, StoreError> {
        self.bounded(what, async {
            let mut conn = self.conn().await?;
            let client = conn.client();
            let result = async { client.query(&client.prepare_cached(sql).await?, params).await }.await;
            conn.finish(what, result)
        })
        .await
    }

    /// One statement, how many rows it changed; run again if it lost a deadlock (erasing rows
    /// that retention is deleting, in another order).
    async fn execute(&self, what: &str, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, StoreError> {
        self.bounded(what, async {
            let mut conn = self.conn().await?;
            let mut attempt = 0;
            loop {
                let client = conn.client();
                let result = async { client.execute(&client.prepare_cached(sql).await?, params).await }.await;
                match result {
                    Err(e) if is_conflict(&e) && attempt < CONFLICT_RETRIES => attempt += 1,
                    result => return conn.finish(what, result),
                }
            }
        })
        .await
    }

    /// Deletes one chunk of retention's ranges, in a transaction that first locks their rooms
    /// and raises their epochs' `deleted_through`.
    async fn delete_chunk(&self, chunk: &[Target]) -> Result<u64, StoreError> {
        let mut rooms: Vec<&str> = chunk.iter().map(|t| t.room.as_str()).collect();
        rooms.sort_unstable();
        rooms.dedup();
        let targets: Vec<&str> = chunk.iter().map(|t| t.room.as_str()).collect();
        let epochs: Vec<&str> = chunk.iter().map(|t| t.epoch.as_str()).collect();
        let los: Vec<i64> = chunk.iter().map(|t| t.lo).collect();
        let his: Vec<i64> = chunk.iter().map(|t| t.hi).collect();
        let what = "retention: deleting";
        self.bounded(what, async {
            let mut conn = self.conn().await?;
            let mut attempt = 0;
            loop {
                let result = async {
                    let tx = conn.client().transaction().await?;
                    let (lock, floors, delete) = futures::try_join!(
                        tx.prepare_cached(sql::RETAIN_LOCK_ROOMS),
                        tx.prepare_cached(sql::RETAIN_FLOORS),
                        tx.prepare_cached(sql::RETAIN_DELETE),
                    )?;
                    let lock_params: [&(dyn ToSql + Sync); 1] = [&rooms];
                    let floor_params: [&(dyn ToSql + Sync); 3] = [&targets, &epochs, &his];
                    let delete_params: [&(dyn ToSql + Sync); 4] = [&targets, &epochs, &los, &his];
                    let (_, _, deleted) = futures::try_join!(
                        tx.query(&lock, &lock_params),
                        tx.execute(&floors, &floor_params),
                        tx.execute(&delete, &delete_params),
                    )?;
                    tx.commit().await?;
                    Ok(deleted)
                }
                .await;
                match result {
                    Err(e) if is_conflict(&e) && attempt < CONFLICT_RETRIES => attempt += 1,
                    result => return conn.finish(what, result),
                }
            }
        })
        .await
    }
}

impl PostgresStoreBuilder {
    /// The most connections this node keeps to the server (default 16). The engine commits many
    /// sessions' messages per append, so a few connections serve many sessions.
    pub fn pool_size(mut self, connections: usize) -> Self {
        self.pool_size = connections.max(1);
        self
    }

    /// How long opening one connection may take (TCP and authentication; default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long the server lets one statement run before cancelling it (`statement_timeout`,
    /// and `idle_in_transaction_session_timeout`; default 10 s). A cancelled statement's call
    /// fails with [`StoreError::Unavailable`].
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = timeout;
        self
    }

    /// The most one call may take, waiting for a connection included (default 15 s); past it
    /// the call fails with [`StoreError::Unavailable`] and its connection is closed. Retention and
    /// `erase_user` work in steps, each bounded by this. Also bounds applying the migrations at
    /// connect.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How many rooms retention plans at once (default 500).
    pub fn retention_page(mut self, rooms: usize) -> Self {
        self.retention_page = rooms.max(1);
        self
    }

    /// The most rows one retention or `erase_user` transaction deletes or erases (default
    /// 5,000): big enough to be efficient, small enough to hold row locks only briefly.
    pub fn chunk(mut self, rows: usize) -> Self {
        self.chunk = rows.max(1);
        self
    }

    /// Connects: opens one connection, applies the migrations (see the crate docs), and returns
    /// the store. Fails with [`Error::SchemaTooNew`] on a database migrated by a newer version.
    pub async fn connect(self) -> Result<PostgresStore, Error> {
        let mut config = self.config?;
        let millis = |d: Duration| d.as_millis().max(1);
        let mut options = config.get_options().map(|o| format!("{o} ")).unwrap_or_default();
        options.push_str(&format!(
            "-c statement_timeout={} -c idle_in_transaction_session_timeout={}",
            millis(self.statement_timeout),
            millis(self.statement_timeout)
        ));
        config.options(options).connect_timeout(self.connect_timeout).keepalives_idle(Duration::from_secs(30));
        if config.get_application_name().is_none() {
            config.application_name("chat-store-postgres");
        }
        let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(self.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(self.timeout))
            .create_timeout(Some(self.connect_timeout))
            .recycle_timeout(Some(self.connect_timeout))
            .build()
            .map_err(|e| Error::Internal(format!("building the connection pool: {e}")))?;
        let clamp = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let store = PostgresStore {
            pool,
            timeout: self.timeout,
            retention_page: clamp(self.retention_page),
            chunk: clamp(self.chunk),
        };
        let migrated = tokio::time::timeout(self.timeout, async {
            let mut conn = store.conn().await.map_err(|e| match e {
                StoreError::Unavailable(m) => Error::Unavailable(m),
                other => Error::Internal(other.to_string()),
            })?;
            let result = migrate::migrate(conn.client()).await;
            if result.is_ok() {
                conn.release();
            }
            result
        })
        .await;
        match migrated {
            Ok(result) => result.map(|_| store),
            Err(_) => Err(Error::Unavailable(format!("applying migrations: no answer within {:?}", self.timeout))),
        }
    }
}

/// A pooled connection that goes back to the pool only when a call [`finish`](Conn::finish)ed
/// with it in a known state; dropped any other way (a timeout cancelled the call mid-statement,
/// the connection broke), it is closed.
struct Conn(Option<Object>);

impl Conn {
    fn client(&mut self) -> &mut ClientWrapper {
        self.0.as_mut().expect("a Conn holds its connection until it is released")
    }

    /// Returns the connection to the pool.
    fn release(mut self) {
        drop(self.0.take());
    }

    /// Ends a call: the connection goes back to the pool unless the error broke it; the error
    /// becomes a [`StoreError`].
    fn finish<T>(self, what: &str, result: Result<T, tokio_postgres::Error>) -> Result<T, StoreError> {
        match result {
            Ok(value) => {
                self.release();
                Ok(value)
            }
            Err(e) => {
                if connection_survives(&e) {
                    self.release();
                }
                Err(store_error(what, &e))
            }
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(obj) = self.0.take() {
            drop(Object::take(obj)); // closes it: the pool makes a fresh one when needed
        }
    }
}

/// A `u64` the engine gave as a seq or timestamp, as PostgreSQL's `bigint`.
fn to_bigint(value: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Internal(format!("{what} {value} is beyond what the store keeps")))
}

/// A bound of a query, clamped into `bigint` (a seq past `i64::MAX` is never stored).
fn clamp(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn decode<T>(what: &str, result: Result<T, tokio_postgres::Error>) -> Result<T, StoreError> {
    result.map_err(|e| StoreError::Internal(format!("{what}: {e}")))
}

fn unsigned(value: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Internal(format!("a stored {what} is negative: {value}")))
}

fn record(room: &RoomName, epoch: &Arc<str>, row: &Row) -> Result<Record, StoreError> {
    let seq: i64 = decode("reading a message", row.try_get(0))?;
    let from: &str = decode("reading a message", row.try_get(1))?;
    let ts: i64 = decode("reading a message", row.try_get(2))?;
    let body: Option<Vec<u8>> = decode("reading a message", row.try_get(3))?;
    let key: Option<&str> = decode("reading a message", row.try_get(4))?;
    Ok(Record {
        room: room.clone(),
        epoch: epoch.clone(),
        seq: unsigned(seq, "seq")?,
        from: Arc::from(from),
        ts: unsigned(ts, "timestamp")?,
        body: body.map(Bytes::from),
        key: key.map(Arc::from),
    })
}

fn facts(row: &Row) -> Result<EpochFacts, tokio_postgres::Error> {
    Ok(EpochFacts {
        room: row.try_get(0)?,
        epoch: row.try_get(1)?,
        started: row.try_get(2)?,
        seq: row.try_get(3)?,
        min_seq: row.try_get(4)?,
        max_seq: row.try_get(5)?,
        young: row.try_get(6)?,
        window_end: row.try_get(7)?,
    })
}

#[async_trait]
impl Store for PostgresStore {
    async fn append(&self, batch: &[Record]) -> Result<Vec<usize>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let rooms: Vec<&str> = batch.iter().map(|r| r.room.as_str()).collect();
        let epochs: Vec<&str> = batch.iter().map(|r| &*r.epoch).collect();
        let seqs = batch.iter().map(|r| to_bigint(r.seq, "seq")).collect::<Result<Vec<i64>, _>>()?;
        let senders: Vec<&str> = batch.iter().map(|r| &*r.from).collect();
        let ts = batch.iter().map(|r| to_bigint(r.ts, "timestamp")).collect::<Result<Vec<i64>, _>>()?;
        let bodies: Vec<Option<&[u8]>> = batch.iter().map(|r| r.body.as_deref()).collect();
        let keys: Vec<Option<&str>> = batch.iter().map(|r| r.key.as_deref()).collect();
        let what = "append";
        self.bounded(what, async {
            let mut conn = self.conn().await?;
            let mut attempt = 0;
            let rows = loop {
                let result = async {
                    let tx = conn.client().transaction().await?;
                    let (lock, messages, conflicts, epoch_seqs, positions) = futures::try_join!(
                        tx.prepare_cached(sql::APPEND_LOCK_ROOMS),
                        tx.prepare_cached(sql::APPEND_MESSAGES),
                        tx.prepare_cached(sql::APPEND_CONFLICTS),
                        tx.prepare_cached(sql::APPEND_EPOCHS),
                        tx.prepare_cached(sql::APPEND_POSITIONS),
                    )?;
                    let rooms_only: [&(dyn ToSql + Sync); 1] = [&rooms];
                    let records: [&(dyn ToSql + Sync); 7] = [&rooms, &epochs, &seqs, &senders, &ts, &bodies, &keys];
                    let compared: [&(dyn ToSql + Sync); 5] = [&rooms, &epochs, &seqs, &senders, &bodies];
                    let epoch_seq: [&(dyn ToSql + Sync); 3] = [&rooms, &epochs, &seqs];
                    let (_, _, conflicting, _, _) = futures::try_join!(
                        tx.execute(&lock, &rooms_only),
                        tx.execute(&messages, &records),
                        tx.query(&conflicts, &compared),
                        tx.execute(&epoch_seqs, &epoch_seq),
                        tx.execute(&positions, &rooms_only),
                    )?;
                    tx.commit().await?;
                    Ok(conflicting)
                }
                .await;
                match result {
                    Err(e) if is_conflict(&e) && attempt < CONFLICT_RETRIES => attempt += 1,
                    result => break conn.finish(what, result)?,
                }
            };
            // Positions from 1 (WITH ORDINALITY) to batch indexes, ascending.
            rows.iter()
                .map(|row| {
                    let ord: i64 = decode("reading an append's conflicts", row.try_get(0))?;
                    usize::try_from(ord - 1).ok().filter(|&i| i < batch.len()).ok_or_else(|| {
                        StoreError::Internal(format!("a conflict at position {ord} of a batch of {}", batch.len()))
                    })
                })
                .collect()
        })
        .await
    }

    async fn page(&self, room: &RoomName, epoch: &str, query: HistoryQuery) -> Result<Vec<Record>, StoreError> {
        let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
        let before = query.before.map_or(i64::MAX, clamp);
        let room_name = room.as_str();
        let rows = match query.after {
            Some(after) => {
                let after = clamp(after);
                self.query("reading history", sql::PAGE_AFTER, &[&room_name, &epoch, &after, &before, &limit]).await?
            }
            None => {
                let mut rows =
                    self.query("reading history", sql::PAGE_BEFORE, &[&room_name, &epoch, &before, &limit]).await?;
                rows.reverse();
                rows
            }
        };
        let epoch: Arc<str> = Arc::from(epoch);
        rows.iter().map(|row| record(room, &epoch, row)).collect()
    }

    async fn latest(&self, room: &RoomName) -> Result<Option<Position>, StoreError> {
        let rows = self.query("reading the room's position", sql::LATEST, &[&room.as_str()]).await?;
        let Some(row) = rows.first() else { return Ok(None) };
        let epoch: &str = decode("reading the room's position", row.try_get(0))?;
        let seq: i64 = decode("reading the room's position", row.try_get(1))?;
        Ok(Some(Position { epoch: Arc::from(epoch), seq: unsigned(seq, "seq")? }))
    }

    async fn retain(&self, policy: &RetentionPolicy, now_ms: u64) -> Result<u64, StoreError> {
        let mut after = String::new(); // every room name is longer
        let mut deleted = 0u64;
        loop {
            let rows =
                self.query("retention: listing rooms", sql::RETAIN_ROOMS, &[&after, &self.retention_page]).await?;
            let rooms = rows
                .iter()
                .map(|row| decode("retention: listing rooms", row.try_get::<_, String>(0)))
                .collect::<Result<Vec<_>, _>>()?;
            let Some(last) = rooms.last() else { break };
            after = last.clone();
            let mut names = Vec::with_capacity(rooms.len());
            let mut cutoffs = Vec::with_capacity(rooms.len());
            let mut counts = HashMap::with_capacity(rooms.len());
            for room in &rooms {
                let Ok(name) = RoomName::new(room) else {
                    tracing::warn!(room, "chat-store-postgres: retention skips a room with an invalid name");
                    continue;
                };
                let keep = policy(&name);
                let max_age = u64::try_from(keep.max_age.as_millis()).unwrap_or(u64::MAX);
                names.push(room.as_str());
                cutoffs.push(clamp(now_ms.saturating_sub(max_age)));
                counts.insert(room.clone(), clamp(keep.max_count));
            }
            loop {
                let rows =
                    self.query("retention: planning", sql::RETAIN_PLAN, &[&names, &cutoffs, &self.chunk]).await?;
                let facts = rows.iter().map(facts).collect::<Result<Vec<_>, _>>();
                let (targets, more) = retain::plan(decode("retention: planning", facts)?, &counts);
                for chunk in retain::chunks(&targets, self.chunk) {
                    deleted += self.delete_chunk(&chunk).await?;
                }
                if !more {
                    break;
                }
            }
            if i64::try_from(rooms.len()).unwrap_or(i64::MAX) < self.retention_page {
                break;
            }
        }
        Ok(deleted)
    }

    async fn erase(&self, room: &RoomName, epoch: &str, seq: u64) -> Result<bool, StoreError> {
        let seq = clamp(seq);
        let n = self.execute("erasing a message", sql::ERASE, &[&room.as_str(), &epoch, &seq]).await?;
        Ok(n > 0)
    }

    async fn erase_user(&self, user: &str) -> Result<u64, StoreError> {
        let mut erased = 0;
        loop {
            let n = self.execute("erasing a user's messages", sql::ERASE_USER_CHUNK, &[&user, &self.chunk]).await?;
            erased += n;
            if i64::try_from(n).unwrap_or(i64::MAX) < self.chunk {
                return Ok(erased);
            }
        }
    }
}
