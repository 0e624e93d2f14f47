//! What the fuzz targets share: one current-thread runtime and one engine per process (small
//! limits, so that an input can reach them), and the checks of what a server writes: every
//! `chat/1` frame one JSON object of a known type, every WebSocket frame one a server may send.

use std::sync::OnceLock;
use std::time::Duration;

use chat_core::protocol::{ByeReason, ErrorCode};
use chat_core::{Engine, Stats};
use serde_json::Value;
use tokio::runtime::Runtime;

/// The process's runtime: current-thread, with time (the engine's timeouts).
pub fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_time().build().expect("a runtime"))
}

/// The largest frame the fuzzed engine takes: small, so that inputs reach the limit.
pub const MAX_FRAME: usize = 1024;

/// The process's engine: a `MemoryBroker` of its own and small limits.
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        runtime().block_on(async {
            Engine::builder()
                .node_id("fuzz")
                .tune(|c| {
                    c.max_frame = MAX_FRAME;
                    c.max_body = 256;
                    c.history_size = 8;
                    c.history_max_limit = 4;
                    c.max_history_bytes = 64 << 10;
                    c.outbox_frames = 32;
                    c.outbox_bytes = 8 << 10;
                    c.max_rooms_per_session = 4;
                    c.max_rooms = 64;
                    c.rate_limit_strikes = 8;
                    c.close_timeout = Duration::from_millis(100);
                })
                .build()
                .await
                .expect("the in-memory broker attaches")
        })
    })
}

/// Panics unless the engine holds nothing for anyone: no connection, session, room or queued
/// frame.
pub fn assert_idle(engine: &Engine) {
    let stats = engine.stats();
    assert_eq!(
        (stats.connections, stats.sessions, stats.rooms, stats.queued_frames, stats.queued_bytes),
        (0, 0, 0, 0, 0),
        "the engine's accounting after the connection ended: {stats:?}"
    );
    let _: Stats = stats;
}

/// Every `type` a server frame may have (PROTOCOL.md).
const SERVER_TYPES: &[&str] = &[
    "welcome",
    "refreshed",
    "joined",
    "left",
    "sent",
    "history",
    "presence",
    "message",
    "member_joined",
    "member_left",
    "reset",
    "invite",
    "kicked",
    "error",
    "bye",
    "ping",
    "pong",
];

/// What a server frame told about the session's end.
#[derive(Debug, PartialEq, Eq)]
pub enum Kind {
    /// A fatal error: a `bye` follows.
    Fatal,
    /// `bye`: nothing follows.
    Bye,
    /// Anything else.
    Other,
}

fn is_u64(v: &Value) -> bool {
    v.as_u64().is_some()
}

fn is_str(v: &Value) -> bool {
    v.is_string()
}

/// Checks one frame the server wrote: one JSON object in UTF-8, of a known `type`, with the
/// fields that type has (PROTOCOL.md). Panics otherwise.
pub fn check_reply(frame: &[u8]) -> Kind {
    let text = std::str::from_utf8(frame).unwrap_or_else(|_| panic!("a frame that is not UTF-8: {frame:?}"));
    let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("a frame that is not JSON ({e}): {text}"));
    let obj = v.as_object().unwrap_or_else(|| panic!("a frame that is not an object: {text}"));
    let ty = obj.get("type").and_then(Value::as_str).unwrap_or_else(|| panic!("a frame without a type: {text}"));
    assert!(SERVER_TYPES.contains(&ty), "unknown type: {text}");
    if let Some(id) = obj.get("id") {
        assert!(id.as_u64().is_some_and(|id| id <= chat_core::protocol::MAX_ID), "bad id: {text}");
    }
    let has = |k: &str, f: fn(&Value) -> bool| obj.get(k).is_some_and(f);
    let ok = match ty {
        "welcome" => {
            has("session", is_str)
                && has("user", is_str)
                && has("node", is_str)
                && has("heartbeat_ms", is_u64)
                && has("max_frame", is_u64)
        }
        "joined" => {
            has("room", is_str) && has("epoch", is_str) && has("seq", is_u64) && has("recovered", Value::is_boolean)
        }
        "left" | "presence" | "sent" | "history" => has("room", is_str),
        "message" => has("room", is_str) && has("from", is_str) && has("ts", is_u64) && obj.contains_key("body"),
        "member_joined" | "member_left" => has("room", is_str) && has("user", is_str),
        "reset" => has("room", is_str) && has("epoch", is_str),
        "error" => {
            let code =
                obj.get("code").and_then(Value::as_str).unwrap_or_else(|| panic!("an error without code: {text}"));
            let known = ErrorCode::from_wire(code).unwrap_or_else(|| panic!("unknown code: {text}"));
            assert!(has("message", is_str), "an error without message: {text}");
            return if known.is_fatal() { Kind::Fatal } else { Kind::Other };
        }
        "bye" => {
            let reason =
                obj.get("reason").and_then(Value::as_str).unwrap_or_else(|| panic!("a bye without reason: {text}"));
            assert!(ByeReason::from_wire(reason).is_some(), "unknown bye reason: {text}");
            assert!(has("reconnect", Value::is_boolean), "{text}");
            return Kind::Bye;
        }
        _ => true,
    };
    assert!(ok, "a {ty} frame without its fields: {text}");
    if ty == "history" {
        let messages = obj.get("messages").and_then(Value::as_array).unwrap_or_else(|| panic!("{text}"));
        assert!(messages.iter().all(|m| m["type"] == "message"), "{text}");
    }
    if ty == "presence" {
        assert!(obj.get("members").is_some_and(Value::is_array), "{text}");
    }
    Kind::Other
}

/// Checks a whole session's frames in order: each one [`check_reply`], a fatal error is
/// followed by `bye`, and nothing follows a `bye`.
pub fn check_session<'a>(frames: impl IntoIterator<Item = &'a [u8]>) {
    let mut last = None;
    for frame in frames {
        assert_ne!(last, Some(Kind::Bye), "a frame after bye: {:?}", String::from_utf8_lossy(frame));
        let kind = check_reply(frame);
        if last == Some(Kind::Fatal) {
            assert_eq!(kind, Kind::Bye, "a fatal error not followed by bye");
        }
        last = Some(kind);
    }
    assert_ne!(last, Some(Kind::Fatal), "a fatal error not followed by bye");
}

/// Splits what a WebSocket server wrote into its frames and checks each one: FIN set, no
/// reserved bits but RSV1 on a compressed text message (which must inflate), unmasked, the
/// shortest length encoding, text (a `chat/1` frame), pong (at most 125 bytes) or close (last,
/// with a code a server may send). Returns the text frames, inflated.
pub fn check_ws_output(mut out: &[u8]) -> Vec<Vec<u8>> {
    let mut texts = Vec::new();
    let mut closed = false;
    while !out.is_empty() {
        assert!(!closed, "bytes after the close frame");
        assert!(out.len() >= 2, "a truncated frame header");
        let (b0, b1) = (out[0], out[1]);
        assert_eq!(b0 & 0xb0, 0x80, "FIN without reserved bits other than RSV1");
        assert_eq!(b1 & 0x80, 0, "a server's frames are not masked");
        let (header, len) = match b1 & 0x7f {
            126 => {
                let n = u16::from_be_bytes([out[2], out[3]]) as usize;
                assert!(n >= 126, "16-bit length for {n}");
                (4, n)
            }
            127 => {
                let n = u64::from_be_bytes(out[2..10].try_into().expect("8 bytes"));
                assert!(n > 0xffff && n >> 63 == 0, "64-bit length {n}");
                (10, n as usize)
            }
            n => (2, n as usize),
        };
        assert!(out.len() >= header + len, "a truncated frame");
        let payload = &out[header..header + len];
        match b0 & 0x0f {
            0x1 if b0 & 0x40 != 0 => {
                let text = chat_transport_ws::fuzzing::inflate_sent(payload).expect("a compressed message inflates");
                texts.push(text);
            }
            0x1 => texts.push(payload.to_vec()),
            0xA => assert!(len <= 125 && b0 & 0x40 == 0),
            0x8 => {
                assert!(len <= 125 && len != 1 && b0 & 0x40 == 0, "close payload of {len}");
                if len >= 2 {
                    let code = u16::from_be_bytes([payload[0], payload[1]]);
                    assert!(matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999), "close code {code}");
                    assert!(std::str::from_utf8(&payload[2..]).is_ok());
                }
                closed = true;
            }
            op => panic!("a server frame of opcode {op}"),
        }
        out = &out[header + len..];
    }
    texts
}

/// Chunk sizes for in-memory sockets from two fuzz bytes (0: one `Pending` before the next
/// read; both 0: everything at once).
pub fn chunks(a: u8, b: u8) -> Vec<usize> {
    if a == 0 && b == 0 {
        Vec::new()
    } else {
        vec![usize::from(a), usize::from(b)]
    }
}
