//! Where things live in NATS: the subjects, the stream and the bucket of one cluster (one
//! prefix), and how a room's name becomes one subject token.
//!
//! Room names may hold `.` `:` `@` `#`, which a NATS subject (or a key-value key) cannot hold
//! as they are: each of those bytes, and `=`, becomes `=XX` (its hex), so the token is a valid
//! subject token and key, and distinct rooms get distinct tokens.

use std::fmt::Write as _;

/// The names of one cluster's subjects, stream and bucket.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    prefix: String,
}

impl Names {
    /// Names under `prefix` (checked by the builder: letters, digits, `_` and `-`).
    pub(crate) fn new(prefix: &str) -> Names {
        Names { prefix: prefix.to_owned() }
    }

    /// The stream that stores every room's records.
    pub(crate) fn stream(&self) -> String {
        format!("{}-rooms", self.prefix)
    }

    /// Every room's records (a subject filter).
    pub(crate) fn all_records(&self) -> String {
        format!("{}.r.*", self.prefix)
    }

    /// The subjects the stream captures: rooms' records and their restored keys.
    pub(crate) fn stream_subjects(&self) -> Vec<String> {
        vec![self.all_records(), format!("{}.k.*", self.prefix)]
    }

    /// A room's idempotency keys restored from the engine's store (see `Shared::start_of`).
    pub(crate) fn keys(&self, token: &str) -> String {
        format!("{}.k.{token}", self.prefix)
    }

    /// Where the stream republishes what it stored (`{prefix}.r.X` to `{prefix}.d.X`).
    pub(crate) fn republish(&self) -> (String, String) {
        (format!("{}.r.>", self.prefix), format!("{}.d.>", self.prefix))
    }

    /// A room's records, in the stream.
    pub(crate) fn records(&self, token: &str) -> String {
        format!("{}.r.{token}", self.prefix)
    }

    /// A room's deliveries: its stored records, republished, and its transient fan-out.
    pub(crate) fn deliveries(&self, token: &str) -> String {
        format!("{}.d.{token}", self.prefix)
    }

    /// Every node's notices.
    pub(crate) fn notices(&self) -> String {
        format!("{}.n", self.prefix)
    }

    /// The presence bucket.
    pub(crate) fn bucket(&self) -> String {
        format!("{}-presence", self.prefix)
    }

    /// A node's presence entry for a user in a room, as a key of the bucket.
    pub(crate) fn entry(&self, token: &str, user: &str, instance: &str) -> String {
        format!("{token}.{user}.{instance}")
    }

    /// Every node's presence entries for a user in a room (a key filter).
    pub(crate) fn user_entries(&self, token: &str, user: &str) -> String {
        format!("{token}.{user}.*")
    }

    /// Every presence entry of a room (a key filter).
    pub(crate) fn entries(&self, token: &str) -> String {
        format!("{token}.*.*")
    }
}

/// A room's (or a user's, or a node's) name as one subject token: `.`, `:`, `@`, `#`, `=` and
/// anything outside `[A-Za-z0-9_-]` become `=XX`; the empty name is `=`.
pub(crate) fn token(name: &str) -> String {
    if name.is_empty() {
        return "=".to_owned(); // a subject token cannot be empty; no other name gives `=`
    }
    let mut out = String::with_capacity(name.len() + 8);
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "={b:02X}");
        }
    }
    out
}

/// The `Nats-Msg-Id` of an idempotency key: scoped to the room and the sender, every byte
/// outside printable ASCII (and `%`) escaped, so any key and sender make a valid header.
pub(crate) fn message_id(token: &str, from: &str, key: &str) -> String {
    let mut out = format!("{token} {} ", from.len());
    for b in from.bytes().chain([b' ']).chain(key.bytes()) {
        if (0x21..0x7f).contains(&b) && b != b'%' || b == b' ' {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_valid_and_distinct() {
        assert_eq!(token("lobby"), "lobby");
        assert_eq!(token("dm:alice:bob"), "dm=3Aalice=3Abob");
        assert_eq!(token("a.b"), "a=2Eb");
        assert_ne!(token("a.b"), token("a=2Eb"), "the escape character is escaped too");
        assert_eq!(token(""), "=", "never an empty token");
        for name in ["#x", "@y", "a.b.c", "x-y_z"] {
            assert!(token(name).bytes().all(|b| b.is_ascii_alphanumeric() || b"_-=".contains(&b)), "{name}");
        }
    }

    #[test]
    fn message_ids_are_scoped_and_header_safe() {
        let id = message_id("r", "al ice", "k\r\n1");
        assert_eq!(id, "r 6 al ice k%0D%0A1");
        assert_ne!(message_id("r", "a b", "c"), message_id("r", "a", "b c"), "the sender's length tells them apart");
        assert_ne!(message_id("r", "a", "k"), message_id("s", "a", "k"));
    }
}
