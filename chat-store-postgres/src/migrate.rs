//! Schema migrations: the files in `migrations/`, compiled in, applied at connect.
//!
//! All of it runs in one transaction that first takes a transaction-scoped advisory lock, so
//! nodes starting together apply each migration once (the others wait, then find it recorded);
//! a failure rolls everything back. `chat_schema_migrations` records what was applied. A
//! database that records a migration this code does not know was migrated by a newer version:
//! it is refused ([`Error::SchemaTooNew`]), as is one whose migration of the same number has
//! another name ([`Error::SchemaMismatch`]).

use tokio_postgres::Client;

use crate::error::{connect_error, Error};

/// One migration: `migrations/NNN_name.sql`.
pub(crate) struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in order. Add new ones at the end; never change an applied one.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, name: "init", sql: include_str!("../migrations/001_init.sql") },
    Migration { version: 2, name: "keys", sql: include_str!("../migrations/002_keys.sql") },
];

/// The advisory lock key ("chatstor" in ASCII) that serialises migrations.
const LOCK_KEY: i64 = 0x6368_6174_7374_6f72;

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS chat_schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)";

/// The newest migration this code has.
pub(crate) fn known_version() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Brings the database's schema up to date, or refuses a newer one. Returns the versions it
/// applied.
pub(crate) async fn migrate(client: &mut Client) -> Result<Vec<i32>, Error> {
    let tx = client.transaction().await.map_err(|e| connect_error("beginning migrations", &e))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
        .await
        .map_err(|e| connect_error("taking the migration lock", &e))?;
    tx.batch_execute(CREATE_TABLE).await.map_err(|e| connect_error("creating chat_schema_migrations", &e))?;
    let rows = tx
        .query("SELECT version, name FROM chat_schema_migrations ORDER BY version", &[])
        .await
        .map_err(|e| connect_error("reading chat_schema_migrations", &e))?;
    let mut applied = Vec::with_capacity(rows.len());
    for row in rows {
        let version: i32 = row.try_get(0).map_err(|e| connect_error("reading chat_schema_migrations", &e))?;
        let name: String = row.try_get(1).map_err(|e| connect_error("reading chat_schema_migrations", &e))?;
        applied.push((version, name));
    }
    if let Some((found, _)) = applied.iter().rev().find(|(v, _)| *v > known_version()) {
        return Err(Error::SchemaTooNew { found: *found, known: known_version() });
    }
    for (version, name) in &applied {
        match MIGRATIONS.iter().find(|m| m.version == *version) {
            Some(m) if m.name == name => {}
            m => {
                return Err(Error::SchemaMismatch {
                    version: *version,
                    found: name.clone(),
                    expected: m.map_or_else(|| "(none)".to_owned(), |m| m.name.to_owned()),
                })
            }
        }
    }
    let mut done = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| !applied.iter().any(|(v, _)| *v == m.version)) {
        let what = format!("applying migration {:03}_{}", m.version, m.name);
        tx.batch_execute(m.sql).await.map_err(|e| connect_error(&what, &e))?;
        tx.execute("INSERT INTO chat_schema_migrations (version, name) VALUES ($1, $2)", &[&m.version, &m.name])
            .await
            .map_err(|e| connect_error(&what, &e))?;
        done.push(m.version);
    }
    tx.commit().await.map_err(|e| connect_error("committing migrations", &e))?;
    if !done.is_empty() {
        tracing::info!(versions = ?done, "chat-store-postgres: schema migrated");
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order_like_their_files() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i32 + 1, "migration {} out of order", m.name);
            assert!(!m.sql.trim().is_empty());
        }
        let mut files: Vec<String> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
            .expect("migrations/")
            .map(|e| e.expect("an entry").file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        let expected: Vec<String> = MIGRATIONS.iter().map(|m| format!("{:03}_{}.sql", m.version, m.name)).collect();
        assert_eq!(files, expected, "every file in migrations/ is listed in MIGRATIONS, and only those");
    }
}
