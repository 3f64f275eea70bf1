//! The per-connection hyper service that wraps the user's tower service:
//! tracks each request on the connection, gives handlers the shutdown
//! signal, adds `Connection: close` while draining, and turns a handler's
//! panic or error into a 500.

use std::cell::Cell;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use http::HeaderMap;
use http::{Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;

use super::conn::ConnShared;
use super::{Peer, ShutdownSignal};
use crate::task::panic_message;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

thread_local! {
    /// The connection whose handler is being polled on this thread, for
    /// [`ShutdownSignal::current`]: set around each poll of a request's
    /// future, like a task-local. Not a request extension: inserting one
    /// costs three allocations on every request. Not tokio's
    /// `task_local!`: its future wrapper moves the handler's response
    /// through one more layer on every request (measured: about 130
    /// instructions a request, a tenth of what lameduck adds to hyper).
    ///
    /// It holds the connection (a per-connection `Arc`), not the signal
    /// itself: cloning the signal touches the lifecycle's reference count,
    /// a cache line every core would fight over on every request. The
    /// `Arc` is moved in and out, never cloned: no atomic operation.
    static CONN: Cell<Option<Arc<ConnShared>>> = const { Cell::new(None) };
}

/// The shutdown signal of the handler being polled on this thread.
pub(crate) fn current_signal() -> Option<ShutdownSignal> {
    CONN.try_with(|slot| {
        let conn = slot.take();
        let signal = conn.as_ref().map(|c| c.signal().clone());
        slot.set(conn);
        signal
    })
    .ok()
    .flatten()
}

/// Puts a connection in [`CONN`] until dropped, then hands it back to
/// `slot` and puts back what was there before (polls can nest).
struct InScope<'a> {
    slot: &'a mut Option<Arc<ConnShared>>,
    before: Option<Arc<ConnShared>>,
}

impl<'a> InScope<'a> {
    fn enter(slot: &'a mut Option<Arc<ConnShared>>) -> Self {
        let before = CONN.with(|c| c.replace(slot.take()));
        InScope { slot, before }
    }
}

impl Drop for InScope<'_> {
    fn drop(&mut self) {
        let before = self.before.take();
        *self.slot = CONN.with(|c| c.replace(before));
    }
}

/// The hyper service for one connection.
pub(crate) struct Tracked<S> {
    pub(crate) inner: S,
    pub(crate) conn: Arc<ConnShared>,
    /// Whether to hand the peer to handlers as request extensions.
    pub(crate) connect_info: bool,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for Tracked<S>
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<TrackedBody<B>>;
    type Error = BoxError;
    type Future = TrackedFuture<S>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        let conn = Arc::clone(&self.conn);
        if self.connect_info {
            insert_peer(req.extensions_mut(), conn.peer());
        }
        conn.request_started(req.method(), req.uri());
        let version = req.version();
        let call = Call::start(self.inner.clone(), req);
        TrackedFuture {
            inner: call,
            guard: Some(RequestGuard(Some(Arc::clone(&conn)))),
            scope: Some(conn),
            version,
            forced: None,
        }
    }
}

type Panic = Box<dyn std::any::Any + Send>;

pin_project! {
    /// The user's service called on one request, its panics caught.
    ///
    /// A service that is ready at once (an axum `Router`, a `service_fn`:
    /// nearly all) is called right away, and its future is all this holds;
    /// only one that is not ready goes through tower's `Oneshot`, which
    /// holds the request until it is. Each layer between hyper and the
    /// handler's future moves the request and the response once more.
    #[project = CallProj]
    enum Call<S>
    where
        S: tower_service::Service<Request<Incoming>>,
    {
        Called { #[pin] fut: S::Future },
        NotReady { #[pin] oneshot: tower::util::Oneshot<S, Request<Incoming>> },
        Failed { error: Option<Result<BoxError, Panic>> },
    }
}

impl<S> Call<S>
where
    S: tower_service::Service<Request<Incoming>>,
    S::Error: Into<BoxError>,
{
    /// Call `svc` now if it is ready, or later if not. The shutdown signal
    /// is in scope while the returned future is polled (where handlers
    /// run), not during a ready service's synchronous `call`: setting a
    /// task-local around it cost more than the rest of this wrapper.
    fn start(mut svc: S, req: Request<Incoming>) -> Self {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let ready = std::panic::catch_unwind(AssertUnwindSafe(|| svc.poll_ready(&mut cx)));
        match ready {
            Ok(Poll::Ready(Ok(()))) => {
                let called = std::panic::catch_unwind(AssertUnwindSafe(|| svc.call(req)));
                match called {
                    Ok(fut) => Call::Called { fut },
                    Err(panic) => Call::Failed {
                        error: Some(Err(panic)),
                    },
                }
            }
            Ok(Poll::Ready(Err(e))) => Call::Failed {
                error: Some(Ok(e.into())),
            },
            Ok(Poll::Pending) => Call::NotReady {
                oneshot: tower::util::Oneshot::new(svc, req),
            },
            Err(panic) => Call::Failed {
                error: Some(Err(panic)),
            },
        }
    }
}

impl<S> Future for Call<S>
where
    S: tower_service::Service<Request<Incoming>>,
    S::Error: Into<BoxError>,
{
    type Output = Result<Result<S::Response, BoxError>, Panic>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            CallProj::Called { fut } => poll_caught(fut, cx),
            CallProj::NotReady { oneshot } => poll_caught(oneshot, cx),
            CallProj::Failed { error } => match error.take() {
                Some(Ok(e)) => Poll::Ready(Ok(Err(e))),
                Some(Err(panic)) => Poll::Ready(Err(panic)),
                None => Poll::Pending,
            },
        }
    }
}

/// Poll `fut`, its panic caught and its error boxed.
fn poll_caught<F, R, E>(
    fut: Pin<&mut F>,
    cx: &mut Context<'_>,
) -> Poll<Result<Result<R, BoxError>, Panic>>
where
    F: Future<Output = Result<R, E>>,
    E: Into<BoxError>,
{
    match std::panic::catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
        Ok(Poll::Ready(r)) => Poll::Ready(Ok(r.map_err(Into::into))),
        Ok(Poll::Pending) => Poll::Pending,
        Err(panic) => Poll::Ready(Err(panic)),
    }
}

pin_project! {
    /// The future of one request: the handler, with its panic caught, the
    /// shutdown signal in scope, and a CANCEL when the connection is forced.
    /// A named type, not a boxed one: no allocation per request.
    pub(crate) struct TrackedFuture<S>
    where
        S: tower_service::Service<Request<Incoming>>,
    {
        #[pin]
        inner: Call<S>,
        // The connection, moved into `CONN` while `inner` is polled.
        scope: Option<Arc<ConnShared>>,
        guard: Option<RequestGuard>,
        version: Version,
        // Created only when the handler has to wait.
        forced: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    }
}

impl<S, B> Future for TrackedFuture<S>
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<TrackedBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let polled = {
            let _scope = InScope::enter(this.scope);
            this.inner.poll(cx)
        };
        let Some(conn) = this.scope.as_ref() else {
            // `InScope` always hands the connection back.
            return Poll::Ready(Err(cancel()));
        };
        let called = match polled {
            Poll::Ready(called) => called,
            Poll::Pending => {
                let forced = this.forced.get_or_insert_with(|| {
                    let conn = Arc::clone(conn);
                    Box::pin(async move { conn.forced().await })
                });
                if forced.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(cancel()));
                }
                return Poll::Pending;
            }
        };
        let (mut response, upgrade) = match called {
            Ok(Ok(response)) => {
                let upgrade = response.status() == StatusCode::SWITCHING_PROTOCOLS;
                // gRPC runs over HTTP/2 only: spare HTTP/1 the header lookup.
                let grpc = *this.version == Version::HTTP_2
                    && response
                        .headers()
                        .get(CONTENT_TYPE)
                        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
                let mut response = response.map(|b| TrackedBody::new(Inner::User { body: b }));
                if grpc {
                    response.body_mut().grpc = Some(conn.signal().clone());
                }
                (response, upgrade)
            }
            Ok(Err(e)) => {
                tracing::warn!(target: "lameduck", error = %e, peer = %conn.peer(), "service error; answering 500");
                (internal_error(), false)
            }
            Err(panic) => {
                tracing::error!(target: "lameduck", panic = %panic_message(panic.as_ref()), peer = %conn.peer(), "handler panicked; answering 500");
                (internal_error(), false)
            }
        };
        conn.response_started(upgrade);
        if !upgrade && *this.version <= Version::HTTP_11 && conn.signal().is_draining() {
            // Tell HTTP/1 clients to go elsewhere; hyper closes the
            // connection after this response.
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        response.body_mut().guard = this.guard.take().unwrap_or(RequestGuard(None));
        Poll::Ready(Ok(response))
    }
}

/// The peer as axum's `ConnectInfo` extractors (and plain extensions)
/// look for it.
fn insert_peer(ext: &mut http::Extensions, peer: &Peer) {
    #[cfg(feature = "axum")]
    {
        use axum::extract::ConnectInfo;
        if let Some(addr) = peer.socket_addr() {
            ext.insert(ConnectInfo(addr));
        }
        ext.insert(ConnectInfo(peer.clone()));
    }
    ext.insert(peer.clone());
}

/// The error that makes hyper reset an HTTP/2 stream with CANCEL (and
/// abort an HTTP/1 connection).
fn cancel() -> BoxError {
    Box::new(h2::Error::from(h2::Reason::CANCEL))
}

fn internal_error<B>() -> Response<TrackedBody<B>> {
    let mut response = Response::new(TrackedBody::new(Inner::Fixed {
        data: Some(Bytes::from_static(b"internal server error\n")),
    }));
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response
        .headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from_static("22"));
    response
}

/// Marks the end of one request on the connection when dropped: when the
/// response body has been written (or abandoned).
pub(crate) struct RequestGuard(Option<Arc<ConnShared>>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            conn.request_finished();
        }
    }
}

pin_project! {
    #[project = InnerProj]
    enum Inner<B> {
        User { #[pin] body: B },
        Fixed { data: Option<Bytes> },
    }
}

pin_project! {
    /// A response body that marks the end of its request when it is done,
    /// and ends with a CANCEL error when the connection is forced.
    pub(crate) struct TrackedBody<B> {
        #[pin]
        inner: Inner<B>,
        guard: RequestGuard,
        // Created only when the body first has to wait.
        forced: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
        // For gRPC responses: end a waiting stream with UNAVAILABLE when
        // the server stops.
        grpc: Option<ShutdownSignal>,
        stopping: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
        ended: bool,
    }
}

impl<B> TrackedBody<B> {
    fn new(inner: Inner<B>) -> Self {
        TrackedBody {
            inner,
            guard: RequestGuard(None),
            forced: None,
            grpc: None,
            stopping: None,
            ended: false,
        }
    }
}

impl<B> Body for TrackedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if *this.ended {
            return Poll::Ready(None);
        }
        let polled = match this.inner.project() {
            InnerProj::User { body } => body.poll_frame(cx).map_err(Into::into),
            InnerProj::Fixed { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        };
        if polled.is_ready() {
            return polled;
        }
        // The body has to wait: from here on, react to a force (and, for
        // gRPC, to the server stopping). The futures are created only for
        // bodies that wait, never on the fast path.
        if let Some(conn) = &this.guard.0 {
            let forced = this.forced.get_or_insert_with(|| {
                let conn = Arc::clone(conn);
                Box::pin(async move { conn.forced().await })
            });
            if forced.as_mut().poll(cx).is_ready() {
                *this.ended = true;
                return Poll::Ready(Some(Err(cancel())));
            }
        }
        if let Some(signal) = this.grpc {
            // A gRPC stream waiting for its next message when the server
            // stops: end it here, at a message boundary, with UNAVAILABLE,
            // so the client retries elsewhere; the handler's stream is
            // dropped, which it sees as cancellation.
            let stopping = this.stopping.get_or_insert_with(|| {
                let signal = signal.clone();
                Box::pin(async move { signal.stopping().await })
            });
            if stopping.as_mut().poll(cx).is_ready() {
                *this.ended = true;
                let mut trailers = HeaderMap::new();
                trailers.insert("grpc-status", HeaderValue::from_static("14"));
                trailers.insert(
                    "grpc-message",
                    HeaderValue::from_static("server shutting down"),
                );
                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
            }
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        if self.ended {
            return true;
        }
        match &self.inner {
            Inner::User { body } => body.is_end_stream(),
            Inner::Fixed { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::User { body } => body.size_hint(),
            Inner::Fixed { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}
