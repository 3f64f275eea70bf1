//! Peer for the benchmarks: the same hello service as `lameduck-peer`, on
//! bare hyper-util (auto builder, HTTP/1.1 + h2c), with hyper-util's own
//! `GracefulShutdown` on SIGTERM. No tracking of any kind: the baseline.
//!
//! `[ADDR] [--tls CERT,KEY]`: with `--tls`, over bare tokio-rustls, set up
//! as lameduck's `TlsConfig` is: rustls 0.23 with the *ring* provider, its
//! safe default protocol versions (TLS 1.3 and 1.2), ALPN `h2` and
//! `http/1.1`, stateless session tickets (rustls' ring `Ticketer`:
//! ChaCha20-Poly1305, keys rotated every 6 hours, tickets valid 12 hours,
//! as lameduck's own ticketer) and rustls' default session-ID cache. The
//! handshake runs in each connection's task, not in the accept loop. On
//! exit it prints how many handshakes were full and how many resumed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::HandshakeKind;

#[path = "../peer_service.rs"]
mod peer_service;
use peer_service::hello;

#[path = "../peer_args.rs"]
mod peer_args;

/// Completed TLS handshakes: full, resumed.
#[derive(Default)]
struct Handshakes {
    full: AtomicU64,
    resumed: AtomicU64,
}

fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<rustls::ServerConfig> {
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("{}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| format!("{}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    Ok(config)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = peer_args::parse()?;
    let acceptor = match &args.tls {
        Some((cert, key)) => Some(tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(
            cert, key,
        )?))),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(&args.addr).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    eprintln!(
        "hyper peer: ready, listening on {}://{}",
        if acceptor.is_some() { "https" } else { "http" },
        listener.local_addr()?
    );
    // Shared by the connections' tasks, as lameduck shares its builder.
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    let graceful = GracefulShutdown::new();
    let handshakes = Arc::new(Handshakes::default());
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let Some(acceptor) = &acceptor else {
                    let conn = builder.serve_connection_with_upgrades(
                        TokioIo::new(stream),
                        hyper::service::service_fn(hello),
                    );
                    let conn = graceful.watch(conn.into_owned());
                    tokio::spawn(conn);
                    continue;
                };
                let (acceptor, builder, watcher, handshakes) = (
                    acceptor.clone(),
                    Arc::clone(&builder),
                    graceful.watcher(),
                    Arc::clone(&handshakes),
                );
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else { return };
                    let counter = match tls.get_ref().1.handshake_kind() {
                        Some(HandshakeKind::Resumed) => &handshakes.resumed,
                        _ => &handshakes.full,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    let conn = builder.serve_connection_with_upgrades(
                        TokioIo::new(tls),
                        hyper::service::service_fn(hello),
                    );
                    let _ = watcher.watch(conn.into_owned()).await;
                });
            }
            _ = term.recv() => break,
        }
    }
    drop(listener);
    graceful.shutdown().await;
    if acceptor.is_some() {
        eprintln!(
            "hyper peer: TLS handshakes: {} full, {} resumed",
            handshakes.full.load(Ordering::Relaxed),
            handshakes.resumed.load(Ordering::Relaxed)
        );
    }
    Ok(())
}
