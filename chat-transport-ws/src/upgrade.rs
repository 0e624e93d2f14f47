//! The server's side of the WebSocket opening handshake (RFC 6455 §4.2), done here rather than
//! by axum's `ws` extractor so that a session reads and writes frames on the upgraded
//! connection itself (see adapter.rs and frame.rs for why).
//!
//! [`accept`] checks the request (Origin allow-list, shutdown, GET, `Connection: upgrade`,
//! `Upgrade: websocket`, `Sec-WebSocket-Version: 13`, `Sec-WebSocket-Key`), answers 101 with
//! `Sec-WebSocket-Accept`, `chat.v1` when offered and permessage-deflate when the host turned
//! it on and the client offers it, and spawns the session, which waits for
//! hyper to hand over the connection (`hyper::upgrade::on`: the request carries hyper's
//! `OnUpgrade`, whether it came through [`WsServer`](crate::WsServer) or the host's own axum
//! server).
//!
//! The connection's place within the [`ConnectionLimits`](chat_core::ConnectionLimits) moves
//! into the session's task: [`WsServer`](crate::WsServer) took it at accept and hands it over
//! in the request's extensions ([`Admitted`], with the moment of accept, from which the
//! handshake deadline counts); behind the host's own server the place is taken here, and a
//! request beyond the limits is answered 503.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use chat_core::ConnectionPermit;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::adapter::{serve_socket, Shared};
use crate::batch::BatchedIo;
use crate::connection::ConnectionHandler;
use crate::deflate::{self, Agreed};
use crate::options::{WsOptions, SUBPROTOCOL};

/// What [`WsServer`](crate::WsServer) knows of a connection it accepted, put in the
/// extensions of each of its requests: when it was accepted, and its place within the
/// connection limits, which the upgrade moves into the session (a connection that is not
/// upgraded keeps it until it closes).
#[derive(Clone)]
pub(crate) struct Admitted {
    pub(crate) accepted: Instant,
    permit: Arc<Mutex<Option<ConnectionPermit>>>,
}

impl Admitted {
    pub(crate) fn new(accepted: Instant, permit: ConnectionPermit) -> Self {
        Admitted { accepted, permit: Arc::new(Mutex::new(Some(permit))) }
    }

    fn take_permit(&self) -> Option<ConnectionPermit> {
        self.permit.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// Answers an upgrade request: 101 and a spawned task running `handler` on the connection
/// (the chat engine's session, for [`router`](crate::router)), or the reason for refusing it.
pub(crate) fn accept<H: ConnectionHandler>(handler: &H, options: &WsOptions, mut request: Request) -> Response {
    let headers = request.headers();
    let origin = headers.get(header::ORIGIN).map(|o| o.to_str().unwrap_or("\u{fffd}"));
    if !options.origin_allowed(origin) {
        return refuse(StatusCode::FORBIDDEN, "origin not allowed");
    }
    if !handler.accepting() {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    if request.method() != Method::GET {
        return refuse(StatusCode::METHOD_NOT_ALLOWED, "a WebSocket upgrade is a GET request");
    }
    if request.version() != Version::HTTP_11 {
        return refuse(StatusCode::HTTP_VERSION_NOT_SUPPORTED, "WebSocket upgrades are served over HTTP/1.1");
    }
    if !has_token(headers, header::CONNECTION, "upgrade") {
        return refuse(StatusCode::BAD_REQUEST, "`Connection` header did not include `upgrade`");
    }
    if !has_token(headers, header::UPGRADE, "websocket") {
        return refuse(StatusCode::BAD_REQUEST, "`Upgrade` header did not include `websocket`");
    }
    if single(headers, header::SEC_WEBSOCKET_VERSION).map(HeaderValue::as_bytes) != Some(b"13") {
        let mut response = refuse(StatusCode::BAD_REQUEST, "`Sec-WebSocket-Version` must be 13");
        response.headers_mut().insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        return response;
    }
    let Some(key) = single(headers, header::SEC_WEBSOCKET_KEY) else {
        return refuse(StatusCode::BAD_REQUEST, "`Sec-WebSocket-Key` header missing or repeated");
    };
    if !is_websocket_key(key.as_bytes()) {
        return refuse(StatusCode::BAD_REQUEST, "`Sec-WebSocket-Key` must be 16 bytes in base64");
    }
    let Ok(accept) = HeaderValue::try_from(derive_accept_key(key.as_bytes())) else {
        return refuse(StatusCode::INTERNAL_SERVER_ERROR, "accept key");
    };
    let chat_v1 = offers_subprotocol(headers);
    let extensions = headers.get_all(header::SEC_WEBSOCKET_EXTENSIONS);
    let deflate =
        options.deflate.as_ref().and_then(|d| deflate::negotiate(extensions.iter().filter_map(|v| v.to_str().ok()), d));
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    let Some(on_upgrade) = request.extensions_mut().remove::<OnUpgrade>() else {
        return refuse(StatusCode::UPGRADE_REQUIRED, "this connection cannot be upgraded");
    };
    // The connection's place: taken at accept by `WsServer`, or here for the host's server.
    let (permit, accepted) = match request.extensions().get::<Admitted>() {
        Some(admitted) => (admitted.take_permit(), Some(admitted.accepted)),
        None => match options.connection_limits.try_acquire(peer.map(|p| p.ip())) {
            Some(permit) => (Some(permit), None),
            None => return refuse(StatusCode::SERVICE_UNAVAILABLE, "too many connections"),
        },
    };
    // Nothing of the request goes to the session: its headers share hyper's read buffer.
    drop(request);

    // The write buffer's size and what was agreed share one word of the task (every byte of
    // it is kept for the connection's life; see `Shared`).
    let batch = u32::try_from(options.write_buffer_size).unwrap_or(u32::MAX);
    let setup = (batch, deflate.as_ref().map_or(Agreed::OFF, |(agreed, _)| *agreed));
    let handler = handler.clone();
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => return tracing::debug!(error = %e, "websocket upgrade failed"),
        };
        let (batch, agreed) = setup;
        let io = BatchedIo::new(TokioIo::new(upgraded), batch as usize);
        serve_socket(handler, Shared::new(io, agreed), peer, accepted).await;
        drop(permit); // held for as long as the session runs (moved, not copied, into the task)
    });

    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    if chat_v1 {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(SUBPROTOCOL));
    }
    if let Some(extension) = deflate.and_then(|(_, response)| HeaderValue::try_from(response).ok()) {
        headers.insert(header::SEC_WEBSOCKET_EXTENSIONS, extension);
    }
    response
}

fn refuse(status: StatusCode, why: &'static str) -> Response {
    (status, why).into_response()
}

/// Whether `key` is 16 bytes in base64 (RFC 6455 §4.1): 22 characters of the alphabet, the
/// last of which carries only 2 bits, then `==`. Checked by hand: a base64 crate for 24 bytes
/// would be more code to read than this.
fn is_websocket_key(key: &[u8]) -> bool {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let value = |c: &u8| ALPHABET.iter().position(|a| a == c);
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22].iter().all(|c| value(c).is_some())
        && value(&key[21]).is_some_and(|v| v & 0x0f == 0)
}

/// The `name` header when the request has exactly one (RFC 6455 §11.3.1, §11.3.5: the key
/// and the version must not appear more than once in a request; found by the fuzzer).
fn single(headers: &HeaderMap, name: HeaderName) -> Option<&HeaderValue> {
    let mut values = headers.get_all(name).iter();
    values.next().filter(|_| values.next().is_none())
}

/// Whether any `name` header lists `token` (comma-separated, ASCII case-insensitive).
fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Whether the client offers the `chat.v1` subprotocol.
fn offers_subprotocol(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|p| p.trim_ascii() == SUBPROTOCOL.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(lines: &[(&'static str, &'static str)]) -> HeaderMap {
        lines.iter().map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v))).collect()
    }

    #[test]
    fn header_tokens() {
        let h = headers(&[("connection", "keep-alive, Upgrade"), ("upgrade", "WebSocket")]);
        assert!(has_token(&h, header::CONNECTION, "upgrade"));
        assert!(has_token(&h, header::UPGRADE, "websocket"));
        assert!(!has_token(&headers(&[("connection", "upgraded")]), header::CONNECTION, "upgrade"));
        assert!(offers_subprotocol(&headers(&[("sec-websocket-protocol", "other , chat.v1")])));
        assert!(!offers_subprotocol(&headers(&[("sec-websocket-protocol", "chat.v10")])));
        assert!(!offers_subprotocol(&HeaderMap::new()));
    }

    #[test]
    fn key_and_version_appear_once() {
        let h = headers(&[("sec-websocket-version", "13"), ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")]);
        assert_eq!(single(&h, header::SEC_WEBSOCKET_VERSION).map(HeaderValue::as_bytes), Some(&b"13"[..]));
        let mut twice = h.clone();
        twice.append(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        twice.append(header::SEC_WEBSOCKET_KEY, HeaderValue::from_static("dGhlIANhbXBsZSBub25jZQ=="));
        assert!(single(&twice, header::SEC_WEBSOCKET_VERSION).is_none(), "two versions");
        assert!(single(&twice, header::SEC_WEBSOCKET_KEY).is_none(), "two keys");
        assert!(single(&HeaderMap::new(), header::SEC_WEBSOCKET_KEY).is_none());
    }

    #[test]
    fn websocket_keys() {
        assert!(is_websocket_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "the RFC's sample");
        assert!(!is_websocket_key(b"dGhlIHNhbXBsZSBub25jZQ"), "no padding");
        assert!(!is_websocket_key(b"dGhlIHNhbXBsZSBub25jZR=="), "bits past the 16 bytes");
        assert!(!is_websocket_key(b"dGhlIHNhbXBsZSBub25j*Q=="), "not base64");
        assert!(!is_websocket_key(b"c2hvcnQ="), "5 bytes");
        assert!(!is_websocket_key(b""));
    }

    #[test]
    fn accept_key_of_rfc_6455() {
        assert_eq!(derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }
}
