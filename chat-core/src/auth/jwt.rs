//! [`JwtAuthenticator`]: HS256 JSON Web Tokens (the `jwt` feature, on by default).
//!
//! # Why not the `jsonwebtoken` crate
//!
//! The project prefers a well-kept crate to hand-written code; here the JWS/JWT layer is
//! written out (about a hundred lines) on top of the RustCrypto crates `hmac` and `sha2` (the
//! MAC, compared in constant time) and `base64`, because `jsonwebtoken` 10 cannot be had with
//! HS256 alone:
//!
//! - its `rust_crypto` feature (the one this crate used) brings every algorithm: `rsa`,
//!   `p256`, `p384`, `ed25519-dalek`, `rand` and their trees. Measured as lines of
//!   `cargo tree -e normal ARGS | wc -l` / distinct crates
//!   (`cargo tree -e normal ARGS --prefix none | sed 's/ (\*)//' | sort -u | wc -l`):
//!
//!   | ARGS                                                     | `jsonwebtoken` | now       | no `jwt` |
//!   |----------------------------------------------------------|----------------|-----------|----------|
//!   | `-p chat-core --features jwt`                            | 227 / 93       | 103 / 52  | 89 / 40  |
//!   | `-p chat-engine --no-default-features --features ws,jwt` | 329 / 123      | 212 / 90  | 198 / 80 |
//!   | `-p chat-engine` (every feature)                         | 573 / 218      | 447 / 179 |          |
//!
//!   The 12 crates `jwt` adds now are `base64`, `hmac`, `sha2` and theirs (`digest`,
//!   `block-buffer`, `crypto-common`, `hybrid-array`, `typenum`, `ctutils`, `cmov`,
//!   `cpufeatures`, `cfg-if`), the versions `postgres-protocol` uses too.
//! - without `rust_crypto` (or `aws_lc_rs`) it needs a `CryptoProvider` installed with
//!   `CryptoProvider::install_default`, which is process-global: a library must not call it,
//!   as it would clobber, or be clobbered by, the host application's own use of
//!   `jsonwebtoken` (its RS256 tokens, say). Feature unification makes it worse: a host that
//!   enables `aws_lc_rs` while this crate enabled `rust_crypto` gets both, and then
//!   `jsonwebtoken` panics on first use unless someone installs a provider.
//!
//! What is hand-written is only the part `jsonwebtoken` would have done around the MAC, and it
//! is strict (RFC 7515 / RFC 7519):
//!
//! - A token longer than [`JwtAuthenticator::MAX_TOKEN_LEN`] is refused before anything is
//!   decoded.
//! - Exactly three segments, each base64url without padding, canonical (no `=`, no characters
//!   outside the URL-safe alphabet, no non-zero trailing bits: one token, one encoding).
//! - The header is a JSON object, all of it UTF-8 (RFC 7515 §5.2), whose `alg` is exactly
//!   `"HS256"` (`none`, `HS384`, `RS256`, a missing `alg`... are refused); `typ`, when present,
//!   must be `"JWT"` (compared without regard to case, as media types are), so that other kinds
//!   of tokens signed with the same secret (RFC 9068's `at+jwt`, say) are not taken for these;
//!   a `crit` header is refused, since no extension is understood (RFC 7515 §4.1.11). Other
//!   header parameters (`kid`...) are ignored.
//! - The signature is checked (HMAC-SHA256 over the first two segments as sent, compared in
//!   constant time) before the payload is decoded at all.
//! - The payload is a JSON object, all of it UTF-8, with no duplicate registered claims: `sub`
//!   (a string, a [valid user name](super::valid_user_name)), `exp` (an integer, required),
//!   `nbf`, `iss` (a string), `aud` (a string or an array of strings) and `rooms` (an array of
//!   strings, or null for no limit), with the rules of [`JwtAuthenticator`]. Other claims are
//!   ignored. Unlike `jsonwebtoken`, an `iss` that is an array is refused: RFC 7519 §4.1.1
//!   makes it a single string.
//!
//! [`JwtAuthenticator::sign`] writes the header `{"typ":"JWT","alg":"HS256"}` and the claims in
//! [`TokenClaims`]' field order, so its tokens are byte for byte those `jsonwebtoken` made (the
//! tests keep vectors made with it, and with RFC 7515's example).

use std::sync::Arc;

use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer};
use sha2::Sha256;

use super::{valid_user_name, AuthError, Authenticator, Credentials, Identity};
use crate::time::unix_now;

type HmacSha256 = Hmac<Sha256>;

/// The first segment of every token [`JwtAuthenticator::sign`] makes: base64url of
/// `{"typ":"JWT","alg":"HS256"}`, the header `jsonwebtoken` writes.
const HEADER_B64: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9";

/// The length of an HMAC-SHA256 tag.
const TAG_LEN: usize = 32;

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
/// refuse it) and `iss` is not looked at beyond being a string when present.
///
/// Only `"alg":"HS256"` tokens of at most [`MAX_TOKEN_LEN`](Self::MAX_TOKEN_LEN) bytes are
/// accepted: header, encoding and claims are checked strictly (RFC 7515 and RFC 7519), and the
/// signature in constant time before the claims are read. The comment at the top of
/// `chat-core/src/auth/jwt.rs` lists every rule, and says why this is written on the RustCrypto
/// `hmac` and `sha2` crates rather than on `jsonwebtoken` (which would bring RSA and EC code).
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
    /// HMAC-SHA256 keyed with the secret (the key's inner and outer pad state, not the secret
    /// itself), cloned for each token.
    mac: Arc<HmacSha256>,
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

/// A token's JOSE header: what is checked of it (other parameters are ignored).
#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default, deserialize_with = "present")]
    typ: Option<String>,
    #[serde(default, deserialize_with = "present")]
    crit: Option<IgnoredAny>,
}

/// What the authenticator reads from a token's payload (other claims are ignored).
#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default, deserialize_with = "present")]
    nbf: Option<u64>,
    #[serde(default, deserialize_with = "present")]
    iss: Option<String>,
    #[serde(default, deserialize_with = "present")]
    aud: Option<Audience>,
    #[serde(default)]
    rooms: Option<Vec<String>>,
}

/// `aud`: one audience or several (RFC 7519 §4.1.3).
#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

/// A member that is present is `Some`, whatever its value: `null` must then be a valid `T`
/// (for `Option<T>` members, serde would otherwise read `"typ": null` as no `typ` at all).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// Decodes one segment: canonical base64url without padding.
fn segment(b64: &str, what: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD.decode(b64).map_err(|e| format!("the {what} is not base64url: {e}"))
}

/// Parses a JSON object in UTF-8; anything else (an array, which serde would take for a struct
/// too, a string...) is refused. The whole text is checked to be UTF-8 first: serde_json skips
/// the members a struct ignores without looking at their bytes (RFC 7515 §5.2 wants the
/// header a valid UTF-8 JSON object; the fuzz target `jwt` found that this was missing).
fn object<'a, T: Deserialize<'a>>(json: &'a [u8], what: &str) -> Result<T, String> {
    let json = std::str::from_utf8(json).map_err(|_| format!("the {what} is not UTF-8"))?;
    if !json.trim_start_matches([' ', '\t', '\n', '\r']).starts_with('{') {
        return Err(format!("the {what} is not a JSON object"));
    }
    serde_json::from_str(json).map_err(|e| format!("the {what} is not valid: {e}"))
}

impl JwtAuthenticator {
    /// How far `exp` and `nbf` may be off, in seconds, for clocks that disagree a little.
    pub const LEEWAY_SECS: u64 = 5;

    /// The longest token accepted, in bytes: a longer one is refused before anything in it is
    /// decoded, so that a peer cannot make the node decode and parse large inputs.
    /// [`sign`](Self::sign) refuses to make longer ones.
    pub const MAX_TOKEN_LEN: usize = 8 * 1024;

    /// Verifies tokens signed with `secret`.
    pub fn new(secret: &[u8]) -> Self {
        // HMAC takes keys of any length (longer ones are hashed): this cannot fail.
        let mac = <HmacSha256 as KeyInit>::new_from_slice(secret).expect("HMAC accepts keys of any length");
        JwtAuthenticator { mac: Arc::new(mac), issuer: None, audience: None }
    }

    /// Requires `iss` to be `issuer`: a token without it, or from another issuer, is refused.
    pub fn require_issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    /// Requires `aud` to name `audience` (a string, or an array holding it): a token without
    /// it, or for another audience, is refused.
    pub fn require_audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
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

    /// Signs `claims` exactly as given. Fails only if the token would be longer than
    /// [`MAX_TOKEN_LEN`](Self::MAX_TOKEN_LEN).
    pub fn sign(&self, claims: &TokenClaims) -> Result<String, AuthError> {
        let payload = serde_json::to_vec(claims).map_err(|e| AuthError(format!("cannot encode the claims: {e}")))?;
        let mut token = String::with_capacity(HEADER_B64.len() + payload.len().div_ceil(3) * 4 + 45);
        token.push_str(HEADER_B64);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
        let mut mac = HmacSha256::clone(&self.mac);
        mac.update(token.as_bytes());
        let tag = mac.finalize().into_bytes();
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(tag.as_slice(), &mut token);
        if token.len() > Self::MAX_TOKEN_LEN {
            return Err(AuthError(format!("the token would be longer than {} bytes", Self::MAX_TOKEN_LEN)));
        }
        Ok(token)
    }

    /// Checks `token` as of `now` (seconds since the Unix epoch): the identity it proves, or
    /// why it is refused.
    fn verify(&self, token: &str, now: u64) -> Result<Identity, String> {
        if token.len() > Self::MAX_TOKEN_LEN {
            return Err(format!("longer than {} bytes", Self::MAX_TOKEN_LEN));
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(tag_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("not three dot-separated segments".into());
        };

        let header: Header = object(&segment(header_b64, "header")?, "header")?;
        if header.alg != "HS256" {
            return Err(format!("the header's alg {:?} is not HS256", header.alg));
        }
        if header.typ.as_deref().is_some_and(|typ| !typ.eq_ignore_ascii_case("JWT")) {
            return Err("the header's typ is not JWT".into());
        }
        if header.crit.is_some() {
            return Err("the header has crit, and no extension is supported".into());
        }

        let tag = segment(tag_b64, "signature")?;
        let mut mac = HmacSha256::clone(&self.mac);
        // The signing input is the first two segments as sent (`header_b64.payload_b64`).
        mac.update(&token.as_bytes()[..header_b64.len() + 1 + payload_b64.len()]);
        if tag.len() != TAG_LEN || mac.verify_slice(&tag).is_err() {
            return Err("bad signature".into());
        }

        let claims: Claims = object(&segment(payload_b64, "payload")?, "payload")?;
        if claims.exp.saturating_add(Self::LEEWAY_SECS) < now {
            return Err("expired (exp)".into());
        }
        if claims.nbf.is_some_and(|nbf| nbf > now.saturating_add(Self::LEEWAY_SECS)) {
            return Err("not valid yet (nbf)".into());
        }
        if let Some(issuer) = &self.issuer {
            match &claims.iss {
                None => return Err("iss is required".into()),
                Some(iss) if iss != issuer => return Err("another issuer (iss)".into()),
                Some(_) => {}
            }
        }
        match (&self.audience, &claims.aud) {
            (None, None) => {}
            (None, Some(_)) => return Err("meant for an audience (aud) and none is expected".into()),
            (Some(_), None) => return Err("aud is required".into()),
            (Some(audience), Some(Audience::One(aud))) if aud == audience => {}
            (Some(audience), Some(Audience::Many(auds))) if auds.contains(audience) => {}
            (Some(_), Some(_)) => return Err("another audience (aud)".into()),
        }
        if !valid_user_name(&claims.sub) {
            return Err("the token's sub is not a valid user name".into());
        }
        Ok(Identity { user: claims.sub, rooms: claims.rooms, expires: Some(claims.exp) })
    }
}

#[async_trait]
impl Authenticator for JwtAuthenticator {
    async fn authenticate(&self, c: &Credentials<'_>) -> Result<Identity, AuthError> {
        let token = c.token.ok_or_else(|| AuthError("a token is required".into()))?;
        self.verify(token, unix_now()).map_err(|e| AuthError(format!("invalid token: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AllowAnonymous;
    use proptest::prelude::*;
    use serde_json::json;

    fn c(t: &str) -> Credentials<'_> {
        Credentials { token: Some(t), user: None, peer: None }
    }

    /// The secret of the fixed vectors below.
    const SECRET: &[u8] = b"chat-core HS256 test vector secret";
    /// 2100-01-01T00:00:00Z, the vectors' `exp`.
    const EXP: u64 = 4_102_444_800;

    // Made by `jsonwebtoken` 10.4 (rust_crypto), through this module's earlier `sign` for V1
    // and V2, with `jsonwebtoken::encode` for V3 and V4.
    /// `TokenClaims::new("alice", 0).expires_at(EXP)`.
    const V1: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6NDEwMjQ0NDgwMH0.MV_hDYJdtoJX6faJqPW2JKX_aFMLz0yNfNt9jftSUSg";
    /// `bob`, every claim: nbf 1700000000, iss `https://id.example.com`, aud `chat`, rooms
    /// `lobby` and `team-*`.
    const V2: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJib2IiLCJleHAiOjQxMDI0NDQ4MDAsIm5iZiI6MTcwMDAwMDAwMCwiaXNzIjoiaHR0cHM6Ly9pZC5leGFtcGxlLmNvbSIsImF1ZCI6ImNoYXQiLCJyb29tcyI6WyJsb2JieSIsInRlYW0tKiJdfQ.A-hxrDXmKDsULto9FpYR1t5_pfVwRaz5NwCNS4y_1tM";
    /// `{"aud":["billing","chat"],"exp":EXP,"iat":1700000000,"sub":"carol"}`.
    const V3: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.eyJhdWQiOlsiYmlsbGluZyIsImNoYXQiXSwiZXhwIjo0MTAyNDQ0ODAwLCJpYXQiOjE3MDAwMDAwMDAsInN1YiI6ImNhcm9sIn0.eFvhNhWmLVIW9QoaT4DsJrKM9BsaqTNX1hxkwrgNDvo";
    /// A header with `kid`: `{"typ":"JWT","alg":"HS256","kid":"k1"}`; sub `dave`.
    const V4: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiIsImtpZCI6ImsxIn0.eyJleHAiOjQxMDI0NDQ4MDAsInN1YiI6ImRhdmUifQ.W1famdqFll8YywrMyBN5KbJPbAWjqvOQBXZzY6G1-SI";

    /// RFC 7515 appendix A.1: its header has a CRLF and no `alg` first, its key is given in
    /// base64url; `exp` is 1300819380 and there is no `sub`, so only the signature checks out.
    const RFC7515_A1: &str = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    const RFC7515_A1_KEY: &str =
        "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow";

    /// A token with any header and payload JSON, signed with `secret`: the way another
    /// implementation could make one.
    fn forge(header: &str, payload: &str, secret: &[u8]) -> String {
        let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(payload));
        let mut mac = HmacSha256::new_from_slice(secret).unwrap();
        mac.update(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes().as_slice()))
    }

    const HS256: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

    fn payload(extra: serde_json::Value) -> String {
        let mut p = json!({"sub": "bob", "exp": unix_now() + 600});
        p.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        p.to_string()
    }

    /// The reason `token` is refused by `auth`, as of now.
    fn refusal(auth: &JwtAuthenticator, token: &str) -> String {
        auth.verify(token, unix_now()).err().unwrap_or_else(|| panic!("accepted: {token}"))
    }

    #[test]
    fn tokens_made_by_jsonwebtoken_still_verify_and_sign_makes_the_same_bytes() {
        let auth = JwtAuthenticator::new(SECRET);
        let now = unix_now();
        let v1 = auth.verify(V1, now).unwrap();
        assert_eq!((v1.user.as_str(), v1.rooms, v1.expires), ("alice", None, Some(EXP)));
        assert_eq!(auth.sign(&TokenClaims::new("alice", 0).expires_at(EXP)).unwrap(), V1);

        let strict = auth.clone().require_issuer("https://id.example.com").require_audience("chat");
        let v2 = strict.verify(V2, now).unwrap();
        assert_eq!(v2.user, "bob");
        assert_eq!(v2.rooms, Some(vec!["lobby".to_owned(), "team-*".to_owned()]));
        let claims = TokenClaims::new("bob", 0)
            .expires_at(EXP)
            .not_before(1_700_000_000)
            .issuer("https://id.example.com")
            .audience("chat")
            .rooms(vec!["lobby".into(), "team-*".into()]);
        assert_eq!(auth.sign(&claims).unwrap(), V2);
        // V2 names an audience: refused by an authenticator that expects none.
        assert!(auth.verify(V2, now).unwrap_err().contains("aud"));

        assert_eq!(auth.clone().require_audience("chat").verify(V3, now).unwrap().user, "carol");
        assert_eq!(auth.verify(V4, now).unwrap().user, "dave");
        for v in [V1, V2, V3, V4] {
            assert!(JwtAuthenticator::new(b"another secret").verify(v, now).unwrap_err().contains("signature"));
        }
        assert_eq!(URL_SAFE_NO_PAD.decode(HEADER_B64).unwrap(), br#"{"typ":"JWT","alg":"HS256"}"#);
    }

    #[test]
    fn rfc_7515_example_signature_verifies() {
        let key = URL_SAFE_NO_PAD.decode(RFC7515_A1_KEY).unwrap();
        let auth = JwtAuthenticator::new(&key);
        // Past the signature: refused for its claims only (no `sub`), on the day it was made.
        let e = auth.verify(RFC7515_A1, 1_300_819_370).unwrap_err();
        assert!(e.contains("payload") && e.contains("sub"), "{e}");
        let e = JwtAuthenticator::new(b"k").verify(RFC7515_A1, 1_300_819_370).unwrap_err();
        assert_eq!(e, "bad signature");
    }

    #[test]
    fn only_hs256_headers_are_accepted() {
        let auth = JwtAuthenticator::new(b"k");
        let p = payload(json!({}));
        assert!(auth.verify(&forge(HS256, &p, b"k"), unix_now()).is_ok());
        assert!(auth.verify(&forge(r#"{"alg":"HS256"}"#, &p, b"k"), unix_now()).is_ok(), "typ is optional");
        assert!(auth.verify(&forge(r#"{"alg":"HS256","typ":"jwt"}"#, &p, b"k"), unix_now()).is_ok());
        for alg in ["none", "None", "HS384", "HS512", "RS256", "ES256", "EdDSA", "hs256", "HS256 ", ""] {
            let header = json!({"alg": alg, "typ": "JWT"}).to_string();
            assert!(refusal(&auth, &forge(&header, &p, b"k")).contains("alg"), "{alg}");
        }
        // alg none with an empty signature, the classic attack.
        let none = format!("{}.{}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#), URL_SAFE_NO_PAD.encode(&p));
        assert!(refusal(&auth, &none).contains("alg"));
        for header in [
            r#"{"typ":"JWT"}"#,
            r#"{"alg":null}"#,
            r#"{"alg":256}"#,
            r#"{"alg":["HS256"]}"#,
            r#"["HS256"]"#,
            r#"["HS256",null,null]"#,
            r#""HS256""#,
            "null",
            "",
            r#"{"alg":"HS256","alg":"HS256"}"#,
            r#"{"alg":"HS256"} {}"#,
            r#"{"alg":"HS256","typ":"at+jwt"}"#,
            r#"{"alg":"HS256","typ":null}"#,
            r#"{"alg":"HS256","typ":1}"#,
            r#"{"alg":"HS256","crit":["exp"],"exp":1}"#,
            r#"{"alg":"HS256","crit":[]}"#,
            r#"{"alg":"HS256","crit":null}"#,
            r#"{"alg":"HS256","b64":false,"crit":["b64"]}"#,
        ] {
            assert!(refusal(&auth, &forge(header, &p, b"k")).contains("header"), "{header}");
        }
    }

    #[test]
    fn header_refusals_say_why() {
        let auth = JwtAuthenticator::new(b"k");
        let p = payload(json!({}));
        assert!(refusal(&auth, &forge(r#"{"alg":"HS256","typ":"at+jwt"}"#, &p, b"k")).contains("typ"));
        assert!(refusal(&auth, &forge(r#"{"alg":"HS256","crit":["x"],"x":1}"#, &p, b"k")).contains("crit"));
        assert!(refusal(&auth, &forge(r#"{"alg":"HS512"}"#, &p, b"k")).contains("HS512"));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let auth = JwtAuthenticator::new(SECRET);
        let now = unix_now();
        let (h, rest) = V1.split_once('.').unwrap();
        let (p, s) = rest.split_once('.').unwrap();
        for bad in [
            String::new(),
            ".".into(),
            "..".into(),
            "...".into(),
            format!("{h}.{p}"),
            format!("{h}.{p}.{s}."),
            format!("{h}.{p}.{s}.{s}"),
            format!("{h}.{p}.{s}="),
            format!("{h}=.{p}.{s}"),
            format!("{h}.{p}=.{s}"),
            format!("{h}.{p}.{}", &s[..s.len() - 1]),
            format!("{h}.{p}.{s}A"),
            format!("{h}.{p}.{s}AAAA"),
            format!("{h}.{p}."),
            format!(".{p}.{s}"),
            format!("{h}..{s}"),
            format!("{h}.{p}.{}", s.replace('_', "/")),
            format!(" {h}.{p}.{s}"),
            format!("{h}.{p}.{s} "),
            format!("{h}.{p}.{s}\n"),
            format!("{h}.{p} .{s}"),
            format!("{}.{p}.{s}", URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#)),
        ] {
            assert!(auth.verify(&bad, now).is_err(), "{bad}");
        }
        // Standard base64 (with + and /) and padding are refused even when correctly signed.
        let padded = forge(HS256, &payload(json!({"x": "?~>"})), SECRET);
        assert!(auth.verify(&padded, now).is_ok());
        let (sh, srest) = padded.split_once('.').unwrap();
        let (sp, _) = srest.split_once('.').unwrap();
        let std = base64::engine::general_purpose::STANDARD;
        let mut reencoded = format!(
            "{}.{}",
            std.encode(URL_SAFE_NO_PAD.decode(sh).unwrap()),
            std.encode(URL_SAFE_NO_PAD.decode(sp).unwrap())
        );
        let mut mac = HmacSha256::new_from_slice(SECRET).unwrap();
        mac.update(reencoded.as_bytes());
        reencoded = format!("{reencoded}.{}", std.encode(mac.finalize().into_bytes().as_slice()));
        assert!(auth.verify(&reencoded, now).unwrap_err().contains("base64"), "{reencoded}");
    }

    #[test]
    fn a_non_canonical_signature_encoding_is_refused() {
        // 32 bytes take 43 characters, whose last one carries 2 unused bits: a last character
        // that differs only in them decodes to the same tag, and is still refused.
        let auth = JwtAuthenticator::new(SECRET);
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let last = V1.as_bytes()[V1.len() - 1];
        let index = alphabet.iter().position(|&a| a == last).unwrap();
        assert_eq!(index % 4, 0, "the canonical encoding leaves the unused bits zero");
        for other in 1..4 {
            let token = format!("{}{}", &V1[..V1.len() - 1], alphabet[index + other] as char);
            assert!(auth.verify(&token, unix_now()).unwrap_err().contains("base64"), "{token}");
        }
    }

    #[test]
    fn tampering_is_refused() {
        let auth = JwtAuthenticator::new(SECRET);
        let now = unix_now();
        let (h, rest) = V1.split_once('.').unwrap();
        let (_, s) = rest.split_once('.').unwrap();
        // Another user, the signature left as it was.
        let mallory = URL_SAFE_NO_PAD.encode(format!(r#"{{"sub":"mallory","exp":{EXP}}}"#));
        assert_eq!(auth.verify(&format!("{h}.{mallory}.{s}"), now).unwrap_err(), "bad signature");
        // The same claims in another spelling (a space): the signature covers the bytes.
        let spaced = URL_SAFE_NO_PAD.encode(format!(r#"{{"sub":"alice", "exp":{EXP}}}"#));
        assert_eq!(auth.verify(&format!("{h}.{spaced}.{s}"), now).unwrap_err(), "bad signature");
        // A flipped signature bit, a shortened and a lengthened signature.
        let mut tag = URL_SAFE_NO_PAD.decode(s).unwrap();
        tag[7] ^= 1;
        let flipped = V1.replace(s, &URL_SAFE_NO_PAD.encode(&tag));
        assert_eq!(auth.verify(&flipped, now).unwrap_err(), "bad signature");
        let short = V1.replace(s, &URL_SAFE_NO_PAD.encode(&tag[..31]));
        assert_eq!(auth.verify(&short, now).unwrap_err(), "bad signature");
        tag[7] ^= 1;
        tag.push(0);
        let long = V1.replace(s, &URL_SAFE_NO_PAD.encode(&tag));
        assert_eq!(auth.verify(&long, now).unwrap_err(), "bad signature");
    }

    #[test]
    fn tokens_longer_than_the_maximum_are_refused_before_decoding() {
        let auth = JwtAuthenticator::new(b"k");
        let max = JwtAuthenticator::MAX_TOKEN_LEN;
        // A valid token of exactly the maximum length is accepted, one byte more is not.
        let fits = |len: usize| {
            let mut pad = 0;
            loop {
                let t = forge(HS256, &payload(json!({"pad": "x".repeat(pad)})), b"k");
                if t.len() >= len {
                    return t;
                }
                pad += 1;
            }
        };
        let exact = fits(max);
        assert_eq!(exact.len(), max);
        assert!(auth.verify(&exact, unix_now()).is_ok());
        let over = fits(max + 1);
        assert_eq!(over.len(), max + 1);
        assert!(refusal(&auth, &over).contains("longer than"));
        // Garbage that long is refused for its length, not its content.
        assert!(refusal(&auth, &"!".repeat(max + 1)).contains("longer than"));
        // `sign` does not make tokens it would refuse.
        let huge = TokenClaims::new("bob", 60).rooms(vec!["r".repeat(max)]);
        assert!(auth.sign(&huge).unwrap_err().0.contains("longer than"));
    }

    #[test]
    fn claims_are_checked() {
        let auth = JwtAuthenticator::new(b"k");
        let ok = |p: serde_json::Value| auth.verify(&forge(HS256, &p.to_string(), b"k"), unix_now());
        let exp = unix_now() + 600;
        assert!(ok(json!({"sub": "bob", "exp": exp, "iat": 1, "jti": "x", "extra": {"deep": [1, 2]}})).is_ok());
        assert!(ok(json!({"sub": "bob", "exp": exp, "rooms": null})).unwrap().rooms.is_none());
        assert!(ok(json!({"sub": "bob", "exp": exp, "iss": "anyone"})).is_ok(), "iss is not looked at");
        for bad in [
            json!({"exp": exp}),
            json!({"sub": "bob"}),
            json!({"sub": "bob", "exp": null}),
            json!({"sub": "bob", "exp": exp as f64 + 0.5}),
            json!({"sub": "bob", "exp": exp.to_string()}),
            json!({"sub": "bob", "exp": -1}),
            json!({"sub": 7, "exp": exp}),
            json!({"sub": "", "exp": exp}),
            json!({"sub": "a\nb", "exp": exp}),
            json!({"sub": "x".repeat(65), "exp": exp}),
            json!({"sub": "bob", "exp": exp, "nbf": null}),
            json!({"sub": "bob", "exp": exp, "nbf": "0"}),
            json!({"sub": "bob", "exp": exp, "iss": ["anyone"]}),
            json!({"sub": "bob", "exp": exp, "iss": null}),
            json!({"sub": "bob", "exp": exp, "aud": "chat"}),
            json!({"sub": "bob", "exp": exp, "aud": []}),
            json!({"sub": "bob", "exp": exp, "aud": null}),
            json!({"sub": "bob", "exp": exp, "rooms": "lobby"}),
            json!({"sub": "bob", "exp": exp, "rooms": [1]}),
            json!(["bob", exp]),
        ] {
            assert!(ok(bad.clone()).is_err(), "{bad}");
        }
        // Any JSON number is JSON, in a claim that is not read too (RFC 8259 §6).
        let huge = format!(r#"{{"sub":"bob","exp":{exp},"x":1e400,"y":-0.0e-999}}"#);
        assert!(auth.verify(&forge(HS256, &huge, b"k"), unix_now()).is_ok());
        // Raw payloads that serde_json would not produce.
        for raw in [
            format!(r#"{{"sub":"bob","sub":"alice","exp":{exp}}}"#),
            format!(r#"{{"sub":"bob","exp":{exp},"exp":{exp}}}"#),
            format!(r#"{{"sub":"bob","exp":{exp}}}x"#),
            format!(r#"{{"sub":"bob","exp":{exp}"#),
            format!("{{\"sub\":\"b\u{0}ob\",\"exp\":{exp}}}"),
            "\"a string\"".into(),
        ] {
            assert!(auth.verify(&forge(HS256, &raw, b"k"), unix_now()).is_err(), "{raw}");
        }
    }

    #[test]
    fn header_and_payload_must_be_utf8_even_in_ignored_members() {
        let auth = JwtAuthenticator::new(b"k");
        let forge_bytes = |header: &[u8], payload: &[u8]| {
            let mut input = URL_SAFE_NO_PAD.encode(header);
            input.push('.');
            URL_SAFE_NO_PAD.encode_string(payload, &mut input);
            let mut mac = HmacSha256::new_from_slice(b"k").unwrap();
            mac.update(input.as_bytes());
            format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes().as_slice()))
        };
        let header = br#"{"alg":"HS256","kid":"k1"}"#;
        let claims = br#"{"sub":"bob","exp":9999999999,"x":"y"}"#;
        assert!(auth.verify(&forge_bytes(header, claims), unix_now()).is_ok());
        // The fuzz target's finding: an unknown header member with a byte that is not UTF-8.
        let mut h = header.to_vec();
        h.insert(h.len() - 4, 0xBE);
        assert_eq!(refusal(&auth, &forge_bytes(&h, claims)), "the header is not UTF-8");
        let mut p = claims.to_vec();
        p.insert(p.len() - 3, 0xFF);
        assert_eq!(refusal(&auth, &forge_bytes(header, &p)), "the payload is not UTF-8");
        let mut p = claims.to_vec();
        p.insert(9, 0xFF);
        assert_eq!(refusal(&auth, &forge_bytes(header, &p)), "the payload is not UTF-8", "in sub");
    }

    #[test]
    fn exp_and_nbf_boundaries_at_a_fixed_time() {
        let auth = JwtAuthenticator::new(b"k");
        let now = 1_800_000_000;
        let leeway = JwtAuthenticator::LEEWAY_SECS;
        let at = |claims: TokenClaims| auth.verify(&auth.sign(&claims).unwrap(), now);
        assert!(at(TokenClaims::new("bob", 0).expires_at(now - leeway)).is_ok());
        assert_eq!(at(TokenClaims::new("bob", 0).expires_at(now - leeway - 1)).unwrap_err(), "expired (exp)");
        assert!(at(TokenClaims::new("bob", 0).expires_at(now + 60).not_before(now + leeway)).is_ok());
        let early = at(TokenClaims::new("bob", 0).expires_at(now + 60).not_before(now + leeway + 1));
        assert_eq!(early.unwrap_err(), "not valid yet (nbf)");
        // Extremes do not overflow.
        assert!(at(TokenClaims::new("bob", 0).expires_at(u64::MAX).not_before(u64::MAX)).is_err());
        assert!(at(TokenClaims::new("bob", 0).expires_at(0)).is_err());
        assert!(auth.verify(&auth.sign(&TokenClaims::new("bob", 0).expires_at(u64::MAX)).unwrap(), u64::MAX).is_ok());
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
        assert!(auth.authenticate(&Credentials { token: None, user: Some("bob"), peer: None }).await.is_err());
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
        assert!(early.0.contains("nbf"), "{early}");
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
        // An array of issuers is not an issuer (RFC 7519 §4.1.1).
        let array = forge(HS256, &payload(json!({"iss": ["https://id.example.com"]})), b"k");
        assert!(auth.authenticate(&c(&array)).await.is_err());
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
        let array = forge(HS256, &payload(json!({"aud": ["billing", "chat"]})), b"k");
        assert!(auth.authenticate(&c(&array)).await.is_ok());
        for refused in [json!([]), json!(["billing"]), json!(["chat", 1]), json!("CHAT"), json!(null), json!({})] {
            let token = forge(HS256, &payload(json!({ "aud": refused })), b"k");
            assert!(auth.authenticate(&c(&token)).await.is_err(), "{refused}");
        }
        // Without the requirement, a token meant for some audience is refused.
        assert!(JwtAuthenticator::new(b"k").authenticate(&c(&right)).await.is_err());
        assert!(JwtAuthenticator::new(b"k").authenticate(&c(&array)).await.is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn random_strings_never_panic_and_are_refused(s in any::<String>()) {
            prop_assert!(JwtAuthenticator::new(SECRET).verify(&s, unix_now()).is_err());
        }

        #[test]
        fn random_token_shaped_strings_are_refused(
            h in "[A-Za-z0-9_-]{0,60}", p in "[A-Za-z0-9_-]{0,60}", s in "[A-Za-z0-9_=+/-]{0,50}",
        ) {
            let token = format!("{h}.{p}.{s}");
            prop_assert!(JwtAuthenticator::new(SECRET).verify(&token, unix_now()).is_err());
        }

        /// Any change to a valid token (bytes replaced, inserted or removed, anywhere) is
        /// refused, and nothing panics: the MAC covers the first two segments as sent and the
        /// signature's encoding is canonical, so no other spelling of the same token exists.
        #[test]
        fn mutated_tokens_are_refused(
            which in 0..4usize,
            edits in proptest::collection::vec((any::<prop::sample::Index>(), 0..3u8, any::<u8>()), 1..4),
        ) {
            let original = [V1, V2, V3, V4][which];
            let auth = match which {
                1 => JwtAuthenticator::new(SECRET).require_issuer("https://id.example.com").require_audience("chat"),
                2 => JwtAuthenticator::new(SECRET).require_audience("chat"),
                _ => JwtAuthenticator::new(SECRET),
            };
            let mut bytes = original.as_bytes().to_vec();
            for (at, kind, byte) in edits {
                match kind {
                    0 if !bytes.is_empty() => { let i = at.index(bytes.len()); bytes[i] = byte; }
                    1 => { let i = at.index(bytes.len() + 1); bytes.insert(i, byte); }
                    _ if !bytes.is_empty() => { let i = at.index(bytes.len()); bytes.remove(i); }
                    _ => {}
                }
            }
            let Ok(token) = String::from_utf8(bytes) else { return Ok(()) };
            let result = auth.verify(&token, unix_now());
            if token == original {
                prop_assert!(result.is_ok());
            } else {
                prop_assert!(result.is_err(), "accepted a changed token: {}", token);
            }
        }

        /// Claims that `sign` makes verify to the same identity.
        #[test]
        fn signed_claims_round_trip(
            sub in "[a-z]{1,20}", ttl in 0..1_000_000u64, rooms in proptest::option::of(proptest::collection::vec("[a-z*-]{0,10}", 0..4)),
        ) {
            let auth = JwtAuthenticator::new(SECRET);
            let id = auth.verify(&auth.issue(&sub, ttl, rooms.clone()).unwrap(), unix_now()).unwrap();
            prop_assert_eq!(id.user, sub);
            prop_assert_eq!(id.rooms, rooms);
        }
    }
}
