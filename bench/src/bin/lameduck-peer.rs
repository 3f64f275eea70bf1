//! Peer for the benchmarks: the same hello service as `hyper-peer`, served
//! by `lameduck::http::Server` with a lifecycle (tracking, drain, report).
//! `[ADDR] [--tls CERT,KEY]`: with `--tls`, over lameduck's own TLS
//! (`TlsConfig::from_pem_files`, `Server::tls`). For diagnosis only, the
//! environment variable `LAMEDUCK_PEER_LINGER_MS` sets `Server::linger`
//! (the benchmarks leave lameduck's default).

use std::process::ExitCode;

use lameduck::http::tls::TlsConfig;
use lameduck::http::{Listener, Server};
use lameduck::Lifecycle;

#[path = "../peer_service.rs"]
mod peer_service;
use peer_service::hello;

#[path = "../peer_args.rs"]
mod peer_args;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let args = peer_args::parse()?;
    let lifecycle = Lifecycle::builder().progress_interval(None).build()?;
    let listener = Listener::bind(args.addr).await?;
    let local = listener.local_addr();
    let mut server = Server::new(lifecycle.handle()).listener(listener);
    if let Some(ms) = std::env::var("LAMEDUCK_PEER_LINGER_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        server = server.linger(std::time::Duration::from_millis(ms));
    }
    let scheme = match &args.tls {
        Some((cert, key)) => {
            server = server.tls(TlsConfig::from_pem_files(cert, key)?);
            "https"
        }
        None => "http",
    };
    let server = server.serve(tower::service_fn(hello));
    lifecycle.handle().spawn_vital("http", |_| server);
    eprintln!(
        "lameduck peer: ready, listening on {scheme}://{}",
        local.map(|a| a.to_string()).unwrap_or_default()
    );
    let report = lifecycle.await;
    Ok(report.process_exit_code())
}
