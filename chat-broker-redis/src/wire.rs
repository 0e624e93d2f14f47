//! What travels on a room's pub/sub channel: a one-letter kind, a header of decimal numbers,
//! a newline, then raw bytes. `lua/publish.lua` and `lua/sweep.lua` write some of these.
//!
//! ```text
//! S<seq> <ts> <epoch len> <from len> <id>\n<epoch><from><body>   a stored message
//! M<ts> <from len>\n<from><body>                            an ephemeral message
//! J\n<user>                                                 a user's first session joined
//! L\n<user>                                                 a user's last session left
//! ```
//!
//! On the notices channel (`Keys::notices`), a notice for users, each user's length in the
//! header:
//!
//! ```text
//! I<seq> <room len> <from len> <user len>…\n<room><from><users>   an invite
//! R<room len> <user len>…\n<room><users>                         a kick from a room
//! K<user len>…\n<users>                                          a kick from every node
//! ```

use std::sync::Arc;

use chat_core::broker::Notice;
use chat_core::RoomName;

/// One decoded channel message, borrowing from the payload.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Wire<'a> {
    /// `id`: the message's id (Redis's clock in µs when it was stored; see lua/publish.lua).
    Stored {
        seq: u64,
        ts: u64,
        epoch: &'a str,
        from: &'a str,
        body: &'a [u8],
        id: u64,
    },
    Message {
        ts: u64,
        from: &'a str,
        body: &'a [u8],
    },
    Joined(&'a str),
    Left(&'a str),
}

/// Encodes an ephemeral message.
pub(crate) fn encode_message(ts: u64, from: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + from.len() + body.len());
    out.extend_from_slice(format!("M{ts} {}\n", from.len()).as_bytes());
    out.extend_from_slice(from.as_bytes());
    out.extend_from_slice(body);
    out
}

/// Encodes a membership event (`b'J'` or `b'L'`).
pub(crate) fn encode_member(kind: u8, user: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + user.len());
    out.push(kind);
    out.push(b'\n');
    out.extend_from_slice(user.as_bytes());
    out
}

/// Encodes a notice for `users` (the notices channel).
pub(crate) fn encode_notice(users: &[Arc<str>], notice: &Notice) -> Option<Vec<u8>> {
    let (kind, mut header, mut data) = match notice {
        Notice::Invite { room, from, seq } => {
            (b'I', format!("{seq} {} {}", room.len(), from.len()), [room.as_bytes(), from.as_bytes()].concat())
        }
        Notice::KickFromRoom { room } => (b'R', format!("{}", room.len()), room.as_bytes().to_vec()),
        Notice::Kick => (b'K', String::new(), Vec::new()),
        _ => return None, // a notice this version does not carry
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

/// Decodes a message of the notices channel; `None` for anything malformed.
pub(crate) fn decode_notice(payload: &[u8]) -> Option<(Vec<Arc<str>>, Notice)> {
    let (&kind, rest) = payload.split_first()?;
    let nl = rest.iter().position(|&b| b == b'\n')?;
    let (header, mut data) = (std::str::from_utf8(&rest[..nl]).ok()?, &rest[nl + 1..]);
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

fn numbers<const N: usize>(header: &[u8]) -> Option<[u64; N]> {
    let mut out = [0; N];
    let mut parts = std::str::from_utf8(header).ok()?.split(' ');
    for slot in &mut out {
        *slot = parts.next()?.parse().ok()?;
    }
    parts.next().is_none().then_some(out)
}

fn split_str(bytes: &[u8], len: u64) -> Option<(&str, &[u8])> {
    let len = usize::try_from(len).ok()?;
    if bytes.len() < len {
        return None;
    }
    let (a, b) = bytes.split_at(len);
    Some((std::str::from_utf8(a).ok()?, b))
}

/// Decodes a channel message; `None` for anything malformed.
pub(crate) fn decode(payload: &[u8]) -> Option<Wire<'_>> {
    let (&kind, rest) = payload.split_first()?;
    let nl = rest.iter().position(|&b| b == b'\n')?;
    let (header, data) = (&rest[..nl], &rest[nl + 1..]);
    match kind {
        b'S' => {
            let [seq, ts, epoch_len, from_len, id] = numbers::<5>(header)?;
            let (epoch, data) = split_str(data, epoch_len)?;
            let (from, body) = split_str(data, from_len)?;
            Some(Wire::Stored { seq, ts, epoch, from, body, id })
        }
        b'M' => {
            let [ts, from_len] = numbers::<2>(header)?;
            let (from, body) = split_str(data, from_len)?;
            Some(Wire::Message { ts, from, body })
        }
        b'J' if header.is_empty() => Some(Wire::Joined(std::str::from_utf8(data).ok()?)),
        b'L' if header.is_empty() => Some(Wire::Left(std::str::from_utf8(data).ok()?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let m = encode_message(7, "al\nice", b"{\"a\":1}");
        assert_eq!(decode(&m), Some(Wire::Message { ts: 7, from: "al\nice", body: b"{\"a\":1}" }));
        assert_eq!(decode(&encode_member(b'J', "bob")), Some(Wire::Joined("bob")));
        assert_eq!(decode(&encode_member(b'L', "")), Some(Wire::Left("")));
        let s = b"S12 99 2 3 1764201600123456\ne1bob\"hi\"";
        let id = 1_764_201_600_123_456;
        assert_eq!(decode(s), Some(Wire::Stored { seq: 12, ts: 99, epoch: "e1", from: "bob", body: b"\"hi\"", id }));
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
