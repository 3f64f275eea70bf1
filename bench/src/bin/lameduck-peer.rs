//! Peer for the benchmarks: the same hello service as `hyper-peer`, served
//! by `lameduck::http::Server` with a lifecycle (tracking, drain, report).

use std::process::ExitCode;

use lameduck::http::{Listener, Server};
use lameduck::Lifecycle;

#[path = "../peer_service.rs"]
mod peer_service;
use peer_service::hello;

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
