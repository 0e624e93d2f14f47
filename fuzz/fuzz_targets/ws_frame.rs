//! The server's WebSocket frame reading (chat-transport-ws frame.rs, adapter.rs), as the server
//! sees a connection: masked frames as clients must send them and unmasked ones as they must
//! not. The parser alone (its promises checked frame by frame), then the whole upgraded
//! connection (`serve_socket`: reassembly, control frames, UTF-8, close replies, the engine's
//! session) over an in-memory socket read in chunks of the fuzzer's choosing: everything the
//! server writes back must be frames a server may send, carrying well-formed `chat/1` frames,
//! and the engine holds nothing for the connection once it has ended.
//!
//! Input: byte 0 (bit 0: the rest describes frames that the target encodes, masked or not, with
//! any length encoding; otherwise the rest is the raw stream; bits 1-3: the parser's limit;
//! bit 4: permessage-deflate negotiated), bytes 1 and 2 the read chunk sizes, then the stream or
//! its description.

#![no_main]

use libfuzzer_sys::fuzz_target;

const LIMITS: [usize; 8] = [0, 1, 125, 126, 1024, 65_535, 65_536, 1 << 20];

/// Frames described by the fuzz bytes, 4 bytes of header description each: `sel` (bit 0 and
/// bit 3: a longer length encoding than needed; bits 1-2: the length's scale; bit 6: keep the
/// reserved bits; bits 4-5 both set: unmasked), the first header byte (FIN, RSV, opcode), the
/// length, a byte varying the mask; then the payload, from the input (cut short at its end).
fn encode(mut d: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while d.len() >= 4 {
        let (sel, mut b0, len, m) = (d[0], d[1], d[2], d[3]);
        d = &d[4..];
        if sel & 0x40 == 0 {
            b0 &= 0x8f;
        }
        let masked = sel & 0x30 != 0x30;
        let len = usize::from(len) << (3 * ((sel >> 1) & 3));
        out.push(b0);
        let mask_bit = if masked { 0x80 } else { 0 };
        if sel & 0x08 != 0 || len > 0xffff {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        } else if sel & 0x01 != 0 || len >= 126 {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(mask_bit | len as u8);
        }
        let mask = [0x37 ^ m, 0xfa, 0x21 ^ m.rotate_left(3), 0x3d];
        if masked {
            out.extend_from_slice(&mask);
        }
        let n = len.min(d.len());
        out.extend(d[..n].iter().enumerate().map(|(i, b)| if masked { b ^ mask[i % 4] } else { *b }));
        d = &d[n..];
    }
    out
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let stream = if data[0] & 1 != 0 { encode(&data[3..]) } else { data[3..].to_vec() };
    let limit = LIMITS[usize::from(data[0] >> 1) % LIMITS.len()];
    let deflate = data[0] & 0x10 != 0;
    chat_transport_ws::fuzzing::parse_frames(&stream, limit, deflate);

    let chunks = chat_fuzz::chunks(data[1], data[2]);
    let engine = chat_fuzz::engine();
    let written =
        chat_fuzz::runtime().block_on(chat_transport_ws::fuzzing::serve(engine.clone(), &stream, &chunks, deflate));
    let texts = chat_fuzz::check_ws_output(&written);
    chat_fuzz::check_session(texts.iter().map(Vec::as_slice));
    chat_fuzz::assert_idle(engine);
});
