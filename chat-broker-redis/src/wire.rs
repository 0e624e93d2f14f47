//! What travels on a room's pub/sub channel: a stored message, written by `lua/publish.lua`,
//! or one of the transient deliveries of chat-core's shared encoding
//! ([`chat_core::broker::wire`]), which the notices channel (`Keys::notices`) carries too.
//! A one-letter kind, a header of decimal numbers, a newline, then raw bytes:
//!
//! ```text
//! S<seq> <ts> <epoch len> <from len> <id>\n<epoch><from><body>   a stored message
//! ```

use chat_core::broker::wire::{self, numbers, split_str};
use chat_core::broker::Transient;

/// One decoded channel message, borrowing from the payload.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Wire<'a> {
    /// `id`: the message's id (Redis's clock in µs when it was stored; see lua/publish.lua).
    Stored { seq: u64, ts: u64, epoch: &'a str, from: &'a str, body: &'a [u8], id: u64 },
    /// Anything [`wire::decode_transient`] reads.
    Transient(Transient),
}

/// Decodes a channel message; `None` for anything malformed.
pub(crate) fn decode(payload: &[u8]) -> Option<Wire<'_>> {
    let (kind, header, data) = wire::split(payload)?;
    match kind {
        b'S' => {
            let [seq, ts, epoch_len, from_len, id] = numbers::<5>(header)?;
            let (epoch, data) = split_str(data, epoch_len)?;
            let (from, body) = split_str(data, from_len)?;
            Some(Wire::Stored { seq, ts, epoch, from, body, id })
        }
        _ => wire::decode_transient(payload).map(Wire::Transient),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let s = b"S12 99 2 3 1764201600123456\ne1bob\"hi\"";
        let id = 1_764_201_600_123_456;
        assert_eq!(decode(s), Some(Wire::Stored { seq: 12, ts: 99, epoch: "e1", from: "bob", body: b"\"hi\"", id }));
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
        ] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
    }
}
