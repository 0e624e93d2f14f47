//! `JwtAuthenticator` (chat-core auth/jwt.rs): no panic on any token, and what it accepts obeys
//! its rules. The first byte picks the form of the rest: bit 0 clear, the token itself (never
//! accepted: a forgery would need the key); bit 0 set, a header and a payload separated by the
//! first `0xFF`, which the target encodes and signs with the authenticator's key, so that the
//! header and claim checks behind the signature are reached. Bit 1 picks an authenticator that
//! requires an issuer and an audience.

#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chat_core::auth::{valid_user_name, Authenticator, Credentials, Identity, JwtAuthenticator};
use hmac::{Hmac, KeyInit, Mac};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use sha2::Sha256;
use std::time::{SystemTime, UNIX_EPOCH};

const SECRET: &[u8] = b"fuzz secret";
const ISSUER: &str = "https://id.example.com";
const AUDIENCE: &str = "chat";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs()
}

fn authenticate(auth: &JwtAuthenticator, token: &str) -> Option<Identity> {
    let credentials = Credentials { token: Some(token), user: None, peer: None };
    chat_fuzz::runtime().block_on(auth.authenticate(&credentials)).ok()
}

/// `header.payload.signature` with both parts encoded as given, signed with `SECRET`.
fn sign(header: &[u8], payload: &[u8]) -> String {
    let mut token = URL_SAFE_NO_PAD.encode(header);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(payload, &mut token);
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(SECRET).expect("any key length");
    mac.update(token.as_bytes());
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(mac.finalize().into_bytes().as_slice(), &mut token);
    token
}

/// An accepted header or payload as a `Value`; `None` when it holds a number beyond `f64`
/// (`1e400`): valid JSON (RFC 8259 §6 leaves the range to implementations), which the verifier
/// accepts in the members it ignores and a `Value` cannot hold.
fn json(bytes: &[u8]) -> Option<Value> {
    match serde_json::from_slice(bytes) {
        Ok(value) => Some(value),
        Err(e) if e.to_string().starts_with("number out of range") => None,
        Err(e) => panic!("accepted JSON that serde_json refuses as a Value: {e}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let strict = mode & 2 != 0;
    let auth = if strict {
        JwtAuthenticator::new(SECRET).require_issuer(ISSUER).require_audience(AUDIENCE)
    } else {
        JwtAuthenticator::new(SECRET)
    };
    if mode & 1 == 0 {
        if let Ok(token) = std::str::from_utf8(rest) {
            assert!(authenticate(&auth, token).is_none(), "accepted an unsigned token: {token:?}");
        }
        return;
    }

    let (header, payload) = match rest.iter().position(|&b| b == 0xFF) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &b""[..]),
    };
    let token = sign(header, payload);
    let before = now();
    let Some(id) = authenticate(&auth, &token) else { return };
    let after = now();

    assert!(token.len() <= JwtAuthenticator::MAX_TOKEN_LEN);
    let Some(header) = json(header) else { return };
    let header = header.as_object().expect("an accepted header is an object");
    assert_eq!(header.get("alg"), Some(&Value::from("HS256")));
    assert!(header.get("typ").is_none_or(|t| t.as_str().is_some_and(|t| t.eq_ignore_ascii_case("JWT"))));
    assert!(!header.contains_key("crit"));

    let Some(claims) = json(payload) else { return };
    let claims = claims.as_object().expect("an accepted payload is an object");
    assert_eq!(claims.get("sub").and_then(Value::as_str), Some(id.user.as_str()));
    assert!(valid_user_name(&id.user));
    let exp = claims.get("exp").and_then(Value::as_u64).expect("exp is required");
    assert_eq!(id.expires, Some(exp));
    assert!(exp.saturating_add(JwtAuthenticator::LEEWAY_SECS) >= before, "expired");
    if let Some(nbf) = claims.get("nbf") {
        let nbf = nbf.as_u64().expect("nbf is an integer");
        assert!(nbf <= after.saturating_add(JwtAuthenticator::LEEWAY_SECS), "not valid yet");
    }
    match claims.get("rooms") {
        None | Some(Value::Null) => assert_eq!(id.rooms, None),
        Some(rooms) => {
            let rooms: Vec<String> = serde_json::from_value(rooms.clone()).expect("rooms are strings");
            assert_eq!(id.rooms, Some(rooms));
        }
    }
    if strict {
        assert_eq!(claims.get("iss").and_then(Value::as_str), Some(ISSUER));
        match claims.get("aud") {
            Some(Value::String(aud)) => assert_eq!(aud, AUDIENCE),
            Some(Value::Array(auds)) => assert!(auds.iter().any(|a| a == AUDIENCE)),
            other => panic!("accepted aud {other:?}"),
        }
    } else {
        assert!(!claims.contains_key("aud"), "accepted a token for an audience");
        assert!(claims.get("iss").is_none_or(Value::is_string));
    }
});
