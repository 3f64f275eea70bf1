//! Peer for the benchmarks: the same hello service as `lameduck-peer`, on
//! bare hyper-util (auto builder, HTTP/1.1 + h2c), with hyper-util's own
//! `GracefulShutdown` on SIGTERM. No tracking of any kind: the baseline.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;

async fn hello(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/slow" {
        let ms: u64 = req
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("ms="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        return Ok(Response::new(Full::new(Bytes::from(format!(
            "slept {ms} ms\n"
        )))));
    }
    Ok(Response::new(Full::new(Bytes::from_static(b"hello\n"))))
}

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
