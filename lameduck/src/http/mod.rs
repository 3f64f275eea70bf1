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
//!   new ones are refused. An HTTP/1 connection with a request in flight
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
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;

pub use listener::Listener;
pub use readiness::Readiness;

use crate::error::Error;
use crate::lifecycle::Handle;
use crate::registry::Label;
use crate::report::Kind;
use crate::util::AbortOnDrop;
use conn::{
    close_politely, ConnIo, ConnShared, ACTIVE, FORCE, IDLE, NEW, READING, RESPONSE_408, STOP,
    TIMEOUT_HEAD, TIMEOUT_IDLE, UPGRADED,
};
use service::{BoxError, Tracked};

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

/// Timeouts and protocol settings of a [`Server`].
#[derive(Debug, Clone)]
struct Config {
    idle_grace: Duration,
    header_grace: Duration,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    linger: Duration,
}

fn config_timeouts(config: &Config) -> (Duration, Duration) {
    (config.header_read_timeout, config.idle_timeout)
}

impl Default for Config {
    fn default() -> Self {
        Config {
            idle_grace: Duration::from_millis(50),
            header_grace: Duration::from_secs(1),
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            linger: Duration::from_millis(500),
        }
    }
}

/// A graceful HTTP server bound to a lifecycle. See the [module
/// documentation](self).
#[derive(Debug)]
pub struct Server {
    handle: Handle,
    listeners: Vec<Listener>,
    config: Config,
}

impl Server {
    /// A server with no listeners yet, bound to `handle`'s lifecycle.
    pub fn new(handle: Handle) -> Self {
        Server {
            handle,
            listeners: Vec::new(),
            config: Config::default(),
        }
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
        self.config.idle_grace = grace;
        self
    }

    /// While stopping, how long a half-sent request head may take before
    /// the connection is answered `408 Request Timeout` and closed
    /// (default 1 s, counted from its first byte).
    pub fn header_grace(mut self, grace: Duration) -> Self {
        self.config.header_grace = grace;
        self
    }

    /// How long a request head may take at any time (default 30 s,
    /// counted from its first byte); a half-sent head then gets a 408.
    /// Checked by a periodic sweep (a quarter of the timeout, between
    /// 100 ms and 1 s), not a timer per request.
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.config.header_read_timeout = timeout;
        self
    }

    /// How long an HTTP/1 connection may stay idle, or unused after accept,
    /// before it is closed (default 120 s).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.config.idle_timeout = timeout;
        self
    }

    /// After closing, how long to keep reading (and discarding) what the
    /// client still sends, so the close is a FIN and not a reset
    /// (default 500 ms; the client closing ends it sooner).
    pub fn linger(mut self, linger: Duration) -> Self {
        self.config.linger = linger;
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
            config,
        } = self;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // No per-request timer in hyper: a sweeper checks header-read and
        // idle timeouts for every connection now and then.
        builder.http1().header_read_timeout(None);
        builder
            .http2()
            .timer(TokioTimer::new())
            .enable_connect_protocol();
        let ctx = Arc::new(Ctx {
            builder,
            config,
            handle,
            service,
        });
        let served = !ctx.handle.is_stopping();
        async move {
            // A stage that comes after this server's task waits for its
            // connections too.
            crate::stage::serving_http(&ctx.handle);
            let sweeper = {
                let handle = ctx.handle.clone();
                let every = (ctx.config.header_read_timeout.min(ctx.config.idle_timeout) / 4)
                    .clamp(Duration::from_millis(100), Duration::from_secs(1));
                // Not a lifecycle task: it must not hold the drain.
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(every);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tokio::select! {
                            _ = handle.done() => break,
                            _ = tick.tick() => handle.shared.registry.sweep(),
                        }
                    }
                })
            };
            let _sweeper = AbortOnDrop(sweeper.abort_handle());
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

struct Ctx<S> {
    builder: auto::Builder<TokioExecutor>,
    config: Config,
    handle: Handle,
    service: S,
}

/// `served`: whether `serve` was called before the lifecycle stopped. If it
/// was not, nothing is accepted at all (Go's parity: `Serve` after
/// `Shutdown` returns at once); if it was, connections the kernel queued are
/// served even if this loop never got to run before the stop.
async fn accept_loop<S, B>(listener: Listener, ctx: Arc<Ctx<S>>, served: bool) -> Result<(), Error>
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
    let name = listener.describe();
    let registry = Arc::clone(&ctx.handle.shared.registry);
    let _entry = registry.register(Kind::Listener, Label::Fixed(name.clone()));
    let handle = ctx.handle.clone();
    let mut accepting = handle.shared.accepting.subscribe();
    let mut errors = 0u32;
    loop {
        if handle.is_stopping() {
            break;
        }
        if !*accepting.borrow_and_update() {
            // Paused (a restart's successor is on probation): keep the
            // socket open, leave the queue to the successor.
            tokio::select! {
                biased;
                _ = handle.stopping() => break,
                changed = accepting.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    continue;
                }
            }
        }
        tokio::select! {
            biased;
            _ = handle.stopping() => break,
            _ = accepting.changed() => continue,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    errors = 0;
                    let ctx = Arc::clone(&ctx);
                    handle.shared.tracker.spawn(serve_connection(stream, peer, ctx));
                }
                Err(e) => {
                    // Out of descriptors, a peer reset before accept: log,
                    // back off briefly, keep accepting.
                    errors = errors.saturating_add(1);
                    tracing::warn!(target: "lameduck", listener = %name, error = %e, "accept failed");
                    let pause = Duration::from_millis(5 * u64::from(errors.min(200)));
                    tokio::select! {
                        _ = handle.stopping() => break,
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
            },
        }
    }
    // Serve what the kernel already accepted for us, then close.
    let queued = if served {
        listener.close_draining_backlog()
    } else {
        Vec::new()
    };
    tracing::info!(target: "lameduck", listener = %name, queued = queued.len(), "stopped accepting");
    for (stream, peer) in queued {
        let ctx = Arc::clone(&ctx);
        handle
            .shared
            .tracker
            .spawn(serve_connection(stream, peer, ctx));
    }
    Ok(())
}

async fn serve_connection<S, B>(stream: listener::Stream, peer: String, ctx: Arc<Ctx<S>>)
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
    let handle = &ctx.handle;
    let registry = &handle.shared.registry;
    let shared = Arc::new(ConnShared::new(
        peer,
        Arc::clone(registry),
        ShutdownSignal::new(handle.clone()),
        config_timeouts(&ctx.config),
    ));
    let entry = registry.register(Kind::Connection, Label::Live(shared.clone()));
    let (io, back) = ConnIo::new(stream, Arc::clone(&shared), entry);
    let service = Tracked {
        inner: ctx.service.clone(),
        conn: Arc::clone(&shared),
    };
    // Boxed rather than pinned on the stack: dropping it must drop the IO,
    // which hands the socket back for a polite close.
    let mut conn = Box::pin(
        ctx.builder
            .serve_connection_with_upgrades(TokioIo::new(io), service),
    );

    // How hyper's part ended: by itself (with its result), dropped by us
    // because a half-sent head outstayed its grace, or forced.
    enum End {
        Done(Result<(), BoxError>),
        HalfSent,
        Forced,
    }

    let config = &ctx.config;
    // The lifecycle tells connections it stops or forces by a broadcast
    // over the registry; one that started after that reads it here.
    if handle.is_stopping() {
        shared.raise(STOP);
    }
    if handle.is_forced() {
        shared.raise(FORCE);
    }
    let mut seen = 0u8;
    let mut asked = false;
    // Whether this task closed the connection between requests: only then
    // can bytes left unread be a new request (rather than the rest of a
    // body the handler did not read) that deserves a 503.
    let mut closed_idle = false;
    let end = loop {
        // Before stopping: serve. While stopping: decide, from the
        // connection's state, when to ask hyper to close it.
        let stopping = seen & STOP != 0;
        let state = shared.state();
        let mut timer = None;
        if stopping && !asked {
            if shared.is_h2() {
                // Two-phase GOAWAY; in-flight streams finish.
                conn.as_mut().graceful_shutdown();
                asked = true;
            } else {
                match state {
                    NEW | IDLE => timer = Some((shared.state_since() + config.idle_grace, false)),
                    READING => timer = Some((shared.state_since() + config.header_grace, true)),
                    // Active: the response carries `Connection: close` and
                    // hyper closes after it. Upgraded: hyper is done.
                    ACTIVE | UPGRADED => {}
                    _ => {}
                }
            }
        }
        let sleep = async {
            match timer {
                Some((at, _)) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            r = conn.as_mut() => break End::Done(r),
            events = std::future::poll_fn(|cx| shared.poll_events(cx, seen)) => {
                if events & FORCE != 0 {
                    break End::Forced;
                }
                seen |= events & (STOP | FORCE);
                let now = shared.state();
                if events & TIMEOUT_HEAD != 0 && now == READING {
                    // Slowloris or a stalled client: 408, then close.
                    break End::HalfSent;
                }
                if events & TIMEOUT_IDLE != 0 && (now == IDLE || now == NEW) && !asked {
                    conn.as_mut().graceful_shutdown();
                    asked = true;
                    closed_idle = true;
                }
            }
            _ = sleep => {
                if shared.state() != state {
                    continue;
                }
                match timer {
                    Some((_, true)) => break End::HalfSent,
                    Some((_, false)) => {
                        conn.as_mut().graceful_shutdown();
                        asked = true;
                        closed_idle = true;
                    }
                    None => {}
                }
            }
        }
    };

    let linger = ctx.config.linger;
    match end {
        End::Done(result) => {
            let timed_out = result.as_ref().err().is_some_and(|e| {
                e.downcast_ref::<hyper::Error>()
                    .is_some_and(hyper::Error::is_timeout)
            });
            drop(conn);
            let Ok(stream) = wait_for_stream(back, &shared, handle).await else {
                return;
            };
            let answer = (timed_out && shared.state() == READING).then_some(RESPONSE_408);
            let at_boundary = closed_idle && result.is_ok() && !shared.is_h2();
            close_politely(stream, answer, at_boundary, linger).await;
        }
        End::HalfSent => {
            drop(conn);
            if let Ok(stream) = back.await {
                close_politely(stream, Some(RESPONSE_408), false, linger).await;
            }
        }
        End::Forced => {
            // Abort: every request ends with CANCEL, which hyper sends as
            // RST_STREAM(CANCEL) on HTTP/2; give it a moment to write them,
            // then drop what is left (handlers see their futures dropped).
            // HTTP/1 connections end with a FIN.
            shared.force();
            let _ = tokio::time::timeout(ABORT_FLUSH, conn.as_mut()).await;
            drop(conn);
            shared.shutdown_upgraded();
            if let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_millis(10), back).await {
                close_politely(stream, None, false, Duration::ZERO).await;
            }
        }
    }
}

/// How long a forced connection may take to write its resets.
const ABORT_FLUSH: Duration = Duration::from_millis(20);

/// Wait for the IO to come back from hyper. After an upgrade it comes back
/// only when the upgraded connection's owner drops it; at the deadline the
/// socket is shut down so that the owner sees the end.
async fn wait_for_stream(
    mut back: tokio::sync::oneshot::Receiver<listener::Stream>,
    shared: &ConnShared,
    handle: &Handle,
) -> Result<listener::Stream, ()> {
    tokio::select! {
        biased;
        s = &mut back => return s.map_err(|_| ()),
        _ = handle.forced() => {}
    }
    shared.shutdown_upgraded();
    back.await.map_err(|_| ())
}
