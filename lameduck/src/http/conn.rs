//! One accepted connection: its shared state, the IO wrapper hyper reads and
//! writes through, and the task that drives hyper and decides how and when
//! the connection ends during a drain.

use std::fmt::Write as _;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use http::{Method, Uri};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use super::listener::Stream;
use super::ShutdownSignal;
use crate::registry::{Describe, InFlight, Registry};
use crate::report::{Kind, Secs};

/// No byte received yet.
pub(crate) const NEW: u8 = 0;
/// Bytes of a request head received; no request dispatched yet.
pub(crate) const READING: u8 = 1;
/// At least one request in flight.
pub(crate) const ACTIVE: u8 = 2;
/// Between requests.
pub(crate) const IDLE: u8 = 3;
/// Switched protocols (101); hyper no longer owns it.
pub(crate) const UPGRADED: u8 = 4;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// Where the request on a connection is: in its handler, or writing its
/// response body.
const HANDLER: u8 = 0;
const WRITING_BODY: u8 = 1;

#[derive(Debug)]
pub(crate) struct ReqInfo {
    method: Method,
    // A `Uri` clone shares hyper's buffer: no allocation per request.
    uri: Uri,
    started: Instant,
}

/// State shared by the IO wrapper, the per-request service wrapper, the
/// registry (to describe itself) and the connection task.
#[derive(Debug)]
pub(crate) struct ConnShared {
    peer: String,
    started: Instant,
    state: AtomicU8,
    /// Nanoseconds since `started` of the last state change.
    since: AtomicU64,
    active: AtomicU64,
    requests: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    h2: AtomicBool,
    upgrading: AtomicBool,
    current: Mutex<Option<ReqInfo>>,
    phase: AtomicU8,
    /// What the connection task has to react to (`STOP`, `FORCE`,
    /// `CHANGED`), with a lock-free waker: polled on every wake-up of the
    /// connection, so it must cost next to nothing.
    events: AtomicU8,
    waker: AtomicWaker,
    /// A duplicate of the socket, taken when the connection upgrades, so
    /// that it can be shut down at the deadline while a handler owns it.
    upgraded_fd: Mutex<Option<socket2::Socket>>,
    registry: Arc<Registry>,
    entry: AtomicU64,
    signal: ShutdownSignal,
    /// Header-read and idle timeouts, checked by the sweeper.
    timeouts: (Duration, Duration),
    forced: AtomicBool,
    force_notify: Notify,
}

impl ConnShared {
    pub(crate) fn new(
        peer: String,
        registry: Arc<Registry>,
        signal: ShutdownSignal,
        timeouts: (Duration, Duration),
    ) -> Self {
        ConnShared {
            peer,
            started: Instant::now(),
            state: AtomicU8::new(NEW),
            since: AtomicU64::new(0),
            active: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            h2: AtomicBool::new(false),
            upgrading: AtomicBool::new(false),
            current: Mutex::new(None),
            phase: AtomicU8::new(HANDLER),
            events: AtomicU8::new(0),
            waker: AtomicWaker::new(),
            upgraded_fd: Mutex::new(None),
            registry,
            entry: AtomicU64::new(u64::MAX),
            signal,
            timeouts,
            forced: AtomicBool::new(false),
            force_notify: Notify::new(),
        }
    }

    /// The lifecycle's shutdown signal, as handlers see it.
    pub(crate) fn signal(&self) -> &ShutdownSignal {
        &self.signal
    }

    pub(crate) fn state(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }

    fn set_state(&self, state: u8) {
        // Only the waiting states are timed (idle grace, header grace,
        // timeouts, request start); spare the clock for the others.
        if matches!(state, NEW | READING | IDLE) {
            let now = self.started.elapsed().as_nanos() as u64;
            self.since.store(now, Ordering::Release);
        }
        self.state.store(state, Ordering::Release);
        // Only a stopping connection task cares about state changes.
        if self.events.load(Ordering::Acquire) & STOP != 0 {
            self.raise(CHANGED);
        }
    }

    /// Raise `bits` for the connection task and wake it.
    pub(crate) fn raise(&self, bits: u8) {
        self.events.fetch_or(bits, Ordering::AcqRel);
        self.waker.wake();
    }

    /// Resolves with the events raised since `seen` (a `CHANGED` pulse is
    /// consumed). Lock-free.
    pub(crate) fn poll_events(&self, cx: &mut Context<'_>, seen: u8) -> Poll<u8> {
        let check = || {
            let events = self.events.load(Ordering::Acquire);
            let fresh = events & (STOP | FORCE) & !seen;
            if fresh != 0 || events & PULSES != 0 {
                // Pulses are consumed; STOP and FORCE stay raised.
                let events = self.events.fetch_and(!PULSES, Ordering::AcqRel);
                Some(events)
            } else {
                None
            }
        };
        if let Some(e) = check() {
            return Poll::Ready(e);
        }
        self.waker.register(cx.waker());
        match check() {
            Some(e) => Poll::Ready(e),
            None => Poll::Pending,
        }
    }

    /// Called now and then by the server's sweeper: raise a timeout for a
    /// request head that takes too long, or a connection idle too long.
    /// One periodic pass instead of a timer armed on every request.
    pub(crate) fn sweep(&self, now: Instant, head_timeout: Duration, idle_timeout: Duration) {
        let state = self.state();
        let age = now.saturating_duration_since(self.state_since());
        match state {
            READING if age >= head_timeout => self.raise(TIMEOUT_HEAD),
            NEW | IDLE if age >= idle_timeout => self.raise(TIMEOUT_IDLE),
            _ => {}
        }
    }

    /// When the current state began.
    pub(crate) fn state_since(&self) -> Instant {
        self.started + Duration::from_nanos(self.since.load(Ordering::Acquire))
    }

    pub(crate) fn is_h2(&self) -> bool {
        self.h2.load(Ordering::Relaxed)
    }

    pub(crate) fn peer(&self) -> &str {
        &self.peer
    }

    pub(crate) fn request_started(&self, method: &Method, uri: &Uri) {
        self.active.fetch_add(1, Ordering::AcqRel);
        self.requests.fetch_add(1, Ordering::Relaxed);
        // The request began with its first byte (HTTP/1); reuse that time
        // rather than read the clock again.
        let started = if self.state() == READING {
            self.state_since()
        } else {
            Instant::now()
        };
        if let Ok(mut current) = self.current.lock() {
            *current = Some(ReqInfo {
                method: method.clone(),
                uri: uri.clone(),
                started,
            });
        }
        self.phase.store(HANDLER, Ordering::Relaxed);
        self.set_state(ACTIVE);
    }

    pub(crate) fn response_started(&self, upgrade: bool) {
        if upgrade {
            self.upgrading.store(true, Ordering::Release);
        }
        self.phase.store(WRITING_BODY, Ordering::Relaxed);
    }

    pub(crate) fn request_finished(&self) {
        if self.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            if self.upgrading.load(Ordering::Acquire) {
                self.set_state(UPGRADED);
                let id = self.entry.load(Ordering::Relaxed);
                self.registry.set_kind(id, Kind::Upgraded);
            } else {
                self.set_state(IDLE);
            }
        }
    }

    /// Abort every request on this connection: their futures and bodies
    /// end with a CANCEL error, which HTTP/2 turns into RST_STREAM(CANCEL).
    pub(crate) fn force(&self) {
        self.forced.store(true, Ordering::Release);
        self.force_notify.notify_waiters();
    }

    /// Resolves once [`force`](Self::force) was called. Cancellation safe.
    pub(crate) async fn forced(&self) {
        loop {
            let notified = self.force_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.forced.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    /// Shut an upgraded connection down from outside (at the deadline).
    pub(crate) fn shutdown_upgraded(&self) {
        if let Ok(fd) = self.upgraded_fd.lock() {
            if let Some(fd) = fd.as_ref() {
                let _ = fd.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

/// The lifecycle entered Stopping.
pub(crate) const STOP: u8 = 1;
/// The shutdown was forced.
pub(crate) const FORCE: u8 = 2;
/// The connection's state changed (raised only after `STOP`).
pub(crate) const CHANGED: u8 = 4;
/// A request head took longer than the header-read timeout.
pub(crate) const TIMEOUT_HEAD: u8 = 8;
/// The connection was idle longer than the idle timeout.
pub(crate) const TIMEOUT_IDLE: u8 = 16;
const PULSES: u8 = CHANGED | TIMEOUT_HEAD | TIMEOUT_IDLE;

impl Describe for ConnShared {
    fn sweep(&self, now: Instant) {
        ConnShared::sweep(self, now, self.timeouts.0, self.timeouts.1);
    }

    fn stop(&self) {
        self.raise(STOP);
    }

    fn force(&self) {
        ConnShared::force(self);
        self.raise(FORCE);
    }

    fn name(&self) -> String {
        let state = self.state();
        let current = self.current.lock().ok();
        match (state, current.as_ref().and_then(|c| c.as_ref())) {
            (ACTIVE | UPGRADED, Some(req)) => {
                let proto = if self.is_h2() { "h2" } else { "http/1.1" };
                let what = if state == UPGRADED { "upgraded " } else { "" };
                format!(
                    "{what}{} {} ({proto}) from {}",
                    req.method,
                    req.uri.path(),
                    self.peer
                )
            }
            (READING, _) => format!("half-sent request from {}", self.peer),
            (NEW, _) => format!("new connection from {}", self.peer),
            _ => format!("idle connection from {}", self.peer),
        }
    }

    fn detail(&self) -> String {
        let mut s = String::new();
        if let Some(req) = self.current.lock().ok().as_ref().and_then(|c| c.as_ref()) {
            if matches!(self.state(), ACTIVE) {
                let phase = match self.phase.load(Ordering::Relaxed) {
                    HANDLER => "in handler",
                    _ => "writing body",
                };
                let _ = write!(s, "{phase}, request age {}, ", Secs(req.started.elapsed()));
            }
        }
        let _ = write!(
            s,
            "connection age {}, {} bytes in, {} bytes out, {} requests",
            Secs(self.started.elapsed()),
            self.bytes_in.load(Ordering::Relaxed),
            self.bytes_out.load(Ordering::Relaxed),
            self.requests.load(Ordering::Relaxed),
        );
        s
    }
}

/// The IO hyper reads and writes through. It counts bytes, notices the
/// first bytes of a request, and hands the socket back to the connection
/// task when hyper (or the owner of an upgraded connection) drops it.
pub(crate) struct ConnIo {
    stream: Option<Stream>,
    shared: Arc<ConnShared>,
    first_read: bool,
    back: Option<oneshot::Sender<Stream>>,
    // Keeps the connection in the registry for as long as anyone holds the
    // IO, including after an upgrade.
    _entry: InFlight,
}

impl ConnIo {
    pub(crate) fn new(
        stream: Stream,
        shared: Arc<ConnShared>,
        entry: InFlight,
    ) -> (Self, oneshot::Receiver<Stream>) {
        let (tx, rx) = oneshot::channel();
        shared.entry.store(entry.id(), Ordering::Relaxed);
        (
            ConnIo {
                stream: Some(stream),
                shared,
                first_read: true,
                back: Some(tx),
                _entry: entry,
            },
            rx,
        )
    }

    fn stream(&mut self) -> io::Result<&mut Stream> {
        self.stream
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "stream handed back"))
    }
}

impl Drop for ConnIo {
    fn drop(&mut self) {
        if let (Some(stream), Some(back)) = (self.stream.take(), self.back.take()) {
            let _ = back.send(stream);
        }
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let stream = this.stream()?;
        let res = Pin::new(stream).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            let n = buf.filled().len() - before;
            if n > 0 {
                let shared = &this.shared;
                add(&shared.bytes_in, n);
                if this.first_read {
                    this.first_read = false;
                    if buf.filled()[before..].starts_with(&H2_PREFACE[..n.min(H2_PREFACE.len())]) {
                        shared.h2.store(true, Ordering::Relaxed);
                    }
                }
                let state = shared.state();
                if state == NEW || state == IDLE {
                    shared.set_state(READING);
                }
            }
        }
        res
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.take_upgrade_fd();
        let res = Pin::new(this.stream()?).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res {
            add(&this.shared.bytes_out, n);
        }
        res
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.take_upgrade_fd();
        let res = Pin::new(this.stream()?).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = res {
            add(&this.shared.bytes_out, n);
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().stream()?).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.shared.upgrading.load(Ordering::Acquire) {
            // The owner of an upgraded connection closes it for real.
            return Pin::new(this.stream()?).poll_shutdown(cx);
        }
        // hyper is closing an HTTP connection. Only flush: the connection
        // task sends the FIN once it has checked that no request arrived
        // meanwhile (one that did gets a 503 rather than a bare close).
        Pin::new(this.stream()?).poll_flush(cx)
    }
}

impl ConnIo {
    fn take_upgrade_fd(&mut self) {
        if self.shared.upgrading.load(Ordering::Relaxed) {
            let Ok(mut fd) = self.shared.upgraded_fd.lock() else {
                return;
            };
            if fd.is_none() {
                if let Some(Ok(dup)) = self.stream.as_ref().map(Stream::dup) {
                    *fd = Some(dup);
                }
            }
        }
    }
}

/// Count bytes: the IO has one owner at a time, so a plain load and store
/// does (a locked add on every read and write is not free).
fn add(counter: &AtomicU64, n: usize) {
    counter.store(
        counter.load(Ordering::Relaxed) + n as u64,
        Ordering::Relaxed,
    );
}

/// Canned responses written by the connection task itself, outside hyper.
pub(crate) const RESPONSE_408: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
pub(crate) const RESPONSE_503: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\nretry-after: 1\r\ncontent-length: 0\r\n\r\n";

/// Close a connection hyper no longer owns, politely: answer a request that
/// arrived unread (or a half-sent head) if asked to, send FIN, and keep
/// reading (and discarding) until the peer closes, bounded by `linger`, so
/// that late bytes do not turn the close into a reset.
///
/// The lingering part runs detached: it must not hold the drain, since the
/// response has already been delivered and a client that keeps its socket
/// open would otherwise delay the exit by the whole linger.
pub(crate) async fn close_politely(
    mut stream: Stream,
    answer: Option<&'static [u8]>,
    unread_gets_503: bool,
    linger: Duration,
) {
    let mut buf = [0u8; 4096];
    let mut response = answer;
    if response.is_none() && unread_gets_503 {
        if let Ok(n) = stream.try_read(&mut buf) {
            if n > 0 {
                // A request arrived after hyper decided to close: answer it.
                response = Some(RESPONSE_503);
            }
        }
    }
    if let Some(bytes) = response {
        let _ = tokio::time::timeout(linger, stream.write_all(bytes)).await;
    }
    let _ = stream.shutdown().await;
    if linger.is_zero() {
        return;
    }
    tokio::spawn(async move {
        let _ = tokio::time::timeout(linger, async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
    });
}
