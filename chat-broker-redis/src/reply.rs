//! Reading script replies (`redis::Value`) without trusting them: every shape is checked, and a
//! reply that does not fit is an `Internal` error, never a panic. Owned bulk strings are moved,
//! not copied, into the messages they carry.

use std::sync::Arc;

use bytes::Bytes;
use chat_core::broker::Message;
use redis::Value;

/// The bytes of a bulk or simple string.
pub(crate) fn bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        _ => None,
    }
}

/// A UTF-8 string.
pub(crate) fn string(v: Value) -> Option<String> {
    String::from_utf8(bytes(v)?).ok()
}

/// A non-negative integer, as an integer or as decimal text.
pub(crate) fn uint(v: &Value) -> Option<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

/// The elements of an array reply.
pub(crate) fn array(v: Value) -> Option<Vec<Value>> {
    match v {
        Value::Array(items) => Some(items),
        _ => None,
    }
}

/// One stream entry `[id, [field, value, ...]]` as a message (its entry id is `<seq>-0`), with
/// the message's id (field `i`; `None` for an entry without one). An entry without a body
/// (`b`) is an erased message: a tombstone.
pub(crate) fn entry(v: Value) -> Option<(Message, Option<u64>)> {
    let mut parts = array(v)?.into_iter();
    let (id, fields) = (parts.next()?, parts.next()?);
    let id = bytes(id)?;
    let seq_text = id.split(|&b| b == b'-').next()?;
    let seq = std::str::from_utf8(seq_text).ok()?.parse().ok()?;
    let (mut from, mut ts, mut body, mut message_id) = (None, None, None, None);
    let mut fields = array(fields)?.into_iter();
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        match bytes(name)?.as_slice() {
            b"f" => from = Some(Arc::<str>::from(string(value)?)),
            b"t" => ts = uint(&value),
            b"b" => body = Some(Bytes::from(bytes(value)?)),
            b"i" => message_id = uint(&value),
            _ => {}
        }
    }
    Some((Message { seq, from: from?, ts: ts?, body }, message_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn entries() {
        let fields = Value::Array(vec![
            bulk("f"),
            bulk("al"),
            bulk("t"),
            bulk("5"),
            bulk("b"),
            bulk("{}"),
            bulk("x"),
            bulk("9"),
            bulk("i"),
            bulk("1764201600123456"),
        ]);
        let (m, id) = entry(Value::Array(vec![bulk("42-0"), fields])).unwrap();
        assert_eq!(
            (m.seq, &*m.from, m.ts, m.body.as_deref(), id),
            (42, "al", 5, Some(&b"{}"[..]), Some(1_764_201_600_123_456))
        );
        assert_eq!(entry(Value::Array(vec![bulk("42-0"), Value::Array(vec![bulk("f")])])), None);
        assert_eq!(entry(Value::Int(3)), None);
    }
}
