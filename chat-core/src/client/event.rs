//! What the server says to a client, typed: the events it sends unasked ([`Event`], parsed once
//! from the frame by [`Event::parse`]) and the replies with a body worth a type ([`Joined`],
//! [`HistoryPage`], [`Presence`]). An event type this client does not know is kept, raw, as
//! [`Event::Unknown`]: a newer server is not an error.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use super::{ClientError, ServerError};
use crate::protocol::{ByeReason, Since};

/// An event: a frame the server sent unasked (PROTOCOL.md §3 to §6).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// A message of a room (`message`).
    Message(Message),
    /// A room's history was lost; a new epoch begins (`reset`).
    Reset(Reset),
    /// A user's first session joined a room (`member_joined`).
    MemberJoined(Member),
    /// A user's last session left a room (`member_left`).
    MemberLeft(Member),
    /// A direct conversation this user is named in but not a member of got a message
    /// (`invite`).
    Invite(Invite),
    /// The host removed this session from a room (`kicked`): it is no longer a member.
    Kicked(Kicked),
    /// The server closes the connection (`bye`).
    Bye(Bye),
    /// An error that answers no request (`error` without `id`: a request sent without one,
    /// or a frame the server could not read).
    Error(ServerError),
    /// An event of a type this client does not know (a newer server).
    Unknown(Unknown),
}

impl Event {
    /// Parses a server frame that is an event. A frame that is not a JSON object with a string
    /// `type`, or whose fields are missing or ill-typed for its type, is a
    /// [`ClientError::Protocol`]; an unknown `type` is [`Event::Unknown`].
    ///
    /// ```
    /// use chat_core::client::Event;
    /// let frame = br#"{"type":"member_joined","room":"lobby","user":"bob"}"#;
    /// match Event::parse(frame).unwrap() {
    ///     Event::MemberJoined(m) => assert_eq!((m.room.as_str(), m.user.as_str()), ("lobby", "bob")),
    ///     other => panic!("{other:?}"),
    /// }
    /// assert!(matches!(Event::parse(br#"{"type":"news","room":"lobby"}"#), Ok(Event::Unknown(_))));
    /// assert!(Event::parse(b"not json").is_err());
    /// ```
    pub fn parse(frame: &[u8]) -> Result<Event, ClientError> {
        #[derive(Deserialize)]
        struct Head {
            #[serde(rename = "type")]
            ty: String,
        }
        let head: Head = from_slice(frame)?;
        Ok(match head.ty.as_str() {
            "message" => Event::Message(from_slice(frame)?),
            "reset" => Event::Reset(from_slice(frame)?),
            "member_joined" => Event::MemberJoined(from_slice(frame)?),
            "member_left" => Event::MemberLeft(from_slice(frame)?),
            "invite" => Event::Invite(from_slice(frame)?),
            "kicked" => Event::Kicked(from_slice(frame)?),
            "bye" => Event::Bye(from_slice(frame)?),
            "error" => Event::Error(from_slice(frame)?),
            _ => Event::Unknown(Unknown { kind: head.ty, frame: Bytes::copy_from_slice(frame) }),
        })
    }

    /// The room the event is about, if it is about one.
    pub fn room(&self) -> Option<&str> {
        match self {
            Event::Message(m) => Some(&m.room),
            Event::Reset(r) => Some(&r.room),
            Event::MemberJoined(m) | Event::MemberLeft(m) => Some(&m.room),
            Event::Invite(i) => Some(&i.room),
            Event::Kicked(k) => Some(&k.room),
            Event::Bye(_) | Event::Error(_) | Event::Unknown(_) => None,
        }
    }
}

/// Deserializes `frame` as `T`; what does not fit is a protocol error.
pub(crate) fn from_slice<T: DeserializeOwned>(frame: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(frame).map_err(|e| ClientError::Protocol(e.to_string()))
}

/// A message of a room: live, replayed after a `join` with `since`, or in a [`HistoryPage`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Message {
    /// The room.
    pub room: String,
    /// Its place in the room's history; `None` for an ephemeral message (never stored).
    #[serde(default)]
    pub seq: Option<u64>,
    /// The sender.
    pub from: String,
    /// When the server received it, in milliseconds since the Unix epoch.
    pub ts: u64,
    /// The body, as the sender sent it (compact); `Null` for an erased message.
    #[serde(default)]
    pub body: Value,
    /// The host erased the message: it keeps its place, without a body.
    #[serde(default)]
    pub deleted: bool,
}

/// A room's history was lost (`reset`): drop what is held for the room and reload it with
/// `history`; messages of the new epoch follow, from `seq` 1.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Reset {
    /// The room.
    pub room: String,
    /// The new epoch.
    pub epoch: String,
    /// Always 0: the position before the new epoch's first message.
    #[serde(default)]
    pub seq: u64,
}

impl Reset {
    /// The position to `join` from after this reset: the start of the new epoch.
    pub fn since(&self) -> Since {
        Since::new(self.epoch.clone(), self.seq)
    }
}

/// A membership change (`member_joined`, `member_left`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Member {
    /// The room.
    pub room: String,
    /// The user who arrived or left.
    pub user: String,
}

/// An invitation to a direct conversation (`invite`, PROTOCOL.md §4): a message was stored in
/// `room`, which names this user, while this session is not a member of it. Join it (with
/// `since` to read what was missed) to take part; joining also ends the invitations.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Invite {
    /// The direct conversation (`dm:alice:bob`).
    pub room: String,
    /// The sender of the message.
    pub from: String,
    /// The message's seq.
    pub seq: u64,
}

/// The host removed this session from a room (`kicked`, PROTOCOL.md §4). The session stays
/// connected and in its other rooms; joining again is up to the host's authorizer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Kicked {
    /// The room.
    pub room: String,
}

/// The server closes the connection (`bye`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Bye {
    /// Why, as written on the wire (see [`known_reason`](Self::known_reason)).
    pub reason: String,
    /// Whether coming back (with `since`) makes sense.
    #[serde(default)]
    pub reconnect: bool,
}

impl Bye {
    /// The reason, when this client knows it.
    pub fn known_reason(&self) -> Option<ByeReason> {
        ByeReason::from_wire(&self.reason)
    }
}

/// An event of a type this client does not know, kept as it came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unknown {
    /// Its `type`.
    pub kind: String,
    /// The whole frame.
    pub frame: Bytes,
}

impl Unknown {
    /// The frame as JSON.
    pub fn json(&self) -> Result<Value, ClientError> {
        from_slice(&self.frame)
    }
}

/// The server's `joined` reply.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Joined {
    /// The room.
    pub room: String,
    /// The room's epoch.
    pub epoch: String,
    /// The room's latest seq when joining.
    pub seq: u64,
    /// Whether every message after `since` was replayed (always false without `since`).
    pub recovered: bool,
}

impl Joined {
    /// The room's position when joining: what to come back from with nothing seen since.
    pub fn since(&self) -> Since {
        Since::new(self.epoch.clone(), self.seq)
    }
}

/// A page of a room's history (the `history` reply), oldest first.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct HistoryPage {
    /// The room.
    pub room: String,
    /// The epoch the messages' seqs belong to.
    pub epoch: String,
    /// The messages, oldest first (erased ones with `deleted`).
    pub messages: Vec<Message>,
}

impl HistoryPage {
    /// The seqs of the page's messages, oldest first.
    pub fn seqs(&self) -> Vec<u64> {
        self.messages.iter().filter_map(|m| m.seq).collect()
    }
}

/// A room's members (the `presence` reply).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Presence {
    /// The room.
    pub room: String,
    /// Each user once, on every node of the cluster.
    pub members: Vec<PresenceEntry>,
}

impl Presence {
    /// The members' names, in the server's order.
    pub fn users(&self) -> Vec<&str> {
        self.members.iter().map(|m| m.user.as_str()).collect()
    }
}

/// One member in a [`Presence`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PresenceEntry {
    /// The user.
    pub user: String,
    /// How many of the user's sessions are in the room.
    pub sessions: u64,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::client::ServerCode;
    use crate::protocol::ErrorCode;

    fn parse(frame: Value) -> Event {
        Event::parse(frame.to_string().as_bytes()).expect("a valid event")
    }

    #[test]
    fn messages_stored_ephemeral_and_erased() {
        let stored = parse(json!({"type":"message","room":"r","seq":58,"from":"alice","ts":17,"body":{"text":"hi"}}));
        let expected = Message {
            room: "r".into(),
            seq: Some(58),
            from: "alice".into(),
            ts: 17,
            body: json!({"text":"hi"}),
            deleted: false,
        };
        assert_eq!(stored, Event::Message(expected));
        let Event::Message(ephemeral) = parse(json!({"type":"message","room":"r","from":"a","ts":1,"body":null}))
        else {
            panic!("a message")
        };
        assert_eq!((ephemeral.seq, ephemeral.body, ephemeral.deleted), (None, Value::Null, false));
        let Event::Message(erased) =
            parse(json!({"type":"message","room":"r","seq":3,"from":"a","ts":1,"deleted":true}))
        else {
            panic!("a message")
        };
        assert_eq!((erased.seq, erased.body, erased.deleted), (Some(3), Value::Null, true));
    }

    #[test]
    fn every_other_event() {
        assert_eq!(
            parse(json!({"type":"reset","room":"r","epoch":"e2","seq":0})),
            Event::Reset(Reset { room: "r".into(), epoch: "e2".into(), seq: 0 })
        );
        let member = Member { room: "r".into(), user: "bob".into() };
        assert_eq!(parse(json!({"type":"member_joined","room":"r","user":"bob"})), Event::MemberJoined(member.clone()));
        assert_eq!(parse(json!({"type":"member_left","room":"r","user":"bob"})), Event::MemberLeft(member));
        assert_eq!(
            parse(json!({"type":"invite","room":"dm:alice:bob","from":"alice","seq":12})),
            Event::Invite(Invite { room: "dm:alice:bob".into(), from: "alice".into(), seq: 12 })
        );
        assert_eq!(parse(json!({"type":"kicked","room":"lobby"})), Event::Kicked(Kicked { room: "lobby".into() }));
        let bye = parse(json!({"type":"bye","reason":"shutdown","reconnect":true}));
        assert_eq!(bye, Event::Bye(Bye { reason: "shutdown".into(), reconnect: true }));
        let Event::Bye(bye) = bye else { panic!("bye") };
        assert_eq!(bye.known_reason(), Some(ByeReason::Shutdown));
        assert_eq!(
            parse(json!({"type":"error","code":"rate_limited","message":"slow down"})),
            Event::Error(ServerError::new(ErrorCode::RateLimited, "slow down"))
        );
        let Event::Error(e) = parse(json!({"type":"error","code":"new_code","message":"?"})) else { panic!("error") };
        assert_eq!(e.code, ServerCode::Unknown("new_code".into()));
    }

    #[test]
    fn unknown_types_are_kept_raw_and_unknown_fields_ignored() {
        let frame = br#"{"type":"poll","room":"r","question":"?"}"#;
        let Ok(Event::Unknown(unknown)) = Event::parse(frame) else { panic!("unknown") };
        assert_eq!((unknown.kind.as_str(), &unknown.frame[..]), ("poll", &frame[..]));
        assert_eq!(unknown.json().expect("json")["question"], "?");
        let extra = parse(json!({"type":"member_left","room":"r","user":"bob","since":"later"}));
        assert_eq!(extra.room(), Some("r"));
    }

    #[test]
    fn malformed_frames_are_protocol_errors() {
        for frame in [
            &b""[..],
            b"not json",
            b"[1,2]",
            b"{}",
            br#"{"type":7}"#,
            br#"{"type":"message","room":"r"}"#,
            br#"{"type":"message","room":"r","seq":-1,"from":"a","ts":1,"body":1}"#,
            br#"{"type":"reset","room":"r"}"#,
            br#"{"type":"invite","room":"dm:a:b","from":"a","seq":"12"}"#,
            br#"{"type":"bye","reason":null}"#,
            br#"{"type":"error","message":"no code"}"#,
            b"\xff\xfe",
        ] {
            match Event::parse(frame) {
                Err(ClientError::Protocol(_)) => {}
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(frame)),
            }
        }
    }
}
