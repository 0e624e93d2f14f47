//! [`JwtAuthenticator`]: HS256 JSON Web Tokens (the `jwt` feature, on by default).

use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;

use super::{valid_user_name, AuthError, Authenticator, Credentials, Identity};
use crate::time::unix_now;

/// HS256 JSON Web Tokens: `sub` is the user, `exp` is required and enforced (and becomes the
/// identity's [`expires`](Identity::expires): the session ends then unless refreshed), `nbf`
/// is enforced when present, and an optional `rooms` claim (an array of patterns such as
/// `"team-*"`) limits the rooms the token may join. `exp` and `nbf` are checked with a leeway
/// of [`JwtAuthenticator::LEEWAY_SECS`] for clocks that disagree a little.
///
/// A host whose tokens come from an identity provider should pin who issued them and for whom:
/// [`require_issuer`](Self::require_issuer) and [`require_audience`](Self::require_audience)
/// make `iss` and `aud` mandatory and checked. Without them, a token with an `aud` claim is
/// refused (RFC 7519 §4.1.3: a recipient that does not identify itself with the audience must
/// refuse it) and `iss` is not looked at.
///
/// Built on the `jsonwebtoken` crate, the most used JWT implementation in Rust.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use chat_core::auth::{Authenticator, Credentials, JwtAuthenticator, TokenClaims};
/// let auth = JwtAuthenticator::new(b"secret").require_issuer("https://id.example.com").require_audience("chat");
/// // `issue` fills in the issuer and audience this authenticator requires.
/// let token = auth.issue("alice", 60, Some(vec!["lobby".into()])).unwrap();
/// let id = auth.authenticate(&Credentials { token: Some(&token), user: None, peer: None }).await.unwrap();
/// assert_eq!(id.user, "alice");
/// assert!(id.may_join("lobby") && !id.may_join("admin"));
/// assert!(id.expires.is_some());
/// assert!(auth.authenticate(&Credentials { token: Some("x.y.z"), user: None, peer: None }).await.is_err());
/// // Another audience is refused.
/// let foreign = auth.sign(&TokenClaims::new("alice", 60).issuer("https://id.example.com").audience("billing")).unwrap();
/// assert!(auth.authenticate(&Credentials { token: Some(&foreign), user: None, peer: None }).await.is_err());
/// # }
/// ```
#[derive(Clone)]
pub struct JwtAuthenticator {
    decoding: Arc<jsonwebtoken::DecodingKey>,
    encoding: Arc<jsonwebtoken::EncodingKey>,
    validation: jsonwebtoken::Validation,
    /// The `iss` and `aud` required, put into the tokens [`issue`](Self::issue) signs.
    issuer: Option<String>,
    audience: Option<String>,
}

impl std::fmt::Debug for JwtAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuthenticator")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

/// The claims of a token that [`JwtAuthenticator::sign`] signs: a small builder.
///
/// ```
/// use chat_core::auth::TokenClaims;
/// let claims = TokenClaims::new("alice", 3600).rooms(vec!["team-*".into()]).issuer("me").audience("chat");
/// assert_eq!(claims.sub, "alice");
/// assert!(claims.exp > claims.nbf.unwrap_or(0));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct TokenClaims {
    /// The user.
    pub sub: String,
    /// Expiry, in seconds since the Unix epoch.
    pub exp: u64,
    /// Not valid before this moment (seconds since the Unix epoch); `None`: valid at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// The issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// The audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// Room patterns the token may join; `None`: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rooms: Option<Vec<String>>,
}

impl TokenClaims {
    /// Claims for `user`, expiring `ttl_secs` from now.
    pub fn new(user: impl Into<String>, ttl_secs: u64) -> Self {
        TokenClaims {
            sub: user.into(),
            exp: unix_now().saturating_add(ttl_secs),
            nbf: None,
            iss: None,
            aud: None,
            rooms: None,
        }
    }

    /// Expires at `unix_secs` instead.
    pub fn expires_at(mut self, unix_secs: u64) -> Self {
        self.exp = unix_secs;
        self
    }

    /// Not valid before `unix_secs`.
    pub fn not_before(mut self, unix_secs: u64) -> Self {
        self.nbf = Some(unix_secs);
        self
    }

    /// Sets `iss`.
    pub fn issuer(mut self, iss: impl Into<String>) -> Self {
        self.iss = Some(iss.into());
        self
    }

    /// Sets `aud`.
    pub fn audience(mut self, aud: impl Into<String>) -> Self {
        self.aud = Some(aud.into());
        self
    }

    /// Limits the token to these room patterns (`None`: any room).
    pub fn rooms(mut self, rooms: impl Into<Option<Vec<String>>>) -> Self {
        self.rooms = rooms.into();
        self
    }
}

/// What the authenticator reads from a token (`iss`, `aud` and `nbf` are checked by
/// `jsonwebtoken` itself, from the same payload).
#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    rooms: Option<Vec<String>>,
}

impl JwtAuthenticator {
    /// How far `exp` and `nbf` may be off, in seconds, for clocks that disagree a little.
    pub const LEEWAY_SECS: u64 = 5;

    /// Verifies tokens signed with `secret`.
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = Self::LEEWAY_SECS;
        validation.validate_nbf = true;
        JwtAuthenticator {
            decoding: Arc::new(jsonwebtoken::DecodingKey::from_secret(secret)),
            encoding: Arc::new(jsonwebtoken::EncodingKey::from_secret(secret)),
            validation,
            issuer: None,
            audience: None,
        }
    }

    /// Requires `iss` to be `issuer`: a token without it, or from another issuer, is refused.
    pub fn require_issuer(mut self, issuer: impl Into<String>) -> Self {
        let issuer = issuer.into();
        self.validation.set_issuer(&[&issuer]);
        self.validation.required_spec_claims.insert("iss".into());
        self.issuer = Some(issuer);
        self
    }

    /// Requires `aud` to name `audience` (a string, or an array holding it): a token without
    /// it, or for another audience, is refused.
    pub fn require_audience(mut self, audience: impl Into<String>) -> Self {
        let audience = audience.into();
        self.validation.set_audience(&[&audience]);
        self.validation.required_spec_claims.insert("aud".into());
        self.audience = Some(audience);
        self
    }

    /// Signs a token for `user`, valid for `ttl_secs`, optionally limited to `rooms` patterns,
    /// with the issuer and audience this authenticator requires (if any). For hosts that issue
    /// tokens themselves, and for tests.
    pub fn issue(&self, user: &str, ttl_secs: u64, rooms: Option<Vec<String>>) -> Result<String, AuthError> {
        let mut claims = TokenClaims::new(user, ttl_secs).rooms(rooms);
        claims.iss.clone_from(&self.issuer);
        claims.aud.clone_from(&self.audience);
        self.sign(&claims)
    }

    /// Signs `claims` exactly as given.
    pub fn sign(&self, claims: &TokenClaims) -> Result<String, AuthError> {
        jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), claims, &self.encoding)
            .map_err(|e| AuthError(e.to_string()))
    }
}

#[async_trait]
impl Authenticator for JwtAuthenticator {
    async fn authenticate(&self, c: &Credentials<'_>) -> Result<Identity, AuthError> {
        let token = c.token.ok_or_else(|| AuthError("a token is required".into()))?;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| AuthError(format!("invalid token: {e}")))?;
        if !valid_user_name(&data.claims.sub) {
            return Err(AuthError("the token's sub is not a valid user name".into()));
        }
        Ok(Identity { user: data.claims.sub, rooms: data.claims.rooms, expires: Some(data.claims.exp) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AllowAnonymous;

    fn c(t: &str) -> Credentials<'_> {
        Credentials { token: Some(t), user: None, peer: None }
    }

    #[tokio::test]
    async fn expired_and_foreign_tokens_are_refused() {
        let auth = JwtAuthenticator::new(b"k1");
        let other = JwtAuthenticator::new(b"k2");
        let token = other.issue("bob", 60, None).unwrap();
        assert!(auth.authenticate(&c(&token)).await.is_err());
        let now = unix_now();
        let expired = auth.sign(&TokenClaims::new("bob", 0).expires_at(now - 60)).unwrap();
        assert!(auth.authenticate(&c(&expired)).await.is_err());
        assert!(AllowAnonymous.authenticate(&Credentials { token: None, user: None, peer: None }).await.is_err());
    }

    #[tokio::test]
    async fn exp_becomes_the_identitys_expiry() {
        let auth = JwtAuthenticator::new(b"k");
        let exp = unix_now() + 120;
        let token = auth.sign(&TokenClaims::new("bob", 0).expires_at(exp)).unwrap();
        assert_eq!(auth.authenticate(&c(&token)).await.unwrap().expires, Some(exp));
    }

    #[tokio::test]
    async fn nbf_is_checked_with_the_leeway() {
        let auth = JwtAuthenticator::new(b"k");
        let now = unix_now();
        let sign = |nbf: u64| auth.sign(&TokenClaims::new("bob", 600).not_before(nbf)).unwrap();
        // Not yet valid, well beyond the leeway: refused.
        let early = auth.authenticate(&c(&sign(now + 60))).await.unwrap_err();
        assert!(early.0.contains("Immature"), "{early}");
        // Within the leeway (a clock a little behind the issuer's), and in the past: accepted.
        assert!(auth.authenticate(&c(&sign(now + JwtAuthenticator::LEEWAY_SECS - 1))).await.is_ok());
        assert!(auth.authenticate(&c(&sign(now - 1))).await.is_ok());
    }

    /// Runs `check(now)` until the clock's second did not change while it ran, so that a
    /// boundary test compares against the same second as the library did.
    async fn within_one_second<F: std::future::Future<Output = bool>>(check: impl Fn(u64) -> F) -> bool {
        loop {
            let now = unix_now();
            let result = check(now).await;
            if unix_now() == now {
                return result;
            }
        }
    }

    #[tokio::test]
    async fn exp_and_nbf_leeway_boundaries() {
        let auth = JwtAuthenticator::new(b"k");
        let leeway = JwtAuthenticator::LEEWAY_SECS;
        let ok = |claims: TokenClaims| {
            let auth = auth.clone();
            async move { auth.authenticate(&c(&auth.sign(&claims).unwrap())).await.is_ok() }
        };
        let nbf = |delta: u64| move |now: u64| ok(TokenClaims::new("bob", 600).not_before(now + delta));
        assert!(within_one_second(nbf(leeway)).await, "nbf exactly at the leeway: accepted");
        assert!(!within_one_second(nbf(leeway + 1)).await, "one second more: refused");
        let exp = |ago: u64| move |now: u64| ok(TokenClaims::new("bob", 0).expires_at(now - ago));
        assert!(within_one_second(exp(leeway)).await, "exp exactly at the leeway: accepted");
        assert!(!within_one_second(exp(leeway + 1)).await, "one second more: refused");
    }

    #[tokio::test]
    async fn a_required_issuer_is_checked() {
        let auth = JwtAuthenticator::new(b"k").require_issuer("https://id.example.com");
        let claims = TokenClaims::new("bob", 60);
        let missing = auth.sign(&claims).unwrap();
        let wrong = auth.sign(&claims.clone().issuer("https://evil.example.com")).unwrap();
        let right = auth.sign(&claims.clone().issuer("https://id.example.com")).unwrap();
        assert!(auth.authenticate(&c(&missing)).await.is_err(), "iss is required");
        assert!(auth.authenticate(&c(&wrong)).await.is_err(), "another issuer");
        assert_eq!(auth.authenticate(&c(&right)).await.unwrap().user, "bob");
        // `issue` puts the required issuer in.
        assert!(auth.authenticate(&c(&auth.issue("bob", 60, None).unwrap())).await.is_ok());
        // Without the requirement, iss is not looked at.
        assert!(JwtAuthenticator::new(b"k").authenticate(&c(&wrong)).await.is_ok());
    }

    #[tokio::test]
    async fn a_required_audience_is_checked() {
        let auth = JwtAuthenticator::new(b"k").require_audience("chat");
        let claims = TokenClaims::new("bob", 60);
        let missing = auth.sign(&claims).unwrap();
        let wrong = auth.sign(&claims.clone().audience("billing")).unwrap();
        let right = auth.sign(&claims.clone().audience("chat")).unwrap();
        assert!(auth.authenticate(&c(&missing)).await.is_err(), "aud is required");
        assert!(auth.authenticate(&c(&wrong)).await.is_err(), "another audience");
        assert_eq!(auth.authenticate(&c(&right)).await.unwrap().user, "bob");
        assert!(auth.authenticate(&c(&auth.issue("bob", 60, None).unwrap())).await.is_ok());
        // An array naming the audience among others is accepted too (RFC 7519 §4.1.3).
        let payload = serde_json::json!({"sub": "bob", "exp": unix_now() + 60, "aud": ["billing", "chat"]});
        let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        let array = jsonwebtoken::encode(&header, &payload, &jsonwebtoken::EncodingKey::from_secret(b"k")).unwrap();
        assert!(auth.authenticate(&c(&array)).await.is_ok());
        // Without the requirement, a token meant for some audience is refused.
        assert!(JwtAuthenticator::new(b"k").authenticate(&c(&right)).await.is_err());
    }
}
