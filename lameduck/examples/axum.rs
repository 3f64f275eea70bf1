//! An axum service with a graceful end of life. `/` says hello, `/events`
//! streams server-sent events and sends a last `bye` event when the server
//! stops, `/ws` echoes WebSocket messages and closes with 1001 "going away",
//! and `/readyz` / `/livez` report readiness (503 from the first moment of
//! the shutdown) and liveness. On SIGTERM or Ctrl-C the service stays a lame
//! duck for one second, then stops accepting, drains, and exits with the
//! report's exit code; a second Ctrl-C forces it.
//!
//! Run it with `cargo run -p lameduck --example axum --features axum`, then
//! `curl -N http://127.0.0.1:3000/events` in another terminal and press
//! Ctrl-C in the first.

use std::convert::Infallible;
use std::process::ExitCode;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::sse::{Event, Sse};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use futures_util::Stream;
use lameduck::http::axum::{going_away, health_router};
use lameduck::http::{Listener, Readiness, ShutdownSignal};
use lameduck::Lifecycle;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    // SIGTERM / SIGINT start the shutdown; a second one forces it.
    let lifecycle = match Lifecycle::builder()
        .grace(Duration::from_secs(10))
        .drain_delay(Duration::from_secs(1))
        .build()
    {
        Ok(lifecycle) => lifecycle,
        Err(e) => {
            eprintln!("cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let handle = lifecycle.handle();

    let app = Router::new()
        .route("/", get(|| async { "hello\n" }))
        .route("/events", get(events))
        .route("/ws", get(ws))
        .merge(health_router(Readiness::new(handle.clone())));
    let listener = match Listener::bind("127.0.0.1:3000").await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("listening on http://127.0.0.1:3000 (Ctrl-C to stop)");
    // Resolves once the shutdown is over: every connection drained (or cut
    // at the deadline), the report logged (summary, stages, what was cut).
    let served = lameduck::http::axum::serve(&handle, listener, app)
        .name("web")
        .await;
    let report = lifecycle.await;
    if let Err(e) = served {
        eprintln!("{e}");
    }
    report.process_exit_code()
}

/// A tick every second until the server stops; then a last event, and the
/// end of the stream.
async fn events(signal: ShutdownSignal) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stream = futures_util::stream::unfold(Some(0u64), move |n| {
        let signal = signal.clone();
        async move {
            let n = n?;
            tokio::select! {
                _ = signal.stopping() => {
                    Some((Ok(Event::default().event("bye").data("server going away")), None))
                }
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    Some((Ok(Event::default().data(format!("tick {n}"))), Some(n + 1)))
                }
            }
        }
    });
    Sse::new(stream)
}

async fn ws(upgrade: WebSocketUpgrade, signal: ShutdownSignal) -> Response {
    upgrade.on_upgrade(move |socket| echo(socket, signal))
}

/// Echo text until the server stops; then close with 1001 and wait (up to
/// a second) for the client's Close.
async fn echo(mut socket: WebSocket, signal: ShutdownSignal) {
    loop {
        tokio::select! {
            _ = signal.stopping() => {
                going_away(&mut socket, "server restarting", Duration::from_secs(1)).await;
                return;
            }
            msg = socket.recv() => match msg {
                Some(Ok(Message::Text(text))) => {
                    if socket.send(Message::Text(text)).await.is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                _ => return,
            },
        }
    }
}
