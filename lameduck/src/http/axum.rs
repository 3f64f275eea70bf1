//! Serve an axum [`Router`] with the lifecycle.
//!
//! An axum `Router` is a tower service, so [`Server::serve`] takes it as it
//! is; this module adds what handlers need:
//!
//! - [`ShutdownSignal`] as an extractor, so SSE, long-poll and WebSocket
//!   handlers can finish cleanly when the server stops;
//! - [`health_router`]: `/readyz` and `/livez` to merge into your router;
//! - [`going_away`]: close a WebSocket with 1001 "going away" and wait for
//!   the client's Close, the whole handshake bounded;
//! - [`serve`]: the shape of `axum::serve`, configured by value and
//!   awaited, as a named vital task of the lifecycle;
//! - `ConnectInfo<SocketAddr>` for handlers ([`Serve::with_connect_info`]).
//!
//! ```no_run
//! use axum::{routing::get, Router};
//! use lameduck::http::{axum::health_router, Readiness};
//!
//! # #[tokio::main] async fn main() -> Result<std::process::ExitCode, lameduck::Error> {
//! let lifecycle = lameduck::Lifecycle::builder().build()?;
//! let readiness = Readiness::new(lifecycle.handle());
//! let app = Router::new()
//!     .route("/", get(|| async { "hello\n" }))
//!     .merge(health_router(readiness));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await.unwrap();
//! // Resolves after SIGTERM, once every connection has drained.
//! lameduck::http::axum::serve(&lifecycle.handle(), listener, app).await?;
//! let report = lifecycle.await; // already logged; keep it for the exit code
//! Ok(report.process_exit_code())
//! # }
//! ```

use std::time::Duration;

use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

use super::{Listener, Readiness, Serve, Server, ShutdownSignal};
use crate::lifecycle::Handle;

impl<S: Send + Sync> FromRequestParts<S> for ShutdownSignal {
    type Rejection = (StatusCode, &'static str);

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        ShutdownSignal::current()
            .or_else(|| parts.extensions.get::<ShutdownSignal>().cloned())
            .ok_or((
                StatusCode::INTERNAL_SERVER_ERROR,
                "ShutdownSignal is only available when served by lameduck::http::Server",
            ))
    }
}

/// `/readyz` (200 until draining, then 503) and `/livez` (200), to merge
/// into an application's router.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let lifecycle = lameduck::Lifecycle::builder().signals(lameduck::Signals::none()).build().unwrap();
/// let readiness = lameduck::http::Readiness::new(lifecycle.handle());
/// let app: axum::Router = axum::Router::new().merge(lameduck::http::axum::health_router(readiness));
/// # }
/// ```
pub fn health_router<S: Clone + Send + Sync + 'static>(readiness: Readiness) -> Router<S> {
    let live = readiness.clone();
    Router::new()
        .route(
            "/readyz",
            get(move || {
                let readiness = readiness.clone();
                async move { readiness.readyz() }
            }),
        )
        .route(
            "/livez",
            get(move || {
                let live = live.clone();
                async move { live.livez() }
            }),
        )
}

/// Serve `router` (a `Router` with its state applied, as `axum::serve`
/// takes it) on `listener` (a [`Listener`], or tokio's `TcpListener` or
/// `UnixListener`) as the lifecycle's vital task `http`: accepting stops
/// when the lifecycle stops, and the drain waits for every connection.
///
/// Configure the returned [`Serve`] by value, then await it: it resolves
/// once the shutdown is over, with the server's error if it had one. Or
/// [`spawn`](Serve::spawn) it and await the lifecycle.
///
/// ```no_run
/// use axum::{extract::State, routing::get, Router};
///
/// # #[tokio::main] async fn main() -> Result<(), lameduck::Error> {
/// let lifecycle = lameduck::Lifecycle::builder().build()?;
/// let app = Router::new()
///     .route("/", get(|State(greeting): State<&'static str>| async move { greeting }))
///     .with_state("hello\n");
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await.unwrap();
/// lameduck::http::axum::serve(&lifecycle.handle(), listener, app)
///     .name("api")
///     .await?;
/// # Ok(()) }
/// ```
pub fn serve(handle: &Handle, listener: impl Into<Listener>, router: Router) -> Serve<Router> {
    let server = Server::new(handle.clone()).listener(listener);
    Serve::new(server, router, "http")
}

/// Close `socket` with code 1001 ("going away") and `reason`, then wait
/// for the client's Close frame, discarding other messages; the whole
/// closing handshake (sending the Close included) is bounded by `wait`.
///
/// Returns `true` when the client answered with its own Close within
/// `wait` (a clean closing handshake; the client sees 1001, not 1006), and
/// `false` when it did not, when the socket failed, or when the Close could
/// not even be sent in time (a peer that never reads leaves the socket's
/// buffers full). Either way it returns within `wait`: drop the socket
/// then, and the connection is closed.
///
/// ```no_run
/// use axum::extract::ws::{WebSocket, Message};
/// use lameduck::http::ShutdownSignal;
///
/// async fn echo(mut socket: WebSocket, signal: ShutdownSignal) {
///     loop {
///         tokio::select! {
///             _ = signal.stopping() => {
///                 lameduck::http::axum::going_away(&mut socket, "server restarting", std::time::Duration::from_secs(1)).await;
///                 return;
///             }
///             msg = socket.recv() => match msg {
///                 Some(Ok(Message::Text(t))) => { let _ = socket.send(Message::Text(t)).await; }
///                 Some(Ok(_)) => {}
///                 _ => return,
///             },
///         }
///     }
/// }
/// ```
///
/// # Cancellation safety
///
/// Not cancellation safe in the sense that a Close frame may be half
/// written when the bound (or the caller) gives up; the socket is then
/// only good for dropping.
pub async fn going_away(socket: &mut WebSocket, reason: &str, wait: Duration) -> bool {
    let frame = CloseFrame {
        code: close_code::AWAY,
        reason: reason.into(),
    };
    let handshake = async {
        if socket.send(Message::Close(Some(frame))).await.is_err() {
            return false;
        }
        while let Some(msg) = socket.recv().await {
            match msg {
                Ok(Message::Close(_)) => return true,
                Ok(_) => continue,
                Err(_) => return false,
            }
        }
        false
    };
    tokio::time::timeout(wait, handshake).await.unwrap_or(false)
}
