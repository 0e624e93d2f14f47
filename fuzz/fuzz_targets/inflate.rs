//! The permessage-deflate inflater (chat-transport-ws deflate.rs) on arbitrary compressed
//! messages: it never gives more than its limit (a decompression bomb stops there), and what it
//! gives compresses, as the server compresses, to data that inflates to the same again.
//!
//! Input: byte 0 picks the limit, the rest is the compressed message (its trailing
//! 00 00 ff ff removed, as on the wire).

#![no_main]

use libfuzzer_sys::fuzz_target;

const LIMITS: [usize; 6] = [0, 1, 125, 4096, 65_536, 1 << 20];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, message)) = data.split_first() else { return };
    chat_transport_ws::fuzzing::inflate(message, LIMITS[usize::from(pick) % LIMITS.len()]);
});
