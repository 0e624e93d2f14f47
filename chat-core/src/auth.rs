//! Who a client is, and what it may do: the host application's [`Authenticator`] turns a
//! `hello` (and later a `refresh`) into an [`Identity`]; its [`Authorizer`] allows or refuses
//! each room action. Two authenticators come with the crate: [`AllowAnonymous`] (trusts
//! `hello.user`, for demos and trusted networks) and, with the `jwt` feature (on by default),
//! `JwtAuthenticator` (HS256 tokens, with `exp` and `nbf` checked and, when the host asks for
//! them, `iss` and `aud`).
//!
//! An identity may carry an expiry ([`Identity::expires`], a token's `exp`): `welcome.exp`
//! tells the client, and the engine closes the session at that moment with `bye expired`
//! unless the client sent `refresh` with a new token first (PROTOCOL.md §3).

use std::net::SocketAddr;

use async_trait::async_trait;

use crate::protocol::RoomName;

#[cfg(feature = "jwt")]
mod jwt;
#[cfg(feature = "jwt")]
pub use jwt::{JwtAuthenticator, TokenClaims};

/// What a `hello` (or a `refresh`) offers the authenticator.
#[derive(Debug, Clone)]
pub struct Credentials<'a> {
    /// `hello.token` (or `refresh.token`).
    pub token: Option<&'a str>,
    /// `hello.user`; always `None` for a `refresh` (the token alone must name the user).
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
    /// When the identity stops being valid, in seconds since the Unix epoch (a token's `exp`);
    /// `None`: never. The session is closed with `bye expired` at that moment unless the client
    /// refreshed it (sent `refresh` with a new token) first.
    pub expires: Option<u64>,
}

impl Identity {
    /// An identity with no room restriction and no expiry.
    pub fn user(user: impl Into<String>) -> Self {
        Identity { user: user.into(), rooms: None, expires: None }
    }

    /// The same identity, expiring at `unix_secs` (seconds since the Unix epoch).
    ///
    /// ```
    /// use chat_core::auth::Identity;
    /// let id = Identity::user("alice").expiring_at(1_764_205_200);
    /// assert_eq!(id.expires, Some(1_764_205_200));
    /// ```
    pub fn expiring_at(mut self, unix_secs: u64) -> Self {
        self.expires = Some(unix_secs);
        self
    }

    /// Whether the identity's room patterns allow `room`.
    ///
    /// ```
    /// use chat_core::auth::Identity;
    /// let id = Identity { rooms: Some(vec!["team-*".into(), "lobby".into()]), ..Identity::user("a") };
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

/// Decides who a client is. Called on a connection's `hello`, and again on each `refresh`
/// (with the new token and no user; the identity it returns must name the same user).
#[async_trait]
pub trait Authenticator: Send + Sync + 'static {
    /// The identity for these credentials, or a refusal.
    async fn authenticate(&self, credentials: &Credentials<'_>) -> Result<Identity, AuthError>;
}

/// A room action the [`Authorizer`] rules on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
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

/// Why an [`Authorizer`] refused: the message of the client's `forbidden` error (empty: the
/// engine says which room).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

/// Allows or refuses room actions (a refusal is the client's `forbidden`, with its reason).
///
/// ```
/// use chat_core::auth::{Action, Authorizer, Identity, Refusal};
/// use chat_core::{async_trait, RoomName};
///
/// /// Anyone may read `announcements`; only `boss` may write there.
/// struct Announcements;
///
/// #[async_trait]
/// impl Authorizer for Announcements {
///     async fn authorize(&self, who: &Identity, room: &RoomName, action: Action) -> Result<(), Refusal> {
///         if room.as_str() == "announcements" && action == Action::Send && who.user != "boss" {
///             return Err(Refusal("only boss announces".into()));
///         }
///         Ok(())
///     }
/// }
/// ```
#[async_trait]
pub trait Authorizer: Send + Sync + 'static {
    /// Whether `identity` may do `action` in `room`: `Ok`, or why not.
    async fn authorize(&self, identity: &Identity, room: &RoomName, action: Action) -> Result<(), Refusal>;
}

/// The default authorizer: everything is allowed (the identity's room patterns still apply).
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

#[async_trait]
impl Authorizer for AllowAll {
    async fn authorize(&self, _: &Identity, _: &RoomName, _: Action) -> Result<(), Refusal> {
        Ok(())
    }
}

/// The longest user name the built-in authenticators accept, in bytes.
pub const MAX_USER_LEN: usize = 64;

/// Whether `user` is a user name the built-in authenticators accept: 1 to [`MAX_USER_LEN`]
/// bytes, no control characters. A custom authenticator can hold its names to the same rule.
///
/// ```
/// use chat_core::auth::valid_user_name;
///
/// assert!(valid_user_name("alice") && valid_user_name("Zoë Smith"));
/// assert!(!valid_user_name("") && !valid_user_name("line\nbreak"));
/// ```
pub fn valid_user_name(user: &str) -> bool {
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
            Some(user) if valid_user_name(user) => Ok(Identity::user(user)),
            Some(_) => Err(AuthError("user must be 1 to 64 bytes without control characters".into())),
            None => Err(AuthError("hello needs a user".into())),
        }
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
}
