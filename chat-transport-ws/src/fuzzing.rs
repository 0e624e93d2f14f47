//! Entry points for the cargo-fuzz targets in `fuzz/` (feature `fuzzing`; not public API).
//!
//! The server's WebSocket reading is crate-private: [`parse_frames`] runs the frame parser
//! (frame.rs) over a buffer and checks what it promises; [`serve`] runs a whole upgraded
//! connection as the server does (adapter.rs: fragments, control frames, UTF-8, close
//! replies, then the engine's session) over an in-memory socket that hands its bytes over in
//! chunks of the fuzzer's choosing, and returns what the server wrote back.

use std::sync::PoisonError;

use bytes::BytesMut;
use chat_core::io::ChunkedSocket;
use chat_core::Engine;

use crate::adapter::{serve_socket, Shared};
use crate::batch::BatchedIo;
use crate::deflate::{self, Agreed, InflateError};
use crate::frame::{self, Parsed};

/// Parses frames from the front of `data` until one is not whole, too large or invalid, with a
/// message limit of `max`, and checks each result: a frame's payload is exactly its declared
/// length unmasked, an incomplete buffer is left as it was (room reserved only for its own
/// frame), control frames are whole and small, RSV1 (a compressed message) only with `deflate`
/// and only on a data message's first frame. Returns how many frames were parsed.
pub fn parse_frames(data: &[u8], max: usize, deflate: bool) -> usize {
    let mut buf = BytesMut::from(data);
    let mut so_far = 0usize;
    let mut frames = 0;
    loop {
        let before = buf.clone();
        match frame::parse(&mut buf, max, so_far, deflate) {
            Parsed::Frame { fin, opcode, compressed, payload } => {
                frames += 1;
                let used = before.len() - buf.len();
                assert_eq!(before[0] & frame::RSV1 != 0, compressed);
                assert!(!compressed || (deflate && matches!(opcode, frame::TEXT | frame::BINARY)));
                assert_eq!(before[0] & 0x30, 0, "RSV2 and RSV3 are never accepted");
                assert!(before[1] & 0x80 != 0, "an unmasked frame was accepted");
                assert_eq!(before[0] & 0x0f, opcode);
                assert_eq!(before[0] & 0x80 != 0, fin);
                let header = used - payload.len();
                assert!(matches!(header, 6 | 8 | 14), "header of {header} bytes");
                let mask = &before[header - 4..header];
                assert!(payload.iter().enumerate().all(|(i, b)| b ^ mask[i % 4] == before[header + i]));
                assert_eq!(&buf[..], &before[used..], "the rest is untouched");
                match opcode {
                    frame::CLOSE | frame::PING | frame::PONG => assert!(fin && payload.len() <= 125),
                    frame::CONTINUATION | frame::TEXT | frame::BINARY => {
                        so_far = if fin { 0 } else { so_far + payload.len() };
                        assert!(so_far <= max);
                    }
                    other => panic!("opcode {other} accepted"),
                }
            }
            Parsed::Incomplete => {
                assert_eq!(&buf[..], &before[..], "an incomplete frame is left as it was");
                return frames;
            }
            Parsed::TooLarge => {
                assert!(matches!(before[0] & 0x0f, frame::CONTINUATION | frame::TEXT | frame::BINARY));
                return frames;
            }
            Parsed::Invalid(code, why) => {
                assert!(code == frame::CLOSE_PROTOCOL_ERROR && !why.is_empty());
                return frames;
            }
        }
    }
}

/// What a connection that negotiated permessage-deflate agreed on, for [`serve`]: messages of 64
/// bytes or more go out compressed.
const AGREED: Agreed = Agreed { window: 15, level: 6, min_size: 64 };

/// Runs an upgraded connection exactly as the server does (`serve_socket`: frame reader,
/// session, writer, close handshake) over `data`, read in chunks of the sizes in `chunks`
/// (cycled; 0 is one `Pending` before the next read), with permessage-deflate negotiated when
/// `deflate`, and returns every byte the server wrote.
pub async fn serve(engine: Engine, data: &[u8], chunks: &[usize], deflate: bool) -> Vec<u8> {
    let socket = ChunkedSocket::new(data, chunks);
    let written = socket.sink();
    let agreed = if deflate { AGREED } else { Agreed::OFF };
    serve_socket(engine, Shared::new(BatchedIo::new(socket, 4096), agreed), None, None).await;
    let out = std::mem::take(&mut *written.lock().unwrap_or_else(PoisonError::into_inner));
    out
}

/// Inflates `data` as a compressed message with a limit of `max` bytes, and checks what the
/// inflater promises: never more than `max` bytes, and what it gives back compresses (as the
/// server compresses, at every window) to data that inflates to it again.
pub fn inflate(data: &[u8], max: usize) -> Option<Vec<u8>> {
    match deflate::inflate(data, max) {
        Ok(message) => {
            assert!(message.len() <= max, "{} bytes over the limit {max}", message.len());
            for window in [9, 15] {
                let packed = deflate::compress(&message, window, 6);
                assert_eq!(deflate::inflate(&packed, max).as_deref(), Ok(&message[..]), "window {window}");
            }
            Some(message)
        }
        Err(InflateError::TooLarge | InflateError::Invalid) => None,
    }
}

/// A compressed message (RSV1) the server sent, inflated; `None` when it does not inflate.
pub fn inflate_sent(payload: &[u8]) -> Option<Vec<u8>> {
    deflate::inflate(payload, usize::MAX - 1).ok()
}
