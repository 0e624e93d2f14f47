//! Durable conversations end to end (issue 12): `chat-server` processes on each store, killed
//! with SIGKILL and started again on the same store, and two nodes on Redis with PostgreSQL
//! while Redis is flushed. The conversation, its epoch and its seq are all still there.
//!
//! Needs `redis-server` on the PATH and PostgreSQL on 127.0.0.1:5432 (or `CHAT_TEST_POSTGRES`;
//! `.ci/run` starts one): each test makes its own database and drops it.

mod common;

use chat_core::client::{Client, Event, HistoryQuery, Message};
use chat_core::protocol::Since;
use chat_testkit::PgDatabase;
use common::*;
use serde_json::json;

/// A server on `store` (a `--store` value), on free ports; `more` are further arguments.
async fn server(name: &str, store: &str, more: &[&str]) -> ChatServer {
    let mut args = vec!["--tcp", "127.0.0.1:0", "--ws", "127.0.0.1:0", "--store", store];
    args.extend_from_slice(more);
    ChatServer::start(name, &args).await
}

async fn say(client: &Client, room: &str, n: u64) -> u64 {
    let key = format!("k{n}");
    let sent = client.send_with(room, json!({"n": n}), Some(&key), false);
    within("send", sent).await.expect("sent").expect("a stored seq")
}

fn seqs(messages: &[Message]) -> Vec<u64> {
    messages.iter().map(|m| m.seq.expect("seq")).collect()
}

/// Five messages, SIGKILL, a new process on the same store: `join` with `since` recovers in the
/// same epoch, `history` has all five, a resend with a key gets its original seq, and the next
/// send is seq 6.
async fn a_killed_server_comes_back_with_the_conversation(store: &str) {
    let first = server("store-first", store, &[]).await;
    let alice = tcp(first.tcp, "alice").await;
    let epoch = within("join", alice.join("r", None)).await.expect("join").epoch;
    for n in 1..=5 {
        assert_eq!(say(&alice, "r", n).await, n);
    }
    first.kill().await;
    drop(alice);

    let second = server("store-second", store, &[]).await;
    let mut bob = tcp(second.tcp, "bob").await;
    let joined = within("join", bob.join("r", Some(Since::new(&epoch, 2)))).await.expect("join");
    assert_eq!((joined.epoch.as_str(), joined.seq, joined.recovered), (epoch.as_str(), 5, true), "{}", second.stderr());
    assert_eq!(seqs(&messages(&mut bob, "r", 3).await), vec![3, 4, 5], "replayed from the store");
    let page = within("history", bob.history("r", HistoryQuery::latest(50))).await.expect("history");
    assert_eq!(page.epoch, epoch);
    assert_eq!(history_keys(&page).iter().map(|k| k.0).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
    assert_eq!(page.messages[4].body, json!({"n": 5}));
    // Alice did not see her last replies; she comes back and resends with the same keys.
    let alice = tcp(second.tcp, "alice").await;
    within("join", alice.join("r", None)).await.expect("join");
    for n in [4, 5] {
        assert_eq!(say(&alice, "r", n).await, n, "a resend gets its original seq");
    }
    assert_eq!(say(&bob, "r", 6).await, 6, "the next seq in the same epoch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_keeps_the_conversation_through_a_sigkill() {
    let dir = std::env::temp_dir().join(format!("chat-stores-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory for the database");
    let file = dir.join("chat.db");
    let _ = std::fs::remove_file(&file);
    a_killed_server_comes_back_with_the_conversation(&format!("sqlite:{}", file.display())).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_keeps_the_conversation_through_a_sigkill() {
    let db = PgDatabase::create();
    a_killed_server_comes_back_with_the_conversation(&db.url()).await;
}

/// Two nodes on Redis and PostgreSQL serve one room; Redis is flushed. The next send gets the
/// next seq in the same epoch, both members receive it without a reset, and nothing
/// acknowledged is missing from `history`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_redis_loses_nothing_kept_in_postgres() {
    let redis = Redis::start();
    let db = PgDatabase::create();
    let (broker, store) = (redis.url(), db.url());
    let a = server("flush-a", &store, &["--broker", &broker, "--node-id", "a"]).await;
    let b = server("flush-b", &store, &["--broker", &broker, "--node-id", "b"]).await;
    let mut alice = tcp(a.tcp, "alice").await;
    let mut bob = ws(&b.ws, "bob").await;
    let epoch = within("join", alice.join("r", None)).await.expect("join").epoch;
    within("join", bob.join("r", None)).await.expect("join");
    for n in 1..=6 {
        let sender = if n % 2 == 1 { &alice } else { &bob };
        assert_eq!(say(sender, "r", n).await, n);
    }
    for c in [&mut alice, &mut bob] {
        assert_eq!(seqs(&messages(c, "r", 6).await), (1..=6).collect::<Vec<_>>());
    }

    assert_eq!(redis.command(&["FLUSHALL"]), "+OK");

    assert_eq!(say(&bob, "r", 7).await, 7, "the next seq, not 1");
    for c in [&mut alice, &mut bob] {
        let next = next_matching(c, "the next message", |e| matches!(e, Event::Message(_) | Event::Reset(_))).await;
        assert!(matches!(&next, Event::Message(m) if m.seq == Some(7)), "{next:?}");
    }
    let page = within("history", alice.history("r", HistoryQuery::latest(50))).await.expect("history");
    assert_eq!(page.epoch, epoch, "the same epoch");
    assert_eq!(history_keys(&page).iter().map(|k| k.0).collect::<Vec<_>>(), (1..=7).collect::<Vec<_>>());
}
