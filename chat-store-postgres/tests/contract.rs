//! The `Store` contract on PostgreSQL, case by case: history pages and their bounds, epochs kept
//! apart, idempotent appends and conflicts, where a room stands, retention by count and by age,
//! and erasure. Each test has a database of its own.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chat_core::{Retention, RoomName, Store};
use chat_store_postgres::PostgresStore;
use chat_testkit::PgDatabase;
use common::*;

fn keep(max_count: u64, max_age: Duration) -> impl Fn(&RoomName) -> Retention + Send + Sync {
    move |_: &RoomName| Retention { max_age, max_count }
}

const FOREVER: Duration = Duration::from_secs(1 << 40);

#[tokio::test]
async fn pages_honour_before_after_and_limit() {
    let f = fixture().await;
    assert_eq!(f.store.append(&recs("r", "e", 1..=10)).await.unwrap(), Vec::<usize>::new());
    let r = room("r");
    let page = |before, after, limit| {
        let (store, r) = (&f.store, &r);
        async move { seqs(&store.page(r, "e", q(before, after, limit)).await.unwrap()) }
    };
    // Neither bound: the newest `limit`.
    assert_eq!(page(None, None, 3).await, [8, 9, 10]);
    assert_eq!(page(None, None, 100).await, (1..=10).collect::<Vec<_>>());
    // `before` alone: the newest `limit` below it (exclusive).
    assert_eq!(page(Some(5), None, 3).await, [2, 3, 4]);
    assert_eq!(page(Some(3), None, 10).await, [1, 2]);
    assert_eq!(page(Some(1), None, 10).await, Vec::<u64>::new());
    assert_eq!(page(Some(u64::MAX), None, 2).await, [9, 10]);
    // `after` alone: the oldest `limit` above it (exclusive).
    assert_eq!(page(None, Some(5), 3).await, [6, 7, 8]);
    assert_eq!(page(None, Some(0), 2).await, [1, 2]);
    assert_eq!(page(None, Some(9), 10).await, [10]);
    assert_eq!(page(None, Some(10), 10).await, Vec::<u64>::new());
    assert_eq!(page(None, Some(u64::MAX), 10).await, Vec::<u64>::new());
    // Both: the oldest `limit` strictly between.
    assert_eq!(page(Some(6), Some(2), 10).await, [3, 4, 5]);
    assert_eq!(page(Some(6), Some(2), 2).await, [3, 4]);
    assert_eq!(page(Some(3), Some(2), 10).await, Vec::<u64>::new());
    assert_eq!(page(Some(2), Some(5), 10).await, Vec::<u64>::new());
    // Limit 0.
    assert_eq!(page(None, None, 0).await, Vec::<u64>::new());
    assert_eq!(page(Some(5), Some(1), 0).await, Vec::<u64>::new());
    // Every field comes back as appended.
    let got = f.store.page(&r, "e", q(None, Some(3), 1)).await.unwrap();
    assert_eq!(got, vec![rec("r", "e", 4)]);
    // Another room, another epoch, or nothing: empty.
    assert!(f.store.page(&room("other"), "e", q(None, None, 10)).await.unwrap().is_empty());
    assert!(f.store.page(&r, "e2", q(None, None, 10)).await.unwrap().is_empty());
}

#[tokio::test]
async fn bodies_come_back_byte_for_byte() {
    let f = fixture().await;
    let mut odd = rec("r", "e", 1);
    odd.body = Some(Bytes::from_static(b"{\"t\":\"\\u0000 \xc3\xa9 \xf0\x9f\x92\xac\"}"));
    odd.from = Arc::from("u\u{e9}");
    let mut empty = rec("r", "e", 2);
    empty.body = Some(Bytes::new());
    f.store.append(&[odd.clone(), empty.clone()]).await.unwrap();
    assert_eq!(f.store.page(&room("r"), "e", q(None, None, 10)).await.unwrap(), vec![odd, empty]);
}

#[tokio::test]
async fn epochs_and_rooms_are_kept_apart() {
    let f = fixture().await;
    let mut batch = recs("r", "e1", 1..=3);
    batch.extend(recs("r", "e2", 1..=2));
    batch.extend(recs("s", "e1", 1..=4));
    f.store.append(&batch).await.unwrap();
    assert_eq!(seqs(&f.store.page(&room("r"), "e1", q(None, None, 10)).await.unwrap()), [1, 2, 3]);
    assert_eq!(seqs(&f.store.page(&room("r"), "e2", q(None, None, 10)).await.unwrap()), [1, 2]);
    assert_eq!(seqs(&f.store.page(&room("s"), "e1", q(None, None, 10)).await.unwrap()), [1, 2, 3, 4]);
    let page = f.store.page(&room("r"), "e2", q(None, None, 10)).await.unwrap();
    assert!(page.iter().all(|r| &*r.epoch == "e2" && r.room.as_str() == "r"));
}

#[tokio::test]
async fn appends_are_idempotent() {
    let f = fixture().await;
    let c = client(&f.db.url()).await;
    f.store.append(&recs("r", "e", 1..=5)).await.unwrap();
    // The same batch again, an overlapping one, and a batch repeating a record within itself.
    assert!(f.store.append(&recs("r", "e", 1..=5)).await.unwrap().is_empty());
    assert!(f.store.append(&recs("r", "e", 4..=8)).await.unwrap().is_empty());
    assert!(f.store.append(&[rec("r", "e", 9), rec("r", "e", 9)]).await.unwrap().is_empty());
    // A resend may carry another timestamp (a keyed publish answered as a duplicate): skipped,
    // the stored one stays.
    let mut later = rec("r", "e", 2);
    later.ts += 777;
    assert!(f.store.append(&[later]).await.unwrap().is_empty());
    assert_eq!(count(&c, "SELECT 1 FROM chat_messages").await, 9);
    assert_eq!(f.store.page(&room("r"), "e", q(Some(3), None, 1)).await.unwrap(), vec![rec("r", "e", 2)]);
    assert!(f.store.append(&[]).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_record_that_differs_from_the_stored_one_is_a_conflict() {
    let f = fixture().await;
    f.store.append(&recs("r", "e", 1..=3)).await.unwrap();
    let mut other_sender = rec("r", "e", 3);
    other_sender.from = Arc::from("mallory");
    let mut other_body = rec("r", "e", 2);
    other_body.body = Some(Bytes::from_static(b"{\"n\":\"else\"}"));
    let mut same_but_ts = rec("r", "e", 1);
    same_but_ts.ts = 5;
    let mut new_then_differs = rec("r", "e", 5);
    new_then_differs.body = Some(Bytes::from_static(b"{\"n\":\"second\"}"));
    let batch = vec![
        rec("r", "e", 4), // 0: new
        other_sender,     // 1: conflict
        same_but_ts,      // 2: a resend
        other_body,       // 3: conflict
        rec("r", "e", 5), // 4: new
        new_then_differs, // 5: conflicts with 4, stored a moment before
        rec("r", "e", 5), // 6: a resend of 4
        rec("s", "e", 1), // 7: another room, new
    ];
    assert_eq!(f.store.append(&batch).await.unwrap(), vec![1, 3, 5]);
    // The stored ones stayed; the rest of the batch is committed.
    assert_eq!(f.store.page(&room("r"), "e", q(None, None, 10)).await.unwrap(), recs("r", "e", 1..=5));
    assert_eq!(f.store.page(&room("s"), "e", q(None, None, 10)).await.unwrap(), recs("s", "e", 1..=1));
    assert_eq!(f.store.latest(&room("r")).await.unwrap().map(|p| p.seq), Some(5));
}

#[tokio::test]
async fn of_two_records_under_one_seq_in_a_batch_the_first_is_stored() {
    let f = fixture().await;
    f.store.append(&recs("old", "e", 1..=3)).await.unwrap();
    // Stored and new rooms and epochs mixed, each new seq twice with different bodies.
    let mut batch = Vec::new();
    let mut expected = Vec::new();
    for seq in 4..=9 {
        for (room, epoch) in [("old", "e"), ("old", "f"), ("new", "e"), ("new2", "g")] {
            let first = rec(room, epoch, seq);
            let mut second = first.clone();
            second.body = Some(Bytes::from(format!("{{\"second\":{seq}}}")));
            expected.push(batch.len() + 1);
            batch.push(first);
            batch.push(second);
        }
    }
    assert_eq!(f.store.append(&batch).await.unwrap(), expected);
    for (room, epoch) in [("old", "f"), ("new", "e"), ("new2", "g")] {
        assert_eq!(f.store.page(&self::room(room), epoch, q(None, None, 10)).await.unwrap(), recs(room, epoch, 4..=9));
    }
    assert_eq!(f.store.page(&room("old"), "e", q(None, None, 10)).await.unwrap(), recs("old", "e", 1..=9));
}

#[tokio::test]
async fn an_erased_message_conflicts_only_by_its_sender() {
    let f = fixture().await;
    f.store.append(&recs("r", "e", 1..=2)).await.unwrap();
    assert!(f.store.erase(&room("r"), "e", 1).await.unwrap());
    // Its body is gone, so a resend cannot be told from another message by it: skipped, and
    // the message stays erased.
    assert!(f.store.append(&[rec("r", "e", 1)]).await.unwrap().is_empty());
    let mut other = rec("r", "e", 1);
    other.from = Arc::from("bob");
    assert_eq!(f.store.append(&[other]).await.unwrap(), vec![0]);
    assert_eq!(f.store.page(&room("r"), "e", q(Some(2), None, 1)).await.unwrap()[0].body, None);
}

#[tokio::test]
async fn latest_is_the_epoch_that_began_last() {
    let f = fixture().await;
    let r = room("r");
    let latest = || async { f.store.latest(&r).await.unwrap().map(|p| (p.epoch.to_string(), p.seq)) };
    assert_eq!(latest().await, None);
    f.store.append(&recs("r", "e1", 1..=5)).await.unwrap();
    assert_eq!(latest().await, Some(("e1".into(), 5)));
    // Out of order within the epoch: the highest seq stored.
    f.store.append(&recs("r", "e1", [8, 6])).await.unwrap();
    assert_eq!(latest().await, Some(("e1".into(), 8)));
    f.store.append(&recs("r", "e2", 1..=2)).await.unwrap();
    assert_eq!(latest().await, Some(("e2".into(), 2)));
    // A late append of the earlier epoch is stored but does not move the room back.
    f.store.append(&recs("r", "e1", 9..=12)).await.unwrap();
    assert_eq!(latest().await, Some(("e2".into(), 2)));
    assert_eq!(seqs(&f.store.page(&r, "e1", q(None, Some(8), 10)).await.unwrap()), [9, 10, 11, 12]);
    // Nor does one batch mixing it with the current epoch.
    let mut batch = recs("r", "e2", [3]);
    batch.extend(recs("r", "e1", [13]));
    f.store.append(&batch).await.unwrap();
    assert_eq!(latest().await, Some(("e2".into(), 3)));
    // A new epoch in a batch with an old one moves it, wherever it sits in the batch.
    let mut batch = recs("r", "e3", [1]);
    batch.extend(recs("r", "e1", [14]));
    f.store.append(&batch).await.unwrap();
    assert_eq!(latest().await, Some(("e3".into(), 1)));
    // Two epochs first seen in one batch: the one whose first record comes later began last.
    let mut batch = recs("r", "e5", [1, 2]);
    batch.extend(recs("r", "e4", [1]));
    f.store.append(&batch).await.unwrap();
    assert_eq!(latest().await, Some(("e4".into(), 1)));
    // Rooms stand apart.
    assert_eq!(f.store.latest(&room("s")).await.unwrap(), None);
}

#[tokio::test]
async fn retention_by_count_keeps_the_newest() {
    let f = fixture().await;
    let mut batch = recs("a", "e", 1..=10);
    batch.extend(recs("b", "e", 1..=2));
    f.store.append(&batch).await.unwrap();
    assert_eq!(f.store.retain(&keep(3, FOREVER), 0).await.unwrap(), 7);
    assert_eq!(seqs(&f.store.page(&room("a"), "e", q(None, None, 10)).await.unwrap()), [8, 9, 10]);
    assert_eq!(seqs(&f.store.page(&room("b"), "e", q(None, None, 10)).await.unwrap()), [1, 2]);
    assert_eq!(f.store.latest(&room("a")).await.unwrap().map(|p| p.seq), Some(10));
    assert_eq!(f.store.retain(&keep(3, FOREVER), 0).await.unwrap(), 0);
    // Per room, as the policy says.
    let policy = |r: &RoomName| Retention { max_age: FOREVER, max_count: if r.as_str() == "a" { 1 } else { 0 } };
    assert_eq!(f.store.retain(&policy, 0).await.unwrap(), 4);
    assert_eq!(seqs(&f.store.page(&room("a"), "e", q(None, None, 10)).await.unwrap()), [10]);
    assert!(f.store.page(&room("b"), "e", q(None, None, 10)).await.unwrap().is_empty());
    assert_eq!(f.store.latest(&room("b")).await.unwrap().map(|p| p.seq), Some(2));
}

#[tokio::test]
async fn retention_by_age_deletes_from_the_oldest_end_only() {
    let f = fixture().await;
    // ts = 1,000 × seq; at now = 10,000 with a max age of 4.5 s, seqs 1-5 are expired.
    f.store.append(&recs("a", "e", 1..=10)).await.unwrap();
    let mut skewed = recs("b", "e", 1..=10);
    skewed[2].ts = 20_000; // seq 3 came from a node whose clock runs ahead
    f.store.append(&skewed).await.unwrap();
    let policy = keep(1_000, Duration::from_millis(4_500));
    assert_eq!(f.store.retain(&policy, 10_000).await.unwrap(), 5 + 2);
    assert_eq!(seqs(&f.store.page(&room("a"), "e", q(None, None, 20)).await.unwrap()), [6, 7, 8, 9, 10]);
    // 4 and 5 are expired, but deleting them would leave 3 alone with a hole below it.
    assert_eq!(seqs(&f.store.page(&room("b"), "e", q(None, None, 20)).await.unwrap()), (3..=10).collect::<Vec<_>>());
    // Exactly max_age old is not older than max_age.
    assert_eq!(f.store.retain(&keep(1_000, Duration::from_millis(4_000)), 10_000).await.unwrap(), 0);
    assert_eq!(f.store.retain(&keep(1_000, Duration::from_millis(3_999)), 10_000).await.unwrap(), 1);
    // Both rules at once: whichever deletes more.
    assert_eq!(f.store.retain(&keep(2, Duration::from_millis(3_500)), 10_000).await.unwrap(), 2 + 6);
    assert_eq!(seqs(&f.store.page(&room("a"), "e", q(None, None, 20)).await.unwrap()), [9, 10]);
    assert_eq!(seqs(&f.store.page(&room("b"), "e", q(None, None, 20)).await.unwrap()), [9, 10]);
}

#[tokio::test]
async fn a_room_whose_messages_all_expired_still_knows_where_it_stood() {
    let f = fixture().await;
    let r = room("r");
    f.store.append(&recs("r", "e", 1..=10)).await.unwrap();
    assert_eq!(f.store.retain(&keep(1_000, Duration::from_secs(1)), 1_000_000).await.unwrap(), 10);
    assert!(f.store.page(&r, "e", q(None, None, 100)).await.unwrap().is_empty());
    let latest = f.store.latest(&r).await.unwrap().expect("the room's position");
    assert_eq!((&*latest.epoch, latest.seq), ("e", 10));
    // A late resend of what was deleted does not come back (it would sit below a hole).
    assert!(f.store.append(&recs("r", "e", 3..=10)).await.unwrap().is_empty());
    assert!(f.store.page(&r, "e", q(None, None, 100)).await.unwrap().is_empty());
    // The room goes on from there.
    f.store.append(&recs("r", "e", 11..=12)).await.unwrap();
    assert_eq!(seqs(&f.store.page(&r, "e", q(None, None, 100)).await.unwrap()), [11, 12]);
    assert_eq!(f.store.latest(&r).await.unwrap().map(|p| p.seq), Some(12));
}

#[tokio::test]
async fn retention_walks_rooms_in_pages_and_deletes_in_chunks() {
    let db = PgDatabase::create();
    let store = PostgresStore::builder(&db.url()).retention_page(2).chunk(3).connect().await.unwrap();
    let names = ["r1", "r2", "r3", "r4", "r5"];
    let batch: Vec<_> = names.iter().flat_map(|n| recs(n, "e", 1..=20)).collect();
    store.append(&batch).await.unwrap();
    assert_eq!(store.retain(&keep(4, FOREVER), 0).await.unwrap(), 5 * 16);
    for n in names {
        assert_eq!(seqs(&store.page(&room(n), "e", q(None, None, 100)).await.unwrap()), [17, 18, 19, 20]);
    }
    // By age, with more expired rows than one planning window (3) shows.
    let batch: Vec<_> = names.iter().flat_map(|n| recs(n, "e", 21..=30)).collect();
    store.append(&batch).await.unwrap();
    assert_eq!(store.retain(&keep(1_000, Duration::from_millis(2_500)), 30_000).await.unwrap(), 5 * 11);
    for n in names {
        assert_eq!(seqs(&store.page(&room(n), "e", q(None, None, 100)).await.unwrap()), [28, 29, 30]);
    }
}

#[tokio::test]
async fn retention_counts_a_room_across_its_epochs_newest_first() {
    let f = fixture().await;
    let r = room("r");
    f.store.append(&recs("r", "old", 1..=5)).await.unwrap();
    f.store.append(&recs("r", "new", 1..=3)).await.unwrap();
    assert_eq!(f.store.retain(&keep(5, FOREVER), 0).await.unwrap(), 3);
    assert_eq!(seqs(&f.store.page(&r, "old", q(None, None, 10)).await.unwrap()), [4, 5]);
    assert_eq!(seqs(&f.store.page(&r, "new", q(None, None, 10)).await.unwrap()), [1, 2, 3]);
    assert_eq!(f.store.retain(&keep(2, FOREVER), 0).await.unwrap(), 3);
    assert!(f.store.page(&r, "old", q(None, None, 10)).await.unwrap().is_empty());
    assert_eq!(seqs(&f.store.page(&r, "new", q(None, None, 10)).await.unwrap()), [2, 3]);
    assert_eq!(f.store.latest(&r).await.unwrap().map(|p| (p.epoch.to_string(), p.seq)), Some(("new".into(), 3)));
}

#[tokio::test]
async fn concurrent_retention_deletes_each_message_once() {
    let f = fixture().await;
    let other = PostgresStore::builder(&f.db.url()).chunk(7).connect().await.unwrap();
    let batch: Vec<_> = (0..20).flat_map(|i| recs(&format!("r{i}"), "e", 1..=50)).collect();
    f.store.append(&batch).await.unwrap();
    let policy = keep(10, FOREVER);
    let (a, b, c) = tokio::join!(f.store.retain(&policy, 0), other.retain(&policy, 0), f.store.retain(&policy, 0));
    assert_eq!(a.unwrap() + b.unwrap() + c.unwrap(), 20 * 40);
    for i in 0..20 {
        let page = f.store.page(&room(&format!("r{i}")), "e", q(None, None, 100)).await.unwrap();
        assert_eq!(seqs(&page), (41..=50).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn erase_leaves_a_tombstone() {
    let f = fixture().await;
    let r = room("r");
    f.store.append(&recs("r", "e", 1..=3)).await.unwrap();
    assert!(f.store.erase(&r, "e", 2).await.unwrap());
    let page = f.store.page(&r, "e", q(None, None, 10)).await.unwrap();
    assert_eq!(seqs(&page), [1, 2, 3]);
    assert_eq!(page[1], Record { body: None, ..rec("r", "e", 2) });
    assert!(page[0].body.is_some() && page[2].body.is_some());
    // Erasing it again: the store still holds it.
    assert!(f.store.erase(&r, "e", 2).await.unwrap());
    // What it does not hold.
    assert!(!f.store.erase(&r, "e", 4).await.unwrap());
    assert!(!f.store.erase(&r, "other", 2).await.unwrap());
    assert!(!f.store.erase(&room("s"), "e", 2).await.unwrap());
    assert!(!f.store.erase(&r, "e", u64::MAX).await.unwrap());
    assert_eq!(f.store.latest(&r).await.unwrap().map(|p| p.seq), Some(3));
}

#[tokio::test]
async fn erase_user_erases_every_message_of_theirs_everywhere() {
    let db = PgDatabase::create();
    let store = PostgresStore::builder(&db.url()).chunk(2).connect().await.unwrap();
    let mut batch = Vec::new();
    for (room, epoch) in [("r", "e1"), ("r", "e2"), ("s", "e1")] {
        for seq in 1..=4 {
            let mut r = rec(room, epoch, seq);
            if seq % 2 == 0 {
                r.from = Arc::from("bob");
            }
            batch.push(r);
        }
    }
    store.append(&batch).await.unwrap();
    assert_eq!(store.erase_user("bob").await.unwrap(), 6);
    for (room, epoch) in [("r", "e1"), ("r", "e2"), ("s", "e1")] {
        let page = store.page(&self::room(room), epoch, q(None, None, 10)).await.unwrap();
        assert_eq!(seqs(&page), [1, 2, 3, 4], "tombstones keep their place");
        for r in page {
            assert_eq!(r.body.is_none(), &*r.from == "bob", "{r:?}");
        }
    }
    assert_eq!(store.erase_user("bob").await.unwrap(), 0);
    assert_eq!(store.erase_user("nobody").await.unwrap(), 0);
    assert_eq!(store.erase_user("alice").await.unwrap(), 6);
}

use chat_core::Record;
