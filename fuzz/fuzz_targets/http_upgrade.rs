//! The WebSocket upgrade (chat-transport-ws upgrade.rs behind hyper's HTTP/1.1 server, as
//! `WsServer` runs it): arbitrary bytes as the connection's first bytes. No panic and no hang;
//! the server answers HTTP; a `101` only for a GET over HTTP/1.1 with `Upgrade: websocket`,
//! `Sec-WebSocket-Version: 13` and a 16-byte key, with the right `Sec-WebSocket-Accept`; what
//! follows a `101` are WebSocket frames a server may send (the session runs on the bytes after
//! the request), and once the connection is over the engine holds nothing for it.

#![no_main]

use std::time::Duration;

use chat_transport_ws::{router, WsOptions, MAX_HEADER_BYTES};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

fn header<'a>(headers: &[httparse::Header<'a>], name: &str) -> Vec<&'a [u8]> {
    headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value).collect()
}

fuzz_target!(|data: &[u8]| {
    let engine = chat_fuzz::engine();
    let app = router(engine.clone(), WsOptions::default());
    let response = chat_fuzz::runtime().block_on(async {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            tower_service_call(app.clone(), request)
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder.max_buf_size(MAX_HEADER_BYTES);
        let connection = builder.serve_connection(TokioIo::new(server), service).with_upgrades();
        let http = tokio::spawn(connection);
        client.write_all(data).await.expect("the pipe holds the input");
        client.shutdown().await.expect("shutdown");
        let mut response = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut response))
            .await
            .expect("the server closes the connection")
            .expect("read");
        let _ = http.await.expect("the connection's task does not panic");
        response
    });
    chat_fuzz::assert_idle(engine);
    if response.is_empty() {
        return; // no request was complete
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut parsed = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(head)) = parsed.parse(&response) else {
        panic!("not an HTTP response: {:?}", String::from_utf8_lossy(&response));
    };
    let code = parsed.code.expect("a status");
    assert!((100..600).contains(&code));
    if code != 101 {
        return;
    }
    // A 101: check it against the request (as httparse reads it: hyper does too).
    let accept = header(parsed.headers, "sec-websocket-accept");
    let mut req_headers = [httparse::EMPTY_HEADER; 128];
    let mut request = httparse::Request::new(&mut req_headers);
    let Ok(httparse::Status::Complete(_)) = request.parse(data) else { panic!("101 for an incomplete request") };
    assert_eq!(request.method, Some("GET"));
    assert_eq!(request.version, Some(1));
    assert_eq!(header(request.headers, "sec-websocket-version"), [b"13"]);
    let key = header(request.headers, "sec-websocket-key");
    assert_eq!(key.len(), 1);
    assert_eq!(key[0].len(), 24);
    assert_eq!(accept, [derive_accept_key(key[0]).as_bytes()]);
    let texts = chat_fuzz::check_ws_output(&response[head..]);
    chat_fuzz::check_session(texts.iter().map(Vec::as_slice));
});

/// Calls the router as `WsServer` does (a `Router` is always ready).
fn tower_service_call(
    mut app: axum::Router,
    request: hyper::Request<Incoming>,
) -> <axum::Router as tower_service::Service<hyper::Request<Incoming>>>::Future {
    tower_service::Service::call(&mut app, request)
}
