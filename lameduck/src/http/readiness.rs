//! Readiness and liveness for load balancers and orchestrators.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body_util::Full;

use crate::lifecycle::Handle;

/// Readiness ("send me traffic") and liveness ("do not kill me").
///
/// Readiness turns "not ready" (503) at the first moment of draining, while
/// the service still serves and listeners still accept, so load balancers
/// take the instance out before it stops accepting. It can also be held
/// "not ready" by the service itself (warming up, dependency down) with
/// [`set_ready`](Self::set_ready). Liveness stays 200 until the process
/// exits.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let lifecycle = lameduck::Lifecycle::builder().signals(lameduck::Signals::none()).build().unwrap();
/// let readiness = lameduck::http::Readiness::new(lifecycle.handle());
/// assert_eq!(readiness.readyz().status(), 200);
/// lifecycle.handle().shutdown("deploy");
/// assert_eq!(readiness.readyz().status(), 503);
/// assert_eq!(readiness.livez().status(), 200);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Readiness {
    handle: Handle,
    ready: Arc<AtomicBool>,
}

impl Readiness {
    /// Readiness for `handle`'s lifecycle; ready until it drains.
    pub fn new(handle: Handle) -> Self {
        Readiness {
            handle,
            ready: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Hold readiness down (`false`) or let it follow the lifecycle
    /// (`true`). Draining always wins.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Whether the service should receive new traffic.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.handle.is_draining()
    }

    /// A `/readyz` response: 200 `ready`, or 503 `draining` / `not ready`.
    pub fn readyz(&self) -> Response<Full<Bytes>> {
        if self.is_ready() {
            text(StatusCode::OK, "ready\n")
        } else if self.handle.is_draining() {
            text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
        } else {
            text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
        }
    }

    /// A `/livez` response: 200 `alive` until the process exits.
    pub fn livez(&self) -> Response<Full<Bytes>> {
        text(StatusCode::OK, "alive\n")
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
