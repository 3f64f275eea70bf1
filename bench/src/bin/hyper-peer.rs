//! Peer for the benchmarks: the same hello service as `lameduck-peer`, on
//! bare hyper-util (auto builder, HTTP/1.1 + h2c), with hyper-util's own
//! `GracefulShutdown` on SIGTERM. No tracking of any kind: the baseline.

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;

#[path = "../peer_service.rs"]
mod peer_service;
use peer_service::hello;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    eprintln!(
        "hyper peer: ready, listening on http://{}",
        listener.local_addr()?
    );
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let conn = builder.serve_connection_with_upgrades(
                    TokioIo::new(stream),
                    hyper::service::service_fn(hello),
                );
                let conn = graceful.watch(conn.into_owned());
                tokio::spawn(conn);
            }
            _ = term.recv() => break,
        }
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
