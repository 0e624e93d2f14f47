//! NATS with a store beside it: losing the stream no longer loses the conversation or changes
//! the epoch, and a client resending a message it sent before the loss gets its original seq
//! (the room's recent keys come back from the store). NATS is a real `nats-server -js` each
//! test starts; the store is the in-process `MemoryStore`, which outlives the stream.

use std::time::Duration;

use bytes::Bytes;
use chat_broker_nats::NatsBroker;
use chat_core::client::{Client, Event, HistoryQuery, Message};
use chat_core::{ConnInfo, Engine, Inbound, MemoryStore};
use chat_testkit::NatsServer;
use futures::StreamExt;
use serde_json::json;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(10);

async fn engine(nats: &NatsServer, store: &MemoryStore, node: &str) -> Engine {
    let broker = NatsBroker::builder(nats.url()).prefix("kept").build().expect("a broker");
    Engine::builder().node_id(node).broker(broker).store(store.clone()).build().await.expect("engine attaches")
}

/// A client of `engine` as `user`, wired in-process; the handle runs the server side.
async fn connect(engine: &Engine, user: &str) -> (Client, JoinHandle<()>) {
    let (to_server, from_client) = futures::channel::mpsc::unbounded::<Bytes>();
    let (to_client, from_server) = futures::channel::mpsc::unbounded::<Bytes>();
    let server = engine.clone();
    let task = tokio::spawn(async move {
        let inbound = from_client.map(|b| Ok::<_, std::io::Error>(Inbound::Frame(b)));
        server.serve(inbound, to_client, ConnInfo::default()).await
    });
    let client =
        Client::connect(from_server.map(Ok::<_, std::io::Error>), to_server, Some(user), None).await.expect("hello");
    (client, task)
}

/// The seq of the next stored message or reset `client` gets (`None` for a reset).
async fn next_stored(client: &mut Client) -> Option<u64> {
    let next = tokio::time::timeout(WAIT, async {
        loop {
            match client.next_event().await.expect("connection open") {
                Event::Message(Message { seq: Some(seq), .. }) => return Some(seq),
                Event::Reset(_) => return None,
                _ => {}
            }
        }
    });
    next.await.expect("a message or a reset in time")
}

async fn lose_the_stream(nats: &NatsServer) {
    let client = async_nats::connect(nats.url()).await.expect("connect");
    async_nats::jetstream::new(client).delete_stream("kept-rooms").await.expect("delete the stream");
}

/// Two nodes serve a room; the stream is deleted. The next send gets the next seq in the same
/// epoch, both members receive it with no reset, and history holds every acknowledged message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_stream_goes_on_from_the_store_in_the_same_epoch() {
    let nats = NatsServer::start();
    let store = MemoryStore::new();
    let (a, b) = (engine(&nats, &store, "a").await, engine(&nats, &store, "b").await);
    let (mut alice, _ta) = connect(&a, "alice").await;
    let (mut bob, _tb) = connect(&b, "bob").await;
    let epoch = alice.join("r", None).await.expect("join").epoch;
    bob.join("r", None).await.expect("join");
    for n in 1..=5 {
        let sender = if n % 2 == 0 { &alice } else { &bob };
        assert_eq!(sender.send("r", json!(n)).await.expect("sent"), Some(n));
    }
    for c in [&mut alice, &mut bob] {
        for n in 1..=5 {
            assert_eq!(next_stored(c).await, Some(n));
        }
    }
    lose_the_stream(&nats).await;
    assert_eq!(bob.send("r", json!(6)).await.expect("sent"), Some(6), "the next seq, not 1");
    for c in [&mut alice, &mut bob] {
        assert_eq!(next_stored(c).await, Some(6), "no reset");
    }
    let page = alice.history("r", HistoryQuery::latest(50)).await.expect("history");
    assert_eq!(page.epoch, epoch, "the same epoch");
    let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq.expect("seq")).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6], "1..5 from the store, 6 from the stream");
    a.shutdown().await;
    b.shutdown().await;
}

/// The stream is deleted twice, and each time a client resends a message it had sent with a
/// key before: it gets the original seq, and nothing is delivered a second time, whether a
/// send (first loss) or a node subscribing (second loss) reaches the room first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_after_the_stream_was_lost_gets_its_original_seq() {
    let nats = NatsServer::start();
    let store = MemoryStore::new();
    let (a, b) = (engine(&nats, &store, "a").await, engine(&nats, &store, "b").await);
    let (mut alice, _ta) = connect(&a, "alice").await;
    let (mut bob, _tb) = connect(&b, "bob").await;
    alice.join("r", None).await.expect("join");
    bob.join("r", None).await.expect("join");
    for n in 1..=4 {
        let key = format!("k{n}");
        assert_eq!(bob.send_with("r", json!(n), Some(&key), false).await.expect("sent"), Some(n));
    }
    assert_eq!(alice.send("r", json!(5)).await.expect("sent"), Some(5), "one without a key");
    for c in [&mut alice, &mut bob] {
        for n in 1..=5 {
            assert_eq!(next_stored(c).await, Some(n));
        }
    }

    lose_the_stream(&nats).await;
    assert_eq!(bob.send_with("r", json!(3), Some("k3"), false).await.expect("sent"), Some(3), "the original seq");
    assert_eq!(bob.send_with("r", json!(6), Some("k6"), false).await.expect("sent"), Some(6), "a new key");
    for c in [&mut alice, &mut bob] {
        assert_eq!(next_stored(c).await, Some(6), "3 is not delivered again, and no reset");
    }

    lose_the_stream(&nats).await;
    let c = engine(&nats, &store, "c").await;
    let (carol, _tc) = connect(&c, "carol").await;
    assert_eq!(carol.join("r", None).await.expect("join").seq, 6, "a node subscribing first");
    assert_eq!(bob.send_with("r", json!(6), Some("k6"), false).await.expect("sent"), Some(6), "the original seq");
    assert_eq!(bob.send_with("r", json!(1), Some("k1"), false).await.expect("sent"), Some(1), "the original seq");
    assert_eq!(alice.send("r", json!(7)).await.expect("sent"), Some(7));
    for c in [&mut alice, &mut bob] {
        assert_eq!(next_stored(c).await, Some(7));
    }
    let page = alice.history("r", HistoryQuery::latest(50)).await.expect("history");
    let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq.expect("seq")).collect();
    assert_eq!(seqs, (1..=7).collect::<Vec<_>>(), "each message once");
    for e in [a, b, c] {
        e.shutdown().await;
    }
}

/// The stream comes back older than the store (its last three records gone, as from a backup)
/// and the node restarts with it, so no node remembers the newer messages: the store does,
/// and the room goes on from it in the same epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_older_than_the_store_goes_on_from_the_store() {
    let nats = NatsServer::start();
    let store = MemoryStore::new();
    let a = engine(&nats, &store, "a").await;
    let (alice, _ta) = connect(&a, "alice").await;
    let epoch = alice.join("r", None).await.expect("join").epoch;
    for n in 1..=6 {
        assert_eq!(alice.send("r", json!(n)).await.expect("sent"), Some(n));
    }
    a.shutdown().await;
    drop(alice);
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let mut stream = async_nats::jetstream::new(client).get_stream("kept-rooms").await.expect("the stream");
    let last = stream.info().await.expect("the stream's state").state.last_sequence;
    for sseq in last - 2..=last {
        let record = stream.get_raw_message(sseq).await.expect("a record");
        assert_eq!(record.subject.as_str(), "kept.r.r", "only the room's messages are in the stream");
        assert!(stream.delete_message(sseq).await.expect("deleted"));
    }

    let b = engine(&nats, &store, "b").await;
    let (bob, _tb) = connect(&b, "bob").await;
    let joined = bob.join("r", None).await.expect("join");
    assert_eq!((joined.epoch.as_str(), joined.seq), (epoch.as_str(), 6), "where the store stands");
    assert_eq!(bob.send("r", json!(7)).await.expect("sent"), Some(7));
    let page = bob.history("r", HistoryQuery::latest(50)).await.expect("history");
    let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq.expect("seq")).collect();
    assert_eq!(seqs, (1..=7).collect::<Vec<_>>());
    b.shutdown().await;
}
