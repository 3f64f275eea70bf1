//! When to act on a connection, protocol by protocol: pure functions of
//! the connection's state, its timeouts and whether the lifecycle stops.
//!
//! The two protocols differ where it matters:
//!
//! | | HTTP/1 (and undecided) | HTTP/2 |
//! |---|---|---|
//! | half-sent head | `408` at `header_read` (stopping: `header_grace`) | not a thing: frames between streams are idle traffic |
//! | idle | close at `idle` (stopping: `idle_grace`) | GOAWAY at `idle` (stopping: at once) |
//! | request in flight | `Connection: close` on its response (service) | GOAWAY at once when stopping; streams finish |
//! | closing | at a request boundary, FIN | two-phase GOAWAY, the first phase bounded by `goaway` |

use std::time::Duration;

use tokio::time::Instant;

use super::state::Activity;

/// Timeouts of a connection. Time is always a `Duration`.
#[derive(Debug, Clone)]
pub(crate) struct Timeouts {
    /// Stopping: close an idle (or never-used) HTTP/1 connection once it has
    /// been idle this long.
    pub(crate) idle_grace: Duration,
    /// Stopping: how long a half-sent head may take, from its first byte.
    pub(crate) header_grace: Duration,
    /// Serving: how long a request head (or protocol detection) may take.
    pub(crate) header_read: Duration,
    /// Serving: how long a connection may stay idle.
    pub(crate) idle: Duration,
    /// HTTP/2: how long each phase of the two-phase GOAWAY may wait for the
    /// client (its PING acknowledgement; then the close).
    pub(crate) goaway: Duration,
    /// After closing: how long to keep reading what the client still sends.
    pub(crate) linger: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            idle_grace: Duration::from_millis(50),
            header_grace: Duration::from_secs(1),
            header_read: Duration::from_secs(30),
            idle: Duration::from_secs(120),
            goaway: Duration::from_millis(250),
            linger: Duration::from_millis(500),
        }
    }
}

/// What the driver does when a deadline is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// HTTP/1: answer the half-sent head `408 Request Timeout`, close.
    Answer408,
    /// HTTP/1: close at the request boundary (the connection is idle).
    CloseIdle,
    /// HTTP/2: begin the two-phase GOAWAY.
    GoAway,
}

/// The next thing to do and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Next {
    pub(crate) at: Instant,
    pub(crate) action: Action,
}

/// HTTP/1, and a connection whose protocol is not decided yet.
pub(crate) fn http1(
    t: &Timeouts,
    activity: Activity,
    since: Instant,
    stopping: bool,
) -> Option<Next> {
    let (timeout, action) = match activity {
        Activity::New | Activity::Idle if stopping => (t.idle_grace.min(t.idle), Action::CloseIdle),
        Activity::New | Activity::Idle => (t.idle, Action::CloseIdle),
        Activity::Reading if stopping => (t.header_grace.min(t.header_read), Action::Answer408),
        Activity::Reading => (t.header_read, Action::Answer408),
        // A response in flight carries `Connection: close` once draining;
        // an upgraded connection belongs to its handler.
        Activity::Active | Activity::Upgraded => return None,
    };
    Some(Next {
        at: since + timeout,
        action,
    })
}

/// HTTP/2.
pub(crate) fn http2(
    t: &Timeouts,
    activity: Activity,
    since: Instant,
    stopping: bool,
    now: Instant,
) -> Option<Next> {
    if stopping {
        // At once, streams in flight or not: the GOAWAY lets them finish.
        return Some(Next {
            at: now,
            action: Action::GoAway,
        });
    }
    match activity {
        Activity::Active | Activity::Upgraded => None,
        Activity::New | Activity::Reading | Activity::Idle => Some(Next {
            at: since + t.idle,
            action: Action::GoAway,
        }),
    }
}

/// While serving, when to look at the connection again at the latest,
/// whatever it does meanwhile: its state changes without waking the driver
/// (that would cost on every request), so deadlines are re-checked lazily.
/// Any state entered after `now` begins after `now`, so none of its
/// deadlines falls before `now + min(timeouts)`; the current state's own
/// deadline is taken into account by the caller.
pub(crate) fn recheck(t: &Timeouts, now: Instant) -> Instant {
    now + t.header_read.min(t.idle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> Timeouts {
        Timeouts {
            idle_grace: Duration::from_millis(50),
            header_grace: Duration::from_secs(1),
            header_read: Duration::from_secs(30),
            idle: Duration::from_secs(120),
            goaway: Duration::from_millis(250),
            linger: Duration::ZERO,
        }
    }

    #[test]
    fn http1_times_heads_and_idleness_with_the_running_or_draining_bound() {
        let t = t();
        let s = Instant::now();
        let at = |a, stopping| http1(&t, a, s, stopping);
        assert_eq!(
            at(Activity::Reading, false).unwrap(),
            Next {
                at: s + t.header_read,
                action: Action::Answer408
            }
        );
        assert_eq!(
            at(Activity::Reading, true).unwrap(),
            Next {
                at: s + t.header_grace,
                action: Action::Answer408
            }
        );
        assert_eq!(
            at(Activity::Idle, false).unwrap(),
            Next {
                at: s + t.idle,
                action: Action::CloseIdle
            }
        );
        assert_eq!(
            at(Activity::New, true).unwrap(),
            Next {
                at: s + t.idle_grace,
                action: Action::CloseIdle
            }
        );
        assert_eq!(at(Activity::Active, true), None);
        assert_eq!(at(Activity::Upgraded, false), None);
    }

    #[test]
    fn a_draining_grace_never_exceeds_the_running_timeout() {
        let mut t = t();
        t.header_read = Duration::from_millis(200);
        t.idle = Duration::from_millis(10);
        let s = Instant::now();
        assert_eq!(
            http1(&t, Activity::Reading, s, true).unwrap().at,
            s + t.header_read
        );
        assert_eq!(http1(&t, Activity::Idle, s, true).unwrap().at, s + t.idle);
    }

    #[test]
    fn http2_never_answers_408_and_goes_away_at_once_when_stopping() {
        let t = t();
        let s = Instant::now();
        let now = s + Duration::from_secs(5);
        for a in [Activity::New, Activity::Reading, Activity::Idle] {
            let next = http2(&t, a, s, false, now).unwrap();
            assert_eq!(
                next,
                Next {
                    at: s + t.idle,
                    action: Action::GoAway
                },
                "{a:?}"
            );
        }
        assert_eq!(http2(&t, Activity::Active, s, false, now), None);
        for a in [Activity::Idle, Activity::Active] {
            assert_eq!(
                http2(&t, a, s, true, now).unwrap(),
                Next {
                    at: now,
                    action: Action::GoAway
                }
            );
        }
    }

    #[test]
    fn the_lazy_recheck_never_falls_after_the_deadline_of_a_later_state() {
        let t = t();
        let now = Instant::now();
        let at = recheck(&t, now);
        assert!(at > now, "a re-check in the past would spin");
        // A state entered at `now` or later has a deadline no earlier.
        for a in [Activity::New, Activity::Reading, Activity::Idle] {
            assert!(at <= http1(&t, a, now, false).unwrap().at, "{a:?}");
            assert!(at <= http2(&t, a, now, false, now).unwrap().at, "{a:?}");
        }
    }
}
