//! What travels on a room's pub/sub channel: a stored message, written by `lua/publish.lua`,
//! or one of the transient deliveries of chat-core's shared encoding
//! ([`chat_core::broker::wire`]), which the notices channel (`Keys::notices`) carries too.
//! A one-letter kind, a header of decimal numbers, a newline, then raw bytes:
//!
//! ```text
//! S<seq> <ts> <epoch len> <from len> <id> <body len>\n<epoch><from><body>   a stored message
//! ```
//!
//! `lua/publish.lua` publishes a batch's messages as one payload, their records back to back.
//! A record without its body length (the form before batches) takes the rest of the payload.

use chat_core::broker::wire::{self, numbers, split_str};
use chat_core::broker::Transient;

/// One stored message of a channel message, borrowing from the payload.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Stored<'a> {
    pub(crate) seq: u64,
    pub(crate) ts: u64,
    pub(crate) epoch: &'a str,
    pub(crate) from: &'a str,
    pub(crate) body: &'a [u8],
    /// The message's id (Redis's clock in µs when it was stored; see lua/publish.lua).
    pub(crate) id: u64,
}

/// One decoded channel message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Wire<'a> {
    /// One or more stored messages, in their order.
    Stored(Vec<Stored<'a>>),
    /// Anything [`wire::decode_transient`] reads.
    Transient(Transient),
}

/// Decodes a channel message; `None` for anything malformed.
pub(crate) fn decode(payload: &[u8]) -> Option<Wire<'_>> {
    if payload.first() != Some(&b'S') {
        return wire::decode_transient(payload).map(Wire::Transient);
    }
    let mut records = Vec::with_capacity(1);
    let mut rest = payload;
    while !rest.is_empty() {
        let (kind, header, data) = wire::split(rest)?;
        if kind != b'S' {
            return None;
        }
        let (seq, ts, epoch_len, from_len, id, body_len) = match numbers::<6>(header) {
            Some([seq, ts, epoch_len, from_len, id, body_len]) => (seq, ts, epoch_len, from_len, id, Some(body_len)),
            None => {
                let [seq, ts, epoch_len, from_len, id] = numbers::<5>(header)?;
                (seq, ts, epoch_len, from_len, id, None)
            }
        };
        let (epoch, data) = split_str(data, epoch_len)?;
        let (from, data) = split_str(data, from_len)?;
        let (body, next) = match body_len {
            Some(len) => {
                let len = usize::try_from(len).ok().filter(|&len| len <= data.len())?;
                data.split_at(len)
            }
            None => (data, &data[data.len()..]),
        };
        records.push(Stored { seq, ts, epoch, from, body, id });
        rest = next;
    }
    Some(Wire::Stored(records))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let s = b"S12 99 2 3 1764201600123456\ne1bob\"hi\"";
        let id = 1_764_201_600_123_456;
        let hi = Stored { seq: 12, ts: 99, epoch: "e1", from: "bob", body: b"\"hi\"", id };
        assert_eq!(decode(s), Some(Wire::Stored(vec![hi])), "the form before batches");
        let batch = b"S12 99 2 3 1764201600123456 4\ne1bob\"hi\"S13 99 2 3 1764201600123457 2\ne1amy{}";
        let hi = Stored { seq: 12, ts: 99, epoch: "e1", from: "bob", body: b"\"hi\"", id };
        let next = Stored { seq: 13, ts: 99, epoch: "e1", from: "amy", body: b"{}", id: id + 1 };
        assert_eq!(decode(batch), Some(Wire::Stored(vec![hi, next])), "a batch");
        let joined = Transient::MemberJoined("bob".into());
        assert_eq!(
            decode(&wire::encode_transient(&joined)),
            Some(Wire::Transient(joined)),
            "what lua/sweep.lua writes"
        );
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            &b""[..],
            b"S",
            b"S1 2 3 4\nabc",
            b"S1 2 9 9 1\nab",
            b"Sx 2 1 1 1\nab",
            b"X\n",
            b"J1\nbob",
            b"S1 2 1 1 1 1\nab",
            b"S1 2 1 1 1 5\nabcd",
            b"S1 2 1 1 1 0\nabJ1\nbob",
            b"S1 2 1 1 1 0\nabS",
        ] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
    }
}
