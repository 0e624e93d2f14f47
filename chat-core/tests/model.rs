//! A property test: random interleavings of joins, leaves, sends, disconnects and reconnects
//! with `since`, over several engines sharing one broker. Every member's view of each room must
//! be gap-free and duplicate-free and match the broker's history.

mod common;

use std::collections::HashMap;

use chat_core::client::{Client, HistoryQuery};
use chat_core::protocol::Since;
use chat_core::{Engine, ErrorCode, MemoryBroker};
use proptest::prelude::*;
use serde_json::{json, Value};

const ENGINES: usize = 3;
const CLIENTS: usize = 4;
const ROOMS: [&str; 2] = ["alpha", "beta"];

#[derive(Debug, Clone)]
enum Op {
    Join { client: usize, room: usize },
    Leave { client: usize, room: usize },
    Send { client: usize, room: usize },
    Disconnect { client: usize },
    Reconnect { client: usize, engine: usize },
}

fn op() -> impl Strategy<Value = Op> {
    let c = 0..CLIENTS;
    let r = 0..ROOMS.len();
    prop_oneof![
        3 => (c.clone(), r.clone()).prop_map(|(client, room)| Op::Join { client, room }),
        1 => (c.clone(), r.clone()).prop_map(|(client, room)| Op::Leave { client, room }),
        8 => (c.clone(), r).prop_map(|(client, room)| Op::Send { client, room }),
        2 => c.clone().prop_map(|client| Op::Disconnect { client }),
        2 => (c, 0..ENGINES).prop_map(|(client, engine)| Op::Reconnect { client, engine }),
    ]
}

/// What one client knows of one room: its epoch and the last seq it saw.
struct View {
    epoch: String,
    last: u64,
}

struct Member {
    name: String,
    conn: Option<Client>,
    views: HashMap<String, View>,
}

/// The truth: every stored message per room, by seq.
#[derive(Default)]
struct Truth {
    messages: HashMap<String, Vec<Value>>,
}

impl Member {
    /// Checks every event that has arrived against the views and the truth.
    fn absorb(&mut self, truth: &Truth) {
        let Some(conn) = self.conn.as_mut() else { return };
        while let Some(frame) = conn.try_next_frame() {
            let e: Value = serde_json::from_slice(&frame).unwrap();
            match e["type"].as_str() {
                Some("message") => {
                    let room = e["room"].as_str().unwrap();
                    let view = self
                        .views
                        .get_mut(room)
                        .unwrap_or_else(|| panic!("{}: message for {room} not joined", self.name));
                    let seq = e["seq"].as_u64().unwrap();
                    assert_eq!(seq, view.last + 1, "{}: gap or duplicate in {room}", self.name);
                    assert_eq!(
                        Some(&e["body"]),
                        truth.messages[room].get(seq as usize - 1),
                        "{}: body of {room}#{seq}",
                        self.name
                    );
                    view.last = seq;
                }
                Some("member_joined" | "member_left") => {}
                other => panic!("{}: unexpected {other:?}: {e}", self.name),
            }
        }
    }
}

async fn run(ops: Vec<Op>) {
    let broker = MemoryBroker::new();
    let mut engines = Vec::new();
    for i in 0..ENGINES {
        let engine = Engine::builder()
            .node_id(format!("n{i}"))
            .broker(broker.clone())
            .tune(|c| c.rate_burst = 10_000)
            .build()
            .await
            .unwrap();
        engines.push(engine);
    }
    let mut truth = Truth::default();
    let mut members = Vec::new();
    for i in 0..CLIENTS {
        let name = format!("u{i}");
        let conn = Some(common::client(&engines[i % ENGINES], &name).await);
        members.push(Member { name, conn, views: HashMap::new() });
    }
    let mut counter = 0u64;
    for op in ops {
        match op {
            Op::Join { client, room } => {
                let m = &mut members[client];
                let room = ROOMS[room];
                let Some(conn) = &m.conn else { continue };
                if m.views.contains_key(room) {
                    continue;
                }
                let joined = conn.join(room, None).await.unwrap();
                assert_eq!(joined.seq, truth.messages.get(room).map_or(0, Vec::len) as u64);
                m.views.insert(room.to_owned(), View { epoch: joined.epoch, last: joined.seq });
            }
            Op::Leave { client, room } => {
                let m = &mut members[client];
                let room = ROOMS[room];
                let Some(conn) = &m.conn else { continue };
                conn.sync().await.unwrap();
                m.absorb(&truth);
                if let Some(conn) = &m.conn {
                    conn.leave(room).await.unwrap();
                }
                m.views.remove(room);
            }
            Op::Send { client, room } => {
                let m = &mut members[client];
                let room = ROOMS[room];
                let Some(conn) = &m.conn else { continue };
                counter += 1;
                let body = json!({"from": m.name, "n": counter});
                let result = conn.send(room, body.clone()).await;
                if m.views.contains_key(room) {
                    let seq = result.unwrap().unwrap();
                    let stored = truth.messages.entry(room.to_owned()).or_default();
                    stored.push(body);
                    assert_eq!(seq, stored.len() as u64, "one seq order for the room");
                } else {
                    assert_eq!(result.unwrap_err().code(), Some(ErrorCode::NotMember));
                }
            }
            Op::Disconnect { client } => {
                let m = &mut members[client];
                m.absorb(&truth); // what had arrived was seen; the rest is lost with the connection
                m.conn = None;
            }
            Op::Reconnect { client, engine } => {
                let m = &mut members[client];
                if m.conn.is_some() {
                    continue;
                }
                let conn = common::client(&engines[engine], &m.name).await;
                for (room, view) in &mut m.views {
                    let joined = conn.join(room, Some(Since::new(&view.epoch, view.last))).await.unwrap();
                    assert!(joined.recovered, "{}: recovery of {room} from {}", m.name, view.last);
                    view.epoch = joined.epoch;
                }
                m.conn = Some(conn);
            }
        }
        for m in &mut members {
            m.absorb(&truth);
        }
    }
    // Everyone still connected catches up with every room it is in.
    for m in &mut members {
        let Some(conn) = &m.conn else { continue };
        conn.sync().await.unwrap();
        m.absorb(&truth);
        for (room, view) in &m.views {
            assert_eq!(view.last, truth.messages.get(room).map_or(0, Vec::len) as u64, "{}: {room} complete", m.name);
        }
    }
    // The broker's history is the truth.
    let auditor = common::client(&engines[0], "auditor").await;
    for room in ROOMS {
        auditor.join(room, None).await.unwrap();
        let expected = truth.messages.get(room).cloned().unwrap_or_default();
        let page = auditor.history(room, HistoryQuery::latest(100)).await.unwrap();
        let bodies: Vec<Value> = page.messages.into_iter().map(|m| m.body).collect();
        assert_eq!(bodies, expected, "history of {room}");
    }
    for e in engines {
        e.shutdown().await;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]
    #[test]
    fn views_are_gap_free_duplicate_free_and_match_history(ops in prop::collection::vec(op(), 1..60)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(run(ops));
    }
}
