//! Notices to users wherever they are (PROTOCOL.md §4), on two nodes sharing a memory broker:
//! the `invite` a direct conversation's message sends to its users' sessions outside it, and
//! the host's own calls: publishing as a user or as the system, inviting, listing members,
//! kicking from a room and from every node.

mod common;

use chat_core::{Engine, MemoryBroker, RoomName, Sender};
use common::Raw;
use serde_json::{json, Value};

/// Two nodes of one cluster.
async fn two_nodes() -> (Engine, Engine) {
    let broker = MemoryBroker::new();
    let a = Engine::builder().node_id("a").broker(broker.clone()).build().await.expect("node a");
    let b = Engine::builder().node_id("b").broker(broker).build().await.expect("node b");
    (a, b)
}

fn room(name: &str) -> RoomName {
    RoomName::new(name).expect("a valid room name")
}

/// Every frame `raw` gets until the reply to a ping sent now: what reached it before.
async fn frames_until_now(raw: &mut Raw) -> Vec<Value> {
    raw.send(r#"{"type":"ping","id":424242}"#);
    let mut frames = Vec::new();
    loop {
        let f = raw.recv().await;
        if f["type"] == "pong" && f["id"] == 424242 {
            return frames;
        }
        frames.push(f);
    }
}

/// Joins `room`: waits for the reply only (whether a `member_joined` follows depends on other
/// sessions; events before the reply are skipped).
async fn join(raw: &mut Raw, room: &str) {
    raw.send(&format!(r#"{{"type":"join","id":1000,"room":"{room}"}}"#));
    let joined = loop {
        let f = raw.recv().await;
        if f["id"] == 1000 {
            break f;
        }
    };
    assert_eq!(joined["type"], "joined", "{joined}");
}

fn of_type<'a>(frames: &'a [Value], ty: &str) -> Vec<&'a Value> {
    frames.iter().filter(|f| f["type"] == ty).collect()
}

#[tokio::test]
async fn a_direct_message_invites_its_users_sessions_outside_the_room_on_every_node() {
    let (a, b) = two_nodes().await;
    let mut alice = Raw::hello(&a, "alice").await;
    let mut alice_phone = Raw::hello(&b, "alice").await;
    let mut bob = Raw::hello(&b, "bob").await;
    let mut bob_laptop = Raw::hello(&a, "bob").await;
    let mut carol = Raw::hello(&b, "carol").await;
    join(&mut alice, "dm:alice:bob").await;
    join(&mut bob_laptop, "dm:alice:bob").await;
    let _ = frames_until_now(&mut alice).await; // bob's arrival

    alice.send(r#"{"type":"send","id":1,"room":"dm:alice:bob","key":"k1","body":{"text":"hi"}}"#);
    let sent = alice.recv_of("sent").await;
    assert_eq!((sent["type"].as_str(), sent["seq"].as_u64()), (Some("sent"), Some(1)), "{sent}");
    let invite = json!({"type":"invite","room":"dm:alice:bob","from":"alice","seq":1});
    assert_eq!(bob.recv_of("invite").await, invite, "bob, on the other node, is invited");
    assert_eq!(alice_phone.recv_of("invite").await, invite, "so is alice's session outside the room");
    assert_eq!(bob_laptop.recv_of("message").await["body"]["text"], "hi");

    // A resend of the same key stores nothing: nobody is invited again.
    alice.send(r#"{"type":"send","id":2,"room":"dm:alice:bob","key":"k1","body":{"text":"hi"}}"#);
    let again = alice.recv_of("sent").await;
    assert_eq!(again["seq"], 1, "{again}");
    // Bob joins: from now on his messages come in the room, and invites stop.
    join(&mut bob, "dm:alice:bob").await;
    alice.send(r#"{"type":"send","id":3,"room":"dm:alice:bob","body":"still there?"}"#);
    assert_eq!(bob.recv_of("message").await["seq"], 2);
    let late = json!({"type":"invite","room":"dm:alice:bob","from":"alice","seq":2});
    assert_eq!(alice_phone.recv_of("invite").await, late);

    let bob_saw = frames_until_now(&mut bob).await;
    assert!(of_type(&bob_saw, "invite").is_empty(), "no invite after joining: {bob_saw:?}");
    for (who, raw) in [("bob's laptop", &mut bob_laptop), ("alice", &mut alice)] {
        let saw = frames_until_now(raw).await;
        assert!(of_type(&saw, "invite").is_empty(), "{who} is in the room: no invite: {saw:?}");
    }
    let phone_saw = frames_until_now(&mut alice_phone).await;
    assert!(of_type(&phone_saw, "invite").is_empty(), "one invite per stored message: {phone_saw:?}");
    let carol_saw = frames_until_now(&mut carol).await;
    assert!(of_type(&carol_saw, "invite").is_empty(), "carol is not named: {carol_saw:?}");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn an_ordinary_room_invites_nobody() {
    let (a, b) = two_nodes().await;
    let mut alice = Raw::hello(&a, "alice").await;
    let mut bob = Raw::hello(&b, "bob").await;
    join(&mut alice, "alice-bob").await;
    alice.send(r#"{"type":"send","id":1,"room":"alice-bob","body":"hi"}"#);
    alice.recv_of("sent").await;
    let saw = frames_until_now(&mut bob).await;
    assert!(saw.is_empty(), "{saw:?}");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn the_host_publishes_as_a_user_or_as_the_system_on_every_node() {
    let (a, b) = two_nodes().await;
    let mut bob = Raw::hello(&b, "bob").await;
    join(&mut bob, "lobby").await;
    let lobby = room("lobby");
    let first = a.publish(&lobby, Sender::System, r#"{ "a" : [ 1 , 2 ] }"#, None).await.unwrap();
    assert_eq!(first.seq, 1);
    let frame = loop {
        let frame = bob.recv_raw().await;
        if frame.starts_with(br#"{"type":"message""#) {
            break frame;
        }
    };
    let m: Value = serde_json::from_slice(&frame).unwrap();
    assert_eq!((m["from"].as_str(), m["seq"].as_u64()), (Some(""), Some(1)), "{m}");
    let text = String::from_utf8_lossy(&frame);
    assert!(text.contains(r#""body":{"a":[1,2]}"#), "kept compact: {text}");

    // A bot's keyed message is stored once.
    let bot = a.publish(&lobby, Sender::User("bot"), "\"hello\"", Some("k")).await.unwrap();
    let again = b.publish(&lobby, Sender::User("bot"), "\"hello\"", Some("k")).await.unwrap();
    assert_eq!((bot.seq, again.seq, again.duplicate), (2, 2, true));
    let m = bob.recv_of("message").await;
    assert_eq!((m["from"].as_str(), m["seq"].as_u64()), (Some("bot"), Some(2)), "{m}");

    // What the host may not publish.
    let too_big = format!("\"{}\"", "x".repeat(a.config().max_body));
    for (from, body) in [
        (Sender::System, "not json".to_owned()),
        (Sender::System, too_big),
        (Sender::User(""), "1".to_owned()),
        (Sender::User("a\nb"), "1".to_owned()),
    ] {
        let err = a.publish(&lobby, from, body.clone(), None).await.unwrap_err();
        assert!(matches!(err, chat_core::EngineError::Invalid(_)), "{from:?} {body:.20}: {err}");
    }
    let err = a.publish(&room("dm:alice:bob"), Sender::User("carol"), "1", None).await.unwrap_err();
    assert!(matches!(err, chat_core::EngineError::Invalid(_)), "{err}");
    let saw = frames_until_now(&mut bob).await;
    assert!(of_type(&saw, "message").is_empty(), "nothing refused was stored: {saw:?}");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_system_message_in_a_direct_conversation_invites_both_users() {
    let (a, b) = two_nodes().await;
    let mut alice = Raw::hello(&a, "alice").await;
    let mut bob = Raw::hello(&b, "bob").await;
    let dm = room("dm:alice:bob");
    a.publish(&dm, Sender::System, r#"{"call":"missed"}"#, None).await.unwrap();
    let invite = json!({"type":"invite","room":"dm:alice:bob","from":"","seq":1});
    assert_eq!(alice.recv_of("invite").await, invite);
    assert_eq!(bob.recv_of("invite").await, invite);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn the_host_invites_a_user_to_any_room() {
    let (a, b) = two_nodes().await;
    let mut bob = Raw::hello(&b, "bob").await;
    let party = room("release-party");
    a.publish(&party, Sender::User("alice"), "\"cake\"", None).await.unwrap();
    a.invite(&party, "bob", Sender::User("alice")).await.unwrap();
    assert_eq!(bob.recv_of("invite").await, json!({"type":"invite","room":"release-party","from":"alice","seq":1}));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn the_host_lists_members_across_nodes() {
    let (a, b) = two_nodes().await;
    let mut alice = Raw::hello(&a, "alice").await;
    let mut bob = Raw::hello(&b, "bob").await;
    let mut bob2 = Raw::hello(&a, "bob").await;
    for raw in [&mut alice, &mut bob, &mut bob2] {
        join(raw, "lobby").await;
    }
    let mut members: Vec<_> =
        b.members(&room("lobby")).await.unwrap().into_iter().map(|m| (m.user, m.sessions)).collect();
    members.sort();
    assert_eq!(members, [("alice".to_owned(), 1), ("bob".to_owned(), 2)]);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_kick_from_a_room_reaches_every_session_of_the_user_there_on_every_node() {
    let (a, b) = two_nodes().await;
    let mut alice = Raw::hello(&a, "alice").await;
    let mut mallory = Raw::hello(&b, "mallory").await;
    let mut mallory2 = Raw::hello(&a, "mallory").await;
    join(&mut alice, "lobby").await;
    join(&mut mallory, "lobby").await;
    join(&mut mallory2, "lobby").await;
    join(&mut mallory, "other").await;
    let lobby = room("lobby");

    a.kick_from_room(&lobby, "mallory").await.unwrap();
    for raw in [&mut mallory, &mut mallory2] {
        assert_eq!(raw.recv_of("kicked").await, json!({"type":"kicked","room":"lobby"}));
    }
    // Mallory's last session left: alice sees it, presence says so, and nothing more reaches
    // mallory from the room.
    let left = alice.recv_of("member_left").await;
    assert_eq!(left["user"], "mallory", "{left}");
    let members: Vec<_> = a.members(&lobby).await.unwrap().into_iter().map(|m| m.user).collect();
    assert_eq!(members, ["alice"]);
    alice.send(r#"{"type":"send","id":1,"room":"lobby","body":"bye mallory"}"#);
    alice.recv_of("sent").await;
    mallory.send(r#"{"type":"send","id":2,"room":"lobby","body":"no"}"#);
    let err = mallory.recv_of("error").await;
    assert_eq!(err["code"], "not_member", "{err}");
    let saw = frames_until_now(&mut mallory).await;
    assert!(of_type(&saw, "message").is_empty(), "nothing from the room after the kick: {saw:?}");
    // Still connected, still in its other room; may join again (the authorizer's call).
    mallory.send(r#"{"type":"send","id":3,"room":"other","body":"still here"}"#);
    assert_eq!(mallory.recv_of("sent").await["id"], 3);
    join(&mut mallory, "lobby").await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_kick_from_every_node_closes_every_session_of_the_user() {
    let (a, b) = two_nodes().await;
    let mut alice = Raw::hello(&a, "alice").await;
    let mut mallory = Raw::hello(&b, "mallory").await;
    let mut mallory2 = Raw::hello(&a, "mallory").await;
    b.kick_everywhere("mallory").await.unwrap();
    for raw in [&mut mallory, &mut mallory2] {
        assert_eq!(raw.recv_of("bye").await["reason"], "kicked");
    }
    let saw = frames_until_now(&mut alice).await;
    assert!(saw.is_empty(), "alice stays: {saw:?}");
    a.shutdown().await;
    b.shutdown().await;
}
