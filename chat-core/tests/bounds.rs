//! What one hostile client can make a node hold, measured through the engine's own accounting
//! (`Engine::stats`): replies count against the outbox and a session whose outbox is full reads
//! no more requests; a recovery replay never closes its own session; membership events are
//! rate-limited per room. Each test drives a session whose peer does not read (its outbound
//! sink takes one frame and then never again) with requests that are always ready.

mod common;

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use chat_core::{ConnInfo, Engine, Inbound};
use common::{Raw, WAIT};
use futures::Stream;

/// Requests that are always ready (then nothing, forever), counting how many the session took.
struct Pipelined {
    frames: std::vec::IntoIter<Bytes>,
    taken: Arc<AtomicUsize>,
}

impl Stream for Pipelined {
    type Item = Result<Inbound, std::io::Error>;
    fn poll_next(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.frames.next() {
            Some(frame) => {
                self.taken.fetch_add(1, Ordering::Relaxed);
                Poll::Ready(Some(Ok(Inbound::Frame(frame))))
            }
            // A peer that keeps its connection open and sends nothing more.
            None => Poll::Pending,
        }
    }
}

/// A session over `frames` whose peer never reads: returns how many frames it took so far,
/// and the receiving end of its sink (kept, never read).
fn not_reading(engine: &Engine, frames: Vec<String>) -> (Arc<AtomicUsize>, futures::channel::mpsc::Receiver<Bytes>) {
    let taken = Arc::new(AtomicUsize::new(0));
    let inbound =
        Pipelined { frames: frames.into_iter().map(Bytes::from).collect::<Vec<_>>().into_iter(), taken: taken.clone() };
    let (outbound, unread) = futures::channel::mpsc::channel::<Bytes>(0);
    let engine = engine.clone();
    tokio::spawn(async move { engine.serve(inbound, outbound, ConnInfo::default()).await });
    (taken, unread)
}

/// Lets the session run until it stops taking requests (its outbox is full and its peer does
/// not read) or ends; returns how many it took and the most bytes seen queued for one session
/// meanwhile. The session task runs whenever this task yields, so one that still reads moves
/// `taken` between two looks.
async fn settled(engine: &Engine, taken: &AtomicUsize) -> (usize, usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut most = 0;
    loop {
        let before = taken.load(Ordering::Relaxed);
        for _ in 0..64 {
            tokio::task::yield_now().await;
            most = most.max(engine.stats().max_queued_bytes);
        }
        if taken.load(Ordering::Relaxed) == before && before > 1 {
            return (before, most);
        }
        assert!(tokio::time::Instant::now() < deadline, "the session never stopped reading: {:?}", engine.stats());
    }
}

fn hello(user: &str) -> String {
    format!(r#"{{"type":"hello","id":0,"protocol":1,"user":"{user}"}}"#)
}

fn body(n: usize) -> String {
    format!(r#"{{"text":"{}"}}"#, "x".repeat(n - 11))
}

/// The issue's history flood: 100 bodies of 16 KB, then history pages asked for without
/// reading. Without backpressure the queue grows by a 1.6 MB page per request.
#[tokio::test(flavor = "current_thread")]
async fn a_history_flood_holds_at_most_the_bound_plus_one_reply() {
    let engine = Engine::builder().tune(|c| c.rate_per_sec = 0).build().await.unwrap();
    let config = engine.config().clone();
    let mut frames = vec![hello("mallory"), r#"{"type":"join","id":1,"room":"r"}"#.to_owned()];
    let big = body(16_000);
    frames.extend((0..100).map(|i| format!(r#"{{"type":"send","id":{},"room":"r","body":{big}}}"#, i + 2)));
    let first_history = frames.len();
    frames.extend((0..300).map(|i| format!(r#"{{"type":"history","id":{},"room":"r","limit":100}}"#, i + 200)));
    let (taken, _unread) = not_reading(&engine, frames);
    let (taken, most) = settled(&engine, &taken).await;
    let stats = engine.stats();
    let page = 100 * 16_100;
    assert!(stats.queued_bytes >= config.outbox_bytes, "the outbox is full: {stats:?}");
    assert!(most <= config.outbox_bytes + page, "{most} bytes queued");
    assert!(taken < first_history + 5, "it stopped reading after a few pages: took {taken}");
    assert!(engine.stats().sessions == 1, "backpressure is not a slow_consumer close");
}

/// Presence replies are small: the frames bound is the one that holds them.
#[tokio::test(flavor = "current_thread")]
async fn a_presence_flood_holds_at_most_the_frames_bound() {
    let engine = Engine::builder().tune(|c| (c.rate_per_sec, c.outbox_frames) = (0, 500)).build().await.unwrap();
    let mut frames = vec![hello("mallory"), r#"{"type":"join","id":1,"room":"r"}"#.to_owned()];
    frames.extend((0..5_000).map(|i| format!(r#"{{"type":"presence","id":{},"room":"r"}}"#, i + 2)));
    let (taken, _unread) = not_reading(&engine, frames);
    let (taken, _) = settled(&engine, &taken).await;
    let stats = engine.stats();
    assert!(stats.queued_frames == 500, "{stats:?}");
    assert!(taken <= 500 + 3, "took {taken}");
}

/// Leave and join again with `since`, forever, without reading: each replay is a reply, so
/// the session stops reading once they fill the outbox and holds at most the bound plus one
/// reply. (With membership events on, its own `member_joined` finding the outbox full closes
/// it as a slow consumer instead: an event's rule.)
#[tokio::test(flavor = "current_thread")]
async fn a_replay_flood_holds_at_most_the_bound_plus_one_reply() {
    let engine = Engine::builder().tune(|c| c.rate_per_sec = 0).member_events(|_| false).build().await.unwrap();
    let config = engine.config().clone();
    let mut writer = Raw::hello(&engine, "writer").await;
    writer.send(r#"{"type":"join","id":1,"room":"r"}"#);
    let epoch = writer.recv().await["epoch"].as_str().unwrap().to_owned();
    let text = body(1_000);
    for id in 0..500 {
        writer.send(&format!(r#"{{"type":"send","id":{id},"room":"r","body":{text}}}"#));
        writer.recv_of("sent").await;
    }
    let mut frames = vec![hello("mallory")];
    for i in 0..2_000 {
        frames.push(format!(r#"{{"type":"join","id":{i},"room":"r","since":{{"epoch":"{epoch}","seq":0}}}}"#));
        frames.push(format!(r#"{{"type":"leave","id":{i},"room":"r"}}"#));
    }
    let (taken, _unread) = not_reading(&engine, frames);
    let (taken, _) = settled(&engine, &taken).await;
    let stats = engine.stats();
    assert!(stats.queued_bytes >= config.outbox_bytes, "the outbox is full: {stats:?}");
    assert!(stats.queued_bytes <= config.outbox_bytes + config.outbox_bytes / 2, "{stats:?}");
    assert_eq!(stats.sessions, 2, "not closed");
    assert!(taken < 40, "took {taken}");
}

/// A client that missed more than half the outbox holds is told `recovered: false` (and pages
/// the gap with `history`), instead of being closed as a slow consumer by its own replay.
/// Exactly half the bound is replayed.
#[tokio::test]
async fn a_replay_over_half_the_outbox_is_not_recovered_and_does_not_close() {
    // Frames of 113 bytes: {"type":"message","room":"r","seq":N,"from":"w","ts":T,"body":"…"}.
    let engine = Engine::builder()
        .tune(|c| (c.rate_per_sec, c.outbox_frames, c.outbox_bytes) = (0, 40, 1 << 20))
        .build()
        .await
        .unwrap();
    let mut writer = Raw::hello(&engine, "writer").await;
    let epoch = writer.join("r").await["epoch"].as_str().unwrap().to_owned();
    for id in 0..21 {
        writer.send(&format!(r#"{{"type":"send","id":{id},"room":"r","body":"m{id}"}}"#));
        writer.recv_of("sent").await;
    }
    let since = |seq: u64| format!(r#"{{"type":"join","id":1,"room":"r","since":{{"epoch":"{epoch}","seq":{seq}}}}}"#);
    // 20 missed = half of 40 frames: replayed.
    let mut back = Raw::hello(&engine, "back").await;
    let joined = back.ask(&since(1)).await;
    assert_eq!((joined["type"].as_str(), joined["recovered"].as_bool()), (Some("joined"), Some(true)), "{joined}");
    let first = back.recv_of("message").await;
    assert_eq!(first["seq"], 2);
    // 21 missed: one over.
    let mut late = Raw::hello(&engine, "late").await;
    let joined = late.ask(&since(0)).await;
    assert_eq!((joined["recovered"].as_bool(), joined["seq"].as_u64()), (Some(false), Some(21)), "{joined}");
    assert_eq!(late.recv().await["type"], "member_joined", "no replay follows");
    let page = late.ask(r#"{"type":"history","id":2,"room":"r","after":0,"limit":21}"#).await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 21, "the gap pages in with history");
    assert_eq!(engine.stats().sessions, 3, "nobody was closed");

    // Bytes: the issue's 300 messages of 16 KB against the default 4 MiB.
    let engine = Engine::builder().tune(|c| c.rate_per_sec = 0).build().await.unwrap();
    let mut writer = Raw::hello(&engine, "writer").await;
    let epoch = writer.join("r").await["epoch"].as_str().unwrap().to_owned();
    let big = body(16_000);
    for id in 0..300 {
        writer.send(&format!(r#"{{"type":"send","id":{id},"room":"r","body":{big}}}"#));
        writer.recv_of("sent").await;
    }
    let mut late = Raw::hello(&engine, "late").await;
    let joined =
        late.ask(&format!(r#"{{"type":"join","id":1,"room":"r","since":{{"epoch":"{epoch}","seq":0}}}}"#)).await;
    assert_eq!(joined["recovered"], false, "{joined}");
    late.send(r#"{"type":"ping","id":3}"#);
    assert_eq!(late.recv_of("pong").await["id"], 3, "still connected");
}

/// One client churning join/leave in a room of 1,000 members: its membership events go out
/// at the room's rate (here: exactly the burst, since time stands still), the rest are dropped,
/// and no member is closed.
#[tokio::test(start_paused = true)]
async fn join_leave_churn_cannot_flood_a_large_room() {
    let engine = Engine::builder()
        .tune(|c| {
            c.rate_per_sec = 0;
            c.member_events_per_sec = 10;
            c.member_events_burst = 20;
        })
        .build()
        .await
        .unwrap();
    let mut members = Vec::new();
    for i in 0..1_000 {
        let mut m = Raw::hello(&engine, &format!("m{i}")).await;
        m.send(r#"{"type":"join","id":1,"room":"big"}"#);
        assert_eq!(m.recv().await["type"], "joined");
        members.push(m);
    }
    // The members' own arrivals used the room's burst: let it refill.
    tokio::time::advance(std::time::Duration::from_secs(3)).await;
    let start = tokio::time::Instant::now();
    let mut churner = Raw::hello(&engine, "churner").await;
    for id in 0..500 {
        churner.send(&format!(r#"{{"type":"join","id":{id},"room":"big"}}"#));
        churner.recv_of("joined").await;
        churner.send(&format!(r#"{{"type":"leave","id":{id},"room":"big"}}"#));
        churner.recv_of("left").await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mut sentinel = Raw::hello(&engine, "sentinel").await;
    sentinel.send(r#"{"type":"join","id":1,"room":"big"}"#);
    sentinel.recv_of("joined").await;
    sentinel.send(r#"{"type":"send","id":2,"room":"big","body":"end"}"#);
    sentinel.recv_of("sent").await;
    let allowed = 20 + (10.0 * elapsed) as usize;
    for m in members.iter_mut().step_by(97) {
        let mut churn_events = 0;
        loop {
            let e = m.recv().await;
            if e["type"] == "message" {
                break;
            }
            assert!(e["type"] == "member_joined" || e["type"] == "member_left", "{e}");
            churn_events += usize::from(e["user"] == "churner");
        }
        assert!(churn_events >= 20 && churn_events <= allowed, "{churn_events} events, {allowed} allowed");
    }
    assert_eq!(engine.stats().sessions, 1_002, "nobody was closed");
}

/// The accounting returns to zero when connections end.
#[tokio::test(flavor = "current_thread")]
async fn stats_return_to_zero() {
    let engine = Engine::builder().tune(|c| c.rate_per_sec = 0).build().await.unwrap();
    let (taken, unread) = not_reading(&engine, vec![hello("a"), r#"{"type":"join","id":1,"room":"r"}"#.to_owned()]);
    let mut raw = Raw::hello(&engine, "b").await;
    raw.join("r").await;
    let stats = engine.stats();
    assert_eq!((stats.connections, stats.sessions, stats.rooms), (2, 2, 1), "{stats:?}");
    assert!(taken.load(Ordering::Relaxed) == 2);
    drop(unread);
    drop(raw);
    chat_testkit::eventually("every connection to end", WAIT, || async {
        let s = engine.stats();
        ((s.connections, s.queued_frames, s.queued_bytes, s.rooms) == (0, 0, 0, 0)).then_some(())
    })
    .await;
}

/// A flood of direct messages to a user who does not read: every one of them invites the
/// user's session, which is not in the conversation. Invites are dropped once its outbox is
/// half full (as ephemeral messages are), so the flood cannot close it as a slow consumer:
/// what it announces is in the conversation's history.
#[tokio::test(flavor = "current_thread")]
async fn a_flood_of_direct_messages_cannot_close_its_recipient() {
    let engine = Engine::builder()
        .tune(|c| {
            c.rate_per_sec = 0;
            c.outbox_frames = 64;
        })
        .build()
        .await
        .unwrap();
    let (_, _unread) = not_reading(&engine, vec![hello("victim")]);
    let mut mallory = Raw::hello(&engine, "mallory").await;
    mallory.join("dm:mallory:victim").await;
    for i in 0..200 {
        mallory.send(&format!(r#"{{"type":"send","id":{i},"room":"dm:mallory:victim","body":{i}}}"#));
    }
    loop {
        let f = mallory.recv().await;
        if f["type"] == "sent" && f["id"] == 199 {
            assert_eq!(f["seq"], 200, "{f}");
            break;
        }
    }
    let stats = engine.stats();
    assert_eq!(stats.sessions, 2, "the recipient is still connected: {stats:?}");
    assert!(stats.queued_frames <= 64 / 2 + 1, "invites stop at half the outbox: {stats:?}");
}
