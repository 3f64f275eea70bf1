//! An axum service over HTTPS (HTTP/1.1 and HTTP/2 by ALPN) with a graceful
//! end of life. The certificate and key are read from PEM files; `SIGUSR1`
//! reads them again, for the next handshakes (a broken file is reported and
//! the certificate in use is kept). Handlers see the client's address.
//!
//! ```sh
//! openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
//!     -days 30 -subj /CN=localhost -addext subjectAltName=DNS:localhost \
//!     -keyout /tmp/key.pem -out /tmp/cert.pem
//! cargo run -p lameduck --example tls --features axum,tls -- /tmp/cert.pem /tmp/key.pem
//! curl --cacert /tmp/cert.pem https://localhost:8443/        # HTTP/2
//! curl --http1.1 --cacert /tmp/cert.pem https://localhost:8443/
//! kill -USR1 <pid>    # after replacing the files
//! ```

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::routing::get;
use axum::Router;
use lameduck::http::tls::TlsConfig;
use lameduck::Lifecycle;
use tokio::signal::unix::{signal, SignalKind};

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let mut args = std::env::args().skip(1);
    let (Some(cert), Some(key)) = (args.next(), args.next()) else {
        eprintln!("usage: tls CERT.pem KEY.pem [ADDR]");
        return ExitCode::from(2);
    };
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8443".into());

    // A missing, expired or mismatched pair is an error naming the file.
    let tls = match TlsConfig::from_pem_files(&cert, &key) {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("{}", chain(&e));
            return ExitCode::FAILURE;
        }
    };
    let lifecycle = match Lifecycle::builder().grace(Duration::from_secs(10)).build() {
        Ok(lifecycle) => lifecycle,
        Err(e) => {
            eprintln!("cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let handle = lifecycle.handle();

    // SIGUSR1: read the certificate again, keep the old one on error.
    let reload = tls.clone();
    let mut usr1 = match signal(SignalKind::user_defined1()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot install the SIGUSR1 handler: {e}");
            return ExitCode::FAILURE;
        }
    };
    tokio::spawn(async move {
        while usr1.recv().await.is_some() {
            match reload.reload() {
                Ok(()) => tracing::info!("certificate reloaded"),
                Err(e) => {
                    tracing::warn!(error = %chain(&e), "certificate not reloaded; the old one stays")
                }
            }
        }
    });

    let app = Router::new().route(
        "/",
        get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move {
            format!("hello {peer}, over TLS\n")
        }),
    );
    let listener = match tokio::net::TcpListener::bind(&addr).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("cannot bind {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("listening on https://{addr} (Ctrl-C to stop)");
    let served = lameduck::http::axum::serve(&handle, listener, app)
        .name("https")
        .with_connect_info()
        .configure(|server| server.tls(tls))
        .await;
    let report = lifecycle.await;
    if let Err(e) = served {
        eprintln!("{e}");
    }
    report.process_exit_code()
}

/// An error with its causes: `cannot use TLS cert.pem: no certificate in it`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
