//! Every request, reply, event and error of PROTOCOL.md, driven through the engine's driver
//! over in-memory connections.

mod common;

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use chat_core::auth::{Action, Identity, Refusal};
use chat_core::hooks::{DisconnectReason, Hooks, SendDecision, SessionInfo};
use chat_core::{Authorizer, ByeReason, Engine, Inbound, JwtAuthenticator, RoomName};
use common::{engine, Raw};
use serde_json::{json, Value};

#[tokio::test]
async fn hello_welcome_and_session_fields() {
    let engine = Engine::builder().node_id("n1").build().await.unwrap();
    let mut raw = Raw::new(&engine);
    let welcome = raw.ask(r#"{"type":"hello","id":1,"protocol":1,"user":"alice","extra":true}"#).await;
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["id"], 1);
    assert_eq!(welcome["user"], "alice");
    assert_eq!(welcome["node"], "n1");
    assert_eq!(welcome["heartbeat_ms"], 25_000);
    assert_eq!(welcome["max_frame"], 65_536);
    assert!(welcome["session"].as_str().is_some_and(|s| !s.is_empty()));

    // hello without id is still answered, without id
    let mut raw2 = Raw::new(&engine);
    let welcome2 = raw2.ask(r#"{"type":"hello","protocol":1,"user":"bob"}"#).await;
    assert_eq!(welcome2["type"], "welcome");
    assert!(welcome2.get("id").is_none());
    assert_ne!(welcome2["session"], welcome["session"]);
}

#[tokio::test]
async fn first_frame_must_be_hello() {
    let engine = engine().await;
    for first in [r#"{"type":"join","id":3,"room":"lobby"}"#, "not json", r#"{"type":"hello","id":3}"#, "[]"] {
        let mut raw = Raw::new(&engine);
        let reply = raw.ask(first).await;
        assert_eq!(reply["code"], "not_authenticated", "{first}");
        if first.contains("\"id\":3") {
            assert_eq!(reply["id"], 3, "the error echoes a valid id");
        }
        raw.expect_bye("protocol_error").await;
    }
    let mut raw = Raw::new(&engine);
    raw.send_inbound(Inbound::Binary);
    assert_eq!(raw.recv().await["code"], "not_authenticated");
    raw.expect_bye("protocol_error").await;
}

#[tokio::test]
async fn second_hello_is_fatal() {
    let engine = engine().await;
    let mut raw = Raw::hello(&engine, "alice").await;
    raw.expect_error(r#"{"type":"hello","id":2,"protocol":1,"user":"alice"}"#, "not_authenticated", Some(2)).await;
    let bye = raw.recv().await;
    assert_eq!(bye, json!({"type":"bye","reason":"protocol_error","reconnect":false}));
}

/// A second `hello` is fatal even when it is malformed (PROTOCOL.md §3), where any other
/// malformed request is the non-fatal `bad_frame`.
#[tokio::test]
async fn a_malformed_second_hello_is_fatal_too() {
    let engine = engine().await;
    for second in [
        r#"{"type":"hello","id":9}"#,
        r#"{"type":"hello","id":9,"protocol":"one"}"#,
        r#"{"type":"hello","id":9,"protocol":1,"user":7}"#,
        r#"{"type":"hello","id":9,"protocol":1,"token":[]}"#,
    ] {
        let mut raw = Raw::hello(&engine, "alice").await;
        raw.expect_error(second, "not_authenticated", Some(9)).await;
        raw.expect_bye("protocol_error").await;
    }
    // Another request, malformed the same way, is not.
    let mut raw = Raw::hello(&engine, "alice").await;
    raw.expect_error(r#"{"type":"join","id":9}"#, "bad_frame", Some(9)).await;
    assert_eq!(raw.ask(r#"{"type":"ping","id":10}"#).await["type"], "pong");
}

#[tokio::test]
async fn unsupported_protocol_and_unauthorized() {
    let engine = engine().await;
    let mut raw = Raw::new(&engine);
    raw.expect_error(r#"{"type":"hello","id":1,"protocol":2,"user":"a"}"#, "unsupported_protocol", Some(1)).await;
    raw.expect_bye("protocol_error").await;

    // The anonymous authenticator needs a user.
    let mut raw = Raw::new(&engine);
    raw.expect_error(r#"{"type":"hello","id":1,"protocol":1}"#, "unauthorized", Some(1)).await;
    let bye = raw.recv().await;
    assert_eq!(bye, json!({"type":"bye","reason":"unauthorized","reconnect":false}));

    // unsupported_protocol outranks unauthorized
    let mut raw = Raw::new(&engine);
    raw.expect_error(r#"{"type":"hello","id":1,"protocol":7}"#, "unsupported_protocol", Some(1)).await;
}

#[tokio::test]
async fn jwt_tokens_decide_the_user_and_its_rooms() {
    let auth = JwtAuthenticator::new(b"test secret");
    let engine = Engine::builder().authenticator(auth.clone()).build().await.unwrap();
    let token = auth.issue("carol", 60, Some(vec!["team-*".into()])).unwrap();
    let mut raw = Raw::new(&engine);
    let welcome =
        raw.ask(&format!(r#"{{"type":"hello","id":1,"protocol":1,"token":"{token}","user":"mallory"}}"#)).await;
    assert_eq!(welcome["user"], "carol", "the token, not the claimed user, decides");
    raw.join("team-a").await;
    raw.expect_error(r#"{"type":"join","id":3,"room":"admin"}"#, "forbidden", Some(3)).await;

    let mut bad = Raw::new(&engine);
    bad.expect_error(r#"{"type":"hello","id":1,"protocol":1,"token":"a.b.c"}"#, "unauthorized", Some(1)).await;
    bad.expect_bye("unauthorized").await;
    let mut none = Raw::new(&engine);
    none.expect_error(r#"{"type":"hello","id":1,"protocol":1,"user":"x"}"#, "unauthorized", Some(1)).await;
}

#[tokio::test]
async fn join_leave_and_their_idempotence() {
    let engine = engine().await;
    let mut raw = Raw::hello(&engine, "alice").await;
    let joined = raw.ask(r#"{"type":"join","id":2,"room":"lobby"}"#).await;
    assert_eq!(joined["type"], "joined");
    assert_eq!((joined["id"].as_u64(), joined["seq"].as_u64()), (Some(2), Some(0)));
    assert_eq!(joined["recovered"], false);
    let epoch = joined["epoch"].as_str().unwrap().to_owned();
    assert_eq!(raw.recv().await, json!({"type":"member_joined","room":"lobby","user":"alice"}));
    let again = raw.ask(r#"{"type":"join","id":3,"room":"lobby"}"#).await;
    assert_eq!((again["type"].as_str(), again["epoch"].as_str()), (Some("joined"), Some(epoch.as_str())));
    assert_eq!(
        raw.ask(r#"{"type":"leave","id":4,"room":"lobby"}"#).await,
        json!({"type":"left","id":4,"room":"lobby"})
    );
    assert_eq!(
        raw.ask(r#"{"type":"leave","id":5,"room":"lobby"}"#).await,
        json!({"type":"left","id":5,"room":"lobby"})
    );
    raw.expect_error(r#"{"type":"send","id":6,"room":"lobby","body":1}"#, "not_member", Some(6)).await;
}

#[tokio::test]
async fn send_fans_out_to_every_member_with_the_body_unchanged_but_compact() {
    let engine = engine().await;
    let mut alice = Raw::hello(&engine, "alice").await;
    let mut bob = Raw::hello(&engine, "bob").await;
    alice.join("lobby").await;
    bob.join("lobby").await;
    let body = r#"{"text" : "héllo \u00e9", "n": [1.50, null, {"deep": true}]}"#;
    alice.send(&format!(r#"{{"type":"send","id":7,"room":"lobby","body": {body} }}"#));
    for raw in [&mut alice, &mut bob] {
        let frame = loop {
            let f = raw.recv_raw().await;
            if f.starts_with(br#"{"type":"message""#) {
                break f;
            }
        };
        let text = std::str::from_utf8(&frame).unwrap();
        // Byte for byte but for the whitespace outside strings: numbers, escapes and UTF-8 as sent.
        let compact = r#"{"text":"héllo \u00e9","n":[1.50,null,{"deep":true}]}"#;
        assert!(text.ends_with(&format!(r#""body":{compact}}}"#)), "body passed through compact: {text}");
        let v: Value = serde_json::from_slice(&frame).unwrap();
        assert_eq!(
            (v["room"].as_str(), v["seq"].as_u64(), v["from"].as_str()),
            (Some("lobby"), Some(1), Some("alice"))
        );
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        assert!(v["ts"].as_u64().is_some_and(|ts| ts <= now && ts + 60_000 > now));
    }
    let sent = alice.recv_of("sent").await;
    assert_eq!(sent, json!({"type":"sent","id":7,"room":"lobby","seq":1}));

    // Without id: no `sent`, but the message goes out.
    alice.send(r#"{"type":"send","room":"lobby","body":"quiet"}"#);
    assert_eq!(bob.recv_of("message").await["seq"], 2);
    alice.send(r#"{"type":"ping","id":99}"#);
    let next = alice.recv().await;
    assert_eq!(next["seq"], 2, "the message event, and no sent reply");
    assert_eq!(alice.recv().await, json!({"type":"pong","id":99}));
}

#[tokio::test]
async fn replies_come_back_in_request_order() {
    let engine = engine().await;
    let mut raw = Raw::hello(&engine, "alice").await;
    // join followed at once by sends works, and seqs follow the order sent
    raw.send(r#"{"type":"join","id":1,"room":"r"}"#);
    for id in 2..12 {
        raw.send(&format!(r#"{{"type":"send","id":{id},"room":"r","body":{id}}}"#));
    }
    let mut replies = Vec::new();
    let mut messages = Vec::new();
    while replies.len() < 11 {
        let f = raw.recv().await;
        match f["type"].as_str() {
            Some("message") => messages.push(f["body"].as_u64().unwrap()),
            Some("member_joined") => {}
            _ => replies.push(f),
        }
    }
    assert_eq!(replies[0]["type"], "joined");
    for (i, reply) in replies[1..].iter().enumerate() {
        assert_eq!(reply["id"].as_u64(), Some(i as u64 + 2));
        assert_eq!(reply["seq"].as_u64(), Some(i as u64 + 1));
    }
    while messages.len() < 10 {
        messages.push(raw.recv_of("message").await["body"].as_u64().unwrap());
    }
    assert_eq!(messages, (2..12).collect::<Vec<_>>());
}

#[tokio::test]
async fn ephemeral_messages_are_not_stored() {
    let engine = engine().await;
    let mut alice = Raw::hello(&engine, "alice").await;
    alice.join("r").await;
    alice.send(r#"{"type":"send","id":2,"room":"r","body":{"typing":true},"ephemeral":true,"key":"ignored"}"#);
    let event = alice.recv().await;
    assert_eq!(event["type"], "message");
    assert!(event.get("seq").is_none());
    assert_eq!(event["body"], json!({"typing": true}));
    assert_eq!(alice.recv().await, json!({"type":"sent","id":2,"room":"r"}));
    let history = alice.ask(r#"{"type":"history","id":3,"room":"r"}"#).await;
    assert_eq!(history["messages"], json!([]));
    // a stored message after it still gets seq 1
    alice.send(r#"{"type":"send","id":4,"room":"r","body":1}"#);
    assert_eq!(alice.recv_of("sent").await["seq"], 1);
}

#[tokio::test]
async fn idempotency_keys_publish_once() {
    let engine = engine().await;
    let mut alice = Raw::hello(&engine, "alice").await;
    alice.join("r").await;
    alice.send(r#"{"type":"send","id":2,"room":"r","body":"a","key":"k1"}"#);
    assert_eq!(alice.recv_of("sent").await["seq"], 1);
    alice.send(r#"{"type":"send","id":3,"room":"r","body":"a again","key":"k1"}"#);
    assert_eq!(alice.recv_of("sent").await, json!({"type":"sent","id":3,"room":"r","seq":1}));
    alice.send(r#"{"type":"send","id":4,"room":"r","body":"b","key":"k2"}"#);
    assert_eq!(alice.recv_of("sent").await["seq"], 2);
    let history = alice.ask(r#"{"type":"history","id":5,"room":"r"}"#).await;
    let bodies: Vec<_> = history["messages"].as_array().unwrap().iter().map(|m| m["body"].clone()).collect();
    assert_eq!(bodies, vec![json!("a"), json!("b")]);
    // another user's identical key is another message
    let mut bob = Raw::hello(&engine, "bob").await;
    bob.join("r").await;
    bob.send(r#"{"type":"send","id":2,"room":"r","body":"c","key":"k1"}"#);
    assert_eq!(bob.recv_of("sent").await["seq"], 3);
}

#[tokio::test]
async fn history_bounds_limits_and_order() {
    let engine = Engine::builder().tune(|c| c.history_max_limit = 5).build().await.unwrap();
    let mut raw = Raw::hello(&engine, "alice").await;
    raw.join("r").await;
    for n in 1..=10 {
        raw.send(&format!(r#"{{"type":"send","id":100,"room":"r","body":{n}}}"#));
        raw.recv_of("sent").await;
    }
    async fn seqs(raw: &mut Raw, frame: String) -> Vec<u64> {
        let reply = raw.ask(&frame).await;
        assert_eq!(reply["type"], "history", "{reply}");
        assert!(reply["epoch"].is_string());
        reply["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect()
    }
    assert_eq!(seqs(&mut raw, r#"{"type":"history","id":2,"room":"r","limit":3}"#.into()).await, vec![8, 9, 10]);
    assert_eq!(seqs(&mut raw, r#"{"type":"history","id":2,"room":"r","before":5,"limit":2}"#.into()).await, vec![3, 4]);
    assert_eq!(seqs(&mut raw, r#"{"type":"history","id":2,"room":"r","after":5,"limit":2}"#.into()).await, vec![6, 7]);
    assert_eq!(
        seqs(&mut raw, r#"{"type":"history","id":2,"room":"r","after":2,"before":6}"#.into()).await,
        vec![3, 4, 5]
    );
    assert_eq!(
        seqs(&mut raw, r#"{"type":"history","id":2,"room":"r","limit":1000}"#.into()).await,
        vec![6, 7, 8, 9, 10]
    );
    assert_eq!(seqs(&mut raw, r#"{"type":"history","id":2,"room":"r"}"#.into()).await, vec![6, 7, 8, 9, 10]);
    assert_eq!(seqs(&mut raw, r#"{"type":"history","id":2,"room":"r","after":10}"#.into()).await, Vec::<u64>::new());
    raw.expect_error(r#"{"type":"history","id":3,"room":"r","limit":0}"#, "bad_frame", Some(3)).await;
    raw.expect_error(r#"{"type":"history","id":4,"room":"r","limit":-2}"#, "bad_frame", Some(4)).await;
    raw.expect_error(r#"{"type":"history","id":5,"room":"r","before":"x"}"#, "bad_frame", Some(5)).await;
    raw.expect_error(r#"{"type":"history","id":6,"room":"elsewhere"}"#, "not_member", Some(6)).await;
}

#[tokio::test]
async fn presence_counts_sessions_and_member_events_fire_on_first_and_last() {
    let engine = engine().await;
    let mut watcher = Raw::hello(&engine, "watcher").await;
    watcher.join("r").await;
    let mut a1 = Raw::hello(&engine, "alice").await;
    a1.join("r").await;
    assert_eq!(watcher.recv().await, json!({"type":"member_joined","room":"r","user":"alice"}));
    let mut a2 = Raw::hello(&engine, "alice").await;
    assert_eq!(a2.ask(r#"{"type":"join","id":1,"room":"r"}"#).await["type"], "joined");
    let presence = watcher.ask(r#"{"type":"presence","id":2,"room":"r"}"#).await;
    assert_eq!(
        presence,
        json!({"type":"presence","id":2,"room":"r","members":[{"user":"alice","sessions":2},{"user":"watcher","sessions":1}]}),
        "alice's second session sent no member_joined"
    );
    a1.ask(r#"{"type":"leave","id":3,"room":"r"}"#).await;
    let presence = watcher.ask(r#"{"type":"presence","id":3,"room":"r"}"#).await;
    assert_eq!(presence["members"][0], json!({"user":"alice","sessions":1}), "no member_left while a session stays");
    drop(a2); // disconnect: the last session leaves
    assert_eq!(watcher.recv().await, json!({"type":"member_left","room":"r","user":"alice"}));
    let presence = watcher.ask(r#"{"type":"presence","id":4,"room":"r"}"#).await;
    assert_eq!(presence["members"], json!([{"user":"watcher","sessions":1}]));
    watcher.expect_error(r#"{"type":"presence","id":5,"room":"other"}"#, "not_member", Some(5)).await;
}

#[tokio::test]
async fn member_events_can_be_turned_off_per_room() {
    let engine = Engine::builder().member_events(|room| room.starts_with("chatty")).build().await.unwrap();
    let mut raw = Raw::hello(&engine, "alice").await;
    assert_eq!(raw.ask(r#"{"type":"join","id":1,"room":"quiet"}"#).await["type"], "joined");
    assert_eq!(raw.ask(r#"{"type":"join","id":2,"room":"chatty"}"#).await["type"], "joined");
    let next = raw.recv().await;
    assert_eq!(next, json!({"type":"member_joined","room":"chatty","user":"alice"}), "none for quiet");
}

#[tokio::test]
async fn pings_and_pongs() {
    let engine = engine().await;
    let mut raw = Raw::hello(&engine, "alice").await;
    raw.send(r#"{"type":"ping"}"#);
    raw.send(r#"{"type":"pong"}"#);
    assert_eq!(raw.ask(r#"{"type":"ping","id":5}"#).await, json!({"type":"pong","id":5}), "nothing before it");
}

#[tokio::test]
async fn bad_frames_get_errors_and_the_session_keeps_working() {
    let engine = engine().await;
    let mut raw = Raw::hello(&engine, "alice").await;
    let mut other = Raw::hello(&engine, "bob").await;
    other.join("r").await;
    raw.join("r").await;
    let deep = format!(r#"{{"type":"send","id":9,"room":"r","body":{}0{}}}"#, "[".repeat(30_000), "]".repeat(30_000));
    let cases: Vec<(String, Option<u64>)> = vec![
        ("{not json".into(), None),
        ("".into(), None),
        ("[1,2,3]".into(), None),
        ("42".into(), None),
        (r#"{"type":"teleport","id":3}"#.into(), Some(3)),
        (r#"{"id":4}"#.into(), Some(4)),
        (r#"{"type":7,"id":5}"#.into(), Some(5)),
        (r#"{"type":"join","id":6}"#.into(), Some(6)),
        (r#"{"type":"join","id":7,"room":7}"#.into(), Some(7)),
        (r#"{"type":"send","id":8,"room":"r"}"#.into(), Some(8)),
        (r#"{"type":"send","id":10,"room":"r","body":1,"ephemeral":"yes"}"#.into(), Some(10)),
        (r#"{"type":"send","id":11,"room":"r","body":1,"key":5}"#.into(), Some(11)),
        (format!(r#"{{"type":"send","id":12,"room":"r","body":1,"key":"{}"}}"#, "k".repeat(129)), Some(12)),
        (r#"{"type":"join","id":13,"room":"r","since":{"epoch":"e"}}"#.into(), Some(13)),
        (r#"{"type":"ping","id":1.0}"#.into(), None),
        (r#"{"type":"ping","id":-1}"#.into(), None),
        (r#"{"type":"send","id":14,"room":"r","body":"\ud800"}"#.into(), None),
        (deep, None),
    ];
    for (frame, id) in &cases {
        raw.expect_error(frame, "bad_frame", *id).await;
    }
    raw.send_bytes(Bytes::from_static(b"{\"type\":\"ping\",\"id\":1,\"x\":\"\xff\"}"));
    let e = raw.recv().await;
    assert_eq!((e["code"].as_str(), e.get("id")), (Some("bad_frame"), None), "invalid UTF-8");
    raw.send_inbound(Inbound::Binary);
    assert_eq!(raw.recv().await["code"], "bad_frame");

    // The session, and everyone else, keep working.
    raw.send(r#"{"type":"send","id":20,"room":"r","body":"still here"}"#);
    assert_eq!(raw.recv_of("sent").await["seq"], 1);
    assert_eq!(other.recv_of("message").await["body"], "still here");
}

#[tokio::test]
async fn invalid_rooms_not_member_and_error_precedence() {
    let engine = Engine::builder().tune(|c| c.max_body = 10).build().await.unwrap();
    let mut raw = Raw::hello(&engine, "alice").await;
    for room in ["", "has space", "ünïcode", "slash/", &"x".repeat(129)] {
        let frame = json!({"type":"join","id":1,"room":room}).to_string();
        raw.expect_error(&frame, "invalid_room", Some(1)).await;
    }
    raw.join(&"x".repeat(128)).await;
    raw.join("A-z_0.9:@#").await;
    // bad_frame > invalid_room > not_member > body_too_large
    raw.expect_error(r#"{"type":"send","id":2,"room":"bad room"}"#, "bad_frame", Some(2)).await;
    raw.expect_error(r#"{"type":"send","id":3,"room":"bad room","body":"01234567890123"}"#, "invalid_room", Some(3))
        .await;
    raw.expect_error(r#"{"type":"send","id":4,"room":"nope","body":"01234567890123"}"#, "not_member", Some(4)).await;
    raw.expect_error(r#"{"type":"send","id":5,"room":"A-z_0.9:@#","body":"0123456789"}"#, "body_too_large", Some(5))
        .await;
    // exactly max_body (surrounding whitespace not counted) is fine
    raw.send(r#"{"type":"send","id":6,"room":"A-z_0.9:@#","body":   "01234567"   }"#);
    assert_eq!(raw.recv_of("sent").await["id"], 6);
}

struct DenySecrets;

#[async_trait]
impl Authorizer for DenySecrets {
    async fn authorize(&self, who: &Identity, room: &RoomName, action: Action) -> Result<(), Refusal> {
        if room.starts_with("secret") && (who.user != "boss" || action == Action::Send) {
            return Err(Refusal(String::new())); // no reason given: the engine names the room
        }
        if room.as_str() == "readonly" && action == Action::Send {
            return Err(Refusal("readonly is read-only".into()));
        }
        Ok(())
    }
}

#[tokio::test]
async fn the_authorizer_can_forbid_each_action() {
    let engine = Engine::builder().authorizer(DenySecrets).tune(|c| c.max_body = 5).build().await.unwrap();
    let mut raw = Raw::hello(&engine, "alice").await;
    let refused = raw.ask(r#"{"type":"join","id":1,"room":"secret-1"}"#).await;
    assert_eq!(
        (refused["code"].as_str(), refused["message"].as_str()),
        (Some("forbidden"), Some("not allowed in secret-1"))
    );
    raw.join("readonly").await;
    let refused = raw.ask(r#"{"type":"send","id":3,"room":"readonly","body":1}"#).await;
    assert_eq!(
        (refused["code"].as_str(), refused["message"].as_str()),
        (Some("forbidden"), Some("readonly is read-only"))
    );
    // forbidden outranks body_too_large
    raw.expect_error(r#"{"type":"send","id":4,"room":"readonly","body":"long body"}"#, "forbidden", Some(4)).await;
    let mut boss = Raw::hello(&engine, "boss").await;
    boss.join("secret-1").await;
    boss.expect_error(r#"{"type":"send","id":2,"room":"secret-1","body":1}"#, "forbidden", Some(2)).await;
    assert_eq!(boss.ask(r#"{"type":"history","id":3,"room":"secret-1"}"#).await["type"], "history");
}

#[tokio::test]
async fn too_many_rooms_is_forbidden() {
    let engine = Engine::builder().tune(|c| c.max_rooms_per_session = 2).build().await.unwrap();
    let mut raw = Raw::hello(&engine, "alice").await;
    raw.join("a").await;
    raw.join("b").await;
    raw.expect_error(r#"{"type":"join","id":3,"room":"c"}"#, "forbidden", Some(3)).await;
}

#[tokio::test(start_paused = true)]
async fn rate_limits_and_then_closes_abusers() {
    let engine = Engine::builder()
        .tune(|c| {
            c.rate_per_sec = 1;
            c.rate_burst = 3;
            c.rate_limit_strikes = 5;
            (c.costs.send, c.costs.join) = (1, 0);
        })
        .build()
        .await
        .unwrap();
    let mut raw = Raw::hello(&engine, "alice").await;
    raw.join("r").await;
    for id in 0..3 {
        raw.send(&format!(r#"{{"type":"send","id":{id},"room":"r","body":1}}"#));
        raw.recv_of("sent").await;
    }
    raw.expect_error(r#"{"type":"send","id":10,"room":"r","body":1}"#, "rate_limited", Some(10)).await;
    tokio::time::advance(std::time::Duration::from_millis(1100)).await;
    raw.send(r#"{"type":"send","id":11,"room":"r","body":1}"#);
    assert_eq!(raw.recv_of("sent").await["id"], 11, "the bucket refills");
    for id in 12..17 {
        raw.expect_error(&format!(r#"{{"type":"send","id":{id},"room":"r","body":1}}"#), "rate_limited", Some(id))
            .await;
    }
    raw.send(r#"{"type":"send","id":17,"room":"r","body":1}"#);
    let e = raw.recv().await;
    assert_eq!(e["code"], "rate_limited");
    raw.expect_bye("protocol_error").await;
}

/// One bucket covers every request type, each at its cost; a bare `ping` and `pong` are free.
#[tokio::test(start_paused = true)]
async fn one_bucket_covers_every_request() {
    let engine = Engine::builder()
        .tune(|c| {
            c.rate_per_sec = 1;
            c.rate_burst = 12;
            c.costs.join = 1;
            c.costs.leave = 1;
            c.costs.history = 3;
            c.costs.presence = 2;
            c.costs.ping = 1;
            c.costs.invalid = 1;
            c.costs.send = 4;
        })
        .build()
        .await
        .unwrap();
    let mut raw = Raw::hello(&engine, "alice").await;
    raw.join("r").await; // 1: 11 left
    for _ in 0..20 {
        raw.send(r#"{"type":"ping"}"#);
        raw.send(r#"{"type":"pong"}"#);
    }
    assert_eq!(raw.ask(r#"{"type":"history","id":1,"room":"r"}"#).await["type"], "history"); // 8 left
    assert_eq!(raw.ask(r#"{"type":"presence","id":2,"room":"r"}"#).await["type"], "presence"); // 6
    assert_eq!(raw.ask(r#"{"type":"ping","id":3}"#).await["type"], "pong"); // 5
    assert_eq!(raw.ask(r#"{"type":"nonsense","id":4}"#).await["code"], "bad_frame"); // 4
    raw.send(r#"{"type":"send","id":5,"room":"r","body":1}"#); // 0
    assert_eq!(raw.recv_of("message").await["seq"], 1);
    assert_eq!(raw.recv().await["type"], "sent");
    for (id, frame) in [
        (6, r#"{"type":"join","id":6,"room":"q"}"#),
        (7, r#"{"type":"leave","id":7,"room":"r"}"#),
        (8, r#"{"type":"history","id":8,"room":"r"}"#),
        (9, r#"{"type":"presence","id":9,"room":"r"}"#),
        (10, r#"{"type":"ping","id":10}"#),
        (11, r#"{"type":"nonsense","id":11}"#),
    ] {
        raw.expect_error(frame, "rate_limited", Some(id)).await;
    }
    tokio::time::advance(std::time::Duration::from_secs(2)).await;
    assert_eq!(raw.ask(r#"{"type":"presence","id":12,"room":"r"}"#).await["type"], "presence", "2 s refill 2");
    raw.expect_error(r#"{"type":"leave","id":13,"room":"r"}"#, "rate_limited", Some(13)).await;
}

#[tokio::test]
async fn frames_over_max_frame_are_fatal() {
    let engine = Engine::builder().tune(|c| c.max_frame = 300).build().await.unwrap();
    let mut raw = Raw::hello(&engine, "alice").await;
    raw.send(&format!(r#"{{"type":"ping","id":1,"pad":"{}"}}"#, "x".repeat(300)));
    let e = raw.recv().await;
    assert_eq!(e["code"], "frame_too_large");
    raw.expect_bye("protocol_error").await;

    let mut raw = Raw::hello(&engine, "alice").await;
    raw.send_inbound(Inbound::TooLarge);
    assert_eq!(raw.recv().await["code"], "frame_too_large");
    raw.expect_bye("protocol_error").await;

    // frame_too_large outranks not_authenticated
    let mut raw = Raw::new(&engine);
    raw.send_inbound(Inbound::TooLarge);
    assert_eq!(raw.recv().await["code"], "frame_too_large");
}

/// A broker whose every operation fails once `down` is set.
mod flaky {
    use super::*;
    use chat_core::broker::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[derive(Clone, Default)]
    pub struct Flaky {
        pub inner: chat_core::MemoryBroker,
        pub down: Arc<AtomicBool>,
    }

    struct Node(Arc<dyn BrokerNode>, Arc<AtomicBool>);

    impl Node {
        fn check(&self) -> Result<(), BrokerError> {
            if self.1.load(Ordering::SeqCst) {
                Err(BrokerError::Unavailable("the test broker is down".into()))
            } else {
                Ok(())
            }
        }
    }

    #[async_trait]
    impl Broker for Flaky {
        async fn attach(
            &self,
            node: &str,
            sink: Arc<dyn DeliverySink>,
            origin: Option<Arc<dyn Origin>>,
        ) -> Result<Arc<dyn BrokerNode>, BrokerError> {
            Ok(Arc::new(Node(self.inner.attach(node, sink, origin).await?, self.down.clone())))
        }
    }

    #[async_trait]
    impl BrokerNode for Node {
        async fn publish(&self, r: &RoomName, m: Publication, o: &PublishOpts) -> Result<Published, BrokerError> {
            self.check()?;
            self.0.publish(r, m, o).await
        }
        async fn broadcast(&self, r: &RoomName, t: Transient) -> Result<(), BrokerError> {
            self.check()?;
            self.0.broadcast(r, t).await
        }
        async fn notify(&self, u: &[Arc<str>], n: &Notice) -> Result<(), BrokerError> {
            self.check()?;
            self.0.notify(u, n).await
        }
        async fn subscribe(&self, r: &RoomName) -> Result<Position, BrokerError> {
            self.check()?;
            self.0.subscribe(r).await
        }
        async fn unsubscribe(&self, r: &RoomName) -> Result<(), BrokerError> {
            self.0.unsubscribe(r).await
        }
        async fn history(&self, r: &RoomName, q: HistoryQuery) -> Result<HistoryPage, BrokerError> {
            self.check()?;
            self.0.history(r, q).await
        }
        async fn presence_add(&self, r: &RoomName, s: &str, u: &str) -> Result<bool, BrokerError> {
            self.check()?;
            self.0.presence_add(r, s, u).await
        }
        async fn presence_remove(&self, r: &RoomName, s: &str, u: &str) -> Result<bool, BrokerError> {
            self.0.presence_remove(r, s, u).await
        }
        async fn presence(&self, r: &RoomName) -> Result<Vec<PresenceEntry>, BrokerError> {
            self.check()?;
            self.0.presence(r).await
        }
        async fn erase(&self, room: &RoomName, seq: u64) -> Result<bool, BrokerError> {
            self.0.erase(room, seq).await
        }
        async fn erase_user(&self, user: &str) -> Result<u64, BrokerError> {
            self.0.erase_user(user).await
        }
        async fn detach(&self) {
            self.0.detach().await
        }
    }
}

#[tokio::test]
async fn an_unreachable_broker_is_unavailable_and_nothing_is_stored() {
    let broker = flaky::Flaky::default();
    let engine = Engine::builder().broker(broker.clone()).build().await.unwrap();
    let mut raw = Raw::hello(&engine, "alice").await;
    raw.join("r").await;
    broker.down.store(true, std::sync::atomic::Ordering::SeqCst);
    raw.expect_error(r#"{"type":"send","id":2,"room":"r","body":1}"#, "unavailable", Some(2)).await;
    raw.expect_error(r#"{"type":"join","id":3,"room":"other"}"#, "unavailable", Some(3)).await;
    raw.expect_error(r#"{"type":"history","id":4,"room":"r"}"#, "unavailable", Some(4)).await;
    broker.down.store(false, std::sync::atomic::Ordering::SeqCst);
    raw.send(r#"{"type":"send","id":5,"room":"r","body":1}"#);
    assert_eq!(raw.recv_of("sent").await["seq"], 1, "the failed send stored nothing");
    assert_eq!(raw.ask(r#"{"type":"join","id":6,"room":"other"}"#).await["type"], "joined");
}

#[derive(Default)]
struct Recorder {
    log: Mutex<Vec<String>>,
}

struct Rec(Arc<Recorder>);

#[async_trait]
impl Hooks for Rec {
    async fn on_connect(&self, s: &SessionInfo) {
        self.0.log.lock().unwrap().push(format!("connect {}", s.identity.user));
    }
    async fn on_disconnect(&self, s: &SessionInfo, reason: DisconnectReason) {
        self.0.log.lock().unwrap().push(format!("disconnect {} {reason:?}", s.identity.user));
    }
    async fn on_join(&self, s: &SessionInfo, room: &RoomName) {
        self.0.log.lock().unwrap().push(format!("join {} {room}", s.identity.user));
    }
    async fn on_leave(&self, s: &SessionInfo, room: &RoomName) {
        self.0.log.lock().unwrap().push(format!("leave {} {room}", s.identity.user));
    }
    async fn on_send(&self, _: &SessionInfo, _: &RoomName, body: &Bytes) -> SendDecision {
        match &body[..] {
            b"\"spam\"" => SendDecision::Reject("no spam".into()),
            b"\"darn\"" => SendDecision::Rewrite(Bytes::from_static(b"\"***\"")),
            b"\"broken\"" => SendDecision::Rewrite(Bytes::from_static(b"{oops")),
            b"\"pretty\"" => SendDecision::Rewrite(Bytes::from_static(b"{\n  \"said\": \"pretty much\"\n}")),
            _ => SendDecision::Accept,
        }
    }
}

#[tokio::test]
async fn hooks_see_the_session_lifecycle_and_moderate_sends() {
    let recorder = Arc::new(Recorder::default());
    let engine = Engine::builder().hooks(Rec(recorder.clone())).build().await.unwrap();
    let mut raw = Raw::hello(&engine, "alice").await;
    raw.join("r").await;
    raw.expect_error(r#"{"type":"send","id":2,"room":"r","body":"spam"}"#, "forbidden", Some(2)).await;
    raw.send(r#"{"type":"send","id":3,"room":"r","body":"darn"}"#);
    assert_eq!(raw.recv_of("message").await["body"], "***");
    raw.recv_of("sent").await;
    raw.expect_error(r#"{"type":"send","id":4,"room":"r","body":"broken"}"#, "internal", Some(4)).await;
    // A rewrite is kept compact too: the frame stays one line.
    raw.send(r#"{"type":"send","id":6,"room":"r","body":"pretty"}"#);
    let frame = loop {
        let f = raw.recv_raw().await;
        if f.starts_with(br#"{"type":"message""#) {
            break f;
        }
    };
    assert!(frame.ends_with(br#""body":{"said":"pretty much"}}"#), "{}", String::from_utf8_lossy(&frame));
    raw.recv_of("sent").await;
    raw.ask(r#"{"type":"leave","id":5,"room":"r"}"#).await;
    raw.join("s").await;
    assert_eq!(engine.kick("alice"), 1);
    raw.expect_bye("kicked").await;
    raw.task.await.unwrap();
    let log = recorder.log.lock().unwrap().clone();
    assert_eq!(
        log,
        vec![
            "connect alice",
            "join alice r",
            "leave alice r",
            "join alice s",
            "leave alice s",
            &format!("disconnect alice {:?}", DisconnectReason::Bye(ByeReason::Kicked)),
        ]
    );
}

#[tokio::test]
async fn graceful_shutdown_says_bye_to_everyone_and_refuses_newcomers() {
    let engine = engine().await;
    let mut sessions = Vec::new();
    for n in 0..5 {
        let mut raw = Raw::hello(&engine, &format!("u{n}")).await;
        raw.join("r").await;
        sessions.push(raw);
    }
    let mut fresh = Raw::new(&engine); // connected, no hello yet
    engine.shutdown().await;
    for raw in &mut sessions {
        raw.expect_bye("shutdown").await;
    }
    assert_eq!(fresh.recv().await, json!({"type":"bye","reason":"shutdown","reconnect":true}));
    let mut late = Raw::new(&engine);
    assert_eq!(late.recv().await["reason"], "shutdown");
    assert_eq!(engine.session_count(), 0);
    assert_eq!(engine.room_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn heartbeats_ping_idle_clients_and_close_silent_ones() {
    let engine = Engine::builder().tune(|c| c.heartbeat = std::time::Duration::from_secs(5)).build().await.unwrap();
    // No hello within 2 × heartbeat: timeout. Pings do not extend it.
    let mut silent = Raw::new(&engine);
    let started = tokio::time::Instant::now();
    assert_eq!(silent.recv().await, json!({"type":"ping"}), "the server pings after a heartbeat of silence");
    silent.expect_bye("timeout").await;
    assert!(started.elapsed() >= std::time::Duration::from_secs(10));

    // A client that answers stays; one that goes quiet is closed after 2 × heartbeat.
    let mut alive = Raw::hello(&engine, "alice").await;
    for _ in 0..5 {
        assert_eq!(alive.recv().await, json!({"type":"ping"}));
        alive.send(r#"{"type":"pong"}"#);
    }
    let quiet_since = tokio::time::Instant::now();
    alive.recv_of("bye").await;
    assert!(quiet_since.elapsed() >= std::time::Duration::from_secs(9), "{:?}", quiet_since.elapsed());
}

#[tokio::test]
async fn requests_without_id_get_errors_without_id() {
    let engine = engine().await;
    let mut raw = Raw::hello(&engine, "alice").await;
    let e = raw.ask(r#"{"type":"send","room":"r","body":1}"#).await;
    assert_eq!((e["code"].as_str(), e.get("id")), (Some("not_member"), None));
    raw.send(r#"{"type":"join","room":"r"}"#);
    assert_eq!(raw.recv().await["type"], "member_joined", "no joined reply without id");
    raw.send(r#"{"type":"leave","room":"r"}"#);
    assert_eq!(raw.ask(r#"{"type":"ping","id":1}"#).await["type"], "pong", "no left reply without id");
}

/// A peer whose requests never stop arriving still gets its replies: the session writes at
/// least every few requests, not only once the peer pauses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_flow_while_requests_never_stop() {
    use bytes::Bytes;
    use chat_core::{ConnInfo, Inbound};
    use futures::StreamExt;
    let engine = Engine::builder().tune(|c| c.rate_per_sec = 0).build().await.unwrap();
    let hello = Bytes::from_static(br#"{"type":"hello","id":1,"protocol":1,"user":"alice"}"#);
    let ping = Bytes::from_static(br#"{"type":"ping","id":7}"#);
    // Always ready: never `Pending`, never ends.
    let inbound = futures::stream::iter([Ok::<_, std::io::Error>(Inbound::Frame(hello))])
        .chain(futures::stream::repeat_with(move || Ok(Inbound::Frame(ping.clone()))));
    let (outbound, mut from_server) = futures::channel::mpsc::unbounded::<Bytes>();
    let session = tokio::spawn({
        let engine = engine.clone();
        async move { engine.serve(inbound, outbound, ConnInfo::default()).await }
    });
    let within = std::time::Duration::from_secs(10);
    let welcome = tokio::time::timeout(within, from_server.next()).await.expect("welcome in time").unwrap();
    assert!(welcome.starts_with(br#"{"type":"welcome""#));
    for _ in 0..100 {
        let pong = tokio::time::timeout(within, from_server.next()).await.expect("replies flow").unwrap();
        assert_eq!(&pong[..], br#"{"type":"pong","id":7}"#);
    }
    assert_eq!(engine.kick("alice"), 1);
    tokio::time::timeout(within, session).await.expect("a kicked session ends").unwrap();
}

/// Whatever whitespace a client puts in a body, the engine keeps and sends it compact: every
/// frame it writes is one line (PROTOCOL.md §3), so line-framed transports need no escaping.
#[tokio::test]
async fn every_frame_is_one_line() {
    let engine = engine().await;
    let mut alice = Raw::hello(&engine, "alice").await;
    alice.join("r").await;
    alice.send(
        "{\"type\":\"send\",\"id\":2,\"room\":\"r\",\"body\":{\n  \"text\" : \"two\\nlines\",\r\n\t\"n\": [1, 2]\n}}",
    );
    let mut frames = Vec::new();
    while frames.len() < 2 {
        frames.push(alice.recv_raw().await);
    }
    for frame in &frames {
        assert!(!frame.contains(&b'\n') && !frame.contains(&b'\r'), "{}", String::from_utf8_lossy(frame));
    }
    let message = frames.iter().find(|f| f.starts_with(br#"{"type":"message""#)).expect("the message");
    assert!(message.ends_with(br#""body":{"text":"two\nlines","n":[1,2]}}"#), "{}", String::from_utf8_lossy(message));
    let page = alice.ask(r#"{"type":"history","id":3,"room":"r"}"#).await;
    assert_eq!(page["messages"][0]["body"], json!({"text": "two\nlines", "n": [1, 2]}));
    engine.shutdown().await;
}
