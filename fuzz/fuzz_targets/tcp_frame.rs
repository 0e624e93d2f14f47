//! The TCP framing (chat-transport-tcp codec.rs): `FrameCodec` as a tokio-util decoder and the
//! server's `FrameReader`, each fed the same stream in chunks of the fuzzer's choosing, must
//! both agree with a ten-line reading of PROTOCOL.md §1.
//!
//! Input: byte 0 picks `max_frame`, bytes 1 and 2 the read chunk sizes, the rest is the stream.

#![no_main]

use std::io::ErrorKind;

use bytes::BytesMut;
use chat_core::Inbound;
use chat_fuzz::chunks;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

const MAX_FRAMES: [usize; 8] = [0, 1, 2, 7, 16, 255, 1024, 65_536];

/// What the stream holds: its frames up to an oversized one (`TooLarge`, the end), and whether
/// it ends in the middle of a frame.
fn reference(mut s: &[u8], max: usize) -> (Vec<Inbound>, bool) {
    let mut items = Vec::new();
    loop {
        if s.len() < 4 {
            return (items, !s.is_empty());
        }
        let n = u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize;
        if n > max {
            items.push(Inbound::TooLarge);
            return (items, false);
        }
        if s.len() < 4 + n {
            return (items, true);
        }
        items.push(Inbound::Frame(bytes::Bytes::copy_from_slice(&s[4..4 + n])));
        s = &s[4 + n..];
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let max = MAX_FRAMES[usize::from(data[0]) % MAX_FRAMES.len()];
    let chunks = chunks(data[1], data[2]);
    let stream = &data[3..];
    let (expected, truncated) = reference(stream, max);

    // The codec, fed chunk by chunk (a 0 chunk: decode without new bytes).
    let mut codec = chat_transport_tcp::FrameCodec::new(max);
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    let mut rest = stream;
    let mut i = 0;
    let mut failed = false;
    'feed: loop {
        let size = if chunks.is_empty() { rest.len() } else { chunks[i % chunks.len()] };
        i += 1;
        let n = size.min(rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(item)) => {
                    let too_large = item == Inbound::TooLarge;
                    got.push(item);
                    if too_large {
                        assert!(buf.is_empty(), "nothing of an oversized frame is kept");
                        assert!(codec.decode(&mut buf).is_err(), "out of sync after an oversized frame");
                        failed = true;
                        break 'feed;
                    }
                }
                Ok(None) => break,
                Err(e) => panic!("decode failed before any oversized frame: {e}"),
            }
        }
        // Whatever is left is less than one whole frame.
        assert!(buf.len() < 4 || buf.len() < 4 + u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize);
        if rest.is_empty() {
            break;
        }
    }
    if !failed {
        // The end of the stream: a partial frame is an error, nothing left is a clean end.
        match codec.decode_eof(&mut buf) {
            Ok(None) => assert!(!truncated),
            Ok(Some(_)) => panic!("a frame at the end that decode did not return"),
            Err(_) => assert!(truncated),
        }
    }
    assert_eq!(got, expected, "the codec");

    // The server's reader over a socket that delivers the same chunks.
    let (items, error) = chat_transport_tcp::fuzzing::read_frames(stream, &chunks, max);
    assert_eq!(items, expected, "the reader");
    let ends_in_frame = truncated && !expected.contains(&Inbound::TooLarge);
    assert_eq!(error, ends_in_frame.then_some(ErrorKind::UnexpectedEof), "the reader's end");
});
