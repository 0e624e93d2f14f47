//! The frames the server writes (PROTOCOL.md §3–§6), encoded once each: a stored message is
//! encoded once for all its recipients. Internal to the engine; the benches and the fuzzers
//! reach these through the `bench` feature (`chat_core::bench`).

use bytes::Bytes;
use serde::Serialize;

use crate::protocol::{ByeReason, ErrorCode};

fn finish(v: Vec<u8>) -> Bytes {
    Bytes::from(v)
}

fn to_bytes<T: Serialize>(frame: &T) -> Bytes {
    let mut v = Vec::with_capacity(128);
    // Serializing these plain structs into a Vec cannot fail.
    if serde_json::to_writer(&mut v, frame).is_err() {
        v.clear();
        v.extend_from_slice(br#"{"type":"error","code":"internal","message":"encoding failed"}"#);
    }
    finish(v)
}

fn push_u64(v: &mut Vec<u8>, n: u64) {
    v.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn push_str(v: &mut Vec<u8>, s: &str) {
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *v, s);
}

/// The parts of a `message` event.
#[derive(Debug, Clone, Copy)]
pub struct MessageParts<'a> {
    /// The room.
    pub room: &'a str,
    /// The seq; `None` for ephemeral messages.
    pub seq: Option<u64>,
    /// The sender.
    pub from: &'a str,
    /// Milliseconds since the Unix epoch.
    pub ts: u64,
    /// The body's JSON text; `None` for an erased message (`"deleted":true`, no body).
    pub body: Option<&'a [u8]>,
}

fn write_message(v: &mut Vec<u8>, m: &MessageParts<'_>) {
    v.extend_from_slice(br#"{"type":"message","room":"#);
    push_str(v, m.room);
    if let Some(seq) = m.seq {
        v.extend_from_slice(br#","seq":"#);
        push_u64(v, seq);
    }
    v.extend_from_slice(br#","from":"#);
    push_str(v, m.from);
    v.extend_from_slice(br#","ts":"#);
    push_u64(v, m.ts);
    let Some(body) = m.body else {
        v.extend_from_slice(br#","deleted":true}"#);
        return;
    };
    v.extend_from_slice(br#","body":"#);
    // Bodies from clients were validated when parsed; one handed back by a broker is checked
    // here, once per message and node, so that every frame the engine writes is UTF-8 (the
    // WebSocket transport relies on it). A broken one becomes `null` rather than a bad frame.
    if std::str::from_utf8(body).is_ok() {
        v.extend_from_slice(body);
    } else {
        tracing::error!(room = m.room, seq = m.seq, "a stored body is not UTF-8; sent as null");
        v.extend_from_slice(b"null");
    }
    v.push(b'}');
}

/// A `message` event, written directly (it is the hot path).
pub fn encode_message(m: &MessageParts<'_>) -> Bytes {
    let mut v = Vec::with_capacity(72 + m.room.len() + m.from.len() + m.body.map_or(0, <[u8]>::len));
    write_message(&mut v, m);
    finish(v)
}

/// A `history` reply holding `messages`, oldest first.
pub fn encode_history<'a>(
    id: Option<u64>,
    room: &str,
    epoch: &str,
    messages: impl Iterator<Item = MessageParts<'a>>,
) -> Bytes {
    let mut v = Vec::with_capacity(256);
    v.extend_from_slice(br#"{"type":"history","#);
    if let Some(id) = id {
        v.extend_from_slice(br#""id":"#);
        push_u64(&mut v, id);
        v.push(b',');
    }
    v.extend_from_slice(br#""room":"#);
    push_str(&mut v, room);
    v.extend_from_slice(br#","epoch":"#);
    push_str(&mut v, epoch);
    v.extend_from_slice(br#","messages":["#);
    for (i, m) in messages.enumerate() {
        if i > 0 {
            v.push(b',');
        }
        write_message(&mut v, &m);
    }
    v.extend_from_slice(b"]}");
    finish(v)
}

#[derive(Serialize)]
struct WelcomeFrame<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    session: &'a str,
    user: &'a str,
    node: &'a str,
    heartbeat_ms: u64,
    max_frame: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    exp: Option<u64>,
}

/// The parts of a `welcome` reply.
#[derive(Debug, Clone, Copy)]
pub struct WelcomeParts<'a> {
    /// The session id.
    pub session: &'a str,
    /// The user the authenticator decided on.
    pub user: &'a str,
    /// This node's id.
    pub node: &'a str,
    /// The heartbeat interval.
    pub heartbeat_ms: u64,
    /// The largest frame accepted.
    pub max_frame: usize,
    /// When the identity expires (seconds since the Unix epoch); `None`: the field is absent.
    pub exp: Option<u64>,
}

/// The `welcome` reply to `hello`; `exp` only when the identity expires.
pub fn encode_welcome(id: Option<u64>, w: &WelcomeParts<'_>) -> Bytes {
    let WelcomeParts { session, user, node, heartbeat_ms, max_frame, exp } = *w;
    to_bytes(&WelcomeFrame { ty: "welcome", id, session, user, node, heartbeat_ms, max_frame, exp })
}

#[derive(Serialize)]
struct RefreshedFrame {
    #[serde(rename = "type")]
    ty: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exp: Option<u64>,
}

/// The `refreshed` reply to `refresh`: `exp` is the new identity's expiry, absent if it has
/// none.
pub fn encode_refreshed(id: Option<u64>, exp: Option<u64>) -> Bytes {
    to_bytes(&RefreshedFrame { ty: "refreshed", id, exp })
}

#[derive(Serialize)]
struct RoomReply<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    room: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    recovered: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
}

impl<'a> RoomReply<'a> {
    fn new(ty: &'static str, id: Option<u64>, room: &'a str) -> Self {
        RoomReply { ty, id, room, epoch: None, seq: None, recovered: None, user: None }
    }
}

/// The `joined` reply.
pub fn encode_joined(id: Option<u64>, room: &str, epoch: &str, seq: u64, recovered: bool) -> Bytes {
    to_bytes(&RoomReply {
        epoch: Some(epoch),
        seq: Some(seq),
        recovered: Some(recovered),
        ..RoomReply::new("joined", id, room)
    })
}

/// The `left` reply.
pub fn encode_left(id: Option<u64>, room: &str) -> Bytes {
    to_bytes(&RoomReply::new("left", id, room))
}

/// The `sent` reply (`seq` is `None` for ephemeral sends).
pub fn encode_sent(id: Option<u64>, room: &str, seq: Option<u64>) -> Bytes {
    to_bytes(&RoomReply { seq, ..RoomReply::new("sent", id, room) })
}

/// The `reset` event: the room's history was lost; a new epoch starts at seq 1.
pub fn encode_reset(room: &str, epoch: &str) -> Bytes {
    to_bytes(&RoomReply { epoch: Some(epoch), seq: Some(0), ..RoomReply::new("reset", None, room) })
}

/// A `member_joined` event.
pub fn encode_member_joined(room: &str, user: &str) -> Bytes {
    to_bytes(&RoomReply { user: Some(user), ..RoomReply::new("member_joined", None, room) })
}

/// A `member_left` event.
pub fn encode_member_left(room: &str, user: &str) -> Bytes {
    to_bytes(&RoomReply { user: Some(user), ..RoomReply::new("member_left", None, room) })
}

#[derive(Serialize)]
struct Invite<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    room: &'a str,
    from: &'a str,
    seq: u64,
}

/// An `invite` event: a message was stored at `seq` in the direct conversation `room`, sent
/// by `from` (PROTOCOL.md §4).
pub fn encode_invite(room: &str, from: &str, seq: u64) -> Bytes {
    to_bytes(&Invite { ty: "invite", room, from, seq })
}

/// A `kicked` event: the host removed the session from `room` (PROTOCOL.md §4).
pub fn encode_kicked(room: &str) -> Bytes {
    to_bytes(&RoomReply::new("kicked", None, room))
}

#[derive(Serialize)]
struct Member<'a> {
    user: &'a str,
    sessions: u64,
}

#[derive(Serialize)]
struct PresenceFrame<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    room: &'a str,
    members: Vec<Member<'a>>,
}

/// The `presence` reply: each user once, with its number of sessions in the room.
pub fn encode_presence<'a>(id: Option<u64>, room: &str, members: impl Iterator<Item = (&'a str, u64)>) -> Bytes {
    let members = members.map(|(user, sessions)| Member { user, sessions }).collect();
    to_bytes(&PresenceFrame { ty: "presence", id, room, members })
}

#[derive(Serialize)]
struct ErrorFrame<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    code: &'static str,
    message: &'a str,
}

/// An `error` frame.
pub fn encode_error(id: Option<u64>, code: ErrorCode, message: &str) -> Bytes {
    to_bytes(&ErrorFrame { ty: "error", id, code: code.as_str(), message })
}

#[derive(Serialize)]
struct ByeFrame {
    #[serde(rename = "type")]
    ty: &'static str,
    reason: &'static str,
    reconnect: bool,
}

/// The `bye` frame sent before the server closes a connection on purpose.
pub fn encode_bye(reason: ByeReason) -> Bytes {
    to_bytes(&ByeFrame { ty: "bye", reason: reason.as_str(), reconnect: reason.reconnect() })
}

/// The server's heartbeat `ping` event (no `id`).
pub fn encode_ping() -> Bytes {
    Bytes::from_static(br#"{"type":"ping"}"#)
}

/// The `pong` reply to a client's `ping` with `id`.
pub fn encode_pong(id: u64) -> Bytes {
    let mut v = Vec::with_capacity(32);
    v.extend_from_slice(br#"{"type":"pong","id":"#);
    push_u64(&mut v, id);
    v.push(b'}');
    finish(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_that_is_not_utf8_is_never_written() {
        let frame =
            encode_message(&MessageParts { room: "r", seq: Some(1), from: "a", ts: 1, body: Some(b"\"\xff\"") });
        assert!(std::str::from_utf8(&frame).is_ok());
        assert!(frame.ends_with(br#""body":null}"#));
    }

    #[test]
    fn encodes_frames() {
        assert_eq!(&encode_sent(Some(4), "lobby", Some(58))[..], br#"{"type":"sent","id":4,"room":"lobby","seq":58}"#);
        assert_eq!(&encode_sent(None, "lobby", None)[..], br#"{"type":"sent","room":"lobby"}"#);
        assert_eq!(&encode_bye(ByeReason::Shutdown)[..], br#"{"type":"bye","reason":"shutdown","reconnect":true}"#);
        assert_eq!(&encode_bye(ByeReason::Expired)[..], br#"{"type":"bye","reason":"expired","reconnect":true}"#);
        assert_eq!(
            &encode_joined(Some(2), "lobby", "e1", 57, true)[..],
            br#"{"type":"joined","id":2,"room":"lobby","epoch":"e1","seq":57,"recovered":true}"#
        );
        let h = encode_history(
            Some(5),
            "r",
            "e1",
            [MessageParts { room: "r", seq: Some(1), from: "a\"b", ts: 2, body: Some(b"3") }].into_iter(),
        );
        let v: serde_json::Value = serde_json::from_slice(&h).unwrap();
        assert_eq!(v["messages"][0]["from"], "a\"b");
        assert_eq!(&encode_pong(3)[..], br#"{"type":"pong","id":3}"#);
    }

    #[test]
    fn encodes_notices() {
        let invite = encode_invite("dm:alice:bob", "alice", 12);
        assert_eq!(&invite[..], br#"{"type":"invite","room":"dm:alice:bob","from":"alice","seq":12}"#);
        assert_eq!(&encode_kicked("lobby")[..], br#"{"type":"kicked","room":"lobby"}"#);
    }

    #[test]
    fn encodes_a_message_and_a_tombstone() {
        let frame = encode_message(&MessageParts {
            room: "lobby",
            seq: Some(58),
            from: "alice",
            ts: 1,
            body: Some(b"{\"t\":1}"),
        });
        assert_eq!(&frame[..], br#"{"type":"message","room":"lobby","seq":58,"from":"alice","ts":1,"body":{"t":1}}"#);
        let erased = encode_message(&MessageParts { room: "lobby", seq: Some(58), from: "alice", ts: 1, body: None });
        assert_eq!(&erased[..], br#"{"type":"message","room":"lobby","seq":58,"from":"alice","ts":1,"deleted":true}"#);
    }

    #[test]
    fn welcome_has_exp_only_when_it_expires() {
        let w = WelcomeParts { session: "s", user: "a", node: "n", heartbeat_ms: 25_000, max_frame: 65_536, exp: None };
        assert!(!encode_welcome(Some(1), &w).windows(5).any(|f| f == b"\"exp\""));
        let frame = encode_welcome(Some(1), &WelcomeParts { exp: Some(1_764_205_200), ..w });
        assert!(frame.ends_with(br#""max_frame":65536,"exp":1764205200}"#));
    }

    #[test]
    fn refreshed_has_exp_only_when_it_expires() {
        assert_eq!(
            &encode_refreshed(Some(7), Some(1_764_205_200))[..],
            br#"{"type":"refreshed","id":7,"exp":1764205200}"#
        );
        assert_eq!(&encode_refreshed(Some(7), None)[..], br#"{"type":"refreshed","id":7}"#);
    }
}
