//! Presence in a JetStream key-value bucket (`<prefix>-presence`): one entry per room, user and
//! node, `<room token>.<user token>.<node instance>`, holding that node's session count for the
//! user in the room and the user's name (`<count> <user>`). A join or a leave writes one small
//! entry, whatever the size of the room. The bucket's entries expire after the presence
//! expiry; each node writes its live entries again every quarter of it, so a dead node's
//! sessions leave presence within the expiry, and each node that has members in the room
//! announces, to its own sessions, `member_left` for the users who are gone with them.
//!
//! A room's members are the sum of its entries. Whether a session is its user's first (or
//! last) in the room is decided from the other nodes' entries for that user, read before
//! (after) this node writes its own: two nodes adding the same user at the same moment may both
//! say first, so a `member_joined` can come twice; a `member_left` is never missed.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use async_nats::jetstream::{consumer, stream, Context};
use bytes::Bytes;
use chat_core::broker::{Delivery, PresenceEntry, Transient};
use chat_core::{BrokerError, RoomName};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use crate::broker::Settings;
use crate::names::{self, Names};
use crate::node::{lock, unavailable, Shared};

/// This node's share of presence, and the bucket.
pub(crate) struct Presence {
    js: Context,
    /// Where entries are written: `$KV.<bucket>.` and the key.
    subject: String,
    /// The bucket's stream (`KV_<bucket>`).
    stream: String,
    instance: String,
    /// This node's sessions by room token: the room, and each user's sessions.
    local: Mutex<HashMap<String, Local>>,
}

struct Local {
    users: HashMap<String, HashSet<String>>,
}

/// An entry's value: the session count and the user.
fn value(count: usize, user: &str) -> Bytes {
    Bytes::from(format!("{count} {user}"))
}

/// Parses an entry's value; `None` for anything else (a deleted entry is empty).
fn parse(value: &[u8]) -> Option<(&str, u64)> {
    let (count, user) = std::str::from_utf8(value).ok()?.split_once(' ')?;
    Some((user, count.parse().ok()?))
}

impl Presence {
    /// Opens the bucket, creating it when missing.
    pub(crate) async fn open(
        js: &Context,
        names: &Names,
        settings: &Settings,
        instance: &str,
    ) -> Result<Presence, BrokerError> {
        let op = settings.op_timeout;
        let bucket = names.bucket();
        // A key-value bucket as JetStream lays it out (`KV_<bucket>`, keys under
        // `$KV.<bucket>.`), made with the stream API: async-nats's own bucket creation asks
        // for account details that NATS 2.9 answers in a shape it does not parse.
        let config = stream::Config {
            name: format!("KV_{bucket}"),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            max_age: settings.presence_ttl,
            storage: stream::StorageType::File,
            num_replicas: settings.replicas,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        };
        let made =
            timeout(op, js.get_or_create_stream(config)).await.map_err(|_| unavailable("bucket", "timed out"))?;
        made.map_err(|e| unavailable("bucket", e))?;
        Ok(Presence {
            js: js.clone(),
            subject: format!("$KV.{bucket}."),
            stream: format!("KV_{bucket}"),
            instance: instance.to_owned(),
            local: Mutex::new(HashMap::new()),
        })
    }

    /// How many sessions `user` has in the room on other nodes.
    async fn others(&self, shared: &Shared, token: &str, user: &str) -> Result<u64, BrokerError> {
        let user_token = names::token(user);
        let mine = format!("{}{}", self.subject, shared.names.entry(token, &user_token, &self.instance));
        let mut sessions = 0;
        let subject = format!("{}{}", self.subject, shared.names.user_entries(token, &user_token));
        shared
            .scan(self.stream.clone(), subject, consumer::DeliverPolicy::LastPerSubject, |_, m| {
                if m.subject.as_str() != mine {
                    sessions += parse(&m.payload).map_or(0, |(_, n)| n);
                }
                true
            })
            .await?;
        Ok(sessions)
    }

    /// The room's members: every node's entries summed per user.
    async fn read(&self, shared: &Shared, token: &str) -> Result<BTreeMap<String, u64>, BrokerError> {
        let mut users = BTreeMap::new();
        let subject = format!("{}{}", self.subject, shared.names.entries(token));
        shared
            .scan(self.stream.clone(), subject, consumer::DeliverPolicy::LastPerSubject, |_, m| {
                if let Some((user, count)) = parse(&m.payload) {
                    *users.entry(user.to_owned()).or_insert(0) += count;
                }
                true
            })
            .await?;
        Ok(users)
    }

    /// Writes this node's entry for `user` in the room as it now stands.
    async fn write(&self, shared: &Shared, token: &str, user: &str) -> Result<(), BrokerError> {
        let count = lock(&self.local).get(token).and_then(|l| l.users.get(user)).map_or(0, HashSet::len);
        let key = shared.names.entry(token, &names::token(user), &self.instance);
        self.put(shared, &key, value(count, user)).await
    }

    /// Writes an entry and waits for JetStream's acknowledgement.
    async fn put(&self, shared: &Shared, key: &str, value: Bytes) -> Result<(), BrokerError> {
        let subject = format!("{}{key}", self.subject);
        let put = timeout(shared.settings.op_timeout, async { self.js.publish(subject, value).await?.await }).await;
        put.map_err(|_| unavailable("presence", "timed out"))?.map_err(|e| unavailable("presence", e))?;
        Ok(())
    }

    /// Adds a session; true when it is the user's first in the room across the cluster.
    pub(crate) async fn add(
        &self,
        shared: &Shared,
        room: &RoomName,
        session: &str,
        user: &str,
    ) -> Result<bool, BrokerError> {
        let token = names::token(room);
        let others = self.others(shared, &token, user).await?;
        let was_here = {
            let mut local = lock(&self.local);
            let entry = local.entry(token.clone()).or_insert_with(|| Local { users: HashMap::new() });
            let sessions = entry.users.entry(user.to_owned()).or_default();
            let was_here = !sessions.is_empty();
            sessions.insert(session.to_owned());
            was_here
        };
        if let Err(e) = self.write(shared, &token, user).await {
            // Not joined: forget the session (a leave or the next refresh writes the entry).
            if let Some(entry) = lock(&self.local).get_mut(&token) {
                if let Some(sessions) = entry.users.get_mut(user) {
                    sessions.remove(session);
                }
            }
            return Err(e);
        }
        Ok(!was_here && others == 0)
    }

    /// Removes a session; true when it was the user's last in the room across the cluster.
    pub(crate) async fn remove(
        &self,
        shared: &Shared,
        room: &RoomName,
        session: &str,
        user: &str,
    ) -> Result<bool, BrokerError> {
        let token = names::token(room);
        let gone = {
            let mut local = lock(&self.local);
            let Some(entry) = local.get_mut(&token) else { return Ok(false) };
            let Some(sessions) = entry.users.get_mut(user) else { return Ok(false) };
            if !sessions.remove(session) {
                return Ok(false);
            }
            sessions.is_empty()
        };
        // If this fails the refresh writes the entry again within a quarter of the expiry.
        self.write(shared, &token, user).await?;
        if !gone {
            return Ok(false);
        }
        Ok(self.others(shared, &token, user).await? == 0)
    }

    /// The room's members across the cluster.
    pub(crate) async fn members(&self, shared: &Shared, room: &RoomName) -> Result<Vec<PresenceEntry>, BrokerError> {
        let users = self.read(shared, &names::token(room)).await?;
        Ok(users.into_iter().filter(|(_, n)| *n > 0).map(|(user, sessions)| PresenceEntry { user, sessions }).collect())
    }

    /// Removes this node's entries (the node detaches).
    pub(crate) async fn clear(&self, shared: &Shared) {
        let local: Vec<(String, Vec<String>)> =
            lock(&self.local).drain().map(|(token, l)| (token, l.users.into_keys().collect())).collect();
        let entries =
            local.into_iter().flat_map(|(token, users)| users.into_iter().map(move |u| (token.clone(), u, 0)));
        if self.put_all(shared, entries.collect()).await.is_err() {
            tracing::warn!(node = %self.instance, "detach: could not clear presence; it will expire");
        }
    }

    /// Writes every entry of this node again (so they do not expire), pipelined; entries of
    /// users with no session left are written once more as 0 and then forgotten.
    async fn refresh(&self, shared: &Shared) {
        let entries: Vec<(String, String, usize)> = lock(&self.local)
            .iter()
            .flat_map(|(token, l)| l.users.iter().map(move |(u, s)| (token.clone(), u.clone(), s.len())))
            .collect();
        match self.put_all(shared, entries).await {
            Ok(()) => lock(&self.local).retain(|_, l| {
                l.users.retain(|_, sessions| !sessions.is_empty());
                !l.users.is_empty()
            }),
            Err(e) => tracing::debug!(node = %self.instance, error = %e, "presence refresh failed"),
        }
    }

    /// Writes `(room token, user, count)` entries without waiting for each acknowledgement
    /// before the next (each is still awaited, within the op timeout).
    async fn put_all(&self, shared: &Shared, entries: Vec<(String, String, usize)>) -> Result<(), BrokerError> {
        let op = shared.settings.op_timeout;
        for chunk in entries.chunks(256) {
            let mut acks = Vec::with_capacity(chunk.len());
            for (token, user, count) in chunk {
                let key = shared.names.entry(token, &names::token(user), &self.instance);
                let sent = timeout(op, self.js.publish(format!("{}{key}", self.subject), value(*count, user))).await;
                acks.push(
                    sent.map_err(|_| unavailable("presence", "timed out"))?.map_err(|e| unavailable("presence", e))?,
                );
            }
            for ack in acks {
                let acked = timeout(op, ack).await.map_err(|_| unavailable("presence", "timed out"))?;
                acked.map_err(|e| unavailable("presence", e))?;
            }
        }
        Ok(())
    }
}

/// Announces, to this node's sessions, the members of each subscribed room who left without
/// a `member_left`: their node died and its entries expired.
async fn sweep(shared: &Shared) {
    let tokens: Vec<String> = lock(&shared.rooms).keys().cloned().collect();
    for token in tokens {
        let Ok(now) = shared.presence.read(shared, &token).await else { continue };
        let now: BTreeSet<String> = now.into_iter().filter(|(_, n)| *n > 0).map(|(u, _)| u).collect();
        let (room, gone) = {
            let mut rooms = lock(&shared.rooms);
            let Some(track) = rooms.get_mut(&token) else { continue };
            let gone: Vec<String> = match &track.members {
                Some(before) => before.difference(&now).cloned().collect(),
                None => Vec::new(),
            };
            track.members = Some(now);
            (track.room.clone(), gone)
        };
        for user in gone {
            shared.sink.deliver(&room, Delivery::Transient(Transient::MemberLeft(Arc::from(user))));
        }
    }
}

/// The presence task, every quarter of the expiry: has the rooms check for lost deliveries,
/// refreshes this node's entries, and sweeps.
pub(crate) async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(shared.settings.heartbeat_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                crate::rooms::check_all(&shared);
                shared.presence.refresh(&shared).await;
                sweep(&shared).await;
            }
        }
    }
}
