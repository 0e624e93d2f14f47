//! Redis key and channel names.
//!
//! Every key of a room, and its channel, carries the room in a hash tag (`{room}`; room names
//! cannot contain braces), so on a Redis Cluster a room's keys and channel share one slot: its
//! scripts run on one shard and publish there (sharded pub/sub). The nodes' liveness keys share
//! the `{nodes}` tag (one small sorted set each); each node's presence registry has its own tag,
//! so presence is spread over the shards with the rooms and the nodes.

/// Names every key and channel under one prefix.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Self {
        Keys { prefix: prefix.to_owned() }
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    fn room(&self, room: &str, what: &str) -> String {
        format!("{}{{{room}}}:{what}", self.prefix)
    }

    /// The room's epoch (a string).
    pub(crate) fn epoch(&self, room: &str) -> String {
        self.room(room, "e")
    }

    /// The room's latest seq (an integer).
    pub(crate) fn seq(&self, room: &str) -> String {
        self.room(room, "s")
    }

    /// The room's history (a stream, entry id `<seq>-0`).
    pub(crate) fn stream(&self, room: &str) -> String {
        self.room(room, "h")
    }

    /// The room's sessions (a hash: session -> user).
    pub(crate) fn sessions(&self, room: &str) -> String {
        self.room(room, "ps")
    }

    /// The room's users (a hash: user -> number of sessions).
    pub(crate) fn users(&self, room: &str) -> String {
        self.room(room, "pu")
    }

    /// One idempotency key of (user, room). The user's length comes first so that no two
    /// (user, key) pairs share a name.
    pub(crate) fn idempotency(&self, room: &str, user: &str, key: &str) -> String {
        format!("{}{{{room}}}:i:{}:{user}:{key}", self.prefix, user.len())
    }

    /// The room's pub/sub channel.
    pub(crate) fn channel(&self, room: &str) -> String {
        self.room(room, "chan")
    }

    /// The room a channel belongs to.
    pub(crate) fn room_of_channel<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel.strip_prefix(self.prefix.as_str())?.strip_prefix('{')?.strip_suffix("}:chan")
    }

    /// The channel of notices for users (`chat_core::broker::Notice`), which every node
    /// subscribes to. Not a room's: `room_of_channel` finds no room in it.
    pub(crate) fn notices(&self) -> String {
        format!("{}notices", self.prefix)
    }

    /// The live nodes (a sorted set: node -> deadline in ms).
    pub(crate) fn nodes(&self) -> String {
        format!("{}{{nodes}}:live", self.prefix)
    }

    /// The nodes swept as dead in the last ten minutes (a sorted set: node -> when, in ms): a
    /// node that finds itself there was taken for dead and registers its presence again.
    pub(crate) fn swept(&self) -> String {
        format!("{}{{nodes}}:swept", self.prefix)
    }

    /// What a node holds in presence (a hash: `<room> <session>` -> user).
    pub(crate) fn node(&self, node: &str) -> String {
        format!("{}node:{{{node}}}", self.prefix)
    }
}

/// A node registry's field for one session in one room (room names have no spaces).
pub(crate) fn registry_field(room: &str, session: &str) -> String {
    format!("{room} {session}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let k = Keys::new("t:");
        assert_eq!(k.stream("lobby"), "t:{lobby}:h");
        assert_eq!(k.channel("a:b"), "t:{a:b}:chan");
        assert_eq!(k.room_of_channel("t:{a:b}:chan"), Some("a:b"));
        assert_eq!(k.room_of_channel("u:{a}:chan"), None);
        assert_eq!(k.room_of_channel(&k.notices()), None);
        assert_eq!(k.node("n-1"), "t:node:{n-1}");
        assert_ne!(k.idempotency("r", "a:b", "c"), k.idempotency("r", "a", "b:c"));
    }
}
