//! The node's pub/sub side: one task owns the subscription connection, turns channel messages
//! into deliveries, and, when the connection drops, reconnects with backoff, subscribes again
//! to every room the node is in, and catches up.
//!
//! Redis pub/sub is at-most-once: whatever was published while the node was away is gone from
//! the channel. So after resubscribing, each room's stream is read from the last seq delivered:
//! the missed messages are delivered in order before the buffered live ones (which are then
//! dropped as duplicates up to that seq). A room whose epoch changed meanwhile (Redis lost its
//! data) gets `Delivery::Reset` first. Only this task delivers, so deliveries keep seq order.
//!
//! On a Redis Cluster the connection is a cluster connection in RESP3 ([`Feed::Cluster`]): each
//! room's channel is `SSUBSCRIBE`d on the primary of its slot, and messages arrive as pushes.
//! redis-rs subscribes again by itself after a shard's connection drops or a slot moves, but
//! that hides the moment a room may have missed messages; so this task treats every sign of
//! one as the connection dropping: a shard's connection lost (a `Disconnection` push), a room's
//! channel unsubscribed by the server (its slot moved to another shard: `SUNSUBSCRIBE` push),
//! or a primary not answering the periodic `PING`. It then connects anew, subscribes every
//! room where its slot now lives, and catches up, as above.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chat_core::broker::{Delivery, Epoch, HistoryQuery, Message};
use chat_core::BrokerError;
use futures::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind, RedisResult, Value};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use crate::broker::Settings;
use crate::error::{from_redis, timed_out};
use crate::keys::Keys;
use crate::node::{lock, Shared, Track};
use crate::primary::Source;
use crate::wire::{self, Wire};

/// How many messages one catch-up read asks for.
const CATCH_UP_PAGE: usize = 500;
/// How many rooms are caught up at once after a reconnect.
const CATCH_UP_ROOMS: usize = 32;

/// The command half of the pub/sub connection: (un)subscribes rooms' channels, and pings.
#[derive(Clone)]
pub(crate) enum Feed {
    /// To one server.
    Single(PubSubSink),
    /// To a cluster, in RESP3 (messages come as pushes, see [`Incoming::Cluster`]).
    Cluster(ClusterConnection),
}

impl Feed {
    /// Subscribes to the channels; returns once Redis confirmed every one (on a cluster, the
    /// primary of each channel's slot).
    pub(crate) async fn subscribe(&mut self, channels: &[String]) -> RedisResult<()> {
        match self {
            Feed::Single(sink) => sink.subscribe(channels).await,
            Feed::Cluster(conn) => {
                // One command per channel: the channels are in different slots.
                let each = channels.iter().map(|channel| {
                    let mut conn = conn.clone();
                    async move { conn.ssubscribe(channel).await }
                });
                futures::future::try_join_all(each).await.map(drop)
            }
        }
    }

    /// Unsubscribes from a channel.
    pub(crate) async fn unsubscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            Feed::Single(sink) => sink.unsubscribe(channel).await,
            Feed::Cluster(conn) => conn.sunsubscribe(channel).await,
        }
    }

    /// Pings the server (every primary of a cluster).
    async fn ping(&mut self) -> RedisResult<()> {
        match self {
            Feed::Single(sink) => sink.ping::<Value>().await.map(drop),
            Feed::Cluster(conn) => redis::cmd("PING").query_async::<Value>(conn).await.map(drop),
        }
    }
}

/// The message half of the pub/sub connection.
pub(crate) enum Incoming {
    /// From one server.
    Single(PubSubStream),
    /// From a cluster: every push of its connections (messages, subscription changes, lost
    /// connections).
    Cluster(UnboundedReceiver<PushInfo>),
}

impl Incoming {
    /// Waits for the next message and delivers it. False when the connection dropped, or may
    /// have missed messages of a room (see the module's comment). Cancel-safe.
    async fn next(&mut self, shared: &Shared) -> bool {
        match self {
            Incoming::Single(stream) => match stream.next().await {
                Some(msg) => {
                    on_message(shared, msg.get_channel_name(), msg.get_payload_bytes());
                    true
                }
                None => false,
            },
            Incoming::Cluster(pushes) => match pushes.recv().await {
                Some(push) => on_push(shared, push),
                None => false,
            },
        }
    }
}

/// One push of a cluster connection; false when a room may have missed messages.
fn on_push(shared: &Shared, push: PushInfo) -> bool {
    let bytes = |v: Value| match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        _ => None,
    };
    match push.kind {
        PushKind::SMessage | PushKind::Message => {
            let mut data = push.data.into_iter();
            match (data.next().and_then(bytes), data.next().and_then(bytes)) {
                (Some(channel), Some(payload)) => match std::str::from_utf8(&channel) {
                    Ok(channel) => on_message(shared, channel, &payload),
                    Err(_) => tracing::warn!("a channel name that is not UTF-8; dropped"),
                },
                _ => tracing::warn!(kind = ?push.kind, "malformed push; dropped"),
            }
            true
        }
        PushKind::SUnsubscribe => {
            // Ours (a room left) or the server's (the slot moved): a room still tracked, or the
            // notices, were moved away.
            let Some(channel) = push.data.into_iter().next().and_then(bytes) else { return false };
            let channel = String::from_utf8_lossy(&channel);
            if channel == shared.keys.notices() {
                return false;
            }
            match shared.keys.room_of_channel(&channel) {
                Some(room) => !lock(&shared.subs).contains_key(room),
                None => true,
            }
        }
        PushKind::Disconnection => false,
        _ => true,
    }
}

/// Opens a pub/sub connection within the op timeout, subscribed to the notices channel (rooms
/// are the caller's).
pub(crate) async fn connect(
    source: &Source,
    settings: &Settings,
    keys: &Keys,
) -> Result<(Feed, Incoming), BrokerError> {
    let connected = timeout(settings.op_timeout, async {
        match source {
            Source::Single(client) => {
                let (mut sink, stream) = client.get_async_pubsub().await?.split();
                sink.subscribe(keys.notices()).await?;
                Ok::<_, redis::RedisError>((Feed::Single(sink), Incoming::Single(stream)))
            }
            Source::Cluster(seeds) => {
                let (pushes, incoming) = tokio::sync::mpsc::unbounded_channel();
                let client =
                    seeds.builder(settings).use_protocol(redis::ProtocolVersion::RESP3).push_sender(pushes).build()?;
                let mut conn = client.get_async_connection().await?;
                conn.ssubscribe(keys.notices()).await?;
                Ok((Feed::Cluster(conn), Incoming::Cluster(incoming)))
            }
        }
    });
    match connected.await {
        Ok(done) => done.map_err(from_redis),
        Err(_) => Err(timed_out("pub/sub connect")),
    }
}

/// The task: pumps deliveries until the connection drops, then reconnects; ends on `stop`.
pub(crate) async fn run(shared: Arc<Shared>, mut stream: Incoming, stop: CancellationToken) {
    loop {
        if pump(&shared, &mut stream, &stop).await {
            return;
        }
        lock(&shared.pubsub).take();
        tracing::warn!(node = %shared.instance, "redis pub/sub connection lost; reconnecting");
        let mut delay = Duration::from_millis(25);
        stream = loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            match reconnect(&shared).await {
                Ok(stream) => break stream,
                Err(e) => {
                    lock(&shared.pubsub).take();
                    tracing::warn!(node = %shared.instance, error = %e, "redis pub/sub reconnect failed");
                    delay = (delay * 2).min(shared.settings.reconnect_max_delay);
                }
            }
        };
        tracing::info!(node = %shared.instance, "redis pub/sub reconnected");
    }
}

/// Delivers channel messages until the connection drops (false) or the node stops (true).
/// A ping every heartbeat interval finds a connection that died without closing.
async fn pump(shared: &Shared, stream: &mut Incoming, stop: &CancellationToken) -> bool {
    let mut ping = tokio::time::interval(shared.settings.heartbeat_interval());
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return true,
            live = stream.next(shared) => if !live {
                return false;
            },
            _ = shared.relocate.notified() => {
                tracing::warn!(node = %shared.instance, "a command met a replica, or timed out on a cluster: locating the primaries again");
                return false;
            }
            _ = ping.tick() => {
                let Some(mut feed) = lock(&shared.pubsub).clone() else { return false };
                if !matches!(timeout(shared.settings.op_timeout, feed.ping()).await, Ok(Ok(_))) {
                    return false;
                }
            }
        }
    }
}

/// A new connection to the primary (located again: it may have moved), subscribed to every
/// tracked room, with every room caught up.
async fn reconnect(shared: &Shared) -> Result<Incoming, BrokerError> {
    let source = shared.follow_primary().await?;
    let (mut feed, stream) = connect(&source, &shared.settings, &shared.keys).await?;
    let channels: Vec<String> = lock(&shared.subs).keys().map(|room| shared.keys.channel(room)).collect();
    if !channels.is_empty() {
        match timeout(shared.settings.op_timeout, feed.subscribe(&channels)).await {
            Ok(result) => result.map_err(from_redis)?,
            Err(_) => return Err(timed_out("resubscribe")),
        }
    }
    *lock(&shared.pubsub) = Some(feed);
    // The command connections may not have noticed the outage yet (an idle one finds out on
    // its next request, which fails): have them reconnect now, before a publish needs one.
    shared.refresh_lanes().await;
    // Rooms are independent: read them concurrently (pipelined on the command connection);
    // each room's own messages still go out in order.
    let rooms: Vec<String> = lock(&shared.subs).keys().cloned().collect();
    for batch in rooms.chunks(CATCH_UP_ROOMS) {
        futures::future::try_join_all(batch.iter().map(|room| catch_up(shared, room))).await?;
    }
    Ok(stream)
}

/// Delivers what the room's stream holds past the last seq delivered; a new epoch first resets.
async fn catch_up(shared: &Shared, room: &str) -> Result<(), BrokerError> {
    let Some((mut epoch, mut after)) = lock(&shared.subs).get(room).and_then(|t| Some((t.epoch.clone()?, t.last)))
    else {
        return Ok(()); // unsubscribed meanwhile, or its subscribe has not read the position yet
    };
    loop {
        let query = HistoryQuery { before: None, after: Some(after), limit: CATCH_UP_PAGE };
        let (page, ids) = shared.history_with_ids(room, query).await?;
        if page.epoch != epoch {
            tracing::warn!(room, old = %epoch, new = %page.epoch, "room history lost; resetting");
            if !reset(shared, room, page.epoch.clone()) {
                return Ok(());
            }
            (epoch, after) = (page.epoch, 0);
            continue;
        }
        let Some(last) = page.messages.last().map(|m| m.seq) else { return Ok(()) };
        for (message, id) in page.messages.into_iter().zip(ids) {
            deliver_stored(shared, room, &epoch, message, id);
        }
        if last >= page.latest {
            return Ok(());
        }
        after = last;
    }
}

/// One channel message.
fn on_message(shared: &Shared, channel: &str, payload: &[u8]) {
    let Some(room) = shared.keys.room_of_channel(channel) else {
        match chat_core::broker::wire::decode_notice(payload) {
            Some((users, notice)) => shared.sink.notify(&users, &notice),
            None => tracing::warn!(channel, "malformed notice; dropped"),
        }
        return;
    };
    let Some(wire) = wire::decode(payload) else {
        tracing::warn!(room, "malformed message on the room's channel; dropped");
        return;
    };
    let transient = match wire {
        Wire::Transient(transient) => transient,
        Wire::Stored(records) => {
            for wire::Stored { seq, ts, epoch, from, body, id } in records {
                let Some((room_name, epoch)) = accept(shared, room, epoch, seq, Some(id)) else { continue };
                let message = Message { seq, from: from.into(), ts, body: Some(bytes::Bytes::copy_from_slice(body)) };
                shared.sink.deliver(&room_name, Delivery::Stored { epoch, message: Arc::new(message) });
            }
            return;
        }
    };
    let Some(room_name) = lock(&shared.subs).get(room).map(|t| t.room.clone()) else { return };
    shared.sink.deliver(&room_name, Delivery::Transient(transient));
}

/// Delivers a stored message read from the stream.
fn deliver_stored(shared: &Shared, room: &str, epoch: &Epoch, message: Message, id: Option<u64>) {
    if let Some((room_name, epoch)) = accept(shared, room, epoch, message.seq, id) {
        shared.sink.deliver(&room_name, Delivery::Stored { epoch, message: Arc::new(message) });
    }
}

/// Whether a stored message is news for this node (tracked room, not yet delivered); if so,
/// records it (and its id) as the last delivered and returns the room and the (shared) epoch.
fn accept(shared: &Shared, room: &str, epoch: &str, seq: u64, id: Option<u64>) -> Option<(chat_core::RoomName, Epoch)> {
    accept_in(&mut lock(&shared.subs), room, epoch, seq, id)
}

/// [`accept`] on the tracked rooms themselves.
fn accept_in(
    subs: &mut HashMap<String, Track>,
    room: &str,
    epoch: &str,
    seq: u64,
    id: Option<u64>,
) -> Option<(chat_core::RoomName, Epoch)> {
    let track = subs.get_mut(room)?;
    let epoch = match &track.epoch {
        Some(current) if **current == *epoch => {
            if seq <= track.last {
                return None;
            }
            current.clone()
        }
        // Queued before the room reset here: late, not news.
        _ if track.retired.as_deref() == Some(epoch) => return None,
        _ => {
            track.retired = track.epoch.take();
            Epoch::from(epoch)
        }
    };
    if track.epoch.as_ref() == Some(&epoch) {
        (track.last, track.last_id) = (seq, id);
    } else {
        track.start(epoch.clone(), seq, id);
    }
    Some((track.room.clone(), epoch))
}

/// Tells the engine the room starts over in `epoch`. False when the room is no longer tracked.
fn reset(shared: &Shared, room: &str, epoch: Epoch) -> bool {
    let room_name = {
        let mut subs = lock(&shared.subs);
        let Some(track) = subs.get_mut(room) else { return false };
        track.retired = track.epoch.take();
        track.start(epoch.clone(), 0, None);
        track.room.clone()
    };
    shared.sink.deliver(&room_name, Delivery::Reset { epoch });
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_and_late_deliveries_of_a_retired_epoch_are_not_news() {
        let room = chat_core::RoomName::new("r").unwrap();
        let mut track = Track::new(room);
        track.start(Epoch::from("e1"), 5, None);
        let mut subs = HashMap::from([("r".to_owned(), track)]);
        let news = |subs: &mut HashMap<String, Track>, epoch, seq| accept_in(subs, "r", epoch, seq, None).is_some();
        assert!(!news(&mut subs, "e1", 5), "already delivered");
        assert!(news(&mut subs, "e1", 6));
        assert!(news(&mut subs, "e2", 1), "a new epoch");
        assert!(!news(&mut subs, "e1", 7), "queued before the new epoch: late");
        assert!(news(&mut subs, "e2", 2));
        assert!(news(&mut subs, "e3", 1));
        assert_eq!(subs["r"].retired.as_deref(), Some("e2"), "another new epoch retires e2");
        assert!(accept_in(&mut subs, "elsewhere", "e1", 1, None).is_none(), "an untracked room");
    }
}
