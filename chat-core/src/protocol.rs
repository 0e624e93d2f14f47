//! The wire protocol `chat/1` (see the repository's `docs/PROTOCOL.md`): its names (rooms,
//! error codes, `bye` reasons), client requests parsed from one frame's bytes with every limit
//! enforced, and [`compact`] bodies. The frames the server writes are encoded in `frames`.
//!
//! Parsing is one linear pre-scan (UTF-8, nesting depth, lone surrogate escapes) followed by
//! one serde pass that borrows every field as raw JSON, so that each field can be checked
//! separately and an error can echo the request's `id` whenever that `id` is valid.
//!
//! Readings of the protocol that this module makes explicit:
//! * An optional field whose value is `null` is treated as absent (`"id":null` is a request
//!   without `id`). `body` is required and `null` is a valid body.
//! * A `limit` larger than any integer the server can hold is capped like any other large one.
//! * `refresh` without `id` gets no `refreshed` (fire and forget, like any request); its
//!   refusal is still fatal. A `refresh` whose `token` is missing or not a string is
//!   `bad_frame` (non-fatal): the authenticator never saw it.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde::de::{Deserialize, Deserializer};
use serde_json::value::RawValue;

/// The protocol version this crate speaks (`hello.protocol`).
pub const PROTOCOL_VERSION: u64 = 1;
/// The deepest JSON nesting a frame may have; the frame's own object is level 1.
pub const MAX_DEPTH: usize = 64;
/// The largest request `id` a client may choose (2^53 − 1).
pub const MAX_ID: u64 = (1 << 53) - 1;
/// The longest idempotency `key`, in bytes.
pub const MAX_KEY_LEN: usize = 128;
/// The longest room name, in bytes.
pub const MAX_ROOM_LEN: usize = 128;

/// A valid room name: 1 to 128 bytes of `A-Z a-z 0-9 . _ - : @ #`.
///
/// Cheap to clone (reference-counted).
///
/// ```
/// use chat_core::RoomName;
/// assert!(RoomName::new("lobby").is_ok());
/// assert!(RoomName::new("team:42@eu#general").is_ok());
/// assert!(RoomName::new("no spaces").is_err());
/// assert!(RoomName::new("").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomName(Arc<str>);

/// A room name outside the rules of [`RoomName`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("room names are 1 to 128 bytes of A-Z a-z 0-9 . _ - : @ #")]
pub struct InvalidRoom;

impl RoomName {
    /// Checks `name` against the protocol's rules.
    pub fn new(name: &str) -> Result<Self, InvalidRoom> {
        if Self::is_valid(name) {
            Ok(RoomName(Arc::from(name)))
        } else {
            Err(InvalidRoom)
        }
    }

    /// Whether `name` is a valid room name.
    pub fn is_valid(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= MAX_ROOM_LEN
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'@' | b'#'))
            && direct_well_formed(name)
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The prefix of every direct conversation's name (`chat_core::direct`).
pub const DIRECT_PREFIX: &str = "dm:";

/// Whether `name` is valid as far as direct conversations go: it does not start with `dm:`,
/// or names two or more distinct, non-empty users in ascending byte order after it.
/// [`RoomName::is_valid`] checks this, so a malformed `dm:` name is no room at all
/// (PROTOCOL.md §4, `crate::direct`).
fn direct_well_formed(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(DIRECT_PREFIX) else { return true };
    let mut names = rest.split(':');
    let Some(mut last) = names.next() else { return false };
    let mut count = 1;
    for next in names {
        if last.is_empty() || next <= last {
            return false; // empty, repeated or out of order
        }
        (last, count) = (next, count + 1);
    }
    count >= 2 && !last.is_empty()
}

impl fmt::Debug for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::borrow::Borrow<str> for RoomName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for RoomName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// Every error code of PROTOCOL.md §6, in the table's order of precedence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// A frame over `max_frame` (fatal).
    FrameTooLarge,
    /// A first frame that is not a well-formed `hello`, or a second `hello` (fatal).
    NotAuthenticated,
    /// `hello.protocol` is not 1 (fatal).
    UnsupportedProtocol,
    /// The authenticator refused the `hello` or a `refresh`, or a `refresh` named another user
    /// (fatal).
    Unauthorized,
    /// Invalid JSON, unknown `type`, missing or ill-typed field, too deep, empty or binary frame.
    BadFrame,
    /// A room name outside the rules.
    InvalidRoom,
    /// Send, history or presence in a room not joined.
    NotMember,
    /// The authorizer refused this room action.
    Forbidden,
    /// A `send` body over `max_body`.
    BodyTooLarge,
    /// Over the session's message rate.
    RateLimited,
    /// The broker cannot be reached right now; nothing was stored.
    Unavailable,
    /// A server bug.
    Internal,
}

impl ErrorCode {
    /// Every code, in the order of PROTOCOL.md §6's table.
    pub const ALL: [ErrorCode; 12] = [
        ErrorCode::FrameTooLarge,
        ErrorCode::NotAuthenticated,
        ErrorCode::UnsupportedProtocol,
        ErrorCode::Unauthorized,
        ErrorCode::BadFrame,
        ErrorCode::InvalidRoom,
        ErrorCode::NotMember,
        ErrorCode::Forbidden,
        ErrorCode::BodyTooLarge,
        ErrorCode::RateLimited,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];

    /// The code written `wire` on the wire (the inverse of [`as_str`](Self::as_str)); `None`
    /// for a code this version does not know.
    ///
    /// ```
    /// use chat_core::ErrorCode;
    /// assert_eq!(ErrorCode::from_wire("not_member"), Some(ErrorCode::NotMember));
    /// assert_eq!(ErrorCode::from_wire("from_the_future"), None);
    /// ```
    pub fn from_wire(wire: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|code| code.as_str() == wire)
    }

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::NotAuthenticated => "not_authenticated",
            ErrorCode::UnsupportedProtocol => "unsupported_protocol",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::InvalidRoom => "invalid_room",
            ErrorCode::NotMember => "not_member",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::BodyTooLarge => "body_too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    /// Whether the error closes the connection (followed by `bye`).
    pub fn is_fatal(self) -> bool {
        matches!(
            self,
            ErrorCode::FrameTooLarge
                | ErrorCode::NotAuthenticated
                | ErrorCode::UnsupportedProtocol
                | ErrorCode::Unauthorized
        )
    }

    /// The `bye` reason that follows this error when it is fatal.
    pub fn bye_reason(self) -> ByeReason {
        match self {
            ErrorCode::Unauthorized => ByeReason::Unauthorized,
            _ => ByeReason::ProtocolError,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the server closes a connection (`bye.reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ByeReason {
    /// The server is shutting down.
    Shutdown,
    /// The client sent nothing (or no `hello`) for `2 × heartbeat_ms`.
    Timeout,
    /// The client did not read fast enough; its outbox overflowed.
    SlowConsumer,
    /// The session's identity expired (a token's `exp`) and no `refresh` replaced it.
    Expired,
    /// After a fatal protocol error or repeated `rate_limited`.
    ProtocolError,
    /// The authenticator refused the client.
    Unauthorized,
    /// The host application closed the session.
    Kicked,
}

impl ByeReason {
    /// Every reason of PROTOCOL.md §3.
    pub const ALL: [ByeReason; 7] = [
        ByeReason::Shutdown,
        ByeReason::Timeout,
        ByeReason::SlowConsumer,
        ByeReason::Expired,
        ByeReason::ProtocolError,
        ByeReason::Unauthorized,
        ByeReason::Kicked,
    ];

    /// The reason written `wire` on the wire; `None` for one this version does not know.
    pub fn from_wire(wire: &str) -> Option<ByeReason> {
        ByeReason::ALL.into_iter().find(|reason| reason.as_str() == wire)
    }

    /// The reason as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ByeReason::Shutdown => "shutdown",
            ByeReason::Timeout => "timeout",
            ByeReason::SlowConsumer => "slow_consumer",
            ByeReason::Expired => "expired",
            ByeReason::ProtocolError => "protocol_error",
            ByeReason::Unauthorized => "unauthorized",
            ByeReason::Kicked => "kicked",
        }
    }

    /// Whether coming back (with `since`) makes sense after this reason.
    pub fn reconnect(self) -> bool {
        matches!(self, ByeReason::Shutdown | ByeReason::Timeout | ByeReason::SlowConsumer | ByeReason::Expired)
    }
}

impl fmt::Display for ByeReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The position a returning client last saw in a room (`join.since`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Since {
    /// The epoch the client's `seq` belongs to.
    pub epoch: String,
    /// The last `seq` the client saw.
    pub seq: u64,
}

impl Since {
    /// The position `seq` in the history named `epoch`.
    ///
    /// ```
    /// let since = chat_core::protocol::Since::new("e1", 41);
    /// assert_eq!((since.epoch.as_str(), since.seq), ("e1", 41));
    /// ```
    pub fn new(epoch: impl Into<String>, seq: u64) -> Since {
        Since { epoch: epoch.into(), seq }
    }
}

/// A client request, parsed and checked up to `invalid_room` (§6's first six rows).
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// `hello`: the first frame of a session.
    Hello {
        /// `protocol` (must be 1).
        protocol: u64,
        /// The opaque token for the authenticator.
        token: Option<String>,
        /// The user name the client asks for.
        user: Option<String>,
    },
    /// `join`, with optional recovery.
    Join {
        /// The room.
        room: RoomName,
        /// Where the client left off.
        since: Option<Since>,
    },
    /// `leave`.
    Leave {
        /// The room.
        room: RoomName,
    },
    /// `send`.
    Send {
        /// The room.
        room: RoomName,
        /// The body's JSON text, exactly as the client sent it (surrounding whitespace trimmed).
        /// The session keeps and sends it [`compact`].
        body: Bytes,
        /// The idempotency key (1 to 128 bytes); `None` on ephemeral sends.
        key: Option<String>,
        /// Fan out without storing.
        ephemeral: bool,
    },
    /// `history`.
    History {
        /// The room.
        room: RoomName,
        /// Exclusive upper bound.
        before: Option<u64>,
        /// Exclusive lower bound.
        after: Option<u64>,
        /// How many messages (positive; capped by the server).
        limit: Option<u64>,
    },
    /// `presence`.
    Presence {
        /// The room.
        room: RoomName,
    },
    /// `refresh`: a new token for the session's identity, before the current one expires
    /// (`{"type":"refresh","id":7,"token":"..."}`, answered
    /// `{"type":"refreshed","id":7,"exp":1764205200}`, `exp` absent when the new identity
    /// does not expire). A token for another user, or one the authenticator refuses, is the
    /// fatal error `unauthorized`.
    Refresh {
        /// The new token for the authenticator.
        token: String,
    },
    /// `ping` from the client.
    Ping,
    /// `pong` from the client.
    Pong,
}

/// A parsed frame: the request and its `id`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientFrame {
    /// The request `id`, when the client gave one.
    pub id: Option<u64>,
    /// The request.
    pub request: Request,
}

/// Why a frame could not be parsed: always `bad_frame` or `invalid_room`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    /// The request's `id`, when it could be read.
    pub id: Option<u64>,
    /// `bad_frame` or `invalid_room`.
    pub code: ErrorCode,
    /// What was wrong, for people.
    pub message: String,
    /// The frame is a `hello` (its `type` said so) that is otherwise malformed: after the
    /// handshake, any second `hello` is fatal (PROTOCOL.md §3), this one included.
    pub hello: bool,
}

impl FrameError {
    fn bad(id: Option<u64>, message: impl Into<String>) -> Self {
        FrameError { id, code: ErrorCode::BadFrame, message: message.into(), hello: false }
    }
}

/// A raw JSON field that may be absent; unlike `Option<&RawValue>` it keeps an explicit `null`.
#[derive(Default)]
struct Field<'a>(Option<&'a RawValue>);

impl<'de: 'a, 'a> Deserialize<'de> for Field<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <&'a RawValue>::deserialize(d).map(|raw| Field(Some(raw)))
    }
}

impl<'a> Field<'a> {
    /// The raw value, with `null` read as absent.
    fn present(&self) -> Option<&'a str> {
        self.0.map(RawValue::get).filter(|raw| *raw != "null")
    }
}

/// Every field any request may carry, each still raw JSON. Unknown fields are ignored.
#[derive(serde::Deserialize)]
struct Wire<'a> {
    #[serde(rename = "type", borrow, default)]
    ty: Field<'a>,
    #[serde(borrow, default)]
    id: Field<'a>,
    #[serde(borrow, default)]
    protocol: Field<'a>,
    #[serde(borrow, default)]
    token: Field<'a>,
    #[serde(borrow, default)]
    user: Field<'a>,
    #[serde(borrow, default)]
    room: Field<'a>,
    #[serde(borrow, default)]
    since: Field<'a>,
    #[serde(borrow, default)]
    body: Field<'a>,
    #[serde(borrow, default)]
    key: Field<'a>,
    #[serde(borrow, default)]
    ephemeral: Field<'a>,
    #[serde(borrow, default)]
    before: Field<'a>,
    #[serde(borrow, default)]
    after: Field<'a>,
    #[serde(borrow, default)]
    limit: Field<'a>,
}

/// Reads a JSON integer's text. `Err` when it is not an integer literal (a fraction, an
/// exponent, a string...); `Ok((negative, magnitude))` with the magnitude saturated.
fn integer(raw: &str) -> Result<(bool, u64), ()> {
    let (negative, digits) = match raw.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, raw),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(());
    }
    let magnitude = digits
        .bytes()
        .try_fold(0u64, |acc, b| acc.checked_mul(10)?.checked_add(u64::from(b - b'0')))
        .unwrap_or(u64::MAX);
    Ok((negative, magnitude))
}

/// A non-negative integer field (saturated).
fn unsigned(raw: &str) -> Option<u64> {
    match integer(raw) {
        Ok((false, n)) => Some(n),
        Ok((true, 0)) => Some(0),
        _ => None,
    }
}

fn string(raw: &str) -> Option<String> {
    serde_json::from_str::<String>(raw).ok()
}

/// The linear pre-scan: the frame must be one JSON object no deeper than [`MAX_DEPTH`], with no
/// lone surrogate escape anywhere (serde would let one through inside a raw `body`).
fn prescan(text: &str) -> Result<(), &'static str> {
    let bytes = text.as_bytes();
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace());
    if start.map(|i| bytes[i]) != Some(b'{') {
        return Err("a frame must be one JSON object");
    }
    let mut depth = 0usize;
    let mut i = start.unwrap_or(0);
    let hex = |i: usize| -> Option<u16> {
        let digits = bytes.get(i..i + 4)?;
        u16::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
    };
    while i < bytes.len() {
        match bytes[i] {
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err("JSON nested deeper than 64 levels");
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' {
                        i += 1;
                        if bytes.get(i) == Some(&b'u') {
                            let unit = hex(i + 1).ok_or("invalid \\u escape")?;
                            i += 4;
                            if (0xDC00..0xE000).contains(&unit) {
                                return Err("lone surrogate escape");
                            }
                            if (0xD800..0xDC00).contains(&unit) {
                                let low = if bytes.get(i + 1..i + 3) == Some(b"\\u") { hex(i + 3) } else { None };
                                match low {
                                    Some(low) if (0xDC00..0xE000).contains(&low) => i += 6,
                                    _ => return Err("lone surrogate escape"),
                                }
                            }
                        }
                    }
                    i += 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// Parses one frame's bytes into a request.
///
/// `json`, a valid JSON text, without the whitespace outside its strings: how a `send` body is
/// kept and sent, so that every frame the engine writes is a single line (JSON strings cannot
/// hold a raw line break), whatever the client wrote.
///
/// ```
/// use bytes::Bytes;
/// use chat_core::protocol::compact;
///
/// let sent = Bytes::from_static(b"{ \"text\" : \"hi there\",\n  \"n\": [1, 2] }");
/// assert_eq!(&compact(sent)[..], br#"{"text":"hi there","n":[1,2]}"#);
/// ```
pub fn compact(json: Bytes) -> Bytes {
    // One pass: strings are skipped with `memchr` to their closing quote; whitespace outside
    // them is dropped, and a copy is made only once there is some (most clients send none).
    let mut out: Option<Vec<u8>> = None;
    let (mut kept_from, mut i) = (0, 0);
    while i < json.len() {
        match json[i] {
            b'"' => {
                i += 1;
                loop {
                    let Some(k) = memchr::memchr2(b'"', b'\\', &json[i..]) else {
                        i = json.len(); // unterminated (not valid JSON): kept as it is
                        break;
                    };
                    let escape = json[i + k] == b'\\';
                    i = (i + k + if escape { 2 } else { 1 }).min(json.len());
                    if !escape {
                        break;
                    }
                }
            }
            b' ' | b'\n' | b'\r' | b'\t' => {
                out.get_or_insert_with(|| Vec::with_capacity(json.len())).extend_from_slice(&json[kept_from..i]);
                i += 1;
                kept_from = i;
            }
            _ => i += 1,
        }
    }
    match out {
        None => json, // as it came: not copied, not even shared
        Some(mut out) => {
            out.extend_from_slice(&json[kept_from..]);
            Bytes::from(out)
        }
    }
}

/// The caller has already checked the frame against `max_frame`; `max_body` is the session's
/// concern (it ranks after `not_member` and `forbidden` in §6).
///
/// ```
/// use chat_core::protocol::{parse, Request};
/// let frame = parse(br#"{"type":"send","id":4,"room":"lobby","body":{"text":"hi"}}"#).unwrap();
/// assert_eq!(frame.id, Some(4));
/// match frame.request {
///     Request::Send { body, .. } => assert_eq!(&body[..], br#"{"text":"hi"}"#),
///     other => panic!("{other:?}"),
/// }
/// let err = parse(b"[1,2]").unwrap_err();
/// assert_eq!(err.code.as_str(), "bad_frame");
/// ```
pub fn parse(frame: &[u8]) -> Result<ClientFrame, FrameError> {
    if frame.is_empty() {
        return Err(FrameError::bad(None, "empty frame"));
    }
    let text = std::str::from_utf8(frame).map_err(|_| FrameError::bad(None, "frame is not valid UTF-8"))?;
    prescan(text).map_err(|why| FrameError::bad(None, why))?;
    let wire: Wire<'_> = serde_json::from_str(text).map_err(|e| FrameError::bad(None, format!("invalid JSON: {e}")))?;

    let id = match wire.id.present() {
        None => None,
        Some(raw) => match integer(raw) {
            Ok((false, n)) if n <= MAX_ID => Some(n),
            _ => return Err(FrameError::bad(None, "id must be an integer from 0 to 2^53-1")),
        },
    };
    let bad = |message: &str| FrameError::bad(id, message);
    let ty = wire.ty.present().ok_or_else(|| bad("missing string field type"))?;
    // Compare the raw text first; only an escaped type name needs decoding.
    let decoded;
    let ty = if ty.contains('\\') {
        decoded = string(ty).ok_or_else(|| bad("type must be a string"))?;
        decoded.as_str()
    } else {
        ty.strip_prefix('"').and_then(|t| t.strip_suffix('"')).ok_or_else(|| bad("type must be a string"))?
    };

    let room = || -> Result<RoomName, FrameError> {
        let raw = wire.room.present().ok_or_else(|| bad("missing string field room"))?;
        let name = string(raw).ok_or_else(|| bad("room must be a string"))?;
        RoomName::new(&name).map_err(|e| FrameError {
            id,
            code: ErrorCode::InvalidRoom,
            message: e.to_string(),
            hello: false,
        })
    };
    let opt_unsigned = |field: &Field<'_>, name: &str| -> Result<Option<u64>, FrameError> {
        field
            .present()
            .map(|raw| unsigned(raw).ok_or_else(|| bad(&format!("{name} must be a non-negative integer"))))
            .transpose()
    };
    let opt_string = |field: &Field<'_>, name: &str| -> Result<Option<String>, FrameError> {
        field.present().map(|raw| string(raw).ok_or_else(|| bad(&format!("{name} must be a string")))).transpose()
    };

    let request = match ty {
        "hello" => {
            let hello = |e: FrameError| FrameError { hello: true, ..e };
            let raw = wire.protocol.present().ok_or_else(|| hello(bad("missing integer field protocol")))?;
            let protocol = unsigned(raw).ok_or_else(|| hello(bad("protocol must be a non-negative integer")))?;
            let token = opt_string(&wire.token, "token").map_err(hello)?;
            let user = opt_string(&wire.user, "user").map_err(hello)?;
            Request::Hello { protocol, token, user }
        }
        "join" => {
            // Type checks of every field come before the room's own rules (§6 order).
            let since = match wire.since.present() {
                None => None,
                Some(raw) => {
                    #[derive(serde::Deserialize)]
                    struct SinceWire<'a> {
                        #[serde(borrow, default)]
                        epoch: Field<'a>,
                        #[serde(borrow, default)]
                        seq: Field<'a>,
                    }
                    let wire_since = serde_json::from_str::<SinceWire<'_>>(raw)
                        .ok()
                        .filter(|_| raw.starts_with('{'))
                        .ok_or_else(|| bad("since must be an object {epoch, seq}"))?;
                    let epoch = wire_since.epoch.present().and_then(string);
                    let seq = wire_since.seq.present().and_then(unsigned);
                    match (epoch, seq) {
                        (Some(epoch), Some(seq)) => Some(Since { epoch, seq }),
                        _ => return Err(bad("since must have a string epoch and a non-negative integer seq")),
                    }
                }
            };
            Request::Join { room: room()?, since }
        }
        "leave" => Request::Leave { room: room()? },
        "send" => {
            let body = wire.body.0.ok_or_else(|| bad("missing field body"))?;
            let ephemeral = match wire.ephemeral.present() {
                None => false,
                Some("true") => true,
                Some("false") => false,
                Some(_) => return Err(bad("ephemeral must be a boolean")),
            };
            let key = opt_string(&wire.key, "key")?;
            if key.as_ref().is_some_and(|k| k.is_empty() || k.len() > MAX_KEY_LEN) {
                return Err(bad("key must be 1 to 128 bytes"));
            }
            let room = room()?;
            let body = Bytes::copy_from_slice(body.get().as_bytes());
            Request::Send { room, body, key: if ephemeral { None } else { key }, ephemeral }
        }
        "history" => {
            let before = opt_unsigned(&wire.before, "before")?;
            let after = opt_unsigned(&wire.after, "after")?;
            let limit = match wire.limit.present() {
                None => None,
                Some(raw) => match integer(raw) {
                    Ok((false, n)) if n > 0 => Some(n),
                    _ => return Err(bad("limit must be a positive integer")),
                },
            };
            Request::History { room: room()?, before, after, limit }
        }
        "presence" => Request::Presence { room: room()? },
        "refresh" => {
            let token = opt_string(&wire.token, "token")?.ok_or_else(|| bad("missing string field token"))?;
            Request::Refresh { token }
        }
        "ping" => Request::Ping,
        "pong" => Request::Pong,
        other => {
            let shown: String = other.chars().take(32).collect();
            return Err(bad(&format!("unknown type {shown:?}")));
        }
    };
    Ok(ClientFrame { id, request })
}

// ---------------------------------------------------------------------------------------------
// Server frames. Each function returns the frame's bytes, ready to be shared by every recipient.

#[cfg(test)]
mod tests {
    use super::*;

    fn err(frame: &str) -> FrameError {
        parse(frame.as_bytes()).unwrap_err()
    }

    #[test]
    fn parses_every_request() {
        let f = parse(br#"{"type":"hello","id":1,"protocol":1,"user":"alice","extra":[1]}"#).unwrap();
        assert_eq!(f.request, Request::Hello { protocol: 1, token: None, user: Some("alice".into()) });
        let f = parse(br#"{"type":"join","id":2,"room":"lobby","since":{"epoch":"e1","seq":41}}"#).unwrap();
        assert_eq!(
            f.request,
            Request::Join { room: RoomName::new("lobby").unwrap(), since: Some(Since { epoch: "e1".into(), seq: 41 }) }
        );
        let f = parse(br#"{"type":"send","room":"r","body":null,"key":"k","ephemeral":false}"#).unwrap();
        assert_eq!(f.id, None);
        assert!(
            matches!(f.request, Request::Send { ref body, key: Some(_), ephemeral: false, .. } if &body[..] == b"null")
        );
        let f = parse(br#"{"type":"history","id":5,"room":"r","before":58,"limit":50}"#).unwrap();
        assert!(matches!(f.request, Request::History { before: Some(58), after: None, limit: Some(50), .. }));
        assert_eq!(parse(br#"{"type":"ping","id":9}"#).unwrap().id, Some(9));
        assert_eq!(parse(br#"{"type":"\u0070ong"}"#).unwrap().request, Request::Pong);
        let f = parse(br#"{"type":"refresh","id":7,"token":"t.u.v"}"#).unwrap();
        assert_eq!((f.id, f.request), (Some(7), Request::Refresh { token: "t.u.v".into() }));
    }

    #[test]
    fn refresh_needs_a_string_token() {
        for bad in [
            r#"{"type":"refresh","id":7}"#,
            r#"{"type":"refresh","id":7,"token":null}"#,
            r#"{"type":"refresh","id":7,"token":5}"#,
        ] {
            let e = err(bad);
            assert_eq!((e.code, e.id), (ErrorCode::BadFrame, Some(7)), "{bad}");
        }
    }

    #[test]
    fn body_is_passed_through_as_sent() {
        let f = parse(b"{\"type\":\"send\",\"room\":\"r\",\"body\":  {\"a\" :\r\n [1,\t2.50, \"\\u00e9 \\\" x\"]}  }")
            .unwrap();
        match f.request {
            Request::Send { body, .. } => {
                assert_eq!(&body[..], b"{\"a\" :\r\n [1,\t2.50, \"\\u00e9 \\\" x\"]}");
                assert_eq!(&compact(body)[..], br#"{"a":[1,2.50,"\u00e9 \" x"]}"#);
            }
            other => panic!("{other:?}"),
        }
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(serde_json::Value::from),
            "[ \t\n\"\\\\a-zé:,{}\\[\\]]{0,12}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                proptest::collection::btree_map("[ a-z\"\\\\]{0,6}", inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// Any JSON, however it is spaced, compacts to what a compact writer writes.
        #[test]
        fn compact_is_the_compact_form(value in json_value()) {
            let pretty = Bytes::from(serde_json::to_vec_pretty(&value).unwrap());
            let compact_form = Bytes::from(serde_json::to_vec(&value).unwrap());
            proptest::prop_assert_eq!(&compact(pretty)[..], &compact_form[..]);
            proptest::prop_assert_eq!(&compact(compact_form.clone())[..], &compact_form[..]);
        }
    }

    #[test]
    fn compact_keeps_strings_whole() {
        assert_eq!(
            &compact(Bytes::from_static(br#" [ "a b" , "c\"  d\\" , {"e" : " "} ] "#))[..],
            br#"["a b","c\"  d\\",{"e":" "}]"#
        );
        assert_eq!(
            &compact(Bytes::from_static(br#"[ "\\" , " x" ]"#))[..],
            br#"["\\"," x"]"#,
            "an escaped backslash, then the quote"
        );
        assert_eq!(&compact(Bytes::from_static(b"null"))[..], b"null");
    }

    #[test]
    fn ids_are_checked() {
        assert_eq!(parse(br#"{"type":"ping","id":9007199254740991}"#).unwrap().id, Some(MAX_ID));
        for bad in ["1.0", "-1", "9007199254740992", "\"1\"", "1e2", "true"] {
            let e = err(&format!(r#"{{"type":"ping","id":{bad}}}"#));
            assert_eq!((e.code, e.id), (ErrorCode::BadFrame, None), "{bad}");
        }
    }

    #[test]
    fn errors_echo_a_valid_id() {
        let e = err(r#"{"type":"nope","id":7}"#);
        assert_eq!((e.code, e.id), (ErrorCode::BadFrame, Some(7)));
        let e = err(r#"{"type":"join","id":8,"room":"bad room"}"#);
        assert_eq!((e.code, e.id), (ErrorCode::InvalidRoom, Some(8)));
        // an ill-typed field outranks an invalid room
        let e = err(r#"{"type":"join","id":8,"room":"bad room","since":3}"#);
        assert_eq!((e.code, e.id), (ErrorCode::BadFrame, Some(8)));
        let e = err(r#"{"type":"send","id":9,"room":"r"}"#);
        assert_eq!((e.code, e.id), (ErrorCode::BadFrame, Some(9)));
        let e = err(r#"{"type":"history","id":10,"room":"r","limit":0}"#);
        assert_eq!((e.code, e.id), (ErrorCode::BadFrame, Some(10)));
        let e = err(r#"{"type":"send","id":11,"room":"r","body":1,"key":""}"#);
        assert_eq!((e.code, e.id), (ErrorCode::BadFrame, Some(11)));
        let e = err(r#"{"id":12}"#);
        assert_eq!((e.code, e.id), (ErrorCode::BadFrame, Some(12)));
    }

    #[test]
    fn rejects_malformed_frames() {
        for bad in
            ["", "[]", "1", "\"x\"", "{", "{\"type\":\"ping\"", "{} {}", "nul", "{\"type\":\"ping\",\"type\":\"ping\"}"]
        {
            assert_eq!(parse(bad.as_bytes()).unwrap_err().code, ErrorCode::BadFrame, "{bad:?}");
        }
        assert_eq!(parse(b"{\"type\":\"p\xffng\"}").unwrap_err().code, ErrorCode::BadFrame);
        for lone in [r#""\ud800""#, r#""\udc00""#, r#""\ud800\u0041""#, r#""a\ud800"#] {
            let frame = format!(r#"{{"type":"send","room":"r","body":{lone}}}"#);
            assert_eq!(parse(frame.as_bytes()).unwrap_err().code, ErrorCode::BadFrame, "{lone}");
        }
        let pair = r#"{"type":"send","room":"r","body":"\ud83d\ude00"}"#;
        assert!(parse(pair.as_bytes()).is_ok());
    }

    #[test]
    fn depth_is_bounded_without_recursion() {
        let deep = format!(r#"{{"type":"send","room":"r","body":{}1{}}}"#, "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(parse(deep.as_bytes()).unwrap_err().code, ErrorCode::BadFrame);
        let ok = format!(r#"{{"type":"send","room":"r","body":{}1{}}}"#, "[".repeat(63), "]".repeat(63));
        assert!(parse(ok.as_bytes()).is_ok());
        let over = format!(r#"{{"type":"send","room":"r","body":{}1{}}}"#, "[".repeat(64), "]".repeat(64));
        assert!(parse(over.as_bytes()).is_err());
        // brackets inside strings do not count
        let quoted = format!(r#"{{"type":"send","room":"r","body":"{}"}}"#, "[".repeat(1000));
        assert!(parse(quoted.as_bytes()).is_ok());
    }
}
