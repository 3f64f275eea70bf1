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

mod accept;
mod conn;
mod listener;
mod readiness;
mod serve;
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

pub use accept::{Accept, Peer};
pub use listener::{Listener, Stream};
pub use readiness::Readiness;
pub use serve::{watch, Serve};

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
/// task): `current` is `None` in tasks the handler spawns and in the
/// response body's polls.
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
        service::current_signal()
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
    accepts: Vec<accept::Erased>,
    timeouts: Timeouts,
    knobs: Knobs,
    connect_info: bool,
    #[cfg(feature = "tls")]
    tls: Option<tls::TlsConfig>,
}

impl Server {
    /// A server with no listeners yet, bound to `handle`'s lifecycle.
    pub fn new(handle: Handle) -> Self {
        Server {
            handle,
            listeners: Vec::new(),
            accepts: Vec::new(),
            timeouts: Timeouts::default(),
            knobs: Knobs::default(),
            connect_info: false,
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

    /// Add a source of connections of your own (see [`Accept`]): its
    /// connections are served exactly like a [`Listener`]'s, over TLS too
    /// when the server has it. Unlike a [`Listener`], it is not handed to
    /// the successor of a [restart](crate::restart).
    ///
    /// ```no_run
    /// # async fn f(handle: lameduck::Handle) -> std::io::Result<()> {
    /// // Any `Accept` will do; tokio's listeners are ones.
    /// let unix = tokio::net::UnixListener::bind("/run/app.sock")?;
    /// let server = lameduck::http::Server::new(handle).accept(unix);
    /// # Ok(()) }
    /// ```
    pub fn accept(mut self, acceptor: impl Accept) -> Self {
        self.accepts.push(accept::Erased::new(acceptor));
        self
    }

    /// Give handlers the connection's peer as a request extension, as
    /// axum's `into_make_service_with_connect_info` does:
    /// `ConnectInfo<SocketAddr>` for TCP (and TLS) peers and
    /// `ConnectInfo<Peer>` for every peer (feature `axum`), and [`Peer`]
    /// itself. Off by default: it costs a few allocations per request.
    ///
    /// ```
    /// use std::net::SocketAddr;
    /// use axum::{extract::ConnectInfo, routing::get, Router};
    ///
    /// async fn who(ConnectInfo(peer): ConnectInfo<SocketAddr>) -> String {
    ///     format!("hello {peer}\n")
    /// }
    /// # let lifecycle = lameduck::Lifecycle::builder().signals(lameduck::Signals::none()).build().unwrap();
    /// let app: Router = Router::new().route("/", get(who));
    /// let server = lameduck::http::Server::new(lifecycle.handle()).connect_info();
    /// ```
    pub fn connect_info(mut self) -> Self {
        self.connect_info = true;
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
    /// accepting.
    ///
    /// Run it as a (vital) task of the lifecycle: the future then resolves
    /// once the server's listeners are closed, and the lifecycle's drain
    /// waits for its connections. Or await it directly in `main`, as with
    /// `axum::serve`: awaited outside a lifecycle task, it resolves only
    /// when the whole shutdown is over (every connection, the closers, the
    /// report), so that returning from `main` right after cuts nothing.
    /// Either way the lifecycle acts on signals by itself (it runs from
    /// [`Builder::build`](crate::Builder::build) on), so the obvious code
    /// stops on `SIGTERM`:
    ///
    /// ```no_run
    /// # async fn f(app: axum::Router) -> Result<(), lameduck::Error> {
    /// let lifecycle = lameduck::Lifecycle::builder().build()?;
    /// lameduck::http::Server::new(lifecycle.handle())
    ///     .listener(lameduck::http::Listener::bind("127.0.0.1:8080").await?)
    ///     .serve(app)
    ///     .await?; // returns after SIGTERM, once everything has drained
    /// # Ok(()) }
    /// ```
    ///
    /// Called once the lifecycle is already stopping, it accepts nothing
    /// and returns at once (like Go's `Serve` after `Shutdown`).
    ///
    /// # Errors
    ///
    /// [`Error::is_listener`] when an accept loop ended abnormally.
    pub fn serve<S, B>(self, service: S) -> impl Future<Output = Result<(), Error>> + Send + 'static
    where
        S: tower_service::Service<Request<Incoming>, Response = Response<B>>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let Server {
            handle,
            listeners,
            accepts,
            timeouts,
            knobs,
            connect_info,
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
            connect_info,
            #[cfg(feature = "tls")]
            tls,
        });
        async move {
            // A stage that comes after this server's task waits for its
            // connections too.
            // A lifecycle built before the runtime starts being driven
            // here at the latest.
            handle.view().ensure_driven();
            let in_lifecycle = crate::stage::serving_http(&handle);
            let mut loops = Vec::new();
            for listener in listeners {
                let (ctx, service) = (Arc::clone(&ctx), service.clone());
                loops.push(tokio::spawn(accept_loop(listener, ctx, service, served)));
            }
            for acceptor in accepts {
                let (ctx, service) = (Arc::clone(&ctx), service.clone());
                loops.push(tokio::spawn(accept_loop(acceptor, ctx, service, served)));
            }
            drop(service);
            // The first accept loop that fails (panics) fails the server at
            // once; the others go on until the lifecycle stops them.
            let mut loops: futures_util::stream::FuturesUnordered<_> = loops.into_iter().collect();
            let mut result = Ok(());
            while let Some(ended) = futures_util::StreamExt::next(&mut loops).await {
                if let Err(e) = ended {
                    result = Err(Error::listener("accept loop", e));
                    break;
                }
            }
            // Awaited by `main` rather than run as a lifecycle task: wait
            // for the whole shutdown (every connection, closers, report).
            if served && !in_lifecycle {
                handle.done().await;
            }
            result
        }
    }
}

/// `served`: whether `serve` was called before the lifecycle stopped. If it
/// was not, nothing is accepted at all (Go's parity: `Serve` after
/// `Shutdown` returns at once); if it was, connections the kernel queued are
/// served even if this loop never got to run before the stop.
async fn accept_loop<A, S, B>(mut acceptor: A, ctx: Arc<Ctx>, service: S, served: bool)
where
    A: Accept,
    A::Io: conn::Transport,
    S: conn::ConnService<B>,
    B: conn::ConnBody,
{
    let name = acceptor.describe();
    let view: &View = &ctx.view;
    let _entry = view.register(Kind::Listener, name.clone());
    let mut source = accept::Source(acceptor);
    // Owns the service (held across awaits, a borrow would need `S: Sync`).
    let mut serve_one = {
        let ctx = Arc::clone(&ctx);
        move |(stream, peer)| dispatch(stream, peer, &ctx, &service)
    };
    crate::util::accept_while(
        &name,
        view.accepting(),
        view.stopping(),
        &mut source,
        &mut serve_one,
    )
    .await;
    acceptor = source.0;
    // Serve what the kernel already accepted for us, then close.
    let queued = if served { acceptor.close() } else { Vec::new() };
    tracing::info!(target: "lameduck", listener = %name, queued = queued.len(), "stopped accepting");
    for conn in queued {
        serve_one(conn);
    }
}

/// Serve an accepted connection: over TLS when the server has a TLS
/// configuration (after a bounded handshake), as it is otherwise.
fn dispatch<T, S, B>(stream: T, peer: Peer, ctx: &Arc<Ctx>, service: &S)
where
    T: conn::Transport,
    S: conn::ConnService<B>,
    B: conn::ConnBody,
{
    let service = service.clone();
    #[cfg(feature = "tls")]
    if let Some(config) = &ctx.tls {
        let acceptor = tokio_rustls::TlsAcceptor::from(config.server_config());
        let fut = tls::handshake_then_serve(acceptor, stream, peer, Arc::clone(ctx), service);
        ctx.view.spawn(fut);
        return;
    }
    ctx.view
        .spawn(conn::serve(stream, peer, Arc::clone(ctx), service));
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
