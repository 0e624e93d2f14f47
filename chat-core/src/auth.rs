//! Who a client is, and what it may do: the host application's [`Authenticator`] turns a
//! `hello` into an [`Identity`]; its [`Authorizer`] allows or refuses each room action.
//! Two authenticators come with the crate: [`AllowAnonymous`] (trusts `hello.user`, for demos
//! and trusted networks) and [`JwtAuthenticator`] (HS256 tokens).

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;

use crate::protocol::RoomName;

/// What a `hello` offers the authenticator.
#[derive(Debug, Clone)]
pub struct Credentials<'a> {
    /// `hello.token`.
    pub token: Option<&'a str>,
    /// `hello.user`.
    pub user: Option<&'a str>,
    /// The peer, as the transport reports it.
    pub peer: Option<SocketAddr>,
}

/// A session's identity, decided by the authenticator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user name that other members see.
    pub user: String,
    /// Room patterns this identity may join (`*` matches any run of characters); `None` means
    /// no restriction beyond the [`Authorizer`].
    pub rooms: Option<Vec<String>>,
}

impl Identity {
    /// An identity with no room restriction.
    pub fn user(user: impl Into<String>) -> Self {
        Identity { user: user.into(), rooms: None }
    }

    /// Whether the identity's room patterns allow `room`.
    ///
    /// ```
    /// use chat_core::auth::Identity;
    /// let id = Identity { user: "a".into(), rooms: Some(vec!["team-*".into(), "lobby".into()]) };
    /// assert!(id.may_join("team-42") && id.may_join("lobby"));
    /// assert!(!id.may_join("admin"));
    /// ```
    pub fn may_join(&self, room: &str) -> bool {
        self.rooms.as_ref().is_none_or(|patterns| patterns.iter().any(|p| glob(p.as_bytes(), room.as_bytes())))
    }
}

/// `*` matches any run of bytes; everything else matches itself. Iterative, no backtracking
/// blow-up.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// Why the authenticator refused a `hello` (the client gets `unauthorized`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AuthError(pub String);

/// Decides who a client is. Called once per connection, on its `hello`.
#[async_trait]
pub trait Authenticator: Send + Sync + 'static {
    /// The identity for these credentials, or a refusal.
    async fn authenticate(&self, credentials: &Credentials<'_>) -> Result<Identity, AuthError>;
}

/// A room action the [`Authorizer`] rules on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// `join`.
    Join,
    /// `send` (ephemeral included).
    Send,
    /// `history`.
    History,
    /// `presence`.
    Presence,
}

/// Allows or refuses room actions (a refusal is the client's `forbidden`).
#[async_trait]
pub trait Authorizer: Send + Sync + 'static {
    /// Whether `identity` may do `action` in `room`.
    async fn authorize(&self, identity: &Identity, room: &RoomName, action: Action) -> bool;
}

/// The default authorizer: everything is allowed (the identity's room patterns still apply).
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

#[async_trait]
impl Authorizer for AllowAll {
    async fn authorize(&self, _: &Identity, _: &RoomName, _: Action) -> bool {
        true
    }
}

/// The longest user name the built-in authenticators accept, in bytes.
pub const MAX_USER_LEN: usize = 64;

fn valid_user(user: &str) -> bool {
    !user.is_empty() && user.len() <= MAX_USER_LEN && !user.chars().any(char::is_control)
}

/// Trusts `hello.user` (1 to 64 bytes, no control characters). A `hello` without a user is
/// refused. Fit for demos and trusted networks only: anyone can claim any name.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAnonymous;

#[async_trait]
impl Authenticator for AllowAnonymous {
    async fn authenticate(&self, c: &Credentials<'_>) -> Result<Identity, AuthError> {
        match c.user {
            Some(user) if valid_user(user) => Ok(Identity::user(user)),
            Some(_) => Err(AuthError("user must be 1 to 64 bytes without control characters".into())),
            None => Err(AuthError("hello needs a user".into())),
        }
    }
}

/// HS256 JSON Web Tokens: `sub` is the user, `exp` is required and enforced, and an optional
/// `rooms` claim (an array of patterns such as `"team-*"`) limits the rooms the token may join.
/// Built on the `jsonwebtoken` crate, the most used JWT implementation in Rust.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use chat_core::auth::{Authenticator, Credentials, JwtAuthenticator};
/// let auth = JwtAuthenticator::new(b"secret");
/// let token = auth.issue("alice", 60, Some(vec!["lobby".into()])).unwrap();
/// let id = auth.authenticate(&Credentials { token: Some(&token), user: None, peer: None }).await.unwrap();
/// assert_eq!(id.user, "alice");
/// assert!(id.may_join("lobby") && !id.may_join("admin"));
/// assert!(auth.authenticate(&Credentials { token: Some("x.y.z"), user: None, peer: None }).await.is_err());
/// # }
/// ```
#[derive(Clone)]
pub struct JwtAuthenticator {
    decoding: Arc<jsonwebtoken::DecodingKey>,
    encoding: Arc<jsonwebtoken::EncodingKey>,
    validation: jsonwebtoken::Validation,
}

#[derive(Debug, Deserialize, serde::Serialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rooms: Option<Vec<String>>,
}

impl JwtAuthenticator {
    /// Verifies tokens signed with `secret`.
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 5;
        JwtAuthenticator {
            decoding: Arc::new(jsonwebtoken::DecodingKey::from_secret(secret)),
            encoding: Arc::new(jsonwebtoken::EncodingKey::from_secret(secret)),
            validation,
        }
    }

    /// Signs a token for `user`, valid for `ttl_secs`, optionally limited to `rooms` patterns.
    /// For hosts that issue tokens themselves, and for tests.
    pub fn issue(&self, user: &str, ttl_secs: u64, rooms: Option<Vec<String>>) -> Result<String, AuthError> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
        let claims = Claims { sub: user.to_owned(), exp: now + ttl_secs, rooms };
        jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| AuthError(e.to_string()))
    }
}

#[async_trait]
impl Authenticator for JwtAuthenticator {
    async fn authenticate(&self, c: &Credentials<'_>) -> Result<Identity, AuthError> {
        let token = c.token.ok_or_else(|| AuthError("a token is required".into()))?;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| AuthError(format!("invalid token: {e}")))?;
        if !valid_user(&data.claims.sub) {
            return Err(AuthError("the token's sub is not a valid user name".into()));
        }
        Ok(Identity { user: data.claims.sub, rooms: data.claims.rooms })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches() {
        assert!(glob(b"*", b"anything"));
        assert!(glob(b"a*c", b"abbbc"));
        assert!(glob(b"a*", b"a"));
        assert!(!glob(b"a*c", b"abd"));
        assert!(glob(b"*-*", b"x-y"));
        assert!(!glob(b"lobby", b"lobby2"));
    }

    #[tokio::test]
    async fn expired_and_foreign_tokens_are_refused() {
        let auth = JwtAuthenticator::new(b"k1");
        let other = JwtAuthenticator::new(b"k2");
        let token = other.issue("bob", 60, None).unwrap();
        fn c(t: &str) -> Credentials<'_> {
            Credentials { token: Some(t), user: None, peer: None }
        }
        assert!(auth.authenticate(&c(&token)).await.is_err());
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let expired = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &Claims { sub: "bob".into(), exp: now - 60, rooms: None },
            &jsonwebtoken::EncodingKey::from_secret(b"k1"),
        )
        .unwrap();
        assert!(auth.authenticate(&c(&expired)).await.is_err());
        assert!(AllowAnonymous.authenticate(&Credentials { token: None, user: None, peer: None }).await.is_err());
    }
}
