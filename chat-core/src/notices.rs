//! Where the broker's [`Notice`]s land on a node: the sessions of the users they name. An
//! `invite` goes to each of those sessions that is not a member of the room, a kick from a
//! room to each that is (the session leaves the room itself, woken by `Outbox::mark_kicked`),
//! a kick from the node closes them all.
//!
//! The node keeps an index of its sessions by user for this (set at `hello`, cleared when the
//! session ends), so a notice costs a lookup, not a walk over every connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::broker::{Delivery, DeliverySink, Notice};
use crate::frames::encode_invite;
use crate::outbox::{Class, Outbox};
use crate::protocol::{ByeReason, RoomName};
use crate::rooms::{Rooms, RoomsSink};

/// Each user's sessions (key and outbox): a few per user, so a list.
type ByUser = HashMap<Arc<str>, Vec<(u64, Arc<Outbox>)>>;

/// The sessions of each user on this node, and the rooms the host kicked sessions from that
/// they have not left yet.
#[derive(Default)]
pub(crate) struct Users {
    map: Mutex<ByUser>,
    /// By session key: only sessions that are members of those rooms, each room once, so
    /// within `Config::max_rooms_per_session` per session.
    kicked: Mutex<HashMap<u64, Vec<RoomName>>>,
}

impl Users {
    fn lock(&self) -> MutexGuard<'_, ByUser> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Session `key` of `user` started (its `hello` succeeded).
    pub(crate) fn add(&self, user: &Arc<str>, key: u64, outbox: &Arc<Outbox>) {
        self.lock().entry(user.clone()).or_default().push((key, outbox.clone()));
    }

    /// Session `key` of `user` ended.
    pub(crate) fn remove(&self, user: &str, key: u64) {
        let mut map = self.lock();
        if let Some(sessions) = map.get_mut(user) {
            sessions.retain(|(k, _)| *k != key);
            if sessions.is_empty() {
                map.remove(user);
            }
        }
        // Under the map's lock (and `kick_from` lists a kick under it too, for a session it
        // finds there): nothing is left behind for a session that ended.
        self.kicked.lock().unwrap_or_else(PoisonError::into_inner).remove(&key);
    }

    /// The host kicks session `key` (a member of `room`) from `room`: listed here, and the
    /// session is woken to leave it (`Session::kicked`).
    fn kick_from(&self, user: &str, key: u64, outbox: &Outbox, room: &RoomName) {
        let map = self.lock();
        if !map.get(user).is_some_and(|sessions| sessions.iter().any(|(k, _)| *k == key)) {
            return; // ended meanwhile
        }
        let mut kicked = self.kicked.lock().unwrap_or_else(PoisonError::into_inner);
        let rooms = kicked.entry(key).or_default();
        if !rooms.contains(room) {
            rooms.push(room.clone());
        }
        drop((kicked, map));
        outbox.mark_kicked();
    }

    /// The rooms session `key` was kicked from and has not left yet.
    pub(crate) fn take_kicks(&self, key: u64) -> Vec<RoomName> {
        self.kicked.lock().unwrap_or_else(PoisonError::into_inner).remove(&key).unwrap_or_default()
    }

    /// `user`'s sessions on this node, taken out of the lock (outboxes are pushed to without it).
    pub(crate) fn sessions(&self, user: &str) -> Vec<(u64, Arc<Outbox>)> {
        self.lock().get(user).cloned().unwrap_or_default()
    }
}

/// The sink a node hands its broker: room deliveries go to the rooms' members, notices to the
/// users' sessions.
pub(crate) struct NodeSink {
    pub(crate) rooms: Arc<Rooms>,
    pub(crate) users: Arc<Users>,
}

impl DeliverySink for NodeSink {
    fn deliver(&self, room: &RoomName, delivery: Delivery) {
        RoomsSink::deliver_to(&self.rooms, room, delivery);
    }

    fn notify(&self, users: &[Arc<str>], notice: &Notice) {
        // An invite is encoded once, for every session it reaches.
        let invite = match notice {
            Notice::Invite { room, from, seq } => Some((room, encode_invite(room, from, *seq))),
            _ => None,
        };
        for user in users {
            for (key, outbox) in self.users.sessions(user) {
                match notice {
                    // Droppable, as an ephemeral message: a flood of direct messages cannot
                    // close a recipient that reads slowly (the messages are in the room).
                    Notice::Invite { .. } => {
                        if let Some((room, frame)) = &invite {
                            if !self.rooms.is_member(room, key) {
                                outbox.push(frame.clone(), Class::Droppable);
                            }
                        }
                    }
                    Notice::KickFromRoom { room } => {
                        if self.rooms.is_member(room, key) {
                            self.users.kick_from(user, key, &outbox, room);
                        }
                    }
                    Notice::Kick => {
                        outbox.close(ByeReason::Kicked, []);
                    }
                }
            }
        }
    }
}
