//! permessage-deflate (RFC 7692) on raw sockets: off unless the host turns it on; negotiated
//! without context takeover; compressed messages understood and sent; a decompression bomb is
//! `frame_too_large` (close 1009); data that does not inflate closes with 1007.

mod common;

use std::io::Write;

use chat_transport_ws::{DeflateOptions, WsOptions};
use common::*;
use flate2::write::DeflateEncoder;
use flate2::Compression;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";
const RSV1: u8 = 0x40;

/// `data` compressed as a permessage-deflate sender does (raw deflate, sync flush, the
/// trailing 00 00 ff ff removed).
fn deflate(data: &[u8]) -> Vec<u8> {
    let mut encoder = DeflateEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(data).expect("compress");
    encoder.flush().expect("sync flush");
    let mut out = encoder.get_ref().clone();
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

fn inflate(data: &[u8]) -> Vec<u8> {
    let mut input = data.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::new();
    flate2::read::DeflateDecoder::new(&input[..]).read_to_end_lenient(&mut out);
    out
}

trait Lenient {
    fn read_to_end_lenient(&mut self, out: &mut Vec<u8>);
}

impl<R: std::io::Read> Lenient for R {
    /// Reads until the data runs out (a sync-flushed stream has no end marker).
    fn read_to_end_lenient(&mut self, out: &mut Vec<u8>) {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = self.read(&mut chunk) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&chunk[..n]);
        }
    }
}

/// The next text message from the server as JSON, inflated when it came compressed; whether it did.
async fn next_message(tcp: &mut TcpStream) -> (Value, bool) {
    loop {
        let (first, payload) = read_frame_whole(tcp).await.expect("a frame");
        assert_eq!(first & 0x80, 0x80, "whole frames");
        match first & 0x0f {
            0x1 => {
                let compressed = first & RSV1 != 0;
                let text = if compressed { inflate(&payload) } else { payload };
                return (serde_json::from_slice(&text).expect("JSON"), compressed);
            }
            0x9 | 0xA => continue,
            other => panic!("opcode {other} ({first:#x}), {:?}", String::from_utf8_lossy(&payload)),
        }
    }
}

async fn send(tcp: &mut TcpStream, frame: Value, compressed: bool) {
    let text = frame.to_string();
    let frame = if compressed {
        masked_frame(0x1 | RSV1, &deflate(text.as_bytes()))
    } else {
        masked_frame(0x1, text.as_bytes())
    };
    within(tcp.write_all(&frame)).await.expect("write");
}

/// A connection that offered permessage-deflate and said hello (compressed); its response head.
async fn deflated_hello(addr: std::net::SocketAddr, user: &str) -> (TcpStream, String) {
    let (mut tcp, head) = handshake(addr, OFFER).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    send(&mut tcp, json!({"type": "hello", "id": 1, "protocol": 1, "user": user}), true).await;
    let (welcome, _) = next_message(&mut tcp).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    (tcp, head)
}

fn extension(head: &str) -> Option<&str> {
    head.lines().find_map(|l| {
        l.strip_prefix("sec-websocket-extensions: ").or_else(|| l.strip_prefix("Sec-WebSocket-Extensions: "))
    })
}

#[tokio::test]
async fn deflate_is_off_unless_the_host_turns_it_on() {
    let engine = engine().await;
    let addr = serve(&engine).await;
    let (_tcp, head) = handshake(addr, OFFER).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(extension(&head), None, "{head}");
    engine.shutdown().await;
}

#[tokio::test]
async fn compressed_messages_both_ways_without_context_takeover() {
    let engine = engine().await;
    let addr = serve_with(&engine, WsOptions::default().deflate(DeflateOptions::default())).await;
    let (mut alice, head) = deflated_hello(addr, "alice").await;
    assert_eq!(
        extension(&head),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
        "{head}"
    );
    let (mut bob, _) = deflated_hello(addr, "bob").await;
    for (tcp, id) in [(&mut alice, 2), (&mut bob, 2)] {
        send(tcp, json!({"type": "join", "id": id, "room": "r"}), false).await;
    }
    let text = "all work and no play makes jack a dull boy; ".repeat(40);
    // Compressed and not, the same message twice.
    for (n, compressed) in [(3, true), (4, false)] {
        send(&mut alice, json!({"type": "send", "id": n, "room": "r", "body": {"text": text}}), compressed).await;
    }
    for tcp in [&mut alice, &mut bob] {
        let mut got = Vec::new();
        while got.len() < 2 {
            let (event, compressed) = next_message(tcp).await;
            if event["type"] == "message" {
                assert!(compressed, "a long message goes out compressed");
                assert_eq!(event["body"]["text"], text.as_str());
                got.push(event["seq"].clone());
            } else if event["type"] == "sent" || event["type"] == "joined" || event["type"] == "member_joined" {
                assert!(!compressed, "short replies go as they are: {event}");
            }
        }
        assert_eq!(got, vec![json!(1), json!(2)]);
    }
    engine.shutdown().await;
}

#[tokio::test]
async fn a_decompression_bomb_is_frame_too_large() {
    let engine = engine().await;
    let max = engine.config().max_frame;
    let addr = serve_with(&engine, WsOptions::default().deflate(DeflateOptions::default())).await;
    let (mut tcp, _) = deflated_hello(addr, "mallory").await;
    // A text frame far under max_frame that inflates to sixteen times it.
    let bomb = deflate(&vec![b' '; max * 16]);
    assert!(bomb.len() < max / 16, "{} bytes", bomb.len());
    within(tcp.write_all(&masked_frame(0x1 | RSV1, &bomb))).await.expect("write");
    let (error, _) = next_message(&mut tcp).await;
    assert_eq!((error["type"].as_str(), error["code"].as_str()), (Some("error"), Some("frame_too_large")), "{error}");
    let (bye, _) = next_message(&mut tcp).await;
    assert_eq!(bye["type"], "bye", "{bye}");
    let (opcode, payload) = read_frame(&mut tcp).await.expect("a close frame");
    assert_eq!((opcode, u16::from_be_bytes([payload[0], payload[1]])), (0x8, 1009));
    engine.shutdown().await;
}

#[tokio::test]
async fn compressed_data_that_does_not_inflate_closes_with_1007() {
    let engine = engine().await;
    let addr = serve_with(&engine, WsOptions::default().deflate(DeflateOptions::default())).await;
    let (mut tcp, _) = deflated_hello(addr, "mallory").await;
    within(tcp.write_all(&masked_frame(0x1 | RSV1, &[0xff, 0xff, 0xff, 0xff]))).await.expect("write");
    loop {
        let (first, payload) = read_frame_whole(&mut tcp).await.expect("a close frame");
        if first & 0x0f == 0x8 {
            assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1007);
            break;
        }
    }
    engine.shutdown().await;
}
