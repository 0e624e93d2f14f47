//! Every error code of PROTOCOL.md §6 that a client can provoke, over a real TCP connection:
//! the fatal ones end with `bye` and the close, after the others the connection stays usable.

mod common;

use chat_core::auth::JwtAuthenticator;
use chat_core::client::HistoryQuery;
use chat_core::{Engine, ErrorCode};
use chat_transport_tcp::connect;
use common::{engine, serve, server, within, Raw};
use serde_json::json;

#[tokio::test]
async fn a_first_frame_other_than_hello_is_not_authenticated() {
    let (_engine, addr) = server().await;
    let mut raw = Raw::connect(addr).await;
    raw.send_json(json!({"type": "join", "id": 1, "room": "lobby"})).await;
    raw.expect_fatal("not_authenticated", "protocol_error").await;

    // A malformed first frame too.
    let mut raw = Raw::connect(addr).await;
    raw.send(b"{not json").await;
    raw.expect_fatal("not_authenticated", "protocol_error").await;
}

#[tokio::test]
async fn a_second_hello_is_not_authenticated() {
    let (_engine, addr) = server().await;
    let mut raw = Raw::hello(addr, "alice").await;
    raw.send_json(json!({"type": "hello", "id": 2, "protocol": 1, "user": "alice"})).await;
    let error = raw.expect_error("not_authenticated").await;
    assert_eq!(error["id"], 2);
    raw.expect_bye("protocol_error").await;
}

#[tokio::test]
async fn another_protocol_version_is_unsupported() {
    let (_engine, addr) = server().await;
    let mut raw = Raw::connect(addr).await;
    raw.send_json(json!({"type": "hello", "id": 1, "protocol": 2, "user": "alice"})).await;
    raw.expect_fatal("unsupported_protocol", "protocol_error").await;
}

async fn jwt_server() -> (JwtAuthenticator, std::net::SocketAddr) {
    let auth = JwtAuthenticator::new(b"a test secret of some length");
    let engine = Engine::builder().authenticator(auth.clone()).build().await.expect("engine");
    let addr = serve(&engine).await;
    (auth, addr)
}

#[tokio::test]
async fn a_bad_token_is_unauthorized() {
    let (auth, addr) = jwt_server().await;
    let refused = within("the refusal", connect(addr, Some("mallory"), Some("not.a.token"))).await;
    assert_eq!(refused.expect_err("refused").code(), Some(ErrorCode::Unauthorized));
    let foreign = JwtAuthenticator::new(b"another secret").issue("mallory", 60, None).expect("token");
    let refused = within("the refusal", connect(addr, None, Some(&foreign))).await;
    assert_eq!(refused.expect_err("refused").code(), Some(ErrorCode::Unauthorized));

    // Raw: the error, then `bye unauthorized`, then the close.
    let mut raw = Raw::connect(addr).await;
    raw.send_json(json!({"type": "hello", "id": 1, "protocol": 1, "token": "x.y.z"})).await;
    raw.expect_fatal("unauthorized", "unauthorized").await;

    // A good token is welcome.
    let token = auth.issue("alice", 60, None).expect("token");
    let alice = within("welcome", connect(addr, None, Some(&token))).await.expect("welcome");
    assert_eq!(alice.welcome().user, "alice");
}

#[tokio::test]
async fn token_room_patterns_make_other_rooms_forbidden() {
    let (auth, addr) = jwt_server().await;
    let token = auth.issue("alice", 60, Some(vec!["team-*".into()])).expect("token");
    let alice = within("welcome", connect(addr, None, Some(&token))).await.expect("welcome");
    let refused = within("join", alice.join("lobby", None)).await.expect_err("forbidden");
    assert_eq!(refused.code(), Some(ErrorCode::Forbidden));
    within("join", alice.join("team-a", None)).await.expect("an allowed room");
}

#[tokio::test]
async fn bad_frames_are_answered_and_the_connection_stays_usable() {
    let (_engine, addr) = server().await;
    let mut raw = Raw::hello(addr, "alice").await;
    let deep = format!(r#"{{"type":"send","id":9,"room":"r","body":{}1{}}}"#, "[".repeat(200), "]".repeat(200));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("invalid JSON", b"{\"type\":".to_vec()),
        ("not an object", b"[1,2]".to_vec()),
        ("unknown type", br#"{"type":"dance","id":3}"#.to_vec()),
        ("ill-typed field", br#"{"type":"join","id":4,"room":5}"#.to_vec()),
        ("ill-typed id", br#"{"type":"ping","id":-1}"#.to_vec()),
        ("missing field", br#"{"type":"send","id":5,"room":"r"}"#.to_vec()),
        ("empty frame", Vec::new()),
        ("invalid UTF-8", b"{\"type\":\"ping\",\"id\":6,\"x\":\"\xff\xfe\"}".to_vec()),
        ("too deep", deep.into_bytes()),
    ];
    for (i, (what, frame)) in cases.into_iter().enumerate() {
        raw.send(&frame).await;
        let error = raw.expect_error("bad_frame").await;
        assert!(error["message"].is_string(), "{what}: {error}");
        raw.expect_usable(100 + i as u64).await;
    }
    // The id is echoed where the frame is valid JSON with a valid id.
    raw.send(br#"{"type":"dance","id":42}"#).await;
    assert_eq!(raw.expect_error("bad_frame").await["id"], 42);
}

#[tokio::test]
async fn room_errors_are_not_fatal() {
    let (_engine, addr) = server().await;
    let alice = within("welcome", connect(addr, Some("alice"), None)).await.expect("welcome");
    let code = |r: Result<_, chat_core::client::ClientError>| r.expect_err("an error").code();

    let bad = within("join", alice.join("no spaces allowed", None)).await;
    assert_eq!(code(bad.map(drop)), Some(ErrorCode::InvalidRoom));
    let too_long = within("join", alice.join(&"x".repeat(129), None)).await;
    assert_eq!(code(too_long.map(drop)), Some(ErrorCode::InvalidRoom));

    let outsider = within("send", alice.send("lobby", json!("hi"))).await;
    assert_eq!(code(outsider.map(drop)), Some(ErrorCode::NotMember));
    let outsider = within("history", alice.history("lobby", HistoryQuery::default())).await;
    assert_eq!(code(outsider.map(drop)), Some(ErrorCode::NotMember));
    let outsider = within("presence", alice.presence("lobby")).await;
    assert_eq!(code(outsider.map(drop)), Some(ErrorCode::NotMember));

    within("join", alice.join("lobby", None)).await.expect("joined");
    assert_eq!(within("send", alice.send("lobby", json!("hi"))).await.expect("sent"), Some(1));
}

#[tokio::test]
async fn a_body_over_max_body_is_too_large_but_not_fatal() {
    let engine = engine(|c| c.max_body = 64).await;
    let addr = serve(&engine).await;
    let alice = within("welcome", connect(addr, Some("alice"), None)).await.expect("welcome");
    within("join", alice.join("lobby", None)).await.expect("joined");
    let refused = within("send", alice.send("lobby", json!("x".repeat(100)))).await.expect_err("too large");
    assert_eq!(refused.code(), Some(ErrorCode::BodyTooLarge));
    assert_eq!(within("send", alice.send("lobby", json!("small"))).await.expect("sent"), Some(1));
}

#[tokio::test]
async fn sends_over_the_rate_are_limited_but_not_fatal() {
    // A send costs 1,000 tokens at 1 per second: nothing refills during the test.
    let engine = engine(|c| {
        c.rate_per_sec = 1;
        c.rate_burst = 2_000;
        (c.costs.send, c.costs.join, c.costs.history) = (1_000, 0, 0);
    })
    .await;
    let addr = serve(&engine).await;
    let alice = within("welcome", connect(addr, Some("alice"), None)).await.expect("welcome");
    within("join", alice.join("lobby", None)).await.expect("joined");
    for _ in 0..2 {
        within("send", alice.send("lobby", json!("ok"))).await.expect("within the burst");
    }
    let refused = within("send", alice.send("lobby", json!("too fast"))).await.expect_err("rate limited");
    assert_eq!(refused.code(), Some(ErrorCode::RateLimited));
    // Still usable: a request the bucket can pay for (history costs nothing here) goes through.
    within("history", alice.history("lobby", HistoryQuery::default())).await.expect("history");
}

#[tokio::test]
async fn repeated_rate_limit_abuse_closes_with_protocol_error() {
    let engine = engine(|c| {
        c.rate_per_sec = 1;
        c.rate_burst = 1_000;
        c.rate_limit_strikes = 3;
        (c.costs.send, c.costs.join) = (1_000, 0);
    })
    .await;
    let addr = serve(&engine).await;
    let mut raw = Raw::hello(addr, "alice").await;
    raw.send_json(json!({"type": "join", "id": 2, "room": "lobby"})).await;
    assert_eq!(raw.recv().await["type"], "joined");
    for id in 3..10 {
        raw.send_json(json!({"type": "send", "id": id, "room": "lobby", "body": id})).await;
    }
    // Replies, events and errors, until the bye.
    let mut limited = 0;
    let bye = loop {
        let frame = raw.recv().await;
        match frame["type"].as_str() {
            Some("error") => {
                assert_eq!(frame["code"], "rate_limited", "{frame}");
                limited += 1;
            }
            Some("bye") => break frame,
            _ => {}
        }
    };
    assert_eq!(bye["reason"], "protocol_error");
    assert!(limited >= 3, "{limited} rate_limited errors before the close");
    raw.expect_closed().await;
}
