//! The `MemoryBroker` forgets and the node caps its rooms, against hostile clients over real
//! loopback TCP sockets (framed as chat-transport-tcp frames them: a 4-byte big-endian length,
//! then the JSON): a room-name spray and an idempotency-key spray stay under
//! `max_history_bytes` and drain after their ttl / window, `max_rooms` holds at its boundary,
//! and a `since` into evicted history is answered `recovered: false`.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use chat_core::broker::memory::{KEY_OVERHEAD, MESSAGE_OVERHEAD, ROOM_OVERHEAD};
use chat_core::{Config, ConnInfo, Engine, Inbound, MemoryBroker, MemoryStats};
use chat_testkit::eventually;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Framed, FramedRead, FramedWrite, LengthDelimitedCodec};

/// How long any single expected frame may take before a test fails.
const WAIT: Duration = Duration::from_secs(30);

/// The sweep's period in these tests.
const SWEEP: Duration = Duration::from_millis(20);

/// An engine on `broker` with `tune` applied (send rate limit off), served on a loopback port.
async fn serve(broker: &MemoryBroker, tune: impl FnOnce(&mut Config)) -> (Engine, SocketAddr) {
    let engine =
        Engine::builder().broker(broker.clone()).tune(|c| c.rate_per_sec = 0).tune(tune).build().await.expect("engine");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let server = engine.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let engine = server.clone();
            tokio::spawn(async move {
                let (read, write) = stream.into_split();
                let inbound =
                    FramedRead::new(read, LengthDelimitedCodec::new()).map(|f| f.map(|b| Inbound::Frame(b.freeze())));
                let outbound = FramedWrite::new(write, LengthDelimitedCodec::new());
                engine.serve(inbound, outbound, ConnInfo::default()).await;
            });
        }
    });
    (engine, addr)
}

/// A client socket speaking raw frames.
struct Sock {
    io: Framed<TcpStream, LengthDelimitedCodec>,
    next_id: u64,
}

impl Sock {
    /// Connects and says hello as `user`.
    async fn hello(addr: SocketAddr, user: &str) -> Sock {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let mut sock = Sock { io: Framed::new(stream, LengthDelimitedCodec::new()), next_id: 1 };
        let welcome = sock.ask(json!({"type":"hello","protocol":1,"user":user})).await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        sock
    }

    /// The next frame, parsed, within [`WAIT`].
    async fn recv(&mut self) -> Value {
        let frame = tokio::time::timeout(WAIT, self.io.next()).await.expect("a frame in time");
        let frame = frame.expect("connection open").expect("socket readable");
        serde_json::from_slice(&frame).expect("the server sends JSON")
    }

    /// Sends `request` with the next id and returns the frame answering it (events before it
    /// are skipped).
    async fn ask(&mut self, mut request: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        request["id"] = json!(id);
        self.io.send(Bytes::from(request.to_string())).await.expect("server reading");
        loop {
            let frame = self.recv().await;
            if frame["id"] == id {
                return frame;
            }
        }
    }

    async fn join(&mut self, room: &str, since: Option<(&str, u64)>) -> Value {
        let mut request = json!({"type":"join","room":room});
        if let Some((epoch, seq)) = since {
            request["since"] = json!({"epoch":epoch,"seq":seq});
        }
        self.ask(request).await
    }

    async fn joined(&mut self, room: &str, since: Option<(&str, u64)>) -> Value {
        let reply = self.join(room, since).await;
        assert_eq!(reply["type"], "joined", "{reply}");
        reply
    }

    async fn leave(&mut self, room: &str) {
        let reply = self.ask(json!({"type":"leave","room":room})).await;
        assert_eq!(reply["type"], "left", "{reply}");
    }

    /// Sends a stored message and returns its seq.
    async fn send(&mut self, room: &str, body: &Value, key: Option<&str>) -> u64 {
        let mut request = json!({"type":"send","room":room,"body":body});
        if let Some(key) = key {
            request["key"] = json!(key);
        }
        let reply = self.ask(request).await;
        assert_eq!(reply["type"], "sent", "{reply}");
        reply["seq"].as_u64().expect("a stored message has a seq")
    }
}

/// A JSON string body of exactly `len` bytes.
fn body(len: usize) -> Value {
    json!("x".repeat(len - 2))
}

#[tokio::test]
async fn a_room_name_spray_stays_under_the_byte_cap() {
    let cap = 16 << 10;
    let broker = MemoryBroker::new();
    let (engine, addr) = serve(&broker, |c| c.max_history_bytes = cap).await;
    let mut spray = Sock::hello(addr, "sprayer").await;
    let rooms = 200;
    let body = body(100);
    let smallest_room = ROOM_OVERHEAD + MESSAGE_OVERHEAD + "sprayer".len() + 100;
    for i in 0..rooms {
        let room = format!("spray-{i}");
        spray.joined(&room, None).await;
        spray.send(&room, &body, None).await;
        spray.leave(&room).await;
        let stats = broker.stats();
        assert!(stats.retained_bytes <= cap, "after room {i}: {stats:?}");
        assert!(stats.rooms <= cap / smallest_room, "after room {i}: {stats:?}");
    }
    let stats = broker.stats();
    assert!(stats.messages < rooms && stats.rooms < rooms, "the oldest rooms were evicted: {stats:?}");
    assert!(stats.retained_bytes > cap - 2 * smallest_room, "the newest rooms fill the cap: {stats:?}");
    assert_eq!(engine.room_count(), 0, "the sprayer left every room");
}

#[tokio::test]
async fn sprayed_rooms_are_dropped_after_their_ttl() {
    let broker = MemoryBroker::new().sweep_every(SWEEP);
    let (_engine, addr) = serve(&broker, |c| c.history_ttl = Duration::from_secs(2)).await;
    let mut spray = Sock::hello(addr, "sprayer").await;
    let mut most = 0;
    for i in 0..50 {
        let room = format!("spray-{i}");
        spray.joined(&room, None).await;
        spray.send(&room, &json!({"n":i}), None).await;
        spray.leave(&room).await;
        most = most.max(broker.stats().messages);
    }
    assert!(most > 0, "messages were retained for a while");
    // No publish from here on: the sweep alone empties and drops the rooms.
    eventually("every sprayed room to be dropped", WAIT, || async {
        (broker.stats() == MemoryStats::default()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_idempotency_key_spray_stays_under_the_byte_cap() {
    let cap = 8 << 10;
    let broker = MemoryBroker::new();
    let (_engine, addr) = serve(&broker, |c| {
        c.max_history_bytes = cap;
        c.history_size = 1; // the keys outlive their messages: only the cap bounds them
    })
    .await;
    let mut spray = Sock::hello(addr, "sprayer").await;
    spray.joined("keys", None).await;
    let sends = 300;
    for i in 0..sends {
        spray.send("keys", &json!(i), Some(&format!("key-{i:04}"))).await;
        let stats = broker.stats();
        assert!(stats.retained_bytes <= cap, "after key {i}: {stats:?}");
    }
    let stats = broker.stats();
    let per_key = KEY_OVERHEAD + "sprayer".len() + "key-0000".len();
    assert!(stats.idempotency_keys < sends, "the oldest keys were evicted: {stats:?}");
    assert!(stats.idempotency_keys >= (cap - ROOM_OVERHEAD) / per_key / 2, "most of the cap is keys: {stats:?}");
    let last = sends - 1;
    let seq = spray.send("keys", &json!("again"), Some(&format!("key-{last:04}"))).await;
    assert_eq!(seq, sends as u64, "the newest key still answers with its original seq");
    let evicted = spray.send("keys", &json!("again"), Some("key-0000")).await;
    assert_eq!(evicted, sends as u64 + 1, "an evicted key is new again");
}

#[tokio::test]
async fn sprayed_keys_are_pruned_after_their_window() {
    let broker = MemoryBroker::new().sweep_every(SWEEP);
    let (_engine, addr) = serve(&broker, |c| c.idempotency_window = Duration::from_millis(500)).await;
    let mut spray = Sock::hello(addr, "sprayer").await;
    spray.joined("keys", None).await;
    for i in 0..100 {
        spray.send("keys", &json!(i), Some(&format!("key-{i}"))).await;
    }
    // The sprayer stays in the room and publishes nothing more: the sweep prunes the keys.
    eventually("every key to be pruned", WAIT, || async { (broker.stats().idempotency_keys == 0).then_some(()) }).await;
    assert_eq!(broker.stats().messages, 100, "the messages outlive their keys");
}

#[tokio::test]
async fn max_rooms_at_its_boundary() {
    let broker = MemoryBroker::new();
    let (engine, addr) = serve(&broker, |c| c.max_rooms = 3).await;
    let mut alice = Sock::hello(addr, "alice").await;
    for room in ["a", "b", "c"] {
        alice.joined(room, None).await; // exactly at the cap
    }
    let refused = alice.join("d", None).await;
    assert_eq!((refused["type"].as_str(), refused["code"].as_str()), (Some("error"), Some("unavailable")), "{refused}");
    assert_eq!(engine.room_count(), 3);

    // Joining a room the node already has adds none.
    let mut bob = Sock::hello(addr, "bob").await;
    bob.joined("a", None).await;
    // A hostile client tries many fresh names: every one is refused, nothing grows.
    let mut mallory = Sock::hello(addr, "mallory").await;
    for i in 0..50 {
        let reply = mallory.join(&format!("fresh-{i}"), None).await;
        assert_eq!(reply["code"], "unavailable", "{reply}");
    }
    assert_eq!(engine.room_count(), 3);

    alice.leave("b").await;
    alice.joined("d", None).await;
    assert_eq!(alice.join("e", None).await["code"], "unavailable");
    // `a` still has bob: alice leaving it frees nothing.
    alice.leave("a").await;
    assert_eq!(alice.join("e", None).await["code"], "unavailable");
    bob.leave("a").await;
    alice.joined("e", None).await;
    assert_eq!(engine.room_count(), 3);
}

#[tokio::test]
async fn a_since_into_evicted_history_is_not_recovered() {
    let cap = 8 << 10;
    let broker = MemoryBroker::new();
    let (_engine, addr) = serve(&broker, |c| c.max_history_bytes = cap).await;
    let mut watcher = Sock::hello(addr, "watcher").await;
    watcher.joined("old", None).await; // keeps the room, and its epoch, alive
    let mut alice = Sock::hello(addr, "alice").await;
    let epoch = alice.joined("old", None).await["epoch"].as_str().expect("epoch").to_owned();
    let big = body(1000);
    for seq in 1..=3 {
        assert_eq!(alice.send("old", &big, None).await, seq);
    }
    alice.leave("old").await;

    // While the history is there, `since` recovers it.
    let mut control = Sock::hello(addr, "control").await;
    let joined = control.joined("old", Some((&epoch, 1))).await;
    assert_eq!((joined["recovered"].as_bool(), joined["seq"].as_u64()), (Some(true), Some(3)), "{joined}");
    control.leave("old").await;

    // Another room overwrites the whole cap twice: `old`, the least recently active, goes first.
    alice.joined("other", None).await;
    for _ in 0..2 * cap / 1000 {
        alice.send("other", &big, None).await;
    }
    let joined = alice.joined("old", Some((&epoch, 1))).await;
    assert_eq!(joined["epoch"], epoch.as_str(), "the room lived on: same epoch, same seq");
    assert_eq!((joined["recovered"].as_bool(), joined["seq"].as_u64()), (Some(false), Some(3)), "{joined}");
    let mut caught_up = Sock::hello(addr, "caught-up").await;
    let joined = caught_up.joined("old", Some((&epoch, 3))).await;
    assert_eq!(joined["recovered"], true, "nothing missed: {joined}");

    // Everyone leaves: the room holds nothing and is dropped; it comes back under a new epoch.
    for sock in [&mut watcher, &mut alice, &mut caught_up] {
        sock.leave("old").await;
    }
    let mut late = Sock::hello(addr, "late").await;
    let joined = late.joined("old", Some((&epoch, 3))).await;
    assert_ne!(joined["epoch"], epoch.as_str(), "{joined}");
    assert_eq!((joined["recovered"].as_bool(), joined["seq"].as_u64()), (Some(false), Some(0)), "{joined}");
}
