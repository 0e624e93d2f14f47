//! `autobahn-testee`: the WebSocket transport as an echo server, for the Autobahn|Testsuite's
//! `fuzzingclient` (`scripts/autobahn.sh` runs it; docs/autobahn.md has the results).
//!
//! ```text
//! cargo run --release --example autobahn-testee -- 127.0.0.1:9001
//! ```
//!
//! Every text and binary message is echoed back through the code that carries chat
//! connections: the upgrade, frame reader, writer and close handling of `chat-transport-ws`,
//! reached through `router_with` (the chat endpoint's `router` with a
//! [`ConnectionHandler`] that echoes instead of the engine). Only the message limit differs:
//! 32 MiB, above the suite's largest messages (16 MiB). The endpoint is `/`; permessage-deflate
//! is offered (cases 12 and 13) with its default settings.
//!
//! Once it accepts it prints one line on stdout, `listening ADDR` (port 0 picks a free port).

use std::io::{self, Write};

use anyhow::Context;
use chat_engine::core::ConnInfo;
use chat_engine::ws::{router_with, ConnectionHandler, DeflateOptions, Incoming, Message, WsOptions};
use futures::{Sink, SinkExt, Stream, StreamExt};

/// The largest message echoed: the suite sends up to 16 MiB (cases 9.1.6, 9.2.6).
const MAX_MESSAGE: usize = 32 << 20;

/// Echoes each message as it came (text as text, binary as binary).
#[derive(Clone)]
struct Echo;

impl ConnectionHandler for Echo {
    fn max_message(&self) -> usize {
        MAX_MESSAGE
    }

    async fn run<I, O>(&self, mut inbound: I, mut outbound: O, _conn: ConnInfo)
    where
        I: Stream<Item = io::Result<Incoming>> + Unpin + Send,
        O: Sink<Message, Error = io::Error> + Unpin + Send,
    {
        // An error (a frame no client may send) ends the loop; closing then sends the close
        // frame with the code the reader chose.
        while let Some(Ok(incoming)) = inbound.next().await {
            let reply = match incoming {
                Incoming::Text(text) => Message::Text(text),
                Incoming::Binary(data) => Message::Binary(data),
                Incoming::TooLarge => break,
                Incoming::Alive => continue,
            };
            if outbound.send(reply).await.is_err() {
                return;
            }
        }
        let _ = outbound.close().await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(io::stderr)
        .init();
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9001".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await.with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr()?;
    let app = router_with(Echo, WsOptions::default().path("/").deflate(DeflateOptions::default()));
    println!("listening {local}");
    io::stdout().flush()?;
    axum::serve(listener, app).await?;
    Ok(())
}
