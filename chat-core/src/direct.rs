//! Direct conversations (PROTOCOL.md §4): rooms named `dm:` and their users, which only those
//! users may use, whatever the host's authorizer says.
//!
//! A room whose name starts with `dm:` must name two or more distinct users in ascending byte
//! order (`dm:alice:bob`); any other name starting with `dm:` is not a valid room name
//! (`invalid_room`) rather than an ordinary room, so that `dm:bob:alice` cannot pass for a
//! private conversation that anyone may join. [`room`] makes the one valid name of a set of
//! users.

use crate::protocol::RoomName;

/// The prefix of every direct conversation's name.
pub const PREFIX: &str = crate::protocol::DIRECT_PREFIX;

/// The users of `room` when it is a direct conversation (two or more, distinct, ascending);
/// `None` for an ordinary room.
///
/// ```
/// use chat_core::direct::users;
/// use chat_core::RoomName;
///
/// assert_eq!(users(&RoomName::new("dm:alice:bob").unwrap()), Some(vec!["alice", "bob"]));
/// assert_eq!(users(&RoomName::new("lobby").unwrap()), None);
/// assert!(RoomName::new("dm:bob:alice").is_err(), "not in ascending order: no room at all");
/// ```
pub fn users(room: &RoomName) -> Option<Vec<&str>> {
    room.as_str().strip_prefix(PREFIX).map(|rest| rest.split(':').collect())
}

/// Whether `user` can take part in a direct conversation: a name made of room-name characters
/// other than `:`.
pub fn can_take_part(user: &str) -> bool {
    RoomName::is_valid(user) && !user.contains(':')
}

/// The direct conversation between `users` (in any order, repeats ignored): `None` when fewer
/// than two distinct users are given, or one of them cannot take part (see [`can_take_part`]),
/// or the name would be too long for a room.
///
/// ```
/// use chat_core::direct::room;
///
/// assert_eq!(room(["bob", "alice"]).unwrap().as_str(), "dm:alice:bob");
/// assert_eq!(room(["carol", "alice", "bob", "alice"]).unwrap().as_str(), "dm:alice:bob:carol");
/// assert!(room(["alice", "alice"]).is_none());
/// assert!(room(["alice", "b:ob"]).is_none());
/// ```
pub fn room<'a>(users: impl IntoIterator<Item = &'a str>) -> Option<RoomName> {
    let mut names: Vec<&str> = users.into_iter().collect();
    names.sort_unstable();
    names.dedup();
    if names.len() < 2 || !names.iter().all(|u| can_take_part(u)) {
        return None;
    }
    RoomName::new(&format!("{PREFIX}{}", names.join(":"))).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_read_strictly() {
        assert_eq!(users(&RoomName::new("dm:alice:bob:carol").unwrap()), Some(vec!["alice", "bob", "carol"]));
        for malformed in
            ["dm:alice", "dm:alice:alice", "dm:bob:alice", "dm:alice::bob", "dm::alice", "dm:alice:bob:", "dm:"]
        {
            assert!(RoomName::new(malformed).is_err(), "{malformed}");
        }
        assert!(RoomName::is_valid("dmx:alice") && RoomName::is_valid("lobby"));
        assert_eq!(users(&RoomName::new("DM:alice").unwrap()), None, "the prefix is lowercase");
        // Byte order: uppercase sorts before lowercase.
        assert!(RoomName::is_valid("dm:Zed:alice") && !RoomName::is_valid("dm:alice:Zed"));
    }

    #[test]
    fn the_room_of_users_is_the_one_valid_name() {
        let room = room(["Zed", "alice"]).unwrap();
        assert_eq!(room.as_str(), "dm:Zed:alice");
        assert_eq!(users(&room), Some(vec!["Zed", "alice"]));
        assert!(super::room(["alice"]).is_none());
        assert!(super::room(["alice", "bob smith"]).is_none(), "a space is not a room character");
        let long = "x".repeat(200);
        assert!(super::room(["alice", long.as_str()]).is_none(), "too long for a room name");
    }
}
