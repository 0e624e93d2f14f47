//! The core's `Reconnecting` client over real TCP: a lost connection is replaced, its rooms are
//! rejoined with `since` (what was missed is replayed), and a keyed send whose reply was lost is
//! resent once and stored once; a server restarted on the same port is found again.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chat_core::client::{Backoff, Client, Event, HistoryQuery, Message, ReconnectOptions, Reconnecting, Update};
use chat_core::{Engine, MemoryBroker};
use chat_transport_tcp::{connect, TcpServer};
use common::within;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A loopback proxy in front of a server, whose connections the test can mute (the server's
/// bytes are dropped on the floor) and cut (both sockets closed), like a network that fails.
#[derive(Default)]
struct Faults {
    mute: AtomicBool,
    cut: Mutex<CancellationToken>,
}

impl Faults {
    /// Closes every connection through the proxy; later ones work normally again.
    fn cut(&self) {
        let old = std::mem::take(&mut *self.cut.lock().unwrap_or_else(PoisonError::into_inner));
        self.mute.store(false, Ordering::SeqCst);
        old.cancel();
    }

    fn token(&self) -> CancellationToken {
        self.cut.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

async fn proxy(target: SocketAddr) -> (SocketAddr, Arc<Faults>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let faults = Arc::new(Faults::default());
    let shared = faults.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(target).await else { continue };
            let faults = shared.clone();
            let cut = faults.token();
            tokio::spawn(async move {
                let (mut client_in, mut client_out) = client.into_split();
                let (mut server_in, mut server_out) = server.into_split();
                let up = tokio::io::copy(&mut client_in, &mut server_out);
                let down = async {
                    let mut buf = vec![0; 16 * 1024];
                    loop {
                        let n = server_in.read(&mut buf).await?;
                        if n == 0 {
                            return Ok::<_, std::io::Error>(());
                        }
                        if !faults.mute.load(Ordering::SeqCst) {
                            client_out.write_all(&buf[..n]).await?;
                        }
                    }
                };
                tokio::select! { _ = up => {}, _ = down => {}, _ = cut.cancelled() => {} }
            });
        }
    });
    (addr, faults)
}

async fn server_on(addr: &str, broker: &MemoryBroker) -> (Engine, SocketAddr) {
    let engine = Engine::builder().broker(broker.clone()).build().await.expect("engine");
    let server = TcpServer::bind(addr, engine.clone()).await.expect("bind");
    let addr = server.local_addr().expect("addr");
    tokio::spawn(server.run());
    (engine, addr)
}

fn options() -> ReconnectOptions {
    let mut options = ReconnectOptions::default();
    options.backoff = Backoff { min: Duration::from_millis(10), max: Duration::from_millis(200) };
    options
}

/// The next update that `pick` takes, skipping others.
async fn update_where<T>(client: &mut Reconnecting, pick: impl Fn(Update) -> Option<T>) -> T {
    within("an update", async {
        loop {
            if let Some(found) = pick(client.next_update().await.expect("an update")) {
                return found;
            }
        }
    })
    .await
}

fn message(update: Update) -> Option<Message> {
    match update {
        Update::Event(Event::Message(m)) => Some(m),
        _ => None,
    }
}

/// The next message a plain client receives.
async fn next_message(client: &mut Client) -> Message {
    within("a message", async {
        loop {
            if let Event::Message(m) = client.next_event().await.expect("connected") {
                return m;
            }
        }
    })
    .await
}

#[tokio::test]
async fn a_send_whose_reply_was_lost_is_resent_once_and_the_room_recovered() {
    let broker = MemoryBroker::new();
    let (engine, server) = server_on("127.0.0.1:0", &broker).await;
    let (through_proxy, faults) = proxy(server).await;
    let mut bob = within("bob", connect(server, Some("bob"), None)).await.expect("bob");
    within("join", bob.join("r", None)).await.expect("bob joined");

    let connector = move || connect(through_proxy, Some("alice"), None);
    let mut alice = within("alice", Reconnecting::connect(connector, options())).await.expect("alice");
    within("join", alice.join("r", None)).await.expect("alice joined");
    assert_eq!(within("send", alice.send("r", json!("first"))).await, Ok(1));
    assert_eq!(update_where(&mut alice, message).await.seq, Some(1));
    assert_eq!(next_message(&mut bob).await.seq, Some(1));

    // The server stores the next send, but neither its reply nor the message reaches alice;
    // then her connection breaks.
    faults.mute.store(true, Ordering::SeqCst);
    let (sent, ()) = tokio::join!(within("the keyed send", alice.send_keyed("r", json!("once"), "k-once")), async {
        let stored = next_message(&mut bob).await;
        assert_eq!((stored.seq, &stored.body), (Some(2), &json!("once")));
        faults.cut();
    });
    assert_eq!(sent, Ok(2), "the resend got the original seq");
    assert_eq!(alice.unacked(), 0);

    let reconnected = update_where(&mut alice, |u| match u {
        Update::Reconnected(r) => Some(r),
        _ => None,
    })
    .await;
    assert_eq!(reconnected.rejoined.len(), 1);
    assert!(reconnected.rejoined[0].recovered, "{reconnected:?}");
    assert_eq!(reconnected.resent.len(), 1);
    assert_eq!((reconnected.resent[0].key.as_str(), &reconnected.resent[0].result), ("k-once", &Ok(2)));
    // What alice missed is replayed, once.
    let replayed = update_where(&mut alice, message).await;
    assert_eq!((replayed.seq, &replayed.body), (Some(2), &json!("once")));
    assert_eq!(alice.since("r").map(|s| s.seq), Some(2));

    // Nothing was stored twice: the next message is 3, for everyone.
    assert_eq!(within("send", bob.send("r", json!("after"))).await.expect("sent"), Some(3));
    assert_eq!(next_message(&mut bob).await.seq, Some(3));
    let after = update_where(&mut alice, message).await;
    assert_eq!((after.seq, &after.body), (Some(3), &json!("after")));
    let page = within("history", alice.history("r", HistoryQuery::latest(10))).await.expect("history");
    let bodies: Vec<_> = page.messages.iter().map(|m| (m.seq, m.body.clone())).collect();
    assert_eq!(bodies, [(Some(1), json!("first")), (Some(2), json!("once")), (Some(3), json!("after"))]);
    engine.shutdown().await;
}

#[tokio::test]
async fn a_server_restarted_on_the_same_port_is_found_again_and_replays_what_was_missed() {
    let broker = MemoryBroker::new();
    let (first, addr) = server_on("127.0.0.1:0", &broker).await;
    let connector = move || connect(addr, Some("alice"), None);
    let mut alice = within("alice", Reconnecting::connect(connector, options())).await.expect("alice");
    let joined = within("join", alice.join("r", None)).await.expect("joined");
    assert_eq!(within("send", alice.send("r", json!(1))).await, Ok(1));
    assert_eq!(update_where(&mut alice, message).await.seq, Some(1));

    within("shutdown", first.shutdown()).await;
    let bye = update_where(&mut alice, |u| match u {
        Update::Event(Event::Bye(bye)) => Some(bye),
        _ => None,
    })
    .await;
    assert!(bye.reconnect, "{bye:?}");

    // The same rooms (the broker lives on), a new process on the same port; messages arrive
    // before alice is back.
    let (second, again) = server_on(&addr.to_string(), &broker).await;
    assert_eq!(again, addr);
    let bob = within("bob", connect(addr, Some("bob"), None)).await.expect("bob");
    within("join", bob.join("r", None)).await.expect("bob joined");
    for n in 2..=3 {
        assert_eq!(within("send", bob.send("r", json!(n))).await.expect("sent"), Some(n));
    }

    let reconnected = update_where(&mut alice, |u| match u {
        Update::Reconnected(r) => Some(r),
        _ => None,
    })
    .await;
    assert_eq!(reconnected.rejoined.len(), 1);
    let rejoined = &reconnected.rejoined[0];
    assert_eq!((rejoined.epoch.as_str(), rejoined.seq, rejoined.recovered), (joined.epoch.as_str(), 3, true));
    for n in 2..=3 {
        let m = update_where(&mut alice, message).await;
        assert_eq!((m.seq, m.body.as_u64()), (Some(n), Some(n)));
    }
    assert_eq!(within("send", alice.send("r", json!(4))).await, Ok(4), "the session goes on");
    second.shutdown().await;
}
