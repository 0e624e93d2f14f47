//! The `chat/1` frame parser (chat-core protocol.rs): no panic on any bytes; what it accepts
//! is a JSON object with a `type`, and written back as JSON (the fields it parsed, in the
//! protocol's shapes) it parses to the same request; what it refuses is `bad_frame` or
//! `invalid_room`, and the error frame the engine would send for it is well-formed.

#![no_main]

use chat_core::bench::encode_error;
use chat_core::protocol::{parse, ClientFrame, ErrorCode, Request, MAX_ID};
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;

use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

/// The request as a client would write it.
fn serialize(frame: &ClientFrame) -> String {
    let mut m = Map::new();
    let mut raw_body = None;
    let ty = match &frame.request {
        Request::Hello { protocol, token, user } => {
            m.insert("protocol".into(), json!(protocol));
            if let Some(t) = token {
                m.insert("token".into(), json!(t));
            }
            if let Some(u) = user {
                m.insert("user".into(), json!(u));
            }
            "hello"
        }
        Request::Join { room, since } => {
            m.insert("room".into(), json!(room.as_str()));
            if let Some(s) = since {
                m.insert("since".into(), json!({"epoch": s.epoch, "seq": s.seq}));
            }
            "join"
        }
        Request::Leave { room } => {
            m.insert("room".into(), json!(room.as_str()));
            "leave"
        }
        Request::Send { room, body, key, ephemeral } => {
            m.insert("room".into(), json!(room.as_str()));
            raw_body = Some(std::str::from_utf8(body).expect("an accepted body is UTF-8"));
            if let Some(k) = key {
                m.insert("key".into(), json!(k));
            }
            if *ephemeral {
                m.insert("ephemeral".into(), json!(true));
            }
            "send"
        }
        Request::History { room, before, after, limit } => {
            m.insert("room".into(), json!(room.as_str()));
            for (k, v) in [("before", before), ("after", after), ("limit", limit)] {
                if let Some(v) = v {
                    m.insert(k.into(), json!(v));
                }
            }
            "history"
        }
        Request::Presence { room } => {
            m.insert("room".into(), json!(room.as_str()));
            "presence"
        }
        Request::Refresh { token } => {
            m.insert("token".into(), json!(token));
            "refresh"
        }
        Request::Ping => "ping",
        Request::Pong => "pong",
    };
    m.insert("type".into(), json!(ty));
    if let Some(id) = frame.id {
        m.insert("id".into(), json!(id));
    }
    let mut text = serde_json::to_string(&Value::Object(m)).expect("JSON");
    if let Some(body) = raw_body {
        // The body exactly as the client wrote it (a `Value` could not hold every number).
        text.pop();
        text.push_str(",\"body\":");
        text.push_str(body);
        text.push('}');
    }
    text
}

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok(frame) => {
            let v: HashMap<String, &RawValue> =
                serde_json::from_slice(data).expect("an accepted frame is a JSON object");
            assert!(v.get("type").is_some_and(|t| t.get().starts_with('"')), "an accepted frame has a type");
            assert!(frame.id.is_none_or(|id| id <= MAX_ID));
            let again = serialize(&frame);
            let reparsed = parse(again.as_bytes()).unwrap_or_else(|e| panic!("{again} refused: {e:?}"));
            assert_eq!(frame, reparsed, "{again}");
        }
        Err(e) => {
            assert!(matches!(e.code, ErrorCode::BadFrame | ErrorCode::InvalidRoom), "{e:?}");
            assert!(e.id.is_none_or(|id| id <= MAX_ID));
            assert!(!e.message.is_empty());
            let reply = encode_error(e.id, e.code, &e.message);
            assert_eq!(chat_fuzz::check_reply(&reply), chat_fuzz::Kind::Other);
        }
    }
});
