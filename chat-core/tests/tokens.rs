//! Tokens that expire (PROTOCOL.md §3): `welcome.exp`, `bye expired` at the identity's expiry
//! (checked by the heartbeat task: never early, at most a tick late), `refresh` / `refreshed`,
//! and the Rust client refreshing by itself from a token source.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use chat_core::auth::{AuthError, Authenticator, Credentials, Identity, TokenClaims};
use chat_core::client::{Bye, Client, Event};
use chat_core::{ConnInfo, Engine, ErrorCode, Inbound, JwtAuthenticator};
use common::{event, Raw, WAIT};
use futures::StreamExt;
use serde_json::{json, Value};

/// Short enough that the tests are quick, long enough for a loaded machine: one tick (an
/// eighth) is 125 ms.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// How late past its deadline an expiry may come on a loaded 2-core machine, beyond the tick
/// the engine allows itself.
const SLACK: Duration = Duration::from_secs(3);

fn now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap()
}

fn unix_now() -> u64 {
    now().as_secs()
}

/// Tokens are JSON here, `{"user", "exp"?, "rooms"?}`, so that a test says exactly what
/// identity it wants; anything else is refused.
struct JsonTokens;

#[async_trait]
impl Authenticator for JsonTokens {
    async fn authenticate(&self, c: &Credentials<'_>) -> Result<Identity, AuthError> {
        #[derive(serde::Deserialize)]
        struct Token {
            user: String,
            exp: Option<u64>,
            rooms: Option<Vec<String>>,
        }
        let t: Token =
            c.token.and_then(|t| serde_json::from_str(t).ok()).ok_or_else(|| AuthError("not a token".into()))?;
        Ok(Identity { user: t.user, rooms: t.rooms, expires: t.exp })
    }
}

fn token(user: &str, exp: Option<u64>) -> String {
    json!({"user": user, "exp": exp}).to_string()
}

async fn engine(auth: impl Authenticator) -> Engine {
    Engine::builder().authenticator(auth).tune(|c| c.heartbeat = HEARTBEAT).build().await.unwrap()
}

/// A raw connection that said `hello` with `token`; returns it and the `welcome`.
async fn hello(engine: &Engine, token: &str) -> (Raw, Value) {
    let mut raw = Raw::new(engine);
    let welcome = raw.ask(&json!({"type":"hello","id":1,"protocol":1,"token":token}).to_string()).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    (raw, welcome)
}

fn refresh(id: u64, token: &str) -> String {
    json!({"type":"refresh","id":id,"token":token}).to_string()
}

/// The next frame that is not a server ping; pings are answered.
async fn next_answering_pings(raw: &mut Raw) -> Value {
    loop {
        let f = raw.recv().await;
        if f == json!({"type":"ping"}) {
            raw.send(r#"{"type":"pong"}"#);
        } else {
            return f;
        }
    }
}

/// Waits for `ending` to get its `bye` (answering its pings) while `alive` answers its own
/// pings and must get nothing else; returns the `bye` and when it came.
async fn bye_while(ending: &mut Raw, alive: &mut Raw) -> (Value, Duration) {
    loop {
        tokio::select! {
            f = next_answering_pings(ending) => {
                if f["type"] == "bye" {
                    return (f, now());
                }
            }
            f = next_answering_pings(alive) => panic!("the live session got {f}"),
        }
    }
}

/// Expects the end of the connection right after a `bye`.
async fn expect_closed(raw: &mut Raw) {
    let end = tokio::time::timeout(WAIT, raw.rx.next()).await.expect("closed in time");
    assert!(end.is_none(), "nothing after bye, got {end:?}");
}

#[tokio::test]
async fn welcome_carries_exp_only_when_the_identity_expires() {
    let engine = engine(JsonTokens).await;
    let exp = unix_now() + 3600;
    let (_raw, welcome) = hello(&engine, &token("alice", Some(exp))).await;
    assert_eq!(welcome["exp"], exp);
    let (_raw, welcome) = hello(&engine, &token("bob", None)).await;
    assert!(welcome.get("exp").is_none(), "{welcome}");

    // The JWT authenticator's identities expire with their token.
    let auth = JwtAuthenticator::new(b"k");
    let engine = Engine::builder().authenticator(auth.clone()).build().await.unwrap();
    let (_raw, welcome) = hello(&engine, &auth.issue("carol", 600, None).unwrap()).await;
    let exp = welcome["exp"].as_u64().expect("welcome.exp");
    assert!((unix_now() + 590..=unix_now() + 600).contains(&exp), "{welcome}");
}

#[tokio::test]
async fn a_session_is_closed_when_its_token_expires_and_not_before() {
    let auth = JwtAuthenticator::new(b"k");
    let engine = engine(auth.clone()).await;
    let (mut raw, welcome) = hello(&engine, &auth.issue("alice", 2, None).unwrap()).await;
    let exp = Duration::from_secs(welcome["exp"].as_u64().unwrap());
    // Pings are answered: only the expiry may end this session.
    let bye = next_answering_pings(&mut raw).await;
    let at = now();
    assert_eq!(bye, json!({"type":"bye","reason":"expired","reconnect":true}));
    assert!(at >= exp, "closed {:?} before exp", exp - at);
    let deadline = exp + HEARTBEAT / 8 + SLACK;
    assert!(at <= deadline, "closed {:?} after exp", at - exp);
    expect_closed(&mut raw).await;
    assert_eq!(engine.session_count(), 0);
}

#[tokio::test]
async fn a_token_past_exp_within_the_leeway_is_closed_at_the_first_tick() {
    // The authenticator's leeway lets a token a few seconds past `exp` through `hello`; the
    // session still ends at once (the expiry is exact), with `expired` so that the client
    // comes back with a fresh token.
    let auth = JwtAuthenticator::new(b"k");
    let engine = engine_jwt(&auth).await;
    let exp = unix_now() - 2;
    let late = auth.sign(&TokenClaims::new("alice", 0).expires_at(exp)).unwrap();
    let (mut raw, welcome) = hello(&engine, &late).await;
    assert_eq!(welcome["exp"], exp);
    let start = now();
    assert_eq!(next_answering_pings(&mut raw).await["reason"], "expired");
    assert!(now() - start <= HEARTBEAT / 8 + SLACK);
    expect_closed(&mut raw).await;
}

#[tokio::test]
async fn a_session_that_refreshes_in_time_stays() {
    let engine = engine(JsonTokens).await;
    let first = token("alice", Some(unix_now() + 2));
    let (mut stays, _) = hello(&engine, &first).await;
    let (mut ends, welcome) = hello(&engine, &first).await;
    let exp = Duration::from_secs(welcome["exp"].as_u64().unwrap());

    let later = unix_now() + 3600;
    let reply = stays.ask(&refresh(7, &token("alice", Some(later)))).await;
    assert_eq!(reply, json!({"type":"refreshed","id":7,"exp":later}));
    // The other session, on the same first token, expires; this one does not.
    let (bye, at) = bye_while(&mut ends, &mut stays).await;
    assert_eq!(bye["reason"], "expired");
    assert!(at >= exp);
    assert_eq!(stays.ask(r#"{"type":"ping","id":8}"#).await, json!({"type":"pong","id":8}));

    // Refreshed onto an identity with no expiry: `exp` is absent and nothing expires.
    let reply = stays.ask(&refresh(9, &token("alice", None))).await;
    assert_eq!(reply, json!({"type":"refreshed","id":9}));
    // Without id: no reply (fire and forget), like any request.
    stays.send(&json!({"type":"refresh","token":token("alice", None)}).to_string());
    assert_eq!(stays.ask(r#"{"type":"ping","id":10}"#).await, json!({"type":"pong","id":10}));
    assert_eq!(engine.session_count(), 1);
}

#[tokio::test]
async fn a_refresh_onto_a_shorter_token_brings_the_expiry_forward() {
    // The new expiry replaces the old one, earlier or later.
    let engine = engine(JsonTokens).await;
    let (mut raw, _) = hello(&engine, &token("alice", None)).await;
    let exp = unix_now() + 1;
    assert_eq!(raw.ask(&refresh(2, &token("alice", Some(exp)))).await["exp"], exp);
    let bye = next_answering_pings(&mut raw).await;
    assert_eq!(bye["reason"], "expired");
    let at = now();
    assert!(at >= Duration::from_secs(exp) && at <= Duration::from_secs(exp) + HEARTBEAT / 8 + SLACK);
}

#[tokio::test]
async fn a_refresh_replaces_the_rooms_the_token_allows() {
    let engine = engine(JsonTokens).await;
    let t = |rooms: &[&str]| json!({"user": "alice", "rooms": rooms}).to_string();
    let (mut raw, _) = hello(&engine, &t(&["a"])).await;
    raw.join("a").await;
    raw.expect_error(r#"{"type":"join","id":2,"room":"b"}"#, "forbidden", Some(2)).await;
    assert_eq!(raw.ask(&refresh(3, &t(&["b"]))).await, json!({"type":"refreshed","id":3}));
    raw.join("b").await;
    // Rooms already joined stay joined; new joins follow the new token.
    raw.expect_error(r#"{"type":"join","id":4,"room":"c"}"#, "forbidden", Some(4)).await;
    raw.send(r#"{"type":"send","id":5,"room":"a","body":1}"#);
    assert_eq!(raw.recv_of("sent").await["seq"], 1);
}

#[tokio::test]
async fn a_refresh_for_another_user_is_fatal() {
    let engine = engine(JsonTokens).await;
    let (mut raw, _) = hello(&engine, &token("alice", Some(unix_now() + 3600))).await;
    raw.expect_error(&refresh(5, &token("mallory", Some(unix_now() + 3600))), "unauthorized", Some(5)).await;
    assert_eq!(raw.recv().await, json!({"type":"bye","reason":"unauthorized","reconnect":false}));
    expect_closed(&mut raw).await;
}

#[tokio::test]
async fn a_refused_refresh_is_fatal() {
    let engine = engine(JsonTokens).await;
    let (mut raw, _) = hello(&engine, &token("alice", None)).await;
    raw.expect_error(&refresh(5, "garbage"), "unauthorized", Some(5)).await;
    raw.expect_bye("unauthorized").await;

    // With JWTs: a garbage token, another user's token, an expired one, one from another key.
    let auth = JwtAuthenticator::new(b"k");
    let engine = engine_jwt(&auth).await;
    let now = unix_now();
    let other_key = JwtAuthenticator::new(b"other").issue("alice", 60, None).unwrap();
    let expired = auth.sign(&TokenClaims::new("alice", 0).expires_at(now - 60)).unwrap();
    for bad in ["x.y.z".to_owned(), auth.issue("bob", 60, None).unwrap(), expired, other_key] {
        let (mut raw, _) = hello(&engine, &auth.issue("alice", 60, None).unwrap()).await;
        raw.expect_error(&refresh(6, &bad), "unauthorized", Some(6)).await;
        raw.expect_bye("unauthorized").await;
    }
    // ...and a good one is accepted.
    let (mut raw, _) = hello(&engine, &auth.issue("alice", 60, None).unwrap()).await;
    let reply = raw.ask(&refresh(7, &auth.issue("alice", 600, None).unwrap())).await;
    assert_eq!(reply["type"], "refreshed");
    assert!(reply["exp"].as_u64().is_some_and(|exp| exp >= now + 590));
}

async fn engine_jwt(auth: &JwtAuthenticator) -> Engine {
    engine(auth.clone()).await
}

#[tokio::test]
async fn refresh_before_hello_and_malformed_refresh() {
    let engine = engine(JsonTokens).await;
    let mut raw = Raw::new(&engine);
    raw.expect_error(&refresh(1, &token("alice", None)), "not_authenticated", Some(1)).await;
    raw.expect_bye("protocol_error").await;

    // A refresh without a string token is a bad frame, not fatal.
    let (mut raw, _) = hello(&engine, &token("alice", None)).await;
    raw.expect_error(r#"{"type":"refresh","id":2}"#, "bad_frame", Some(2)).await;
    raw.expect_error(r#"{"type":"refresh","id":3,"token":42}"#, "bad_frame", Some(3)).await;
    assert_eq!(raw.ask(r#"{"type":"ping","id":4}"#).await, json!({"type":"pong","id":4}));
}

/// A client for `engine` over in-memory channels, saying hello with `token`.
async fn client(engine: &Engine, token: &str) -> Client {
    let (to_server, from_client) = futures::channel::mpsc::unbounded::<Bytes>();
    let (to_client, from_server) = futures::channel::mpsc::unbounded::<Bytes>();
    let server = engine.clone();
    tokio::spawn(async move {
        let inbound = from_client.map(|b| Ok::<_, std::io::Error>(Inbound::Frame(b)));
        server.serve(inbound, to_client, ConnInfo::default()).await
    });
    let connect = Client::connect(from_server.map(Ok::<_, std::io::Error>), to_server, None, Some(token));
    tokio::time::timeout(WAIT, connect).await.expect("connect in time").expect("welcome")
}

#[tokio::test]
async fn the_client_refreshes_by_itself_and_outlives_its_first_token() {
    let auth = JwtAuthenticator::new(b"k");
    let engine = engine_jwt(&auth).await;
    let issued = Arc::new(AtomicUsize::new(0));
    let source = {
        let (auth, issued) = (auth.clone(), issued.clone());
        move || {
            issued.fetch_add(1, Ordering::Relaxed);
            let token = auth.issue("alice", 4, None).ok();
            async move { token }
        }
    };
    let first = source().await.unwrap();
    let mut refreshing = client(&engine, &first).await;
    let mut control = client(&engine, &first).await;
    let first_exp = refreshing.welcome().exp.expect("welcome.exp");
    assert_eq!(refreshing.expires(), Some(first_exp));
    refreshing.refresh_from(source);

    // The control session, on the same token, is closed when it expires...
    let bye = event(&mut control).await;
    assert_eq!(bye, Event::Bye(Bye { reason: "expired".into(), reconnect: true }));
    assert!(now() >= Duration::from_secs(first_exp));
    // ...while the refreshing one is still there, on a later expiry.
    refreshing.sync().await.expect("still connected");
    assert!(refreshing.expires().is_some_and(|exp| exp > first_exp), "{:?}", refreshing.expires());
    assert!(issued.load(Ordering::Relaxed) >= 2);
    assert!(refreshing.try_next_frame().is_none(), "no bye");

    // A manual refresh reports the new expiry too.
    let exp = refreshing.refresh(&auth.issue("alice", 600, None).unwrap()).await.unwrap();
    assert_eq!(refreshing.expires(), exp);
    // Another user's token: the server closes the session.
    let e = refreshing.refresh(&auth.issue("bob", 600, None).unwrap()).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Unauthorized));
    assert!(matches!(event(&mut refreshing).await, Event::Bye(bye) if bye.reason == "unauthorized"));
}
