//! `Reconnecting` against an engine through in-memory connections that the test can break and
//! refuse: a `bye` that says not to come back stops it, unanswered sends are bounded and
//! resent once a connection is back, rooms the server no longer allows are reported. (Over real
//! TCP, with recovery after a lost reply and a restarted server: chat-transport-tcp's
//! tests/reconnect.rs.)

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use chat_core::client::{
    Backoff, Client, ClientError, Event, HistoryQuery, ReconnectOptions, Reconnected, Reconnecting, Update,
};
use chat_core::{async_trait, Action, Authorizer, ConnInfo, Engine, ErrorCode, Identity, Inbound, Refusal, RoomName};
use common::WAIT;
use futures::StreamExt;
use serde_json::json;
use tokio::task::JoinHandle;

/// Connections to an engine that the test can cut (every server side ends) and refuse.
#[derive(Default)]
struct Network {
    down: AtomicBool,
    attempts: AtomicUsize,
    servers: Mutex<Vec<JoinHandle<()>>>,
}

impl Network {
    fn connector(
        self: &Arc<Self>,
        engine: &Engine,
    ) -> impl Fn() -> futures::future::BoxFuture<'static, Result<Client, ClientError>> {
        let (network, engine) = (self.clone(), engine.clone());
        move || {
            let (network, engine) = (network.clone(), engine.clone());
            Box::pin(async move {
                network.attempts.fetch_add(1, Ordering::SeqCst);
                if network.down.load(Ordering::SeqCst) {
                    return Err(ClientError::Connect("the network is down".into()));
                }
                let (to_server, from_client) = futures::channel::mpsc::unbounded::<Bytes>();
                let (to_client, from_server) = futures::channel::mpsc::unbounded::<Bytes>();
                let server = tokio::spawn(async move {
                    let inbound = from_client.map(|b| Ok::<_, std::io::Error>(Inbound::Frame(b)));
                    engine.serve(inbound, to_client, ConnInfo::default()).await
                });
                network.servers.lock().unwrap_or_else(PoisonError::into_inner).push(server);
                Client::connect(from_server.map(Ok::<_, std::io::Error>), to_server, Some("alice"), None).await
            })
        }
    }

    /// Ends every connection from the server's side, as if the network had failed.
    fn cut(&self) {
        for server in self.servers.lock().unwrap_or_else(PoisonError::into_inner).drain(..) {
            server.abort();
        }
    }
}

fn options() -> ReconnectOptions {
    let mut options = ReconnectOptions::default();
    options.backoff = Backoff { min: Duration::from_millis(1), max: Duration::from_millis(20) };
    options
}

async fn update(client: &mut Reconnecting) -> Result<Update, ClientError> {
    tokio::time::timeout(WAIT, client.next_update()).await.expect("an update in time")
}

async fn reconnected(client: &mut Reconnecting) -> Reconnected {
    loop {
        if let Update::Reconnected(done) = update(client).await.expect("an update") {
            return done;
        }
    }
}

#[tokio::test]
async fn a_bye_that_says_not_to_come_back_stops_it_until_asked() {
    let engine = common::engine().await;
    let network = Arc::new(Network::default());
    let mut alice = Reconnecting::connect(network.connector(&engine), options()).await.expect("connected");
    alice.join("r", None).await.expect("joined");
    assert_eq!(engine.kick("alice"), 1);
    loop {
        match update(&mut alice).await.expect("events first") {
            Update::Event(Event::Bye(bye)) => {
                assert_eq!((bye.reason.as_str(), bye.reconnect), ("kicked", false));
                break;
            }
            Update::Event(_) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(update(&mut alice).await, Ok(Update::Disconnected));
    assert_eq!(update(&mut alice).await, Err(ClientError::Closed));
    assert_eq!(alice.history("r", HistoryQuery::latest(1)).await.unwrap_err(), ClientError::Closed);
    assert_eq!(network.attempts.load(Ordering::SeqCst), 1, "no attempt to come back");

    let done = tokio::time::timeout(WAIT, alice.reconnect()).await.expect("in time").expect("back when asked");
    assert_eq!(done.rejoined.len(), 1);
    assert_eq!(done.rejoined[0].room, "r");
    assert_eq!(alice.send("r", json!("back")).await, Ok(1));
    engine.shutdown().await;
}

#[tokio::test]
async fn unanswered_sends_are_bounded_and_resent_when_a_connection_is_back() {
    let engine = common::engine().await;
    let network = Arc::new(Network::default());
    let mut options = options();
    options.max_attempts = Some(2);
    options.max_unacked = 1;
    let mut alice = Reconnecting::connect(network.connector(&engine), options).await.expect("connected");
    alice.join("r", None).await.expect("joined");

    // The connection breaks and no new one can be made: the send fails, but is kept.
    network.down.store(true, Ordering::SeqCst);
    network.cut();
    let failed = tokio::time::timeout(WAIT, alice.send_keyed("r", json!("kept"), "k1")).await.expect("in time");
    assert!(matches!(failed, Err(ClientError::Connect(_))), "{failed:?}");
    assert_eq!(alice.unacked(), 1);
    let full = tokio::time::timeout(WAIT, alice.send_keyed("r", json!("refused"), "k2")).await.expect("in time");
    assert_eq!(full, Err(ClientError::Backlog));

    // Back: the kept send goes out first thing, once.
    network.down.store(false, Ordering::SeqCst);
    let done = reconnected(&mut alice).await;
    assert_eq!(done.rejoined.len(), 1);
    assert_eq!(done.resent.len(), 1);
    assert_eq!((done.resent[0].key.as_str(), &done.resent[0].result), ("k1", &Ok(1)));
    assert_eq!(alice.unacked(), 0);
    assert_eq!(alice.send_keyed("r", json!("kept"), "k1").await, Ok(1), "the key names the stored message");
    let page = alice.history("r", HistoryQuery::latest(10)).await.expect("history");
    assert_eq!(page.seqs(), [1]);
    engine.shutdown().await;
}

/// Refuses the room `closed` once `closing` is set.
struct Closing(Arc<AtomicBool>);

#[async_trait]
impl Authorizer for Closing {
    async fn authorize(&self, _: &Identity, room: &RoomName, _: Action) -> Result<(), Refusal> {
        match room.as_str() == "closed" && self.0.load(Ordering::SeqCst) {
            true => Err(Refusal("this room is closed".into())),
            false => Ok(()),
        }
    }
}

#[tokio::test]
async fn a_room_that_cannot_be_rejoined_is_reported_with_its_unanswered_sends() {
    let closing = Arc::new(AtomicBool::new(false));
    let engine = Engine::builder().authorizer(Closing(closing.clone())).build().await.expect("engine");
    let network = Arc::new(Network::default());
    let mut options = options();
    options.max_attempts = Some(1);
    let mut alice = Reconnecting::connect(network.connector(&engine), options).await.expect("connected");
    alice.join("open", None).await.expect("joined");
    alice.join("closed", None).await.expect("joined");
    network.down.store(true, Ordering::SeqCst);
    network.cut();
    for (room, key) in [("open", "k1"), ("closed", "k2")] {
        let failed = tokio::time::timeout(WAIT, alice.send_keyed(room, json!(key), key)).await.expect("in time");
        assert!(failed.is_err(), "{failed:?}");
    }
    assert_eq!(alice.unacked(), 2);

    closing.store(true, Ordering::SeqCst);
    network.down.store(false, Ordering::SeqCst);
    let done = reconnected(&mut alice).await;
    let rooms: Vec<_> = done.rejoined.iter().map(|j| j.room.as_str()).collect();
    assert_eq!(rooms, ["open"]);
    assert_eq!(done.refused.len(), 1);
    assert_eq!((done.refused[0].0.as_str(), done.refused[0].1.code()), ("closed", Some(ErrorCode::Forbidden)));
    let resent: Vec<_> =
        done.resent.iter().map(|r| (r.key.as_str(), r.result.as_ref().map_err(|e| e.code()))).collect();
    assert_eq!(resent, [("k2", Err(Some(ErrorCode::Forbidden))), ("k1", Ok(&1))]);
    assert_eq!(alice.rooms().collect::<Vec<_>>(), ["open"]);
    assert_eq!(alice.unacked(), 0);
    engine.shutdown().await;
}
