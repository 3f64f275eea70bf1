//! What happened during a shutdown: trigger, phase timings, outcomes, exit code.
//!
//! [`Lifecycle::run`](crate::Lifecycle::run) returns a [`Report`]. Its
//! [`Display`](fmt::Display) is one summary line, followed by one indented
//! line for everything that did not finish cleanly; with the `serde` feature
//! it serializes to JSON. The process exit code follows from it:
//!
//! | code | constant | meaning |
//! |---|---|---|
//! | 0 | [`exit::OK`] | every task, hook and closer finished |
//! | 1 | [`exit::FAILED`] | shutdown completed in time, but something failed (an error, a panic, a vital task that triggered the shutdown) |
//! | 3 | [`exit::DEADLINE`] | a deadline (the budget's, or a [stage](crate::stage)'s share of it) cut work that was still in flight |
//! | 4 | [`exit::FORCED`] | a second signal (or [`Handle::force`](crate::Handle::force)) cut work short |

use std::fmt;
use std::time::Duration;

use crate::lifecycle::{Phase, Trigger};

/// The documented process exit codes; see the [module documentation](self).
pub mod exit {
    /// Everything finished.
    pub const OK: u8 = 0;
    /// Shutdown completed in time, but something failed.
    pub const FAILED: u8 = 1;
    /// A deadline (the budget's, or a stage's share of it) cut work that
    /// was still in flight.
    pub const DEADLINE: u8 = 3;
    /// A second signal, or an explicit force, cut work short.
    pub const FORCED: u8 = 4;
}

/// What kind of work an [`Item`] was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize),
    serde(rename_all = "snake_case")
)]
#[non_exhaustive]
pub enum Kind {
    /// A named task from [`Handle::spawn`](crate::Handle::spawn).
    Task,
    /// An on-shutdown hook from [`Handle::on_shutdown`](crate::Handle::on_shutdown).
    Hook,
    /// A closer from [`Handle::add_closer`](crate::Handle::add_closer).
    Closer,
    /// An HTTP connection (and the request on it, if any).
    Connection,
    /// An upgraded connection, such as a WebSocket.
    Upgraded,
    /// A listener that was accepting connections.
    Listener,
}

impl Kind {
    /// A short lowercase name, such as `"task"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Task => "task",
            Kind::Hook => "hook",
            Kind::Closer => "closer",
            Kind::Connection => "connection",
            Kind::Upgraded => "upgraded",
            Kind::Listener => "listener",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How one piece of work ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize),
    serde(tag = "outcome", content = "message", rename_all = "snake_case")
)]
#[non_exhaustive]
pub enum Outcome {
    /// It finished by itself.
    Finished,
    /// It returned an error (the message is the error's `Display`).
    Failed(String),
    /// It panicked (the message is the panic payload, when it was a string).
    Panicked(String),
    /// It was still running when the deadline or a force came, and was aborted.
    Cut,
    /// It never ran: no budget was left, or the shutdown was forced first.
    Skipped,
}

impl Outcome {
    /// Whether this outcome counts as success.
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Finished)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Finished => f.write_str("finished"),
            Outcome::Failed(e) => write!(f, "failed: {e}"),
            Outcome::Panicked(e) => write!(f, "panicked: {e}"),
            Outcome::Cut => f.write_str("cut"),
            Outcome::Skipped => f.write_str("skipped"),
        }
    }
}

/// One named piece of work in a [`Report`].
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Item {
    /// What it was.
    pub kind: Kind,
    /// Its name (for HTTP work, method and path, peer, and so on).
    pub name: String,
    /// How it ended.
    pub outcome: Outcome,
    /// How long it ran (until it ended, or until it was cut).
    #[cfg_attr(feature = "serde", serde(with = "duration_secs"))]
    pub duration: Duration,
    /// Extra detail at the moment it was cut (bytes sent, phase of the
    /// request, …); empty when there is none.
    pub detail: String,
}

/// Why a shutdown was forced.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize),
    serde(tag = "cause", content = "detail", rename_all = "snake_case")
)]
#[non_exhaustive]
pub enum ForceCause {
    /// The grace period ran out.
    Deadline,
    /// A second signal arrived (or `SIGQUIT`).
    Signal(crate::Signal),
    /// [`Handle::force`](crate::Handle::force) was called.
    Requested(String),
}

impl fmt::Display for ForceCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForceCause::Deadline => f.write_str("deadline"),
            ForceCause::Signal(s) => write!(f, "second signal {s}"),
            ForceCause::Requested(r) => write!(f, "requested: {r}"),
        }
    }
}

/// How long one phase lasted.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct PhaseTiming {
    /// The phase.
    pub phase: Phase,
    /// When it began, counted from the trigger.
    #[cfg_attr(feature = "serde", serde(with = "duration_secs"))]
    pub start: Duration,
    /// How long it lasted.
    #[cfg_attr(feature = "serde", serde(with = "duration_secs"))]
    pub duration: Duration,
}

/// How a [stage](crate::stage) ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize),
    serde(tag = "outcome", rename_all = "snake_case")
)]
#[non_exhaustive]
pub enum StageOutcome {
    /// Everything in it ended by itself.
    Drained,
    /// Its share of the budget (or the drain's deadline) ran out: what was
    /// left in it was aborted and recorded as [`Outcome::Cut`].
    Cut {
        /// The stages that were waiting for it and were told to stop
        /// because it was cut.
        held_up: Vec<String>,
    },
    /// It was running when the shutdown was forced (a second signal, or
    /// [`Handle::force`](crate::Handle::force)).
    Forced,
    /// It was never told to stop in its turn: the shutdown was forced, or
    /// the drain's deadline came, first.
    Skipped,
}

impl StageOutcome {
    /// Whether the stage drained by itself.
    ///
    /// ```
    /// assert!(lameduck::StageOutcome::Drained.is_ok());
    /// assert!(!lameduck::StageOutcome::Skipped.is_ok());
    /// ```
    pub fn is_ok(&self) -> bool {
        matches!(self, StageOutcome::Drained)
    }
}

impl fmt::Display for StageOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StageOutcome::Drained => f.write_str("drained"),
            StageOutcome::Cut { held_up } if held_up.is_empty() => f.write_str("cut"),
            StageOutcome::Cut { held_up } => {
                f.write_str("cut, held up ")?;
                for (i, name) in held_up.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{name:?}")?;
                }
                Ok(())
            }
            StageOutcome::Forced => f.write_str("forced"),
            StageOutcome::Skipped => f.write_str("skipped"),
        }
    }
}

/// When one [stage](crate::stage) was told to stop, and how long it took.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct StageTiming {
    /// The stage's name ([`FIRST`](crate::stage::FIRST) for the first).
    pub name: String,
    /// What it came after (stage and task names).
    pub after: Vec<String>,
    /// When it was told to stop, counted from the trigger; `None` if it
    /// never was in its turn.
    #[cfg_attr(feature = "serde", serde(with = "opt_duration_secs"))]
    pub start: Option<Duration>,
    /// From being told to stop to its end (drained, or cut).
    #[cfg_attr(feature = "serde", serde(with = "duration_secs"))]
    pub duration: Duration,
    /// How it ended.
    #[cfg_attr(feature = "serde", serde(flatten))]
    pub outcome: StageOutcome,
}

/// Counts of work that is not listed one by one (HTTP connections).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Counts {
    /// Connections that ended by themselves during the shutdown.
    pub connections_closed: u64,
    /// Upgraded connections that ended by themselves during the shutdown.
    pub upgraded_closed: u64,
}

/// The record of one shutdown. See the [module documentation](self).
///
/// ```
/// use lameduck::{Lifecycle, Signals};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let lifecycle = Lifecycle::builder().signals(Signals::none()).build().unwrap();
/// lifecycle.handle().shutdown("example");
/// let report = lifecycle.run().await;
/// assert!(report.to_string().starts_with("shutdown complete"));
/// assert_eq!(report.exit_code(), 0);
/// # }
/// ```
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Report {
    /// What started the shutdown.
    pub trigger: Trigger,
    /// Set when the shutdown was forced, with the cause.
    pub forced: Option<ForceCause>,
    /// The phase the shutdown was in when it was forced.
    pub forced_in: Option<Phase>,
    /// Each phase that was entered, in order.
    pub phases: Vec<PhaseTiming>,
    /// Each [stage](crate::stage), the first one included, in the order
    /// they were made; empty when no stage was made.
    pub stages: Vec<StageTiming>,
    /// Every named task, hook and closer, and every connection that was cut.
    pub items: Vec<Item>,
    /// Work counted rather than listed.
    pub counts: Counts,
    /// From the trigger to the end of the shutdown.
    #[cfg_attr(feature = "serde", serde(with = "duration_secs"))]
    pub total: Duration,
    /// The grace period the shutdown had.
    #[cfg_attr(feature = "serde", serde(with = "duration_secs"))]
    pub grace: Duration,
    /// The part of the grace kept for the closers: the drain's own
    /// deadline was `grace − closer_reserve` (see
    /// [`Builder::closer_reserve`](crate::Builder::closer_reserve)).
    #[cfg_attr(feature = "serde", serde(with = "duration_secs"))]
    pub closer_reserve: Duration,
}

impl Report {
    /// The process exit code, as documented in the [module documentation](self).
    pub fn exit_code(&self) -> u8 {
        match &self.forced {
            Some(ForceCause::Deadline) => exit::DEADLINE,
            Some(_) => exit::FORCED,
            None if self.is_clean() => exit::OK,
            // A stage cut at the end of its share of the budget.
            None if self.items.iter().any(|i| i.outcome == Outcome::Cut) => exit::DEADLINE,
            None => exit::FAILED,
        }
    }

    /// `true` when nothing failed, was cut or skipped, and the trigger was
    /// not a failure.
    pub fn is_clean(&self) -> bool {
        self.forced.is_none()
            && !matches!(self.trigger, Trigger::TaskFailed { .. })
            && self.items.iter().all(|i| i.outcome.is_ok())
    }

    /// The items that did not finish cleanly.
    pub fn problems(&self) -> impl Iterator<Item = &Item> {
        self.items.iter().filter(|i| !i.outcome.is_ok())
    }

    /// The exit code as a [`std::process::ExitCode`], to return from `main`.
    pub fn process_exit_code(&self) -> std::process::ExitCode {
        std::process::ExitCode::from(self.exit_code())
    }

    /// The report as pretty JSON.
    #[cfg(feature = "serde")]
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = |kind: Kind| {
            let all = self.items.iter().filter(|i| i.kind == kind).count();
            let ok = self
                .items
                .iter()
                .filter(|i| i.kind == kind && i.outcome.is_ok())
                .count();
            (ok, all)
        };
        match &self.forced {
            None => write!(f, "shutdown complete in {}", Secs(self.total))?,
            Some(cause) => write!(
                f,
                "shutdown forced ({cause}) in {} after {}",
                self.forced_in.map_or("?", |p| p.as_str()),
                Secs(self.total)
            )?,
        }
        write!(f, " (trigger: {}", self.trigger)?;
        write!(f, "; grace {})", Secs(self.grace))?;
        for kind in [Kind::Task, Kind::Hook, Kind::Closer] {
            let (ok, all) = count(kind);
            if all > 0 {
                write!(f, ", {kind}s {ok}/{all} ok")?;
            }
        }
        let cut_conns = self
            .items
            .iter()
            .filter(|i| matches!(i.kind, Kind::Connection | Kind::Upgraded))
            .count();
        let closed = self.counts.connections_closed + self.counts.upgraded_closed;
        if closed > 0 || cut_conns > 0 {
            write!(f, ", connections {closed} drained")?;
            if cut_conns > 0 {
                write!(f, " {cut_conns} cut")?;
            }
        }
        if !self.stages.is_empty() {
            let ok = self.stages.iter().filter(|s| s.outcome.is_ok()).count();
            write!(f, ", stages {ok}/{} drained", self.stages.len())?;
        }
        write!(f, "; exit {}", self.exit_code())?;
        for stage in &self.stages {
            write!(f, "\n  stage {:?}", stage.name)?;
            match stage.start {
                Some(start) => write!(
                    f,
                    " at {} for {}: {}",
                    Secs(start),
                    Secs(stage.duration),
                    stage.outcome
                )?,
                None => write!(f, ": {}", stage.outcome)?,
            }
        }
        for item in self.problems() {
            write!(f, "\n  {} {:?} {}", item.kind, item.name, item.outcome)?;
            if item.outcome != Outcome::Skipped {
                write!(f, " after {}", Secs(item.duration))?;
            }
            if !item.detail.is_empty() {
                write!(f, " ({})", item.detail)?;
            }
        }
        Ok(())
    }
}

/// Formats a duration as seconds with millisecond precision: `1.234s`.
pub(crate) struct Secs(pub(crate) Duration);

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.3}s", self.0.as_secs_f64())
    }
}

#[cfg(feature = "serde")]
mod opt_duration_secs {
    use std::time::Duration;

    pub(super) fn serialize<S: serde::Serializer>(
        d: &Option<Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }
}

#[cfg(feature = "serde")]
mod duration_secs {
    use std::time::Duration;

    pub(super) fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}
