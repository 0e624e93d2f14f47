//! [`Reconnecting`]: a client that survives lost connections, over any transport. It is built
//! from a connector (a closure that opens one connection: `chat_transport_tcp::connect`,
//! `chat_transport_ws::connect`, an in-memory pipe...). When the connection is lost it
//! connects again with a bounded, jittered exponential backoff, rejoins every room it had
//! joined with `since` = the last position seen there (so the server replays what was
//! missed), and resends the keyed sends that had no reply (the key makes a resend harmless: the
//! server answers with the original seq). What happened is reported as [`Update::Reconnected`].

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use serde_json::Value;

use super::{Client, ClientError, Event, HistoryPage, HistoryQuery, Joined, Presence, Welcome};
use crate::broker::random_u64;
use crate::protocol::Since;

/// Opens one connection (see [`Reconnecting::new`]).
type Connector = Box<dyn Fn() -> BoxFuture<'static, Result<Client, ClientError>> + Send + Sync>;

/// How long to wait between connection attempts: exponential from `min` to `max`, with "equal
/// jitter" (half of each delay fixed, half random) so that many clients cut off at once do not
/// come back at once.
///
/// ```
/// use std::time::Duration;
/// use chat_core::client::Backoff;
/// let backoff = Backoff { min: Duration::from_millis(100), max: Duration::from_secs(5) };
/// for attempt in 0..40 {
///     let delay = backoff.delay(attempt);
///     let ceiling = (Duration::from_millis(100) * 2u32.pow(attempt.min(6))).min(Duration::from_secs(5));
///     assert!(delay >= ceiling / 2 && delay <= ceiling, "{attempt}: {delay:?}");
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling of the first delay.
    pub min: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Backoff {
    /// The delay before attempt `attempt` + 1 (`attempt` failures so far): in
    /// `[ceiling / 2, ceiling]`, where the ceiling doubles from `min` up to `max`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.min.saturating_mul(1 << attempt.min(16)).min(self.max);
        let half = ceiling / 2;
        let random = random_u64() % 1_000_001;
        half + half.mul_f64(random as f64 / 1_000_000.0)
    }
}

/// How a [`Reconnecting`] client behaves.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ReconnectOptions {
    /// The pause between attempts (default: 100 ms doubling up to 5 s).
    pub backoff: Backoff,
    /// How many attempts in a row before giving up (the call then fails with the last error;
    /// the next call starts again). `None` (the default): never give up, except when the
    /// server refuses the session itself ([`ClientError::is_refusal`]).
    pub max_attempts: Option<u32>,
    /// How many keyed sends without a reply are kept for resending (default 1,024); beyond
    /// that a send fails at once with [`ClientError::Backlog`].
    pub max_unacked: usize,
}

impl Default for ReconnectOptions {
    fn default() -> Self {
        ReconnectOptions {
            backoff: Backoff { min: Duration::from_millis(100), max: Duration::from_secs(5) },
            max_attempts: None,
            max_unacked: 1024,
        }
    }
}

/// What [`Reconnecting::next_update`] hands out.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Update {
    /// An event of the server.
    Event(Event),
    /// The connection is gone (after the events it had received, a `bye` among them if the
    /// server said one); the next call reconnects, unless that `bye` said not to.
    Disconnected,
    /// A new connection is up: rooms rejoined, unanswered sends resent.
    Reconnected(Reconnected),
}

/// What reconnecting did.
#[derive(Debug, Clone, PartialEq)]
pub struct Reconnected {
    /// The new session.
    pub welcome: Welcome,
    /// Every room rejoined. Where [`Joined::recovered`] is true the server replays what was
    /// missed, as events that follow; where it is false it could not (the history was reset,
    /// or too much was missed): reload the room with `history`. Either way the position kept
    /// for the room now follows the new connection.
    pub rejoined: Vec<Joined>,
    /// Rooms that could not be rejoined (the server refused), with why; they are forgotten.
    pub refused: Vec<(String, ClientError)>,
    /// The keyed sends that had no reply and were sent again, in order.
    pub resent: Vec<Resent>,
}

/// A keyed send sent again after a reconnection.
#[derive(Debug, Clone, PartialEq)]
pub struct Resent {
    /// The room.
    pub room: String,
    /// Its idempotency key.
    pub key: String,
    /// The server's answer: the message's seq (the original one if the first send had been
    /// stored), or why it refused.
    pub result: Result<u64, ClientError>,
}

/// A keyed send without a reply yet.
#[derive(Debug, Clone)]
struct Unacked {
    room: String,
    body: Value,
    key: String,
}

/// How many times one call reconnects before it gives up on a connection that keeps dying.
const CALL_RETRIES: usize = 3;

/// A client that reconnects by itself, with recovery (see the module's documentation).
///
/// All requests go through `&mut self`: one at a time, like the connection itself orders them.
/// Rooms joined with [`join`](Self::join) are rejoined after a reconnection; the position kept
/// for each is the last message [`next_update`](Self::next_update) handed out.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use chat_core::client::{Client, Event, ReconnectOptions, Reconnecting, Update};
/// use chat_core::{ConnInfo, Engine, Inbound};
/// use futures::StreamExt;
///
/// let engine = Engine::builder().build().await.unwrap();
/// // The connector opens one connection; a transport's `connect` would go here.
/// let server = engine.clone();
/// let connector = move || {
///     let server = server.clone();
///     async move {
///         let (to_server, from_client) = futures::channel::mpsc::unbounded::<bytes::Bytes>();
///         let (to_client, from_server) = futures::channel::mpsc::unbounded::<bytes::Bytes>();
///         tokio::spawn(async move {
///             let inbound = from_client.map(|b| Ok::<_, std::io::Error>(Inbound::Frame(b)));
///             server.serve(inbound, to_client, ConnInfo::default()).await
///         });
///         Client::connect(from_server.map(Ok::<_, std::io::Error>), to_server, Some("alice"), None).await
///     }
/// };
/// let mut alice = Reconnecting::connect(connector, ReconnectOptions::default()).await.unwrap();
/// alice.join("lobby", None).await.unwrap();
/// let seq = alice.send("lobby", serde_json::json!({"text": "hi"})).await.unwrap();
/// assert_eq!(seq, 1);
/// loop {
///     if let Update::Event(Event::Message(m)) = alice.next_update().await.unwrap() {
///         assert_eq!(m.seq, Some(1));
///         break;
///     }
/// }
/// assert_eq!(alice.since("lobby").map(|s| s.seq), Some(1));
/// # engine.shutdown().await;
/// # }
/// ```
pub struct Reconnecting {
    connector: Connector,
    options: ReconnectOptions,
    client: Option<Client>,
    /// A lost connection whose received events are still to be handed out.
    draining: Option<Client>,
    /// Every room joined, with the last position seen there.
    rooms: BTreeMap<String, Since>,
    /// Keyed sends without a reply, oldest first.
    unacked: VecDeque<Unacked>,
    /// What to hand out before reading the connection again.
    pending: VecDeque<Result<Update, ClientError>>,
    /// Failed attempts since the last connection.
    attempt: u32,
    /// The server's last `bye` said not to come back.
    stopped: bool,
    key_prefix: String,
    next_key: u64,
}

impl std::fmt::Debug for Reconnecting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconnecting")
            .field("client", &self.client)
            .field("rooms", &self.rooms)
            .field("unacked", &self.unacked.len())
            .finish_non_exhaustive()
    }
}

impl Reconnecting {
    /// A client that opens its connections with `connector`, not connected yet: the first
    /// call that needs the server connects, and [`next_update`](Self::next_update) reports
    /// that first connection as an [`Update::Reconnected`] too.
    pub fn new<F, Fut>(connector: F, options: ReconnectOptions) -> Reconnecting
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Client, ClientError>> + Send + 'static,
    {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
        Reconnecting {
            connector: Box::new(move || Box::pin(connector())),
            options,
            client: None,
            draining: None,
            rooms: BTreeMap::new(),
            unacked: VecDeque::new(),
            pending: VecDeque::new(),
            attempt: 0,
            stopped: false,
            key_prefix: format!("{nanos:x}-{:x}", random_u64()),
            next_key: 0,
        }
    }

    /// [`new`](Self::new), then connects (retrying as [`options`](ReconnectOptions) say); this
    /// first connection is not reported as an update.
    pub async fn connect<F, Fut>(connector: F, options: ReconnectOptions) -> Result<Reconnecting, ClientError>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Client, ClientError>> + Send + 'static,
    {
        let mut client = Reconnecting::new(connector, options);
        client.reconnect().await?;
        client.pending.clear(); // the first connection is no news
        Ok(client)
    }

    /// The current connection, if there is one (for what this type does not wrap; rooms
    /// joined through it directly are not rejoined).
    pub fn client(&self) -> Option<&Client> {
        self.client.as_ref()
    }

    /// The current session's `welcome`, while connected.
    pub fn welcome(&self) -> Option<&Welcome> {
        self.client.as_ref().map(Client::welcome)
    }

    /// The position kept for `room`: what a rejoin asks the server to replay after.
    pub fn since(&self, room: &str) -> Option<&Since> {
        self.rooms.get(room)
    }

    /// The rooms joined, in name order.
    pub fn rooms(&self) -> impl Iterator<Item = &str> {
        self.rooms.keys().map(String::as_str)
    }

    /// How many keyed sends wait for a reply (to be resent on the next connection).
    pub fn unacked(&self) -> usize {
        self.unacked.len()
    }

    /// Connects now (dropping the current connection, if any), rejoins every room and resends
    /// what had no reply; also after a `bye` that said not to come back. Returns what it did
    /// (also queued as [`Update::Reconnected`]).
    pub async fn reconnect(&mut self) -> Result<Reconnected, ClientError> {
        self.stopped = false;
        self.lost();
        // What the old connection received comes before the news of the new one.
        self.drain().await;
        loop {
            if self.attempt > 0 {
                tokio::time::sleep(self.options.backoff.delay(self.attempt - 1)).await;
            }
            match self.attempt_once().await {
                Ok(done) => {
                    self.attempt = 0;
                    self.pending.push_back(Ok(Update::Reconnected(done.clone())));
                    return Ok(done);
                }
                Err(e) if e.is_refusal() => {
                    self.attempt = 0;
                    return Err(e);
                }
                Err(e) => {
                    tracing::debug!(error = %e, attempt = self.attempt, "reconnection failed");
                    self.attempt += 1;
                    if self.options.max_attempts.is_some_and(|max| self.attempt >= max) {
                        self.attempt = 0;
                        return Err(e);
                    }
                }
            }
        }
    }

    /// One connection attempt: connect, rejoin, resend.
    async fn attempt_once(&mut self) -> Result<Reconnected, ClientError> {
        let client = (self.connector)().await?;
        let mut done = Reconnected {
            welcome: client.welcome().clone(),
            rejoined: Vec::new(),
            refused: Vec::new(),
            resent: Vec::new(),
        };
        let rooms: Vec<(String, Since)> = self.rooms.iter().map(|(r, s)| (r.clone(), s.clone())).collect();
        for (room, since) in rooms {
            match client.join(&room, Some(since)).await {
                Ok(joined) => {
                    if !joined.recovered {
                        self.rooms.insert(room, joined.since());
                    }
                    done.rejoined.push(joined);
                }
                Err(ClientError::Server(e)) => {
                    let refusal = ClientError::Server(e);
                    for dropped in self.forget(&room) {
                        done.resent.push(Resent { room: dropped.room, key: dropped.key, result: Err(refusal.clone()) });
                    }
                    done.refused.push((room, refusal));
                }
                Err(e) => return Err(e),
            }
        }
        while let Some(next) = self.unacked.front() {
            let result = match client.send_with(&next.room, next.body.clone(), Some(&next.key), false).await {
                Ok(seq) => seq.ok_or_else(no_seq),
                Err(e @ ClientError::Server(_)) => Err(e),
                Err(e) => return Err(e),
            };
            if let Some(sent) = self.unacked.pop_front() {
                done.resent.push(Resent { room: sent.room, key: sent.key, result });
            }
        }
        self.client = Some(client);
        Ok(done)
    }

    /// The connection is gone (or given up on): it is closed, and what it had received is
    /// handed out next (see [`drain`](Self::drain)).
    fn lost(&mut self) {
        if let Some(client) = self.client.take() {
            client.close();
            self.draining = Some(client);
        }
    }

    /// Queues what the lost connection had received, then [`Update::Disconnected`]. Safe to
    /// cancel: what is left stays in `draining` for the next call.
    async fn drain(&mut self) {
        loop {
            let Some(client) = self.draining.as_mut() else { return };
            match client.next_frame().await {
                Some(frame) => {
                    let update = Event::parse(&frame).map(|event| {
                        self.observe(&event);
                        Update::Event(event)
                    });
                    self.pending.push_back(update);
                }
                None => {
                    self.draining = None;
                    self.pending.push_back(Ok(Update::Disconnected));
                }
            }
        }
    }

    /// Keeps the rooms' positions up to date with an event handed out.
    fn observe(&mut self, event: &Event) {
        match event {
            Event::Message(m) => {
                if let (Some(position), Some(seq)) = (self.rooms.get_mut(&m.room), m.seq) {
                    position.seq = position.seq.max(seq);
                }
            }
            Event::Reset(r) => {
                if let Some(position) = self.rooms.get_mut(&r.room) {
                    *position = r.since();
                }
            }
            Event::Bye(bye) if !bye.reconnect => self.stopped = true,
            // Out of the room: not rejoined on the next connection, and its unanswered
            // sends are dropped with it (they would be refused).
            Event::Kicked(k) => {
                self.forget(&k.room);
            }
            _ => {}
        }
    }

    /// Forgets `room`; returns its unanswered sends, dropped with it.
    fn forget(&mut self, room: &str) -> VecDeque<Unacked> {
        self.rooms.remove(room);
        let (dropped, kept) = std::mem::take(&mut self.unacked).into_iter().partition(|u| u.room == room);
        self.unacked = kept;
        dropped
    }

    /// The next event, or news of the connection: [`Update::Disconnected`] when it is lost
    /// (after the events it had received), [`Update::Reconnected`] once it is replaced. A
    /// connection silent for twice the heartbeat that does not answer a ping counts as lost.
    ///
    /// Safe to use in `select!`: a call dropped while reconnecting leaves nothing half done
    /// that the next call does not take up. Fails when reconnecting fails (see [`ReconnectOptions::max_attempts`]; the next
    /// call tries again), when the server's `bye` said not to come back
    /// ([`ClientError::Closed`] until [`reconnect`](Self::reconnect)), and for a frame that is
    /// not a valid event ([`ClientError::Protocol`], the next call goes on).
    pub async fn next_update(&mut self) -> Result<Update, ClientError> {
        loop {
            if let Some(update) = self.pending.pop_front() {
                return update;
            }
            if self.draining.is_some() {
                self.drain().await;
                continue;
            }
            if self.stopped {
                // The connection ends after that `bye`: say so, then stay down.
                if self.client.is_some() {
                    self.lost();
                    continue;
                }
                return Err(ClientError::Closed);
            }
            let Some(client) = self.client.as_mut() else {
                self.reconnect().await?;
                continue;
            };
            let silence = Duration::from_millis(client.welcome().heartbeat_ms.max(500)) * 2;
            match tokio::time::timeout(silence, client.next_event()).await {
                Ok(Ok(event)) => {
                    self.observe(&event);
                    return Ok(Update::Event(event));
                }
                Ok(Err(ClientError::Closed)) => self.lost(),
                Ok(Err(e)) => return Err(e),
                // Quiet: the server pings an idle connection, and the client answers unseen.
                // Make sure the peer is still there.
                Err(_) => {
                    if !matches!(tokio::time::timeout(silence, client.sync()).await, Ok(Ok(()))) {
                        self.lost();
                    }
                }
            }
        }
    }

    /// The connection, connecting first if there is none.
    async fn connected(&mut self) -> Result<&Client, ClientError> {
        if self.client.is_none() {
            if self.stopped {
                return Err(ClientError::Closed);
            }
            self.reconnect().await?;
        }
        self.client.as_ref().ok_or(ClientError::Closed)
    }

    /// Joins `room` (from `since` when given: a position kept from an earlier run) and keeps
    /// it joined across reconnections.
    pub async fn join(&mut self, room: &str, since: Option<Since>) -> Result<Joined, ClientError> {
        for _ in 0..CALL_RETRIES {
            let result = self.connected().await?.join(room, since.clone()).await;
            match result {
                Ok(joined) => {
                    let position = match since {
                        Some(since) if joined.recovered => since,
                        _ => joined.since(),
                    };
                    self.rooms.insert(room.to_owned(), position);
                    return Ok(joined);
                }
                Err(ClientError::Closed) => self.lost(),
                Err(e) => return Err(e),
            }
        }
        Err(ClientError::Closed)
    }

    /// Leaves `room` and forgets it (and its unanswered sends).
    pub async fn leave(&mut self, room: &str) -> Result<(), ClientError> {
        drop(self.forget(room));
        match self.client.as_ref() {
            Some(client) => match client.leave(room).await {
                // Not connected means not in the room either.
                Err(ClientError::Closed) => Ok(()),
                other => other,
            },
            None => Ok(()),
        }
    }

    /// Sends a stored message with a fresh idempotency key; returns its seq. If the connection
    /// is lost before the reply, the message is sent again (same key) on the next connection:
    /// it is stored once.
    pub async fn send(&mut self, room: &str, body: Value) -> Result<u64, ClientError> {
        self.next_key += 1;
        let key = format!("{}-{}", self.key_prefix, self.next_key);
        self.send_keyed(room, body, &key).await
    }

    /// Like [`send`](Self::send) with the caller's key. When the call fails without a reply
    /// (reconnecting gave up), the send stays queued and is resent on the next connection
    /// (see [`Reconnected::resent`]). A refusal (`forbidden`, `unavailable`...) is an answer:
    /// nothing is resent then.
    pub async fn send_keyed(&mut self, room: &str, body: Value, key: &str) -> Result<u64, ClientError> {
        // Sending again a key that waits already (after a failed call) adds nothing to resend.
        if !self.unacked.iter().any(|u| u.key == key) {
            if self.unacked.len() >= self.options.max_unacked {
                return Err(ClientError::Backlog);
            }
            self.unacked.push_back(Unacked { room: room.to_owned(), body: body.clone(), key: key.to_owned() });
        }
        for _ in 0..CALL_RETRIES {
            if self.client.is_none() {
                // Reconnecting resends it, with whatever else had no reply.
                let done = self.reconnect().await?;
                if let Some(resent) = done.resent.into_iter().rev().find(|r| r.key == key) {
                    return resent.result;
                }
            }
            let result = self.connected().await?.send_with(room, body.clone(), Some(key), false).await;
            match result {
                Err(ClientError::Closed) => self.lost(),
                result => {
                    if let Some(at) = self.unacked.iter().position(|u| u.key == key) {
                        self.unacked.remove(at);
                    }
                    return result.and_then(|seq| seq.ok_or_else(no_seq));
                }
            }
        }
        Err(ClientError::Closed)
    }

    /// Sends an ephemeral message (not stored, no seq): never resent.
    pub async fn send_ephemeral(&mut self, room: &str, body: Value) -> Result<(), ClientError> {
        self.connected().await?.send_with(room, body, None, true).await.map(drop)
    }

    /// A page of `room`'s history (asked again on a new connection if the first one is lost).
    pub async fn history(&mut self, room: &str, query: HistoryQuery) -> Result<HistoryPage, ClientError> {
        for _ in 0..CALL_RETRIES {
            match self.connected().await?.history(room, query).await {
                Err(ClientError::Closed) => self.lost(),
                result => return result,
            }
        }
        Err(ClientError::Closed)
    }

    /// The room's members (asked again on a new connection if the first one is lost).
    pub async fn presence(&mut self, room: &str) -> Result<Presence, ClientError> {
        for _ in 0..CALL_RETRIES {
            match self.connected().await?.presence(room).await {
                Err(ClientError::Closed) => self.lost(),
                result => return result,
            }
        }
        Err(ClientError::Closed)
    }
}

fn no_seq() -> ClientError {
    ClientError::Protocol("`sent` without a seq for a stored message".to_owned())
}
