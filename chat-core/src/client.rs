//! A `chat/1` client, generic over any framed connection: request ids and replies as futures,
//! a stream of events, automatic answers to the server's heartbeat pings, and, given a
//! [`TokenSource`], `refresh` with a new token before the session's identity expires.
//!
//! Events come typed ([`Event`], one struct per kind, parsed once); replies too ([`Joined`],
//! [`HistoryPage`], [`Presence`]); every failure is one [`ClientError`], whichever the transport.
//! [`Reconnecting`] adds automatic reconnection with recovery on top of any transport.
//!
//! Transports wrap it (`chat_transport_tcp::connect`, `chat_transport_ws::connect`) so that the
//! client's protocol logic exists once, like the server's. The terminal client, the load
//! generator and the tests use it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{Sink, SinkExt, Stream, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::protocol::ErrorCode;

mod error;
mod event;
mod reconnect;

/// Where a client left a room (`join` with `since`): the same type the server parses.
pub use crate::protocol::Since;
pub use error::{ClientError, ServerCode, ServerError};
pub use event::{
    Bye, Event, HistoryPage, Invite, Joined, Kicked, Member, Message, Presence, PresenceEntry, Reset, Unknown,
};
pub use reconnect::{Backoff, ReconnectOptions, Reconnected, Reconnecting, Resent, Update};

/// How long [`Client::connect`] waits for `welcome`.
pub const HELLO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The server's `welcome`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct Welcome {
    /// The session id.
    pub session: String,
    /// The user the server decided on.
    pub user: String,
    /// The node serving this session.
    pub node: String,
    /// The heartbeat interval.
    pub heartbeat_ms: u64,
    /// The largest frame the server accepts.
    pub max_frame: usize,
    /// When the session's identity expires (seconds since the Unix epoch), if it does: the
    /// server closes the session then (`bye expired`) unless it was refreshed
    /// ([`Client::refresh`], [`Client::refresh_from`]).
    #[serde(default)]
    pub exp: Option<u64>,
}

type Pending = Mutex<HashMap<u64, oneshot::Sender<Result<Value, ClientError>>>>;

struct Shared {
    out: mpsc::UnboundedSender<Bytes>,
    pending: Pending,
    next_id: AtomicU64,
    /// The session's current expiry (`welcome.exp`, then each `refreshed.exp`); 0: none.
    exp: AtomicU64,
    /// The connection stopped being read: no reply can come any more.
    closed: AtomicBool,
}

/// Where a client gets a new token when its session's identity is about to expire (see
/// [`Client::refresh_from`]). Any `Fn() -> impl Future<Output = Option<String>>` is one;
/// `None` means "no token right now" (the client asks again later, while there is time).
pub trait TokenSource: Send + Sync + 'static {
    /// A fresh token.
    fn token(&self) -> BoxFuture<'_, Option<String>>;
}

impl<F, Fut> TokenSource for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Option<String>> + Send + 'static,
{
    fn token(&self) -> BoxFuture<'_, Option<String>> {
        Box::pin(self())
    }
}

/// When to refresh a token that has `remaining` to live: at 80 % of it or 30 s before the end,
/// whichever is earlier, but not before half of it has passed (short-lived tokens are not
/// refreshed in a loop) nor sooner than 100 ms from now (unless less than that remains).
///
/// ```
/// use std::time::Duration;
/// use chat_core::client::refresh_delay;
/// let s = Duration::from_secs;
/// assert_eq!(refresh_delay(s(3600)), s(2880)); // 80 % of an hour
/// assert_eq!(refresh_delay(s(100)), s(70)); // 30 s before
/// assert_eq!(refresh_delay(s(10)), s(5)); // half
/// assert_eq!(refresh_delay(Duration::from_millis(50)), Duration::from_millis(50));
/// ```
pub fn refresh_delay(remaining: Duration) -> Duration {
    let earliest = remaining.mul_f64(0.8).min(remaining.saturating_sub(Duration::from_secs(30)));
    earliest.max(remaining / 2).max(remaining.min(Duration::from_millis(100)))
}

/// A connected, authenticated client.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use chat_core::client::{Client, Event, HistoryQuery};
/// use chat_core::{ConnInfo, Engine, Inbound};
/// use futures::StreamExt;
///
/// let engine = Engine::builder().build().await.unwrap();
/// // Wire a client to the engine through in-memory channels (a transport would use a socket).
/// let (to_server, from_client) = futures::channel::mpsc::unbounded::<bytes::Bytes>();
/// let (to_client, from_server) = futures::channel::mpsc::unbounded::<bytes::Bytes>();
/// let server = engine.clone();
/// tokio::spawn(async move {
///     let inbound = from_client.map(|b| Ok::<_, std::io::Error>(Inbound::Frame(b)));
///     server.serve(inbound, to_client, ConnInfo::default()).await
/// });
/// let mut alice = Client::connect(from_server.map(Ok::<_, std::io::Error>), to_server, Some("alice"), None)
///     .await
///     .unwrap();
/// let joined = alice.join("lobby", None).await.unwrap();
/// assert_eq!(joined.seq, 0);
/// let seq = alice.send("lobby", serde_json::json!({"text": "hi"})).await.unwrap();
/// assert_eq!(seq, Some(1));
/// // Alice's own arrival comes first, then her message.
/// let Event::MemberJoined(arrival) = alice.next_event().await.unwrap() else { panic!("arrival first") };
/// assert_eq!(arrival.user, "alice");
/// let Event::Message(message) = alice.next_event().await.unwrap() else { panic!("then the message") };
/// assert_eq!((message.seq, &message.body["text"]), (Some(1), &serde_json::json!("hi")));
/// let page = alice.history("lobby", HistoryQuery::latest(10)).await.unwrap();
/// assert_eq!(page.seqs(), [1]);
/// # engine.shutdown().await;
/// # }
/// ```
pub struct Client {
    shared: Arc<Shared>,
    events: mpsc::Receiver<Bytes>,
    welcome: Welcome,
    /// Cancelled on drop: the connection is closed.
    closer: CancellationToken,
    /// Stops the task of [`refresh_from`](Self::refresh_from), when one runs.
    refresher: Option<CancellationToken>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("welcome", &self.welcome).finish_non_exhaustive()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.closer.cancel();
    }
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow)]
    ty: Option<std::borrow::Cow<'a, str>>,
    id: Option<u64>,
}

/// How many events may wait unread before the client stops reading the connection (and the
/// server's slow-consumer policy takes over).
pub const EVENT_BUFFER: usize = 8192;

impl Client {
    /// Sends `hello` over a connection and waits for `welcome`.
    ///
    /// `inbound` yields the server's frames, `outbound` takes the client's. Two tasks are
    /// spawned: one reads (answering pings, matching replies to requests, queueing events), one
    /// writes (coalescing frames, one flush per batch).
    pub async fn connect<I, E, O>(
        inbound: I,
        outbound: O,
        user: Option<&str>,
        token: Option<&str>,
    ) -> Result<Client, ClientError>
    where
        I: Stream<Item = Result<Bytes, E>> + Unpin + Send + 'static,
        E: Send + 'static,
        O: Sink<Bytes> + Unpin + Send + 'static,
    {
        let (out, out_rx) = mpsc::unbounded_channel();
        let (events_tx, events) = mpsc::channel(EVENT_BUFFER);
        let shared = Arc::new(Shared {
            out,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            exp: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        });
        let closer = CancellationToken::new();
        tokio::spawn(write_task(out_rx, outbound, closer.clone()));
        tokio::spawn(read_task(inbound, shared.clone(), events_tx, closer.clone()));
        let mut hello = json!({"type": "hello", "protocol": 1});
        if let Some(user) = user {
            hello["user"] = json!(user);
        }
        if let Some(token) = token {
            hello["token"] = json!(token);
        }
        let reply = tokio::time::timeout(HELLO_TIMEOUT, Self::request_on(&shared, hello))
            .await
            .unwrap_or(Err(ClientError::Timeout));
        let reply = match reply {
            Ok(reply) => reply,
            Err(e) => {
                closer.cancel();
                return Err(e);
            }
        };
        let mut client = Client { shared, events, welcome: Welcome::default(), closer, refresher: None };
        client.welcome = reply_as(reply)?;
        client.shared.exp.store(client.welcome.exp.unwrap_or(0), Ordering::Relaxed);
        Ok(client)
    }

    /// The server's `welcome`.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// When the session's identity expires now (`welcome.exp`, then the latest
    /// `refreshed.exp`), in seconds since the Unix epoch; `None`: never.
    pub fn expires(&self) -> Option<u64> {
        Some(self.shared.exp.load(Ordering::Relaxed)).filter(|&exp| exp != 0)
    }

    /// Sends `refresh` with a new token; returns the new expiry (`refreshed.exp`). The server
    /// refuses a token for another user, or one its authenticator refuses, with the fatal error
    /// `unauthorized`: the connection then closes.
    pub async fn refresh(&self, token: &str) -> Result<Option<u64>, ClientError> {
        Self::refresh_on(&self.shared, token).await
    }

    async fn refresh_on(shared: &Shared, token: &str) -> Result<Option<u64>, ClientError> {
        let reply = Self::request_on(shared, json!({"type": "refresh", "token": token})).await?;
        let exp = reply.get("exp").and_then(Value::as_u64);
        shared.exp.store(exp.unwrap_or(0), Ordering::Relaxed);
        Ok(exp)
    }

    /// Keeps the session alive past its token: from now on, while the session has an expiry,
    /// the client takes a new token from `source` and sends `refresh` some time before the
    /// expiry (see [`refresh_delay`]; the client's clock is compared with `exp`). A source that
    /// has no token right now is asked again later. Replaces the source given before, if any.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use chat_core::{client::Client, ConnInfo, Engine, Inbound, JwtAuthenticator};
    /// use futures::StreamExt;
    ///
    /// let auth = JwtAuthenticator::new(b"secret");
    /// let engine = Engine::builder().authenticator(auth.clone()).build().await.unwrap();
    /// let (to_server, from_client) = futures::channel::mpsc::unbounded::<bytes::Bytes>();
    /// let (to_client, from_server) = futures::channel::mpsc::unbounded::<bytes::Bytes>();
    /// let server = engine.clone();
    /// tokio::spawn(async move {
    ///     let inbound = from_client.map(|b| Ok::<_, std::io::Error>(Inbound::Frame(b)));
    ///     server.serve(inbound, to_client, ConnInfo::default()).await
    /// });
    /// // The host's token endpoint would be called here.
    /// let source = move || {
    ///     let auth = auth.clone();
    ///     async move { auth.issue("alice", 3600, None).ok() }
    /// };
    /// let first = source().await.unwrap();
    /// let mut alice = Client::connect(from_server.map(Ok::<_, std::io::Error>), to_server, None, Some(&first))
    ///     .await
    ///     .unwrap();
    /// assert!(alice.welcome().exp.is_some());
    /// alice.refresh_from(source); // refreshes 48 minutes from now, and so on
    /// # engine.shutdown().await;
    /// # }
    /// ```
    pub fn refresh_from(&mut self, source: impl TokenSource) {
        if let Some(previous) = self.refresher.take() {
            previous.cancel();
        }
        let stop = self.closer.child_token();
        self.refresher = Some(stop.clone());
        tokio::spawn(refresh_task(self.shared.clone(), source, stop));
    }

    async fn request_on(shared: &Shared, mut frame: Value) -> Result<Value, ClientError> {
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        frame["id"] = json!(id);
        let (tx, rx) = oneshot::channel();
        shared.pending.lock().unwrap_or_else(PoisonError::into_inner).insert(id, tx);
        // Set before the reader clears `pending`: a request registered after that fails now.
        if shared.closed.load(Ordering::SeqCst) {
            shared.pending.lock().unwrap_or_else(PoisonError::into_inner).remove(&id);
            return Err(ClientError::Closed);
        }
        let bytes = serde_json::to_vec(&frame).map_err(|e| ClientError::Protocol(e.to_string()))?;
        if shared.out.send(Bytes::from(bytes)).is_err() {
            shared.pending.lock().unwrap_or_else(PoisonError::into_inner).remove(&id);
            return Err(ClientError::Closed);
        }
        rx.await.unwrap_or(Err(ClientError::Closed))
    }

    /// Sends `frame` (a JSON object; its `id` is set here) and waits for the reply.
    pub async fn request(&self, frame: Value) -> Result<Value, ClientError> {
        Self::request_on(&self.shared, frame).await
    }

    /// Sends raw bytes as one frame, with no reply tracking (tests of bad input use this).
    pub fn send_frame(&self, frame: impl Into<Bytes>) -> Result<(), ClientError> {
        self.shared.out.send(frame.into()).map_err(|_| ClientError::Closed)
    }

    /// Joins `room`; with `since` (the epoch and the last seq seen there), the server replays
    /// what came after it, as events, before anything live, when it still can
    /// ([`Joined::recovered`]).
    pub async fn join(&self, room: &str, since: Option<Since>) -> Result<Joined, ClientError> {
        let mut frame = json!({"type": "join", "room": room});
        if let Some(Since { epoch, seq }) = since {
            frame["since"] = json!({"epoch": epoch, "seq": seq});
        }
        reply_as(self.request(frame).await?)
    }

    /// Leaves `room`.
    pub async fn leave(&self, room: &str) -> Result<(), ClientError> {
        self.request(json!({"type": "leave", "room": room})).await.map(drop)
    }

    /// Sends a stored message; returns its seq.
    pub async fn send(&self, room: &str, body: Value) -> Result<Option<u64>, ClientError> {
        self.send_with(room, body, None, false).await
    }

    /// Sends with an idempotency key and/or as ephemeral; returns the seq (none when ephemeral).
    pub async fn send_with(
        &self,
        room: &str,
        body: Value,
        key: Option<&str>,
        ephemeral: bool,
    ) -> Result<Option<u64>, ClientError> {
        let mut frame = json!({"type": "send", "room": room, "body": body});
        if let Some(key) = key {
            frame["key"] = json!(key);
        }
        if ephemeral {
            frame["ephemeral"] = json!(true);
        }
        let reply = self.request(frame).await?;
        Ok(reply.get("seq").and_then(Value::as_u64))
    }

    /// A page of `room`'s history (PROTOCOL.md §4): which one, `query` says.
    pub async fn history(&self, room: &str, query: HistoryQuery) -> Result<HistoryPage, ClientError> {
        let mut frame = json!({"type": "history", "room": room});
        for (name, value) in [("before", query.before), ("after", query.after), ("limit", query.limit)] {
            if let Some(v) = value {
                frame[name] = json!(v);
            }
        }
        reply_as(self.request(frame).await?)
    }

    /// The room's members.
    pub async fn presence(&self, room: &str) -> Result<Presence, ClientError> {
        reply_as(self.request(json!({"type": "presence", "room": room})).await?)
    }

    /// Closes the connection. Events that were received already can still be read; then
    /// [`next_event`](Self::next_event) says [`ClientError::Closed`]. Requests fail from now on.
    pub fn close(&self) {
        self.closer.cancel();
    }

    /// The next event's raw frame (messages, member events, errors without id, `bye`...).
    /// `None` once the connection is closed and every event was read.
    pub async fn next_frame(&mut self) -> Option<Bytes> {
        self.events.recv().await
    }

    /// The next event's raw frame if one is already here, without waiting.
    pub fn try_next_frame(&mut self) -> Option<Bytes> {
        self.events.try_recv().ok()
    }

    /// Waits until every frame the server sent before this call has been received (a `ping`
    /// round trip: replies and events share one ordered connection). Events that arrived are
    /// then available from [`try_next_frame`](Self::try_next_frame).
    pub async fn sync(&self) -> Result<(), ClientError> {
        self.request(json!({"type": "ping"})).await.map(drop)
    }

    /// The next event, parsed (see [`Event`]); [`ClientError::Closed`] once the connection is
    /// closed and every event was read. A frame that is not a valid event is a
    /// [`ClientError::Protocol`] (and the events after it still come).
    pub async fn next_event(&mut self) -> Result<Event, ClientError> {
        let frame = self.events.recv().await.ok_or(ClientError::Closed)?;
        Event::parse(&frame)
    }
}

/// A reply's fields as `T`; what does not fit is a protocol error.
fn reply_as<T: serde::de::DeserializeOwned>(reply: Value) -> Result<T, ClientError> {
    serde_json::from_value(reply).map_err(|e| ClientError::Protocol(e.to_string()))
}

/// Which page of a room's history to read ([`Client::history`]). Bounds are exclusive; the
/// server caps `limit` (100 by default) and picks one (50) when none is given.
///
/// * neither bound: the newest messages;
/// * [`before`](Self::before): the newest older than a seq (paging back);
/// * [`after`](Self::after): the oldest newer than a seq (catching up);
/// * both: the oldest between the two.
///
/// ```
/// use chat_core::client::HistoryQuery;
/// let newest = HistoryQuery::latest(50);
/// let older = HistoryQuery::latest(50).before(58);
/// let missed = HistoryQuery::default().after(41).limit(100);
/// assert_eq!((older.before_seq(), older.limit_count()), (Some(58), Some(50)));
/// assert_eq!((missed.after_seq(), newest.after_seq()), (Some(41), None));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistoryQuery {
    before: Option<u64>,
    after: Option<u64>,
    limit: Option<u64>,
}

impl HistoryQuery {
    /// The newest `limit` messages (with [`after`](Self::after): the oldest `limit` after it).
    pub fn latest(limit: u64) -> HistoryQuery {
        HistoryQuery::default().limit(limit)
    }

    /// Only messages with a seq below `seq`.
    pub fn before(self, seq: u64) -> HistoryQuery {
        HistoryQuery { before: Some(seq), ..self }
    }

    /// Only messages with a seq above `seq`, oldest first.
    pub fn after(self, seq: u64) -> HistoryQuery {
        HistoryQuery { after: Some(seq), ..self }
    }

    /// At most `limit` messages (a positive number; the server caps it).
    pub fn limit(self, limit: u64) -> HistoryQuery {
        HistoryQuery { limit: Some(limit), ..self }
    }

    /// The `before` bound, if any.
    pub fn before_seq(&self) -> Option<u64> {
        self.before
    }

    /// The `after` bound, if any.
    pub fn after_seq(&self) -> Option<u64> {
        self.after
    }

    /// The limit asked for, if any.
    pub fn limit_count(&self) -> Option<u64> {
        self.limit
    }
}

/// Refreshes the session's token before each expiry until the session has none, the
/// connection closes, or `stop` is cancelled.
async fn refresh_task(shared: Arc<Shared>, source: impl TokenSource, stop: CancellationToken) {
    loop {
        let exp = shared.exp.load(Ordering::Relaxed);
        if exp == 0 {
            return; // nothing expires
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let remaining = Duration::from_secs(exp).saturating_sub(now);
        if remaining.is_zero() {
            return; // too late: the server closes the session (`bye expired`)
        }
        let refreshed = async {
            tokio::time::sleep(refresh_delay(remaining)).await;
            match source.token().await {
                Some(token) => Client::refresh_on(&shared, &token).await.map(drop),
                None => Ok(()), // nothing yet: ask again, in half the time that is left
            }
        };
        let result = tokio::select! { r = refreshed => r, _ = stop.cancelled() => return };
        match result {
            Ok(()) => {}
            // Closed, or refused (`unauthorized` closes the connection): nothing more to do.
            Err(ClientError::Closed) => return,
            Err(e) if e.code() == Some(ErrorCode::Unauthorized) => return,
            Err(e) => tracing::debug!(error = %e, "refresh failed; trying again"),
        }
    }
}

async fn write_task<O: Sink<Bytes> + Unpin>(
    mut rx: mpsc::UnboundedReceiver<Bytes>,
    mut sink: O,
    closer: CancellationToken,
) {
    while let Some(frame) = tokio::select! { f = rx.recv() => f, _ = closer.cancelled() => None } {
        if sink.feed(frame).await.is_err() {
            return;
        }
        while let Ok(frame) = rx.try_recv() {
            if sink.feed(frame).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
    let _ = sink.close().await;
}

async fn read_task<I, E>(mut inbound: I, shared: Arc<Shared>, events: mpsc::Sender<Bytes>, closer: CancellationToken)
where
    I: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Send,
{
    while let Some(Ok(frame)) = tokio::select! { f = inbound.next() => f, _ = closer.cancelled() => None } {
        // A frame that is not even that much is an event: `next_event` reports it.
        let head = serde_json::from_slice::<Head<'_>>(&frame).unwrap_or(Head { ty: None, id: None });
        let ty = head.ty.as_deref().unwrap_or("");
        let (is_ping, is_error, id) = (ty == "ping", ty == "error", head.id);
        if is_ping && id.is_none() {
            let _ = shared.out.send(Bytes::from_static(br#"{"type":"pong"}"#));
            continue;
        }
        if let Some(id) = id {
            let waiter = shared.pending.lock().unwrap_or_else(PoisonError::into_inner).remove(&id);
            if let Some(waiter) = waiter {
                let reply = if is_error {
                    Err(event::from_slice(&frame).map_or_else(|e| e, ClientError::Server))
                } else {
                    event::from_slice(&frame)
                };
                let _ = waiter.send(reply);
                continue;
            }
        }
        if events.send(frame).await.is_err() {
            break;
        }
    }
    // Connection over: every waiting request fails, later ones at once, and the writer stops.
    shared.closed.store(true, Ordering::SeqCst);
    shared.pending.lock().unwrap_or_else(PoisonError::into_inner).clear();
    closer.cancel();
}
