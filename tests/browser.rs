//! The browser page (`examples/web/`) in real headless Chromium, against an in-process server
//! built like `examples/chat-server.rs`: two pages chat, the server restarts on the same port
//! (a new broker, as a new process has, on the same store) while a Rust client keeps talking,
//! and the pages come back by themselves and show what they missed, once each. Then the server
//! restarts without its store, its history lost, and the pages start over.
//! Apart from that, chat.js with a `tokenSource` refreshes its short-lived token by itself and
//! outlives it, and two pages start and answer a direct conversation (the host's own messages
//! and kicks show too).
//!
//! Needs `chromium` and `chromedriver` (`apt-get install chromium chromium-driver`); fails,
//! never skips, without them. `SCREENSHOT=1` also saves the page to `docs/screenshot.png`.

mod support;

use std::net::SocketAddr;

use axum::http::header;
use axum::routing::get;
use axum::Router;
use chat_engine::core::auth::TokenClaims;
use chat_engine::core::client::{Bye, Event};
use chat_engine::core::{AllowAnonymous, Engine, JwtAuthenticator, MemoryBroker, MemoryStore};
use chat_engine::tcp::TcpServer;
use chat_engine::ws::{DeflateOptions, WsOptions, WsServer};
use fantoccini::{Client, Locator};
use serde_json::json;
use support::{messages, wait_for, wait_until, Chromedriver};

/// The page's routes, as `examples/chat-server.rs` serves them.
fn page() -> Router {
    let js = |body: &'static str| get(move || async move { ([(header::CONTENT_TYPE, "text/javascript")], body) });
    Router::new()
        .route("/", get(|| async { axum::response::Html(include_str!("../examples/web/index.html")) }))
        .route("/chat.js", js(include_str!("../examples/web/chat.js")))
        .route("/app.js", js(include_str!("../examples/web/app.js")))
}

/// One server incarnation: an engine behind WebSocket (with the page) and TCP.
struct Server {
    engine: Engine,
    ws: SocketAddr,
    tcp: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// Starts an engine on `broker` (and `store`, if any), TCP on a free port, and WebSocket on
    /// `ws` unless `None` (then [`open_ws`](Self::open_ws) adds it later).
    async fn start(broker: MemoryBroker, store: Option<&MemoryStore>, ws: Option<SocketAddr>) -> Server {
        let mut builder = Engine::builder().broker(broker).authenticator(AllowAnonymous);
        if let Some(store) = store {
            builder = builder.store(store.clone());
        }
        let engine = builder.build().await.unwrap();
        let tcp = TcpServer::bind("127.0.0.1:0", engine.clone()).await.unwrap();
        let tcp_addr = tcp.local_addr().unwrap();
        let mut server = Server { engine, ws: "0.0.0.0:0".parse().unwrap(), tcp: tcp_addr, tasks: Vec::new() };
        server.tasks.push(tokio::spawn(tcp.run()));
        if let Some(ws) = ws {
            server.open_ws(ws).await;
        }
        server
    }

    /// Opens the WebSocket listener, with permessage-deflate offered for every message that
    /// shrinks (Chromium accepts it and compresses what it sends): the pages' conversation
    /// goes both ways compressed.
    async fn open_ws(&mut self, addr: SocketAddr) {
        let options = WsOptions::default().deflate(DeflateOptions { min_size: 16, ..DeflateOptions::default() });
        let ws = WsServer::bind(addr, self.engine.clone(), options).await.unwrap().with_routes(page());
        self.ws = ws.local_addr();
        self.tasks.push(tokio::spawn(async move { ws.run().await.unwrap() }));
    }

    /// Graceful shutdown (every client gets `bye shutdown`); the listeners are closed on return.
    async fn stop(self) {
        self.engine.shutdown().await;
        for task in self.tasks {
            task.await.unwrap();
        }
    }
}

/// Opens the page and signs in as `user` through the form; it joins `lobby` by itself.
async fn sign_in(page: &Client, url: &str, user: &str) {
    page.goto(url).await.unwrap();
    wait_for(page, "#name").await.clear().await.unwrap();
    page.find(Locator::Css("#name")).await.unwrap().send_keys(user).await.unwrap();
    page.find(Locator::Css("#login-form button")).await.unwrap().click().await.unwrap();
    wait_for(page, "#status[data-state=open]").await;
    wait_for(page, &format!("#members li[data-user={user:?}]")).await;
}

/// Types `text` into the composer, and sends it unless `send` is false.
async fn type_text(page: &Client, text: &str, send: bool) {
    let input = page.find(Locator::Css("#text")).await.unwrap();
    input.send_keys(text).await.unwrap();
    if send {
        input.send_keys("\u{E007}").await.unwrap(); // Enter
    }
}

fn texts(list: &[(u64, String)]) -> Vec<(u64, &str)> {
    list.iter().map(|(seq, text)| (*seq, text.as_str())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_chat_and_recover_across_server_restarts() {
    let mut driver = Chromedriver::start();
    let store = MemoryStore::new();
    let server = Server::start(MemoryBroker::new(), Some(&store), Some("127.0.0.1:0".parse().unwrap())).await;
    let ws = server.ws;
    let url = format!("http://{ws}/");

    let alice = driver.browser().await;
    let bob = driver.browser().await;
    let outcome = tokio::spawn(scenario(alice.clone(), bob.clone(), server, store, url, ws)).await;
    // Close the browsers whatever happened, then report.
    let _ = alice.close().await;
    let _ = bob.close().await;
    drop(driver);
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn scenario(alice: Client, bob: Client, server: Server, store: MemoryStore, url: String, ws: SocketAddr) {
    // 1. Two pages in one room: each sees the other, typing, and the other's message.
    sign_in(&alice, &url, "alice").await;
    sign_in(&bob, &url, "bob").await;
    wait_for(&alice, "#members li[data-user=bob]").await;
    type_text(&alice, "hello bob", false).await;
    let typing = wait_for(&bob, "#typing:not(:empty)").await;
    assert_eq!(typing.text().await.unwrap(), "alice is typing…");
    type_text(&alice, "", true).await;
    let first = wait_for(&bob, "li.msg[data-room=lobby][data-seq='1'][data-from=alice]").await;
    assert_eq!(first.find(Locator::Css(".text")).await.unwrap().text().await.unwrap(), "hello bob");
    wait_until(&bob, "document.querySelector('#typing').textContent === ''").await;
    type_text(&bob, "hi alice", true).await;
    wait_for(&alice, "li.msg[data-room=lobby][data-seq='2'][data-from=bob]").await;

    // 2. The server restarts on the same port with a new broker, as a new process would, on
    // the same store (so the conversation survives, in the same epoch). While the pages retry,
    // carol talks through the new engine over TCP; only then does the WebSocket listener come
    // back.
    server.stop().await;
    wait_for(&alice, "#status[data-state=reconnecting]").await;
    wait_for(&bob, "#status[data-state=reconnecting]").await;
    let mut server = Server::start(MemoryBroker::new(), Some(&store), None).await;
    let carol = chat_engine::tcp::connect(server.tcp, Some("carol"), None).await.unwrap();
    carol.join("lobby", None).await.unwrap();
    for text in ["while you were away 1", "while you were away 2", "while you were away 3"] {
        carol.send("lobby", json!({ "text": text })).await.unwrap();
    }
    server.open_ws(ws).await;

    // The pages reconnect by themselves, recover with `since`, and show each missed message once.
    let expected = [
        (1, "hello bob"),
        (2, "hi alice"),
        (3, "while you were away 1"),
        (4, "while you were away 2"),
        (5, "while you were away 3"),
    ];
    for page in [&alice, &bob] {
        wait_for(page, "#status[data-state=open]").await;
        wait_for(page, "li.msg[data-room=lobby][data-seq='5']").await;
        wait_for(page, "#members li[data-user=carol]").await;
        assert_eq!(texts(&messages(page, "lobby").await), expected);
    }
    // Live messages flow again, both ways.
    type_text(&bob, "back again", true).await;
    wait_for(&alice, "li.msg[data-room=lobby][data-seq='6'][data-from=bob]").await;
    carol.send("lobby", json!({ "text": "welcome back" })).await.unwrap();
    for page in [&alice, &bob] {
        wait_for(page, "li.msg[data-room=lobby][data-seq='7'][data-from=carol]").await;
        let seqs: Vec<u64> = messages(page, "lobby").await.iter().map(|m| m.0).collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5, 6, 7], "no gap, no duplicate");
    }

    if std::env::var_os("SCREENSHOT").is_some_and(|v| v == "1") {
        screenshot(&alice, &bob).await;
    }

    // 3. The server restarts with a new broker and no store: history is lost (a new epoch). The
    // pages cannot recover; they drop what they showed and start over from the new history.
    drop(carol);
    server.stop().await;
    wait_for(&alice, "#status[data-state=reconnecting]").await;
    let server = Server::start(MemoryBroker::new(), None, None).await;
    let dave = chat_engine::tcp::connect(server.tcp, Some("dave"), None).await.unwrap();
    dave.join("lobby", None).await.unwrap();
    dave.send("lobby", json!({ "text": "a new beginning" })).await.unwrap();
    let mut server = server;
    server.open_ws(ws).await;
    for page in [&alice, &bob] {
        wait_for(page, "#status[data-state=open]").await;
        wait_until(page, "document.querySelectorAll('li.msg[data-room=lobby]').length === 1").await;
        assert_eq!(texts(&messages(page, "lobby").await), [(1, "a new beginning")]);
        let notice = wait_for(page, "ol[data-room=lobby] li.notice").await;
        assert!(notice.text().await.unwrap().contains("reset"));
    }
    drop(dave);
    server.stop().await;
}

/// Saves alice's page, with a second room, to `docs/screenshot.png`.
async fn screenshot(alice: &Client, bob: &Client) {
    // A second room with an unread message makes the sidebar worth a look.
    for (page, user) in [(alice, "alice"), (bob, "bob")] {
        let input = page.find(Locator::Css("#join-room")).await.unwrap();
        input.send_keys("rust").await.unwrap();
        input.send_keys("\u{E007}").await.unwrap();
        wait_for(page, "ol[data-room=rust]:not([hidden])").await;
        // The members list shows the room's presence once the join is through.
        wait_for(page, &format!("#members li[data-user={user}]")).await;
    }
    alice.find(Locator::Css("button.room-button[data-room=lobby]")).await.unwrap().click().await.unwrap();
    type_text(bob, "anyone tried the Redis broker?", true).await;
    wait_for(alice, "button.room-button[data-room=rust] .badge:not([hidden])").await;
    bob.find(Locator::Css("button.room-button[data-room=lobby]")).await.unwrap().click().await.unwrap();
    type_text(bob, "see you", false).await; // leaves "bob is typing…" on alice's page
    wait_for(alice, "#typing:not(:empty)").await;
    let png = alice.screenshot().await.unwrap();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/screenshot.png");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, png).unwrap();
    eprintln!("saved {}", path.display());
    // Leave bob's composer empty for what follows.
    bob.find(Locator::Css("#text")).await.unwrap().clear().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_start_and_answer_a_direct_conversation() {
    let mut driver = Chromedriver::start();
    let server = Server::start(MemoryBroker::new(), None, Some("127.0.0.1:0".parse().unwrap())).await;
    let url = format!("http://{}/", server.ws);
    let alice = driver.browser().await;
    let bob = driver.browser().await;
    let outcome = tokio::spawn(direct_scenario(alice.clone(), bob.clone(), server, url)).await;
    let _ = alice.close().await;
    let _ = bob.close().await;
    drop(driver);
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn direct_scenario(alice: Client, bob: Client, server: Server, url: String) {
    sign_in(&alice, &url, "alice").await;
    sign_in(&bob, &url, "bob").await;
    // Alice clicks bob among the members: their conversation opens; she writes.
    wait_for(&alice, "#members li[data-user=bob]").await.click().await.unwrap();
    wait_for(&alice, "ol[data-room='dm:alice:bob']:not([hidden])").await;
    assert_eq!(alice.find(Locator::Css("#room-title")).await.unwrap().text().await.unwrap(), "@ bob");
    type_text(&alice, "psst", true).await;
    // Bob was not in it: the invite opens it in his sidebar, unread, with the message.
    wait_for(&bob, "li.msg[data-room='dm:alice:bob'][data-seq='1'][data-from=alice]").await;
    let button = wait_for(&bob, "button.room-button[data-room='dm:alice:bob']").await;
    assert!(button.text().await.unwrap().starts_with("@ alice"));
    wait_for(&bob, "button.room-button[data-room='dm:alice:bob'] .badge:not([hidden])").await;
    button.click().await.unwrap();
    type_text(&bob, "what?", true).await;
    wait_for(&alice, "li.msg[data-room='dm:alice:bob'][data-seq='2'][data-from=bob]").await;
    // "@carol" in the join box starts another one.
    let input = alice.find(Locator::Css("#join-room")).await.unwrap();
    input.send_keys("@carol").await.unwrap();
    input.send_keys("\u{E007}").await.unwrap();
    wait_for(&alice, "ol[data-room='dm:alice:carol']:not([hidden])").await;

    // The host's own message shows as the system's; its kick as a notice.
    let dm = chat_engine::core::RoomName::new("dm:alice:bob").unwrap();
    let system = chat_engine::core::Sender::System;
    server.engine.publish(&dm, system, r#"{"text":"call missed"}"#, None).await.unwrap();
    let note = wait_for(&bob, "li.msg.system[data-room='dm:alice:bob'][data-seq='3']").await;
    assert_eq!(note.find(Locator::Css(".from")).await.unwrap().text().await.unwrap(), "system");
    let lobby = chat_engine::core::RoomName::new("lobby").unwrap();
    server.engine.kick_from_room(&lobby, "bob").await.unwrap();
    let notice = wait_for(&bob, "ol[data-room=lobby] li.notice.kicked").await;
    // (Not the room shown: its list is hidden, so its text is read as the DOM has it.)
    let text = notice.prop("textContent").await.unwrap();
    assert_eq!(text.as_deref(), Some("You were removed from this room."));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_with_a_token_source_refreshes_before_its_token_expires() {
    let mut driver = Chromedriver::start();
    // Tokens live 4 s; the heartbeat task looks at expiries every 125 ms.
    let auth = JwtAuthenticator::new(b"browser test secret");
    let engine = Engine::builder()
        .authenticator(auth.clone())
        .tune(|c| c.heartbeat = std::time::Duration::from_secs(1))
        .build()
        .await
        .unwrap();
    let issuer = auth.clone();
    let routes = page().route("/token", get(move || std::future::ready(issuer.issue("alice", 4, None).unwrap())));
    let ws = WsServer::bind("127.0.0.1:0", engine.clone(), WsOptions::default()).await.unwrap().with_routes(routes);
    let addr = ws.local_addr();
    let server = tokio::spawn(async move { ws.run().await.unwrap() });

    let page = driver.browser().await;
    let outcome = tokio::spawn(refresh_scenario(page.clone(), auth, addr)).await;
    let _ = page.close().await;
    drop(driver);
    engine.shutdown().await;
    server.await.unwrap();
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn refresh_scenario(page: Client, auth: JwtAuthenticator, ws: SocketAddr) {
    page.goto(&format!("http://{ws}/")).await.unwrap();
    // The page's own app stays on its sign-in form; a second client, driven from here, uses
    // the page's token endpoint as its token source.
    let start = "window.t = { issued: 0, byes: [] };
        import('/chat.js').then(async ({ ChatClient }) => {
          const chat = new ChatClient({
            tokenSource: () => (t.issued++, fetch('/token').then((r) => r.text())),
          });
          chat.on('bye', (b) => t.byes.push(b));
          window.chat = chat;
          t.firstExp = (await chat.connect()).exp;
        });";
    page.execute(start, vec![]).await.unwrap();
    let first_exp = wait_until(&page, "window.t.firstExp").await.as_u64().expect("welcome.exp");

    // A session on a token that expires with the page's first one is closed then...
    let token = auth.sign(&TokenClaims::new("alice", 0).expires_at(first_exp)).unwrap();
    let mut control = chat_engine::ws::connect(&format!("ws://{ws}/ws"), None, Some(&token)).await.unwrap();
    let bye = tokio::time::timeout(std::time::Duration::from_secs(30), control.next_event()).await.unwrap();
    assert_eq!(bye, Ok(Event::Bye(Bye { reason: "expired".into(), reconnect: true })));
    // ...while the page refreshed in time: still open, on a later expiry, never told `bye`.
    page.execute("chat.request({ type: 'ping' }).then((p) => (t.pong = p));", vec![]).await.unwrap();
    assert_eq!(wait_until(&page, "window.t.pong").await["type"], "pong");
    let state = page.execute("return [chat.state, chat.exp, t.issued, t.byes.length];", vec![]).await.unwrap();
    assert_eq!(state[0], "open", "{state}");
    assert!(state[1].as_u64().is_some_and(|exp| exp > first_exp), "{state}");
    assert!(state[2].as_u64().is_some_and(|n| n >= 2), "{state}");
    assert_eq!(state[3], 0, "{state}");
}
