//! [`RedisNode`]: one engine's attachment to Redis, implementing `BrokerNode`.
//!
//! Commands (the scripts) go over two multiplexed connections ([`Conn`]: to one server or to a
//! cluster; concurrent calls are pipelined on each, and each reconnects by itself): one carries
//! the publishes (batched per room, `publisher.rs`), the other everything else, so that
//! heartbeats, presence, positions and history reads never queue behind a burst of publishes.
//! Deliveries come over a dedicated pub/sub connection owned by the task in `subscriber.rs`.
//! Every call is bounded by the op timeout, so a lost Redis makes calls fail fast with
//! `Unavailable` instead of hanging.
//! Dropping the node (an engine dropped without shutdown) stops its tasks, as a crash would: its
//! presence then expires and another node sweeps it.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chat_core::broker::{
    DeliverySink, Epoch, HistoryPage, HistoryQuery, Notice, Origin, Position, PresenceEntry, Publication, PublishOpts,
    Published, Transient,
};
use chat_core::{BrokerError, BrokerNode, RoomName};
use redis::{FromRedisValue, Script, Value};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use crate::broker::Settings;
use crate::error::{bad_reply, from_redis, timed_out};
use crate::keys::{registry_field, Keys};
use crate::presence;
use crate::primary::{Conn, Locator, Source};
use crate::publisher::{self, Pending, Queues};
use crate::reply;
use crate::scripts::{Call, SCRIPTS};
use crate::subscriber::{self, Feed};
use chat_core::broker::{random_u64, wire};

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Where this node stands in a room it subscribes to.
pub(crate) struct Track {
    pub(crate) room: RoomName,
    /// `None` until `subscribe` has read the room's position.
    pub(crate) epoch: Option<Epoch>,
    /// The last seq delivered to the engine (or the position read at subscribe).
    pub(crate) last: u64,
    /// That message's id, when known (lua/publish.lua): Redis compares it with what it holds
    /// at `last`, so a history that diverged there starts a new epoch.
    pub(crate) last_id: Option<u64>,
    /// The newest message this node stored in `epoch` (seq, id) while it had not delivered it
    /// yet. Redis acknowledged it, so if Redis comes back without it (a failover to a replica
    /// that missed it) the room must start a new epoch even though no delivery showed it here.
    pub(crate) stored: Option<(u64, u64)>,
    /// The epoch this room moved on from here: a delivery of it that was still queued when the
    /// room reset is late, not a change of epoch back to it (epochs are never reused).
    pub(crate) retired: Option<Epoch>,
}

impl Track {
    /// A tracked room with nothing known yet.
    pub(crate) fn new(room: RoomName) -> Track {
        Track { room, epoch: None, last: 0, last_id: None, stored: None, retired: None }
    }

    /// The room starts over (or anew) at `seq` of `epoch`, with that message's id if known.
    pub(crate) fn start(&mut self, epoch: Epoch, seq: u64, id: Option<u64>) {
        self.epoch = Some(epoch);
        (self.last, self.last_id, self.stored) = (seq, id, None);
    }

    /// What this node knows the room's history holds: its epoch, and the newest seq it
    /// delivered or stored there, with that message's id if known.
    pub(crate) fn known(&self) -> Option<(Epoch, u64, Option<u64>)> {
        let epoch = self.epoch.clone()?;
        Some(match self.stored {
            Some((seq, id)) if seq > self.last => (epoch, seq, Some(id)),
            _ => (epoch, self.last, self.last_id),
        })
    }
}

/// A session this node holds in presence, kept so it can be registered again when Redis lost
/// it (a restart) or other nodes took this one for dead.
#[derive(Clone)]
pub(crate) struct Held {
    pub(crate) room: RoomName,
    pub(crate) session: String,
    pub(crate) user: String,
}

/// State shared by the node handle and its background tasks.
pub(crate) struct Shared {
    pub(crate) keys: Keys,
    pub(crate) settings: Arc<Settings>,
    /// How to find the primary (asked again on every pub/sub reconnect).
    pub(crate) locator: Arc<Locator>,
    /// The primary as last located (or the cluster), and the command connections to it.
    pub(crate) primary: Mutex<Primary>,
    /// Whether Redis is a cluster: live delivery then goes by sharded pub/sub (`SPUBLISH`).
    pub(crate) cluster: bool,
    /// Wakes the pub/sub task to reconnect (and locate the primary again): a command met a
    /// server that is no longer the primary.
    pub(crate) relocate: tokio::sync::Notify,
    /// This incarnation of the node in Redis: the engine's node id and a random suffix, so a
    /// restarted node never inherits the presence of the one that died.
    pub(crate) instance: String,
    pub(crate) sink: Arc<dyn DeliverySink>,
    /// Rooms this node subscribes to, by name.
    pub(crate) subs: Mutex<HashMap<String, Track>>,
    /// The live pub/sub connection's command half; `None` while reconnecting.
    pub(crate) pubsub: Mutex<Option<Feed>>,
    /// This node's sessions in presence, by registry field.
    pub(crate) held: Mutex<HashMap<String, Held>>,
    /// Sessions whose removal from presence has not been confirmed (Redis was unreachable, or
    /// the call was abandoned), by registry field: the presence task retries them, so a
    /// ghost member disappears once Redis answers again.
    pub(crate) unremoved: Mutex<HashMap<String, Held>>,
    /// Expiry (ms) given to an epoch created outside `publish`: the last `history_ttl` seen.
    pub(crate) epoch_ttl_ms: AtomicU64,
    /// Where a room Redis holds nothing of goes on from (the engine's store), if anywhere.
    pub(crate) origin: Option<Arc<dyn Origin>>,
    /// The rooms with a batch of publishes in flight, and what waits behind it.
    pub(crate) outgoing: Mutex<Queues>,
}

/// The primary a node talks to (or the cluster): where new pub/sub connections go, and the
/// multiplexed command connections.
pub(crate) struct Primary {
    pub(crate) source: Source,
    /// Everything but publishes.
    pub(crate) conn: Conn,
    /// Publishes (and the `WAIT` after them, which covers this connection's writes).
    pub(crate) publish: Conn,
}

/// Which of a node's two command connections a command takes.
#[derive(Clone, Copy)]
pub(crate) enum Lane {
    /// Heartbeats, presence, positions, history, sweeps, erasures.
    Control,
    /// Publishes.
    Publish,
}

impl Primary {
    /// Connects the command connections (each reconnects by itself, to this same server, or
    /// follows the cluster).
    async fn connect(source: Source, settings: &Settings) -> Result<Primary, BrokerError> {
        let conn = Conn::connect(&source, settings).await?;
        let publish = Conn::connect(&source, settings).await?;
        Ok(Primary { source, conn, publish })
    }
}

/// A duration in whole milliseconds, at least 1 (Redis refuses a zero expiry).
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// The random part of a new epoch's name (lua/epoch.lua puts Redis's clock in front of it).
fn new_epoch() -> String {
    format!("{:08x}", random_u64() & 0xffff_ffff)
}

impl Shared {
    /// A command connection to the primary.
    fn conn(&self, lane: Lane) -> Conn {
        let primary = lock(&self.primary);
        match lane {
            Lane::Control => primary.conn.clone(),
            Lane::Publish => primary.publish.clone(),
        }
    }

    /// The primary as of now: asks the locator, and when the primary moved (a failover),
    /// connects the command connections to the new one. Returns where it is. On a cluster the
    /// command connections are connected anew every time: a connection whose map still names a
    /// primary that stalled (it answers nothing, not even `MOVED`) would time out forever.
    pub(crate) async fn follow_primary(&self) -> Result<Source, BrokerError> {
        let source = self.locator.source(self.settings.op_timeout).await?;
        if source.same(&lock(&self.primary).source) && !self.cluster {
            return Ok(source);
        }
        let primary = Primary::connect(source.clone(), &self.settings).await?;
        tracing::warn!(node = %self.instance, primary = ?self.locator, "following the new redis primary");
        *lock(&self.primary) = primary;
        Ok(source)
    }

    /// The command that publishes on a room's channel: `SPUBLISH` on a cluster (sharded
    /// pub/sub: the message goes only to the nodes of the room's shard), else `PUBLISH`.
    pub(crate) fn publish_command(&self) -> &'static str {
        if self.cluster {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    /// Runs a command within the op timeout. A server that says it is read-only was the
    /// primary and is now a replica, and on a cluster a command that timed out may have gone to
    /// a primary that stalled: either way the pub/sub task is woken to locate the primary (read
    /// the cluster's map) again and reconnect.
    async fn query<T: FromRedisValue>(
        &self,
        what: &str,
        run: impl AsyncFnOnce(&mut Conn) -> redis::RedisResult<T>,
    ) -> Result<T, BrokerError> {
        self.query_raw(Lane::Control, what, run).await?.map_err(from_redis)
    }

    /// [`query`](Self::query), with Redis's error (an answer) apart from a timeout.
    async fn query_raw<T: FromRedisValue>(
        &self,
        lane: Lane,
        what: &str,
        run: impl AsyncFnOnce(&mut Conn) -> redis::RedisResult<T>,
    ) -> Result<redis::RedisResult<T>, BrokerError> {
        let mut conn = self.conn(lane);
        let Ok(answer) = timeout(self.settings.op_timeout, run(&mut conn)).await else {
            if self.cluster {
                self.relocate.notify_one();
            }
            return Err(timed_out(what));
        };
        if let Err(e) = &answer {
            if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly) {
                self.relocate.notify_one();
            }
        }
        Ok(answer)
    }

    /// Pings both command connections, twice where the first fails (a connection that broke
    /// fails once, then reconnects): after this, each is connected again if Redis answers.
    pub(crate) async fn refresh_lanes(&self) {
        for lane in [Lane::Control, Lane::Publish] {
            for _ in 0..2 {
                let ping =
                    self.query_raw(lane, "ping", async |conn| redis::cmd("PING").query_async::<Value>(conn).await);
                if matches!(ping.await, Ok(Ok(_))) {
                    break;
                }
            }
        }
    }

    /// Runs a script within the op timeout.
    pub(crate) async fn eval<T: FromRedisValue>(&self, what: &str, inv: &Call<'_>) -> Result<T, BrokerError> {
        self.query(what, async |conn| inv.invoke(conn).await).await
    }

    /// Runs a room script: `script` with the epoch prologue's keys and arguments (see
    /// [`room_script`](Self::room_script)), then what `args` adds. With an origin, a room
    /// Redis holds nothing of (or lost) is refused by the prologue (ORIGIN) until the node
    /// says where the origin has it: the script runs again with that, and the room goes on
    /// there (or under a new epoch if the origin has nothing, or is behind this node). With
    /// `ask_first` the origin is asked before the first run, so that a Redis that came back
    /// older than the origin, unknown to any node, goes on from the origin too: a node
    /// subscribing to a room does that once. The origin's idempotency keys, which a room that
    /// goes on from the origin gets too, are read only once the prologue found the room lost.
    ///
    /// With `replicas` above 0, the script is followed by Redis's `WAIT` for that many
    /// replicas, in one pipeline on one connection to the server that runs it (see
    /// [`Conn::pipeline_at`]), and fewer in time is `Unavailable`. Sent apart, the `WAIT` could
    /// go to another server than the script did: a primary that stalled, was failed over and
    /// came back runs the scripts queued to it before it learns it is a replica, while the
    /// node, having read the cluster's map (or the sentinels) again meanwhile, would ask the new
    /// primary whether its replicas have the message, and be told yes.
    #[allow(clippy::too_many_arguments)]
    async fn room_eval<T: FromRedisValue>(
        &self,
        lane: Lane,
        what: &str,
        script: &Script,
        room: &str,
        ask_first: bool,
        replicas: u32,
        args: impl Fn(&mut Call<'_>),
    ) -> Result<T, BrokerError> {
        // Where the origin has the room; with `keys`, followed by the keys to restore there.
        let ask = async |keys: bool| -> Result<String, BrokerError> {
            let Some(origin) = &self.origin else { return Ok(new_epoch()) };
            let name = RoomName::new(room).map_err(|_| bad_reply(what))?;
            let Some(at) = origin.origin(&name).await? else { return Ok(new_epoch()) };
            let mut start = format!("@{}@{}@{}", at.seq, at.epoch, new_epoch());
            if keys {
                start.push('\n');
                for k in origin.keys(&name, &at).await? {
                    let key = self.keys.idempotency(room, &k.from, &k.key);
                    let left = k.remaining.as_millis().max(1);
                    let _ = write!(start, "{}:{}:{left}:{key}", key.len(), k.seq);
                }
            }
            Ok(start)
        };
        let mut start = match &self.origin {
            Some(_) if ask_first => ask(false).await?,
            Some(_) => String::from("?"),
            None => new_epoch(),
        };
        loop {
            let mut inv = self.room_script(script, room, &start);
            args(&mut inv);
            // Asked once more at most: with the keys, the prologue does not refuse.
            let keyless = start == "?" || (start.starts_with('@') && !start.contains('\n'));
            let answer = if replicas == 0 {
                self.query_raw(lane, what, async |conn| inv.invoke(conn).await).await?
            } else {
                let (wait_ms, key) = (millis(self.settings.op_timeout / 2), self.keys.seq(room));
                let run = async |conn: &mut Conn| invoke_replicated(conn, &inv, &key, replicas, wait_ms).await;
                match self.query_raw(lane, what, run).await? {
                    Ok((_, acknowledged)) if acknowledged < u64::from(replicas) => {
                        return Err(BrokerError::Unavailable(format!(
                            "stored, but {acknowledged} of {replicas} replicas acknowledged it in time"
                        )));
                    }
                    answer => answer.and_then(|(answer, _)| Ok(T::from_redis_value(answer)?)),
                }
            };
            match answer {
                Err(e) if e.code() == Some("ORIGIN") && keyless => start = ask(true).await?,
                answer => return answer.map_err(from_redis),
            }
        }
    }

    /// A room script's invocation with the epoch prologue's keys and arguments: how to start
    /// a new epoch (`start`: a random name part, `?` to ask the origin first, or where the
    /// origin has the room), and the epoch this node knows for the room and the last seq it
    /// delivered there, so that a Redis that came back older starts a new epoch
    /// (lua/epoch.lua) instead of handing out seqs the node has already delivered.
    fn room_script<'a>(&self, script: &'a Script, room: &str, start: &str) -> Call<'a> {
        let mut inv = Call::new(script);
        inv.key(self.keys.epoch(room)).key(self.keys.seq(room)).key(self.keys.stream(room));
        inv.arg(start).arg(self.epoch_ttl_ms.load(Ordering::Relaxed));
        match lock(&self.subs).get(room).and_then(Track::known) {
            Some((epoch, last, id)) => inv.arg(&*epoch).arg(last).arg(id.map_or_else(String::new, |id| id.to_string())),
            None => inv.arg("").arg(0).arg(""),
        };
        inv
    }

    /// The room's position (creating its epoch if it has none).
    pub(crate) async fn position(&self, room: &str) -> Result<Position, BrokerError> {
        let answer = self.room_eval(Lane::Control, "position", &SCRIPTS.position, room, true, 0, |_| {}).await?;
        let items = reply::array(answer).ok_or_else(|| bad_reply("position"))?;
        let mut items = items.into_iter();
        let (Some(epoch), Some(seq)) = (items.next(), items.next()) else { return Err(bad_reply("position")) };
        let seq = reply::uint(&seq).ok_or_else(|| bad_reply("position"))?;
        let epoch = reply::string(epoch).ok_or_else(|| bad_reply("position"))?;
        Ok(Position { epoch: Epoch::from(epoch), seq })
    }

    /// A page of the room's history (PROTOCOL.md §4: exclusive bounds, oldest first).
    pub(crate) async fn history(&self, room: &str, q: HistoryQuery) -> Result<HistoryPage, BrokerError> {
        Ok(self.history_with_ids(room, q).await?.0)
    }

    /// A page of history and each message's id (see [`Track::last_id`]).
    pub(crate) async fn history_with_ids(
        &self,
        room: &str,
        q: HistoryQuery,
    ) -> Result<(HistoryPage, Vec<Option<u64>>), BrokerError> {
        let lo = q.after.map_or(1, |a| a.saturating_add(1)).max(1);
        let hi = q.before.map_or(Some(u64::MAX), |b| b.checked_sub(1));
        let direction = match hi {
            Some(hi) if q.limit > 0 && lo <= hi => {
                if q.after.is_some() {
                    "f"
                } else {
                    "b"
                }
            }
            _ => "n",
        };
        let answer = self
            .room_eval(Lane::Control, "history", &SCRIPTS.history, room, false, 0, |inv| {
                inv.arg(direction).arg(format!("{lo}-0")).arg(format!("{}-0", hi.unwrap_or(0))).arg(q.limit.max(1));
            })
            .await?;
        let items = reply::array(answer).ok_or_else(|| bad_reply("history"))?;
        let mut items = items.into_iter();
        let (Some(epoch), Some(latest), Some(entries)) = (items.next(), items.next(), items.next()) else {
            return Err(bad_reply("history"));
        };
        let epoch = Epoch::from(reply::string(epoch).ok_or_else(|| bad_reply("history"))?);
        let latest = reply::uint(&latest).ok_or_else(|| bad_reply("history"))?;
        let entries = reply::array(entries).ok_or_else(|| bad_reply("history"))?;
        let mut entries = entries.into_iter().map(reply::entry).collect::<Option<Vec<_>>>().ok_or_else(|| {
            tracing::error!(room, "malformed stream entry");
            bad_reply("history")
        })?;
        if direction == "b" {
            entries.reverse();
        }
        let (messages, ids) = entries.into_iter().unzip();
        Ok((HistoryPage { epoch, latest, messages }, ids))
    }

    /// Adds one held session to presence; true when it is the user's first in the room. The
    /// node's registry gets it first: a sweep after this node's death finds every session a
    /// room holds of it (the two are on different shards of a cluster, so not one script).
    pub(crate) async fn presence_add(&self, held: &Held) -> Result<bool, BrokerError> {
        let room = held.room.as_str();
        let field = registry_field(room, &held.session);
        let register = redis::cmd("HSET").arg(self.keys.node(&self.instance)).arg(field).arg(&held.user).to_owned();
        self.query("presence_add", async |conn| register.query_async::<Value>(conn).await).await?;
        let mut inv = Call::new(&SCRIPTS.presence_add);
        inv.key(self.keys.sessions(room)).key(self.keys.users(room)).arg(&held.session).arg(&held.user);
        let first: i64 = self.eval("presence_add", &inv).await?;
        Ok(first == 1)
    }

    /// Removes one session from presence; true when it was the user's last in the room. The
    /// node's registry loses it last; if that fails, the entry stays until this node detaches or
    /// is swept, which then finds no such session in the room: harmless.
    pub(crate) async fn presence_remove(&self, held: &Held) -> Result<bool, BrokerError> {
        let last = self.presence_drop(&held.room, &held.session, false).await?;
        let field = registry_field(&held.room, &held.session);
        let unregister = redis::cmd("HDEL").arg(self.keys.node(&self.instance)).arg(field).to_owned();
        if let Err(e) = self.query("presence_remove", async |conn| unregister.query_async::<Value>(conn).await).await {
            tracing::debug!(room = %held.room, error = %e, "a left session stays in this node's registry");
        }
        Ok(last)
    }

    /// Removes a session from the room's presence: true when it was the user's last session
    /// there. With `announce`, the script says on the room's channel that the user left.
    async fn presence_drop(&self, room: &str, session: &str, announce: bool) -> Result<bool, BrokerError> {
        let mut inv = Call::new(&SCRIPTS.presence_remove);
        inv.key(self.keys.sessions(room)).key(self.keys.users(room)).arg(session);
        if announce {
            inv.arg(self.keys.channel(room)).arg(self.publish_command());
        } else {
            inv.arg("").arg("");
        }
        let last: i64 = self.eval("presence_remove", &inv).await?;
        Ok(last == 1)
    }

    /// Retries the removals Redis has not confirmed; announces `member_left` for users whose
    /// last session went. Returns how many are still pending.
    pub(crate) async fn retry_removals(&self) -> usize {
        let pending: Vec<(String, Held)> = lock(&self.unremoved).iter().map(|(f, h)| (f.clone(), h.clone())).collect();
        for (field, held) in pending {
            match self.presence_remove(&held).await {
                Ok(last) => {
                    lock(&self.unremoved).remove(&field);
                    if last {
                        let left = wire::encode_transient(&Transient::MemberLeft(held.user.as_str().into()));
                        if let Err(e) = self.publish_raw(&held.room, left).await {
                            tracing::warn!(room = %held.room, error = %e, "member_left not sent after a retried removal");
                        }
                    }
                }
                Err(e) => tracing::debug!(room = %held.room, error = %e, "presence removal retry failed"),
            }
        }
        lock(&self.unremoved).len()
    }

    /// Stores one batch of a room's publishes (`lua/publish.lua`): the outcome of each, in
    /// order. The newest message stored is recorded as known to this node (`Track::stored`).
    pub(crate) async fn store_batch(&self, room: &RoomName, batch: &[Pending]) -> Result<Vec<Published>, BrokerError> {
        let Some(first) = batch.first() else { return Ok(Vec::new()) };
        // The room-wide settings are the engine's, the same for every message of a node.
        let opts = &first.opts;
        self.epoch_ttl_ms.store(millis(opts.history_ttl), Ordering::Relaxed);
        // Duplicates are waited for too: the first send may have been stored and not
        // replicated (it was answered `unavailable`); the script's write on the key makes the
        // wait cover it.
        let replicas = self.settings.replicas_to_acknowledge;
        let answer = self
            .room_eval(Lane::Publish, "publish", &SCRIPTS.publish, room, false, replicas, |inv| {
                inv.arg(self.keys.channel(room)).arg(opts.history_size).arg(millis(opts.idempotency_window));
                inv.arg(self.publish_command());
                let mut keys = 3;
                for p in batch {
                    inv.arg(&*p.msg.from).arg(p.msg.ts).arg(&p.msg.body[..]);
                    match &p.opts.key {
                        Some(key) => {
                            inv.key(self.keys.idempotency(room, &p.msg.from, key));
                            keys += 1;
                            inv.arg(keys);
                        }
                        None => {
                            inv.arg("");
                        }
                    }
                }
            })
            .await?;
        let stored = publisher::outcomes(answer, batch.len()).ok_or_else(|| bad_reply("publish"))?;
        let newest = stored.iter().rev().find_map(|s| Some((s.published.seq, s.id?, &s.published.epoch)));
        if let Some((seq, id, epoch)) = newest {
            if let Some(track) = lock(&self.subs).get_mut(room.as_str()) {
                let newer = track.stored.is_none_or(|(stored, _)| seq > stored);
                if track.epoch.as_ref() == Some(epoch) && seq > track.last && newer {
                    track.stored = Some((seq, id));
                }
            }
        }
        Ok(stored.into_iter().map(|s| s.published).collect())
    }

    /// Publishes a notice on the notices channel, which every node subscribes to.
    pub(crate) async fn publish_notice(&self, payload: Vec<u8>) -> Result<(), BrokerError> {
        let cmd = redis::cmd(self.publish_command()).arg(self.keys.notices()).arg(payload).to_owned();
        self.query("notify", async |conn| cmd.query_async::<Value>(conn).await).await.map(drop)
    }

    /// Publishes a transient payload on the room's channel.
    pub(crate) async fn publish_raw(&self, room: &str, payload: Vec<u8>) -> Result<(), BrokerError> {
        let cmd = redis::cmd(self.publish_command()).arg(self.keys.channel(room)).arg(payload).to_owned();
        self.query("publish", async |conn| cmd.query_async::<Value>(conn).await).await.map(drop)
    }

    /// Removes a node's sessions from presence now (or every dead node's, with `None`); the
    /// users whose last session went are announced on their rooms' channels. Returns how many.
    ///
    /// Dead nodes are claimed first (`lua/claim.lua`: a lease, so one node sweeps each, and
    /// another takes over if that one dies), then each one's sessions are removed room by
    /// room, its registry deleted, and the sweep recorded (`lua/swept.lua`). The steps touch
    /// different slots (the nodes', each room's, the registry's), so on a cluster they are
    /// separate calls, each safe to repeat.
    pub(crate) async fn sweep(&self, node: Option<&str>) -> Result<u64, BrokerError> {
        let (lease, dead) = match node {
            Some(node) => (String::new(), vec![node.to_owned()]),
            None => {
                let mut inv = Call::new(&SCRIPTS.claim);
                inv.key(self.keys.nodes()).key(self.keys.swept()).arg(millis(self.settings.presence_ttl));
                let claimed: Vec<Value> = self.eval("sweep", &inv).await?;
                let mut claimed = claimed.into_iter();
                let lease = claimed.next().and_then(|l| reply::uint(&l)).ok_or_else(|| bad_reply("sweep"))?;
                let dead = claimed.map(reply::string).collect::<Option<Vec<_>>>().ok_or_else(|| bad_reply("sweep"))?;
                (lease.to_string(), dead)
            }
        };
        let mut left = 0;
        for node in dead {
            left += self.sweep_node(&node, &lease).await?;
        }
        Ok(left)
    }

    /// Removes one node's sessions from presence (see [`sweep`](Self::sweep)); `lease` is what
    /// it was claimed with, empty for this node's own (a detach).
    async fn sweep_node(&self, node: &str, lease: &str) -> Result<u64, BrokerError> {
        let registry = self.keys.node(node);
        let read = redis::cmd("HGETALL").arg(&registry).to_owned();
        let entries: HashMap<String, String> = self.query("sweep", async |conn| read.query_async(conn).await).await?;
        let sessions: Vec<(&str, &str)> = entries.keys().filter_map(|field| field.split_once(' ')).collect();
        let mut left = 0;
        // Pipelined, a bounded number at a time.
        for chunk in sessions.chunks(256) {
            let drops = chunk.iter().map(|(room, session)| self.presence_drop(room, session, true));
            left += futures::future::try_join_all(drops).await?.into_iter().filter(|last| *last).count() as u64;
        }
        let delete = redis::cmd("DEL").arg(&registry).to_owned();
        self.query("sweep", async |conn| delete.query_async::<Value>(conn).await).await?;
        let mut inv = Call::new(&SCRIPTS.swept);
        inv.key(self.keys.nodes()).key(self.keys.swept()).arg(node).arg(lease);
        self.eval::<Value>("sweep", &inv).await?;
        Ok(left)
    }
}

/// Runs `call` and `WAIT`s for `replicas` (within `wait_ms`) in one pipeline to the server that
/// holds `key` (see [`Shared::room_eval`]): the script's answer and how many replicas
/// acknowledged. A script Redis does not have is loaded and the pipeline sent again; on a
/// cluster, a slot that moved (`MOVED`) or is moving (`ASK`) sends it again where Redis said,
/// once.
async fn invoke_replicated(
    conn: &mut Conn,
    call: &Call<'_>,
    key: &str,
    replicas: u32,
    wait_ms: u64,
) -> redis::RedisResult<(Value, u64)> {
    let (mut to, mut loaded) = (None::<(String, bool)>, false);
    loop {
        let mut pipe = redis::pipe();
        let asking = matches!(to, Some((_, true)));
        if asking {
            pipe.cmd("ASKING");
        }
        pipe.add_command(call.cmd()).cmd("WAIT").arg(replicas).arg(wait_ms);
        let mut replies = conn.pipeline_at(&pipe, key, to.as_ref().map(|(at, _)| at.as_str())).await?.into_iter();
        if asking {
            replies.next().map(Value::extract_error).transpose()?;
        }
        let (Some(answer), Some(acknowledged)) = (replies.next(), replies.next()) else {
            return Err((redis::ErrorKind::UnexpectedReturnType, "a short answer to a script and WAIT").into());
        };
        match answer.extract_error() {
            Ok(answer) => return Ok((answer, u64::from_redis_value(acknowledged.extract_error()?)?)),
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) && !loaded => {
                call.load(conn).await?;
                loaded = true;
            }
            Err(e) if to.is_none() && e.redirect_node().is_some() => {
                let ask = e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::Ask);
                if !ask {
                    // A pipeline's answers do not update the connection's map of the cluster; a
                    // command on the key, which meets the same MOVED, does.
                    let _ = redis::cmd("EXISTS").arg(key).query_async::<Value>(conn).await;
                }
                to = e.redirect_node().map(|(at, _)| (at.to_owned(), ask));
            }
            Err(e) => return Err(e),
        }
    }
}

/// One engine's attachment to a [`RedisBroker`](crate::RedisBroker).
pub(crate) struct RedisNode {
    shared: Arc<Shared>,
    /// Stops the background tasks (on detach, or when the node is dropped).
    stop: CancellationToken,
}

impl RedisNode {
    /// Connects both connections, registers the node and starts its tasks.
    pub(crate) async fn attach(
        locator: Arc<Locator>,
        settings: Arc<Settings>,
        node: &str,
        sink: Arc<dyn DeliverySink>,
        origin: Option<Arc<dyn Origin>>,
    ) -> Result<RedisNode, BrokerError> {
        let source = locator.source(settings.op_timeout).await?;
        let cluster = source.is_cluster();
        let primary = Primary::connect(source.clone(), &settings).await?;
        let keys = Keys::new(&settings.key_prefix);
        let (pubsub, stream) = subscriber::connect(&source, &settings, &keys).await?;
        let shared = Arc::new(Shared {
            keys,
            epoch_ttl_ms: AtomicU64::new(millis(settings.default_history_ttl)),
            instance: format!("{node}-{:x}", random_u64()),
            settings,
            locator,
            primary: Mutex::new(primary),
            cluster,
            relocate: tokio::sync::Notify::new(),
            sink,
            subs: Mutex::new(HashMap::new()),
            pubsub: Mutex::new(Some(pubsub)),
            held: Mutex::new(HashMap::new()),
            origin,
            unremoved: Mutex::new(HashMap::new()),
            outgoing: Mutex::new(Queues::default()),
        });
        presence::beat(&shared).await?;
        let stop = CancellationToken::new();
        tokio::spawn(subscriber::run(shared.clone(), stream, stop.clone()));
        tokio::spawn(presence::run(shared.clone(), stop.clone()));
        tracing::debug!(node = %shared.instance, "attached to redis");
        Ok(RedisNode { shared, stop })
    }
}

impl Drop for RedisNode {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[async_trait]
impl BrokerNode for RedisNode {
    async fn publish(&self, room: &RoomName, msg: Publication, opts: &PublishOpts) -> Result<Published, BrokerError> {
        publisher::publish(&self.shared, room, msg, opts).await
    }

    async fn notify(&self, users: &[Arc<str>], notice: &Notice) -> Result<(), BrokerError> {
        match wire::encode_notice(users, notice) {
            Some(payload) => self.shared.publish_notice(payload).await,
            None => Err(BrokerError::Internal(format!("the redis broker cannot carry {notice:?}"))),
        }
    }

    async fn broadcast(&self, room: &RoomName, what: Transient) -> Result<(), BrokerError> {
        self.shared.publish_raw(room, wire::encode_transient(&what)).await
    }

    async fn subscribe(&self, room: &RoomName) -> Result<Position, BrokerError> {
        let s = &self.shared;
        lock(&s.subs).entry(room.to_string()).or_insert_with(|| Track::new(room.clone()));
        let result = async {
            let feed = lock(&s.pubsub).clone();
            let mut feed = feed.ok_or_else(|| BrokerError::Unavailable("redis pub/sub is reconnecting".into()))?;
            match timeout(s.settings.op_timeout, feed.subscribe(&[s.keys.channel(room)])).await {
                Ok(result) => result.map_err(from_redis)?,
                Err(_) => return Err(timed_out("subscribe")),
            }
            // Read only now that Redis confirmed the subscription: every later message comes.
            s.position(room).await
        }
        .await;
        let mut subs = lock(&s.subs);
        match result {
            Ok(position) => {
                if let Some(track) = subs.get_mut(room.as_str()) {
                    if track.epoch.as_ref() == Some(&position.epoch) && track.last >= position.seq {
                        // Delivered meanwhile: `last` and its id stand.
                    } else {
                        track.start(position.epoch.clone(), position.seq, None);
                    }
                }
                Ok(position)
            }
            Err(e) => {
                subs.remove(room.as_str());
                Err(e)
            }
        }
    }

    async fn unsubscribe(&self, room: &RoomName) -> Result<(), BrokerError> {
        let s = &self.shared;
        lock(&s.subs).remove(room.as_str());
        // While reconnecting there is nothing to undo: only tracked rooms are subscribed again.
        let Some(mut feed) = lock(&s.pubsub).clone() else { return Ok(()) };
        match timeout(s.settings.op_timeout, feed.unsubscribe(&s.keys.channel(room))).await {
            Ok(result) => result.map_err(from_redis),
            Err(_) => Err(timed_out("unsubscribe")),
        }
    }

    async fn history(&self, room: &RoomName, query: HistoryQuery) -> Result<HistoryPage, BrokerError> {
        self.shared.history(room, query).await
    }

    async fn presence_add(&self, room: &RoomName, session: &str, user: &str) -> Result<bool, BrokerError> {
        let s = &self.shared;
        let held = Held { room: room.clone(), session: session.to_owned(), user: user.to_owned() };
        let field = registry_field(room, session);
        // A pending removal of the same session is superseded: it is present again.
        lock(&s.unremoved).remove(&field);
        match s.presence_add(&held).await {
            Ok(first) => {
                lock(&s.held).insert(field, held);
                Ok(first)
            }
            Err(e) => {
                // The join fails, but Redis may have added the session before the call failed:
                // remove it (retried until Redis confirms), or it would stay as a ghost.
                lock(&s.unremoved).insert(field, held);
                Err(e)
            }
        }
    }

    async fn presence_remove(&self, room: &RoomName, session: &str, user: &str) -> Result<bool, BrokerError> {
        let s = &self.shared;
        let field = registry_field(room, session);
        // No longer held (a restarted Redis does not get it back), and pending until Redis
        // confirms: if this call fails or is abandoned, the presence task retries it.
        let held = lock(&s.held).remove(&field);
        let held =
            held.unwrap_or_else(|| Held { room: room.clone(), session: session.to_owned(), user: user.to_owned() });
        lock(&s.unremoved).insert(field.clone(), held.clone());
        let last = s.presence_remove(&held).await?;
        lock(&s.unremoved).remove(&field);
        Ok(last)
    }

    async fn presence(&self, room: &RoomName) -> Result<Vec<PresenceEntry>, BrokerError> {
        let s = &self.shared;
        let cmd = redis::cmd("HGETALL").arg(s.keys.users(room)).to_owned();
        let value = s.query("presence", async |conn| cmd.query_async::<Value>(conn).await).await?;
        let items = match value {
            Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
            other => reply::array(other).ok_or_else(|| bad_reply("presence"))?,
        };
        let mut members = Vec::with_capacity(items.len() / 2);
        let mut items = items.into_iter();
        while let (Some(user), Some(count)) = (items.next(), items.next()) {
            let user = reply::string(user).ok_or_else(|| bad_reply("presence"))?;
            match reply::uint(&count) {
                Some(sessions) if sessions > 0 => members.push(PresenceEntry { user, sessions }),
                _ => {}
            }
        }
        members.sort_by(|a, b| a.user.cmp(&b.user));
        Ok(members)
    }

    async fn erase(&self, room: &RoomName, seq: u64) -> Result<bool, BrokerError> {
        let s = &self.shared;
        let mut inv = Call::new(&SCRIPTS.erase);
        inv.key(s.keys.stream(room)).arg("s").arg(seq);
        let erased: u64 = s.eval("erase", &inv).await?;
        Ok(erased > 0)
    }

    async fn erase_user(&self, user: &str) -> Result<u64, BrokerError> {
        let s = &self.shared;
        // Every room's stream under this prefix (`<prefix>{room}:h`), the prefix escaped for MATCH.
        let mut pattern = String::new();
        for c in s.keys.prefix().chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push_str("{*}:h");
        let mut erased = 0u64;
        // Every primary's keys: a cluster's are spread over its shards.
        for primary in s.query("erase_user", async |conn| conn.primaries().await).await? {
            let mut cursor = 0u64;
            loop {
                let scan = redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(500).to_owned();
                let (next, streams): (u64, Vec<String>) =
                    s.query("erase_user", async |conn| conn.query_on(&scan, primary.as_ref()).await).await?;
                for stream in streams {
                    let mut inv = Call::new(&SCRIPTS.erase);
                    inv.key(stream).arg("u").arg(user);
                    erased += s.eval::<u64>("erase_user", &inv).await?;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(erased)
    }

    async fn detach(&self) {
        let s = &self.shared;
        self.stop.cancel();
        lock(&s.subs).clear();
        lock(&s.pubsub).take();
        if let Err(e) = s.sweep(Some(&s.instance)).await {
            tracing::warn!(node = %s.instance, error = %e, "detach: could not clear presence; it will expire");
        }
        lock(&s.held).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_node_knows_includes_what_it_stored_but_has_not_delivered_yet() {
        let mut track = Track::new(RoomName::new("r").unwrap());
        assert_eq!(track.known(), None, "nothing before the position is read");
        track.start(Epoch::from("e1"), 5, Some(50));
        assert_eq!(track.known(), Some((Epoch::from("e1"), 5, Some(50))));
        track.stored = Some((7, 70)); // acknowledged, its delivery still on the way
        assert_eq!(track.known(), Some((Epoch::from("e1"), 7, Some(70))));
        (track.last, track.last_id) = (8, Some(80)); // delivered past it
        assert_eq!(track.known(), Some((Epoch::from("e1"), 8, Some(80))));
        track.start(Epoch::from("e2"), 0, None);
        assert_eq!((track.known(), track.stored), (Some((Epoch::from("e2"), 0, None)), None), "a new epoch forgets");
    }
}
