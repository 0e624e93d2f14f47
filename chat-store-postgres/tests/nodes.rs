//! Several nodes on one database: two stores (two pools, as two engine processes have) append
//! the same deliveries at the same moment and each message is stored once; retention running
//! on one node while another appends keeps every room contiguous up to where it stands.

mod common;

use std::time::Duration;

use chat_core::{Record, Retention, RoomName, Store};
use chat_store_postgres::PostgresStore;
use common::*;

const ROOMS: usize = 12;
const PER_ROOM: u64 = 60;

/// Every room's records, one batch per group of seqs; `reverse` walks rooms backwards, so the
/// two nodes' batches name the same rooms in opposite orders.
fn batches(size: u64, reverse: bool) -> Vec<Vec<Record>> {
    let mut rooms: Vec<String> = (0..ROOMS).map(|i| format!("room-{i:02}")).collect();
    if reverse {
        rooms.reverse();
    }
    (1..=PER_ROOM)
        .collect::<Vec<_>>()
        .chunks(size as usize)
        .map(|seqs| seqs.iter().flat_map(|&s| rooms.iter().map(move |r| rec(r, "e", s))).collect())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_storing_the_same_deliveries_store_each_once() {
    let f = fixture().await;
    let other = PostgresStore::connect(&f.db.url()).await.unwrap();
    let node = |store: PostgresStore, batches: Vec<Vec<Record>>| {
        tokio::spawn(async move {
            for batch in batches {
                assert!(store.append(&batch).await.unwrap().is_empty(), "no conflicts: the records are the same");
            }
        })
    };
    let (a, b, c) = tokio::join!(
        node(f.store.clone(), batches(3, false)),
        node(other.clone(), batches(4, true)),
        node(other.clone(), batches(7, false)),
    );
    a.unwrap();
    b.unwrap();
    c.unwrap();
    let db = client(&f.db.url()).await;
    assert_eq!(count(&db, "SELECT 1 FROM chat_messages").await, (ROOMS as u64 * PER_ROOM) as i64);
    for i in 0..ROOMS {
        let name = format!("room-{i:02}");
        let page = f.store.page(&room(&name), "e", q(None, None, 1_000)).await.unwrap();
        assert_eq!(page, recs(&name, "e", 1..=PER_ROOM));
        let latest = other.latest(&room(&name)).await.unwrap().unwrap();
        assert_eq!((&*latest.epoch, latest.seq), ("e", PER_ROOM));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_beside_appends_keeps_rooms_contiguous() {
    let f = fixture().await;
    let other = PostgresStore::builder(&f.db.url()).chunk(5).connect().await.unwrap();
    let appender = {
        let store = f.store.clone();
        tokio::spawn(async move {
            for batch in batches(1, false) {
                store.append(&batch).await.unwrap();
                // A late resend of an older delivery, as a second node would make.
                let resend: Vec<Record> =
                    batch.iter().map(|r| rec(r.room.as_str(), "e", r.seq.saturating_sub(15).max(1))).collect();
                store.append(&resend).await.unwrap();
            }
        })
    };
    let keep = |_: &RoomName| Retention { max_age: Duration::from_secs(3600), max_count: 10 };
    let mut deleted = 0;
    while !appender.is_finished() {
        deleted += other.retain(&keep, 0).await.unwrap();
    }
    appender.await.unwrap();
    deleted += other.retain(&keep, 0).await.unwrap();
    assert_eq!(deleted, ROOMS as u64 * (PER_ROOM - 10));
    for i in 0..ROOMS {
        let name = format!("room-{i:02}");
        let page = f.store.page(&room(&name), "e", q(None, None, 1_000)).await.unwrap();
        assert_eq!(seqs(&page), (PER_ROOM - 9..=PER_ROOM).collect::<Vec<_>>(), "{name}");
        assert_eq!(f.store.latest(&room(&name)).await.unwrap().map(|p| p.seq), Some(PER_ROOM));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_retention_and_appends_side_by_side() {
    let f = fixture().await;
    let other = PostgresStore::builder(&f.db.url()).chunk(7).connect().await.unwrap();
    let by = |seq: u64| if seq.is_multiple_of(2) { "bob" } else { "alice" };
    let batch = |seqs: std::ops::RangeInclusive<u64>| -> Vec<Record> {
        seqs.flat_map(|s| {
            (0..ROOMS).map(move |i| Record { from: by(s).into(), ..rec(&format!("room-{i:02}"), "e", s) })
        })
        .collect()
    };
    f.store.append(&batch(1..=40)).await.unwrap();
    let keep = |_: &RoomName| Retention { max_age: Duration::from_secs(3600), max_count: 15 };
    let more = batch(41..=PER_ROOM);
    let (retained, erased, appended) =
        tokio::join!(other.retain(&keep, 0), other.erase_user("bob"), f.store.append(&more));
    let (retained, erased) = (retained.unwrap(), erased.unwrap());
    appended.unwrap();
    let retained = retained + f.store.retain(&keep, 0).await.unwrap();
    let erased = erased + f.store.erase_user("bob").await.unwrap();
    assert_eq!(retained, ROOMS as u64 * (PER_ROOM - 15));
    assert!(erased <= ROOMS as u64 * PER_ROOM / 2);
    for i in 0..ROOMS {
        let page = f.store.page(&room(&format!("room-{i:02}")), "e", q(None, None, 100)).await.unwrap();
        assert_eq!(seqs(&page), (PER_ROOM - 14..=PER_ROOM).collect::<Vec<_>>());
        for r in page {
            assert_eq!(r.body.is_none(), &*r.from == "bob", "{r:?}");
        }
    }
}
