//! The broker conformance suite: what every [`Broker`] implementation must do, written once and
//! run against each of them (the memory broker in `chat-core/tests/broker_conformance.rs`,
//! Redis in `chat-broker-redis/tests/conformance.rs`).
//!
//! A broker's test file implements [`Subject`] (the broker, and how to make it lose its data or
//! drop its deliveries for a moment) and expands [`broker_conformance!`](crate::broker_conformance)
//! with a constructor; that makes one test per case below: seq and delivery order, history
//! bounds, history age, idempotency, epochs, presence, transient fan-out, unsubscribing, one
//! order across nodes, concurrent publishes from one node, gap repair, erasure, and notices to
//! users on every node.
//!
//! ```no_run
//! use chat_core::{Broker, MemoryBroker};
//!
//! struct Memory(MemoryBroker);
//!
//! #[async_trait::async_trait]
//! impl chat_testkit::conformance::Subject for Memory {
//!     fn broker(&self) -> &dyn Broker {
//!         &self.0
//!     }
//!     async fn lose_history(&self) {
//!         self.0.wipe();
//!     }
//!     async fn interrupt_deliveries(&self) {}
//! }
//!
//! // In a test file: one #[tokio::test] per case.
//! chat_testkit::broker_conformance!(async { Memory(MemoryBroker::new()) });
//! # fn main() {}
//! ```

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chat_core::broker::{
    Delivery, DeliverySink, HistoryPage, HistoryQuery, Message, Notice, PresenceEntry, Publication, PublishOpts,
    Transient,
};
use chat_core::{Broker, BrokerNode, RoomName};

/// How long any one awaited delivery may take before a case fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// A broker under test.
#[async_trait]
pub trait Subject: Send + Sync + 'static {
    /// The broker: every node a case attaches comes from it (one cluster), and nothing else
    /// uses its rooms.
    fn broker(&self) -> &dyn Broker;

    /// Loses every room's history at once, as a broker restarted with empty storage does.
    async fn lose_history(&self);

    /// Drops deliveries to every node for a moment, as a lost connection does (a broker that
    /// cannot lose deliveries does nothing). Messages stored meanwhile must still arrive.
    async fn interrupt_deliveries(&self);
}

/// Expands to one `#[tokio::test]` per conformance case, each on a fresh subject made by
/// `$make` (an expression giving a future of a [`Subject`]).
#[macro_export]
macro_rules! broker_conformance {
    ($make:expr) => {
        $crate::broker_conformance!(@cases $make;
            seq_and_delivery_order, history_bounds, history_age, idempotency,
            lost_history_starts_a_new_epoch, presence_counts_sessions_across_nodes,
            transient_fan_out_is_not_stored, unsubscribed_nodes_get_nothing, one_order_across_nodes,
            interrupted_deliveries_are_repaired, erasure_leaves_tombstones, notices_reach_every_node,
            concurrent_publishes_from_one_node);
    };
    (@cases $make:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let subject = $make.await;
                $crate::conformance::$case(&subject).await;
            }
        )*
    };
}

/// A node's deliveries, in the order the broker made them, and the notices it got.
#[derive(Default)]
pub struct Recorder {
    seen: Mutex<Vec<(RoomName, Delivery)>>,
    notices: Mutex<Vec<(Vec<Arc<str>>, Notice)>>,
    more: tokio::sync::Notify,
}

impl DeliverySink for Recorder {
    fn deliver(&self, room: &RoomName, delivery: Delivery) {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).push((room.clone(), delivery));
        self.more.notify_waiters();
    }

    fn notify(&self, users: &[Arc<str>], notice: &Notice) {
        self.notices.lock().unwrap_or_else(|e| e.into_inner()).push((users.to_vec(), notice.clone()));
        self.more.notify_waiters();
    }
}

impl Recorder {
    /// Waits until at least `n` notices arrived; returns them all, in arrival order.
    pub async fn notices(&self, n: usize) -> Vec<(Vec<Arc<str>>, Notice)> {
        let found = tokio::time::timeout(WAIT, async {
            loop {
                let more = self.more.notified();
                let got = self.notices.lock().unwrap_or_else(|e| e.into_inner()).clone();
                if got.len() >= n {
                    return got;
                }
                more.await;
            }
        })
        .await;
        found.unwrap_or_else(|_| {
            let got = self.notices.lock().unwrap_or_else(|e| e.into_inner()).clone();
            panic!("fewer than {n} notices within {WAIT:?}: {got:?}")
        })
    }

    /// Everything delivered so far for `room`.
    pub fn of(&self, room: &RoomName) -> Vec<Delivery> {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.iter().filter(|(r, _)| r == room).map(|(_, d)| d.clone()).collect()
    }

    /// Waits until `room` has at least `n` deliveries of which `counts` is true; returns those.
    pub async fn wait(&self, room: &RoomName, n: usize, counts: impl Fn(&Delivery) -> bool) -> Vec<Delivery> {
        let found = tokio::time::timeout(WAIT, async {
            loop {
                let more = self.more.notified();
                let got: Vec<Delivery> = self.of(room).into_iter().filter(|d| counts(d)).collect();
                if got.len() >= n {
                    return got;
                }
                more.await;
            }
        })
        .await;
        found.unwrap_or_else(|_| panic!("{room}: fewer than {n} deliveries within {WAIT:?}: {:?}", self.of(room)))
    }

    /// Waits for `n` stored messages in `room`; returns them with their epochs.
    pub async fn stored(&self, room: &RoomName, n: usize) -> Vec<(Arc<str>, Message)> {
        let got = self.wait(room, n, |d| matches!(d, Delivery::Stored { .. })).await;
        got.into_iter()
            .filter_map(|d| match d {
                Delivery::Stored { epoch, message } => Some((epoch, (*message).clone())),
                _ => None,
            })
            .collect()
    }
}

/// Attaches a node named `name` with a fresh recorder.
pub async fn attach(subject: &dyn Subject, name: &str) -> (Arc<dyn BrokerNode>, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    let node = subject.broker().attach(name, recorder.clone(), None).await.expect("the node attaches");
    (node, recorder)
}

/// Publish options: `key`, keeping `size` messages for an hour.
pub fn opts(key: Option<&str>, size: usize) -> PublishOpts {
    PublishOpts {
        key: key.map(str::to_owned),
        idempotency_window: Duration::from_secs(300),
        history_size: size,
        history_ttl: Duration::from_secs(3600),
        max_history_bytes: usize::MAX,
    }
}

/// A publication from `from` whose body is `n`.
pub fn publication(from: &str, n: u64) -> Publication {
    Publication { from: Arc::from(from), ts: n, body: Bytes::from(n.to_string()) }
}

fn room(name: &str) -> RoomName {
    RoomName::new(name).expect("a valid room name")
}

fn seqs(page: &HistoryPage) -> Vec<u64> {
    page.messages.iter().map(|m| m.seq).collect()
}

/// Seqs run from 1 without gaps, in the room's one epoch, and every node gets each stored
/// message once, in seq order, the publisher included.
pub async fn seq_and_delivery_order(subject: &dyn Subject) {
    let r = room("order");
    let (a, seen_a) = attach(subject, "a").await;
    let (b, seen_b) = attach(subject, "b").await;
    let start = a.subscribe(&r).await.expect("subscribe");
    assert_eq!(start.seq, 0, "a new room starts at 0");
    assert_eq!(b.subscribe(&r).await.expect("subscribe"), start);
    for n in 1..=10 {
        let p = a.publish(&r, publication("u", n), &opts(None, 100)).await.expect("publish");
        assert_eq!((p.seq, p.duplicate, &p.epoch), (n, false, &start.epoch));
    }
    for seen in [&seen_a, &seen_b] {
        let got = seen.stored(&r, 10).await;
        let expected: Vec<_> = (1..=10).map(|n| (start.epoch.clone(), n)).collect();
        assert_eq!(got.iter().map(|(e, m)| (e.clone(), m.seq)).collect::<Vec<_>>(), expected);
        assert_eq!((&*got[2].1.from, got[2].1.ts, got[2].1.body.as_deref()), ("u", 3, Some(&b"3"[..])));
    }
    let position = b.subscribe(&r).await.expect("subscribing again");
    assert_eq!((position.epoch, position.seq), (start.epoch, 10));
}

/// History keeps the newest `history_size` messages; bounds are exclusive; `after` pages from
/// the oldest, otherwise from the newest; `latest` and the epoch come with every page.
pub async fn history_bounds(subject: &dyn Subject) {
    let r = room("bounds");
    let (node, _) = attach(subject, "a").await;
    let mut epoch = None;
    for n in 1..=10 {
        epoch = Some(node.publish(&r, publication("u", n), &opts(None, 5)).await.expect("publish").epoch);
    }
    let q = |before, after, limit| HistoryQuery { before, after, limit };
    let page = |query| {
        let node = node.clone();
        let r = r.clone();
        async move { node.history(&r, query).await.expect("history") }
    };
    assert_eq!(seqs(&page(q(None, None, 3)).await), vec![8, 9, 10]);
    assert_eq!(seqs(&page(q(None, None, 50)).await), vec![6, 7, 8, 9, 10], "only the newest 5 are kept");
    assert_eq!(seqs(&page(q(Some(9), None, 2)).await), vec![7, 8]);
    assert_eq!(seqs(&page(q(None, Some(6), 2)).await), vec![7, 8]);
    assert_eq!(seqs(&page(q(Some(9), Some(6), 50)).await), vec![7, 8]);
    assert_eq!(seqs(&page(q(Some(1), None, 50)).await), Vec::<u64>::new());
    assert_eq!(seqs(&page(q(Some(0), None, 50)).await), Vec::<u64>::new());
    assert_eq!(seqs(&page(q(None, Some(10), 50)).await), Vec::<u64>::new());
    assert_eq!(seqs(&page(q(None, None, 0)).await), Vec::<u64>::new());
    let last = page(q(None, Some(8), 50)).await;
    assert_eq!((last.latest, Some(&last.epoch)), (10, epoch.as_ref()));
    let m = &last.messages[0];
    assert_eq!((m.seq, &*m.from, m.ts, m.body.as_deref()), (9, "u", 9, Some(&b"9"[..])));
    let empty = node.history(&room("never-used"), q(None, None, 10)).await.expect("history of an empty room");
    assert_eq!((empty.latest, empty.messages.len()), (0, 0));
}

/// Erasing a message leaves a tombstone in history: same seq, sender and time, no body; the
/// room goes on after it. Erasing a user's messages reaches every room; erasing what the
/// broker does not hold says so.
pub async fn erasure_leaves_tombstones(subject: &dyn Subject) {
    let (r, other) = (room("erase"), room("erase-other"));
    let (node, _) = attach(subject, "a").await;
    for n in 1..=3 {
        node.publish(&r, publication(if n == 2 { "mallory" } else { "u" }, n), &opts(None, 10)).await.expect("publish");
    }
    node.publish(&other, publication("mallory", 4), &opts(None, 10)).await.expect("publish");
    assert!(node.erase(&r, 1).await.expect("erase"));
    assert!(!node.erase(&r, 9).await.expect("erase"), "nothing at seq 9");
    assert_eq!(node.erase_user("mallory").await.expect("erase a user"), 2, "one message in each room");
    let all = HistoryQuery { before: None, after: None, limit: 10 };
    let page = node.history(&r, all).await.expect("history");
    let got: Vec<_> = page.messages.iter().map(|m| (m.seq, &*m.from, m.ts, m.body.clone())).collect();
    assert_eq!(got, vec![(1, "u", 1, None), (2, "mallory", 2, None), (3, "u", 3, Some(Bytes::from("3")))]);
    let published = node.publish(&r, publication("u", 5), &opts(None, 10)).await.expect("publish after an erasure");
    assert_eq!(published.seq, 4, "the room goes on");
    let other_page = node.history(&other, all).await.expect("history");
    assert_eq!(other_page.messages.iter().map(|m| m.body.is_none()).collect::<Vec<_>>(), vec![true]);
    assert_eq!(node.erase_user("mallory").await.expect("erase again"), 0, "already erased");
}

/// Messages older than `history_ttl` leave history; the seq goes on, or the room starts over
/// under a new epoch, never one without the other.
pub async fn history_age(subject: &dyn Subject) {
    let r = room("age");
    let (node, _) = attach(subject, "a").await;
    let short = PublishOpts { history_ttl: Duration::from_millis(100), ..opts(None, 10) };
    let old = node.publish(&r, publication("u", 1), &short).await.expect("publish");
    let q = HistoryQuery { before: None, after: Some(0), limit: 10 };
    let page = crate::eventually("the message to age out", WAIT, || async {
        let page = node.history(&r, q).await.expect("history");
        page.messages.is_empty().then_some(page)
    })
    .await;
    // Either the room keeps its numbering (memory), or it was forgotten as a whole when its
    // last message aged out (Redis expires the room's keys): then it starts over in a new epoch.
    let expected_latest = if page.epoch == old.epoch { 1 } else { 0 };
    assert_eq!(page.latest, expected_latest, "seq and epoch agree");
    let new = node.publish(&r, publication("u", 2), &short).await.expect("publish");
    assert_eq!((new.seq, &new.epoch), (expected_latest + 1, &page.epoch));
    let page = node.history(&r, q).await.expect("history");
    assert_eq!(seqs(&page), vec![expected_latest + 1]);
}

/// A key seen before (same sender, same room) gives the original seq and stores nothing; the
/// same key from another sender or in another room is another message.
pub async fn idempotency(subject: &dyn Subject) {
    let (r, other) = (room("idem"), room("idem-other"));
    let (a, seen) = attach(subject, "a").await;
    let (b, _) = attach(subject, "b").await;
    a.subscribe(&r).await.expect("subscribe");
    let first = a.publish(&r, publication("alice", 1), &opts(Some("k"), 10)).await.expect("publish");
    let again = b.publish(&r, publication("alice", 2), &opts(Some("k"), 10)).await.expect("publish");
    assert_eq!((first.seq, first.duplicate), (1, false));
    assert_eq!((again.seq, again.duplicate, &again.epoch), (1, true, &first.epoch), "from any node");
    let bobs = b.publish(&r, publication("bob", 3), &opts(Some("k"), 10)).await.expect("publish");
    assert_eq!((bobs.seq, bobs.duplicate), (2, false), "another sender's key");
    let elsewhere = a.publish(&other, publication("alice", 4), &opts(Some("k"), 10)).await.expect("publish");
    assert_eq!((elsewhere.seq, elsewhere.duplicate), (1, false), "another room's key");
    let got = seen.stored(&r, 2).await;
    assert_eq!(
        got.iter().map(|(_, m)| (m.seq, m.body.clone())).collect::<Vec<_>>(),
        [(1, "1"), (2, "3")].map(|(s, b)| (s, Some(Bytes::from(b))))
    );
    let page = a.history(&r, HistoryQuery { before: None, after: None, limit: 10 }).await.expect("history");
    assert_eq!(seqs(&page), vec![1, 2], "the duplicate was not stored");
}

/// A broker that lost its data starts each room over under a new epoch at seq 1, forgets the
/// old idempotency keys, and tells subscribed nodes (a `Reset`, or the next message in the new
/// epoch) — never seqs that go on from before under the old epoch.
pub async fn lost_history_starts_a_new_epoch(subject: &dyn Subject) {
    let r = room("lost");
    let (node, seen) = attach(subject, "a").await;
    let start = node.subscribe(&r).await.expect("subscribe");
    for n in 1..=3 {
        node.publish(&r, publication("u", n), &opts(Some(&format!("k{n}")), 10)).await.expect("publish");
    }
    seen.stored(&r, 3).await;
    subject.lose_history().await;
    let after = crate::eventually("a publish after the loss", WAIT, || async {
        node.publish(&r, publication("u", 1), &opts(Some("k1"), 10)).await.ok()
    })
    .await;
    assert_eq!((after.seq, after.duplicate), (1, false), "seq restarts and the old key is forgotten");
    assert_ne!(after.epoch, start.epoch);
    let news = seen.wait(&r, 1, |d| match d {
        Delivery::Stored { epoch, .. } | Delivery::Reset { epoch } => *epoch != start.epoch,
        Delivery::Transient(_) => false,
    });
    match &news.await[0] {
        Delivery::Reset { epoch } => assert_eq!(*epoch, after.epoch),
        Delivery::Stored { epoch, message } => assert_eq!((epoch, message.seq), (&after.epoch, 1)),
        other => panic!("unexpected {other:?}"),
    }
    let page = node.history(&r, HistoryQuery { before: None, after: Some(0), limit: 10 }).await.expect("history");
    assert_eq!((page.epoch.clone(), seqs(&page)), (after.epoch, vec![1]));
}

/// Presence counts sessions per user across nodes; a user's first session in and last session
/// out are reported; removing twice is not a second leave; a detached node's sessions go.
pub async fn presence_counts_sessions_across_nodes(subject: &dyn Subject) {
    let r = room("presence");
    let (a, _) = attach(subject, "a").await;
    let (b, _) = attach(subject, "b").await;
    assert!(a.presence_add(&r, "s1", "alice").await.expect("add"), "alice's first session");
    assert!(!b.presence_add(&r, "s2", "alice").await.expect("add"));
    assert!(b.presence_add(&r, "s3", "bob").await.expect("add"));
    let entry = |user: &str, sessions| PresenceEntry { user: user.into(), sessions };
    assert_eq!(a.presence(&r).await.expect("presence"), vec![entry("alice", 2), entry("bob", 1)]);
    assert!(!b.presence_remove(&r, "s2", "alice").await.expect("remove"));
    assert!(!b.presence_remove(&r, "s2", "alice").await.expect("remove"), "removing twice is not a leave");
    assert!(a.presence_remove(&r, "s1", "alice").await.expect("remove"), "alice's last session");
    assert_eq!(a.presence(&r).await.expect("presence"), vec![entry("bob", 1)]);
    b.detach().await;
    assert_eq!(a.presence(&r).await.expect("presence"), vec![], "a detached node's sessions go");
}

/// Transient messages and member events reach every subscribed node and are not stored.
pub async fn transient_fan_out_is_not_stored(subject: &dyn Subject) {
    let r = room("transient");
    let (a, _) = attach(subject, "a").await;
    let (b, seen) = attach(subject, "b").await;
    b.subscribe(&r).await.expect("subscribe");
    a.subscribe(&r).await.expect("subscribe");
    let sent = [
        Transient::Message(publication("u", 7)),
        Transient::MemberJoined(Arc::from("carol")),
        Transient::MemberLeft(Arc::from("carol")),
    ];
    for what in &sent {
        a.broadcast(&r, what.clone()).await.expect("broadcast");
    }
    let got = seen.wait(&r, 3, |d| matches!(d, Delivery::Transient(_))).await;
    let got: Vec<_> = got.into_iter().map(|d| if let Delivery::Transient(t) = d { Some(t) } else { None }).collect();
    assert_eq!(got, sent.map(Some).to_vec());
    let page = b.history(&r, HistoryQuery { before: None, after: None, limit: 10 }).await.expect("history");
    assert_eq!((page.latest, page.messages.len()), (0, 0));
}

/// After `unsubscribe` a node gets nothing more of the room; the others go on.
pub async fn unsubscribed_nodes_get_nothing(subject: &dyn Subject) {
    let r = room("unsub");
    let (a, seen_a) = attach(subject, "a").await;
    let (b, seen_b) = attach(subject, "b").await;
    a.subscribe(&r).await.expect("subscribe");
    b.subscribe(&r).await.expect("subscribe");
    a.publish(&r, publication("u", 1), &opts(None, 10)).await.expect("publish");
    seen_b.stored(&r, 1).await;
    seen_a.stored(&r, 1).await;
    b.unsubscribe(&r).await.expect("unsubscribe");
    for n in 2..=3 {
        a.publish(&r, publication("u", n), &opts(None, 10)).await.expect("publish");
    }
    // A weak check (a late delivery to b could come after it), but nothing more may ever come.
    seen_a.stored(&r, 3).await;
    a.broadcast(&r, Transient::MemberJoined(Arc::from("x"))).await.expect("broadcast");
    seen_a.wait(&r, 1, |d| matches!(d, Delivery::Transient(_))).await;
    assert_eq!(seen_b.of(&r).len(), 1, "b left after seq 1: {:?}", seen_b.of(&r));
}

/// Nodes publishing at once: every node sees seqs 1..=N in order, the same message under each
/// seq, and each sender's messages in the order it published them.
pub async fn one_order_across_nodes(subject: &dyn Subject) {
    const EACH: u64 = 20;
    let r = room("one-order");
    let mut nodes = Vec::new();
    for name in ["a", "b", "c"] {
        let (node, seen) = attach(subject, name).await;
        node.subscribe(&r).await.expect("subscribe");
        nodes.push((node, seen));
    }
    let sends = nodes.iter().enumerate().map(|(i, (node, _))| {
        let (node, r) = (node.clone(), r.clone());
        tokio::spawn(async move {
            for k in 0..EACH {
                let p = publication(&format!("n{i}"), k);
                node.publish(&r, p, &opts(None, 1000)).await.expect("publish");
            }
        })
    });
    for send in sends.collect::<Vec<_>>() {
        send.await.expect("the sender");
    }
    let total = EACH as usize * nodes.len();
    let mut views = Vec::new();
    for (_, seen) in &nodes {
        let got = seen.stored(&r, total).await;
        assert_eq!(got.iter().map(|(_, m)| m.seq).collect::<Vec<_>>(), (1..=total as u64).collect::<Vec<_>>());
        views.push(got);
    }
    for view in &views[1..] {
        assert_eq!(view, &views[0], "every node sees the same message under each seq");
    }
    for i in 0..nodes.len() {
        let from = format!("n{i}");
        let ts: Vec<u64> = views[0].iter().filter(|(_, m)| *m.from == *from).map(|(_, m)| m.ts).collect();
        assert_eq!(ts, (0..EACH).collect::<Vec<_>>(), "{from}'s messages keep their order");
    }
}

/// Many publishes into one room from one node at once (sessions sending together; a broker
/// may store them in batches): each gets its own seq, 1..=N without gaps; each sender's
/// messages keep the order it published them in; a key sent twice at once is stored once and
/// both get its seq; every node sees exactly what history holds.
pub async fn concurrent_publishes_from_one_node(subject: &dyn Subject) {
    const SENDERS: u64 = 8;
    const EACH: u64 = 25;
    let r = room("together");
    let (a, seen_a) = attach(subject, "a").await;
    let (b, seen_b) = attach(subject, "b").await;
    a.subscribe(&r).await.expect("subscribe");
    b.subscribe(&r).await.expect("subscribe");
    // Every sender's publishes in order, the senders interleaved, all in flight at once; the
    // last sender sends each of its messages twice with one key.
    let sends = (0..SENDERS).map(|i| {
        let (a, r) = (a.clone(), r.clone());
        async move {
            let mut got = Vec::new();
            for k in 0..EACH {
                let p = publication(&format!("s{i}"), k);
                if i == SENDERS - 1 {
                    let key = format!("k{k}");
                    let (x, y) = futures::future::join(
                        a.publish(&r, p.clone(), &opts(Some(&key), 1000)),
                        a.publish(&r, p, &opts(Some(&key), 1000)),
                    )
                    .await;
                    let (x, y) = (x.expect("publish"), y.expect("publish"));
                    assert_eq!(x.seq, y.seq, "one key sent twice at once is one message");
                    assert!(x.duplicate != y.duplicate, "exactly one of the two is the duplicate: {x:?} {y:?}");
                    got.push(x.seq);
                } else {
                    got.push(a.publish(&r, p, &opts(None, 1000)).await.expect("publish").seq);
                }
            }
            got
        }
    });
    let per_sender: Vec<Vec<u64>> = futures::future::join_all(sends).await;
    let total = (SENDERS * EACH) as usize;
    let mut all: Vec<u64> = per_sender.iter().flatten().copied().collect();
    all.sort_unstable();
    assert_eq!(all, (1..=total as u64).collect::<Vec<_>>(), "one seq each, no gaps");
    for seqs in &per_sender {
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "a sender's messages keep their order: {seqs:?}");
    }
    let page = a.history(&r, HistoryQuery { before: None, after: None, limit: total }).await.expect("history");
    assert_eq!(seqs(&page), (1..=total as u64).collect::<Vec<_>>());
    for seen in [&seen_a, &seen_b] {
        let got = seen.stored(&r, total).await;
        let got: Vec<_> = got.iter().map(|(_, m)| (m.seq, m.from.clone(), m.body.clone())).collect();
        let kept: Vec<_> = page.messages.iter().map(|m| (m.seq, m.from.clone(), m.body.clone())).collect();
        assert_eq!(got, kept, "deliveries are what history holds, in seq order");
    }
}

/// Deliveries dropped for a moment are repaired: messages stored meanwhile reach every
/// subscribed node, once and in order, and live delivery goes on after them.
pub async fn interrupted_deliveries_are_repaired(subject: &dyn Subject) {
    let r = room("gap");
    let (a, seen_a) = attach(subject, "a").await;
    let (b, seen_b) = attach(subject, "b").await;
    let (publisher, _) = attach(subject, "p").await;
    for node in [&a, &b] {
        node.subscribe(&r).await.expect("subscribe");
    }
    publisher.publish(&r, publication("u", 1), &opts(None, 100)).await.expect("publish");
    seen_a.stored(&r, 1).await;
    seen_b.stored(&r, 1).await;
    subject.interrupt_deliveries().await;
    for n in 2..=6 {
        publisher.publish(&r, publication("u", n), &opts(None, 100)).await.expect("publish");
    }
    for seen in [&seen_a, &seen_b] {
        let got = seen.stored(&r, 6).await;
        assert_eq!(got.iter().map(|(_, m)| m.seq).collect::<Vec<_>>(), (1..=6).collect::<Vec<_>>());
    }
    publisher.publish(&r, publication("u", 7), &opts(None, 100)).await.expect("publish");
    for seen in [&seen_a, &seen_b] {
        let got = seen.stored(&r, 7).await;
        assert_eq!(got.len(), 7, "nothing twice: {got:?}");
        assert_eq!(got[6].1.seq, 7);
    }
}

/// A notice reaches every attached node, the sender included, whatever rooms they subscribe
/// to, with its users and content intact; each kind of notice travels.
pub async fn notices_reach_every_node(subject: &dyn Subject) {
    let (a, seen_a) = attach(subject, "a").await;
    let (b, seen_b) = attach(subject, "b").await;
    let users = |names: &[&str]| names.iter().map(|n| Arc::<str>::from(*n)).collect::<Vec<_>>();
    let sent = [
        (users(&["alice", "bob"]), Notice::Invite { room: room("dm:alice:bob"), from: Arc::from("alice"), seq: 7 }),
        (users(&["mallory"]), Notice::KickFromRoom { room: room("lobby") }),
        (users(&["eve", "mallory"]), Notice::Kick),
    ];
    for (i, (to, notice)) in sent.iter().enumerate() {
        let by = if i % 2 == 0 { &a } else { &b };
        by.notify(to, notice).await.expect("notify");
    }
    for seen in [&seen_a, &seen_b] {
        let got = seen.notices(sent.len()).await;
        assert_eq!(got, sent.to_vec(), "each notice once, as sent, in order");
    }
    assert!(seen_a.of(&room("lobby")).is_empty(), "a notice is no room delivery");
}
