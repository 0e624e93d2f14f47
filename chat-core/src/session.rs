//! One client's session: the state machine `hello` → requests → `bye`.
//!
//! Requests are handled one at a time, in the order they arrived, and every reply goes through
//! the session's outbox, so replies come back in request order and interleave correctly with
//! the room events fanned out to the same outbox. One exception keeps that order: a `send`
//! does not wait for the broker before the next request is read. Up to [`MAX_SENDING`] sends
//! are in flight at once (a client with a send window gets its messages stored in batches,
//! not one round trip each); they reach the broker in request order, their replies go out in
//! request order, and any other request that answers waits until they are all answered.
//!
//! What one client can make its session hold is bounded: every request takes tokens from one
//! bucket (`Config::costs`), replies count against the outbox's bounds and the session reads
//! no more requests while the outbox is full, a recovery replay that would take more than half
//! of the outbox is not sent (`recovered: false`), and a room's membership events are
//! rate-limited per room.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Arc, PoisonError};
use std::task::Poll;

use bytes::Bytes;
use futures::stream::FuturesOrdered;
use futures::{Sink, Stream, StreamExt};

use crate::auth::{Action, Credentials, Identity};
use crate::broker::{BrokerError, HistoryQuery, Publication, Transient};
use crate::bucket::TokenBucket;
use crate::engine::Inner;
use crate::frames::{
    encode_error, encode_history, encode_joined, encode_kicked, encode_left, encode_pong, encode_presence,
    encode_refreshed, encode_sent, encode_welcome, MessageParts, WelcomeParts,
};
use crate::hooks::{DisconnectReason, SendDecision, SessionInfo};
use crate::outbox::{Class, Outbox};
use crate::protocol::{parse, ByeReason, ClientFrame, ErrorCode, Request, RoomName, Since, PROTOCOL_VERSION};
use crate::rooms::{message_frame, LocalRoom};
use crate::transport::{ConnInfo, Inbound, Writer};

/// A request's failure: the error frame to send.
struct Failure {
    code: ErrorCode,
    message: String,
}

impl Failure {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Failure { code, message: message.into() }
    }
}

impl From<BrokerError> for Failure {
    fn from(e: BrokerError) -> Self {
        match e {
            BrokerError::Unavailable(m) => {
                Failure::new(ErrorCode::Unavailable, format!("{m}; nothing was stored, retry later"))
            }
            BrokerError::Internal(m) => Failure::new(ErrorCode::Internal, m),
            BrokerError::NotKept(m) => Failure::new(
                ErrorCode::Unavailable,
                format!("{m}; the message reached the room but is not known to be kept: resend it with the same key"),
            ),
        }
    }
}

/// The most requests handled in a row before the writer runs (see `Session::run`).
const REQUESTS_PER_WRITE: u8 = 32;

/// The most sends of one session waiting for the broker at once, and the most body bytes
/// they may hold (one send of any size may always be in flight): at either bound the session
/// reads no more requests until one is answered, so what a client makes its session hold
/// stays bounded.
pub(crate) const MAX_SENDING: usize = 32;
pub(crate) const MAX_SENDING_BYTES: usize = 64 * 1024;

/// A send on its way through the broker, or a reply queued behind one: the frame to send
/// once it and everything before it is done (`None`: nothing to answer), and the body bytes
/// it held.
type Sending = Pin<Box<dyn Future<Output = (Option<Bytes>, usize)> + Send>>;

/// The sends in flight and the body bytes they hold.
#[derive(Default)]
struct Queue {
    sends: FuturesOrdered<Sending>,
    bytes: usize,
}

impl Queue {
    /// Whether another send may be read now.
    fn has_room(&self) -> bool {
        self.sends.len() < MAX_SENDING && self.bytes < MAX_SENDING_BYTES
    }
}

/// The sends in flight. In a `Mutex` only so that the session stays `Sync` (its futures
/// borrow it across awaits); only ever reached through `&mut` (`get_mut`), never locked.
type InFlight = std::sync::Mutex<Queue>;

/// The queue inside an [`InFlight`].
fn queue(in_flight: &mut InFlight) -> &mut Queue {
    in_flight.get_mut().unwrap_or_else(PoisonError::into_inner)
}

/// What the session task woke up for.
enum Wake {
    /// The outbox was closed (kick, shutdown, overflow, timeout) or the connection broke.
    Ending,
    /// The peer sent something.
    Inbound(Inbound),
    /// The peer is gone (the stream ended or failed).
    Gone,
    /// The host kicked the session from rooms (`Outbox::mark_kicked`).
    Kicked,
}

pub(crate) struct Session {
    inner: Arc<Inner>,
    /// The engine's key for this session (its registration, room membership).
    key: u64,
    outbox: Arc<Outbox>,
    /// What the transport said about the connection until a successful `hello`, then the
    /// session's info (`info.session` is the session id). One field, not two: memory.
    info: Result<SessionInfo, ConnInfo>,
    user: Arc<str>,
    /// The rooms joined, in no order; a few per session, so a list beats a map in memory.
    rooms: Vec<Arc<LocalRoom>>,
    /// The session's request tokens (`Config::rate_per_sec`).
    rate: TokenBucket,
    /// `rate_limited` errors since the last accepted request.
    strikes: u32,
    /// Sends in flight and the replies queued behind them, in request order; `None` when
    /// there are none (boxed: an idle session keeps one pointer).
    sending: Option<Box<InFlight>>,
}

impl Session {
    /// A new session, registered with the engine (so that shutdown reaches it from now on).
    pub(crate) fn new(inner: Arc<Inner>, outbox: Arc<Outbox>, conn: ConnInfo) -> Self {
        let key = inner.register(&outbox, conn.accepted);
        Session {
            inner,
            key,
            outbox,
            info: Err(conn),
            user: Arc::from(""),
            rooms: Vec::new(),
            rate: TokenBucket::new(),
            strikes: 0,
            sending: None,
        }
    }

    pub(crate) fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// The session id (`welcome.session`), once `hello` succeeded.
    fn id(&self) -> &str {
        self.info.as_ref().map_or("", |i| &i.session)
    }

    fn room(&self, name: &RoomName) -> Option<&Arc<LocalRoom>> {
        self.rooms.iter().find(|r| r.name() == name)
    }

    /// Reads and handles requests until the session ends, then leaves every room; the writer
    /// is driven all along.
    pub(crate) async fn run<I, E, O>(&mut self, mut inbound: I, writer: &mut Writer<O>)
    where
        I: Stream<Item = Result<Inbound, E>> + Unpin,
        E: std::fmt::Display,
        O: Sink<Bytes> + Unpin,
    {
        let outbox = self.outbox.clone();
        let key = self.key;
        let wake_for = |item: Option<Result<Inbound, E>>| match item {
            Some(Ok(item)) => Wake::Inbound(item),
            Some(Err(e)) => {
                tracing::debug!(session = key, error = %e, "connection failed");
                Wake::Gone
            }
            None => Wake::Gone,
        };
        // Requests handled since the writer last ran: it runs when the peer has nothing more
        // for us (so a pipelined burst gets its replies in one write, not one write each) or
        // after `REQUESTS_PER_WRITE` of them (so replies cannot starve behind requests).
        // While the outbox is full nothing is read (read-side backpressure): the writer runs
        // on this task, so the task is woken when it can make progress and looks again.
        // Sends in flight are answered here as they complete, in order.
        let mut burst = 0u8;
        loop {
            let sending = &mut self.sending;
            let wake = poll_fn(|cx| {
                if outbox.is_ending() {
                    return Poll::Ready(Wake::Ending);
                }
                if outbox.take_kicked() {
                    return Poll::Ready(Wake::Kicked);
                }
                let may_send = answer_sends(sending, cx, &outbox);
                let may_read = burst < REQUESTS_PER_WRITE && !outbox.is_full() && may_send;
                let first = may_read.then(|| inbound.poll_next_unpin(cx));
                if let Some(Poll::Ready(item)) = first {
                    burst += 1;
                    return Poll::Ready(wake_for(item));
                }
                burst = 0;
                let _ = writer.poll_write(cx, &outbox);
                if outbox.is_ending() {
                    return Poll::Ready(Wake::Ending);
                }
                match first {
                    Some(pending) => pending.map(wake_for),
                    None if outbox.is_full() || !may_send => Poll::Pending,
                    None => inbound.poll_next_unpin(cx).map(wake_for),
                }
            })
            .await;
            match wake {
                Wake::Ending | Wake::Gone => break,
                Wake::Kicked => writer.drive(&outbox, Box::pin(self.kicked())).await,
                Wake::Inbound(item) => {
                    // Before `hello` nothing counts as a sign of life: the hello deadline holds.
                    if self.info.is_ok() {
                        outbox.mark_seen();
                    }
                    // Boxed: a request's state is large and short-lived; an idle session keeps
                    // only this small loop (memory per idle connection).
                    writer.drive(&outbox, Box::pin(self.handle(item))).await;
                    if outbox.is_ending() {
                        break;
                    }
                }
            }
        }
        // Boxed: the clean-up's state is large and needed once, not while idle.
        writer.drive(&outbox, Box::pin(self.end())).await;
    }

    /// Leaves the rooms the host kicked the session from, telling the client (`kicked`).
    async fn kicked(&mut self) {
        for room in self.inner.users.take_kicks(self.key) {
            if let Some(i) = self.rooms.iter().position(|r| r.name() == &room) {
                let local = self.rooms.swap_remove(i);
                self.leave_room(&local).await;
                self.outbox.push(encode_kicked(&room), Class::Must);
            }
        }
    }

    /// Leaves every room, unregisters, tells the host, and lets the writer finish.
    async fn end(&mut self) {
        // A send the session read is carried out, as if it had been awaited when it was read.
        let close_timeout = self.inner.config.close_timeout;
        if tokio::time::timeout(close_timeout, self.settle()).await.is_err() {
            tracing::warn!(session = self.key, "sends in flight took too long at the end; abandoned");
        }
        let reason = self.outbox.closed();
        // The peer is gone if nobody closed the session on purpose.
        self.outbox.abandon_unless_closed();
        self.inner.sessions.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.key);
        if self.info.is_ok() {
            self.inner.users.remove(&self.user, self.key);
        }
        let rooms = std::mem::take(&mut self.rooms);
        for local in &rooms {
            self.inner.rooms.remove_member(local, self.key);
        }
        // Every room at once, within one deadline: with the broker unreachable each call waits
        // for its own timeout, and they overlap instead of adding up. What does not finish in
        // time is left to the broker's own clean-up (presence retries, expiry).
        let leaving = futures::future::join_all(rooms.iter().map(|local| self.leave_room(local)));
        if tokio::time::timeout(self.inner.config.close_timeout, leaving).await.is_err() {
            tracing::warn!(session = self.key, rooms = rooms.len(), "leaving rooms took too long; left to the broker");
        }
        if let Ok(info) = &self.info {
            let reason = reason.map_or(DisconnectReason::PeerGone, DisconnectReason::Bye);
            self.inner.hooks.on_disconnect(info, reason).await;
        }
    }

    /// Queues a reply (counted against the outbox's bounds, never a `slow_consumer` close),
    /// behind the sends in flight if there are any.
    fn push(&mut self, frame: Bytes) {
        match self.sending.as_deref_mut().map(queue) {
            Some(q) if !q.sends.is_empty() => q.sends.push_back(Box::pin(std::future::ready((Some(frame), 0)))),
            _ => {
                self.outbox.push(frame, Class::Reply);
            }
        }
    }

    fn error(&mut self, id: Option<u64>, code: ErrorCode, message: &str) {
        self.push(encode_error(id, code, message));
    }

    /// Waits for every send in flight and queues their replies: what a request that answers
    /// does first, so that its answer comes after theirs.
    async fn settle(&mut self) {
        if let Some(q) = self.sending.as_deref_mut().map(queue) {
            while let Some((reply, _)) = q.sends.next().await {
                if let Some(frame) = reply {
                    self.outbox.push(frame, Class::Reply);
                }
            }
        }
        self.sending = None;
    }

    fn fatal(&self, id: Option<u64>, code: ErrorCode, message: &str) {
        self.outbox.close(code.bye_reason(), [encode_error(id, code, message)]);
    }

    /// Handles one inbound item.
    async fn handle(&mut self, item: Inbound) {
        if let Some(request) = self.check(item) {
            self.request(request).await;
        }
    }

    /// Checks one inbound item: errors are answered here; a well-formed request is returned
    /// for [`request`](Self::request).
    fn check(&mut self, item: Inbound) -> Option<ClientFrame> {
        let authenticated = self.info.is_ok();
        let max_frame = self.inner.config.max_frame;
        let frame = match item {
            Inbound::Alive => return None,
            Inbound::TooLarge => {
                self.fatal(None, ErrorCode::FrameTooLarge, &format!("frames are limited to {max_frame} bytes"));
                return None;
            }
            Inbound::Frame(bytes) if bytes.len() > max_frame => {
                self.fatal(None, ErrorCode::FrameTooLarge, &format!("frames are limited to {max_frame} bytes"));
                return None;
            }
            Inbound::Binary if !authenticated => {
                self.fatal(None, ErrorCode::NotAuthenticated, "the first frame must be hello");
                return None;
            }
            Inbound::Binary => {
                self.error(None, ErrorCode::BadFrame, "binary frames are not accepted; send JSON text");
                return None;
            }
            Inbound::Frame(bytes) => bytes,
        };
        match parse(&frame) {
            Err(e) if !authenticated => self.fatal(
                e.id,
                ErrorCode::NotAuthenticated,
                &format!("the first frame must be a well-formed hello: {}", e.message),
            ),
            Err(e) if e.hello => self.fatal(e.id, ErrorCode::NotAuthenticated, "hello was already sent"),
            Err(e) => {
                let invalid = self.inner.config.costs.invalid;
                match self.charge(invalid) {
                    Ok(()) => self.error(e.id, e.code, &e.message),
                    Err(f) => self.fail(e.id, f),
                }
            }
            Ok(frame) => return Some(frame),
        }
        None
    }

    /// Takes `cost` tokens from the session's bucket, or says `rate_limited`.
    fn charge(&mut self, cost: u32) -> Result<(), Failure> {
        let c = &self.inner.config;
        if self.rate.take(cost, c.rate_per_sec, c.rate_burst) {
            self.strikes = 0;
            return Ok(());
        }
        self.strikes += 1;
        let message =
            format!("over {} request tokens per second (this request costs {cost}); slow down", c.rate_per_sec);
        Err(Failure::new(ErrorCode::RateLimited, message))
    }

    /// Answers a failed request; too many `rate_limited` in a row close the session.
    fn fail(&mut self, id: Option<u64>, f: Failure) {
        if f.code == ErrorCode::RateLimited && self.strikes > self.inner.config.rate_limit_strikes {
            self.outbox.close(ByeReason::ProtocolError, [encode_error(id, f.code, &f.message)]);
        } else {
            self.error(id, f.code, &f.message);
        }
    }

    /// What a request costs from the session's bucket.
    fn cost(&self, request: &Request) -> u32 {
        let c = &self.inner.config.costs;
        match request {
            Request::Hello { .. } | Request::Pong => 0,
            Request::Ping if self.info.is_err() => 0,
            Request::Join { .. } => c.join,
            Request::Leave { .. } => c.leave,
            Request::Send { .. } => c.send,
            Request::History { .. } => c.history,
            Request::Presence { .. } => c.presence,
            Request::Refresh { .. } => c.refresh,
            Request::Ping => c.ping,
        }
    }

    async fn request(&mut self, ClientFrame { id, request }: ClientFrame) {
        // Only a send, and what never answers, may overtake the sends in flight.
        let overtakes = match request {
            Request::Send { .. } | Request::Pong => true,
            Request::Ping => id.is_none(),
            _ => false,
        };
        if !overtakes {
            self.settle().await;
        }
        if self.info.is_ok() {
            // A bare `ping` (no id, no reply) is a free sign of life.
            let cost = if matches!(request, Request::Ping) && id.is_none() { 0 } else { self.cost(&request) };
            if let Err(f) = self.charge(cost) {
                return self.fail(id, f);
            }
        }
        let result = match request {
            Request::Hello { protocol, token, user } => match &self.info {
                Err(_) => return self.hello(id, protocol, token.as_deref(), user.as_deref()).await,
                Ok(_) => return self.fatal(id, ErrorCode::NotAuthenticated, "hello was already sent"),
            },
            _ if self.info.is_err() => {
                return self.fatal(id, ErrorCode::NotAuthenticated, "the first frame must be hello")
            }
            Request::Join { room, since } => self.join(id, room, since).await,
            Request::Leave { room } => self.leave(id, room).await,
            Request::Send { room, body, key, ephemeral } => self.send(id, room, body, key, ephemeral).await,
            Request::History { room, before, after, limit } => self.history(id, room, before, after, limit).await,
            Request::Presence { room } => self.presence(id, room).await,
            Request::Refresh { token } => return self.refresh(id, &token).await,
            Request::Ping => {
                if let Some(id) = id {
                    self.push(encode_pong(id));
                }
                Ok(())
            }
            Request::Pong => Ok(()),
        };
        if let Err(f) = result {
            self.fail(id, f);
        }
    }

    async fn hello(&mut self, id: Option<u64>, protocol: u64, token: Option<&str>, user: Option<&str>) {
        if protocol != PROTOCOL_VERSION {
            return self.fatal(id, ErrorCode::UnsupportedProtocol, "this server speaks protocol 1");
        }
        let (peer, transport) = match &self.info {
            Err(conn) => (conn.peer, conn.transport),
            Ok(info) => (info.peer, ""),
        };
        let credentials = Credentials { token, user, peer };
        let identity = match self.inner.authenticator.authenticate(&credentials).await {
            Ok(identity) => identity,
            Err(e) => return self.fatal(id, ErrorCode::Unauthorized, &e.0),
        };
        self.user = Arc::from(identity.user.as_str());
        let session = self.inner.session_id(self.key);
        let c = &self.inner.config;
        self.push(encode_welcome(
            id,
            &WelcomeParts {
                session: &session,
                user: &identity.user,
                node: &self.inner.node,
                heartbeat_ms: c.heartbeat.as_millis() as u64,
                max_frame: c.max_frame,
                exp: identity.expires,
            },
        ));
        if let Some(entry) = self.inner.sessions.lock().unwrap_or_else(PoisonError::into_inner).get_mut(&self.key) {
            entry.user = Some(self.user.clone());
            entry.set_expiry(identity.expires);
        }
        self.inner.users.add(&self.user, self.key, &self.outbox);
        let info = SessionInfo { session, identity, peer };
        self.inner.hooks.on_connect(&info).await;
        tracing::debug!(session = %info.session, user = %self.user, transport, "session started");
        self.info = Ok(info);
        self.outbox.mark_seen(); // the idle timeout counts from here
        crate::metrics::session_started();
    }

    /// `refresh`: the authenticator checks the new token (with no user: the token alone must
    /// name the session's user); the new identity, room patterns and expiry replace the old.
    /// A refusal, or another user, is fatal (`unauthorized`). Rooms already joined stay joined.
    /// A refresh handled before the heartbeat task saw the expiry is accepted, even a little
    /// after `exp`: the expiry is enforced up to an eighth of a heartbeat late, never early.
    async fn refresh(&mut self, id: Option<u64>, token: &str) {
        let Ok(info) = &self.info else { return };
        let credentials = Credentials { token: Some(token), user: None, peer: info.peer };
        let identity = match self.inner.authenticator.authenticate(&credentials).await {
            Ok(identity) if identity.user == info.identity.user => identity,
            Ok(_) => return self.fatal(id, ErrorCode::Unauthorized, "the new token names another user"),
            Err(e) => return self.fatal(id, ErrorCode::Unauthorized, &e.0),
        };
        if let Some(entry) = self.inner.sessions.lock().unwrap_or_else(PoisonError::into_inner).get_mut(&self.key) {
            entry.set_expiry(identity.expires);
        }
        if let Some(id) = id {
            self.push(encode_refreshed(Some(id), identity.expires));
        }
        if let Ok(info) = &mut self.info {
            info.identity = identity;
        }
    }

    fn identity(&self) -> &Identity {
        // Requests other than hello are only handled once `info` is set.
        static NOBODY: std::sync::OnceLock<Identity> = std::sync::OnceLock::new();
        self.info.as_ref().map_or_else(|_| NOBODY.get_or_init(|| Identity::user("")), |i| &i.identity)
    }

    /// Whether this session's user may do `action` in `room`: a direct conversation's own
    /// users only, whatever the host says (PROTOCOL.md §4); then the host's authorizer.
    async fn authorize(&self, room: &RoomName, action: Action) -> Result<(), Failure> {
        if let Some(users) = crate::direct::users(room) {
            let me = self.identity().user.as_str();
            if !crate::direct::can_take_part(me) {
                let why = format!("{me:?} cannot take part in direct conversations: its name is not made of room characters without ':'");
                return Err(Failure::new(ErrorCode::InvalidRoom, why));
            }
            if !users.contains(&me) {
                return Err(Failure::new(
                    ErrorCode::Forbidden,
                    format!("{room} is a direct conversation of other users"),
                ));
            }
        }
        match self.inner.authorizer.authorize(self.identity(), room, action).await {
            Ok(()) => Ok(()),
            Err(refusal) if refusal.0.is_empty() => {
                Err(Failure::new(ErrorCode::Forbidden, format!("not allowed in {room}")))
            }
            Err(refusal) => Err(Failure::new(ErrorCode::Forbidden, refusal.0)),
        }
    }

    fn member(&self, room: &RoomName, what: &str) -> Result<(), Failure> {
        if self.room(room).is_some() {
            Ok(())
        } else {
            Err(Failure::new(ErrorCode::NotMember, format!("join {room} before {what}")))
        }
    }

    async fn join(&mut self, id: Option<u64>, room: RoomName, since: Option<Since>) -> Result<(), Failure> {
        if let Some(local) = self.room(&room) {
            // Already a member: nothing changes, the reply says where the room is.
            let (epoch, seq) = local.position();
            if let Some(id) = id {
                self.push(encode_joined(Some(id), &room, &epoch, seq, false));
            }
            return Ok(());
        }
        if self.rooms.len() >= self.inner.config.max_rooms_per_session {
            return Err(Failure::new(ErrorCode::Forbidden, "too many rooms joined at once"));
        }
        if !self.identity().may_join(&room) {
            return Err(Failure::new(ErrorCode::Forbidden, format!("the token does not allow {room}")));
        }
        self.authorize(&room, Action::Join).await?;
        let broker = &*self.inner.broker;
        let point = self.inner.rooms.join(broker, &room, self.key, &self.outbox).await?;
        let first_session = match broker.presence_add(&room, self.id(), &self.user).await {
            Ok(first) => first,
            Err(e) => {
                self.inner.rooms.leave(broker, &point.room, self.key).await;
                return Err(e.into());
            }
        };
        if first_session && self.member_event(&point.room) {
            if let Err(e) = broker.broadcast(&room, Transient::MemberJoined(self.user.clone())).await {
                tracing::warn!(%room, error = %e, "member_joined not sent");
            }
        }

        // Recovery: the member is already buffering live deliveries after `point.seq`; replay
        // what the client missed up to it, then the buffer follows. A replay may take half of
        // the outbox's bounds, no more, so that live messages still fit behind it: a client
        // that missed more pages the gap with `history` instead of being closed as a slow
        // consumer by its own replay (and coming back to the same replay, forever). Without a
        // store the broker's window bounds it too; with one, the store reaches further.
        let mut replay = Vec::new();
        let mut recovered = false;
        if let Some(since) = since.filter(|s| *s.epoch == *point.epoch && s.seq <= point.seq) {
            let missed = point.seq - since.seq;
            let c = &self.inner.config;
            let (max_frames, max_bytes) = (c.outbox_frames / 2, c.outbox_bytes / 2);
            let reach = if self.inner.keeps { max_frames } else { c.history_size.min(max_frames) };
            if missed == 0 {
                recovered = true;
            } else if missed <= reach as u64 {
                let query =
                    HistoryQuery { after: Some(since.seq), before: Some(point.seq + 1), limit: missed as usize };
                match broker.history(&room, query).await {
                    Ok(page) => {
                        let contiguous = page.messages.iter().zip(since.seq + 1..).all(|(m, seq)| m.seq == seq);
                        if page.epoch == point.epoch && page.messages.len() as u64 == missed && contiguous {
                            replay = page.messages.iter().map(|m| message_frame(&room, m)).collect();
                            recovered = replay.iter().map(Bytes::len).sum::<usize>() <= max_bytes;
                        }
                    }
                    Err(e) => tracing::debug!(%room, error = %e, "recovery history failed"),
                }
            }
            if !recovered {
                replay = Vec::new();
            }
        }
        let mut first = Vec::with_capacity(replay.len() + 1);
        if let Some(id) = id {
            first.push(encode_joined(Some(id), &room, &point.epoch, point.seq, recovered));
        }
        first.extend(replay);
        self.inner.rooms.go_live(&point.room, self.key, first, point.seq);
        if self.rooms.is_empty() {
            self.rooms.reserve_exact(1); // most sessions are in one room: no spare capacity
        }
        self.rooms.push(point.room);
        crate::metrics::joined();
        if let Ok(info) = &self.info {
            self.inner.hooks.on_join(info, &room).await;
        }
        Ok(())
    }

    async fn leave_room(&self, local: &Arc<LocalRoom>) {
        let broker = &*self.inner.broker;
        let room = local.name();
        self.inner.rooms.leave(broker, local, self.key).await;
        match broker.presence_remove(room, self.id(), &self.user).await {
            Ok(true) if self.member_event(local) => {
                if let Err(e) = broker.broadcast(room, Transient::MemberLeft(self.user.clone())).await {
                    tracing::warn!(%room, error = %e, "member_left not sent");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(%room, error = %e, "presence not removed"),
        }
        if let Ok(info) = &self.info {
            self.inner.hooks.on_leave(info, room).await;
        }
    }

    /// Whether a membership event of this room may go out now: the room shows them and is
    /// within its rate (`Config::member_events_per_sec`).
    fn member_event(&self, local: &LocalRoom) -> bool {
        let c = &self.inner.config;
        (self.inner.member_events)(local.name())
            && local.allow_member_event(c.member_events_per_sec, c.member_events_burst)
    }

    async fn leave(&mut self, id: Option<u64>, room: RoomName) -> Result<(), Failure> {
        if let Some(i) = self.rooms.iter().position(|r| r.name() == &room) {
            let local = self.rooms.swap_remove(i);
            self.leave_room(&local).await;
        }
        if let Some(id) = id {
            self.push(encode_left(Some(id), &room));
        }
        Ok(())
    }

    async fn send(
        &mut self,
        id: Option<u64>,
        room: RoomName,
        body: Bytes,
        key: Option<String>,
        ephemeral: bool,
    ) -> Result<(), Failure> {
        self.member(&room, "sending to it")?;
        self.authorize(&room, Action::Send).await?;
        let max_body = self.inner.config.max_body;
        if body.len() > max_body {
            return Err(Failure::new(ErrorCode::BodyTooLarge, format!("bodies are limited to {max_body} bytes")));
        }
        // Kept and sent without the whitespace outside its strings: every frame is one line.
        let body = crate::protocol::compact(body);
        let body = match &self.info {
            Ok(info) => match self.inner.hooks.on_send(info, &room, &body).await {
                SendDecision::Accept => body,
                SendDecision::Reject(why) => return Err(Failure::new(ErrorCode::Forbidden, why)),
                SendDecision::Rewrite(new) => {
                    if serde_json::from_slice::<serde::de::IgnoredAny>(&new).is_err() {
                        return Err(Failure::new(
                            ErrorCode::Internal,
                            "the send hook rewrote the body into invalid JSON",
                        ));
                    }
                    crate::protocol::compact(new)
                }
            },
            Err(_) => body,
        };
        let size = body.len();
        let publication = Publication { from: self.user.clone(), ts: crate::time::now_ms(), body };
        let inner = self.inner.clone();
        let mut sent: Sending = Box::pin(async move {
            let result = if ephemeral {
                inner.broker.broadcast(&room, Transient::Message(publication)).await.map(|()| None)
            } else {
                inner.publish(&room, publication, key).await.map(|p| Some(p.seq))
            };
            let reply = match result {
                Ok(seq) => id.map(|id| encode_sent(Some(id), &room, seq)),
                Err(e) => {
                    let f = Failure::from(e);
                    Some(encode_error(id, f.code, &f.message))
                }
            };
            (reply, size)
        });
        // Polled once now, so that it reaches the broker before any later send of this
        // session: the room's order is the order of the requests.
        match futures::poll!(sent.as_mut()) {
            Poll::Ready((reply, _)) => {
                if let Some(frame) = reply {
                    self.push(frame);
                }
            }
            Poll::Pending => {
                let q = queue(self.sending.get_or_insert_with(Default::default));
                q.bytes += size;
                q.sends.push_back(sent);
            }
        }
        Ok(())
    }

    async fn history(
        &mut self,
        id: Option<u64>,
        room: RoomName,
        before: Option<u64>,
        after: Option<u64>,
        limit: Option<u64>,
    ) -> Result<(), Failure> {
        self.member(&room, "asking its history")?;
        self.authorize(&room, Action::History).await?;
        let max = self.inner.config.history_max_limit;
        let limit = limit.map_or(50, |l| l.min(max as u64) as usize).min(max);
        let page = self.inner.broker.history(&room, HistoryQuery { before, after, limit }).await?;
        if let Some(id) = id {
            let messages = page.messages.iter().map(|m| MessageParts {
                room: &room,
                seq: Some(m.seq),
                from: &m.from,
                ts: m.ts,
                body: m.body.as_deref(),
            });
            self.outbox.push(encode_history(Some(id), &room, &page.epoch, messages), Class::Reply);
        }
        Ok(())
    }

    async fn presence(&mut self, id: Option<u64>, room: RoomName) -> Result<(), Failure> {
        self.member(&room, "asking its presence")?;
        self.authorize(&room, Action::Presence).await?;
        let members = self.inner.broker.presence(&room).await?;
        if let Some(id) = id {
            let frame = encode_presence(Some(id), &room, members.iter().map(|m| (m.user.as_str(), m.sessions)));
            self.outbox.push(frame, Class::Reply);
        }
        Ok(())
    }
}

/// Queues the replies of the sends that completed, in request order, stopping at the first
/// still in flight; frees the queue once it is empty. Whether another send may be read.
fn answer_sends(sending: &mut Option<Box<InFlight>>, cx: &mut std::task::Context<'_>, outbox: &Outbox) -> bool {
    let Some(q) = sending.as_deref_mut().map(queue) else { return true };
    while let Poll::Ready(Some((reply, size))) = q.sends.poll_next_unpin(cx) {
        q.bytes -= size;
        if let Some(frame) = reply {
            outbox.push(frame, Class::Reply);
        }
    }
    if q.sends.is_empty() {
        *sending = None;
        return true;
    }
    q.has_room()
}
