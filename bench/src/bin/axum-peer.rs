//! Peer for the benchmarks: `axum::serve(..).with_graceful_shutdown` on
//! SIGTERM, the way axum's own example does it.

use std::time::Duration;

use axum::extract::Query;
use axum::routing::get;
use axum::Router;

#[derive(serde::Deserialize)]
struct Slow {
    ms: Option<u64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let app = Router::new()
        .route("/", get(|| async { "hello from axum\n" }))
        .route(
            "/slow",
            get(|Query(s): Query<Slow>| async move {
                let ms = s.ms.unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                format!("slept {ms} ms\n")
            }),
        );
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!(
        "axum peer: ready, listening on http://{}",
        listener.local_addr()?
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            term.recv().await;
        })
        .await?;
    Ok(())
}
