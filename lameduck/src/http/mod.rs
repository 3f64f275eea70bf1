//! A graceful HTTP/1.1 and HTTP/2 server on hyper-util, driven by a
//! [`Lifecycle`](crate::Lifecycle).
//!
//! Serve any tower service (an axum `Router`, tonic `Routes`, your own) over
//! one or more [`Listener`]s (TCP v4/v6, Unix). During a shutdown the server
//! does what a client needs to see, protocol by protocol:
//!
//! - **Draining** (lame duck): everything still serves and listeners still
//!   accept; [`Readiness`] reports 503; every HTTP/1 response carries
//!   `Connection: close` (not a 101), so clients move elsewhere.
//! - **Stopping**: listeners are closed (new connects are refused).
//!   HTTP/2 connections get a two-phase GOAWAY; in-flight streams finish,
//!   new ones are refused. The first phase waits for the client's PING
//!   acknowledgement at most [`goaway_timeout`](Server::goaway_timeout):
//!   a client that never sends it cannot hold the drain. An HTTP/1 connection with a request in flight
//!   gets its full response with `Connection: close`, then a FIN. An idle
//!   connection is closed once it has been idle for
//!   [`idle_grace`](Server::idle_grace), so that a request already on the
//!   wire is answered rather than reset (one that slips through still gets
//!   a `503` with `Retry-After`, never a bare close). A connection with a
//!   half-sent request head gets `408 Request Timeout` after
//!   [`header_grace`](Server::header_grace). Handlers see the
//!   [`ShutdownSignal`] ([`ShutdownSignal::current`]), so SSE and
//!   long-poll handlers can send a last event and end; upgraded connections
//!   (WebSocket) are tracked and waited for. A gRPC response stream that
//!   is waiting for its next message is ended there, at a message
//!   boundary, with `grpc-status: 14` (UNAVAILABLE), so gRPC clients retry
//!   elsewhere instead of holding the drain.
//! - **Forced** (deadline or second signal): whatever is left is aborted:
//!   HTTP/2 streams get RST_STREAM(CANCEL), HTTP/1 connections a FIN,
//!   upgraded connections are shut down, handlers see their futures
//!   dropped; the report names each connection with its request, peer, age,
//!   bytes and phase.
//!
//! # Known limits
//!
//! - A stream opened above the final GOAWAY's last-stream-id is ignored by
//!   the h2 crate rather than refused with RST_STREAM(REFUSED_STREAM); the
//!   GOAWAY itself tells the client it was not processed.
//! - TLS is not built in yet; the [`Listener`] type is open for it.
//!
//! While serving, every connection is bounded too: a request head (and the
//! first bytes that decide between HTTP/1 and HTTP/2 — a lone `P` begins
//! `POST` as well as the HTTP/2 preface) by
//! [`header_read_timeout`](Server::header_read_timeout), an idle connection
//! by [`idle_timeout`](Server::idle_timeout), each ended in its own
//! protocol: HTTP/1 with a `408` or a FIN, HTTP/2 with a two-phase GOAWAY.
//!
//! The drain completes the instant the last connection ends: nothing polls.
//!
//! # Example
//!
//! ```no_run
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use lameduck::http::{Listener, Server};
//!
//! # #[tokio::main] async fn main() -> Result<(), lameduck::Error> {
//! let lifecycle = lameduck::Lifecycle::builder().build()?;
//! let hello = tower::service_fn(|_req| async {
//!     Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from("hello\n"))))
//! });
//! let server = Server::new(lifecycle.handle())
//!     .listener(Listener::bind("127.0.0.1:8080").await?)
//!     .serve(hello);
//! lifecycle.handle().spawn_vital("http", |_| server);
//! let report = lifecycle.await; // the lifecycle logs it; keep it for the exit code
//! # Ok(()) }
//! ```

mod conn;
mod listener;
mod readiness;
mod service;
#[cfg(feature = "tls")]
pub mod tls;

#[cfg(feature = "axum")]
pub mod axum;
#[cfg(feature = "tonic")]
pub mod tonic;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;

pub use listener::Listener;
pub use readiness::Readiness;

use crate::error::Error;
use crate::lifecycle::{Handle, View};
use crate::report::Kind;
use conn::{Ctx, Timeouts};
use service::BoxError;

/// The shutdown signal a handler can observe: distinct from request
/// cancellation (which means the *client* went away), it says the *server*
/// is going away.
///
/// While a handler of a [`Server`] runs, [`ShutdownSignal::current`] returns
/// it (a task-local, set around the handler; it costs no allocation per
/// request). With axum it is an extractor. Take it inside the handler and
/// move it into whatever outlives the handler (an SSE stream, a WebSocket
/// task).
///
/// ```
/// # async fn handler() {
/// if let Some(signal) = lameduck::http::ShutdownSignal::current() {
///     tokio::select! {
///         _ = signal.stopping() => { /* send a last event, end the stream */ }
///         _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => { /* next event */ }
///     }
/// }
/// # }
/// ```
#[derive(Clone)]
pub struct ShutdownSignal {
    handle: Handle,
}

impl fmt::Debug for ShutdownSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShutdownSignal")
            .field("phase", &self.handle.phase())
            .finish()
    }
}

impl ShutdownSignal {
    /// A signal observing `handle`'s lifecycle.
    pub fn new(handle: Handle) -> Self {
        ShutdownSignal { handle }
    }

    /// The signal of the server whose handler is running on this task, or
    /// `None` outside a handler served by a [`Server`].
    pub fn current() -> Option<Self> {
        service::CONN.try_with(|conn| conn.signal().clone()).ok()
    }

    /// Whether the lame-duck period has begun.
    pub fn is_draining(&self) -> bool {
        self.handle.is_draining()
    }

    /// Whether long-lived work should finish now.
    pub fn is_stopping(&self) -> bool {
        self.handle.is_stopping()
    }

    /// Resolves when long-lived work (SSE, long polls, WebSockets) should
    /// finish: the server has stopped accepting and is draining.
    ///
    /// # Cancellation safety
    ///
    /// Cancellation safe; resolves at once if already stopping.
    pub async fn stopping(&self) {
        self.handle.stopping().await;
    }

    /// Resolves when the lame-duck period begins.
    ///
    /// # Cancellation safety
    ///
    /// Cancellation safe.
    pub async fn draining(&self) {
        self.handle.draining().await;
    }

    /// What is left of the shutdown budget, once it has started.
    pub fn remaining(&self) -> Option<Duration> {
        self.handle.remaining()
    }
}

/// A graceful HTTP server bound to a lifecycle. See the [module
/// documentation](self).
#[derive(Debug)]
pub struct Server {
    handle: Handle,
    listeners: Vec<Listener>,
    timeouts: Timeouts,
    knobs: Knobs,
    #[cfg(feature = "tls")]
    tls: Option<tls::TlsConfig>,
}

impl Server {
    /// A server with no listeners yet, bound to `handle`'s lifecycle.
    pub fn new(handle: Handle) -> Self {
        Server {
            handle,
            listeners: Vec::new(),
            timeouts: Timeouts::default(),
            knobs: Knobs::default(),
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// Serve every listener over TLS with `config` (feature `tls`). The
    /// handshake is bounded by the [header-read
    /// timeout](Self::header_read_timeout) and, once the server stops
    /// accepting, a handshake still under way is closed at once: a client
    /// that opens TCP and never finishes its handshake never holds a drain.
    /// Connections are closed with `close_notify` before the FIN. Replace
    /// the certificate while running with [`tls::TlsConfig::reload`].
    ///
    /// ```no_run
    /// # async fn f(handle: lameduck::Handle) -> Result<(), lameduck::Error> {
    /// use lameduck::http::{tls::TlsConfig, Listener, Server};
    /// let tls = TlsConfig::from_pem_files("cert.pem", "key.pem")?;
    /// let server = Server::new(handle)
    ///     .listener(Listener::bind("127.0.0.1:8443").await?)
    ///     .tls(tls);
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "tls")]
    pub fn tls(mut self, config: tls::TlsConfig) -> Self {
        self.tls = Some(config);
        self
    }

    /// Add a listener.
    pub fn listener(mut self, listener: impl Into<Listener>) -> Self {
        self.listeners.push(listener.into());
        self
    }

    /// While stopping, close a keep-alive connection only once it has been
    /// idle this long (default 50 ms), so that a request already on the
    /// wire is answered rather than lost. Applies to never-used
    /// connections too, counted from accept.
    pub fn idle_grace(mut self, grace: Duration) -> Self {
        self.timeouts.idle_grace = grace;
        self
    }

    /// While stopping, how long a half-sent request head may take before
    /// the connection is answered `408 Request Timeout` and closed
    /// (default 1 s, counted from its first byte).
    pub fn header_grace(mut self, grace: Duration) -> Self {
        self.timeouts.header_grace = grace;
        self
    }

    /// How long a request head may take at any time (default 30 s,
    /// counted from its first byte); a half-sent head then gets a 408.
    /// Protocol detection (the first bytes, until they show HTTP/1 or the
    /// whole HTTP/2 preface) counts as part of the head. Each connection
    /// has one timer, re-armed lazily, not one per request.
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.timeouts.header_read = timeout;
        self
    }

    /// How long a connection may stay idle, or unused after accept, before
    /// it is closed (default 120 s): HTTP/1 with a FIN at a request
    /// boundary, HTTP/2 with a two-phase GOAWAY when no stream is open
    /// (frames such as PING do not count as use).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.timeouts.idle = timeout;
        self
    }

    /// How long each phase of an HTTP/2 connection's two-phase GOAWAY may
    /// wait for the client (default 250 ms): after the first GOAWAY, for
    /// the acknowledgement of the PING sent with it (about one round trip);
    /// then, once no stream is left, for the connection to close. A client
    /// that never acknowledges gets the final GOAWAY and a FIN at the bound,
    /// so that it cannot hold a drain (or an idle close) open.
    ///
    /// ```
    /// # let lifecycle = lameduck::Lifecycle::builder().signals(lameduck::Signals::none()).build().unwrap();
    /// let server = lameduck::http::Server::new(lifecycle.handle())
    ///     .goaway_timeout(std::time::Duration::from_millis(500));
    /// ```
    pub fn goaway_timeout(mut self, timeout: Duration) -> Self {
        self.timeouts.goaway = timeout;
        self
    }

    /// The most HTTP/2 streams a client may have open at once on one
    /// connection (hyper's default: 200). A stream above it is refused
    /// with `RST_STREAM(REFUSED_STREAM)`; it bounds what one connection can
    /// ask of the server at a time.
    ///
    /// ```
    /// # let lifecycle = lameduck::Lifecycle::builder().signals(lameduck::Signals::none()).build().unwrap();
    /// let server = lameduck::http::Server::new(lifecycle.handle()).http2_max_concurrent_streams(100);
    /// ```
    pub fn http2_max_concurrent_streams(mut self, max: u32) -> Self {
        self.knobs.h2_max_concurrent_streams = Some(max);
        self
    }

    /// Send an HTTP/2 PING every `interval` and close the connection when
    /// its acknowledgement does not arrive within `timeout` (off by
    /// default): finds dead peers behind NATs and load balancers.
    ///
    /// ```
    /// # let lifecycle = lameduck::Lifecycle::builder().signals(lameduck::Signals::none()).build().unwrap();
    /// use std::time::Duration;
    /// let server = lameduck::http::Server::new(lifecycle.handle())
    ///     .http2_keep_alive(Duration::from_secs(20), Duration::from_secs(10));
    /// ```
    pub fn http2_keep_alive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.knobs.h2_keep_alive = Some((interval, timeout));
        self
    }

    /// The largest HTTP/2 header list a client may send, in bytes as HPACK
    /// counts them (hyper's default: 16 KiB); a larger one is refused.
    ///
    /// ```
    /// # let lifecycle = lameduck::Lifecycle::builder().signals(lameduck::Signals::none()).build().unwrap();
    /// let server = lameduck::http::Server::new(lifecycle.handle()).http2_max_header_list_size(32 * 1024);
    /// ```
    pub fn http2_max_header_list_size(mut self, max: u32) -> Self {
        self.knobs.h2_max_header_list_size = Some(max);
        self
    }

    /// The most headers an HTTP/1 request may have (hyper's default: 100);
    /// a request with more gets `431`.
    ///
    /// ```
    /// # let lifecycle = lameduck::Lifecycle::builder().signals(lameduck::Signals::none()).build().unwrap();
    /// let server = lameduck::http::Server::new(lifecycle.handle()).http1_max_headers(64);
    /// ```
    pub fn http1_max_headers(mut self, max: usize) -> Self {
        self.knobs.h1_max_headers = Some(max);
        self
    }

    /// The largest buffer an HTTP/1 connection reads a request head into
    /// (hyper's default: about 400 KiB); a head that does not fit is
    /// refused. Values below 8 KiB are raised to 8 KiB (hyper's minimum).
    ///
    /// ```
    /// # let lifecycle = lameduck::Lifecycle::builder().signals(lameduck::Signals::none()).build().unwrap();
    /// let server = lameduck::http::Server::new(lifecycle.handle()).http1_max_buf_size(64 * 1024);
    /// ```
    pub fn http1_max_buf_size(mut self, max: usize) -> Self {
        self.knobs.h1_max_buf_size = Some(max.max(8192));
        self
    }

    /// The most bytes an HTTP/2 connection buffers per stream for a client
    /// that reads slowly (hyper's default: 400 KiB): what a client that
    /// never reads can make the server hold.
    ///
    /// ```
    /// # let lifecycle = lameduck::Lifecycle::builder().signals(lameduck::Signals::none()).build().unwrap();
    /// let server = lameduck::http::Server::new(lifecycle.handle()).http2_max_send_buf_size(64 * 1024);
    /// ```
    pub fn http2_max_send_buf_size(mut self, max: usize) -> Self {
        self.knobs.h2_max_send_buf_size = Some(max);
        self
    }

    /// After closing, how long to keep reading (and discarding) what the
    /// client still sends, so the close is a FIN and not a reset
    /// (default 500 ms; the client closing ends it sooner).
    pub fn linger(mut self, linger: Duration) -> Self {
        self.timeouts.linger = linger;
        self
    }

    /// Serve `service` on every listener until the lifecycle stops
    /// accepting. The returned future resolves when the listeners are
    /// closed; the lifecycle's drain waits for the connections themselves.
    ///
    /// Spawn it as a (vital) task of the lifecycle, or await it.
    pub fn serve<S, B>(self, service: S) -> impl Future<Output = Result<(), Error>> + Send + 'static
    where
        S: tower_service::Service<Request<Incoming>, Response = Response<B>>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let Server {
            handle,
            listeners,
            timeouts,
            knobs,
            #[cfg(feature = "tls")]
            tls,
        } = self;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // No timer per request in hyper: each connection's driver times
        // heads and idleness itself, per protocol.
        builder.http1().header_read_timeout(None);
        builder
            .http2()
            .timer(TokioTimer::new())
            .enable_connect_protocol();
        knobs.apply(&mut builder);
        let view = handle.view();
        let served = !view.is_stopping();
        let ctx = Arc::new(Ctx {
            builder,
            timeouts,
            view,
            service,
            #[cfg(feature = "tls")]
            tls,
        });
        async move {
            // A stage that comes after this server's task waits for its
            // connections too.
            crate::stage::serving_http(&ctx.view.handle());
            let mut loops = Vec::new();
            for listener in listeners {
                let ctx = Arc::clone(&ctx);
                loops.push(tokio::spawn(accept_loop(listener, ctx, served)));
            }
            let mut result = Ok(());
            for l in loops {
                match l.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => result = Err(e),
                    Err(e) => result = Err(Error::listener("accept loop", e)),
                }
            }
            result
        }
    }
}

/// `served`: whether `serve` was called before the lifecycle stopped. If it
/// was not, nothing is accepted at all (Go's parity: `Serve` after
/// `Shutdown` returns at once); if it was, connections the kernel queued are
/// served even if this loop never got to run before the stop.
async fn accept_loop<S, B>(listener: Listener, ctx: Arc<Ctx<S>>, served: bool) -> Result<(), Error>
where
    S: conn::ConnService<B>,
    B: conn::ConnBody,
{
    let name = listener.describe();
    let view: &View = &ctx.view;
    let _entry = view.register(Kind::Listener, name.clone());
    let l = &listener;
    crate::util::accept_while(
        &name,
        view.accepting(),
        view.stopping(),
        move || l.accept(),
        |(stream, peer)| dispatch(stream, peer, &ctx),
    )
    .await;
    // Serve what the kernel already accepted for us, then close.
    let queued = if served {
        listener.close_draining_backlog()
    } else {
        Vec::new()
    };
    tracing::info!(target: "lameduck", listener = %name, queued = queued.len(), "stopped accepting");
    for (stream, peer) in queued {
        dispatch(stream, peer, &ctx);
    }
    Ok(())
}

/// Serve an accepted connection: over TLS when the server has a TLS
/// configuration (after a bounded handshake), as it is otherwise.
fn dispatch<S, B>(stream: listener::Stream, peer: String, ctx: &Arc<Ctx<S>>)
where
    S: conn::ConnService<B>,
    B: conn::ConnBody,
{
    #[cfg(feature = "tls")]
    if let Some(config) = &ctx.tls {
        let acceptor = tokio_rustls::TlsAcceptor::from(config.server_config());
        ctx.view.spawn(tls::handshake_then_serve(
            acceptor,
            stream,
            peer,
            Arc::clone(ctx),
        ));
        return;
    }
    ctx.view.spawn(conn::serve(stream, peer, Arc::clone(ctx)));
}

/// hyper's settings a user may change (the rest stays lameduck's: the
/// connection driver times heads and idleness itself).
#[derive(Debug, Default, Clone)]
struct Knobs {
    h2_max_concurrent_streams: Option<u32>,
    h2_keep_alive: Option<(Duration, Duration)>,
    h2_max_header_list_size: Option<u32>,
    h2_max_send_buf_size: Option<usize>,
    h1_max_headers: Option<usize>,
    h1_max_buf_size: Option<usize>,
}

impl Knobs {
    fn apply(&self, builder: &mut auto::Builder<TokioExecutor>) {
        if let Some(max) = self.h1_max_headers {
            builder.http1().max_headers(max);
        }
        if let Some(max) = self.h1_max_buf_size {
            builder.http1().max_buf_size(max);
        }
        let mut h2 = builder.http2();
        if let Some(max) = self.h2_max_concurrent_streams {
            h2.max_concurrent_streams(max);
        }
        if let Some((interval, timeout)) = self.h2_keep_alive {
            h2.keep_alive_interval(interval).keep_alive_timeout(timeout);
        }
        if let Some(max) = self.h2_max_header_list_size {
            h2.max_header_list_size(max);
        }
        if let Some(max) = self.h2_max_send_buf_size {
            h2.max_send_buf_size(max);
        }
    }
}
