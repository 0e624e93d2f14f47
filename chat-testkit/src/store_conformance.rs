//! The store conformance suite: what every [`Store`] implementation must do, written once and
//! run against each of them (SQLite in `chat-store-sqlite/tests/conformance.rs`).
//!
//! A store's test file implements [`StoreSubject`] (the store under test, fresh and empty) and
//! expands [`store_conformance!`](crate::store_conformance!) with a constructor; that makes one
//! test per case below: page bounds, epochs kept apart, idempotent appends, conflicting
//! appends, batches of many rooms, `latest` and epochs, retention by count (in every room) and
//! by age, erasing a message and a user's messages, concurrent appends, and a large room.
//!
//! Every case can fail: each was seen to catch a deliberately broken SQLite store (pages
//! not reversed or with inclusive bounds, `latest` following the last append or an earlier
//! epoch, a deleted message coming back, retention by age skipping over a young message or
//! counting per epoch, only the first rooms retained, `erase` always true, `erase_user`
//! matching prefixes or stopping after one chunk, conflicts missed or reported to the wrong
//! caller, a stored message overwritten).
//!
//! ```no_run
//! use chat_core::Store;
//! # struct MyStore;
//! # #[async_trait::async_trait]
//! # impl Store for MyStore {
//! #     async fn append(&self, _: &[chat_core::Record]) -> Result<Vec<usize>, chat_core::StoreError> { todo!() }
//! #     async fn page(&self, _: &chat_core::RoomName, _: &str, _: chat_core::broker::HistoryQuery)
//! #         -> Result<Vec<chat_core::Record>, chat_core::StoreError> { todo!() }
//! #     async fn latest(&self, _: &chat_core::RoomName)
//! #         -> Result<Option<chat_core::broker::Position>, chat_core::StoreError> { todo!() }
//! #     async fn retain(&self, _: &chat_core::store::RetentionPolicy, _: u64) -> Result<u64, chat_core::StoreError> { todo!() }
//! #     async fn erase(&self, _: &chat_core::RoomName, _: &str, _: u64) -> Result<bool, chat_core::StoreError> { todo!() }
//! #     async fn erase_user(&self, _: &str) -> Result<u64, chat_core::StoreError> { todo!() }
//! # }
//! # impl MyStore { async fn open_empty() -> MyStore { MyStore } }
//!
//! struct Subject(MyStore);
//!
//! impl chat_testkit::store_conformance::StoreSubject for Subject {
//!     fn store(&self) -> &dyn Store {
//!         &self.0
//!     }
//! }
//!
//! // In a test file: one #[tokio::test] per case, each on a fresh, empty store.
//! chat_testkit::store_conformance!(async { Subject(MyStore::open_empty().await) });
//! # fn main() {}
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chat_core::broker::{HistoryQuery, Position};
use chat_core::store::RetentionPolicy;
use chat_core::{Record, Retention, RoomName, Store};

/// A store under test.
pub trait StoreSubject: Send + Sync + 'static {
    /// The store: empty when the case starts, and used by nothing else.
    fn store(&self) -> &dyn Store;
}

/// Expands to one `#[tokio::test]` per store conformance case, each on a fresh subject made by
/// `$make` (an expression giving a future of a [`StoreSubject`]).
#[macro_export]
macro_rules! store_conformance {
    ($make:expr) => {
        $crate::store_conformance!(@cases $make;
            page_bounds, epochs_are_kept_apart, append_is_idempotent, append_reports_conflicts, batch_of_many_rooms,
            latest_follows_the_current_epoch, retention_by_count, retention_reaches_every_room, retention_by_age,
            erase_leaves_a_tombstone, erase_user_across_rooms, concurrent_appends, large_room, keys_are_kept);
    };
    (@cases $make:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let subject: ::std::sync::Arc<dyn $crate::store_conformance::StoreSubject> =
                    ::std::sync::Arc::new($make.await);
                $crate::store_conformance::$case(subject).await;
            }
        )*
    };
}

/// The test room `name`.
pub fn room(name: &str) -> RoomName {
    RoomName::new(name).expect("a valid room name")
}

/// The record `seq` of `room` in `epoch`: sent by `u<seq % 3>` at `1_000 + seq` ms, its body
/// naming all three, so that a record read back under the wrong room, epoch or seq shows; an
/// even seq is sent with idempotency key `k<seq>`, an odd one without.
pub fn record(room_name: &str, epoch: &str, seq: u64) -> Record {
    Record {
        room: room(room_name),
        epoch: Arc::from(epoch),
        seq,
        from: Arc::from(format!("u{}", seq % 3)),
        ts: 1_000 + seq,
        body: Some(Bytes::from(format!(r#"{{"room":"{room_name}","epoch":"{epoch}","seq":{seq}}}"#))),
        key: seq.is_multiple_of(2).then(|| Arc::from(format!("k{seq}"))),
    }
}

/// What `append` returns when nothing conflicts.
pub const NO_CONFLICT: Vec<usize> = Vec::new();

/// Records `seqs` of `room` in `epoch` (see [`record`]).
pub fn records(room_name: &str, epoch: &str, seqs: impl IntoIterator<Item = u64>) -> Vec<Record> {
    seqs.into_iter().map(|seq| record(room_name, epoch, seq)).collect()
}

/// Appends `batch`, which must commit without conflicts; `what` names it in a failure.
pub async fn append(store: &dyn Store, batch: &[Record], what: &str) {
    let conflicts = store.append(batch).await.unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(conflicts, NO_CONFLICT, "{what}: unexpected conflicts");
}

/// A history query.
pub fn query(before: Option<u64>, after: Option<u64>, limit: usize) -> HistoryQuery {
    HistoryQuery { before, after, limit }
}

/// The page, which must be well formed: each record of `room` and `epoch`, seqs rising.
pub async fn page(store: &dyn Store, room_name: &str, epoch: &str, q: HistoryQuery) -> Vec<Record> {
    let got = store.page(&room(room_name), epoch, q).await.expect("page");
    assert!(got.len() <= q.limit, "{room_name}/{epoch} {q:?}: {} records, more than the limit", got.len());
    for r in &got {
        assert_eq!((r.room.as_str(), &*r.epoch), (room_name, epoch), "{q:?}: a record of another room or epoch");
    }
    assert!(got.windows(2).all(|w| w[0].seq < w[1].seq), "{q:?}: not oldest first: {:?}", seqs_of(&got));
    got
}

/// The seqs of a page.
pub async fn seqs(store: &dyn Store, room_name: &str, epoch: &str, q: HistoryQuery) -> Vec<u64> {
    seqs_of(&page(store, room_name, epoch, q).await)
}

fn seqs_of(records: &[Record]) -> Vec<u64> {
    records.iter().map(|r| r.seq).collect()
}

/// Every record of `room` in `epoch`, read oldest first in pages of 100.
pub async fn all(store: &dyn Store, room_name: &str, epoch: &str) -> Vec<Record> {
    let mut got: Vec<Record> = Vec::new();
    loop {
        let after = got.last().map_or(0, |r| r.seq);
        let next = page(store, room_name, epoch, query(None, Some(after), 100)).await;
        match next.first() {
            None => return got,
            Some(first) => assert!(first.seq > after, "a page after {after} starts at {}", first.seq),
        }
        got.extend(next);
    }
}

async fn latest(store: &dyn Store, room_name: &str) -> Option<(String, u64)> {
    let position = store.latest(&room(room_name)).await.expect("latest");
    position.map(|Position { epoch, seq }| (epoch.to_string(), seq))
}

fn at(epoch: &str, seq: u64) -> Option<(String, u64)> {
    Some((epoch.to_owned(), seq))
}

/// Keeps `max_count` messages and anything younger than an hour.
fn keep(max_count: u64) -> Retention {
    Retention { max_age: Duration::from_secs(3600), max_count }
}

/// Keeps messages younger than `ms` milliseconds, whatever their number.
fn younger_than(ms: u64) -> Retention {
    Retention { max_age: Duration::from_millis(ms), max_count: u64::MAX }
}

/// Room by room retention: `rules` by name, else everything is kept.
fn policy(rules: &[(&str, Retention)]) -> impl Fn(&RoomName) -> Retention + Send + Sync + 'static {
    let rules: BTreeMap<String, Retention> = rules.iter().map(|(r, k)| ((*r).to_owned(), *k)).collect();
    move |r: &RoomName| rules.get(r.as_str()).copied().unwrap_or_else(|| keep(u64::MAX))
}

/// `now` for the records of [`record`]: all of them (ts up to 1_000 + seq) are younger than an
/// hour at this time.
const NOW: u64 = 10_000;

/// Bounds are exclusive; `after` pages from the oldest, otherwise from the newest; `limit`
/// caps the page; an empty or unknown room gives nothing; bounds past either end are fine.
pub async fn page_bounds(subject: Arc<dyn StoreSubject>) {
    let store = subject.store();
    append(store, &records("bounds", "e", 1..=10), "append").await;
    let s = |before, after, limit| seqs(store, "bounds", "e", query(before, after, limit));
    assert_eq!(s(None, None, 3).await, [8, 9, 10], "neither bound: the newest");
    assert_eq!(s(None, None, 50).await, (1..=10).collect::<Vec<_>>());
    assert_eq!(s(Some(9), None, 2).await, [7, 8], "before alone: the newest below it");
    assert_eq!(s(None, Some(6), 2).await, [7, 8], "after alone: the oldest above it");
    assert_eq!(s(Some(9), Some(2), 3).await, [3, 4, 5], "both: the oldest between them");
    assert_eq!(s(Some(9), Some(6), 50).await, [7, 8]);
    assert_eq!(s(Some(7), Some(6), 50).await, Vec::<u64>::new(), "nothing strictly between");
    assert_eq!(s(Some(3), Some(8), 50).await, Vec::<u64>::new(), "bounds the wrong way round");
    assert_eq!(s(Some(1), None, 50).await, Vec::<u64>::new());
    assert_eq!(s(Some(0), None, 50).await, Vec::<u64>::new());
    assert_eq!(s(None, Some(10), 50).await, Vec::<u64>::new());
    assert_eq!(s(None, Some(0), 4).await, [1, 2, 3, 4]);
    assert_eq!(s(None, None, 0).await, Vec::<u64>::new(), "limit 0");
    assert_eq!(s(Some(1_000), None, 2).await, [9, 10], "before past the newest");
    assert_eq!(s(Some(u64::MAX), None, 2).await, [9, 10], "the largest before");
    assert_eq!(s(None, Some(u64::MAX), 2).await, Vec::<u64>::new(), "the largest after");
    assert_eq!(s(Some(u64::MAX), Some(0), usize::MAX).await, (1..=10).collect::<Vec<_>>(), "the largest limit");
    let got = page(store, "bounds", "e", query(Some(6), Some(3), 10)).await;
    assert_eq!(got, records("bounds", "e", [4, 5]), "records come back as they were appended");
    assert_eq!(s(None, None, 10).await.len(), 10);
    assert_eq!(seqs(store, "never-used", "e", query(None, None, 10)).await, Vec::<u64>::new(), "an unknown room");
    assert_eq!(seqs(store, "bounds", "other", query(None, None, 10)).await, Vec::<u64>::new(), "an unknown epoch");
}

/// A room's epochs are separate sequences: a page of one never shows another's records, even
/// with the same seqs; the same epoch name in two rooms is two sequences.
pub async fn epochs_are_kept_apart(subject: Arc<dyn StoreSubject>) {
    let store = subject.store();
    append(store, &records("apart", "e1", 1..=5), "append").await;
    append(store, &records("apart", "e2", 1..=3), "append").await;
    append(store, &records("apart-too", "e1", 1..=2), "append").await;
    assert_eq!(page(store, "apart", "e1", query(None, None, 50)).await, records("apart", "e1", 1..=5));
    assert_eq!(page(store, "apart", "e2", query(None, None, 50)).await, records("apart", "e2", 1..=3));
    assert_eq!(page(store, "apart", "e1", query(None, Some(2), 2)).await, records("apart", "e1", [3, 4]));
    assert_eq!(page(store, "apart", "e2", query(Some(3), None, 50)).await, records("apart", "e2", 1..=2));
    assert_eq!(page(store, "apart-too", "e1", query(None, None, 50)).await, records("apart-too", "e1", 1..=2));
    assert_eq!(seqs(store, "apart", "e3", query(None, None, 50)).await, Vec::<u64>::new());
}

/// A record whose (room, epoch, seq) is stored with the same sender and body is skipped, even
/// with another `ts` (a resend), and the rest of its batch is committed; the same record twice
/// in one batch is stored once.
pub async fn append_is_idempotent(subject: Arc<dyn StoreSubject>) {
    let store = subject.store();
    assert_eq!(store.append(&records("idem", "e", 1..=3)).await.expect("append"), NO_CONFLICT);
    let mut resend = records("idem", "e", 2..=5);
    resend[0].ts = 1; // a resend's ts may differ
    resend.push(record("idem", "e", 5));
    let conflicts = store.append(&resend).await.expect("append a batch repeating stored records");
    assert_eq!(conflicts, NO_CONFLICT, "identical resends are not conflicts");
    assert_eq!(page(store, "idem", "e", query(None, None, 50)).await, records("idem", "e", 1..=5));
    assert_eq!(latest(store, "idem").await, at("e", 5));
    assert_eq!(store.append(&records("idem", "e", 1..=5)).await.expect("append"), NO_CONFLICT);
    assert_eq!(page(store, "idem", "e", query(None, None, 50)).await, records("idem", "e", 1..=5));
    assert_eq!(store.append(&[]).await.expect("an empty batch"), NO_CONFLICT);
}

/// A record whose (room, epoch, seq) is stored with another sender or body is a conflict: it
/// is not stored, the stored one stays, its position in the batch is returned (ascending, the
/// positions of this batch), and the rest of the batch is committed. Within one batch, the
/// first of two different records under one seq is stored and the second conflicts. An erased
/// message (a tombstone, no body) matches a resend of it from the same sender, which is
/// skipped: it stays erased.
pub async fn append_reports_conflicts(subject: Arc<dyn StoreSubject>) {
    let store = subject.store();
    append(store, &records("clash", "e", 1..=3), "append").await;
    let other_body = Record { body: Some(Bytes::from_static(b"\"another body\"")), ..record("clash", "e", 2) };
    let other_sender = Record { from: Arc::from("mallory"), ..record("clash", "e", 3) };
    let no_body = Record { body: None, ..record("clash", "e", 1) };
    let twice = Record { body: Some(Bytes::from_static(b"\"second\"")), ..record("clash", "e", 6) };
    let batch = vec![
        record("clash", "e", 4),       // 0: new
        other_body,                    // 1: conflict
        record("clash-other", "e", 1), // 2: new, another room
        record("clash", "e", 1),       // 3: identical
        other_sender,                  // 4: conflict
        record("clash", "e", 5),       // 5: new
        record("clash", "e", 6),       // 6: new
        twice,                         // 7: conflict with 6, in the same batch
        no_body,                       // 8: conflict: no body where one is stored
        record("clash", "f", 2),       // 9: new, another epoch
    ];
    let conflicts = store.append(&batch).await.expect("append a batch with conflicts");
    assert_eq!(conflicts, vec![1, 4, 7, 8]);
    assert_eq!(
        page(store, "clash", "e", query(None, None, 50)).await,
        records("clash", "e", 1..=6),
        "stored ones stay"
    );
    assert_eq!(page(store, "clash-other", "e", query(None, None, 50)).await, records("clash-other", "e", [1]));
    assert_eq!(page(store, "clash", "f", query(None, None, 50)).await, records("clash", "f", [2]));
    assert_eq!(latest(store, "clash").await, at("f", 2));
    let again = store.append(&batch[..2]).await.expect("append");
    assert_eq!(again, vec![1], "positions in this batch");
    assert!(store.erase(&room("clash"), "e", 5).await.expect("erase"));
    let resend = store.append(&records("clash", "e", [5, 7])).await.expect("append");
    assert_eq!(resend, Vec::<usize>::new(), "a tombstone matches a resend of its message");
    let got = page(store, "clash", "e", query(None, Some(4), 50)).await;
    assert_eq!((seqs_of(&got), got[0].body.clone()), (vec![5, 6, 7], None), "and it stays erased");
}

/// One batch may carry records of several rooms in any order; each room gets its own.
pub async fn batch_of_many_rooms(subject: Arc<dyn StoreSubject>) {
    let store = subject.store();
    let mut batch = Vec::new();
    for seq in [3, 1, 2, 4] {
        for r in ["mix-a", "mix-b", "mix-c"] {
            batch.push(record(r, &format!("{r}-epoch"), seq));
        }
    }
    batch.retain(|r| !(r.room.as_str() == "mix-c" && r.seq == 4));
    append(store, &batch, "append").await;
    for (r, last) in [("mix-a", 4), ("mix-b", 4), ("mix-c", 3)] {
        let epoch = format!("{r}-epoch");
        let got = page(store, r, &epoch, query(None, None, 50)).await;
        assert_eq!(got, records(r, &epoch, 1..=last), "{r}");
        assert_eq!(latest(store, r).await, at(&epoch, last), "{r}");
    }
}

/// `latest`: nothing for an unknown room; the highest seq stored in the current epoch; a new
/// epoch becomes current on its first append; a late append of an earlier epoch (even once all
/// its messages expired) does not move it back, and is still stored under its own epoch.
pub async fn latest_follows_the_current_epoch(subject: Arc<dyn StoreSubject>) {
    let store = subject.store();
    assert_eq!(latest(store, "latest").await, None, "an unknown room");
    append(store, &records("latest", "e1", 1..=3), "append").await;
    assert_eq!(latest(store, "latest").await, at("e1", 3));
    append(store, &records("latest", "e1", [5]), "append").await;
    append(store, &records("latest", "e1", [4]), "append").await;
    assert_eq!(latest(store, "latest").await, at("e1", 5), "the highest seq, not the last appended");
    append(store, &records("latest", "e2", [1]), "append").await;
    assert_eq!(latest(store, "latest").await, at("e2", 1), "a new epoch's first append");
    append(store, &records("latest", "e1", 6..=7), "a late append of e1").await;
    assert_eq!(latest(store, "latest").await, at("e2", 1), "a late append of an earlier epoch");
    assert_eq!(seqs(store, "latest", "e1", query(None, None, 50)).await, (1..=7).collect::<Vec<_>>());
    append(store, &records("latest", "e2", 2..=3), "append").await;
    assert_eq!(latest(store, "latest").await, at("e2", 3));
    let mut batch = records("latest", "e3", [1]);
    batch.extend(records("latest", "e2", [4]));
    append(store, &batch, "a new epoch and a late one in one batch").await;
    assert_eq!(latest(store, "latest").await, at("e3", 1));
    let deleted = store.retain(&policy(&[("latest", keep(0))]), NOW).await.expect("retain");
    assert_eq!(deleted, 7 + 4 + 1, "every message of the room");
    assert_eq!(latest(store, "latest").await, at("e3", 1), "latest survives retention");
    append(store, &records("latest", "e1", [8]), "a late append of an expired epoch").await;
    append(store, &records("latest", "e2", [5]), "a late append of an expired epoch").await;
    assert_eq!(latest(store, "latest").await, at("e3", 1), "an expired earlier epoch is still earlier");
    assert_eq!(latest(store, "other").await, None);
}

/// Retention by count, room by room through the policy: only the newest `max_count` of a
/// room stay (across its epochs, the current one newest), deleted from the oldest end so that
/// the seqs left are contiguous; a message retention deleted does not come back on a resend;
/// `latest` is untouched; the number deleted is returned, and a second pass deletes nothing.
pub async fn retention_by_count(subject: Arc<dyn StoreSubject>) {
    let store = subject.store();
    append(store, &records("count", "e", 1..=10), "append").await;
    append(store, &records("count-free", "e", 1..=10), "append").await;
    append(store, &records("count-epochs", "old", 1..=5), "append").await;
    append(store, &records("count-epochs", "new", 1..=3), "append").await;
    let rules = policy(&[("count", keep(3)), ("count-epochs", keep(4))]);
    let deleted = store.retain(&rules, NOW).await.expect("retain");
    assert_eq!(deleted, 7 + 4, "7 of `count` and 4 of `count-epochs`");
    assert_eq!(page(store, "count", "e", query(None, Some(0), 50)).await, records("count", "e", 8..=10));
    assert_eq!(seqs(store, "count-free", "e", query(None, None, 50)).await.len(), 10, "another room's policy");
    assert_eq!(seqs(store, "count-epochs", "old", query(None, None, 50)).await, [5], "the oldest epoch goes first");
    assert_eq!(seqs(store, "count-epochs", "new", query(None, None, 50)).await, [1, 2, 3]);
    assert_eq!(latest(store, "count").await, at("e", 10));
    assert_eq!(store.retain(&rules, NOW).await.expect("retain"), 0, "nothing more to delete");
    append(store, &records("count", "e", [2, 11]), "a resend of a deleted message and a new one").await;
    assert_eq!(seqs(store, "count", "e", query(None, None, 50)).await, [8, 9, 10, 11], "seqs stay contiguous");
    assert_eq!(store.retain(&rules, NOW).await.expect("retain"), 1);
    assert_eq!(seqs(store, "count", "e", query(None, None, 50)).await, [9, 10, 11]);
}

/// Retention reaches every room, however many there are, each by its own rule.
pub async fn retention_reaches_every_room(subject: Arc<dyn StoreSubject>) {
    const ROOMS: u64 = 700;
    let store = subject.store();
    let mut batch = Vec::new();
    for r in 0..ROOMS {
        batch.extend(records(&format!("many-{r}"), "e", 1..=3));
    }
    append(store, &batch, "append to many rooms").await;
    let rule = |r: &RoomName| {
        let n: u64 = r.as_str().trim_start_matches("many-").parse().unwrap_or(0);
        keep(n % 3)
    };
    let expected: u64 = (0..ROOMS).map(|n| 3 - n % 3).sum();
    assert_eq!(store.retain(&rule, NOW).await.expect("retain"), expected);
    for r in [0, 1, 2, 256, 257, 511, 512, 698, 699] {
        let name = format!("many-{r}");
        let kept: Vec<u64> = (4 - r % 3..=3).collect();
        assert_eq!(seqs(store, &name, "e", query(None, None, 10)).await, kept, "{name}");
        assert_eq!(latest(store, &name).await, at("e", 3), "{name}");
    }
}

/// Retention by age (`ts` older than `max_age` at `now_ms`), from the oldest end only: a
/// message the age rule would delete stays while an older one is kept; once every message of a
/// room expired, it has no messages and `latest` still knows where it stood.
pub async fn retention_by_age(subject: Arc<dyn StoreSubject>) {
    let store = subject.store();
    let mut skewed = records("age-skewed", "e", 1..=6);
    skewed[2].ts = 9_000; // seq 3 came from a server whose clock was ahead
    append(store, &records("age", "e", 1..=10), "append").await;
    append(store, &skewed, "append").await;
    append(store, &records("age-kept", "e", 1..=10), "append").await;
    // At 1_010 ms, keeping 5 ms: ts 1_005 (seq 5) is exactly 5 ms old and stays.
    let rules = policy(&[("age", younger_than(5)), ("age-skewed", younger_than(5))]);
    let deleted = store.retain(&rules, 1_010).await.expect("retain");
    assert_eq!(deleted, 4 + 2, "seqs 1-4 of `age`, 1-2 of `age-skewed`");
    assert_eq!(page(store, "age", "e", query(None, None, 50)).await, records("age", "e", 5..=10));
    assert_eq!(seqs(store, "age-skewed", "e", query(None, None, 50)).await, [3, 4, 5, 6], "oldest end only");
    assert_eq!(seqs(store, "age-kept", "e", query(None, None, 50)).await.len(), 10, "another room's policy");
    assert_eq!(store.retain(&rules, 1_010).await.expect("retain"), 0);
    let deleted = store.retain(&rules, 20_000).await.expect("retain");
    assert_eq!(deleted, 6 + 4, "everything has expired");
    assert_eq!(seqs(store, "age", "e", query(None, None, 50)).await, Vec::<u64>::new());
    assert_eq!(seqs(store, "age-skewed", "e", query(None, Some(0), 50)).await, Vec::<u64>::new());
    assert_eq!(latest(store, "age").await, at("e", 10), "latest survives");
    assert_eq!(latest(store, "age-skewed").await, at("e", 6));
    append(store, &records("age", "e", [11]), "append").await;
    assert_eq!(seqs(store, "age", "e", query(None, None, 50)).await, [11]);
    assert_eq!(latest(store, "age").await, at("e", 11));
}

/// Erasing a message leaves a tombstone: same seq, sender and time, no body, still in pages
/// and in `latest`; erasing twice still finds it; erasing what is not stored returns false.
pub async fn erase_leaves_a_tombstone(subject: Arc<dyn StoreSubject>) {
    let store = subject.store();
    append(store, &records("erase", "e", 1..=3), "append").await;
    append(store, &records("erase", "e2", 1..=3), "append").await;
    assert!(store.erase(&room("erase"), "e", 3).await.expect("erase"));
    let mut expected = records("erase", "e", 1..=3);
    expected[2].body = None;
    assert_eq!(page(store, "erase", "e", query(None, None, 50)).await, expected);
    assert_eq!(page(store, "erase", "e", query(Some(4), Some(2), 1)).await, expected[2..]);
    assert_eq!(page(store, "erase", "e2", query(None, None, 50)).await, records("erase", "e2", 1..=3), "e2 untouched");
    assert!(store.erase(&room("erase"), "e", 3).await.expect("erase"), "a tombstone is still held");
    assert_eq!(latest(store, "erase").await, at("e2", 3));
    assert!(!store.erase(&room("erase"), "e", 4).await.expect("erase"), "a seq not stored");
    assert!(!store.erase(&room("erase"), "e", 0).await.expect("erase"), "seq 0");
    assert!(!store.erase(&room("erase"), "e3", 1).await.expect("erase"), "an epoch not stored");
    assert!(!store.erase(&room("nowhere"), "e", 1).await.expect("erase"), "a room not stored");
    store.retain(&policy(&[("erase", keep(1))]), NOW).await.expect("retain");
    assert!(!store.erase(&room("erase"), "e2", 1).await.expect("erase"), "a message retention deleted");
}

/// A record's idempotency key is kept with it and read back with it, any text up to the
/// protocol's 128 bytes; a resend under another key (or none) does not replace it, and an
/// erased message keeps it (a resend of it must still find its seq).
pub async fn keys_are_kept(subject: Arc<dyn StoreSubject>) {
    let store = subject.store();
    let long: Arc<str> = Arc::from("é".repeat(64).as_str());
    let odd = Record { key: Some(Arc::from("a key: with 'quotes', \"more\" and spaces")), ..record("keys", "e", 1) };
    let batch = vec![odd, record("keys", "e", 2), Record { key: Some(long.clone()), ..record("keys", "e", 3) }];
    append(store, &batch, "append keyed records").await;
    assert_eq!(page(store, "keys", "e", query(None, None, 50)).await, batch);
    let resend =
        vec![Record { key: None, ..batch[0].clone() }, Record { key: Some(Arc::from("x")), ..batch[1].clone() }];
    assert_eq!(store.append(&resend).await.expect("append resends"), NO_CONFLICT, "a key is not identity");
    assert_eq!(page(store, "keys", "e", query(None, None, 50)).await, batch, "the first key stays");
    assert!(store.erase(&room("keys"), "e", 3).await.expect("erase"));
    let erased = page(store, "keys", "e", query(Some(4), Some(2), 1)).await;
    assert_eq!(erased, vec![Record { body: None, ..batch[2].clone() }], "a tombstone keeps its key");
}

/// Erasing a user erases every message of theirs, in every room and epoch, and nobody else's
/// (not even a user whose name starts the same), however many there are; it returns how many
/// it erased.
pub async fn erase_user_across_rooms(subject: Arc<dyn StoreSubject>) {
    let store = subject.store();
    let by = |r: &str, epoch: &str, seq, from: &str| Record { from: Arc::from(from), ..record(r, epoch, seq) };
    let batch = vec![
        by("gdpr-a", "e", 1, "alice"),
        by("gdpr-a", "e", 2, "bob"),
        by("gdpr-a", "e", 3, "alice"),
        by("gdpr-a", "e", 4, "alice2"),
        by("gdpr-a", "e", 5, "ali"),
        by("gdpr-b", "e", 1, "alice"),
        by("gdpr-b", "f", 1, "alice"),
        by("gdpr-b", "f", 2, "Alice"),
    ];
    append(store, &batch, "append").await;
    assert_eq!(store.erase_user("alice").await.expect("erase_user"), 4);
    let mut all_records = all(store, "gdpr-a", "e").await;
    all_records.extend(all(store, "gdpr-b", "e").await);
    all_records.extend(all(store, "gdpr-b", "f").await);
    assert_eq!(all_records.len(), batch.len(), "tombstones keep their place");
    for (got, sent) in all_records.iter().zip(&batch) {
        assert_eq!(
            (&got.room, &got.epoch, got.seq, &got.from, got.ts),
            (&sent.room, &sent.epoch, sent.seq, &sent.from, sent.ts)
        );
        let erased = &*sent.from == "alice";
        assert_eq!(got.body.is_none(), erased, "{}/{}/{} from {}", got.room, got.epoch, got.seq, got.from);
        if !erased {
            assert_eq!(got.body, sent.body);
        }
    }
    assert_eq!(store.erase_user("nobody").await.expect("erase_user"), 0);
    let prolific: Vec<Record> =
        (1..=2_500).map(|seq| Record { from: Arc::from("prolific"), ..record("gdpr-c", "e", seq) }).collect();
    append(store, &prolific, "append a prolific user's messages").await;
    append(store, &records("gdpr-c", "e", [2_501]), "append").await;
    assert_eq!(store.erase_user("prolific").await.expect("erase_user"), 2_500, "all of them, however many");
    let left = all(store, "gdpr-c", "e").await;
    assert_eq!(left.iter().filter(|r| r.body.is_none()).count(), 2_500);
    assert_eq!(left.last().map(|r| (r.seq, r.body.is_some())), Some((2_501, true)));
}

/// Eight tasks append interleaved, overlapping batches to the same rooms while another reads:
/// every record is stored exactly once, each task gets the positions of its own batch's
/// conflicts, pages and `latest` are right, and two retention passes at once delete each
/// message once.
pub async fn concurrent_appends(subject: Arc<dyn StoreSubject>) {
    const TASKS: u64 = 8;
    const ROUNDS: u64 = 25;
    const PER_ROUND: u64 = 4;
    const ROOMS: [&str; 3] = ["busy-0", "busy-1", "busy-2"];
    // Per room. Task t appends, in round k, its share (PER_ROUND seqs) of the round's block of
    // TASKS * PER_ROUND seqs in every room, plus the first seq of the next share (an identical
    // overlap), plus a record that conflicts with one stored beforehand, at a position of its
    // own in the batch: each task must get its own conflict's position back.
    let total = TASKS * ROUNDS * PER_ROUND;
    append(subject.store(), &records("busy-clash", "e", 1..=TASKS * ROUNDS), "append the records to conflict with")
        .await;
    let writers: Vec<_> = (0..TASKS)
        .map(|t| {
            let subject = subject.clone();
            tokio::spawn(async move {
                for k in 0..ROUNDS {
                    let base = k * TASKS * PER_ROUND + t * PER_ROUND;
                    let mut batch = Vec::new();
                    for r in ROOMS {
                        let overlap = if base + PER_ROUND < total { Some(base + PER_ROUND + 1) } else { None };
                        batch.extend(records(r, "e", (base + 1..=base + PER_ROUND).chain(overlap)));
                    }
                    let clash = Record {
                        body: Some(Bytes::from(format!("\"task {t}\""))),
                        ..record("busy-clash", "e", k * TASKS + t + 1)
                    };
                    let at = (t + k) as usize % (batch.len() + 1);
                    batch.insert(at, clash);
                    let conflicts = subject.store().append(&batch).await.expect("append");
                    assert_eq!(conflicts, vec![at], "task {t} round {k}: only its own conflict");
                }
            })
        })
        .collect();
    let reader = {
        let subject = subject.clone();
        tokio::spawn(async move {
            let mut pages = 0;
            loop {
                let got = page(subject.store(), "busy-0", "e", query(None, None, 64)).await;
                pages += 1;
                if got.len() == 64 && got[0].seq == total - 63 && got[63].seq == total {
                    return pages;
                }
                tokio::task::yield_now().await;
            }
        })
    };
    for w in writers {
        w.await.expect("a writer task");
    }
    let reads = tokio::time::timeout(Duration::from_secs(30), reader).await;
    assert!(reads.expect("the reader sees the last page").expect("the reader task") >= 1);
    for r in ROOMS {
        assert_eq!(all(subject.store(), r, "e").await, records(r, "e", 1..=total), "{r}: each record once");
        assert_eq!(latest(subject.store(), r).await, at("e", total));
    }
    let clashed = all(subject.store(), "busy-clash", "e").await;
    assert_eq!(clashed, records("busy-clash", "e", 1..=TASKS * ROUNDS), "the stored ones stay");
    let rules: Arc<RetentionPolicy> =
        Arc::new(policy(&[("busy-0", keep(100)), ("busy-1", keep(100)), ("busy-2", keep(100))]));
    let passes: Vec<_> = (0..2)
        .map(|_| {
            let (subject, rules) = (subject.clone(), rules.clone());
            tokio::spawn(async move { subject.store().retain(&*rules, NOW).await })
        })
        .collect();
    let mut deleted = 0;
    for pass in passes {
        deleted += pass.await.expect("a retain task").expect("retain");
    }
    assert_eq!(deleted, 3 * (total - 100), "each message deleted once");
    for r in ROOMS {
        assert_eq!(
            seqs(subject.store(), r, "e", query(None, Some(0), 500)).await,
            (total - 99..=total).collect::<Vec<_>>()
        );
    }
}

/// A room of 5,000 messages: pages in the middle, at both ends and across the whole room are
/// right, and retention deletes thousands at once.
pub async fn large_room(subject: Arc<dyn StoreSubject>) {
    const N: u64 = 5_000;
    let store = subject.store();
    for chunk in (1..=N).collect::<Vec<_>>().chunks(500) {
        append(store, &records("large", "e", chunk.iter().copied()), "append").await;
    }
    append(store, &records("large-neighbour", "e", 1..=5), "append").await;
    let p = |before, after, limit| page(store, "large", "e", query(before, after, limit));
    assert_eq!(p(Some(2_500), None, 10).await, records("large", "e", 2_490..=2_499));
    assert_eq!(p(None, Some(1_234), 7).await, records("large", "e", 1_235..=1_241));
    assert_eq!(p(Some(3_001), Some(2_990), 100).await, records("large", "e", 2_991..=3_000));
    assert_eq!(p(Some(4_000), Some(1_000), 3).await, records("large", "e", 1_001..=1_003));
    assert_eq!(p(None, None, 3).await, records("large", "e", 4_998..=5_000));
    assert_eq!(p(None, Some(0), 2).await, records("large", "e", 1..=2));
    let every = all(store, "large", "e").await;
    assert_eq!(seqs_of(&every), (1..=N).collect::<Vec<_>>());
    assert_eq!(latest(store, "large").await, at("e", N));
    let deleted = store.retain(&policy(&[("large", keep(1_000))]), NOW).await.expect("retain");
    assert_eq!(deleted, N - 1_000);
    assert_eq!(p(None, Some(0), 2).await, records("large", "e", 4_001..=4_002));
    assert_eq!(p(Some(4_003), None, 10).await, records("large", "e", 4_001..=4_002));
    assert_eq!(all(store, "large", "e").await.len(), 1_000);
    assert_eq!(seqs(store, "large-neighbour", "e", query(None, None, 10)).await, [1, 2, 3, 4, 5]);
}
