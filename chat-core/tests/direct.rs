//! Direct conversations (PROTOCOL.md §4): a `dm:` room is for the users it names, whatever the
//! host's authorizer says; a malformed `dm:` name is no room; a user whose name cannot appear
//! in one takes part in none.

mod common;

use chat_core::client::HistoryQuery;
use chat_core::{async_trait, Action, Authorizer, Engine, ErrorCode, Identity, Refusal, RoomName};
use common::{client, message};
use serde_json::json;

/// An authorizer that allows everything, as a careless host's would.
struct Everything;

#[async_trait]
impl Authorizer for Everything {
    async fn authorize(&self, _: &Identity, _: &RoomName, _: Action) -> Result<(), Refusal> {
        Ok(())
    }
}

async fn engine() -> Engine {
    Engine::builder().authorizer(Everything).build().await.expect("engine")
}

#[tokio::test]
async fn only_the_users_named_may_use_a_direct_conversation() {
    let engine = engine().await;
    let mut alice = client(&engine, "alice").await;
    let bob = client(&engine, "bob").await;
    let carol = client(&engine, "carol").await;
    alice.join("dm:alice:bob", None).await.unwrap();
    bob.join("dm:alice:bob", None).await.unwrap();
    assert_eq!(bob.send("dm:alice:bob", json!("hi")).await.unwrap(), Some(1));
    assert_eq!(message(&mut alice).await.body, "hi");
    let err = carol.join("dm:alice:bob", None).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Forbidden), "{err}");
    let err = carol.history("dm:alice:bob", HistoryQuery::latest(10)).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotMember), "{err}");
    // Three users: each of them, and nobody else.
    carol.join("dm:alice:bob:carol", None).await.unwrap();
    let err = client(&engine, "dave").await.join("dm:alice:bob:carol", None).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Forbidden), "{err}");
    engine.shutdown().await;
}

#[tokio::test]
async fn a_malformed_direct_name_is_no_room() {
    let engine = engine().await;
    let alice = client(&engine, "alice").await;
    for name in ["dm:bob:alice", "dm:alice", "dm:alice:alice", "dm:alice::bob"] {
        let err = alice.join(name, None).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::InvalidRoom), "{name}: {err}");
    }
    engine.shutdown().await;
}

#[tokio::test]
async fn a_user_whose_name_cannot_be_in_one_takes_part_in_none() {
    let engine = engine().await;
    for user in ["bob smith", "bob:alice"] {
        let c = client(&engine, user).await;
        let err = c.join("dm:alice:bob", None).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::InvalidRoom), "{user}: {err}");
        c.join("lobby", None).await.expect("an ordinary room is fine");
    }
    engine.shutdown().await;
}
