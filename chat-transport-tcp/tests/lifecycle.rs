//! Connections over their whole life: graceful shutdown, heartbeats and the hello deadline,
//! one message order for every member, TLS, and sessions over streams other than TCP.

mod common;

use std::time::Duration;

use chat_core::client::{Bye, Client, ClientError, Event, Message};
use chat_core::Engine;
use chat_transport_tcp::{connect, connect_io, serve_connection, TcpServer};
use common::{engine, serve, server, within, Raw};
use serde_json::json;

/// The next event of `client` that is not a membership event.
async fn next_non_member_event(client: &mut Client) -> Event {
    loop {
        let event = within("an event", client.next_event()).await.expect("an event, not the end");
        if !matches!(event, Event::MemberJoined(_) | Event::MemberLeft(_)) {
            return event;
        }
    }
}

/// The next event of `client` that is not a membership event, which must be a message.
async fn next_message(client: &mut Client) -> Message {
    match next_non_member_event(client).await {
        Event::Message(m) => m,
        other => panic!("a message, not {other:?}"),
    }
}

#[tokio::test]
async fn shutdown_says_bye_and_closes_the_listener() {
    let engine = engine(|_| {}).await;
    let server = TcpServer::bind("127.0.0.1:0", engine.clone()).await.expect("bind");
    let addr = server.local_addr().expect("addr");
    let accepting = tokio::spawn(server.run());

    let mut alice = within("welcome", connect(addr, Some("alice"), None)).await.expect("alice");
    within("join", alice.join("lobby", None)).await.expect("joined");
    let mut raw = Raw::hello(addr, "bob").await;

    within("shutdown", engine.shutdown()).await;
    let bye = next_non_member_event(&mut alice).await;
    assert_eq!(bye, Event::Bye(Bye { reason: "shutdown".into(), reconnect: true }));
    assert_eq!(within("the end of events", alice.next_event()).await, Err(ClientError::Closed));
    raw.expect_bye("shutdown").await;

    within("the accept loop to end", accepting).await.expect("no panic");
    // New connections are refused (or, at worst, closed without a session).
    if let Ok(mut late) = tokio::net::TcpStream::connect(addr).await {
        let mut buf = [0u8; 16];
        let n = within("the close", tokio::io::AsyncReadExt::read(&mut late, &mut buf)).await.unwrap_or(0);
        assert_eq!(n, 0);
    }
    assert!(within("connect", connect(addr, Some("carol"), None)).await.is_err());
}

#[tokio::test]
async fn a_peer_that_never_says_hello_times_out() {
    let engine = engine(|c| c.heartbeat = Duration::from_millis(200)).await;
    let addr = serve(&engine).await;
    let mut raw = Raw::connect(addr).await;
    // Pings may come first (the server pings whenever it has been quiet); they do not help.
    let bye = loop {
        let frame = raw.recv().await;
        if frame["type"] != "ping" {
            break frame;
        }
    };
    assert_eq!(bye, json!({"type": "bye", "reason": "timeout", "reconnect": true}));
    raw.expect_closed().await;
}

#[tokio::test]
async fn a_peer_answering_pings_stays_and_a_silent_one_times_out() {
    let engine = engine(|c| c.heartbeat = Duration::from_millis(200)).await;
    let addr = serve(&engine).await;
    let mut lively = Raw::hello(addr, "alice").await;
    // Five pings answered span more than twice the heartbeat: the session lives on.
    for _ in 0..5 {
        assert_eq!(lively.recv().await, json!({"type": "ping"}));
        lively.send_json(json!({"type": "pong"})).await;
    }
    lively.expect_usable(9).await;

    let mut silent = Raw::hello(addr, "bob").await;
    loop {
        let frame = silent.recv().await;
        if frame["type"] == "bye" {
            assert_eq!(frame["reason"], "timeout");
            break;
        }
        assert_eq!(frame["type"], "ping");
    }
    silent.expect_closed().await;
}

#[tokio::test]
async fn every_member_sees_one_order() {
    let (_engine, addr) = server().await;
    let mut alice = within("welcome", connect(addr, Some("alice"), None)).await.expect("alice");
    let mut bob = within("welcome", connect(addr, Some("bob"), None)).await.expect("bob");
    within("join", alice.join("lobby", None)).await.expect("joined");
    within("join", bob.join("lobby", None)).await.expect("joined");

    const EACH: u64 = 25;
    async fn sends(client: &Client, who: &str) -> Vec<u64> {
        let mut seqs = Vec::new();
        for i in 0..EACH {
            seqs.push(client.send("lobby", json!({"who": who, "i": i})).await.expect("sent").expect("seq"));
        }
        seqs
    }
    let (a, b) = within("the sends", futures::future::join(sends(&alice, "alice"), sends(&bob, "bob"))).await;
    assert!(a.windows(2).all(|w| w[0] < w[1]) && b.windows(2).all(|w| w[0] < w[1]), "one sender's order is kept");

    let mut seen = Vec::new();
    for client in [&mut alice, &mut bob] {
        let mut messages = Vec::new();
        while messages.len() < 2 * EACH as usize {
            let message = next_message(client).await;
            messages.push((message.seq.expect("seq"), message.body));
        }
        seen.push(messages);
    }
    let seqs: Vec<u64> = seen[0].iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs, (1..=2 * EACH).collect::<Vec<_>>(), "no gap, no duplicate, in order");
    assert_eq!(seen[0], seen[1], "the same order for both members");
}

#[tokio::test]
async fn a_std_listener_can_be_served() {
    let engine = engine(|_| {}).await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(TcpServer::from_std(listener, engine.clone()).expect("from_std").run());
    let alice = within("welcome", connect(addr, Some("alice"), None)).await.expect("alice");
    assert_eq!(alice.welcome().max_frame, engine.config().max_frame);
}

#[tokio::test]
async fn any_byte_stream_can_carry_a_session() {
    let engine = Engine::builder().build().await.expect("engine");
    let (client_end, server_end) = tokio::io::duplex(4096);
    let server = engine.clone();
    tokio::spawn(async move { serve_connection(&server, server_end, None).await });
    let mut alice = within("welcome", connect_io(client_end, Some("alice"), None)).await.expect("alice");
    within("join", alice.join("lobby", None)).await.expect("joined");
    assert_eq!(within("send", alice.send("lobby", json!(1))).await.expect("sent"), Some(1));
    assert_eq!(next_message(&mut alice).await.body, 1);
}

#[cfg(feature = "tls")]
mod tls {
    use super::*;
    use chat_transport_tcp::{client_config_from_ca_pem, connect_tls, TlsConfig};

    /// A self-signed certificate for `localhost`, written to files: (cert PEM, cert path, key path).
    fn certificate(name: &str) -> (String, std::path::PathBuf, std::path::PathBuf) {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
        let dir = std::env::temp_dir().join(format!("chat-transport-tcp-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let cert_pem = certified.cert.pem();
        std::fs::write(&cert, &cert_pem).expect("cert file");
        std::fs::write(&key, certified.key_pair.serialize_pem()).expect("key file");
        (cert_pem, cert, key)
    }

    async fn tls_server(name: &str) -> (Engine, std::net::SocketAddr, String) {
        let (cert_pem, cert, key) = certificate(name);
        let tls = TlsConfig::from_pem_files(&cert, &key).expect("TLS config");
        let engine = engine(|_| {}).await;
        let server = TcpServer::bind("127.0.0.1:0", engine.clone()).await.expect("bind").with_tls(tls);
        let addr = server.local_addr().expect("addr");
        tokio::spawn(server.run());
        (engine, addr, cert_pem)
    }

    #[tokio::test]
    async fn chat_over_tls() {
        let (engine, addr, cert_pem) = tls_server("chat").await;
        let config = client_config_from_ca_pem(cert_pem.as_bytes()).expect("client config");
        let mut alice = within("welcome", connect_tls(addr, "localhost", config.clone(), Some("alice"), None))
            .await
            .expect("alice");
        let mut bob = within("welcome", connect_tls(addr, "localhost", config, Some("bob"), None)).await.expect("bob");
        within("join", alice.join("lobby", None)).await.expect("joined");
        within("join", bob.join("lobby", None)).await.expect("joined");
        let body = json!({"text": "x".repeat(10_000)});
        assert_eq!(within("send", alice.send("lobby", body.clone())).await.expect("sent"), Some(1));
        for client in [&mut alice, &mut bob] {
            assert_eq!(next_message(client).await.body, body);
        }
        within("shutdown", engine.shutdown()).await;
        assert!(matches!(next_non_member_event(&mut bob).await, Event::Bye(bye) if bye.reason == "shutdown"));
    }

    #[tokio::test]
    async fn tls_refuses_plain_and_misnamed_clients() {
        let (_engine, addr, cert_pem) = tls_server("refuse").await;
        // A plain client's bytes are not a TLS handshake: the connection closes, no session.
        assert!(within("the refusal", connect(addr, Some("alice"), None)).await.is_err());
        // A certificate for another name is refused by the client.
        let config = client_config_from_ca_pem(cert_pem.as_bytes()).expect("client config");
        assert!(within("the refusal", connect_tls(addr, "example.com", config, Some("alice"), None)).await.is_err());
        // Bad PEM is a configuration error, not a panic.
        assert!(TlsConfig::from_pem(b"not a certificate", b"nor a key").is_err());
        assert!(client_config_from_ca_pem(b"").is_err());
    }
}
