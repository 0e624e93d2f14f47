//! This node's rooms: who is a member here, and the fan-out of broker deliveries to them.
//!
//! The node subscribes to a room when its first local member joins and unsubscribes when the
//! last one leaves. Every stored delivery's seq is checked against the last one this node
//! delivered for the room: a duplicate is dropped, a gap is filled from the broker's history
//! (deliveries that arrive meanwhile wait) before anything later goes out, and a new epoch sends
//! `reset` to every member first. Each message is encoded once and the same `Bytes` is queued
//! for every member. A member that is still joining (recovery in progress) gets its deliveries
//! buffered, so that replayed and live messages meet with no gap and no duplicate.
//!
//! Locks here are synchronous and never held across an `.await`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;

use crate::broker::{BrokerError, BrokerNode, Delivery, DeliverySink, Epoch, HistoryQuery, Message, Transient};
use crate::bucket::TokenBucket;
use crate::frames::{encode_member_joined, encode_member_left, encode_message, encode_reset, MessageParts};
use crate::outbox::{Class, Outbox};
use crate::protocol::RoomName;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Encodes a stored message as a `message` event.
pub(crate) fn message_frame(room: &str, m: &Message) -> Bytes {
    encode_message(&MessageParts { room, seq: Some(m.seq), from: &m.from, ts: m.ts, body: m.body.as_deref() })
}

/// A delivery held for a member that is still joining.
#[derive(Clone)]
enum Pending {
    Stored(u64, Bytes),
    Transient(Bytes, Class),
    Reset(Bytes),
}

struct Member {
    key: u64,
    outbox: Arc<Outbox>,
    /// `Some` while the member is joining: its deliveries wait here.
    pending: Option<Vec<Pending>>,
    /// Stored messages up to this seq reached the member by its join's replay (or came before
    /// its join point): when they arrive live, late, they are not sent again. 0 after a reset.
    floor: u64,
}

struct RoomState {
    subscribed: bool,
    /// Removed from the node's map: a join that finds it so must look the room up again.
    removed: bool,
    epoch: Epoch,
    /// The last seq this node delivered to its members.
    last: u64,
    members: Vec<Member>,
    /// `Some` while a gap is being filled from history: later deliveries wait here.
    repairing: Option<Vec<Delivery>>,
    /// `Some` while the node subscribes to the room: what the broker delivers before it has
    /// told the room's position waits here, and is applied after it (a message published
    /// between the subscription and the position read is not lost, even in a room that stays
    /// quiet afterwards). At most `repair_limit` deliveries; a later one leaves a gap that the
    /// next delivery's repair fills.
    subscribing: Option<Vec<Delivery>>,
    /// The room's membership events sent from this node (`Config::member_events_per_sec`).
    member_events: TokenBucket,
}

/// One room as this node sees it.
pub(crate) struct LocalRoom {
    name: RoomName,
    /// Serializes subscribe / unsubscribe and membership changes (held across broker calls).
    membership: tokio::sync::Mutex<()>,
    state: Mutex<RoomState>,
}

impl LocalRoom {
    fn new(name: RoomName) -> Self {
        LocalRoom {
            name,
            membership: tokio::sync::Mutex::new(()),
            state: Mutex::new(RoomState {
                subscribed: false,
                removed: false,
                epoch: Arc::from(""),
                last: 0,
                members: Vec::new(),
                repairing: None,
                subscribing: None,
                member_events: TokenBucket::new(),
            }),
        }
    }

    /// The room's name.
    pub(crate) fn name(&self) -> &RoomName {
        &self.name
    }

    /// Whether one more membership event may go out from this node now (`rate` per second,
    /// `burst` at once; rate 0: always).
    pub(crate) fn allow_member_event(&self, rate: u32, burst: u32) -> bool {
        let allowed = lock(&self.state).member_events.take(1, rate, burst);
        if !allowed {
            crate::metrics::dropped("member_event_rate", 1);
        }
        allowed
    }

    /// The epoch and the last seq this node delivered.
    pub(crate) fn position(&self) -> (Epoch, u64) {
        let st = lock(&self.state);
        (st.epoch.clone(), st.last)
    }
}

fn push_to(members: &mut [Member], item: &Pending) {
    // What the item is, worked out once for all the members: this loop is the fan-out.
    let (frame, class) = match item {
        Pending::Stored(_, f) | Pending::Reset(f) => (f, Class::Must),
        Pending::Transient(f, class) => (f, *class),
    };
    // A stored message at or below a member's floor reached it already (no other item has a
    // seq: `u64::MAX` is above every floor).
    let seq = match item {
        Pending::Stored(seq, _) => *seq,
        _ => u64::MAX,
    };
    let reset = matches!(item, Pending::Reset(_));
    // Counted in the rare branches only: the common one costs nothing more per member.
    let mut skipped = 0;
    for m in &mut *members {
        match &mut m.pending {
            Some(buffer) => {
                buffer.push(item.clone());
                skipped += 1;
            }
            None if seq <= m.floor => skipped += 1,
            None => {
                if reset {
                    m.floor = 0;
                }
                m.outbox.push(frame.clone(), class);
            }
        }
    }
    // Once per fan-out, not per member (`chat_deliveries_total`).
    crate::metrics::delivered(members.len() - skipped);
}

/// The node's rooms.
pub(crate) struct Rooms {
    map: RwLock<HashMap<RoomName, Arc<LocalRoom>>>,
    broker: OnceLock<Weak<dyn BrokerNode>>,
    /// The most messages one gap repair asks the broker for.
    repair_limit: usize,
    /// Which rooms show `member_joined` / `member_left` (brokers may announce them anyway,
    /// e.g. for a node that died).
    member_events: MemberEvents,
    /// The most rooms with local members (`Config::max_rooms`).
    max_rooms: usize,
}

/// The host's choice of rooms with membership events.
pub(crate) type MemberEvents = Arc<dyn Fn(&RoomName) -> bool + Send + Sync>;

/// What a member learns when it is added to a room.
pub(crate) struct JoinPoint {
    pub(crate) room: Arc<LocalRoom>,
    pub(crate) epoch: Epoch,
    pub(crate) seq: u64,
}

impl Rooms {
    pub(crate) fn new(repair_limit: usize, member_events: MemberEvents, max_rooms: usize) -> Self {
        Rooms {
            map: RwLock::new(HashMap::new()),
            broker: OnceLock::new(),
            repair_limit: repair_limit.max(1),
            member_events,
            max_rooms,
        }
    }

    pub(crate) fn set_broker(&self, broker: &Arc<dyn BrokerNode>) {
        let _ = self.broker.set(Arc::downgrade(broker));
    }

    fn get(&self, room: &RoomName) -> Option<Arc<LocalRoom>> {
        self.map.read().unwrap_or_else(PoisonError::into_inner).get(room).cloned()
    }

    /// Whether session `key` is a member of `room` here (joined, or joining).
    pub(crate) fn is_member(&self, room: &RoomName, key: u64) -> bool {
        self.get(room).is_some_and(|local| lock(&local.state).members.iter().any(|m| m.key == key))
    }

    /// Number of rooms with local members.
    pub(crate) fn len(&self) -> usize {
        self.map.read().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Adds a member that starts out buffering; subscribes the node to the room first when it
    /// is the room's first local member. The returned point is the last seq this node delivered:
    /// everything after it will reach the member, in order. A join that would add a room beyond
    /// `max_rooms` fails as `Unavailable` (the session answers `unavailable`).
    pub(crate) async fn join(
        self: &Arc<Self>,
        broker: &dyn BrokerNode,
        room: &RoomName,
        key: u64,
        outbox: &Arc<Outbox>,
    ) -> Result<JoinPoint, BrokerError> {
        loop {
            let local = {
                let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
                match map.get(room) {
                    Some(local) => local.clone(),
                    None if map.len() >= self.max_rooms => {
                        return Err(BrokerError::Unavailable(format!(
                            "this node holds its limit of {} rooms",
                            self.max_rooms
                        )));
                    }
                    None => map.entry(room.clone()).or_insert_with(|| Arc::new(LocalRoom::new(room.clone()))).clone(),
                }
            };
            let _guard = local.membership.lock().await;
            if lock(&local.state).removed {
                continue;
            }
            // A room this node already receives: where the node stands is the last seq it
            // delivered, which trails the broker while deliveries are on their way (a Redis
            // frozen between answering a publish and passing it on). The joined position is
            // the broker's latest, so that it is the room's latest as PROTOCOL.md says (a
            // client must not be told less than it was acknowledged); what is in flight reaches
            // the member by replay, and live only beyond it.
            let mut latest = None;
            if lock(&local.state).subscribed {
                let page = broker.history(room, HistoryQuery { before: None, after: None, limit: 0 }).await?;
                latest = Some((page.epoch, page.latest));
            }
            if !lock(&local.state).subscribed {
                lock(&local.state).subscribing = Some(Vec::new());
                let position = match broker.subscribe(room).await {
                    Ok(p) => p,
                    Err(e) => {
                        lock(&local.state).subscribing = None;
                        self.remove_if_empty(&local);
                        return Err(e);
                    }
                };
                let mut st = lock(&local.state);
                st.subscribed = true;
                st.epoch = position.epoch;
                st.last = position.seq;
                // What came meanwhile: the position's epoch only (a delivery of another epoch
                // came before the position was read, or its successor will say so again).
                for delivery in st.subscribing.take().unwrap_or_default() {
                    if matches!(&delivery, Delivery::Stored { epoch, .. } if *epoch == st.epoch) {
                        self.apply(&local, &mut st, delivery, false);
                    }
                }
            }
            let mut st = lock(&local.state);
            st.members.retain(|m| m.key != key);
            st.members.push(Member { key, outbox: outbox.clone(), pending: Some(Vec::new()), floor: 0 });
            let seq = match latest {
                Some((epoch, latest)) if epoch == st.epoch => st.last.max(latest),
                _ => st.last, // another epoch: its reset is on its way too
            };
            let point = JoinPoint { room: local.clone(), epoch: st.epoch.clone(), seq };
            return Ok(point);
        }
    }

    /// Ends a member's join: queues `first` (the `joined` reply and any replay), then what was
    /// buffered meanwhile, skipping stored messages up to `seen`; from then on the member is
    /// live.
    pub(crate) fn go_live(&self, local: &LocalRoom, key: u64, first: Vec<Bytes>, seen: u64) {
        let mut st = lock(&local.state);
        let Some(member) = st.members.iter_mut().find(|m| m.key == key) else { return };
        for frame in first {
            member.outbox.push(frame, Class::Reply);
        }
        let mut after_reset = false;
        for item in member.pending.take().unwrap_or_default() {
            match item {
                Pending::Stored(seq, frame) if after_reset || seq > seen => member.outbox.push(frame, Class::Must),
                Pending::Stored(..) => true,
                Pending::Transient(frame, class) => member.outbox.push(frame, class),
                Pending::Reset(frame) => {
                    after_reset = true;
                    member.outbox.push(frame, Class::Must)
                }
            };
        }
        member.floor = if after_reset { 0 } else { seen };
    }

    /// Removes a member from this node's view of the room at once (no broker call): nothing
    /// more is queued for it.
    pub(crate) fn remove_member(&self, local: &LocalRoom, key: u64) {
        lock(&local.state).members.retain(|m| m.key != key);
    }

    /// Removes a member; unsubscribes the node when it was the last one here.
    pub(crate) async fn leave(&self, broker: &dyn BrokerNode, local: &Arc<LocalRoom>, key: u64) {
        self.remove_member(local, key);
        let _guard = local.membership.lock().await;
        let now_empty = {
            let st = lock(&local.state);
            st.members.is_empty() && st.subscribed
        };
        if now_empty {
            if let Err(e) = broker.unsubscribe(&local.name).await {
                tracing::warn!(room = %local.name, error = %e, "unsubscribe failed");
            }
            self.remove_if_empty(local);
        }
    }

    fn remove_if_empty(&self, local: &Arc<LocalRoom>) {
        let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
        let mut st = lock(&local.state);
        if st.members.is_empty() {
            st.subscribed = false;
            st.removed = true;
            if map.get(&local.name).is_some_and(|r| Arc::ptr_eq(r, local)) {
                map.remove(&local.name);
            }
        }
    }

    /// Applies one stored delivery (or a reset) in order. With `accept_gap`, a gap that history
    /// could not fill is passed over instead of repaired again.
    fn apply(self: &Arc<Self>, local: &Arc<LocalRoom>, st: &mut RoomState, delivery: Delivery, accept_gap: bool) {
        match delivery {
            Delivery::Reset { epoch } => {
                if epoch != st.epoch {
                    let frame = encode_reset(&local.name, &epoch);
                    st.epoch = epoch;
                    st.last = 0;
                    push_to(&mut st.members, &Pending::Reset(frame));
                }
            }
            Delivery::Stored { epoch, message } => {
                if epoch != st.epoch {
                    // The history was lost under us and nobody told: reset, then go on.
                    self.apply(local, st, Delivery::Reset { epoch: epoch.clone() }, accept_gap);
                }
                if message.seq <= st.last {
                    return; // already delivered
                }
                if message.seq > st.last + 1 && !accept_gap {
                    st.repairing = Some(vec![Delivery::Stored { epoch: epoch.clone(), message: message.clone() }]);
                    self.start_repair(local.clone(), epoch, st.last, message.seq);
                    return;
                }
                if message.seq > st.last + 1 {
                    tracing::warn!(room = %local.name, from = st.last + 1, to = message.seq - 1, "seq gap that history could not fill");
                }
                st.last = message.seq;
                let frame = message_frame(&local.name, &message);
                push_to(&mut st.members, &Pending::Stored(message.seq, frame));
            }
            Delivery::Transient(t) => self.transient(local, st, t),
        }
    }

    fn transient(&self, local: &LocalRoom, st: &mut RoomState, t: Transient) {
        let item = match t {
            Transient::Message(p) => Pending::Transient(
                encode_message(&MessageParts {
                    room: &local.name,
                    seq: None,
                    from: &p.from,
                    ts: p.ts,
                    body: Some(&p.body),
                }),
                Class::Droppable,
            ),
            Transient::MemberJoined(_) | Transient::MemberLeft(_) if !(self.member_events)(&local.name) => return,
            Transient::MemberJoined(user) => Pending::Transient(encode_member_joined(&local.name, &user), Class::Must),
            Transient::MemberLeft(user) => Pending::Transient(encode_member_left(&local.name, &user), Class::Must),
        };
        push_to(&mut st.members, &item);
    }

    /// Fills the gap `(after, before)` from history, then releases what waited meanwhile.
    fn start_repair(self: &Arc<Self>, local: Arc<LocalRoom>, epoch: Epoch, after: u64, before: u64) {
        let Some(broker) = self.broker.get().and_then(Weak::upgrade) else {
            self.finish_repair(&local, Vec::new());
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.finish_repair(&local, Vec::new());
            return;
        };
        let rooms = self.clone();
        let limit = ((before - after - 1) as usize).min(self.repair_limit);
        runtime.spawn(async move {
            let query = HistoryQuery { before: Some(before), after: Some(after), limit };
            let mut delay = Duration::from_millis(50);
            let mut found = Vec::new();
            for attempt in 0..6 {
                match broker.history(&local.name, query).await {
                    Ok(page) => {
                        if page.epoch == epoch {
                            found = page.messages;
                        }
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(room = %local.name, attempt, error = %e, "gap repair: history failed");
                        tokio::time::sleep(delay).await;
                        delay *= 2;
                    }
                }
            }
            let fill =
                found.into_iter().map(|m| Delivery::Stored { epoch: epoch.clone(), message: Arc::new(m) }).collect();
            rooms.finish_repair(&local, fill);
        });
    }

    fn finish_repair(self: &Arc<Self>, local: &Arc<LocalRoom>, fill: Vec<Delivery>) {
        let mut st = lock(&local.state);
        let waiting = st.repairing.take().unwrap_or_default();
        for d in fill.into_iter().chain(waiting) {
            if st.repairing.is_some() {
                // Not reached with accept_gap, kept for safety: queue behind the new repair.
                if let Some(w) = st.repairing.as_mut() {
                    w.push(d);
                }
                continue;
            }
            self.apply(local, &mut st, d, true);
        }
    }
}

/// The node's rooms receive the broker's deliveries (the node's sink is `notices::NodeSink`,
/// which hands them here; the benches use this one alone).
pub(crate) struct RoomsSink(pub(crate) Arc<Rooms>);

impl DeliverySink for RoomsSink {
    fn deliver(&self, room: &RoomName, delivery: Delivery) {
        RoomsSink::deliver_to(&self.0, room, delivery);
    }
}

impl RoomsSink {
    /// One delivery for `room`, to `rooms` (see [`DeliverySink::deliver`]).
    pub(crate) fn deliver_to(rooms: &Arc<Rooms>, room: &RoomName, delivery: Delivery) {
        let Some(local) = rooms.get(room) else { return };
        let mut st = lock(&local.state);
        if !st.subscribed {
            let limit = rooms.repair_limit;
            if let Some(waiting) = st.subscribing.as_mut().filter(|w| w.len() < limit) {
                if matches!(delivery, Delivery::Stored { .. }) {
                    waiting.push(delivery);
                }
            }
            return;
        }
        if let Delivery::Transient(t) = delivery {
            rooms.transient(&local, &mut st, t);
            return;
        }
        if let Some(waiting) = st.repairing.as_mut() {
            waiting.push(delivery);
            return;
        }
        rooms.apply(&local, &mut st, delivery, false);
    }
}

// Also in unit tests (the metrics module's count fan-out through it), which use part of it.
#[cfg(any(test, feature = "bench"))]
#[cfg_attr(not(feature = "bench"), allow(dead_code))]
pub(crate) mod bench {
    //! Hooks for the criterion benches: fan-out through the real delivery path without a broker.
    use super::*;

    /// One subscribed room with `members` live local members, each with its own outbox.
    pub struct Fanout {
        sink: RoomsSink,
        outboxes: Vec<Arc<Outbox>>,
        room: RoomName,
        epoch: Epoch,
        seq: u64,
        body: Bytes,
    }

    impl Fanout {
        /// A room with `members` members; messages carry `body_len` bytes of body.
        pub fn new(members: usize, body_len: usize) -> Self {
            let rooms = Arc::new(Rooms::new(1000, Arc::new(|_| true), usize::MAX));
            let room = RoomName::new("bench").unwrap_or_else(|_| unreachable!());
            let local = Arc::new(LocalRoom::new(room.clone()));
            let epoch: Epoch = Arc::from("e");
            let mut outboxes = Vec::with_capacity(members);
            {
                let mut st = lock(&local.state);
                st.subscribed = true;
                st.epoch = epoch.clone();
                for key in 0..members {
                    let outbox = Arc::new(Outbox::new(1 << 20, 1 << 40));
                    st.members.push(Member { key: key as u64, outbox: outbox.clone(), pending: None, floor: 0 });
                    outboxes.push(outbox);
                }
            }
            rooms.map.write().unwrap_or_else(PoisonError::into_inner).insert(room.clone(), local);
            let body = Bytes::from(format!("\"{}\"", "x".repeat(body_len.saturating_sub(2))));
            Fanout { sink: RoomsSink(rooms), outboxes, room, epoch, seq: 0, body }
        }

        /// Delivers the next message to every member (one encode, one push per member).
        pub fn deliver(&mut self) {
            self.seq += 1;
            let message =
                Arc::new(Message { seq: self.seq, from: Arc::from("bench"), ts: 1, body: Some(self.body.clone()) });
            self.sink.deliver(&self.room, Delivery::Stored { epoch: self.epoch.clone(), message });
        }

        /// Empties every member's outbox (outside the measured part).
        pub fn drain(&self) {
            let mut scratch = std::collections::VecDeque::new();
            for o in &self.outboxes {
                o.drain_now(&mut scratch);
                scratch.clear();
            }
        }
    }
}
