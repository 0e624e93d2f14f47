//! Notices to users across nodes on a real Redis (PROTOCOL.md §4): a direct conversation's
//! `invite` reaches a session on another node, also after that node's pub/sub connection was
//! cut and came back; the host's kicks reach every node. The broker's side alone is the
//! conformance suite's `notices_reach_every_node`.

mod common;

use std::time::Duration;

use chat_core::client::Client;
use chat_core::RoomName;
use common::{connect, engine, RedisServer};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(10);

/// The next frame of `client` whose type is `ty`, skipping others; panics after [`WAIT`].
async fn frame_of(client: &mut Client, ty: &str) -> Value {
    let found = tokio::time::timeout(WAIT, async {
        loop {
            let frame = client.next_frame().await.expect("connection open");
            let v: Value = serde_json::from_slice(&frame).expect("the server sends JSON");
            if v["type"] == ty {
                return v;
            }
        }
    });
    found.await.unwrap_or_else(|_| panic!("no {ty} within {WAIT:?}"))
}

async fn join(client: &Client, room: &str) {
    let joined = client.request(json!({"type": "join", "room": room})).await.expect("joined");
    assert_eq!(joined["type"], "joined", "{joined}");
}

async fn send(client: &Client, room: &str, body: Value) -> u64 {
    let sent = client.request(json!({"type": "send", "room": room, "body": body})).await.expect("sent");
    sent["seq"].as_u64().expect("a stored message has a seq")
}

#[tokio::test]
async fn invites_reach_another_node_also_after_its_pubsub_connection_was_cut() {
    let redis = RedisServer::start();
    let a = engine(&redis, "inv:", "a").await;
    let b = engine(&redis, "inv:", "b").await;
    let (alice, _t1) = connect(&a, "alice").await;
    let (mut bob, _t2) = connect(&b, "bob").await;
    join(&alice, "dm:alice:bob").await;
    join(&alice, "r").await;
    join(&bob, "r").await;
    assert_eq!(send(&alice, "dm:alice:bob", json!("hi")).await, 1);
    let invite = frame_of(&mut bob, "invite").await;
    assert_eq!(invite, json!({"type":"invite","room":"dm:alice:bob","from":"alice","seq":1}));

    // Cut every pub/sub connection. Once a message of room r sent after the cut reached bob,
    // node b has reconnected (its catch-up runs after it subscribed again): notices reach it.
    let mut conn = common::conn(&redis).await;
    let killed: i64 = redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub").query_async(&mut conn).await.unwrap();
    assert_eq!(killed, 2);
    let seq = send(&alice, "r", json!("after the cut")).await;
    loop {
        if frame_of(&mut bob, "message").await["seq"] == seq {
            break;
        }
    }
    assert_eq!(send(&alice, "dm:alice:bob", json!("still there?")).await, 2);
    let invite = frame_of(&mut bob, "invite").await;
    assert_eq!(invite, json!({"type":"invite","room":"dm:alice:bob","from":"alice","seq":2}));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn the_hosts_kicks_reach_every_node() {
    let redis = RedisServer::start();
    let a = engine(&redis, "kick:", "a").await;
    let b = engine(&redis, "kick:", "b").await;
    let (mut alice, _t1) = connect(&a, "alice").await;
    let (mut mallory, _t2) = connect(&b, "mallory").await;
    join(&alice, "lobby").await;
    join(&mallory, "lobby").await;
    let lobby = RoomName::new("lobby").unwrap();

    a.kick_from_room(&lobby, "mallory").await.unwrap();
    assert_eq!(frame_of(&mut mallory, "kicked").await, json!({"type":"kicked","room":"lobby"}));
    assert_eq!(frame_of(&mut alice, "member_left").await["user"], "mallory");
    let members: Vec<_> = b.members(&lobby).await.unwrap().into_iter().map(|m| m.user).collect();
    assert_eq!(members, ["alice"]);

    a.kick_everywhere("mallory").await.unwrap();
    assert_eq!(frame_of(&mut mallory, "bye").await["reason"], "kicked");
    a.shutdown().await;
    b.shutdown().await;
}
