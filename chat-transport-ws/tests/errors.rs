//! Every error of PROTOCOL.md §6 that a client can provoke, over a real WebSocket: the fatal ones
//! end with `bye` and a close frame, after the non-fatal ones the connection stays usable.

mod common;

use chat_core::auth::JwtAuthenticator;
use chat_core::client::{ClientError, HistoryQuery};
use chat_core::{Engine, ErrorCode};
use common::*;
use futures::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

/// A ping request with `id` answered by a pong: the connection is still usable.
async fn still_usable(ws: &mut Raw, id: u64) {
    send_text(ws, format!(r#"{{"type":"ping","id":{id}}}"#)).await;
    let pong = next_json(ws).await.expect("pong");
    assert_eq!(pong, json!({"type":"pong","id":id}));
}

#[tokio::test]
async fn frame_of_max_frame_passes_one_byte_more_is_frame_too_large() {
    let engine = Engine::builder().tune(|c| c.max_frame = 1024).build().await.unwrap();
    let addr = serve(&engine).await;
    let mut ws = raw_hello(addr, "alice").await;
    let ping = r#"{"type":"ping","id":7}"#;
    send_text(&mut ws, format!("{ping:<1024}")).await; // padded with spaces to exactly max_frame
    assert_eq!(next_json(&mut ws).await, Some(json!({"type":"pong","id":7})));
    send_text(&mut ws, format!("{ping:<1025}")).await;
    expect_fatal(&mut ws, "frame_too_large", "protocol_error", 1009).await;
    engine.shutdown().await;
}

#[tokio::test]
async fn fragmented_message_over_max_frame_is_frame_too_large() {
    let engine = Engine::builder().tune(|c| c.max_frame = 1024).build().await.unwrap();
    let addr = serve(&engine).await;
    let mut ws = raw_hello(addr, "alice").await;
    use tokio_tungstenite::tungstenite::protocol::frame::{coding::Data, coding::OpCode, Frame};
    let part = vec![b' '; 600];
    let first = Frame::message(part.clone(), OpCode::Data(Data::Text), false);
    let second = Frame::message(part, OpCode::Data(Data::Continue), true);
    ws.feed(Message::Frame(first)).await.unwrap();
    ws.send(Message::Frame(second)).await.unwrap();
    expect_fatal(&mut ws, "frame_too_large", "protocol_error", 1009).await;
    engine.shutdown().await;
}

#[tokio::test]
async fn first_frame_other_than_hello_is_not_authenticated() {
    let engine = engine().await;
    let addr = serve(&engine).await;
    let mut ws = raw(addr).await;
    send_text(&mut ws, r#"{"type":"join","id":1,"room":"lobby"}"#).await;
    expect_fatal(&mut ws, "not_authenticated", "protocol_error", 1000).await;
    // A binary first frame too.
    let mut ws = raw(addr).await;
    within(ws.send(Message::binary(b"{}".to_vec()))).await.unwrap();
    expect_fatal(&mut ws, "not_authenticated", "protocol_error", 1000).await;
    engine.shutdown().await;
}

#[tokio::test]
async fn second_hello_is_not_authenticated() {
    let engine = engine().await;
    let addr = serve(&engine).await;
    let mut ws = raw_hello(addr, "alice").await;
    send_text(&mut ws, r#"{"type":"hello","id":2,"protocol":1,"user":"alice"}"#).await;
    expect_fatal(&mut ws, "not_authenticated", "protocol_error", 1000).await;
    engine.shutdown().await;
}

#[tokio::test]
async fn other_protocol_version_is_unsupported_protocol() {
    let engine = engine().await;
    let addr = serve(&engine).await;
    let mut ws = raw(addr).await;
    send_text(&mut ws, r#"{"type":"hello","id":1,"protocol":2,"user":"alice"}"#).await;
    expect_fatal(&mut ws, "unsupported_protocol", "protocol_error", 1000).await;
    engine.shutdown().await;
}

#[tokio::test]
async fn bad_token_is_unauthorized_and_room_patterns_are_forbidden() {
    let secret = b"a test secret that is long enough";
    let engine = Engine::builder().authenticator(JwtAuthenticator::new(secret)).build().await.unwrap();
    let addr = serve(&engine).await;
    let issuer = JwtAuthenticator::new(secret);

    let refused = connect_client(addr, Some("alice"), Some("not a token")).await.expect_err("refused");
    assert_eq!(refused.code(), Some(ErrorCode::Unauthorized), "{refused}");
    // Over a raw connection: the error, `bye unauthorized`, the close.
    let mut ws = raw(addr).await;
    send_text(&mut ws, r#"{"type":"hello","id":1,"protocol":1,"user":"alice"}"#).await;
    expect_fatal(&mut ws, "unauthorized", "unauthorized", 1000).await;

    let token = issuer.issue("alice", 60, Some(vec!["team-*".into()])).unwrap();
    let alice = connect_client(addr, None, Some(&token)).await.expect("good token");
    assert_eq!(alice.welcome().user, "alice");
    let forbidden = alice.join("admin", None).await.unwrap_err();
    assert_eq!(forbidden.code(), Some(ErrorCode::Forbidden));
    alice.join("team-1", None).await.expect("allowed by the pattern");
    engine.shutdown().await;
}

/// The server's error code of a failed request.
fn code<T>(r: Result<T, chat_core::client::ClientError>) -> Option<ErrorCode> {
    r.err().and_then(|e| e.code())
}

async fn connect_client(
    addr: std::net::SocketAddr,
    user: Option<&str>,
    token: Option<&str>,
) -> Result<chat_core::client::Client, ClientError> {
    within(chat_transport_ws::connect(&url(addr), user, token)).await
}

#[tokio::test]
async fn bad_frames_are_answered_and_the_connection_stays_open() {
    let engine = engine().await;
    let addr = serve(&engine).await;
    let mut ws = raw_hello(addr, "alice").await;
    let deep = format!(r#"{{"type":"send","id":5,"room":"lobby","body":{}{}}}"#, "[".repeat(70), "]".repeat(70));
    let cases: [(&str, Option<u64>); 5] = [
        ("{not json", None),
        (r#"{"type":"no_such_type","id":2}"#, Some(2)),
        (r#"{"type":"join","id":3,"room":5}"#, Some(3)),
        (r#"{"type":"join","id":-4,"room":"lobby"}"#, None),
        (&deep, None),
    ];
    for (i, (frame, id)) in cases.iter().enumerate() {
        send_text(&mut ws, *frame).await;
        let error = next_json(&mut ws).await.expect("error");
        assert_eq!((error["type"].as_str(), error["code"].as_str()), (Some("error"), Some("bad_frame")), "{frame}");
        if let Some(id) = id {
            assert_eq!(error["id"], *id, "{error}");
        }
        still_usable(&mut ws, 100 + i as u64).await;
    }
    within(ws.send(Message::binary(br#"{"type":"ping","id":1}"#.to_vec()))).await.unwrap();
    let error = next_json(&mut ws).await.expect("error");
    assert_eq!(error["code"], "bad_frame", "{error}");
    still_usable(&mut ws, 200).await;
    engine.shutdown().await;
}

#[tokio::test]
async fn room_errors_are_not_fatal() {
    let engine = Engine::builder()
        .tune(|c| {
            c.max_body = 64;
            // A send costs 1,000 tokens at 1 per second (nothing refills during the test); the
            // other requests here are free.
            c.rate_per_sec = 1;
            c.rate_burst = 3_000;
            (c.costs.send, c.costs.join, c.costs.history, c.costs.presence, c.costs.invalid) = (1_000, 0, 0, 0, 0);
            c.rate_limit_strikes = 2;
        })
        .build()
        .await
        .unwrap();
    let addr = serve(&engine).await;
    let mut alice = connect_client(addr, Some("alice"), None).await.unwrap();

    assert_eq!(code(alice.join("not a room!", None).await), Some(ErrorCode::InvalidRoom));
    assert_eq!(code(alice.send("lobby", json!("hi")).await), Some(ErrorCode::NotMember));
    assert_eq!(code(alice.history("lobby", HistoryQuery::default()).await), Some(ErrorCode::NotMember));
    alice.join("lobby", None).await.expect("still usable");
    let big = json!({ "text": "x".repeat(100) });
    assert_eq!(code(alice.send("lobby", big).await), Some(ErrorCode::BodyTooLarge));
    assert_eq!(alice.send("lobby", json!("first")).await.unwrap(), Some(1));
    assert_eq!(code(alice.send("lobby", json!("too soon")).await), Some(ErrorCode::RateLimited));
    alice.presence("lobby").await.expect("still usable after rate_limited");
    assert_eq!(code(alice.send("lobby", json!("again")).await), Some(ErrorCode::RateLimited));
    assert_eq!(code(alice.send("lobby", json!("and again")).await), Some(ErrorCode::RateLimited));
    // Repeated abuse: the third strike in a row closes with protocol_error.
    assert_eq!(code(alice.send("lobby", json!("once more")).await), Some(ErrorCode::RateLimited));
    let bye = next_bye(&mut alice).await;
    assert_eq!(bye.reason, "protocol_error");
    assert_eq!(within(alice.next_event()).await, Err(ClientError::Closed), "closed after bye");
    engine.shutdown().await;
}

/// What a careful reading of RFC 6455 found (issue 11), each answered as the RFC says.
#[tokio::test]
async fn rfc_6455_departures_found_by_reading() {
    let engine = engine().await;
    let addr = serve(&engine).await;
    let upgrade = |version: &str, key: &str| {
        format!(
            "GET /ws {version}\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
    };
    let (_tcp, head) = request_head(addr, &upgrade("HTTP/1.0", "dGhlIHNhbXBsZSBub25jZQ==")).await;
    assert!(head.contains(" 505 "), "an HTTP/1.0 upgrade: {head}");
    let (_tcp, head) = request_head(addr, &upgrade("HTTP/1.1", "c2hvcnQ=")).await;
    assert!(head.starts_with("HTTP/1.1 400"), "a key that is not 16 bytes: {head}");

    // A 64-bit length with its top bit set is a protocol error (1002), not a message too big.
    let mut tcp = raw_tcp_hello(addr, "alice").await;
    let frame = [0x81, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 1, 0x37, 0xfa, 0x21, 0x3d];
    within(tokio::io::AsyncWriteExt::write_all(&mut tcp, &frame)).await.expect("write");
    assert_eq!(close_code_after(&mut tcp).await, 1002);

    // A length not in its shortest form likewise.
    let mut tcp = raw_tcp_hello(addr, "alice").await;
    let frame = [0x81, 0x80 | 126, 0, 5, 0x37, 0xfa, 0x21, 0x3d, 1, 2, 3, 4, 5];
    within(tokio::io::AsyncWriteExt::write_all(&mut tcp, &frame)).await.expect("write");
    assert_eq!(close_code_after(&mut tcp).await, 1002);

    // A close whose reason is not UTF-8 is answered 1007.
    let mut tcp = raw_tcp_hello(addr, "alice").await;
    let close = masked_frame(0x8, &[0x03, 0xe8, 0xff, 0xfe]);
    within(tokio::io::AsyncWriteExt::write_all(&mut tcp, &close)).await.expect("write");
    assert_eq!(close_code_after(&mut tcp).await, 1007);
    engine.shutdown().await;
}

/// The code of the server's close frame, skipping the frames before it.
async fn close_code_after(tcp: &mut tokio::net::TcpStream) -> u16 {
    loop {
        let (opcode, payload) = read_frame(tcp).await.expect("a close frame before the end");
        if opcode == 0x8 {
            return u16::from_be_bytes([payload[0], payload[1]]);
        }
    }
}

/// Nothing follows the server's close frame (RFC 6455 §5.5.1): a ping that arrives after it
/// gets no pong.
#[tokio::test]
async fn no_pong_after_our_close() {
    let engine = engine().await;
    let addr = serve(&engine).await;
    let mut tcp = raw_tcp_hello(addr, "alice").await;
    assert_eq!(engine.kick("alice"), 1);
    close_code_after(&mut tcp).await;
    let ping_then_close = [masked_frame(0x9, b"late"), masked_frame(0x8, &[0x03, 0xe8])].concat();
    within(tokio::io::AsyncWriteExt::write_all(&mut tcp, &ping_then_close)).await.expect("write");
    while let Some((opcode, payload)) = read_frame(&mut tcp).await {
        assert_ne!(opcode, 0xA, "a pong after the close frame: {payload:?}");
    }
    engine.shutdown().await;
}

/// Invalid UTF-8 fails the connection (1007) when it arrives, not when its message ends
/// (RFC 6455 §8.1; Autobahn 6.4.1 to 6.4.4, NON-STRICT before): in a fragment of a message
/// whose last fragment never comes, and in the part of a frame that has arrived.
#[tokio::test]
async fn invalid_utf8_fails_fast() {
    let engine = engine().await;
    let addr = serve(&engine).await;
    // Autobahn 6.4.1's parts: valid, then U+110000 (invalid from its second byte), then more.
    let (part1, part2) = ("κόσμε".as_bytes(), [0xf4, 0x90, 0x80, 0x80]);

    // In fragments: the first is held, the second fails the connection; the third is never sent.
    let mut tcp = raw_tcp_hello(addr, "alice").await;
    let mut first = masked_frame(0x1, part1);
    first[0] &= 0x7f; // not FIN
    let mut second = masked_frame(0x0, &part2);
    second[0] &= 0x7f;
    within(tokio::io::AsyncWriteExt::write_all(&mut tcp, &[first, second].concat())).await.expect("write");
    assert_eq!(close_code_after(&mut tcp).await, 1007, "a fragment");

    // In one frame of 100 bytes, of which only the first 25 (the invalid bytes among them) come.
    let mut tcp = raw_tcp_hello(addr, "alice").await;
    let payload = [part1, &part2[..], &[b'x'; 100 - 10 - 4][..]].concat();
    let frame = masked_frame(0x1, &payload);
    within(tokio::io::AsyncWriteExt::write_all(&mut tcp, &frame[..6 + 25])).await.expect("write");
    assert_eq!(close_code_after(&mut tcp).await, 1007, "the part of a frame that arrived");

    // A character split between fragments is valid, and so is a message of them.
    let mut tcp = raw_tcp_hello(addr, "alice").await;
    let ping = r#"{"type":"ping","id":7,"x":"€"}"#.as_bytes();
    let cut = ping.len() - 3; // inside the euro sign
    let mut first = masked_frame(0x1, &ping[..cut]);
    first[0] &= 0x7f;
    let last = masked_frame(0x0, &ping[cut..]);
    within(tokio::io::AsyncWriteExt::write_all(&mut tcp, &[first, last].concat())).await.expect("write");
    let (opcode, pong) = read_frame(&mut tcp).await.expect("pong");
    assert_eq!(opcode, 0x1);
    assert!(pong.starts_with(br#"{"type":"pong","id":7"#), "{}", String::from_utf8_lossy(&pong));
    engine.shutdown().await;
}

/// 1012, 1013 and 1014 are close codes a peer may send (IANA's registry: service restart, try
/// again later, bad gateway): echoed, not answered 1002 (Autobahn does not test them).
#[tokio::test]
async fn registered_close_codes_are_echoed() {
    let engine = engine().await;
    let addr = serve(&engine).await;
    for code in [1012u16, 1013, 1014] {
        let mut tcp = raw_tcp_hello(addr, "alice").await;
        let close = masked_frame(0x8, &code.to_be_bytes());
        within(tokio::io::AsyncWriteExt::write_all(&mut tcp, &close)).await.expect("write");
        assert_eq!(close_code_after(&mut tcp).await, code);
    }
    engine.shutdown().await;
}
