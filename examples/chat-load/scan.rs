//! Reading only what the load generator needs from a frame, without parsing its JSON: the
//! frame's type from its first bytes, `seq` and the body's timestamp by a substring search.
//!
//! The engine writes `type` first and `seq` before `body` (`{"type":"message","room":..,
//! "seq":58,"from":..,"ts":..,"body":{"t":..}}`), so the first `"seq":` is the real one and the
//! body (which a client controls) cannot fool the scan. A frame in another shape falls back to a
//! full parse.
//!
//! Every load body is `{"t":T,"p":"xxx…"}` where `T` is a 16-digit number of nanoseconds
//! ([`stamp`]), padded with `x` to the requested size.

use std::sync::LazyLock;
use std::time::Instant;

use memchr::memmem::Finder;

/// What a frame is, as far as the load generator cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Message,
    Sent,
    Error,
    Ping,
    Bye,
    Other,
}

/// The frame's `type`.
pub fn kind(frame: &[u8]) -> Kind {
    const HEAD: &[u8] = br#"{"type":""#;
    if let Some(rest) = frame.strip_prefix(HEAD) {
        return match rest.get(..4) {
            Some(b"mess") if rest.starts_with(b"message\"") => Kind::Message,
            Some(b"sent") if rest.starts_with(b"sent\"") => Kind::Sent,
            Some(b"erro") if rest.starts_with(b"error\"") => Kind::Error,
            Some(b"ping") if rest.starts_with(b"ping\"") => Kind::Ping,
            Some(b"bye\"") => Kind::Bye,
            _ => Kind::Other,
        };
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(frame) else { return Kind::Other };
    match v["type"].as_str() {
        Some("message") => Kind::Message,
        Some("sent") => Kind::Sent,
        Some("error") => Kind::Error,
        Some("ping") => Kind::Ping,
        Some("bye") => Kind::Bye,
        _ => Kind::Other,
    }
}

static SEQ: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br#""seq":"#));
static STAMP: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br#"{"t":"#));
static CODE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br#""code":""#));
static REASON: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br#""reason":""#));

fn digits(s: &[u8]) -> Option<(u64, usize)> {
    let mut n: u64 = 0;
    let mut i = 0;
    while i < s.len() && s[i].is_ascii_digit() {
        n = n.checked_mul(10)?.checked_add(u64::from(s[i] - b'0'))?;
        i += 1;
    }
    (i > 0).then_some((n, i))
}

/// A message's (or a `sent` reply's) `seq`, and the byte offset just after it.
pub fn seq(frame: &[u8]) -> Option<(u64, usize)> {
    let at = SEQ.find(frame)? + 6;
    digits(&frame[at..]).map(|(n, len)| (n, at + len))
}

/// The body's timestamp, looked for from byte `from` on.
pub fn stamp(frame: &[u8], from: usize) -> Option<u64> {
    let rest = frame.get(from..)?;
    let at = STAMP.find(rest)? + 5;
    digits(&rest[at..]).map(|(n, _)| n)
}

/// A string field of an `error` or `bye` frame (`code` / `reason`).
pub fn error_code(frame: &[u8]) -> String {
    string_after(frame, &CODE, 8)
}

/// The `reason` of a `bye`.
pub fn bye_reason(frame: &[u8]) -> String {
    string_after(frame, &REASON, 10)
}

fn string_after(frame: &[u8], finder: &Finder<'_>, skip: usize) -> String {
    let Some(at) = finder.find(frame) else { return "unknown".into() };
    let rest = &frame[at + skip..];
    let end = memchr::memchr(b'"', rest).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end]).into_owned()
}

/// The clock of every timestamp: nanoseconds since the generator started, plus 10^15 so that
/// a stamp always has 16 digits (a body's size never changes with the time).
pub struct Clock {
    base: Instant,
}

pub const STAMP_OFFSET: u64 = 1_000_000_000_000_000;
pub const STAMP_DIGITS: usize = 16;

impl Clock {
    pub fn new() -> Self {
        Clock { base: Instant::now() }
    }

    pub fn now(&self) -> u64 {
        STAMP_OFFSET + self.base.elapsed().as_nanos() as u64
    }
}

/// A body of exactly `size` bytes (at least [`MIN_BODY`]) holding a placeholder stamp; returns
/// it and the offset of the stamp's digits.
pub fn body(size: usize) -> (Vec<u8>, usize) {
    let mut b = Vec::with_capacity(size);
    b.extend_from_slice(br#"{"t":"#);
    let at = b.len();
    b.extend_from_slice(STAMP_OFFSET.to_string().as_bytes());
    b.extend_from_slice(br#","p":""#);
    while b.len() + 2 < size {
        b.push(b'x');
    }
    b.extend_from_slice(br#""}"#);
    (b, at)
}

/// The smallest body [`body`] can make.
pub const MIN_BODY: usize = 29;

/// Writes `n` as exactly `width` decimal digits into `dst`.
pub fn put_digits(dst: &mut [u8], mut n: u64) {
    for d in dst.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_message() {
        let f = br#"{"type":"message","room":"r","seq":58,"from":"a","ts":1,"body":{"t":1000000000000042,"p":"xx"}}"#;
        assert_eq!(kind(f), Kind::Message);
        let (s, end) = seq(f).unwrap();
        assert_eq!(s, 58);
        assert_eq!(stamp(f, end), Some(1_000_000_000_000_042));
        let (b, at) = body(40);
        assert_eq!(b.len(), 40);
        assert_eq!(&b[at..at + STAMP_DIGITS], STAMP_OFFSET.to_string().as_bytes());
        assert!(serde_json::from_slice::<serde_json::Value>(&b).is_ok());
    }
}
