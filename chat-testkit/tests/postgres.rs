//! The PostgreSQL test support itself: a test database exists while its handle lives, and a
//! private server comes back after a kill with what it had committed.

use std::process::Command;

use chat_testkit::{PgDatabase, PgServer};

/// Runs `sql` with psql against `url` and returns its unaligned output.
fn query(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args(["--no-psqlrc", "-v", "ON_ERROR_STOP=1", "-qAt", "-d", url, "-c", sql])
        .output()
        .expect("run psql");
    assert!(out.status.success(), "psql failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn a_test_database_lives_as_long_as_its_handle() {
    let db = PgDatabase::create();
    let other = PgDatabase::create();
    assert_ne!(db.name(), other.name());
    assert_eq!(query(&db.url(), "SELECT current_database()"), db.name());
    let server =
        std::env::var("CHAT_TEST_POSTGRES").unwrap_or_else(|_| chat_testkit::postgres::DEFAULT_POSTGRES_URL.to_owned());
    let name = db.name().to_owned();
    let exists = |name: &str| query(&server, &format!("SELECT count(*) FROM pg_database WHERE datname = '{name}'"));
    assert_eq!(exists(&name), "1");
    drop(db);
    assert_eq!(exists(&name), "0");
}

#[test]
fn a_killed_server_comes_back_with_what_it_committed() {
    let mut server = PgServer::start();
    query(&server.url(), "CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2)");
    server.kill();
    server.restart();
    assert_eq!(query(&server.url(), "SELECT sum(x) FROM t"), "3");
}
