//! Tokens that expire, over real sockets: a session is closed with `bye expired` at its
//! token's `exp`, and a client given a token source refreshes by itself and outlives its
//! first token (PROTOCOL.md §3; the engine's own tests cover every case in memory).

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chat_core::auth::TokenClaims;
use chat_core::client::{Bye, Event};
use chat_core::{Engine, JwtAuthenticator};
use chat_transport_tcp::connect;
use common::{serve, within};

#[tokio::test]
async fn a_client_with_a_token_source_outlives_its_first_token() {
    let auth = JwtAuthenticator::new(b"tcp test secret");
    let engine = Engine::builder()
        .authenticator(auth.clone())
        .tune(|c| c.heartbeat = Duration::from_secs(1))
        .build()
        .await
        .expect("engine");
    let addr = serve(&engine).await;
    let source = {
        let auth = auth.clone();
        move || std::future::ready(auth.issue("alice", 4, None).ok())
    };
    let first = source().await.expect("a token");
    let mut alice = within("welcome", connect(addr, None, Some(&first))).await.expect("alice");
    let first_exp = alice.welcome().exp.expect("welcome.exp");
    alice.refresh_from(source);

    // A session on a token expiring with alice's first one is closed then, not before...
    let token = auth.sign(&TokenClaims::new("alice", 0).expires_at(first_exp)).expect("a token");
    let mut control = within("welcome", connect(addr, None, Some(&token))).await.expect("control");
    let bye = tokio::time::timeout(Duration::from_secs(30), control.next_event()).await.expect("bye in time");
    assert_eq!(bye, Ok(Event::Bye(Bye { reason: "expired".into(), reconnect: true })));
    assert!(SystemTime::now().duration_since(UNIX_EPOCH).unwrap() >= Duration::from_secs(first_exp));
    // ...while alice refreshed in time and is still here, on a later expiry.
    within("a round trip", alice.sync()).await.expect("alice still connected");
    assert!(alice.expires().is_some_and(|exp| exp > first_exp), "{:?}", alice.expires());
    assert!(alice.try_next_frame().is_none(), "no bye for alice");
    engine.shutdown().await;
}
