//! Peer for the benchmarks: the same hello service as `hyper-peer`, served
//! by `lameduck::http::Server` with a lifecycle (tracking, drain, report).

use std::convert::Infallible;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use lameduck::http::{Listener, Server};
use lameduck::Lifecycle;

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
async fn main() -> anyhow::Result<ExitCode> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let lifecycle = Lifecycle::builder().progress_interval(None).build()?;
    let listener = Listener::bind(addr).await?;
    let local = listener.local_addr();
    let server = Server::new(lifecycle.handle())
        .listener(listener)
        .serve(tower::service_fn(hello));
    lifecycle.handle().spawn_vital("http", |_| server);
    eprintln!(
        "lameduck peer: ready, listening on http://{}",
        local.map(|a| a.to_string()).unwrap_or_default()
    );
    let report = lifecycle.await;
    Ok(report.process_exit_code())
}
