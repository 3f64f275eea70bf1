//! The connection's own future: drives hyper, and decides from the
//! connection's state, its protocol's policy and the lifecycle's stop level
//! when and how hyper's part of the connection ends.
//!
//! ```text
//!             ┌──────── policy: 408 (HTTP/1 head too slow) ───────────────▶ End::HeadTimedOut
//!             │
//! Serving ────┼── policy: close idle (HTTP/1) ──▶ Closing ──hyper done──▶ End::Finished
//!             │                                        └──head too slow──▶ End::HeadTimedOut
//!             └── policy: GOAWAY (HTTP/2) ──▶ GoingAway ──PING ACK: h2 sends the final GOAWAY, closes──▶ End::Finished
//!                                                 │ no ACK within `goaway`: supply it
//!                                                 ▼
//!                                            FinalGoAway ──h2 closes──▶ End::Finished
//!                                                 │ still open `goaway` after its last stream
//!                                                 ▼
//!                                            End::Abandoned (FIN)
//! any step ──force──▶ End::Forced
//! ```
//!
//! Every wait of a step is bounded by a timeout of its own, except a
//! request in flight (and an upgraded connection), which the lifecycle's
//! deadline bounds.

use std::future::poll_fn;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::close::{close_politely, RESPONSE_408};
use super::io::{ConnIo, Transport};
use super::policy::{self, Action, Next, Timeouts};
use super::state::{Activity, ConnShared, Protocol, Stop};
use super::Ctx;
use crate::http::service::{BoxError, Tracked};
use crate::registry::InFlight;

/// Where the driver is with hyper's part of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// hyper serves; the protocol's policy says when to act.
    Serving,
    /// HTTP/1: hyper was asked to close at the next request boundary.
    Closing,
    /// HTTP/2: the first GOAWAY and h2's shutdown PING are out; waiting
    /// for the client's acknowledgement until `until`. `acks`: how many
    /// PING acknowledgements the client had sent before.
    GoingAway { until: Instant, acks: u32 },
    /// HTTP/2: h2 has (or is about to have) the acknowledgement and sends
    /// the final GOAWAY; it closes once its last stream is done. `until`:
    /// when to stop waiting for that close, counted from when no stream is
    /// left.
    FinalGoAway { until: Option<Instant> },
}

/// How hyper's part of the connection ended.
#[derive(Debug)]
pub(crate) enum End {
    /// By itself, with its result.
    Finished(Result<(), BoxError>),
    /// A half-sent HTTP/1 head outlasted its timeout: answer `408`.
    HeadTimedOut,
    /// h2 did not close after the final GOAWAY: close with a FIN.
    Abandoned,
    /// The lifecycle forced the connection: abort.
    Forced,
}

/// What the driver must do now.
#[derive(Debug)]
pub(crate) enum Decision {
    /// Nothing before `at` (`None`: before something wakes the driver).
    Wait(Option<Instant>),
    /// Ask hyper for a graceful close (HTTP/1: at the request boundary;
    /// HTTP/2: the two-phase GOAWAY).
    Shutdown,
    /// End hyper's part of the connection.
    End(End),
}

/// The state machine, without hyper: it reads the connection's state and
/// the clock, and moves from step to step. Every transition is here.
#[derive(Debug)]
pub(crate) struct Driver {
    pub(crate) step: Step,
    /// Whether the driver closed the connection between requests: only
    /// then can bytes left unread be a new request (rather than the rest of
    /// a body the handler did not read) that deserves a 503.
    pub(crate) closed_idle: bool,
}

impl Driver {
    pub(crate) fn new() -> Self {
        Driver {
            step: Step::Serving,
            closed_idle: false,
        }
    }

    pub(crate) fn decide(&mut self, s: &ConnShared, t: &Timeouts, now: Instant) -> Decision {
        let stop = s.stop_level();
        if stop == Stop::Forced {
            return Decision::End(End::Forced);
        }
        let stopping = stop == Stop::Stopping;
        let activity = s.activity();
        let since = s.since();
        loop {
            match self.step {
                Step::Serving => {
                    // While stopping, every change of state matters at once
                    // (an HTTP/1 response done: close now); while serving,
                    // deadlines are re-checked lazily (see `policy::recheck`).
                    s.watch(stopping);
                    let next = match s.protocol() {
                        Protocol::Http2 => policy::http2(t, activity, since, stopping, now),
                        Protocol::Http1 | Protocol::Undecided => {
                            policy::http1(t, activity, since, stopping)
                        }
                    };
                    return match next {
                        Some(Next { at, action }) if at <= now => match action {
                            Action::Answer408 => Decision::End(End::HeadTimedOut),
                            Action::CloseIdle => {
                                self.step = Step::Closing;
                                self.closed_idle = true;
                                s.watch(true);
                                Decision::Shutdown
                            }
                            Action::GoAway => {
                                self.step = Step::GoingAway {
                                    until: now + t.goaway,
                                    acks: s.ping_acks.load(Ordering::Acquire),
                                };
                                s.watch(true);
                                Decision::Shutdown
                            }
                        },
                        next if stopping => Decision::Wait(next.map(|n| n.at)),
                        next => {
                            let recheck = policy::recheck(t, now);
                            Decision::Wait(Some(next.map_or(recheck, |n| n.at.min(recheck))))
                        }
                    };
                }
                Step::Closing => {
                    // hyper closes at the boundary; a head begun meanwhile
                    // is still bounded.
                    return match policy::http1(t, activity, since, stopping) {
                        Some(Next {
                            at,
                            action: Action::Answer408,
                        }) if at <= now => Decision::End(End::HeadTimedOut),
                        Some(Next {
                            at,
                            action: Action::Answer408,
                        }) => Decision::Wait(Some(at)),
                        _ => Decision::Wait(None),
                    };
                }
                Step::GoingAway { until, acks } => {
                    if now < until {
                        return Decision::Wait(Some(until));
                    }
                    if s.ping_acks.load(Ordering::Acquire) == acks {
                        // The client did not acknowledge: supply it.
                        s.supply_ack.store(true, Ordering::Release);
                    }
                    self.step = Step::FinalGoAway { until: None };
                }
                Step::FinalGoAway { until } => {
                    if activity == Activity::Active {
                        // Streams in flight end by themselves (or at the
                        // deadline); count from when the last one ends.
                        self.step = Step::FinalGoAway { until: None };
                        return Decision::Wait(None);
                    }
                    return match until {
                        None => {
                            let until = now + t.goaway;
                            self.step = Step::FinalGoAway { until: Some(until) };
                            Decision::Wait(Some(until))
                        }
                        Some(until) if now >= until => Decision::End(End::Abandoned),
                        Some(until) => Decision::Wait(Some(until)),
                    };
                }
            }
        }
    }
}

/// How long a forced connection may take to write its resets.
const ABORT_FLUSH: Duration = Duration::from_millis(20);

/// Serve one connection to its end.
///
/// This future is what every connection's task holds for the connection's
/// whole life, so it is kept small: hyper's connection and the closing
/// futures are boxed (allocated once, the latter only at the close); the
/// unit test `the_connection_future_stays_small` pins its size.
pub(crate) async fn run<T, S, B>(
    stream: T,
    shared: Arc<ConnShared>,
    entry: InFlight,
    ctx: Arc<Ctx>,
    service: S,
) where
    T: Transport,
    S: super::ConnService<B>,
    B: super::ConnBody,
{
    let (io, back) = ConnIo::new(stream, Arc::clone(&shared), entry);
    let service = Tracked {
        inner: service,
        conn: Arc::clone(&shared),
        connect_info: ctx.connect_info,
    };
    // Boxed rather than pinned on the stack: dropping it must drop the IO,
    // which hands the transport back for a polite close.
    let mut conn = Box::pin(
        ctx.builder
            .serve_connection_with_upgrades(TokioIo::new(io), service),
    );
    let t = &ctx.timeouts;
    let mut driver = Driver::new();
    // One timer for the connection's life, moved only when its deadline
    // changes.
    let sleep = tokio::time::sleep_until(Instant::now());
    tokio::pin!(sleep);
    let mut armed;

    let end = loop {
        let now = Instant::now();
        match driver.decide(&shared, t, now) {
            Decision::End(end) => break end,
            Decision::Shutdown => {
                conn.as_mut().graceful_shutdown();
                continue;
            }
            Decision::Wait(at) => {
                armed = at.is_some();
                if let Some(at) = at {
                    if sleep.deadline() != at {
                        sleep.as_mut().reset(at);
                    }
                }
            }
        }
        tokio::select! {
            biased;
            r = conn.as_mut() => break End::Finished(r),
            () = poll_fn(|cx| shared.poll_wake(cx)) => {}
            () = &mut sleep, if armed => {}
        }
    };

    let linger = t.linger;
    let protocol = shared.protocol();
    match end {
        End::Finished(result) => {
            drop(conn);
            let Ok(stream) = wait_for_stream(back, &shared).await else {
                return;
            };
            // A closed idle HTTP/1 connection (or one still deciding its
            // protocol, which hyper-util ends with an error) may have a
            // request in the socket that hyper never read.
            let at_boundary = driver.closed_idle
                && match protocol {
                    Protocol::Http1 => result.is_ok(),
                    Protocol::Undecided => true,
                    Protocol::Http2 => false,
                };
            Box::pin(close_politely(stream, None, at_boundary, linger)).await;
        }
        End::HeadTimedOut => {
            drop(conn);
            if let Ok(stream) = back.await {
                Box::pin(close_politely(stream, Some(RESPONSE_408), false, linger)).await;
            }
        }
        End::Abandoned => {
            drop(conn);
            if let Ok(stream) = back.await {
                Box::pin(close_politely(stream, None, false, linger)).await;
            }
        }
        End::Forced => {
            // Abort: every request ends with CANCEL, which hyper sends as
            // RST_STREAM(CANCEL) on HTTP/2; give it a moment to write them,
            // then drop what is left (handlers see their futures dropped).
            // HTTP/1 connections end with a FIN.
            let _ = tokio::time::timeout(ABORT_FLUSH, conn.as_mut()).await;
            drop(conn);
            shared.shutdown_upgraded();
            if let Ok(Ok(stream)) = tokio::time::timeout(ABORT_FLUSH, back).await {
                Box::pin(close_politely(stream, None, false, Duration::ZERO)).await;
            }
        }
    }
}

/// Wait for the IO to come back from hyper. After an upgrade it comes back
/// only when the upgraded connection's owner drops it; when forced, the
/// socket is shut down so that the owner sees the end.
async fn wait_for_stream<T: Transport>(
    mut back: oneshot::Receiver<T>,
    shared: &ConnShared,
) -> Result<T, ()> {
    tokio::select! {
        biased;
        s = &mut back => return s.map_err(|_| ()),
        () = shared.forced() => {}
    }
    shared.shutdown_upgraded();
    back.await.map_err(|_| ())
}
