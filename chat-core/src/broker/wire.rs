//! A compact byte encoding of what a broker carries between nodes without storing it: a room's
//! [`Transient`] deliveries and users' [`Notice`]s. Brokers that move bytes between processes
//! (the Redis and NATS brokers) share it, so a notice or a membership event looks the same on
//! every wire. A one-letter kind, a header of decimal numbers, a newline, then raw bytes:
//!
//! ```text
//! M<ts> <from len>\n<from><body>                                  an ephemeral message
//! J\n<user>                                                       a user's first session joined
//! L\n<user>                                                       a user's last session left
//! I<seq> <room len> <from len> <user len>…\n<room><from><users>   an invite
//! R<room len> <user len>…\n<room><users>                          a kick from a room
//! K<user len>…\n<users>                                           a kick from every node
//! ```
//!
//! Decoding never trusts the bytes: anything malformed is `None`.
//!
//! ```
//! use std::sync::Arc;
//! use chat_core::broker::{wire, Notice, Transient};
//!
//! let joined = Transient::MemberJoined(Arc::from("alice"));
//! assert_eq!(wire::encode_transient(&joined), b"J\nalice");
//! assert_eq!(wire::decode_transient(b"J\nalice"), Some(joined));
//!
//! let users = [Arc::<str>::from("bob")];
//! let bytes = wire::encode_notice(&users, &Notice::Kick).expect("a kick is carried");
//! assert_eq!(wire::decode_notice(&bytes), Some((users.to_vec(), Notice::Kick)));
//! assert_eq!(wire::decode_notice(b"K9\nbob"), None, "a length past the end");
//! ```

use std::sync::Arc;

use bytes::Bytes;

use super::{Notice, Publication, Transient};
use crate::protocol::RoomName;

/// Encodes a transient delivery (`M`, `J` or `L`).
pub fn encode_transient(what: &Transient) -> Vec<u8> {
    match what {
        Transient::Message(p) => {
            let mut out = Vec::with_capacity(32 + p.from.len() + p.body.len());
            out.extend_from_slice(format!("M{} {}\n", p.ts, p.from.len()).as_bytes());
            out.extend_from_slice(p.from.as_bytes());
            out.extend_from_slice(&p.body);
            out
        }
        Transient::MemberJoined(user) => [&b"J\n"[..], user.as_bytes()].concat(),
        Transient::MemberLeft(user) => [&b"L\n"[..], user.as_bytes()].concat(),
    }
}

/// Decodes what [`encode_transient`] made; `None` for anything else.
pub fn decode_transient(payload: &[u8]) -> Option<Transient> {
    let (kind, header, data) = split(payload)?;
    match kind {
        b'M' => {
            let [ts, from_len] = numbers::<2>(header)?;
            let (from, body) = split_str(data, from_len)?;
            Some(Transient::Message(Publication { from: Arc::from(from), ts, body: Bytes::copy_from_slice(body) }))
        }
        b'J' if header.is_empty() => Some(Transient::MemberJoined(Arc::from(std::str::from_utf8(data).ok()?))),
        b'L' if header.is_empty() => Some(Transient::MemberLeft(Arc::from(std::str::from_utf8(data).ok()?))),
        _ => None,
    }
}

/// Encodes a notice for `users`; `None` for a kind of notice this version does not carry.
pub fn encode_notice(users: &[Arc<str>], notice: &Notice) -> Option<Vec<u8>> {
    let (kind, mut header, mut data) = match notice {
        Notice::Invite { room, from, seq } => {
            (b'I', format!("{seq} {} {}", room.len(), from.len()), [room.as_bytes(), from.as_bytes()].concat())
        }
        Notice::KickFromRoom { room } => (b'R', format!("{}", room.len()), room.as_bytes().to_vec()),
        Notice::Kick => (b'K', String::new(), Vec::new()),
    };
    for user in users {
        if !header.is_empty() {
            header.push(' ');
        }
        header.push_str(&user.len().to_string());
        data.extend_from_slice(user.as_bytes());
    }
    let mut out = Vec::with_capacity(2 + header.len() + data.len());
    out.push(kind);
    out.extend_from_slice(header.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(&data);
    Some(out)
}

/// Decodes what [`encode_notice`] made; `None` for anything malformed.
pub fn decode_notice(payload: &[u8]) -> Option<(Vec<Arc<str>>, Notice)> {
    let (kind, header, mut data) = split(payload)?;
    let header = std::str::from_utf8(header).ok()?;
    let mut numbers = header.split(' ').filter(|n| !n.is_empty()).map(|n| n.parse::<u64>().ok());
    let text = |data: &mut &[u8], len: u64| -> Option<String> {
        let (s, tail) = split_str(data, len)?;
        *data = tail;
        Some(s.to_owned())
    };
    let notice = match kind {
        b'I' => {
            let (seq, room_len, from_len) = (numbers.next()??, numbers.next()??, numbers.next()??);
            let room = RoomName::new(&text(&mut data, room_len)?).ok()?;
            let from = Arc::from(text(&mut data, from_len)?);
            Notice::Invite { room, from, seq }
        }
        b'R' => {
            let room_len = numbers.next()??;
            Notice::KickFromRoom { room: RoomName::new(&text(&mut data, room_len)?).ok()? }
        }
        b'K' => Notice::Kick,
        _ => return None,
    };
    let mut users = Vec::new();
    for len in numbers {
        users.push(Arc::from(text(&mut data, len?)?));
    }
    data.is_empty().then_some((users, notice))
}

/// The kind, the header and the data of a payload in this layout (for a broker's own kinds
/// too): `None` without a newline.
///
/// ```
/// assert_eq!(chat_core::broker::wire::split(b"S1 2\nab"), Some((b'S', &b"1 2"[..], &b"ab"[..])));
/// ```
pub fn split(payload: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&kind, rest) = payload.split_first()?;
    let nl = rest.iter().position(|&b| b == b'\n')?;
    Some((kind, &rest[..nl], &rest[nl + 1..]))
}

/// Exactly `N` space-separated decimal numbers of a header; `None` for more, fewer or others.
///
/// ```
/// use chat_core::broker::wire::numbers;
/// assert_eq!(numbers::<2>(b"7 12"), Some([7, 12]));
/// assert_eq!(numbers::<2>(b"7 12 1"), None);
/// ```
pub fn numbers<const N: usize>(header: &[u8]) -> Option<[u64; N]> {
    let mut out = [0; N];
    let mut parts = std::str::from_utf8(header).ok()?.split(' ');
    for slot in &mut out {
        *slot = parts.next()?.parse().ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// The first `len` bytes as text, and the rest; `None` when there are fewer or they are not
/// UTF-8.
///
/// ```
/// assert_eq!(chat_core::broker::wire::split_str(b"bobhi", 3), Some(("bob", &b"hi"[..])));
/// ```
pub fn split_str(bytes: &[u8], len: u64) -> Option<(&str, &[u8])> {
    let len = usize::try_from(len).ok()?;
    if bytes.len() < len {
        return None;
    }
    let (a, b) = bytes.split_at(len);
    Some((std::str::from_utf8(a).ok()?, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transients_round_trip() {
        for what in [
            Transient::Message(Publication { from: Arc::from("al\nice"), ts: 7, body: Bytes::from("{\"a\":1}") }),
            Transient::MemberJoined(Arc::from("bob")),
            Transient::MemberLeft(Arc::from("")),
        ] {
            assert_eq!(decode_transient(&encode_transient(&what)), Some(what));
        }
    }

    #[test]
    fn notices_round_trip() {
        let room = RoomName::new("dm:alice:bob").unwrap();
        let users: Vec<Arc<str>> = vec![Arc::from("alice"), Arc::from("b ob")];
        for notice in [
            Notice::Invite { room: room.clone(), from: Arc::from("alice"), seq: 12 },
            Notice::KickFromRoom { room },
            Notice::Kick,
        ] {
            let bytes = encode_notice(&users, &notice).unwrap();
            assert_eq!(decode_notice(&bytes), Some((users.clone(), notice)));
        }
        assert_eq!(decode_notice(b"K\n"), Some((Vec::new(), Notice::Kick)));
    }

    #[test]
    fn rejects_garbled_notices() {
        for bad in [
            &b""[..],
            b"K",
            b"K3\nab",
            b"K1\nab",
            b"I1 2\nab",
            b"I1 5 1 1\nab",
            b"Ix 1 1\nab",
            b"R3\nb d",
            b"R1 1\n a",
            b"X\n",
        ] {
            assert_eq!(decode_notice(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn rejects_garbled_transients() {
        for bad in [&b""[..], b"M", b"M1\nab", b"M1 9\nab", b"Mx 1\nab", b"J1\nbob", b"L\n\xff", b"S1 1\nab"] {
            assert_eq!(decode_transient(bad), None, "{bad:?}");
        }
    }
}
