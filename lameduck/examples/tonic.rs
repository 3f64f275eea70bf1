//! A tonic gRPC server with a graceful end of life. It serves the standard
//! `grpc.health.v1.Health` service for the whole server (`""`) and for
//! `lameduck.example.Demo`; on SIGTERM or Ctrl-C both turn `NOT_SERVING` at
//! once (so gRPC-aware load balancers and Kubernetes gRPC probes move
//! away), the server stays a lame duck for two seconds, then every HTTP/2
//! connection gets a two-phase GOAWAY, in-flight RPCs finish, and the
//! process exits with the report's exit code. A second Ctrl-C forces it.
//! Add your own services to the `Routes` with `add_service`.
//!
//! Run it with `cargo run -p lameduck --example tonic --features tonic`, then
//! watch the health with
//! `grpcurl -plaintext -d '{"service":"lameduck.example.Demo"}' 127.0.0.1:50051 grpc.health.v1.Health/Watch`
//! and press Ctrl-C in the server.

use std::process::ExitCode;
use std::time::Duration;

use lameduck::http::tonic::health_reporter;
use lameduck::http::Listener;
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
        .drain_delay(Duration::from_secs(2))
        .build()
    {
        Ok(lifecycle) => lifecycle,
        Err(e) => {
            eprintln!("cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let handle = lifecycle.handle();

    let (_reporter, health) = health_reporter(&handle, &["lameduck.example.Demo"]);
    let routes = tonic::service::Routes::new(health);
    let listener = match Listener::bind("127.0.0.1:50051").await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("gRPC (h2c) on 127.0.0.1:50051 (Ctrl-C to stop)");
    // Resolves once the shutdown is over; the lifecycle logs the report
    // (summary, stages, what was cut) and the exit code follows from it.
    let served = lameduck::http::tonic::serve(&handle, listener, routes).await;
    let report = lifecycle.await;
    if let Err(e) = served {
        eprintln!("{e}");
    }
    report.process_exit_code()
}
