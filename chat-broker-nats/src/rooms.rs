//! A node's live side: one core subscription and one task per room with local members, and
//! one subscription for the notices.
//!
//! The stream republishes each record it stored to the room's delivery subject, after storing
//! it (on a quorum), with its stream sequence in the `Nats-Sequence` header; transient
//! deliveries go to the same subject without one. Core NATS is at-most-once: a connection
//! that drops, or a subscriber that falls behind, loses messages. So the room's task delivers
//! a message only when it is the next seq; a later one means a gap, and the task first reads
//! the missed records from the stream (`catch_up`), in order. A record of another epoch means
//! the room's history was lost (the stream deleted or purged): `Delivery::Reset`, then the new
//! epoch's messages. When the connection comes back every room catches up, since a lost
//! message may have been the room's last. Only the room's task delivers, so deliveries keep
//! seq order.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::header::{NATS_LAST_SEQUENCE, NATS_SEQUENCE};
use chat_core::broker::{wire, Delivery, Epoch, Message, Position, Transient};
use chat_core::{BrokerError, RoomName};
use futures::StreamExt;
use tokio::time::timeout;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::names;
use crate::node::{lock, unavailable, Shared};
use crate::record::{Kind, Record};

/// Where this node stands in a room it subscribes to.
pub(crate) struct Track {
    pub(crate) room: RoomName,
    epoch: Epoch,
    /// The last seq delivered (or the position read at subscribe).
    last: u64,
    /// The stream sequence of the last record seen (valid or not): every record up to it has
    /// been judged.
    sseq: u64,
    /// The newest seq this node stored in `epoch` and has not delivered yet: NATS
    /// acknowledged it, so a head older than that means NATS lost it.
    stored: u64,
    /// The epoch this room moved on from here: a late record of it is not news.
    retired: Option<Epoch>,
    /// The room's members as this node last saw them (presence), for announcing those a
    /// dead node held once their entries expire; `None` until first read.
    pub(crate) members: Option<std::collections::BTreeSet<String>>,
    /// Wakes the room's task to read the stream past the last record seen: core NATS may have
    /// lost a record while no later one came to show the gap (see [`check_all`]).
    check: Arc<tokio::sync::Notify>,
    /// Which subscription this is: a room unsubscribed and subscribed again gets a new task,
    /// and the old one (still finishing a read, say) must not touch the new track.
    id: u64,
    /// Stops the room's task when the track is dropped (unsubscribed).
    _task: DropGuard,
}

/// How a record delivered live was judged.
enum Judged {
    /// By the stream's own header: the record stored before it, if it said.
    Told(Option<u64>),
    /// By asking the stream whether it won its race.
    Asked(bool),
    /// Not at all (the stream did not answer): read the stream.
    Unknown,
}

/// The track of `token` if it is still subscription `id`'s.
fn track_of<'a>(rooms: &'a mut HashMap<String, Track>, token: &str, id: u64) -> Option<&'a mut Track> {
    rooms.get_mut(token).filter(|t| t.id == id)
}

impl Track {
    /// The epoch and the newest seq this node delivered or stored there.
    pub(crate) fn known(&self) -> (Epoch, u64) {
        (self.epoch.clone(), self.last.max(self.stored))
    }

    /// This node stored `seq` in `epoch`.
    pub(crate) fn stored(&mut self, epoch: &Epoch, seq: u64) {
        if self.epoch == *epoch {
            self.stored = self.stored.max(seq);
        }
    }
}

/// Subscribes the node to `room`: the delivery subject first, then the position, so every
/// later record comes.
pub(crate) async fn subscribe(
    shared: &Arc<Shared>,
    room: &RoomName,
    stop: CancellationToken,
) -> Result<Position, BrokerError> {
    let token = names::token(room);
    if lock(&shared.rooms).contains_key(&token) {
        return Ok(shared.position(room, false).await?.0);
    }
    let op = shared.settings.op_timeout;
    let subscribe = shared.client.subscribe(shared.names.deliveries(&token));
    let subscriber = timeout(op, subscribe).await.map_err(|_| unavailable("subscribe", "timed out"))?;
    let subscriber = subscriber.map_err(|e| unavailable("subscribe", e))?;
    shared.sync("subscribe").await?;
    let (position, sseq) = shared.position(room, true).await?;
    let mut rooms = lock(&shared.rooms);
    if rooms.contains_key(&token) {
        return Ok(position); // subscribed meanwhile by a concurrent call
    }
    let task = stop.child_token();
    let id = chat_core::broker::random_u64();
    let check = Arc::new(tokio::sync::Notify::new());
    rooms.insert(
        token.clone(),
        Track {
            room: room.clone(),
            epoch: position.epoch.clone(),
            last: position.seq,
            sseq,
            stored: 0,
            retired: None,
            members: None,
            check: check.clone(),
            id,
            _task: task.clone().drop_guard(),
        },
    );
    tokio::spawn(run(shared.clone(), token, id, subscriber, check, task));
    Ok(position)
}

/// The room's task: delivers until unsubscribed or the node stops.
async fn run(
    shared: Arc<Shared>,
    token: String,
    id: u64,
    mut subscriber: async_nats::Subscriber,
    check: Arc<tokio::sync::Notify>,
    stop: CancellationToken,
) {
    let mut reconnected = shared.reconnected.subscribe();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = check.notified() => catch_up_until_done(&shared, &token, id, &stop).await,
            m = subscriber.next() => match m {
                Some(m) => on_message(&shared, &token, id, &m, &stop).await,
                None => return,
            },
            changed = reconnected.changed() => {
                if changed.is_err() {
                    return;
                }
                catch_up_until_done(&shared, &token, id, &stop).await;
            }
        }
    }
}

/// One message of the room's delivery subject.
async fn on_message(shared: &Shared, token: &str, id: u64, m: &async_nats::Message, stop: &CancellationToken) {
    let sseq = m.headers.as_ref().and_then(|h| h.get(NATS_SEQUENCE)).and_then(|v| v.as_str().parse::<u64>().ok());
    let Some(sseq) = sseq else {
        let Some(transient) = wire::decode_transient(&m.payload) else {
            tracing::warn!(token, "malformed delivery; dropped");
            return;
        };
        let room = {
            let mut rooms = lock(&shared.rooms);
            let Some(track) = track_of(&mut rooms, token, id) else { return };
            if let Some(members) = &mut track.members {
                match &transient {
                    Transient::MemberJoined(user) => members.insert(user.to_string()),
                    Transient::MemberLeft(user) => members.remove(&**user),
                    Transient::Message(_) => false,
                };
            }
            track.room.clone()
        };
        shared.sink.deliver(&room, Delivery::Transient(transient));
        return;
    };
    let Some(record) = Record::decode(&m.payload) else {
        tracing::warn!(token, sseq, "malformed record; dropped");
        return;
    };
    // Whether the record won its race (see the `record` module), and whether a record before
    // it may have been missed. A single server stores records in order and says exactly which
    // one it stored before each (`Nats-Last-Sequence`). A cluster fills that header in before
    // replicating, against what it has stored so far, so two racing records can both seem to
    // follow their `prev`: there the stream is asked (one message get per record).
    let judged = if shared.settings.replicas == 1 {
        let before = m.headers.as_ref().and_then(|h| h.get(NATS_LAST_SEQUENCE));
        Judged::Told(before.and_then(|v| v.as_str().parse::<u64>().ok()))
    } else {
        match shared.won(token, record.prev, sseq).await {
            Ok(won) => Judged::Asked(won),
            Err(_) => Judged::Unknown,
        }
    };
    let next = {
        let mut rooms = lock(&shared.rooms);
        let Some(track) = track_of(&mut rooms, token, id) else { return };
        let unknown_epoch = *track.epoch != *record.epoch && track.retired.as_deref() != Some(record.epoch.as_str());
        if sseq <= track.sseq && !unknown_epoch {
            return; // seen
        }
        // Whether every record up to this one has been judged; whether this one counts.
        let (contiguous, valid, told) = match judged {
            Judged::Told(before) => (before == Some(track.sseq), before == Some(record.prev), true),
            // A record that won follows whatever was missed before it; one that lost does not
            // count, and the track stays where it is (a later read of the stream judges what
            // came before it).
            Judged::Asked(won) => (true, won, false),
            Judged::Unknown => (false, false, false),
        };
        if sseq <= track.sseq || !contiguous {
            // A record in between was missed, or the stream was made again (its sequences
            // start over) under a new epoch.
            None
        } else if !valid {
            if told {
                track.sseq = sseq;
            }
            return; // lost its race: not a message of the room
        } else if *track.epoch == *record.epoch {
            match record.kind {
                _ if record.head <= track.last => {
                    if told {
                        track.sseq = sseq;
                    }
                    return; // a tombstone or a start record of what was delivered
                }
                Kind::Message { ts, from, body } if record.head == track.last + 1 => {
                    (track.sseq, track.last) = (sseq, record.head);
                    let message = Message { seq: record.head, from: from.into(), ts, body: Some(body) };
                    Some((track.room.clone(), track.epoch.clone(), message))
                }
                // A seq missed: read from the last record judged (this one included).
                _ => None,
            }
        } else if track.retired.as_deref() == Some(record.epoch.as_str()) {
            if told {
                track.sseq = sseq;
            }
            return; // sent before the room reset here
        } else {
            None // another epoch: read from the last record judged
        }
    };
    match next {
        Some((room, epoch, message)) => {
            shared.sink.deliver(&room, Delivery::Stored { epoch, message: Arc::new(message) })
        }
        None => catch_up_until_done(shared, token, id, stop).await,
    }
}

/// [`catch_up`], again until it succeeds (NATS may be coming back), or the room is dropped.
async fn catch_up_until_done(shared: &Shared, token: &str, id: u64, stop: &CancellationToken) {
    let mut delay = Duration::from_millis(20);
    loop {
        match catch_up(shared, token, id).await {
            Ok(()) => return,
            Err(e) => tracing::warn!(token, error = %e, "catching up the room failed; retrying"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}

/// Delivers what the stream holds of the room past the last seq delivered, in order; a room
/// whose epoch changed gets `Reset` first, then its new epoch's messages.
async fn catch_up(shared: &Shared, token: &str, id: u64) -> Result<(), BrokerError> {
    let known = track_of(&mut lock(&shared.rooms), token, id).map(|t| (t.epoch.clone(), t.last, t.sseq));
    let Some((epoch, last, sseq)) = known else {
        return Ok(());
    };
    let Some(head) = shared.head(token).await? else { return Ok(()) };
    if head.sseq == sseq {
        return Ok(()); // every record seen
    }
    // A stream that was made again numbers from 1: read it whole.
    let after = (head.sseq > sseq).then_some(sseq);
    let mut view = shared.view_after(token, after).await?;
    let read_to = view.read_to();
    let Some((current, _, _)) = view.last.take() else {
        // Only records that lost their races.
        if let Some(track) = track_of(&mut lock(&shared.rooms), token, id) {
            track.sseq = track.sseq.max(read_to);
        }
        return Ok(());
    };
    let renewed = *current != *epoch;
    let mut news = view.epochs.remove(&current).unwrap_or_default();
    let (room, epoch, from) = {
        let mut rooms = lock(&shared.rooms);
        let Some(track) = track_of(&mut rooms, token, id) else { return Ok(()) };
        if *track.epoch != *epoch || track.last != last {
            return Ok(()); // moved on meanwhile (cannot happen: only this task delivers)
        }
        if renewed && track.retired.as_deref() == Some(current.as_str()) {
            return Ok(()); // an epoch this room moved on from
        }
        let from = if renewed {
            tracing::warn!(token, old = %epoch, new = %current, "room history lost; resetting");
            track.retired = Some(track.epoch.clone());
            track.epoch = Epoch::from(current.as_str());
            track.stored = 0;
            news.base.unwrap_or(0)
        } else {
            last
        };
        track.last = news.messages.keys().next_back().copied().filter(|&s| s > from).unwrap_or(from);
        track.sseq = read_to;
        (track.room.clone(), track.epoch.clone(), from)
    };
    if renewed {
        shared.sink.deliver(&room, Delivery::Reset { epoch: epoch.clone() });
    }
    for (seq, (_, message)) in std::mem::take(&mut news.messages) {
        if seq > from {
            shared.sink.deliver(&room, Delivery::Stored { epoch: epoch.clone(), message: Arc::new(message) });
        }
    }
    Ok(())
}

/// Wakes every room's task to check the stream for records past the last one it saw (one
/// message get per room; see [`Track::check`]). The presence task calls this every quarter
/// of the presence expiry, so a live delivery lost with nothing after it is delivered within
/// that.
pub(crate) fn check_all(shared: &Shared) {
    for track in lock(&shared.rooms).values() {
        track.check.notify_one();
    }
}

/// Subscribes the node to the notices and starts the task that hands them to the sink.
pub(crate) async fn listen_for_notices(shared: &Arc<Shared>, stop: CancellationToken) -> Result<(), BrokerError> {
    let op = shared.settings.op_timeout;
    let subscribe = shared.client.subscribe(shared.names.notices());
    let mut subscriber = timeout(op, subscribe)
        .await
        .map_err(|_| unavailable("subscribe", "timed out"))?
        .map_err(|e| unavailable("subscribe", e))?;
    shared.sync("subscribe").await?;
    let sink = shared.sink.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                m = subscriber.next() => match m {
                    Some(m) => match wire::decode_notice(&m.payload) {
                        Some((users, notice)) => sink.notify(&users, &notice),
                        None => tracing::warn!("malformed notice; dropped"),
                    },
                    None => return,
                },
            }
        }
    });
    Ok(())
}
