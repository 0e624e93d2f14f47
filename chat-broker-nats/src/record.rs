//! A room's records in the stream, one kind per letter in chat-core's wire layout
//! ([`chat_core::broker::wire`]):
//!
//! ```text
//! S<seq> <ts> <prev> <epoch len> <from len>\n<epoch><from><body>    a message; the head is seq
//! T<seq> <head> <ts> <prev> <epoch len> <from len>\n<epoch><from>   seq was erased
//! E<head> <prev> <epoch len>\n<epoch>                               the epoch starts after head
//! ```
//!
//! and, on the room's key subject, an idempotency key restored from the engine's store:
//!
//! ```text
//! K<seq> <epoch len>\n<epoch>                                       the key's message is at seq
//! ```
//!
//! Every record says the room's *head* (its latest seq) once it is stored, so the last record
//! of a room's subject is all a publisher needs to number the next message, and *prev*, the
//! stream sequence of the room's last record its writer saw.
//!
//! # First claim wins
//!
//! A writer appends with `Nats-Expected-Last-Subject-Sequence: prev`, and a single server
//! enforces it exactly. A JetStream *cluster* of NATS 2.9 checks it before replicating, against
//! what is stored, not against what is still being replicated: two writers that read the same
//! last record at the same moment can both be stored (measured: 152 of 200 races on a
//! three-server cluster). So the records themselves decide: a record is **valid** only if the
//! record stored just before it is the one it names as `prev`; the second of two racing writers
//! names a record that is no longer the last, and is ignored by every reader. A reader of the
//! stream compares `prev` with the record it read before ([`View`]); a record delivered live is
//! judged by what one server says it stored before it (`Nats-Last-Sequence`), or, on a cluster,
//! which fills that header in before replicating too, by asking the stream. The writer checks
//! its own record (the first record after `prev` must be its own) and writes again if it lost.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use chat_core::broker::wire::{numbers, split, split_str};
use chat_core::broker::Message;

/// One record of a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    /// The epoch it belongs to.
    pub(crate) epoch: String,
    /// The room's latest seq once it is stored.
    pub(crate) head: u64,
    /// The stream sequence of the room's last record when this one was written (0: none).
    pub(crate) prev: u64,
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
    pub(crate) fn message(epoch: &str, seq: u64, prev: u64, ts: u64, from: &str, body: &[u8]) -> Vec<u8> {
        let mut out = format!("S{seq} {ts} {prev} {} {}\n{epoch}{from}", epoch.len(), from.len()).into_bytes();
        out.extend_from_slice(body);
        out
    }

    /// Encodes a tombstone record.
    pub(crate) fn tombstone(epoch: &str, seq: u64, head: u64, prev: u64, ts: u64, from: &str) -> Vec<u8> {
        format!("T{seq} {head} {ts} {prev} {} {}\n{epoch}{from}", epoch.len(), from.len()).into_bytes()
    }

    /// Encodes an epoch's start record.
    pub(crate) fn start(epoch: &str, head: u64, prev: u64) -> Vec<u8> {
        format!("E{head} {prev} {}\n{epoch}", epoch.len()).into_bytes()
    }

    /// Encodes an idempotency key restored from the engine's store: the message it was sent
    /// with is at `seq` of `epoch` (`K<seq> <epoch len>\n<epoch>`, on the room's key subject).
    pub(crate) fn key(epoch: &str, seq: u64) -> Vec<u8> {
        format!("K{seq} {}\n{epoch}", epoch.len()).into_bytes()
    }

    /// Decodes what [`key`](Self::key) made.
    pub(crate) fn decode_key(payload: &[u8]) -> Option<(String, u64)> {
        let (kind, header, data) = split(payload)?;
        let [seq, epoch_len] = numbers::<2>(header)?;
        let (epoch, rest) = split_str(data, epoch_len)?;
        (kind == b'K' && rest.is_empty() && seq > 0).then(|| (epoch.to_owned(), seq))
    }

    /// Decodes a record; `None` for anything else (a transient delivery, garbage).
    pub(crate) fn decode(payload: &Bytes) -> Option<Record> {
        let (kind, header, data) = split(payload)?;
        let body_at = |rest: &[u8]| payload.len() - rest.len();
        match kind {
            b'S' => {
                let [seq, ts, prev, epoch_len, from_len] = numbers::<5>(header)?;
                let (epoch, data) = split_str(data, epoch_len)?;
                let (from, body) = split_str(data, from_len)?;
                let body = payload.slice(body_at(body)..);
                let kind = Kind::Message { ts, from: from.into(), body };
                (seq > 0).then(|| Record { epoch: epoch.into(), head: seq, prev, kind })
            }
            b'T' => {
                let [seq, head, ts, prev, epoch_len, from_len] = numbers::<6>(header)?;
                let (epoch, data) = split_str(data, epoch_len)?;
                let (from, rest) = split_str(data, from_len)?;
                (rest.is_empty() && seq > 0 && seq <= head).then(|| Record {
                    epoch: epoch.into(),
                    head,
                    prev,
                    kind: Kind::Tombstone { seq, ts, from: from.into() },
                })
            }
            b'E' => {
                let [head, prev, epoch_len] = numbers::<3>(header)?;
                let (epoch, rest) = split_str(data, epoch_len)?;
                rest.is_empty().then(|| Record { epoch: epoch.into(), head, prev, kind: Kind::Start })
            }
            _ => None,
        }
    }
}

/// What a read of a room's records, in stream order, shows: each epoch's messages by seq
/// (erased ones as tombstones) with their stream sequences, where each epoch begins, and the
/// last valid record. Records that lost a race (see the module's notes) are left out.
#[derive(Debug, Default)]
pub(crate) struct View {
    /// The stream sequence of the record read before the next one, if known.
    predecessor: Option<u64>,
    pub(crate) epochs: HashMap<String, EpochView>,
    /// The last valid record's epoch, head and stream sequence.
    pub(crate) last: Option<(String, u64, u64)>,
}

/// One epoch in a [`View`].
#[derive(Debug, Default)]
pub(crate) struct EpochView {
    /// The seq its first record read comes after.
    pub(crate) base: Option<u64>,
    /// Messages by seq, with the stream sequence of the record that shows them.
    pub(crate) messages: BTreeMap<u64, (u64, Message)>,
}

impl View {
    /// The stream sequence of the last record read (valid or not); 0 if none.
    pub(crate) fn read_to(&self) -> u64 {
        self.predecessor.unwrap_or(0)
    }

    /// Whether a record naming `prev`, read after the one at `predecessor`, won its race: a
    /// record that names one older than the record stored before it came second. (A `prev`
    /// newer than that is a record since erased: still valid.)
    pub(crate) fn valid(prev: u64, predecessor: Option<u64>) -> bool {
        // A record written to an empty room (`prev` 0) is checked exactly even by a 2.9
        // cluster; the records before it were purged or aged out.
        prev == 0 || predecessor.is_none_or(|p| prev >= p)
    }

    /// Adds the record at stream sequence `sseq`, the next one read; false if it is not valid.
    pub(crate) fn add(&mut self, sseq: u64, record: Record) -> bool {
        let valid = View::valid(record.prev, self.predecessor);
        self.predecessor = Some(sseq);
        if !valid {
            return false;
        }
        let epoch = self.epochs.entry(record.epoch.clone()).or_default();
        let first = match &record.kind {
            Kind::Message { .. } => record.head - 1,
            Kind::Tombstone { seq, .. } => seq - 1,
            Kind::Start => record.head,
        };
        epoch.base = Some(epoch.base.map_or(first, |b| b.min(first)));
        match record.kind {
            Kind::Message { ts, from, body } => {
                let seq = record.head;
                let message = Message { seq, from: from.into(), ts, body: Some(body) };
                epoch.messages.entry(seq).or_insert((sseq, message));
            }
            Kind::Tombstone { seq, ts, from } => {
                epoch.messages.insert(seq, (sseq, Message { seq, from: from.into(), ts, body: None }));
            }
            // An epoch that starts again further on (from the engine's store, when the stream
            // came back older): what the stream held of it before is superseded, and the
            // store has it.
            Kind::Start => {
                epoch.messages.clear();
                epoch.base = Some(record.head);
            }
        }
        self.last = Some((record.epoch, record.head, sseq));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let m = Bytes::from(Record::message("e1", 7, 12, 99, "b\nob", b"{\"a\":1}"));
        let body = Bytes::from_static(b"{\"a\":1}");
        let kind = Kind::Message { ts: 99, from: "b\nob".into(), body };
        assert_eq!(Record::decode(&m), Some(Record { epoch: "e1".into(), head: 7, prev: 12, kind }));
        let t = Bytes::from(Record::tombstone("e1", 3, 7, 13, 98, "al"));
        let tombstone = Kind::Tombstone { seq: 3, ts: 98, from: "al".into() };
        assert_eq!(Record::decode(&t), Some(Record { epoch: "e1".into(), head: 7, prev: 13, kind: tombstone }));
        assert_eq!(Record::decode_key(&Record::key("e1", 9)), Some(("e1".to_owned(), 9)));
        assert_eq!(Record::decode_key(b"K9 5\ne1"), None);
        let e = Bytes::from(Record::start("e2", 40, 0));
        assert_eq!(Record::decode(&e), Some(Record { epoch: "e2".into(), head: 40, prev: 0, kind: Kind::Start }));
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            &b""[..],
            b"S1 2 3\nabc",
            b"S1 2 0 9 9\nab",
            b"S0 2 0 1 1\nab",
            b"T5 4 1 0 1 1\nab",
            b"E1 0 1\nab",
            b"J\nbob",
        ] {
            assert_eq!(Record::decode(&Bytes::copy_from_slice(bad)), None, "{bad:?}");
        }
    }

    fn message(seq: u64, prev: u64) -> Record {
        Record::decode(&Bytes::from(Record::message("e", seq, prev, 1, "u", b"1"))).unwrap()
    }

    #[test]
    fn the_first_of_two_racing_records_wins() {
        // 1: seq 1; 2 and 3 both wrote seq 2 after 1 (3 lost); 4 wrote seq 3 after 3.
        let mut view = View::default();
        assert!(view.add(1, message(1, 0)));
        assert!(view.add(2, message(2, 1)));
        assert!(!view.add(3, message(2, 1)), "came second");
        assert!(view.add(4, message(3, 3)), "after the loser is fine: it wrote the true head");
        let seqs: Vec<(u64, u64)> = view.epochs["e"].messages.iter().map(|(seq, (sseq, _))| (*seq, *sseq)).collect();
        assert_eq!(seqs, [(1, 1), (2, 2), (3, 4)]);
        assert_eq!(view.last, Some(("e".into(), 3, 4)));
    }

    #[test]
    fn an_epoch_that_starts_again_further_on_drops_what_came_before() {
        let mut view = View::default();
        assert!(view.add(1, message(1, 0)));
        assert!(view.add(2, message(2, 1)));
        let start = Record::decode(&Bytes::from(Record::start("e", 6, 2))).unwrap();
        assert!(view.add(3, start));
        assert!(view.add(4, message(7, 3)));
        assert_eq!(view.epochs["e"].messages.keys().copied().collect::<Vec<_>>(), [7]);
        assert_eq!(view.epochs["e"].base, Some(6));
    }

    #[test]
    fn a_record_written_to_an_empty_room_is_valid_after_anything() {
        let mut view = View::default();
        assert!(view.add(4, message(4, 3)));
        assert!(view.add(9, message(1, 0)), "the room was purged between");
    }

    #[test]
    fn a_record_after_an_erased_one_stays_valid() {
        // 2 was deleted (erased): 3 names it, and is read right after 1.
        let mut view = View::default();
        assert!(view.add(1, message(1, 0)));
        assert!(view.add(3, message(3, 2)));
    }
}
