//! What runs on an upgraded connection: the seam between this crate's WebSocket (upgrade,
//! frame reader, writer, close handling) and what the messages are for.
//!
//! [`ConnectionHandler`] is that seam. The chat engine is one implementation ([`Engine`]:
//! every connection of [`router`](crate::router), [`handler`](crate::handler) and
//! [`WsServer`](crate::WsServer) is handed to [`Engine::serve`]); a host may write another,
//! served by [`router_with`], with the same upgrade and the same frames. The Autobahn testee
//! (`examples/autobahn-testee.rs`) is one: it echoes, so that the suite tests the very code
//! that carries chat connections.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use chat_core::{ConnInfo, Engine, Inbound};
use futures::{Sink, Stream, StreamExt};

use crate::options::WsOptions;
use crate::upgrade::accept;

/// What the frame reader delivers: a whole message (fragments reassembled) or an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A text message; its bytes are UTF-8 (checked as its frames arrive: the connection is
    /// closed with 1007 at the first frame that is not).
    Text(Bytes),
    /// A binary message.
    Binary(Bytes),
    /// A message over [`ConnectionHandler::max_message`], refused from its first frame's
    /// header, before its payload is read. Nothing more is read: the stream ends after it and
    /// the connection closes with 1009.
    TooLarge,
    /// A ping (already answered with a pong) or a pong: the peer is alive.
    Alive,
}

/// A message for the writer: one whole, unfragmented frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message. Its bytes must be UTF-8: the writer does not check them again (the
    /// chat engine's frames, and text the reader delivered, are).
    Text(Bytes),
    /// A binary message.
    Binary(Bytes),
}

/// What runs on each upgraded connection: it reads [`Incoming`] items and writes
/// [`Message`]s, and the crate does the rest (the upgrade, frames, pings, the close
/// handshake).
///
/// `run` gets the connection's two halves. When the inbound stream yields an error (a frame
/// no client may send, text that is not UTF-8) or ends (the peer closed), the handler should
/// end by closing the outbound sink: closing sends the close frame with the right code (the
/// peer's own, 1002, 1007, 1009, or 1000 when the handler ends on its own) and the
/// connection is then closed.
///
/// An echo server, served by [`router_with`] with axum:
///
/// ```
/// use std::io;
///
/// use chat_transport_ws::{router_with, ConnectionHandler, Incoming, Message, WsOptions};
/// use futures::{Sink, SinkExt, Stream, StreamExt};
/// use tokio_tungstenite::tungstenite;
///
/// #[derive(Clone)]
/// struct Echo;
///
/// impl ConnectionHandler for Echo {
///     fn max_message(&self) -> usize {
///         1 << 20
///     }
///
///     async fn run<I, O>(&self, mut inbound: I, mut outbound: O, _conn: chat_core::ConnInfo)
///     where
///         I: Stream<Item = io::Result<Incoming>> + Unpin + Send,
///         O: Sink<Message, Error = io::Error> + Unpin + Send,
///     {
///         while let Some(Ok(incoming)) = inbound.next().await {
///             let reply = match incoming {
///                 Incoming::Text(text) => Message::Text(text),
///                 Incoming::Binary(data) => Message::Binary(data),
///                 Incoming::TooLarge => break,
///                 Incoming::Alive => continue,
///             };
///             if outbound.send(reply).await.is_err() {
///                 return;
///             }
///         }
///         let _ = outbound.close().await;
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
/// let url = format!("ws://{}/ws", listener.local_addr().unwrap());
/// tokio::spawn(async move { axum::serve(listener, router_with(Echo, WsOptions::default())).await });
///
/// let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
/// ws.send(tungstenite::Message::text("hello")).await.unwrap();
/// assert_eq!(ws.next().await.unwrap().unwrap(), tungstenite::Message::text("hello"));
/// ws.send(tungstenite::Message::binary(vec![0xff, 0])).await.unwrap();
/// assert_eq!(ws.next().await.unwrap().unwrap(), tungstenite::Message::binary(vec![0xff, 0]));
/// # }
/// ```
pub trait ConnectionHandler: Clone + Send + Sync + 'static {
    /// The largest message accepted, in bytes (fragments together); a longer one is
    /// [`Incoming::TooLarge`]. The engine's is its `max_frame`.
    fn max_message(&self) -> usize;

    /// Whether upgrades are accepted; `false` answers them 503 (the engine: once its shutdown
    /// began). Default: always.
    fn accepting(&self) -> bool {
        true
    }

    /// Runs one connection to its end (see the trait's documentation).
    fn run<I, O>(&self, inbound: I, outbound: O, conn: ConnInfo) -> impl Future<Output = ()> + Send
    where
        I: Stream<Item = io::Result<Incoming>> + Unpin + Send,
        O: Sink<Message, Error = io::Error> + Unpin + Send;
}

/// The chat engine: each connection is a `chat/1` session ([`Engine::serve`]); text messages
/// are its frames, binary messages `bad_frame`.
impl ConnectionHandler for Engine {
    fn max_message(&self) -> usize {
        self.config().max_frame
    }

    fn accepting(&self) -> bool {
        !self.is_shutting_down()
    }

    fn run<I, O>(&self, inbound: I, outbound: O, conn: ConnInfo) -> impl Future<Output = ()> + Send
    where
        I: Stream<Item = io::Result<Incoming>> + Unpin + Send,
        O: Sink<Message, Error = io::Error> + Unpin + Send,
    {
        let inbound = inbound.map(|item| {
            item.map(|incoming| match incoming {
                Incoming::Text(frame) => Inbound::Frame(frame),
                Incoming::Binary(_) => Inbound::Binary,
                Incoming::TooLarge => Inbound::TooLarge,
                Incoming::Alive => Inbound::Alive,
            })
        });
        self.serve(inbound, TextFrames(outbound), conn)
    }
}

/// The engine's frames (`Bytes` of UTF-8 JSON) as text messages.
struct TextFrames<O>(O);

impl<O: Sink<Message> + Unpin> Sink<Bytes> for TextFrames<O> {
    type Error = O::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.0).poll_ready(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, frame: Bytes) -> Result<(), Self::Error> {
        Pin::new(&mut self.0).start_send(Message::Text(frame))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.0).poll_close(cx)
    }
}

/// A `Router` serving WebSocket upgrades at `options`' path (default `/ws`), each connection
/// run by `handler`: [`router`](crate::router) with a handler of the host's own (see
/// [`ConnectionHandler`] for an example). The options apply as for the chat endpoint (allowed
/// origins, write buffer, connection limits).
pub fn router_with<H: ConnectionHandler>(handler: H, options: WsOptions) -> Router {
    let path = options.path.clone();
    let endpoint = Endpoint { handler, options: Arc::new(options) };
    Router::new().route(&path, get(upgrade::<H>)).with_state(endpoint)
}

/// The state of [`router_with`]'s route.
struct Endpoint<H> {
    handler: H,
    options: Arc<WsOptions>,
}

impl<H: Clone> Clone for Endpoint<H> {
    fn clone(&self) -> Self {
        Endpoint { handler: self.handler.clone(), options: self.options.clone() }
    }
}

async fn upgrade<H: ConnectionHandler>(State(endpoint): State<Endpoint<H>>, request: Request) -> Response {
    accept(&endpoint.handler, &endpoint.options, request)
}
