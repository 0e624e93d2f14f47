//! The axum entry points, for hosts that already run axum: [`router`] (the `/ws` endpoint as a
//! `Router` to merge) and [`handler`] (the route handler itself, with its [`WsState`]).
//!
//! The handler checks `Origin`, refuses new connections once the engine is shutting down, and
//! upgrades with the engine's `max_frame` as message limit, selecting the `chat.v1` subprotocol
//! when the client offers it (the handshake itself is in upgrade.rs, which
//! [`WsServer`](crate::WsServer) reaches through this handler too, and
//! [`router_with`](crate::router_with) with a handler of the host's own).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use chat_core::Engine;

use crate::options::WsOptions;
use crate::upgrade::accept;

/// What [`handler`] needs: the engine and the transport's options. Cheap to clone.
#[derive(Debug, Clone)]
pub struct WsState {
    engine: Engine,
    options: Arc<WsOptions>,
}

impl WsState {
    /// The state for `engine` with `options`.
    pub fn new(engine: Engine, options: WsOptions) -> Self {
        WsState { engine, options: Arc::new(options) }
    }

    /// The engine connections are handed to.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The transport's options.
    pub fn options(&self) -> &WsOptions {
        &self.options
    }
}

/// A `Router` serving the `chat/1` WebSocket endpoint at `options`' path (default `/ws`).
/// Merge it into the host's router, or nest it.
///
/// The peer address reaches the engine (for hooks and logs) when the router is served with
/// `into_make_service_with_connect_info::<SocketAddr>()`, as [`WsServer`](crate::WsServer) does.
///
/// ```
/// use axum::{routing::get, Router};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let engine = chat_core::Engine::builder().build().await.unwrap();
/// let app: Router = Router::new()
///     .route("/", get(|| async { "the browser page" }))
///     .merge(chat_transport_ws::router(engine, chat_transport_ws::WsOptions::default()));
/// # let _ = app;
/// # }
/// ```
pub fn router(engine: Engine, options: WsOptions) -> Router {
    let path = options.path.clone();
    Router::new().route(&path, get(handler)).with_state(WsState::new(engine, options))
}

/// The route handler: `Router::new().route("/ws", get(handler)).with_state(WsState::new(..))`.
///
/// Answers 403 when the request's `Origin` is not allowed, 503 once the engine is shutting
/// down or when the connection limits ([`WsOptions::connection_limits`]) are reached, the
/// usual 4xx when the request is not a WebSocket upgrade, and otherwise switches protocols and
/// hands the connection to [`Engine::serve`], with its place within the limits. The connection lives on the task
/// the upgrade spawns; no other task is added per connection.
pub async fn handler(State(state): State<WsState>, request: Request) -> Response {
    accept(&state.engine, &state.options, request)
}
