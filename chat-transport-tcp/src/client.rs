//! The client side: open a TCP (or TLS) connection and hand it, framed, to the core's generic
//! [`Client`], which holds all of the client's protocol logic (hello, request ids, pings).
//! Every failure is the core's [`ClientError`], as over any transport: one that happens before
//! the `chat/1` session starts (no route, refused, TLS) is [`ClientError::Connect`].
//! The terminal client, the load generator and the tests connect through here.

use std::io;

use bytes::Bytes;
use chat_core::client::{Client, ClientError};
use chat_core::Inbound;
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, ToSocketAddrs};

use crate::codec::{FrameReader, FrameWriter};

/// The largest frame a client accepts from a server. Server frames are not bounded by the
/// server's `max_frame` (a `history` page of 100 large messages exceeds it), so this is only a
/// guard against a broken server.
pub const CLIENT_MAX_FRAME: usize = 64 << 20;

/// Connects to a `chat/1` server over plain TCP, sends `hello` with `user` and/or `token`, and
/// returns the session once `welcome` arrived.
///
/// A refused `hello` (`unauthorized`, ...) is a [`ClientError::Server`] whose
/// [`code`](ClientError::code) is the server's error code; a connection that cannot be opened
/// is [`ClientError::Connect`].
pub async fn connect(addr: impl ToSocketAddrs, user: Option<&str>, token: Option<&str>) -> Result<Client, ClientError> {
    let stream = TcpStream::connect(addr).await.map_err(cannot)?;
    stream.set_nodelay(true).map_err(cannot)?;
    let (reader, writer) = stream.into_split();
    start(reader, writer, user, token).await
}

/// Like [`connect`], over any byte stream already open to a server (a TLS stream, a Unix
/// socket, an in-memory pipe...).
pub async fn connect_io<IO>(io: IO, user: Option<&str>, token: Option<&str>) -> Result<Client, ClientError>
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (reader, writer) = tokio::io::split(io);
    start(reader, writer, user, token).await
}

/// Like [`connect`], over TLS: `server_name` is checked against the server's certificate, and
/// `config` says which certificates to trust (see
/// [`client_config_from_ca_pem`](crate::client_config_from_ca_pem)).
#[cfg(feature = "tls")]
pub async fn connect_tls(
    addr: impl ToSocketAddrs,
    server_name: &str,
    config: std::sync::Arc<tokio_rustls::rustls::ClientConfig>,
    user: Option<&str>,
    token: Option<&str>,
) -> Result<Client, ClientError> {
    let name = rustls_pki_types::ServerName::try_from(server_name.to_owned())
        .map_err(|e| ClientError::Connect(format!("server name {server_name:?}: {e}")))?;
    let stream = TcpStream::connect(addr).await.map_err(cannot)?;
    stream.set_nodelay(true).map_err(cannot)?;
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(name, stream)
        .await
        .map_err(|e| ClientError::Connect(format!("tls: {e}")))?;
    connect_io(stream, user, token).await
}

async fn start<R, W>(reader: R, writer: W, user: Option<&str>, token: Option<&str>) -> Result<Client, ClientError>
where
    R: AsyncRead + Send + Unpin + 'static,
    W: AsyncWrite + Send + Unpin + 'static,
{
    let inbound = FrameReader::new(reader, CLIENT_MAX_FRAME).map(server_frame);
    Client::connect(inbound, FrameWriter::new(writer), user, token).await
}

/// A socket error before the session: [`ClientError::Connect`].
fn cannot(e: io::Error) -> ClientError {
    ClientError::Connect(e.to_string())
}

/// A server frame for the core's client; an oversized one ends the connection.
fn server_frame(item: io::Result<Inbound>) -> io::Result<Bytes> {
    match item? {
        Inbound::Frame(frame) => Ok(frame),
        _ => Err(io::Error::new(io::ErrorKind::InvalidData, "the server sent a frame over the client's limit")),
    }
}
