//! Hostile clients against the example server with its default settings, measured from the
//! outside: the server process's resident memory (`VmRSS`) may not grow by more than 64 MiB
//! while one client floods it with requests whose replies it never reads.
//!
//! Each flood runs for a fixed time (the attack's length is the workload, not a wait for a
//! condition); the in-process tests in chat-core/tests/bounds.rs assert the same bounds exactly
//! through `Engine::stats`.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How much a flooding client may grow the server (issue 9).
const BUDGET_KIB: u64 = 64 * 1024;
/// How long each flood goes on.
const ATTACK: Duration = Duration::from_secs(4);

fn frame(v: serde_json::Value) -> Vec<u8> {
    let body = v.to_string().into_bytes();
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend(body);
    out
}

/// Reads frames until one of type `ty` comes (others skipped).
async fn read_until(stream: &mut TcpStream, ty: &str) -> serde_json::Value {
    within(ty, async {
        loop {
            let n = stream.read_u32().await.expect("a frame") as usize;
            let mut body = vec![0; n];
            stream.read_exact(&mut body).await.expect("a frame's body");
            let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
            if v["type"] == ty {
                return v;
            }
        }
    })
    .await
}

/// Says hello, joins `room`, and sends `count` bodies of `size` bytes (as fast as the default
/// rate allows: the sends past the burst are refused, which does not matter here).
async fn member(server: &ChatServer, user: &str, room: &str) -> TcpStream {
    let mut s = TcpStream::connect(server.tcp).await.expect("connect");
    s.write_all(&frame(json!({"type":"hello","id":0,"protocol":1,"user":user}))).await.unwrap();
    read_until(&mut s, "welcome").await;
    s.write_all(&frame(json!({"type":"join","id":1,"room":room}))).await.unwrap();
    read_until(&mut s, "joined").await;
    s
}

/// Writes `request(i)` for i = 0, 1, ... at `per_sec`, without reading anything, for
/// [`ATTACK`]. A clever attacker stays just under the request rate (a blind flood is closed
/// after 100 `rate_limited` in a row); the writes block once the server stops reading.
async fn flood(mut stream: TcpStream, per_sec: u32, request: impl Fn(u64) -> serde_json::Value) -> TcpStream {
    let mut pace = tokio::time::interval(Duration::from_secs(1) / per_sec);
    let _ = tokio::time::timeout(ATTACK, async {
        for i in 0.. {
            pace.tick().await;
            if stream.write_all(&frame(request(i))).await.is_err() {
                break;
            }
        }
    })
    .await;
    stream
}

/// The issue's first finding: 100 bodies of 16 KB, then history pages asked for and never
/// read (the server used to grow from 11 MB to 2 GB in a few seconds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_flood_does_not_grow_the_server() {
    let server = ChatServer::start("history-flood", &["--tcp", "127.0.0.1:0", "--ws", "127.0.0.1:0"]).await;
    let mut s = member(&server, "mallory", "r").await;
    let body = "x".repeat(16_000);
    for id in 0..99 {
        s.write_all(&frame(json!({"type":"send","id":id + 10,"room":"r","body":body}))).await.unwrap();
        read_until(&mut s, "sent").await;
    }
    let before = server.rss_kib();
    // A history request costs 4 of the 200 tokens per second.
    let s = flood(s, 45, |i| json!({"type":"history","id":1000 + i,"room":"r","limit":100})).await;
    let after = server.rss_kib();

    assert!(after < before + BUDGET_KIB, "VmRSS grew from {before} to {after} KiB");
    // Another client is served meanwhile.
    let mut other = member(&server, "alice", "r").await;
    other.write_all(&frame(json!({"type":"ping","id":7}))).await.unwrap();
    assert_eq!(read_until(&mut other, "pong").await["id"], 7);
    drop(s);
}

/// Presence and join-with-`since` floods, never read: small replies and replays, same budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_replay_floods_do_not_grow_the_server() {
    let server = ChatServer::start("presence-flood", &["--tcp", "127.0.0.1:0", "--ws", "127.0.0.1:0"]).await;
    let mut writer = member(&server, "writer", "r").await;
    for id in 0..99 {
        writer
            .write_all(&frame(json!({"type":"send","id":id + 10,"room":"r","body":"x".repeat(16_000)})))
            .await
            .unwrap();
        read_until(&mut writer, "sent").await;
    }
    let epoch = {
        writer.write_all(&frame(json!({"type":"join","id":2,"room":"r"}))).await.unwrap();
        read_until(&mut writer, "joined").await["epoch"].as_str().unwrap().to_owned()
    };
    let before = server.rss_kib();
    // presence costs 2, join and leave 1 each, of 200 tokens per second.
    let presence = flood(member(&server, "p", "r").await, 90, |i| json!({"type":"presence","id":i,"room":"r"}));
    let replay = flood(member(&server, "q", "r").await, 180, move |i| {
        if i % 2 == 0 {
            json!({"type":"join","id":i,"room":"r","since":{"epoch":epoch,"seq":0}})
        } else {
            json!({"type":"leave","id":i,"room":"r"})
        }
    });
    let (a, b) = tokio::join!(presence, replay);
    let after = server.rss_kib();

    assert!(after < before + BUDGET_KIB, "VmRSS grew from {before} to {after} KiB");
    writer.write_all(&frame(json!({"type":"ping","id":8}))).await.unwrap();
    assert_eq!(read_until(&mut writer, "pong").await["id"], 8);
    drop((a, b));
}
