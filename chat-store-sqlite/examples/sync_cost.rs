//! What `Synchronous::Full` costs against `Normal` on this machine's disk: commits per second
//! for one-record appends one after another, for 100-record batches, and for 16 tasks
//! appending one record each at once (the writer commits what arrives together in one
//! transaction). A measurement tool, not a test: the figures in the crate documentation come
//! from `cargo run --release -p chat-store-sqlite --example sync_cost [DIR]` (DIR: where the
//! database files go, default the system's temporary directory; put it on the disk you mean).

use std::sync::Arc;
use std::time::Instant;

use chat_core::{Record, RoomName, Store};
use chat_store_sqlite::{SqliteOptions, Synchronous};

fn record(room: &RoomName, seq: u64) -> Record {
    Record {
        room: room.clone(),
        epoch: Arc::from("e"),
        seq,
        from: Arc::from("user"),
        ts: 1_700_000_000_000 + seq,
        body: Some(format!(r#"{{"text":"message number {seq} with a typical short body"}}"#).into()),
        key: None,
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let base = std::env::args().nth(1).map_or_else(std::env::temp_dir, Into::into);
    println!(
        "{:<8} {:>22} {:>24} {:>26}",
        "mode", "1-record appends/s", "records/s, batches of 100", "records/s, 16 tasks at once"
    );
    for (name, mode) in [("FULL", Synchronous::Full), ("NORMAL", Synchronous::Normal)] {
        let dir = tempfile::tempdir_in(&base)?;
        let store = Arc::new(SqliteOptions::new().synchronous(mode).open(dir.path().join("cost.db")).await?);

        let room = RoomName::new("single")?;
        let n = 2_000;
        let start = Instant::now();
        for seq in 1..=n {
            store.append(&[record(&room, seq)]).await?;
        }
        let single = n as f64 / start.elapsed().as_secs_f64();

        let room = RoomName::new("batched")?;
        let batches = 200;
        let start = Instant::now();
        for b in 0..batches {
            let batch: Vec<Record> = (b * 100 + 1..=(b + 1) * 100).map(|seq| record(&room, seq)).collect();
            store.append(&batch).await?;
        }
        let batched = (batches * 100) as f64 / start.elapsed().as_secs_f64();

        let each = 500;
        let start = Instant::now();
        let tasks: Vec<_> = (0..16)
            .map(|t| {
                let store = store.clone();
                tokio::spawn(async move {
                    let room = RoomName::new(&format!("task-{t}")).expect("a room name");
                    for seq in 1..=each {
                        store.append(&[record(&room, seq)]).await.expect("append");
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await?;
        }
        let concurrent = (16 * each) as f64 / start.elapsed().as_secs_f64();
        println!("{name:<8} {single:>22.0} {batched:>24.0} {concurrent:>26.0}");
    }
    Ok(())
}
