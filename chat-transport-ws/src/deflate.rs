//! permessage-deflate (RFC 7692): negotiation, and compressing and inflating whole messages.
//!
//! The server always answers with `server_no_context_takeover` and `client_no_context_takeover`
//! (RFC 7692 §7.1.1: a server may add both to any offer it accepts). Neither side then keeps a
//! sliding window between messages, which buys two things a chat server needs:
//!
//! * **no memory per idle connection**: no compressor or inflater lives with the connection;
//!   one per thread is reset between messages;
//! * **encode once per fan-out**: a message's compressed form depends only on its bytes, the
//!   window size and the level, so it is made once and shared by every recipient that agreed on
//!   the same ([`compressed`] keeps the last few messages' forms).
//!
//! Inflating counts the output against `max_frame` as it goes: a small compressed message that
//! would expand past it stops there (a decompression bomb is `frame_too_large`, fatal).
//!
//! The codec is flate2 on zlib-rs (pure Rust, the zlib API): unlike flate2's default backend
//! (miniz_oxide) it compresses with a window smaller than 32 KiB, which a client may ask for
//! (`server_max_window_bits`).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The extension's name in `Sec-WebSocket-Extensions`.
const NAME: &str = "permessage-deflate";
/// What every deflate block that ends with a sync flush ends with (RFC 7692 §7.2.1): removed
/// from a compressed message, appended again before inflating.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
/// The largest window, and the smallest zlib can compress raw deflate with.
const MAX_WINDOW: u8 = 15;
const MIN_WINDOW: u8 = 9;

/// permessage-deflate settings for [`WsOptions::deflate`](crate::WsOptions::deflate).
///
/// ```
/// use chat_transport_ws::{DeflateOptions, WsOptions};
///
/// let options = WsOptions::default().deflate(DeflateOptions { level: 1, ..DeflateOptions::default() });
/// assert_eq!(options.get_deflate().map(|d| d.min_size), Some(128));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateOptions {
    /// zlib's compression level, 1 (fastest) to 9 (smallest). Default 6.
    pub level: u32,
    /// Messages shorter than this many bytes go out uncompressed (RFC 7692 lets the sender
    /// choose per message): below it, deflate's framing costs more than it saves. Default 128.
    pub min_size: u16,
}

impl Default for DeflateOptions {
    fn default() -> Self {
        DeflateOptions { level: 6, min_size: 128 }
    }
}

/// What a connection agreed on: the window the server compresses with (`server_max_window_bits`,
/// 15 unless the client asked for less), and the host's level and smallest message to compress.
/// The client compresses without context takeover, with any window (inflating handles them all).
/// Four bytes: it lives in every connection that negotiated compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Agreed {
    pub(crate) window: u8,
    pub(crate) level: u8,
    pub(crate) min_size: u16,
}

impl Agreed {
    /// Not negotiated (window 0).
    pub(crate) const OFF: Agreed = Agreed { window: 0, level: 0, min_size: 0 };

    /// Whether compression was negotiated.
    pub(crate) fn is_on(&self) -> bool {
        self.window != 0
    }
}

/// The first acceptable `permessage-deflate` offer among the `Sec-WebSocket-Extensions` header
/// values, and the response header value accepting it; `None` when none is acceptable (the
/// connection then goes on uncompressed). An offer is declined when it repeats a parameter,
/// has one RFC 7692 does not define, a value out of range, or asks for an 8-bit server window
/// (zlib cannot compress raw deflate with one).
pub(crate) fn negotiate<'a>(
    header_values: impl IntoIterator<Item = &'a str>,
    options: &DeflateOptions,
) -> Option<(Agreed, String)> {
    let (window, response) = header_values.into_iter().flat_map(|value| value.split(',')).find_map(accept)?;
    let level = options.level.clamp(1, 9) as u8;
    Some((Agreed { window, level, min_size: options.min_size }, response))
}

/// One extension offer (`name; param; param=value …`), if it is an acceptable permessage-deflate:
/// the server's window, and the response.
fn accept(offer: &str) -> Option<(u8, String)> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case(NAME) {
        return None;
    }
    let mut seen: Vec<&str> = Vec::new();
    let mut window = None;
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
            None => (param, None),
        };
        if seen.contains(&name) {
            return None;
        }
        seen.push(name);
        let bits = |v: Option<&str>| v.and_then(|v| v.parse::<u8>().ok()).filter(|b| (8..=MAX_WINDOW).contains(b));
        match (name, value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => {}
            ("server_max_window_bits", Some(_)) => window = Some(bits(value)?),
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", Some(_)) => _ = bits(value)?,
            _ => return None,
        }
    }
    let window = window.unwrap_or(MAX_WINDOW);
    if window < MIN_WINDOW {
        return None;
    }
    let mut response = format!("{NAME}; server_no_context_takeover; client_no_context_takeover");
    if window < MAX_WINDOW {
        response.push_str(&format!("; server_max_window_bits={window}"));
    }
    Some((window, response))
}

thread_local! {
    /// One compressor per window size and one inflater, per thread, reset between messages.
    static CODECS: RefCell<Codecs> = RefCell::new(Codecs::default());
}

#[derive(Default)]
struct Codecs {
    compressors: Vec<(u8, u32, Compress)>,
    inflater: Option<Decompress>,
}

/// `payload` compressed as one message (its tail removed, RFC 7692 §7.2.1).
pub(crate) fn compress(payload: &[u8], window: u8, level: u32) -> Vec<u8> {
    CODECS.with_borrow_mut(|codecs| {
        let index = match codecs.compressors.iter().position(|(w, l, _)| (*w, *l) == (window, level)) {
            Some(i) => i,
            None => {
                codecs.compressors.push((
                    window,
                    level,
                    Compress::new_with_window_bits(Compression::new(level), false, window),
                ));
                codecs.compressors.len() - 1
            }
        };
        let compressor = &mut codecs.compressors[index].2;
        compressor.reset();
        let mut out = Vec::with_capacity(payload.len() / 2 + 64);
        let mut input = payload;
        loop {
            let before = compressor.total_in();
            // Errors cannot happen with a valid stream state and flush; treat one as "stop".
            if compressor.compress_vec(input, &mut out, FlushCompress::Sync).is_err() {
                break;
            }
            input = &input[(compressor.total_in() - before) as usize..];
            if input.is_empty() && out.ends_with(&TAIL) && out.len() < out.capacity() {
                break;
            }
            out.reserve(out.capacity().max(64));
        }
        if out.ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
        out
    })
}

/// Why a compressed message could not be inflated.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum InflateError {
    /// It inflates to more than the limit.
    TooLarge,
    /// It is not valid deflate data.
    Invalid,
}

/// Inflates one compressed message (its tail removed) to at most `max` bytes.
pub(crate) fn inflate(compressed: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
    CODECS.with_borrow_mut(|codecs| {
        let inflater = codecs.inflater.get_or_insert_with(|| Decompress::new(false));
        inflater.reset(false);
        let mut out: Vec<u8> = Vec::with_capacity((compressed.len() * 3).max(64).min(max.saturating_add(1)));
        for chunk in [compressed, &TAIL[..]] {
            let mut input = chunk;
            loop {
                if out.len() == out.capacity() {
                    if out.len() > max {
                        return Err(InflateError::TooLarge);
                    }
                    // Grow by doubling, never past one byte beyond the limit (that byte tells).
                    let room = out.capacity().min(max.saturating_add(1) - out.len()).max(1);
                    out.reserve_exact(room);
                }
                let before = inflater.total_in();
                let status = inflater.decompress_vec(input, &mut out, FlushDecompress::Sync);
                let status = status.map_err(|_| InflateError::Invalid)?;
                input = &input[(inflater.total_in() - before) as usize..];
                if out.len() > max {
                    return Err(InflateError::TooLarge);
                }
                match status {
                    Status::StreamEnd => break,
                    _ if input.is_empty() && out.len() < out.capacity() => break,
                    Status::BufError if out.len() < out.capacity() => return Err(InflateError::Invalid),
                    _ => {}
                }
            }
        }
        Ok(out)
    })
}

/// The compressed forms of the messages most recently sent, shared by every connection: a
/// message fanned out to many recipients is compressed once per window and level.
///
/// A message is known by its `Bytes` (the engine hands every recipient the same allocation);
/// each entry keeps that `Bytes` alive, so its address cannot be reused by another message
/// while the entry exists. An empty compressed form means "not smaller: send it as it is".
/// The oldest entries go first, beyond [`REMEMBERED`] entries or [`REMEMBERED_BYTES`]: enough
/// for the recipients of a busy room to write a message before it is forgotten while their
/// outboxes hold up to a few thousand frames (the default bound is 4,096). The cache is the one
/// cost of compression that does not depend on traffic: up to 4 MiB per process.
static RECENT: Mutex<Recent> = Mutex::new(Recent { map: None, order: VecDeque::new(), bytes: 0 });

/// A message, by address and length, and how it is compressed.
type Key = (usize, usize, u8, u8);

struct Recent {
    map: Option<HashMap<Key, (Bytes, Bytes)>>,
    order: VecDeque<Key>,
    /// Bytes held: the messages and their compressed forms.
    bytes: usize,
}

/// How many recent messages [`RECENT`] remembers, and how many bytes of them at most.
const REMEMBERED: usize = 4096;
const REMEMBERED_BYTES: usize = 4 << 20;

/// `message` compressed as `agreed` says, or `None` when it goes out as it is (shorter than
/// `min_size`, or not smaller once compressed).
pub(crate) fn compressed(message: &Bytes, agreed: Agreed) -> Option<Bytes> {
    if message.len() < usize::from(agreed.min_size) {
        return None;
    }
    let key = (message.as_ptr() as usize, message.len(), agreed.window, agreed.level);
    {
        let recent = RECENT.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, packed)) = recent.map.as_ref().and_then(|m| m.get(&key)) {
            return (!packed.is_empty()).then(|| packed.clone());
        }
    }
    let packed = compress(message, agreed.window, u32::from(agreed.level));
    let packed = if packed.len() < message.len() { Bytes::from(packed) } else { Bytes::new() };
    let mut recent = RECENT.lock().unwrap_or_else(PoisonError::into_inner);
    let Recent { map, order, bytes } = &mut *recent;
    let map = map.get_or_insert_with(HashMap::new);
    if map.insert(key, (message.clone(), packed.clone())).is_none() {
        order.push_back(key);
        *bytes += message.len() + packed.len();
    }
    while order.len() > REMEMBERED || *bytes > REMEMBERED_BYTES {
        let Some(old) = order.pop_front() else { break };
        if let Some((m, p)) = map.remove(&old) {
            *bytes -= m.len() + p.len();
        }
    }
    (!packed.is_empty()).then_some(packed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTIONS: DeflateOptions = DeflateOptions { level: 6, min_size: 128 };

    fn agreed(window: u8) -> Agreed {
        Agreed { window, level: 6, min_size: 128 }
    }

    #[test]
    fn negotiates_the_first_acceptable_offer() {
        let negotiate = |offers: &[&str]| negotiate(offers.iter().copied(), &OPTIONS);
        let response = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
        assert_eq!(negotiate(&["permessage-deflate"]), Some((agreed(15), response.to_owned())));
        assert_eq!(
            negotiate(&["permessage-deflate; client_max_window_bits"]),
            Some((agreed(15), response.to_owned())),
            "what browsers offer"
        );
        let (agreed, header) = negotiate(&["permessage-deflate; server_max_window_bits=10"]).unwrap();
        assert_eq!((agreed.window, header), (10, format!("{response}; server_max_window_bits=10")));
        let offers = [
            "x-webkit-deflate-frame",
            "permessage-deflate; server_max_window_bits=8, permessage-deflate; server_max_window_bits=\"12\"",
        ];
        let (agreed, _) = negotiate(&offers).unwrap();
        assert_eq!(agreed.window, 12, "an 8-bit window is declined, the next offer taken");
        for declined in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; unknown",
            "deflate-frame",
        ] {
            assert_eq!(negotiate(&[declined]), None, "{declined}");
        }
    }

    #[test]
    fn round_trips_at_every_window() {
        let text: Vec<u8> =
            (0..20_000u32).flat_map(|i| format!("{{\"n\":{},\"text\":\"hello\"}}", i % 97).into_bytes()).collect();
        for window in MIN_WINDOW..=MAX_WINDOW {
            let compressed = compress(&text, window, 6);
            assert!(compressed.len() < text.len() / 4, "window {window}: {}", compressed.len());
            assert!(!compressed.ends_with(&TAIL));
            assert_eq!(inflate(&compressed, text.len()).unwrap(), text, "window {window}");
        }
        assert_eq!(inflate(&compress(b"", 15, 6), 10).unwrap(), b"");
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        let zeros = vec![0u8; 10 << 20];
        let bomb = compress(&zeros, 15, 9);
        assert!(bomb.len() < 20_000, "{}", bomb.len());
        assert_eq!(inflate(&bomb, 64 * 1024), Err(InflateError::TooLarge));
        assert_eq!(inflate(&bomb, zeros.len()).map(|v| v.len()), Ok(zeros.len()), "exactly the limit is fine");
        assert_eq!(inflate(&bomb, zeros.len() - 1), Err(InflateError::TooLarge));
        assert_eq!(inflate(&[0xff, 0xff, 0xff], 1000), Err(InflateError::Invalid));
    }

    #[test]
    fn a_fanned_out_message_is_compressed_once() {
        let message = Bytes::from(vec![b'a'; 1000]);
        let first = compressed(&message, agreed(15)).unwrap();
        let again = compressed(&message.clone(), agreed(15)).unwrap();
        assert_eq!(first.as_ptr(), again.as_ptr(), "the same compressed bytes");
        let other_window = compressed(&message, agreed(9)).unwrap();
        assert_ne!(other_window.as_ptr(), first.as_ptr());
        assert_eq!(compressed(&Bytes::from_static(b"short"), agreed(15)), None, "under min_size");
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let random: Vec<u8> = (0..1000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert_eq!(compressed(&Bytes::from(random), agreed(15)), None, "does not shrink");
    }
}
