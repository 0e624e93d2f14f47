//! A room's records in the stream, one kind per letter in chat-core's wire layout
//! ([`chat_core::broker::wire`]):
//!
//! ```text
//! S<seq> <ts> <epoch len> <from len>\n<epoch><from><body>       a message; the room's head is seq
//! T<seq> <head> <ts> <epoch len> <from len>\n<epoch><from>      seq was erased; the head stays
//! E<head> <epoch len>\n<epoch>                                  the epoch starts after seq head
//! ```
//!
//! Every record says the room's *head* (its latest seq) once it is stored, so the last record
//! of a room's subject is all a publisher needs to read to number the next message.

use bytes::Bytes;
use chat_core::broker::wire::{numbers, split, split_str};

/// One record of a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    /// The epoch it belongs to.
    pub(crate) epoch: String,
    /// The room's latest seq once it is stored.
    pub(crate) head: u64,
    pub(crate) kind: Kind,
}

/// What a record is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A message at seq `head`.
    Message { ts: u64, from: String, body: Bytes },
    /// The message at `seq` was erased; its sender and time stay.
    Tombstone { seq: u64, ts: u64, from: String },
    /// The epoch begins: its first message is `head + 1`.
    Start,
}

impl Record {
    /// Encodes a message record.
    pub(crate) fn message(epoch: &str, seq: u64, ts: u64, from: &str, body: &[u8]) -> Vec<u8> {
        let mut out = format!("S{seq} {ts} {} {}\n{epoch}{from}", epoch.len(), from.len()).into_bytes();
        out.extend_from_slice(body);
        out
    }

    /// Encodes a tombstone record.
    pub(crate) fn tombstone(epoch: &str, seq: u64, head: u64, ts: u64, from: &str) -> Vec<u8> {
        format!("T{seq} {head} {ts} {} {}\n{epoch}{from}", epoch.len(), from.len()).into_bytes()
    }

    /// Encodes an epoch's start record.
    pub(crate) fn start(epoch: &str, head: u64) -> Vec<u8> {
        format!("E{head} {}\n{epoch}", epoch.len()).into_bytes()
    }

    /// Decodes a record; `None` for anything else (a transient delivery, garbage).
    pub(crate) fn decode(payload: &Bytes) -> Option<Record> {
        let (kind, header, data) = split(payload)?;
        let body_at = |rest: &[u8]| payload.len() - rest.len();
        match kind {
            b'S' => {
                let [seq, ts, epoch_len, from_len] = numbers::<4>(header)?;
                let (epoch, data) = split_str(data, epoch_len)?;
                let (from, body) = split_str(data, from_len)?;
                let body = payload.slice(body_at(body)..);
                Some(Record { epoch: epoch.into(), head: seq, kind: Kind::Message { ts, from: from.into(), body } })
            }
            b'T' => {
                let [seq, head, ts, epoch_len, from_len] = numbers::<5>(header)?;
                let (epoch, data) = split_str(data, epoch_len)?;
                let (from, rest) = split_str(data, from_len)?;
                (rest.is_empty() && seq <= head).then(|| Record {
                    epoch: epoch.into(),
                    head,
                    kind: Kind::Tombstone { seq, ts, from: from.into() },
                })
            }
            b'E' => {
                let [head, epoch_len] = numbers::<2>(header)?;
                let (epoch, rest) = split_str(data, epoch_len)?;
                rest.is_empty().then(|| Record { epoch: epoch.into(), head, kind: Kind::Start })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let m = Bytes::from(Record::message("e1", 7, 99, "b\nob", b"{\"a\":1}"));
        let body = Bytes::from_static(b"{\"a\":1}");
        assert_eq!(
            Record::decode(&m),
            Some(Record { epoch: "e1".into(), head: 7, kind: Kind::Message { ts: 99, from: "b\nob".into(), body } })
        );
        let t = Bytes::from(Record::tombstone("e1", 3, 7, 98, "al"));
        let tombstone = Kind::Tombstone { seq: 3, ts: 98, from: "al".into() };
        assert_eq!(Record::decode(&t), Some(Record { epoch: "e1".into(), head: 7, kind: tombstone }));
        let e = Bytes::from(Record::start("e2", 40));
        assert_eq!(Record::decode(&e), Some(Record { epoch: "e2".into(), head: 40, kind: Kind::Start }));
    }

    #[test]
    fn rejects_garbage() {
        for bad in [&b""[..], b"S1 2 3\nabc", b"S1 2 9 9\nab", b"T5 4 1 1 1\nab", b"E1 1\nab", b"J\nbob", b"M1 1\nab"] {
            assert_eq!(Record::decode(&Bytes::copy_from_slice(bad)), None, "{bad:?}");
        }
    }
}
