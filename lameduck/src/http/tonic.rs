//! Serve tonic gRPC services with the lifecycle.
//!
//! tonic's [`Routes`] is a tower service, so [`Server::serve`] takes it as it
//! is (HTTP/2 by prior knowledge, h2c): on stopping, every connection gets
//! a two-phase GOAWAY and in-flight RPCs finish. This module adds:
//!
//! - [`health_reporter`]: the standard `grpc.health.v1.Health` service, whose
//!   statuses turn `NOT_SERVING` at the first moment of draining (so
//!   gRPC-aware load balancers and Kubernetes gRPC probes move away during
//!   the lame-duck period);
//! - [`serve`]: serve `Routes` on a listener as a vital task of the
//!   lifecycle.
//!
//! Streaming handlers observe the shutdown through the [`ShutdownSignal`]:
//! `ShutdownSignal::current()` inside the handler, moved into the stream.
//! A stream that ignores it is cut at the deadline and named in the report.
//!
//! ```no_run
//! use lameduck::http::{tonic::health_reporter, Listener};
//!
//! # #[tokio::main] async fn main() -> Result<(), lameduck::Error> {
//! let lifecycle = lameduck::Lifecycle::builder().build()?;
//! let (_reporter, health) = health_reporter(&lifecycle.handle(), &["my.package.MyService"]);
//! let routes = tonic::service::Routes::new(health);
//! lameduck::http::tonic::serve(&lifecycle.handle(), Listener::bind("127.0.0.1:50051").await?, routes)
//!     .await?; // resolves after SIGTERM, once every RPC has drained
//! # Ok(()) }
//! ```
//!
//! [`ShutdownSignal`]: super::ShutdownSignal

use tonic::service::Routes;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use super::{Listener, Serve, Server};
use crate::lifecycle::Handle;

/// The `grpc.health.v1.Health` service for the overall server (`""`) and
/// each of `services`: `SERVING` now, `NOT_SERVING` from the first moment of
/// draining.
///
/// The returned [`HealthReporter`] can still change statuses (for example
/// while warming up); draining sets them all to `NOT_SERVING` regardless.
/// Must be called inside a tokio runtime.
pub fn health_reporter(
    handle: &Handle,
    services: &[&str],
) -> (HealthReporter, HealthServer<impl Health>) {
    let (reporter, server) = tonic_health::server::health_reporter();
    let names: Vec<String> = std::iter::once(String::new())
        .chain(services.iter().map(|s| (*s).to_owned()))
        .collect();
    let watcher = reporter.clone();
    let handle = handle.clone();
    // Not a lifecycle task: it must not hold the drain, and it ends by
    // itself right after draining starts.
    tokio::spawn(async move {
        for name in &names {
            watcher
                .set_service_status(name, ServingStatus::Serving)
                .await;
        }
        handle.draining().await;
        for name in &names {
            watcher
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
        tracing::info!(target: "lameduck", "grpc health set to NOT_SERVING");
    });
    (reporter, server)
}

/// Serve `routes` on `listener` as the lifecycle's vital task `grpc`:
/// configure the returned [`Serve`] by value, then await it (it resolves
/// once the shutdown is over) or [`spawn`](Serve::spawn) it.
///
/// ```no_run
/// # #[tokio::main] async fn main() -> Result<(), lameduck::Error> {
/// let lifecycle = lameduck::Lifecycle::builder().build()?;
/// let (_reporter, health) = lameduck::http::tonic::health_reporter(&lifecycle.handle(), &[]);
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:50051").await.unwrap();
/// lameduck::http::tonic::serve(&lifecycle.handle(), listener, tonic::service::Routes::new(health))
///     .configure(|s| s.http2_max_concurrent_streams(100))
///     .await?;
/// # Ok(()) }
/// ```
pub fn serve(handle: &Handle, listener: impl Into<Listener>, routes: Routes) -> Serve<Routes> {
    let server = Server::new(handle.clone()).listener(listener);
    Serve::new(server, routes, "grpc")
}
