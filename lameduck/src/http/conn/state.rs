//! What one connection is doing, as the IO wrapper, the request wrapper
//! and the driver see it, and the one representation of "stop" and
//! "force" the connection reacts to.
//!
//! The state lives in three small enums ([`Protocol`], [`Activity`],
//! [`Stop`]); each is kept in an atomic only because it is written from
//! more than one task (HTTP/2 handlers run on tasks of their own), and every
//! transition is made by one method here.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use http::uri::PathAndQuery;
use http::{Method, Uri};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::http::{Peer, ShutdownSignal};
use crate::registry::{Describe, Tag};
use crate::report::{Kind, Secs};

/// The protocol spoken on the connection, once the first bytes decide it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Protocol {
    /// Not enough bytes yet: they are a prefix of the HTTP/2 preface (or
    /// none came). Timed like an HTTP/1 head.
    Undecided = 0,
    /// HTTP/1.x.
    Http1 = 1,
    /// HTTP/2 by prior knowledge (h2c).
    Http2 = 2,
}

impl Protocol {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Protocol::Http1,
            2 => Protocol::Http2,
            _ => Protocol::Undecided,
        }
    }
}

/// What the client is doing on the connection.
///
/// ```text
/// New ──first byte──▶ Reading ──request dispatched──▶ Active ──last response done──▶ Idle
///                        ▲  (HTTP/1 head, or the bytes                   │  ──101──▶ Upgraded
///                        │   deciding the protocol)                      │
///                        └──────────── first byte of the next head ◀─────┘ (HTTP/1)
/// Reading ──HTTP/2 preface complete──▶ Idle ──stream──▶ Active ──last stream done──▶ Idle
/// ```
///
/// On HTTP/2 bytes never move the connection to `Reading`: frames between
/// streams (SETTINGS, PING) leave it idle, and a half-sent frame is the h2
/// codec's business, not a request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Activity {
    /// Accepted, no byte received yet.
    New = 0,
    /// An HTTP/1 request head (or the protocol-deciding bytes) has begun
    /// and no request has been dispatched yet.
    Reading = 1,
    /// At least one request in flight.
    Active = 2,
    /// Between requests.
    Idle = 3,
    /// Switched protocols (101); hyper no longer owns the connection.
    Upgraded = 4,
}

impl Activity {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Activity::Reading,
            2 => Activity::Active,
            3 => Activity::Idle,
            4 => Activity::Upgraded,
            _ => Activity::New,
        }
    }

    /// The states whose start is timed (timeouts count from it).
    fn is_timed(self) -> bool {
        matches!(self, Activity::New | Activity::Reading | Activity::Idle)
    }
}

/// What the lifecycle asks of the connection. Only moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub(crate) enum Stop {
    /// Serve.
    Serving = 0,
    /// Finish what is in flight and close at the next boundary.
    Stopping = 1,
    /// Abort now.
    Forced = 2,
}

impl Stop {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Stop::Stopping,
            2 => Stop::Forced,
            _ => Stop::Serving,
        }
    }
}

/// Where the request on a connection is, for the report.
const HANDLER: u8 = 0;
const WRITING_BODY: u8 = 1;

#[derive(Debug)]
struct ReqInfo {
    method: Method,
    // Only the path (and query) is reported: its clone shares hyper's
    // buffer (no allocation), and it is half the size of a whole `Uri`
    // (the scheme and authority of an HTTP/1 request are empty anyway).
    path: Option<PathAndQuery>,
    started: Instant,
}

/// State shared by the IO wrapper, the per-request service wrapper, the
/// registry (to describe itself and deliver stop and force) and the driver.
#[derive(Debug)]
pub(crate) struct ConnShared {
    peer: Peer,
    started: Instant,
    protocol: AtomicU8,
    activity: AtomicU8,
    /// Nanoseconds since `started` of the last timed activity change.
    since: AtomicU64,
    stop: AtomicU8,
    active: AtomicU64,
    requests: AtomicU64,
    pub(super) bytes_in: AtomicU64,
    pub(super) bytes_out: AtomicU64,
    pub(super) upgrading: AtomicBool,
    current: Mutex<Option<ReqInfo>>,
    phase: AtomicU8,
    /// The driver's wake-up: a pending flag and a lock-free waker, so that
    /// raising it costs next to nothing.
    pending: AtomicBool,
    waker: AtomicWaker,
    /// Whether the driver wants to hear of activity changes (while
    /// stopping or going away); off while serving, to spare the hot path.
    watching: AtomicBool,
    /// Set when the driver wants the IO to supply the HTTP/2 shutdown
    /// PING's acknowledgement (see `io.rs`).
    pub(super) supply_ack: AtomicBool,
    /// PING acknowledgements the client sent (HTTP/2).
    pub(super) ping_acks: AtomicU32,
    /// Request and body futures wait on this for a force.
    force_notify: Notify,
    /// A duplicate of the socket, taken when the connection upgrades, so
    /// that it can be shut down at the deadline while a handler owns it.
    pub(super) upgraded_fd: Mutex<Option<socket2::Socket>>,
    tag: OnceLock<Tag>,
    signal: ShutdownSignal,
}

impl ConnShared {
    pub(crate) fn new(peer: Peer, signal: ShutdownSignal) -> Self {
        ConnShared {
            peer,
            started: Instant::now(),
            protocol: AtomicU8::new(Protocol::Undecided as u8),
            activity: AtomicU8::new(Activity::New as u8),
            since: AtomicU64::new(0),
            stop: AtomicU8::new(Stop::Serving as u8),
            active: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            upgrading: AtomicBool::new(false),
            current: Mutex::new(None),
            phase: AtomicU8::new(HANDLER),
            pending: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            watching: AtomicBool::new(false),
            supply_ack: AtomicBool::new(false),
            ping_acks: AtomicU32::new(0),
            force_notify: Notify::new(),
            upgraded_fd: Mutex::new(None),
            tag: OnceLock::new(),
            signal,
        }
    }

    /// The registry entry, to mark the connection upgraded.
    pub(crate) fn set_tag(&self, tag: Tag) {
        let _ = self.tag.set(tag);
    }

    /// The lifecycle's shutdown signal, as handlers see it.
    pub(crate) fn signal(&self) -> &ShutdownSignal {
        &self.signal
    }

    pub(crate) fn peer(&self) -> &Peer {
        &self.peer
    }

    pub(crate) fn protocol(&self) -> Protocol {
        Protocol::from_u8(self.protocol.load(Ordering::Acquire))
    }

    pub(super) fn set_protocol(&self, protocol: Protocol) {
        self.protocol.store(protocol as u8, Ordering::Release);
    }

    pub(crate) fn activity(&self) -> Activity {
        Activity::from_u8(self.activity.load(Ordering::Acquire))
    }

    /// When the current timed activity (`New`, `Reading`, `Idle`) began.
    pub(crate) fn since(&self) -> Instant {
        self.started + Duration::from_nanos(self.since.load(Ordering::Acquire))
    }

    pub(super) fn set_activity(&self, activity: Activity) {
        // Only the waiting states are timed; spare the clock for the others.
        if activity.is_timed() {
            let now = self.started.elapsed().as_nanos() as u64;
            self.since.store(now, Ordering::Release);
        }
        self.activity.store(activity as u8, Ordering::Release);
        if self.watching.load(Ordering::Acquire) {
            self.wake_driver();
        }
    }

    pub(crate) fn stop_level(&self) -> Stop {
        Stop::from_u8(self.stop.load(Ordering::Acquire))
    }

    /// Raise the stop level (it never goes down) and wake the driver; a
    /// force also wakes every request of the connection.
    pub(crate) fn raise(&self, stop: Stop) {
        let before = self.stop.fetch_max(stop as u8, Ordering::AcqRel);
        if before >= stop as u8 {
            return;
        }
        if stop == Stop::Forced {
            self.force_notify.notify_waiters();
        }
        self.wake_driver();
    }

    /// Whether activity changes should wake the driver.
    pub(super) fn watch(&self, on: bool) {
        self.watching.store(on, Ordering::Release);
    }

    fn wake_driver(&self) {
        self.pending.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Resolves once the driver was woken (by a stop, a force, or a watched
    /// activity change) since it last resolved. Lock-free.
    pub(super) fn poll_wake(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.pending.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        if self.pending.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    pub(crate) fn request_started(&self, method: &Method, uri: &Uri) {
        self.active.fetch_add(1, Ordering::AcqRel);
        self.requests.fetch_add(1, Ordering::Relaxed);
        // The request began with its first byte (HTTP/1); reuse that time
        // rather than read the clock again.
        let started = if self.activity() == Activity::Reading {
            self.since()
        } else {
            Instant::now()
        };
        if let Ok(mut current) = self.current.lock() {
            *current = Some(ReqInfo {
                method: method.clone(),
                path: uri.path_and_query().cloned(),
                started,
            });
        }
        self.phase.store(HANDLER, Ordering::Relaxed);
        self.set_activity(Activity::Active);
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
                if let Some(tag) = self.tag.get() {
                    tag.set_kind(Kind::Upgraded);
                }
                self.set_activity(Activity::Upgraded);
            } else {
                self.set_activity(Activity::Idle);
            }
        }
    }

    /// Resolves once the connection is forced. Cancellation safe.
    pub(crate) async fn forced(&self) {
        loop {
            let notified = self.force_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.stop_level() == Stop::Forced {
                return;
            }
            notified.await;
        }
    }

    /// Shut an upgraded connection down from outside (at the deadline).
    pub(super) fn shutdown_upgraded(&self) {
        if let Ok(fd) = self.upgraded_fd.lock() {
            if let Some(fd) = fd.as_ref() {
                let _ = fd.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

impl Describe for ConnShared {
    fn stop(&self) {
        self.raise(Stop::Stopping);
    }

    fn force(&self) {
        self.raise(Stop::Forced);
    }

    fn name(&self) -> String {
        let activity = self.activity();
        let current = self.current.lock().ok();
        match (activity, current.as_ref().and_then(|c| c.as_ref())) {
            (Activity::Active | Activity::Upgraded, Some(req)) => {
                let proto = match self.protocol() {
                    Protocol::Http2 => "h2",
                    _ => "http/1.1",
                };
                let what = if activity == Activity::Upgraded {
                    "upgraded "
                } else {
                    ""
                };
                format!(
                    "{what}{} {} ({proto}) from {}",
                    req.method,
                    req.path.as_ref().map_or("/", PathAndQuery::path),
                    self.peer
                )
            }
            (Activity::Reading, _) => format!("half-sent request from {}", self.peer),
            (Activity::New, _) => format!("new connection from {}", self.peer),
            _ => format!("idle connection from {}", self.peer),
        }
    }

    fn detail(&self) -> String {
        let mut s = String::new();
        if let Some(req) = self.current.lock().ok().as_ref().and_then(|c| c.as_ref()) {
            if self.activity() == Activity::Active {
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
