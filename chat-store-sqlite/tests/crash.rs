//! A process killed with SIGKILL in the middle of a stream of appends loses nothing whose
//! `append` returned `Ok`, in either synchronous mode.
//!
//! The test runs its own test binary again as a child (`crash_child`, which does nothing unless
//! the environment names a database): four tasks append batches to four rooms and print each
//! batch once `append` has returned. The parent kills the child once it has seen enough, reads
//! what the child printed before it died, reopens the file and looks for every printed record;
//! five times over on the same file, each child going on from where the last one stood.
//! (A store that answered before committing was caught by it.)

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chat_core::Store;
use chat_store_sqlite::{SqliteOptions, Synchronous};
use chat_testkit::store_conformance::{all, records};

/// The database the child appends to; without it `crash_child` does nothing.
const CHILD_DB: &str = "CHAT_STORE_SQLITE_CRASH_DB";
/// `full` or `normal`.
const CHILD_SYNC: &str = "CHAT_STORE_SQLITE_CRASH_SYNC";
const ROOMS: usize = 4;
const BATCH: u64 = 10;
/// The child stops by itself after this many batches per room, or this long.
const CHILD_BATCHES: u64 = 100_000;
const CHILD_TIME: Duration = Duration::from_secs(120);
/// The parent kills the child once this many batches were reported, this many times.
const KILL_AFTER: usize = 100;
const ROUNDS: usize = 5;

fn synchronous(name: &str) -> Synchronous {
    match name {
        "normal" => Synchronous::Normal,
        _ => Synchronous::Full,
    }
}

/// The child: appends from where each room stands until killed, printing `committed <room>
/// <last seq>` after each append.
#[test]
fn crash_child() {
    let Some(path) = std::env::var_os(CHILD_DB) else { return };
    let sync = synchronous(&std::env::var(CHILD_SYNC).unwrap_or_default());
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
    runtime.block_on(async move {
        let store =
            std::sync::Arc::new(SqliteOptions::new().synchronous(sync).open(&path).await.expect("open the database"));
        let started = Instant::now();
        let tasks: Vec<_> = (0..ROOMS)
            .map(|r| {
                let store = store.clone();
                tokio::spawn(async move {
                    let room = format!("crash-{r}");
                    let name = chat_testkit::store_conformance::room(&room);
                    let from = store.latest(&name).await.expect("latest").map_or(0, |p| p.seq / BATCH);
                    for n in from..from + CHILD_BATCHES {
                        if started.elapsed() > CHILD_TIME {
                            return;
                        }
                        let batch = records(&room, "e", n * BATCH + 1..=(n + 1) * BATCH);
                        store.append(&batch).await.expect("append");
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "committed {room} {}", (n + 1) * BATCH).expect("write to stdout");
                        out.flush().expect("flush stdout");
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("an appending task");
        }
    });
}

/// Runs the child on `path` until it has reported [`KILL_AFTER`] batches, kills it, and adds
/// what it reported (each room's last committed seq) to `committed`.
fn run_and_kill(path: &Path, sync: &str, committed: &mut BTreeMap<String, u64>) {
    let mut child = Command::new(std::env::current_exe().expect("the test binary"))
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_DB, path)
        .env(CHILD_SYNC, sync)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the child");
    let stdout = child.stdout.take().expect("the child's stdout");
    let (lines, received) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    let mut record = |line: String| {
        // libtest's `test crash_child ... ` may start the first line.
        let Some(at) = line.find("committed ") else { return false };
        let mut words = line[at..].split(' ').skip(1);
        let (Some(room), Some(seq)) = (words.next(), words.next().and_then(|s| s.parse::<u64>().ok())) else {
            panic!("a malformed line from the child: {line:?}");
        };
        let last = committed.entry(room.to_owned()).or_default();
        assert!(seq > *last, "{room}: {seq} reported after {last}");
        *last = seq;
        true
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = 0;
    while seen < KILL_AFTER {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = received.recv_timeout(left).unwrap_or_else(|e| {
            let _ = child.kill();
            panic!("the child reported {seen} batches, then nothing within the deadline: {e}")
        });
        seen += usize::from(record(line));
    }
    child.kill().expect("SIGKILL the child");
    let status = child.wait().expect("the child's exit");
    assert_eq!(status.signal(), Some(9), "the child was killed mid-stream, not finished: {status:?}");
    for line in received.iter() {
        record(line); // what it printed before it died
    }
    reader.join().expect("the reader thread");
}

/// Kills the child [`ROUNDS`] times on one database, each time after it went on from where the
/// last one stood; after each, every record it reported is there.
fn killed_mid_stream_loses_nothing(sync: &str) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("crash.db");
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
    let mut committed: BTreeMap<String, u64> = BTreeMap::new();
    for round in 1..=ROUNDS {
        run_and_kill(&path, sync, &mut committed);
        assert_eq!(committed.len(), ROOMS, "round {round}: every room reported: {committed:?}");
        runtime.block_on(async {
            let store = SqliteOptions::new().synchronous(synchronous(sync)).open(&path).await.expect("reopen");
            for (room, last) in &committed {
                let stored = all(&store, room, "e").await;
                let what = format!("round {round}, {room}: {} stored, {last} reported", stored.len());
                assert!(stored.len() as u64 >= *last, "{what}");
                assert_eq!(stored[..*last as usize], records(room, "e", 1..=*last)[..], "{what}");
                let latest = store.latest(&chat_testkit::store_conformance::room(room)).await.expect("latest");
                assert!(latest.as_ref().is_some_and(|p| p.seq >= *last), "{what}: latest {latest:?}");
            }
            store.close().await;
        });
    }
}

#[test]
fn killed_mid_stream_loses_nothing_full() {
    killed_mid_stream_loses_nothing("full");
}

#[test]
fn killed_mid_stream_loses_nothing_normal() {
    killed_mid_stream_loses_nothing("normal");
}
