//! Helpers for the behaviour tests: engines, clients and raw connections wired to an engine's
//! driver through in-memory channels (a transport would use a socket; the core does not care).
#![allow(dead_code)]

use std::time::Duration;

use bytes::Bytes;
use chat_core::client::{Client, Event, Message};
use chat_core::{ConnInfo, Engine, Inbound};
use futures::channel::mpsc;
use futures::StreamExt;
use serde_json::Value;

/// How long any single expected event may take before a test fails.
pub const WAIT: Duration = Duration::from_secs(30);

pub async fn engine() -> Engine {
    Engine::builder().build().await.expect("engine")
}

/// A connected client (hello done) for `user`.
pub async fn client(engine: &Engine, user: &str) -> Client {
    let (to_server, from_client) = mpsc::unbounded::<Bytes>();
    let (to_client, from_server) = mpsc::unbounded::<Bytes>();
    let server = engine.clone();
    tokio::spawn(async move {
        let inbound = from_client.map(|b| Ok::<_, std::io::Error>(Inbound::Frame(b)));
        server.serve(inbound, to_client, ConnInfo::default()).await
    });
    let connect = Client::connect(from_server.map(Ok::<_, std::io::Error>), to_server, Some(user), None);
    tokio::time::timeout(WAIT, connect).await.expect("connect in time").expect("welcome")
}

/// The next event of `client`, parsed, within [`WAIT`].
pub async fn event(client: &mut Client) -> Event {
    tokio::time::timeout(WAIT, client.next_event()).await.expect("an event in time").expect("a valid event")
}

/// The next event of `client` that `pick` takes, skipping others, each within [`WAIT`].
pub async fn event_where<T>(client: &mut Client, pick: impl Fn(Event) -> Option<T>) -> T {
    loop {
        if let Some(found) = pick(event(client).await) {
            return found;
        }
    }
}

/// The next `message` event of `client`, skipping other events.
pub async fn message(client: &mut Client) -> Message {
    event_where(client, |e| match e {
        Event::Message(m) => Some(m),
        _ => None,
    })
    .await
}

/// A raw connection: frames in, frames out, nothing done on our side.
pub struct Raw {
    pub tx: mpsc::UnboundedSender<Result<Inbound, std::io::Error>>,
    pub rx: mpsc::UnboundedReceiver<Bytes>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Raw {
    pub fn new(engine: &Engine) -> Raw {
        let (tx, inbound) = mpsc::unbounded();
        let (outbound, rx) = mpsc::unbounded();
        let server = engine.clone();
        let task = tokio::spawn(async move { server.serve(inbound, outbound, ConnInfo::default()).await });
        Raw { tx, rx, task }
    }

    /// A raw connection that has said hello as `user`.
    pub async fn hello(engine: &Engine, user: &str) -> Raw {
        let mut raw = Raw::new(engine);
        raw.send(&format!(r#"{{"type":"hello","id":0,"protocol":1,"user":"{user}"}}"#));
        assert_eq!(raw.recv().await["type"], "welcome");
        raw
    }

    pub fn send(&self, frame: &str) {
        self.send_bytes(Bytes::copy_from_slice(frame.as_bytes()));
    }

    pub fn send_bytes(&self, frame: Bytes) {
        self.tx.unbounded_send(Ok(Inbound::Frame(frame))).expect("server reading");
    }

    pub fn send_inbound(&self, item: Inbound) {
        self.tx.unbounded_send(Ok(item)).expect("server reading");
    }

    /// The next frame, raw.
    pub async fn recv_raw(&mut self) -> Bytes {
        tokio::time::timeout(WAIT, self.rx.next()).await.expect("a frame in time").expect("connection open")
    }

    /// The next frame, parsed.
    pub async fn recv(&mut self) -> Value {
        let frame = self.recv_raw().await;
        serde_json::from_slice(&frame).expect("the server sends JSON")
    }

    /// The next frame of type `ty`, skipping others.
    pub async fn recv_of(&mut self, ty: &str) -> Value {
        loop {
            let f = self.recv().await;
            if f["type"] == ty {
                return f;
            }
        }
    }

    /// Joins `room` and consumes the reply and this session's own `member_joined`.
    pub async fn join(&mut self, room: &str) -> Value {
        let joined = self.ask(&format!(r#"{{"type":"join","id":1000,"room":"{room}"}}"#)).await;
        assert_eq!(joined["type"], "joined", "{joined}");
        let own = self.recv().await;
        assert_eq!((own["type"].as_str(), own["room"].as_str()), (Some("member_joined"), Some(room)), "{own}");
        joined
    }

    /// Sends `frame` and returns the next frame.
    pub async fn ask(&mut self, frame: &str) -> Value {
        self.send(frame);
        self.recv().await
    }

    /// Expects an error with `code` (and `id`, when given) next.
    pub async fn expect_error(&mut self, frame: &str, code: &str, id: Option<u64>) {
        let reply = self.ask(frame).await;
        let frame: String = frame.chars().take(120).collect();
        assert_eq!(reply["type"], "error", "{frame} -> {reply}");
        assert_eq!(reply["code"], code, "{frame} -> {reply}");
        assert_eq!(reply["id"].as_u64(), id, "{frame} -> {reply}");
        assert!(reply["message"].as_str().is_some_and(|m| !m.is_empty()));
    }

    /// Expects `bye` with `reason` and then the end of the connection.
    pub async fn expect_bye(&mut self, reason: &str) {
        let bye = self.recv_of("bye").await;
        assert_eq!(bye["reason"], reason, "{bye}");
        let end = tokio::time::timeout(WAIT, self.rx.next()).await.expect("closed in time");
        assert!(end.is_none(), "nothing after bye, got {end:?}");
    }
}
