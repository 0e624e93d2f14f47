//! The Rust client over WebSocket: [`connect`] (and [`connect_tls`]) open the socket with
//! tokio-tungstenite, offering the `chat.v1` subprotocol, and hand it to the core's
//! [`Client`], which holds all of the client's protocol logic. Every failure is the core's
//! [`ClientError`], as over any transport: an unusable URL, an unreachable server or a failed
//! TLS or WebSocket handshake is [`ClientError::Connect`], an upgrade answered with an HTTP
//! error is [`ClientError::Rejected`].

use bytes::Bytes;
use chat_core::client::{Client, ClientError};
use futures::future::ready;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::{header, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::options::SUBPROTOCOL;

/// The client's WebSocket settings: small buffers (a load generator opens thousands of
/// connections), but no tighter message limit than tungstenite's, since the server decides.
fn config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(4096).max_write_buffer_size(64 << 20)
}

/// The upgrade request for `url`, offering `chat.v1`.
fn request(url: &str) -> Result<Request, ClientError> {
    let mut request = url.into_client_request().map_err(|e| ClientError::Connect(format!("{url}: {e}")))?;
    request.headers_mut().insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(SUBPROTOCOL));
    Ok(request)
}

/// Connects to a `chat/1` WebSocket endpoint (`ws://host:port/ws`), says `hello` with `user`
/// and/or `token`, and returns the client once `welcome` arrived.
///
/// For `wss://` use [`connect_tls`] (feature `tls`), which takes the trusted roots.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// # let engine = chat_core::Engine::builder().build().await.unwrap();
/// # let server = chat_transport_ws::WsServer::bind("127.0.0.1:0", engine.clone(), Default::default()).await.unwrap();
/// # let addr = server.local_addr();
/// # tokio::spawn(server.run());
/// let alice = chat_transport_ws::connect(&format!("ws://{addr}/ws"), Some("alice"), None).await.unwrap();
/// assert_eq!(alice.welcome().user, "alice");
/// # engine.shutdown().await;
/// # }
/// ```
pub async fn connect(url: &str, user: Option<&str>, token: Option<&str>) -> Result<Client, ClientError> {
    let request = request(url)?;
    if request.uri().scheme_str() != Some("ws") {
        return Err(ClientError::Connect(format!("{url}: only ws:// here; wss:// goes through connect_tls")));
    }
    let (socket, _response) =
        tokio_tungstenite::connect_async_with_config(request, Some(config()), true).await.map_err(upgrade_failed)?;
    wrap(socket, user, token).await
}

/// Connects over TLS (`wss://host:port/ws`) trusting what `tls` trusts (see
/// [`tls::client_config`](crate::tls::client_config)), then as [`connect`].
#[cfg(feature = "tls")]
pub async fn connect_tls(
    url: &str,
    user: Option<&str>,
    token: Option<&str>,
    tls: std::sync::Arc<tokio_rustls::rustls::ClientConfig>,
) -> Result<Client, ClientError> {
    use tokio_rustls::rustls::pki_types::ServerName;

    let request = request(url)?;
    let uri = request.uri();
    if uri.scheme_str() != Some("wss") {
        return Err(ClientError::Connect(format!("{url}: connect_tls needs a wss:// URL")));
    }
    let host = uri.host().ok_or_else(|| ClientError::Connect(format!("{url}: no host")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let cannot = |e: std::io::Error| ClientError::Connect(e.to_string());
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(cannot)?;
    tcp.set_nodelay(true).map_err(cannot)?;
    let name = ServerName::try_from(host).map_err(|e| ClientError::Connect(format!("tls: {e}")))?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| ClientError::Connect(format!("tls: {e}")))?;
    let (socket, _response) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(config())).await.map_err(upgrade_failed)?;
    wrap(socket, user, token).await
}

/// Hands an open WebSocket to the core's client: text messages are its frames (zero-copy);
/// pings are answered by tungstenite as the stream is read; a close ends the stream.
async fn wrap<S>(socket: WebSocketStream<S>, user: Option<&str>, token: Option<&str>) -> Result<Client, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sink, stream) = socket.split();
    let inbound = stream.filter_map(|message| {
        ready(match message {
            Ok(Message::Text(text)) => Some(Ok(Bytes::from(text))),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        })
    });
    // The core's client writes JSON it encoded, or raw test frames: validated, never copied.
    let outbound = sink
        .with(|frame: Bytes| ready(Utf8Bytes::try_from(frame).map(Message::Text).map_err(tungstenite::Error::from)));
    Client::connect(inbound, outbound, user, token).await
}

/// A failed WebSocket opening: an HTTP answer other than 101 is [`ClientError::Rejected`].
fn upgrade_failed(e: tungstenite::Error) -> ClientError {
    match e {
        tungstenite::Error::Http(response) => ClientError::Rejected(response.status().as_u16()),
        e => ClientError::Connect(format!("websocket: {e}")),
    }
}
