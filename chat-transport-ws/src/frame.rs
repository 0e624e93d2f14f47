//! The server's reading of RFC 6455 frames (§5.2): a header, a masking key, a payload.
//!
//! Why not tungstenite here: its read buffer grows to the largest message a connection ever
//! received and keeps that size for the connection's life (measured: 1,000 connections that
//! each sent one 60 KB message kept 59.9 KB each). [`parse`] works on a buffer that the reader
//! frees between frames, like the TCP transport's.

use bytes::{Buf, BytesMut};

/// A frame's opcode (RFC 6455 §5.2).
pub(crate) const CONTINUATION: u8 = 0x0;
pub(crate) const TEXT: u8 = 0x1;
pub(crate) const BINARY: u8 = 0x2;
pub(crate) const CLOSE: u8 = 0x8;
pub(crate) const PING: u8 = 0x9;
pub(crate) const PONG: u8 = 0xA;

/// Close codes (RFC 6455 §7.4.1).
pub(crate) const CLOSE_NORMAL: u16 = 1000;
pub(crate) const CLOSE_PROTOCOL_ERROR: u16 = 1002;
pub(crate) const CLOSE_INVALID_DATA: u16 = 1007;
pub(crate) const CLOSE_TOO_BIG: u16 = 1009;

/// What the front of the read buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// One whole frame, unmasked; `compressed` when RSV1 marks the first frame of a message
    /// compressed with permessage-deflate (deflate.rs).
    Frame { fin: bool, opcode: u8, compressed: bool, payload: BytesMut },
    /// Not a whole frame yet: read more (room for the rest of the frame is reserved).
    Incomplete,
    /// A data frame that would take the message over the limit: decided from its header, before
    /// its payload is read.
    TooLarge,
    /// A frame no client may send: close with this code.
    Invalid(u16, &'static str),
}

/// The header bit (RSV1) that marks a compressed message (RFC 7692 §6).
pub(crate) const RSV1: u8 = 0x40;

/// Takes one frame from the front of `buf`. `max` bounds a message; `so_far` is what earlier
/// fragments of the message in progress hold; `deflate` says whether permessage-deflate was
/// negotiated, so that RSV1 may mark the first frame of a data message as compressed.
pub(crate) fn parse(buf: &mut BytesMut, max: usize, so_far: usize, deflate: bool) -> Parsed {
    if buf.len() < 2 {
        return Parsed::Incomplete;
    }
    let (b0, b1) = (buf[0], buf[1]);
    let (fin, opcode, compressed) = (b0 & 0x80 != 0, b0 & 0x0f, b0 & RSV1 != 0);
    if b0 & 0x30 != 0 || (compressed && !deflate) {
        return Parsed::Invalid(CLOSE_PROTOCOL_ERROR, "reserved bits set without an extension");
    }
    if compressed && !matches!(opcode, TEXT | BINARY) {
        return Parsed::Invalid(CLOSE_PROTOCOL_ERROR, "RSV1 on a frame that does not begin a data message");
    }
    if b1 & 0x80 == 0 {
        return Parsed::Invalid(CLOSE_PROTOCOL_ERROR, "a client's frames must be masked");
    }
    let (extended, len) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(n) => (2, u64::from(u16::from_be_bytes([n[0], n[1]]))),
            None => return Parsed::Incomplete,
        },
        127 => match buf.get(2..10) {
            Some(n) => (8, u64::from_be_bytes([n[0], n[1], n[2], n[3], n[4], n[5], n[6], n[7]])),
            None => return Parsed::Incomplete,
        },
        n => (0, u64::from(n)),
    };
    // RFC 6455 §5.2: "the minimal number of bytes MUST be used to encode the length", and a
    // 64-bit length has its most significant bit 0.
    if (extended == 2 && len < 126) || (extended == 8 && len <= 0xffff) {
        return Parsed::Invalid(CLOSE_PROTOCOL_ERROR, "a length not in its shortest encoding");
    }
    if len >> 63 != 0 {
        return Parsed::Invalid(CLOSE_PROTOCOL_ERROR, "a 64-bit length with its most significant bit set");
    }
    match opcode {
        CLOSE | PING | PONG if !fin || len > 125 => {
            return Parsed::Invalid(CLOSE_PROTOCOL_ERROR, "control frames are whole and at most 125 bytes")
        }
        CLOSE | PING | PONG => {}
        CONTINUATION | TEXT | BINARY if len.saturating_add(so_far as u64) > max as u64 => return Parsed::TooLarge,
        CONTINUATION | TEXT | BINARY => {}
        _ => return Parsed::Invalid(CLOSE_PROTOCOL_ERROR, "unknown opcode"),
    }
    // `len` is at most `max` (data) or 125 (control) here.
    let (header, len) = (2 + extended + 4, len as usize);
    if buf.len() < header + len {
        buf.reserve(header + len - buf.len());
        return Parsed::Incomplete;
    }
    let mask = [buf[header - 4], buf[header - 3], buf[header - 2], buf[header - 1]];
    buf.advance(header);
    let mut payload = buf.split_to(len);
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
    Parsed::Frame { fin, opcode, compressed, payload }
}

/// A data frame's header, whole (masking key included), as [`head`] reads it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Head {
    pub(crate) opcode: u8,
    /// RSV1: the message is compressed (its payload is not text yet).
    pub(crate) compressed: bool,
    /// Bytes of the header, masking key included: where the payload begins.
    pub(crate) len: usize,
    /// The payload's length.
    pub(crate) payload: u64,
    pub(crate) mask: [u8; 4],
}

/// The header at the front of `buf` when all of it has arrived (the payload may not have):
/// for checking a text frame's payload as it arrives. It does not validate what [`parse`]
/// does; call it where `parse` returned [`Parsed::Incomplete`].
pub(crate) fn head(buf: &[u8]) -> Option<Head> {
    let (b0, b1) = (*buf.first()?, *buf.get(1)?);
    let (extended, payload) = match b1 & 0x7f {
        126 => (2, u64::from(u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?))),
        127 => (8, u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?)),
        n => (0, u64::from(n)),
    };
    let len = 2 + extended + 4;
    let mask = buf.get(len - 4..len)?.try_into().ok()?;
    Some(Head { opcode: b0 & 0x0f, compressed: b0 & RSV1 != 0, len, payload, mask })
}

/// UTF-8 checked as a text message arrives, in pieces split anywhere (fragments, or the parts
/// of a frame read so far), so that invalid text fails the connection when it arrives rather
/// than when the message ends (RFC 6455 §8.1, "fail fast"). Holds the bytes of a character
/// begun at the end of the last piece, nothing else.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Utf8Check {
    /// The character begun (at most 3 bytes: 4 would be whole or invalid) and its length.
    pending: [u8; 3],
    len: u8,
}

impl Utf8Check {
    /// Takes the next piece: `false` when the text so far cannot be the start of valid UTF-8.
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) -> bool {
        if self.len > 0 {
            // First the character begun in the last piece: with up to 4 bytes it is whole,
            // invalid, or (the piece ended) still begun.
            let mut begun = [0u8; 4];
            let mut len = usize::from(self.len);
            begun[..len].copy_from_slice(&self.pending[..len]);
            loop {
                let Some((&byte, rest)) = bytes.split_first() else {
                    self.pending[..len].copy_from_slice(&begun[..len]);
                    self.len = len as u8;
                    return true;
                };
                (begun[len], len, bytes) = (byte, len + 1, rest);
                match std::str::from_utf8(&begun[..len]) {
                    Ok(_) => break,
                    Err(e) if e.error_len().is_some() => return false,
                    Err(_) => {}
                }
            }
            self.len = 0;
        }
        match std::str::from_utf8(bytes) {
            Ok(_) => true,
            Err(e) if e.error_len().is_some() => false,
            Err(e) => {
                // An incomplete character at the end (at most 3 bytes): kept for the next piece.
                let tail = &bytes[e.valid_up_to()..];
                self.pending[..tail.len()].copy_from_slice(tail);
                self.len = tail.len() as u8;
                true
            }
        }
    }

    /// Whether the text so far ends with a whole character (a message may end here).
    pub(crate) fn is_complete(&self) -> bool {
        self.len == 0
    }
}

/// The code to answer a peer's close frame with (RFC 6455 §5.5.1, §7.4): 1000 for an empty
/// one, the peer's own code when a peer may send it (1000-1003, 1007-1014 as IANA's registry
/// has them, 3000-4999), 1002 for a code it may not send (1004-1006, 1015, the rest below
/// 3000) or a one-byte payload, 1007 for a reason that is not UTF-8.
pub(crate) fn close_reply(payload: &[u8]) -> u16 {
    let code = match payload {
        [] => return CLOSE_NORMAL,
        [hi, lo, ..] => u16::from_be_bytes([*hi, *lo]),
        [_] => return CLOSE_PROTOCOL_ERROR,
    };
    match code {
        1000..=1003 | 1007..=1014 | 3000..=4999 if std::str::from_utf8(&payload[2..]).is_err() => CLOSE_INVALID_DATA,
        1000..=1003 | 1007..=1014 | 3000..=4999 => code,
        _ => CLOSE_PROTOCOL_ERROR,
    }
}

/// The header of an unmasked server frame (FIN set) carrying `len` bytes: the bytes, and how
/// many of them are used (2, 4 or 10).
pub(crate) fn header(opcode: u8, len: usize) -> ([u8; 10], usize) {
    let mut header = [0u8; 10];
    header[0] = 0x80 | opcode;
    let n = if len < 126 {
        header[1] = len as u8;
        2
    } else if let Ok(len) = u16::try_from(len) {
        header[1] = 126;
        header[2..4].copy_from_slice(&len.to_be_bytes());
        4
    } else {
        header[1] = 127;
        header[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    (header, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_minimal_and_63_bits() {
        let parsed = |bytes: &[u8]| parse(&mut BytesMut::from(bytes), 1 << 20, 0, false);
        let invalid = |p: Parsed| matches!(p, Parsed::Invalid(CLOSE_PROTOCOL_ERROR, _));
        assert!(invalid(parsed(&[0x81, 0x80 | 126, 0, 125])), "16 bits for 125");
        assert!(matches!(parsed(&[0x81, 0x80 | 126, 0, 126]), Parsed::Incomplete), "16 bits for 126");
        assert!(invalid(parsed(&[0x81, 0x80 | 127, 0, 0, 0, 0, 0, 0, 0xff, 0xff])), "64 bits for 65,535");
        assert!(matches!(parsed(&[0x81, 0x80 | 127, 0, 0, 0, 0, 0, 1, 0, 0]), Parsed::Incomplete), "64 for 65,536");
        assert!(invalid(parsed(&[0x81, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 0])), "top bit: 1002, not 1009");
    }

    #[test]
    fn close_replies() {
        assert_eq!(close_reply(b""), CLOSE_NORMAL);
        assert_eq!(close_reply(&[3]), CLOSE_PROTOCOL_ERROR);
        assert_eq!(close_reply(&[0x03, 0xe8]), 1000);
        assert_eq!(close_reply(&[0x0b, 0xb8, b'o', b'k']), 3000);
        assert_eq!(close_reply(&[0x03, 0xed]), CLOSE_PROTOCOL_ERROR, "1005 is not for the wire");
        assert_eq!(close_reply(&[0x03, 0xe8, 0xff, 0xfe]), CLOSE_INVALID_DATA, "a reason that is not UTF-8");
    }

    fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        let mut f = vec![first];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n < 65_536 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    #[test]
    fn frames_of_each_length_encoding_come_out_unmasked() {
        for len in [0, 1, 125, 126, 65_535, 65_536, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut buf = BytesMut::from(&masked(0x81, &payload)[..]);
            let Parsed::Frame { fin, opcode, payload: got, .. } = parse(&mut buf, 1 << 20, 0, false) else {
                panic!("{len}")
            };
            assert!(fin && opcode == TEXT && got[..] == payload[..] && buf.is_empty(), "length {len}");
        }
    }

    #[test]
    fn partial_input_waits_and_reserves_only_its_frame() {
        let whole = masked(0x82, &[7u8; 1000]);
        for cut in [0, 1, 2, 3, 7, 8, 500, 1007] {
            let mut buf = BytesMut::from(&whole[..cut]);
            assert_eq!(parse(&mut buf, 1 << 20, 0, false), Parsed::Incomplete, "cut at {cut}");
            assert!(buf.capacity() <= 2 * whole.len(), "room for this frame, not more");
        }
    }

    #[test]
    fn limits_and_rules() {
        let mut buf = BytesMut::from(&masked(0x81, &[b'a'; 200])[..]);
        assert_eq!(parse(&mut buf, 199, 0, false), Parsed::TooLarge, "over max, from the header");
        let mut buf = BytesMut::from(&masked(0x80, &[b'a'; 100])[..]);
        assert_eq!(parse(&mut buf, 150, 100, false), Parsed::TooLarge, "fragments add up");
        let mut buf = BytesMut::from(&[0x81u8, 0x05, b'h', b'e', b'l', b'l', b'o'][..]);
        assert!(matches!(parse(&mut buf, 100, 0, false), Parsed::Invalid(CLOSE_PROTOCOL_ERROR, _)), "unmasked");
        let mut buf = BytesMut::from(&masked(0xC1, b"x")[..]);
        assert!(matches!(parse(&mut buf, 100, 0, false), Parsed::Invalid(CLOSE_PROTOCOL_ERROR, _)), "RSV1");
        let mut buf = BytesMut::from(&masked(0x09, b"x")[..]);
        assert!(matches!(parse(&mut buf, 100, 0, false), Parsed::Invalid(CLOSE_PROTOCOL_ERROR, _)), "fragmented ping");
        let mut buf = BytesMut::from(&masked(0x89, &[0u8; 126])[..]);
        assert!(matches!(parse(&mut buf, 1000, 0, false), Parsed::Invalid(CLOSE_PROTOCOL_ERROR, _)), "long ping");
        let mut buf = BytesMut::from(&masked(0x83, b"x")[..]);
        assert!(matches!(parse(&mut buf, 100, 0, false), Parsed::Invalid(CLOSE_PROTOCOL_ERROR, _)), "opcode 3");
        let mut buf = BytesMut::from(&masked(0x89, b"ok")[..]);
        assert!(
            matches!(parse(&mut buf, 1, 0, false), Parsed::Frame { opcode: PING, .. }),
            "control frames ignore max"
        );
    }

    #[test]
    fn rsv1_marks_a_compressed_message_only_with_deflate_and_only_its_first_frame() {
        let parsed = |first: u8, deflate| parse(&mut BytesMut::from(&masked(first, b"x")[..]), 100, 0, deflate);
        assert!(matches!(parsed(0xC1, true), Parsed::Frame { opcode: TEXT, compressed: true, .. }));
        assert!(matches!(parsed(0x42, true), Parsed::Frame { opcode: BINARY, compressed: true, fin: false, .. }));
        assert!(matches!(parsed(0x81, true), Parsed::Frame { compressed: false, .. }), "a message may go uncompressed");
        for (first, what) in [(0xC0, "continuation"), (0xC9, "ping"), (0xC8, "close"), (0xA1, "RSV2"), (0x91, "RSV3")] {
            assert!(matches!(parsed(first, true), Parsed::Invalid(CLOSE_PROTOCOL_ERROR, _)), "{what}");
        }
        assert!(matches!(parsed(0xC1, false), Parsed::Invalid(CLOSE_PROTOCOL_ERROR, _)), "not negotiated");
    }

    #[test]
    fn close_codes_a_peer_may_not_send_are_answered_with_1002() {
        let code = |c: u16| close_reply(&c.to_be_bytes());
        assert_eq!(code(1000), 1000);
        assert_eq!(code(4001), 4001);
        for registered in [1011, 1012, 1013, 1014] {
            assert_eq!(code(registered), registered);
        }
        for reserved in [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000] {
            assert_eq!(code(reserved), CLOSE_PROTOCOL_ERROR, "{reserved}");
        }
    }

    #[test]
    fn utf8_is_checked_in_pieces_split_anywhere() {
        let text = "κόσμε a€𝄞".as_bytes();
        for cut in 0..=text.len() {
            for cut2 in cut..=text.len() {
                let mut check = Utf8Check::default();
                assert!(check.feed(&text[..cut]) && check.feed(&text[cut..cut2]) && check.feed(&text[cut2..]));
                assert!(check.is_complete(), "{cut} {cut2}");
            }
        }
        let mut check = Utf8Check::default();
        assert!(check.feed(&[0xce, 0xba, 0xe2]) && !check.is_complete(), "a character begun");
        assert!(!check.feed(&[0x41]), "and not continued");
        // Case 6.4.1's: U+110000 is invalid from its second byte, whatever follows.
        let mut check = Utf8Check::default();
        assert!(check.feed(&[0xce, 0xba, 0xf4]));
        assert!(!check.feed(&[0x90]));
        let mut check = Utf8Check::default();
        assert!(!check.feed(&[0xed, 0xa0, 0x80]), "a surrogate");
        assert!(!Utf8Check::default().feed(&[0xc0, 0xaf]), "an overlong encoding");
    }

    #[test]
    fn heads_are_read_once_whole() {
        let frame = masked(0x01, &[b'a'; 300]);
        assert_eq!(head(&frame[..7]), None, "the masking key is missing");
        let want = Head { opcode: TEXT, compressed: false, len: 8, payload: 300, mask: [0x12, 0x34, 0x56, 0x78] };
        assert_eq!(head(&frame[..8]), Some(want));
        assert_eq!(head(&masked(0x89, b"x")).map(|h| (h.opcode, h.len, h.payload)), Some((PING, 6, 1)));
    }

    #[test]
    fn headers_of_each_length() {
        assert_eq!(&header(TEXT, 5).0[..2], &[0x81, 5]);
        assert_eq!(&header(TEXT, 126).0[..4], &[0x81, 126, 0, 126]);
        assert_eq!(&header(CLOSE, 65_536).0[..10], &[0x88, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
    }
}
