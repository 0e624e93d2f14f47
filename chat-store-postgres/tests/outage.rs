//! A database that dies or hangs: every call fails with `Unavailable` within the store's
//! timeout instead of hanging, and once the server is back the same store works again, with
//! everything it had committed. The server is a private one (`PgServer`), killed with SIGKILL
//! or frozen with SIGSTOP.

mod common;

use std::time::{Duration, Instant};

use chat_core::{Retention, RoomName, Store, StoreError};
use chat_store_postgres::PostgresStore;
use chat_testkit::{eventually, PgServer};
use common::*;

const TIMEOUT: Duration = Duration::from_secs(2);
/// What a loaded machine may add to a deadline before a call notices it.
const SLACK: Duration = Duration::from_secs(3);

async fn store_on(server: &PgServer) -> PostgresStore {
    PostgresStore::builder(&server.url())
        .pool_size(4)
        .connect_timeout(Duration::from_secs(1))
        .statement_timeout(TIMEOUT)
        .timeout(TIMEOUT)
        .connect()
        .await
        .expect("connect to the private server")
}

/// Every kind of call, each expected to fail `Unavailable` within the timeout.
async fn every_call_is_unavailable(store: &PostgresStore, state: &str) {
    let r = room("r");
    let keep = |_: &RoomName| Retention::default();
    macro_rules! unavailable {
        ($name:literal, $call:expr) => {{
            let started = Instant::now();
            let result = $call.await;
            let took = started.elapsed();
            assert!(matches!(result, Err(StoreError::Unavailable(_))), "{} on a {state} server: {result:?}", $name);
            assert!(took < TIMEOUT + SLACK, "{} on a {state} server took {took:?}", $name);
        }};
    }
    unavailable!("append", store.append(&recs("r", "e", 100..=101)));
    unavailable!("page", store.page(&r, "e", q(None, None, 10)));
    unavailable!("latest", store.latest(&r));
    unavailable!("retain", store.retain(&keep, 0));
    unavailable!("erase", store.erase(&r, "e", 1));
    unavailable!("erase_user", store.erase_user("alice"));
}

async fn works_again(store: &PostgresStore) {
    eventually("the store to work again", Duration::from_secs(30), || async { store.latest(&room("r")).await.ok() })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_database_is_unavailable_then_comes_back_with_what_was_committed() {
    let mut server = PgServer::start();
    let store = store_on(&server).await;
    for seqs in [1..=10, 11..=20] {
        store.append(&recs("r", "e", seqs)).await.unwrap();
    }

    server.kill();
    every_call_is_unavailable(&store, "killed").await;

    server.restart();
    works_again(&store).await;
    // Nothing committed was lost, and the store goes on where it was.
    assert_eq!(store.page(&room("r"), "e", q(None, None, 100)).await.unwrap(), recs("r", "e", 1..=20));
    store.append(&recs("r", "e", 21..=22)).await.unwrap();
    assert_eq!(store.latest(&room("r")).await.unwrap().map(|p| p.seq), Some(22));
    assert_eq!(seqs(&store.page(&room("r"), "e", q(None, Some(18), 100)).await.unwrap()), [19, 20, 21, 22]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_database_is_unavailable_within_the_timeout_then_recovers() {
    let server = PgServer::start();
    let store = store_on(&server).await;
    store.append(&recs("r", "e", 1..=10)).await.unwrap();

    server.pause();
    every_call_is_unavailable(&store, "hung").await;

    server.resume();
    works_again(&store).await;
    // The append that timed out committed all of its batch or nothing (here nothing: it never
    // sent COMMIT), and what was committed before is all there.
    let page = seqs(&store.page(&room("r"), "e", q(None, None, 100)).await.unwrap());
    assert_eq!(page, (1..=10).collect::<Vec<_>>());
    store.append(&recs("r", "e", 11..=12)).await.unwrap();
    assert_eq!(store.latest(&room("r")).await.unwrap().map(|p| p.seq), Some(12));
}
