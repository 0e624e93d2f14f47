//! [`NatsNode`]: one engine's attachment to NATS, implementing `BrokerNode`.
//!
//! One client connection carries everything: JetStream requests (publishes with their
//! acknowledgements, reads of the stream), the node's core subscriptions (a room's
//! deliveries, the notices) and presence writes. async-nats reconnects by itself and
//! resubscribes; the rooms catch up from the stream when it does (`rooms.rs`). Every call is
//! bounded by the op timeout.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream, Context};
use async_trait::async_trait;
use bytes::Bytes;
use chat_core::broker::{
    random_u64, wire, DeliverySink, Epoch, HistoryPage, HistoryQuery, Message, Notice, Origin, Position, PresenceEntry,
    Publication, PublishOpts, Published, Transient,
};
use chat_core::{BrokerError, BrokerNode, RoomName};
use futures::StreamExt;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use crate::broker::Settings;
use crate::names::{self, Names};
use crate::presence::Presence;
use crate::record::{Kind, Record, View};
use crate::rooms::{self, Track};

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An error of NATS as the engine sees it: unreachable, or too slow.
pub(crate) fn unavailable(what: &str, e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(format!("nats {what}: {e}"))
}

/// How many locks a node's publishes are spread over (see `Shared::publishing`).
const PUBLISH_STRIPES: usize = 256;

/// How many records one read of the stream asks for at a time.
const PAGE: usize = 512;

/// Reading from the first record on.
pub(crate) fn from_start() -> consumer::DeliverPolicy {
    consumer::DeliverPolicy::All
}

/// The retention the stream was last configured with (the engine's `Config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Retention {
    history_size: usize,
    history_ttl: Duration,
    idempotency_window: Duration,
}

impl Retention {
    fn of(opts: &PublishOpts) -> Retention {
        Retention {
            history_size: opts.history_size.max(1),
            history_ttl: opts.history_ttl.max(Duration::from_millis(1)),
            idempotency_window: opts.idempotency_window,
        }
    }
}

/// The last record of a room's subject: the stream's sequence of it, and the record.
#[derive(Debug, Clone)]
pub(crate) struct Head {
    pub(crate) sseq: u64,
    pub(crate) record: Record,
}

/// State shared by the node handle and its background tasks.
pub(crate) struct Shared {
    pub(crate) names: Names,
    pub(crate) settings: Arc<Settings>,
    /// This incarnation of the node: the engine's node id and a random suffix, as a token.
    pub(crate) instance: String,
    pub(crate) client: async_nats::Client,
    pub(crate) js: Context,
    pub(crate) sink: Arc<dyn DeliverySink>,
    origin: Option<Arc<dyn Origin>>,
    /// Rooms this node subscribes to, by token.
    pub(crate) rooms: Mutex<HashMap<String, Track>>,
    /// What the stream is configured with, as far as this node knows.
    retention: Mutex<Retention>,
    /// Publishes into one room from this node go one at a time (a room hashes to one of these):
    /// racing each other, they would only lose to each other and retry; across nodes they
    /// still race.
    publishing: Vec<tokio::sync::Mutex<()>>,
    /// Which lock a room takes: keyed at random per node, so no one can pick room names that
    /// share a busy room's lock on every node.
    stripes: std::collections::hash_map::RandomState,
    /// Bumped each time the connection comes back: rooms catch up.
    pub(crate) reconnected: tokio::sync::watch::Sender<u64>,
    pub(crate) presence: Presence,
}

/// A new epoch's name: when it began (ms, hex) and a random part, so it is never reused.
fn new_epoch() -> String {
    let ms = std::time::UNIX_EPOCH.elapsed().unwrap_or_default().as_millis();
    format!("{ms:x}-{:08x}", random_u64() & 0xffff_ffff)
}

impl Shared {
    /// The stream's configuration for `r`.
    fn stream_config(&self, r: &Retention) -> stream::Config {
        let (source, destination) = self.names.republish();
        stream::Config {
            name: self.names.stream(),
            subjects: self.names.stream_subjects(),
            // Twice the engine's count: tombstones and epoch records take places too; reads
            // keep to the newest `history_size` seqs.
            max_messages_per_subject: i64::try_from(r.history_size.saturating_mul(2)).unwrap_or(i64::MAX),
            max_age: r.history_ttl,
            // JetStream refuses a window longer than the age limit.
            duplicate_window: r.idempotency_window.min(r.history_ttl),
            republish: Some(stream::Republish { source, destination, headers_only: false }),
            num_replicas: self.settings.replicas,
            storage: stream::StorageType::File,
            discard: stream::DiscardPolicy::Old,
            ..Default::default()
        }
    }

    /// Creates the stream when it is missing (first start, or deleted: every room's history
    /// is then lost, and rooms start new epochs).
    pub(crate) async fn ensure_stream(&self) -> Result<(), BrokerError> {
        let config = self.stream_config(&lock(&self.retention));
        let made = timeout(self.settings.op_timeout, self.js.get_or_create_stream(config)).await;
        made.map_err(|_| unavailable("create stream", "timed out"))?.map_err(|e| unavailable("create stream", e))?;
        Ok(())
    }

    /// Applies the engine's retention to the stream when it differs from what it has.
    async fn retain(&self, opts: &PublishOpts) -> Result<(), BrokerError> {
        let wanted = Retention::of(opts);
        if *lock(&self.retention) == wanted {
            return Ok(());
        }
        let config = self.stream_config(&wanted);
        let limits = |c: &stream::Config| (c.max_messages_per_subject, c.max_age, c.duplicate_window);
        let op = self.settings.op_timeout;
        let updated = timeout(op, self.js.update_stream(config.clone())).await;
        if let Err(e) = updated.map_err(|_| unavailable("update stream", "timed out"))? {
            // Nodes that start together update at once, and a cluster refuses all but one
            // (NATS 2.9 says the subjects overlap): what counts is what the stream has now.
            let info = timeout(op, self.js.get_stream(self.names.stream())).await;
            let info = info.map_err(|_| unavailable("update stream", "timed out"))?;
            let current = info.map_err(|_| unavailable("update stream", &e))?.cached_info().config.clone();
            if limits(&current) != limits(&config) {
                return Err(unavailable("update stream", e));
            }
        }
        *lock(&self.retention) = wanted;
        Ok(())
    }

    /// A handle on the rooms' stream (no request is made).
    async fn stream(&self) -> Result<stream::Stream<()>, BrokerError> {
        self.stream_named(self.names.stream()).await
    }

    /// A handle on the stream `name` (no request is made).
    async fn stream_named(&self, name: String) -> Result<stream::Stream<()>, BrokerError> {
        self.js.get_stream_no_info(name).await.map_err(|e| BrokerError::Internal(format!("nats stream: {e}")))
    }

    /// The last record of the room (`None` for a room the stream holds nothing of).
    pub(crate) async fn head(&self, token: &str) -> Result<Option<Head>, BrokerError> {
        let subject = self.names.records(token);
        let get = self.stream().await?.raw_message_builder().last_by_subject(subject).send();
        let got = timeout(self.settings.op_timeout, get).await.map_err(|_| unavailable("read", "timed out"))?;
        match got {
            Ok(m) => match Record::decode(&m.payload) {
                Some(record) => Ok(Some(Head { sseq: m.sequence, record })),
                None => Err(BrokerError::Internal(format!("a malformed record at {}", m.sequence))),
            },
            Err(e) => match e.kind() {
                stream::RawMessageErrorKind::NoMessageFound => Ok(None),
                stream::RawMessageErrorKind::JetStream(j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
                {
                    self.ensure_stream().await?;
                    Ok(None)
                }
                _ => Err(unavailable("read", e)),
            },
        }
    }

    /// Where a room the stream holds nothing of goes on from: the origin's position, or a new
    /// epoch from 0. Going on from the origin, the origin's recent idempotency keys are
    /// restored first (before the room's first record, so that a resend can find them
    /// whichever node it reaches): each is a record on the room's key subject with the key's
    /// `Nats-Msg-Id`, so a resend is answered as its duplicate, with the original seq. (The
    /// window then counts from the restoring, not from the original send: a key may be
    /// remembered up to one window longer.)
    async fn start_of(&self, room: &RoomName) -> Result<(String, u64), BrokerError> {
        let Some(origin) = &self.origin else { return Ok((new_epoch(), 0)) };
        let Some(at) = origin.origin(room).await? else { return Ok((new_epoch(), 0)) };
        let keys = origin.keys(room, &at).await?;
        let token = names::token(room);
        let op = self.settings.op_timeout;
        let mut acks = Vec::with_capacity(keys.len());
        for k in keys {
            let id = names::message_id(&token, &k.from, &k.key);
            let publish = jetstream::message::PublishMessage::build().payload(Record::key(&at.epoch, k.seq).into());
            let sent = timeout(op, self.js.send_publish(self.names.keys(&token), publish.message_id(id))).await;
            let sent = sent.map_err(|_| unavailable("restore keys", "timed out"))?;
            acks.push(sent.map_err(|e| unavailable("restore keys", e))?);
        }
        for ack in acks {
            let acked = timeout(op, ack).await.map_err(|_| unavailable("restore keys", "timed out"))?;
            acked.map_err(|e| unavailable("restore keys", e))?;
        }
        Ok((at.epoch.to_string(), at.seq))
    }

    /// Whether the room's tip is older than what this node knows it acknowledged or delivered
    /// in the same epoch: NATS lost messages (a stream restored from a backup), so the room
    /// must start a new epoch rather than hand those seqs out again.
    fn behind(&self, token: &str, tip: &Tip) -> bool {
        lock(&self.rooms)
            .get(token)
            .map(Track::known)
            .is_some_and(|(epoch, seq)| *epoch == *tip.epoch && tip.head < seq)
    }

    /// Whether the record at `sseq`, written naming `prev`, won its race: the first record
    /// after `prev` is it (see the `record` module's notes). A single server enforces the
    /// expected last sequence exactly, so only a cluster's records are checked.
    pub(crate) async fn won(&self, token: &str, prev: u64, sseq: u64) -> Result<bool, BrokerError> {
        if self.settings.replicas == 1 {
            return Ok(true);
        }
        let subject = self.names.records(token);
        let get = self.stream().await?.raw_message_builder().sequence(prev + 1).next_by_subject(subject).send();
        let got = timeout(self.settings.op_timeout, get).await.map_err(|_| unavailable("read", "timed out"))?;
        match got {
            Ok(m) => Ok(m.sequence == sseq),
            // Aged out (or purged) since: it no longer counts either way.
            Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => Ok(false),
            Err(e) => Err(unavailable("read", e)),
        }
    }

    /// Where the room stands for a writer: its last valid record, and the stream sequence of
    /// its very last record (valid or not), which the next record names as `prev`.
    pub(crate) async fn tip(&self, token: &str) -> Result<Option<Tip>, BrokerError> {
        let Some(head) = self.head(token).await? else { return Ok(None) };
        let tip = Tip { last: head.sseq, epoch: head.record.epoch.clone(), head: head.record.head };
        if self.won(token, head.record.prev, head.sseq).await? {
            return Ok(Some(tip));
        }
        // The last record lost a race, which happens only on a cluster, rarely: read the room.
        let view = self.view(token).await?;
        let last = view.read_to().max(tip.last);
        Ok(view.last.map(|(epoch, head, _)| Tip { last, epoch, head }))
    }

    /// Appends a record naming `prev` (0: the room has none) if the room's last record is still
    /// that one, with `id` as its `Nats-Msg-Id`.
    async fn append(
        &self,
        token: &str,
        payload: Vec<u8>,
        prev: u64,
        id: Option<&str>,
    ) -> Result<Appended, BrokerError> {
        let mut publish =
            jetstream::message::PublishMessage::build().payload(payload.into()).expected_last_subject_sequence(prev);
        if let Some(id) = id {
            publish = publish.message_id(id);
        }
        let subject = self.names.records(token);
        let acked = timeout(self.settings.op_timeout, async { self.js.send_publish(subject, publish).await?.await })
            .await
            .map_err(|_| unavailable("publish", "timed out"))?;
        match acked {
            Ok(ack) if ack.duplicate => Ok(Appended::Duplicate(ack.sequence)),
            Ok(ack) if self.won(token, prev, ack.sequence).await? => Ok(Appended::Stored(ack.sequence)),
            Ok(_) => Ok(Appended::Beaten),
            Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => Ok(Appended::Refused),
            Err(e) if e.kind() == jetstream::context::PublishErrorKind::StreamNotFound => {
                self.ensure_stream().await?;
                Ok(Appended::Refused)
            }
            Err(e) => Err(unavailable("publish", e)),
        }
    }

    /// The room's position, starting its epoch (a start record) when the stream holds nothing
    /// of it, or when what it holds is older than what this node knows. Also returns the stream
    /// sequence of the room's last record. With `ask_origin` (a node subscribing), the origin
    /// is asked first too, so that a stream that came back older than the engine's store (a
    /// backup restored while every node restarted) goes on from the store.
    pub(crate) async fn position(&self, room: &RoomName, ask_origin: bool) -> Result<(Position, u64), BrokerError> {
        let token = names::token(room);
        let deadline = Instant::now() + self.settings.op_timeout;
        let kept = match &self.origin {
            Some(origin) if ask_origin => origin.origin(room).await?,
            _ => None,
        };
        let older_than_kept = |t: &Tip| kept.as_ref().is_some_and(|at| *at.epoch == *t.epoch && at.seq > t.head);
        loop {
            let tip = self.tip(&token).await?;
            let prev = match &tip {
                Some(t) if !self.behind(&token, t) && !older_than_kept(t) => {
                    return Ok((Position { epoch: Epoch::from(t.epoch.as_str()), seq: t.head }, t.last));
                }
                Some(t) => t.last,
                None => 0,
            };
            let (epoch, seq) = self.start_of(room).await?;
            if let Appended::Stored(sseq) = self.append(&token, Record::start(&epoch, seq, prev), prev, None).await? {
                return Ok((Position { epoch: Epoch::from(epoch), seq }, sseq));
            }
            if Instant::now() > deadline {
                return Err(unavailable("start epoch", "too many concurrent writers"));
            }
        }
    }

    /// Reads the records of `subject` in `stream_name` that `policy` selects, in order, and
    /// hands each (with its stream sequence) to `each` until it returns false or they end.
    /// Reads in pages through an ephemeral consumer, deleted afterwards.
    pub(crate) async fn scan(
        &self,
        stream_name: String,
        subject: String,
        deliver_policy: consumer::DeliverPolicy,
        mut each: impl FnMut(u64, &async_nats::Message) -> bool,
    ) -> Result<(), BrokerError> {
        let op = self.settings.op_timeout;
        let config = consumer::pull::Config {
            filter_subject: subject,
            deliver_policy,
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            memory_storage: true,
            num_replicas: 1,
            ..Default::default()
        };
        let stream = self.stream_named(stream_name).await?;
        let made = timeout(op, stream.create_consumer(config)).await.map_err(|_| unavailable("read", "timed out"))?;
        let consumer = match made {
            Ok(consumer) => consumer,
            Err(e) if e.to_string().contains("stream not found") => return Ok(()),
            Err(e) => return Err(unavailable("read", e)),
        };
        let name = consumer.cached_info().name.clone();
        let mut pending = consumer.cached_info().num_pending;
        let read = async {
            while pending > 0 {
                // Bounded by `expires` too: a record that ages out between the consumer's
                // count and the fetch would otherwise leave the fetch waiting for it.
                let batch = consumer.fetch().max_messages(PAGE).expires(op / 4).messages().await;
                let batch = batch.map_err(|e| unavailable("read", e))?;
                futures::pin_mut!(batch);
                let mut got = 0;
                while let Some(m) = batch.next().await {
                    let m = m.map_err(|e| unavailable("read", e))?;
                    let info = m.info().map_err(|e| unavailable("read", e))?;
                    got += 1;
                    pending = info.pending;
                    if !each(info.stream_sequence, &m.message) {
                        return Ok(());
                    }
                }
                if got == 0 {
                    break;
                }
            }
            Ok::<_, BrokerError>(())
        };
        let result = timeout(op.saturating_mul(4), read).await.map_err(|_| unavailable("read", "timed out"));
        tokio::spawn(async move {
            let _ = stream.delete_consumer(&name).await;
        });
        result?
    }

    /// Every record the stream holds of the room, read in order into a [`View`].
    pub(crate) async fn view(&self, token: &str) -> Result<View, BrokerError> {
        self.view_after(token, None).await
    }

    /// The room's records after the one at stream sequence `after` (`None`: all of them).
    pub(crate) async fn view_after(&self, token: &str, after: Option<u64>) -> Result<View, BrokerError> {
        // The first record read is judged valid whatever it names: the record before it may
        // be gone (purged, erased, aged out), and one that lost a race to a record at or before
        // `after` carries a seq delivered already.
        let mut view = View::default();
        let policy = match after {
            Some(sseq) => consumer::DeliverPolicy::ByStartSequence { start_sequence: sseq + 1 },
            None => from_start(),
        };
        self.scan(self.names.stream(), self.names.records(token), policy, |sseq, m| {
            match Record::decode(&m.payload) {
                Some(record) => {
                    view.add(sseq, record);
                }
                None => tracing::warn!(token, sseq, "malformed record; skipped"),
            }
            true
        })
        .await?;
        Ok(view)
    }

    /// A page of the room's history (PROTOCOL.md §4: exclusive bounds, oldest first). The
    /// epoch, the latest seq and the messages come from one read, so they agree even while the
    /// room's last records age out.
    pub(crate) async fn history(&self, room: &RoomName, q: HistoryQuery) -> Result<HistoryPage, BrokerError> {
        let token = names::token(room);
        let deadline = Instant::now() + self.settings.op_timeout;
        loop {
            let (position, _) = self.position(room, false).await?;
            if q.limit == 0 {
                return Ok(HistoryPage { epoch: position.epoch, latest: position.seq, messages: Vec::new() });
            }
            let mut view = self.view(&token).await?;
            let Some((epoch, head, _)) = view.last.take() else {
                if Instant::now() > deadline {
                    return Err(unavailable("history", "the room's records keep vanishing"));
                }
                continue; // aged out since: `position` starts the room again
            };
            let floor = head.saturating_sub(lock(&self.retention).history_size as u64).max(q.after.unwrap_or(0));
            let hi = q.before.unwrap_or(u64::MAX).min(head.saturating_add(1));
            let all = view.epochs.remove(&epoch).map(|e| e.messages).unwrap_or_default();
            let mut messages: Vec<Message> =
                all.into_values().map(|(_, m)| m).filter(|m| m.seq > floor && m.seq < hi).collect();
            if q.after.is_some() {
                messages.truncate(q.limit);
            } else if messages.len() > q.limit {
                messages.drain(..messages.len() - q.limit);
            }
            return Ok(HistoryPage { epoch: Epoch::from(epoch), latest: head, messages });
        }
    }
}

/// Where a room stands for a writer (see [`Shared::tip`]).
#[derive(Debug, Clone)]
pub(crate) struct Tip {
    /// The stream sequence of the room's last record.
    pub(crate) last: u64,
    /// The epoch and seq of its last valid record.
    pub(crate) epoch: String,
    pub(crate) head: u64,
}

/// What became of an [`append`](Shared::append).
enum Appended {
    /// Stored, and first after the record it named.
    Stored(u64),
    /// Its `Nats-Msg-Id` was seen within the window: the record stored then.
    Duplicate(u64),
    /// Refused: the room's last record is another one now.
    Refused,
    /// Stored, but second after the record it named (a cluster's race): it does not count,
    /// and its id is spent.
    Beaten,
}

/// Warns of NATS servers whose handling of a refused publish breaks keyed resends: from 2.10.14
/// through 2.11, the server keeps the `Nats-Msg-Id` of a publish it refused for its expected
/// sequence, so a resend with that key is answered as a duplicate of nothing until the
/// duplicate window passes (found by this crate's fault tests; 2.9 and 2.12 are fine).
fn warn_of_version(version: &str) {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor, patch) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if major == 2 && ((minor == 10 && patch >= 14) || minor == 11) {
        tracing::warn!(version, "this NATS server version answers keyed resends after a refused publish as duplicates of nothing; use 2.9 or 2.12 and later");
    }
}

/// One engine's attachment to a [`NatsBroker`](crate::NatsBroker).
pub(crate) struct NatsNode {
    shared: Arc<Shared>,
    /// Stops the background tasks (on detach, or when the node is dropped).
    stop: CancellationToken,
}

impl NatsNode {
    /// Connects, makes sure the stream and the bucket exist, and starts the node's tasks.
    pub(crate) async fn attach(
        settings: Arc<Settings>,
        node: &str,
        sink: Arc<dyn DeliverySink>,
        origin: Option<Arc<dyn Origin>>,
    ) -> Result<NatsNode, BrokerError> {
        let op = settings.op_timeout;
        let (reconnected, _) = tokio::sync::watch::channel(0u64);
        let events = reconnected.clone();
        let options = async_nats::ConnectOptions::new()
            .name(format!("chat-engine {node}"))
            .connection_timeout(op)
            .request_timeout(Some(op))
            // Back within a quarter second of the server (async-nats waits up to 4 s by
            // default, longer than a call may take): 0, 10, 20, 40 ... 250 ms.
            .reconnect_delay_callback(|attempts| {
                let exp = u32::try_from(attempts.saturating_sub(1)).unwrap_or(u32::MAX).min(16);
                if attempts <= 1 {
                    Duration::ZERO
                } else {
                    Duration::from_millis(5 << exp).min(Duration::from_millis(250))
                }
            })
            .event_callback(move |event| {
                let events = events.clone();
                async move {
                    if matches!(event, async_nats::Event::Connected) {
                        events.send_modify(|n| *n += 1);
                    }
                }
            });
        let connect = async_nats::connect_with_options(settings.urls.clone(), options);
        let client = timeout(op, connect).await.map_err(|_| unavailable("connect", "timed out"))?;
        let client = client.map_err(|e| unavailable("connect", e))?;
        warn_of_version(&client.server_info().version);
        let mut js = jetstream::new(client.clone());
        js.set_timeout(op);
        let names = Names::new(&settings.prefix);
        let instance = names::token(&format!("{node}-{:x}", random_u64()));
        let presence = Presence::open(&js, &names, &settings, &instance).await?;
        let defaults = chat_core::Config::default();
        let shared = Arc::new(Shared {
            names,
            instance,
            client,
            js,
            sink,
            origin,
            rooms: Mutex::new(HashMap::new()),
            retention: Mutex::new(Retention {
                history_size: defaults.history_size,
                history_ttl: defaults.history_ttl,
                idempotency_window: defaults.idempotency_window,
            }),
            reconnected,
            publishing: (0..PUBLISH_STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            stripes: std::collections::hash_map::RandomState::new(),
            presence,
            settings,
        });
        shared.ensure_stream().await?;
        let stop = CancellationToken::new();
        rooms::listen_for_notices(&shared, stop.clone()).await?;
        tokio::spawn(crate::presence::run(shared.clone(), stop.clone()));
        tracing::debug!(node = %shared.instance, "attached to nats");
        Ok(NatsNode { shared, stop })
    }
}

impl Drop for NatsNode {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[async_trait]
impl BrokerNode for NatsNode {
    async fn publish(&self, room: &RoomName, msg: Publication, opts: &PublishOpts) -> Result<Published, BrokerError> {
        let s = &self.shared;
        s.retain(opts).await?;
        let token = names::token(room);
        let key = opts.key.as_deref().map(|key| names::message_id(&token, &msg.from, key));
        let stripe = {
            use std::hash::BuildHasher;
            s.stripes.hash_one(&token) as usize % PUBLISH_STRIPES
        };
        let turn = timeout(s.settings.op_timeout, s.publishing[stripe].lock()).await;
        let _turn = turn.map_err(|_| unavailable("publish", "too many publishes waiting in the room"))?;
        // A record that lost a race spent its id: the next attempt takes the next one, and a
        // resend walks them (`k`, `k#1`, ...) to the record that won.
        let mut spent = 0;
        let deadline = Instant::now() + s.settings.op_timeout;
        loop {
            let id = key.as_ref().map(|k| if spent == 0 { k.clone() } else { format!("{k}#{spent}") });
            let tip = s.tip(&token).await?;
            let (epoch, seq, prev) = match &tip {
                Some(t) if !s.behind(&token, t) => (t.epoch.clone(), t.head + 1, t.last),
                _ => {
                    let (epoch, base) = s.start_of(room).await?;
                    (epoch, base + 1, tip.as_ref().map_or(0, |t| t.last))
                }
            };
            let record = Record::message(&epoch, seq, prev, msg.ts, &msg.from, &msg.body);
            match s.append(&token, record, prev, id.as_deref()).await? {
                Appended::Stored(_) => {
                    let epoch = Epoch::from(epoch);
                    if let Some(track) = lock(&s.rooms).get_mut(&token) {
                        track.stored(&epoch, seq);
                    }
                    return Ok(Published { epoch, seq, duplicate: false });
                }
                Appended::Duplicate(sseq) => match s.original(&token, sseq).await? {
                    Some(published) => return Ok(published),
                    None => spent += 1,
                },
                Appended::Beaten => spent += 1,
                Appended::Refused => {}
            }
            if Instant::now() > deadline {
                return Err(unavailable("publish", "too many concurrent publishers in the room"));
            }
        }
    }

    async fn notify(&self, users: &[Arc<str>], notice: &Notice) -> Result<(), BrokerError> {
        let s = &self.shared;
        let payload = wire::encode_notice(users, notice)
            .ok_or_else(|| BrokerError::Internal(format!("the nats broker cannot carry {notice:?}")))?;
        s.fan_out("notify", s.names.notices(), payload).await
    }

    async fn broadcast(&self, room: &RoomName, what: Transient) -> Result<(), BrokerError> {
        let s = &self.shared;
        let subject = s.names.deliveries(&names::token(room));
        s.fan_out("broadcast", subject, wire::encode_transient(&what)).await
    }

    async fn subscribe(&self, room: &RoomName) -> Result<Position, BrokerError> {
        rooms::subscribe(&self.shared, room, self.stop.clone()).await
    }

    async fn unsubscribe(&self, room: &RoomName) -> Result<(), BrokerError> {
        lock(&self.shared.rooms).remove(&names::token(room));
        Ok(())
    }

    async fn history(&self, room: &RoomName, query: HistoryQuery) -> Result<HistoryPage, BrokerError> {
        self.shared.history(room, query).await
    }

    async fn presence_add(&self, room: &RoomName, session: &str, user: &str) -> Result<bool, BrokerError> {
        self.shared.presence.add(&self.shared, room, session, user).await
    }

    async fn presence_remove(&self, room: &RoomName, session: &str, user: &str) -> Result<bool, BrokerError> {
        self.shared.presence.remove(&self.shared, room, session, user).await
    }

    async fn presence(&self, room: &RoomName) -> Result<Vec<PresenceEntry>, BrokerError> {
        self.shared.presence.members(&self.shared, room).await
    }

    async fn erase(&self, room: &RoomName, seq: u64) -> Result<bool, BrokerError> {
        self.shared.erase(&names::token(room), seq).await
    }

    async fn erase_user(&self, user: &str) -> Result<u64, BrokerError> {
        let s = &self.shared;
        // Every room's messages from `user`, by room token (the subject's last part).
        let mut found: HashMap<String, Vec<u64>> = HashMap::new();
        let prefix = s.names.records("");
        s.scan(s.names.stream(), s.names.all_records(), from_start(), |_, m| {
            if let Some(Record { kind: Kind::Message { from, .. }, head, .. }) = Record::decode(&m.payload) {
                if from == user {
                    if let Some(token) = m.subject.as_str().strip_prefix(&prefix) {
                        found.entry(token.to_owned()).or_default().push(head);
                    }
                }
            }
            true
        })
        .await?;
        let mut erased = 0;
        for (token, seqs) in found {
            for seq in seqs {
                erased += u64::from(s.erase(&token, seq).await?);
            }
        }
        Ok(erased)
    }

    async fn detach(&self) {
        let s = &self.shared;
        self.stop.cancel();
        lock(&s.rooms).clear();
        s.presence.clear(s).await;
    }
}

impl Shared {
    /// Publishes on core NATS and waits until the server has it (a flush: its answer to a ping
    /// sent after), so that what one caller sends after another's call returned arrives after
    /// it everywhere, as with the other brokers.
    async fn fan_out(&self, what: &str, subject: String, payload: Vec<u8>) -> Result<(), BrokerError> {
        let sent = timeout(self.settings.op_timeout, self.client.publish(subject, payload.into())).await;
        sent.map_err(|_| unavailable(what, "timed out"))?.map_err(|e| unavailable(what, e))?;
        self.sync(what).await
    }

    /// Returns once the server has processed everything this node sent before (its
    /// publications delivered, its subscriptions in place): a request nobody answers, which
    /// the server refuses (no responders) after the commands before it. async-nats's `flush`
    /// only writes to the socket.
    pub(crate) async fn sync(&self, what: &str) -> Result<(), BrokerError> {
        let subject = format!("{}.sync.{}", self.settings.prefix, self.instance);
        let asked = timeout(self.settings.op_timeout, self.client.request(subject, Bytes::new())).await;
        match asked.map_err(|_| unavailable(what, "timed out"))? {
            Err(e) if e.kind() == async_nats::client::RequestErrorKind::NoResponders => Ok(()),
            Err(e) => Err(unavailable(what, e)),
            Ok(_) => Ok(()),
        }
    }

    /// The original of a duplicate publish: the record at `sseq`, `None` if it lost its race.
    async fn original(&self, token: &str, sseq: u64) -> Result<Option<Published>, BrokerError> {
        let get = self.stream().await?.raw_message_builder().sequence(sseq).send();
        let got = timeout(self.settings.op_timeout, get).await.map_err(|_| unavailable("read", "timed out"))?;
        let m =
            got.map_err(|e| BrokerError::Internal(format!("the original of a duplicate in {token} is gone: {e}")))?;
        if let Some((epoch, seq)) = Record::decode_key(&m.payload) {
            return Ok(Some(Published { epoch: Epoch::from(epoch), seq, duplicate: true }));
            // restored
        }
        match Record::decode(&m.payload) {
            Some(Record { epoch, head, prev, kind: Kind::Message { .. } }) => {
                let won = self.won(token, prev, sseq).await?;
                Ok(won.then(|| Published { epoch: Epoch::from(epoch), seq: head, duplicate: true }))
            }
            _ => Err(BrokerError::Internal(format!("the original of a duplicate in {token} is not a message"))),
        }
    }

    /// Erases the message at `seq` of the room's current epoch: a tombstone record keeps its
    /// place (and the room's head), then the message itself is deleted from the stream.
    async fn erase(&self, token: &str, seq: u64) -> Result<bool, BrokerError> {
        let deadline = Instant::now() + self.settings.op_timeout;
        loop {
            let mut view = self.view(token).await?;
            let prev = view.read_to();
            let Some((epoch, head, _)) = view.last.take() else { return Ok(false) };
            let found = view.epochs.remove(&epoch).and_then(|mut e| e.messages.remove(&seq));
            let Some((sseq, Message { ts, from, body: Some(_), .. })) = found else {
                return Ok(false); // not held, or already erased
            };
            let tombstone = Record::tombstone(&epoch, seq, head, prev, ts, &from);
            if let Appended::Stored(_) = self.append(token, tombstone, prev, None).await? {
                let stream = self.stream().await?;
                let deleted = timeout(self.settings.op_timeout, stream.delete_message(sseq)).await;
                deleted.map_err(|_| unavailable("erase", "timed out"))?.map_err(|e| unavailable("erase", e))?;
                return Ok(true);
            }
            if Instant::now() > deadline {
                return Err(unavailable("erase", "too many concurrent publishers in the room"));
            }
        }
    }
}
