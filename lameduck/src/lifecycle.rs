//! The lifecycle: phases, one time budget, triggers and observers.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::Error;
use crate::registry::{InFlight, Label, Registry, Watch};
use crate::report::{ForceCause, Item, Kind, Outcome, PhaseTiming, Report, Secs};
use crate::signal::{Signal, Signals};
use crate::stage::{StageId, Stages, FIRST_ID};
use crate::task::{defer, outcome_of, Deferred, TaskResult};

pub mod stage;
mod view;
pub(crate) use view::View;

/// The phase a [`Lifecycle`] is in.
///
/// ```text
/// Running ──trigger──▶ Draining ──drain_delay──▶ Stopping ──drained──▶ Closing ──▶ Done
///                                                  └──drain deadline──▶ Closing ──▶ Forced
///    any phase after Running ──second signal or force──▶ Forced
/// ```
///
/// Watch it with [`Handle::watch_phase`]; phases only move forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize),
    serde(rename_all = "snake_case")
)]
#[non_exhaustive]
pub enum Phase {
    /// Serving; no shutdown has been asked for.
    Running,
    /// Lame duck: readiness reports "not ready", but everything still serves
    /// and listeners still accept. Lasts `drain_delay`.
    Draining,
    /// Listeners stop accepting; in-flight work is told to finish (the
    /// [`Handle::token`] is cancelled) and waited for, [stage](mod@crate::stage)
    /// after stage.
    Stopping,
    /// Closers run, in reverse order of registration; also after the drain
    /// was cut by its deadline (see [`Builder::closer_reserve`]).
    Closing,
    /// Everything finished in time.
    Done,
    /// The deadline passed or a force came: what was left was aborted.
    Forced,
}

impl Phase {
    /// A short lowercase name, such as `"draining"`.
    ///
    /// ```
    /// assert_eq!(lameduck::Phase::Stopping.as_str(), "stopping");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Running => "running",
            Phase::Draining => "draining",
            Phase::Stopping => "stopping",
            Phase::Closing => "closing",
            Phase::Done => "done",
            Phase::Forced => "forced",
        }
    }

    /// `true` for [`Phase::Done`] and [`Phase::Forced`].
    pub fn is_finished(self) -> bool {
        matches!(self, Phase::Done | Phase::Forced)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What started a shutdown.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize),
    serde(tag = "trigger", rename_all = "snake_case")
)]
#[non_exhaustive]
pub enum Trigger {
    /// An operating-system (or injected) signal.
    Signal {
        /// The signal.
        signal: Signal,
    },
    /// [`Handle::shutdown`] was called.
    Requested {
        /// The reason given.
        reason: String,
    },
    /// A zero-downtime restart handed the listeners to a successor, which
    /// passed its probation; this process drains and exits.
    Restart {
        /// The successor's process id.
        successor: u32,
    },
    /// A vital task returned an error or panicked.
    TaskFailed {
        /// The task's name.
        task: String,
        /// What went wrong.
        error: String,
    },
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trigger::Signal { signal } => write!(f, "{signal}"),
            Trigger::Requested { reason } => write!(f, "requested: {reason}"),
            Trigger::Restart { successor } => write!(f, "restart: handed over to pid {successor}"),
            Trigger::TaskFailed { task, error } => write!(f, "vital task {task:?} {error}"),
        }
    }
}

const DEFAULT_GRACE: Duration = Duration::from_secs(30);
const DEFAULT_PROGRESS: Duration = Duration::from_secs(1);
/// The default closer reserve is this share of the grace…
const DEFAULT_RESERVE_SHARE: u32 = 10;
/// …but no more than this.
const DEFAULT_RESERVE_CAP: Duration = Duration::from_secs(5);

/// Configures a [`Lifecycle`].
///
/// ```no_run
/// use std::time::Duration;
///
/// # #[tokio::main] async fn main() -> Result<(), lameduck::Error> {
/// let lifecycle = lameduck::Lifecycle::builder()
///     .grace(Duration::from_secs(25))
///     .drain_delay(Duration::from_secs(5))
///     .build()?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Builder {
    grace: Duration,
    drain_delay: Duration,
    progress_interval: Option<Duration>,
    signals: Option<Signals>,
    closer_reserve: Option<Duration>,
    log_report: bool,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            grace: DEFAULT_GRACE,
            drain_delay: Duration::ZERO,
            progress_interval: Some(DEFAULT_PROGRESS),
            signals: None,
            closer_reserve: None,
            log_report: true,
        }
    }
}

impl Builder {
    /// The whole time budget, counted from the first trigger (default 30 s).
    ///
    /// Every wait inside the shutdown (the lame-duck delay, the drain, each
    /// closer) is bounded by what is left of it; the drain by what is left
    /// of it minus the [closer reserve](Self::closer_reserve). Set it a
    /// little below your supervisor's limit (`terminationGracePeriodSeconds`,
    /// `TimeoutStopSec`).
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// How long to stay a lame duck (default zero): readiness fails while
    /// everything still serves, so load balancers take the instance out
    /// before it stops accepting. It is counted inside the grace period (the
    /// first part of the one budget), so it must be shorter than the grace;
    /// `build` logs a warning when it is not.
    pub fn drain_delay(mut self, delay: Duration) -> Self {
        self.drain_delay = delay;
        self
    }

    /// How often to log what is still in flight while shutting down
    /// (default 1 s); `None` turns progress off.
    pub fn progress_interval(mut self, interval: Option<Duration>) -> Self {
        self.progress_interval = interval.filter(|d| !d.is_zero());
        self
    }

    /// The part of the grace kept for the closers (default: a tenth of the
    /// grace, at most 5 s).
    ///
    /// The drain (lame duck, stopping, every [stage](mod@crate::stage)) has its
    /// own deadline, `trigger + grace − reserve`; what is still in flight
    /// then is cut, and the closers run anyway, in the reserve and whatever
    /// the drain left unused, each bounded by what is left of the grace. So
    /// a stuck task cannot keep the database pool from being closed or the
    /// telemetry from being flushed, the way Go's `defer db.Close()` runs
    /// after `srv.Shutdown(ctx)` returned its deadline error. A second
    /// signal (or [`Handle::force`]) still skips the closers, and the report
    /// lists them as skipped.
    ///
    /// The reserve is only held back when at least one closer is registered
    /// when the shutdown starts; without closers the drain has the whole
    /// grace. It is capped at the grace.
    ///
    /// Why a tenth, at most 5 s: closers close and flush; they take
    /// milliseconds to a few seconds, not a share that grows with a long
    /// grace. 3 s of the default 30 s is ample for a pool and a telemetry
    /// flush, and costs the drain little; a 10-minute grace for batch work
    /// should not cut its jobs a minute early. Set it to what your closers
    /// need at worst.
    ///
    /// With Kubernetes, `grace` should stay below
    /// `terminationGracePeriodSeconds` (minus any `preStop` hook), and the
    /// reserve comes out of `grace`, not on top of it: with
    /// `terminationGracePeriodSeconds: 30`, `grace(25 s)` and
    /// `closer_reserve(3 s)`, the drain is cut at 22 s, the closers have
    /// until 25 s, and the kubelet's SIGKILL at 30 s never comes. The same
    /// holds for systemd's `TimeoutStopSec` (lameduck also extends it to
    /// `grace + 1 s` with `EXTEND_TIMEOUT_USEC` when started under
    /// systemd).
    ///
    /// ```
    /// use std::time::Duration;
    /// let lifecycle = lameduck::Lifecycle::builder()
    ///     .signals(lameduck::Signals::none())
    ///     .grace(Duration::from_secs(25))
    ///     .closer_reserve(Duration::from_secs(3))
    ///     .build()
    ///     .unwrap();
    /// ```
    pub fn closer_reserve(mut self, reserve: Duration) -> Self {
        self.closer_reserve = Some(reserve);
        self
    }

    /// Whether the lifecycle logs the whole [`Report`] itself when the
    /// shutdown is over (default `true`): one `tracing` event, target
    /// `lameduck`, at `INFO` when it is clean and `WARN` when it is not.
    ///
    /// That log line is *the* summary: applications do not print the
    /// report again; they use it for the exit code or JSON. Turn it off
    /// when the application prints or ships the report its own way.
    ///
    /// ```
    /// let lifecycle = lameduck::Lifecycle::builder()
    ///     .signals(lameduck::Signals::none())
    ///     .log_report(false) // the application prints `{report}` itself
    ///     .build()
    ///     .unwrap();
    /// ```
    pub fn log_report(mut self, log: bool) -> Self {
        self.log_report = log;
        self
    }

    /// Where signals come from (default [`Signals::os`]).
    pub fn signals(mut self, signals: Signals) -> Self {
        self.signals = Some(signals);
        self
    }

    /// Build the lifecycle. Must be called inside a tokio runtime when the
    /// default signal source is used. Inside a runtime, the shutdown is
    /// driven from here on by a task of its own: from this call, a signal
    /// starts it whether or not the lifecycle is ever awaited. Built
    /// outside one (with other [`Signals`]), that task starts at the first
    /// use inside a runtime: a spawned task, a server, [`Handle::done`], or
    /// [`Lifecycle::run`].
    ///
    /// # Errors
    ///
    /// Fails when the operating system's signal handlers cannot be installed.
    pub fn build(self) -> Result<Lifecycle, Error> {
        let closer_reserve = self
            .closer_reserve
            .unwrap_or_else(|| (self.grace / DEFAULT_RESERVE_SHARE).min(DEFAULT_RESERVE_CAP));
        if !self.drain_delay.is_zero() && self.drain_delay >= self.grace {
            tracing::warn!(target: "lameduck", drain_delay = %Secs(self.drain_delay), grace = %Secs(self.grace),
                "the drain delay does not fit in the grace (it is counted inside it): every shutdown will end at the deadline");
        } else if !self.drain_delay.is_zero()
            && self.drain_delay >= self.grace.saturating_sub(closer_reserve)
        {
            tracing::warn!(target: "lameduck", drain_delay = %Secs(self.drain_delay), grace = %Secs(self.grace), closer_reserve = %Secs(closer_reserve),
                "the drain delay leaves no time to drain once the closer reserve is kept: with closers registered, every shutdown will end at the drain's deadline");
        }
        let signals = match self.signals {
            Some(s) => s,
            None => Signals::os().map_err(Error::signal)?,
        };
        let (phase, _) = watch::channel(Phase::Running);
        let stopping = CancellationToken::new();
        let shared = Arc::new(Shared {
            grace: self.grace,
            drain_delay: self.drain_delay,
            progress_interval: self.progress_interval,
            phase,
            state: Mutex::new(State::default()),
            closer_reserve: closer_reserve.min(self.grace),
            log_report: self.log_report,
            stages: Mutex::new(Stages::new(stopping.clone())),
            draining: CancellationToken::new(),
            stopping,
            forced: CancellationToken::new(),
            abandon: CancellationToken::new(),
            done: CancellationToken::new(),
            registry: Arc::new(Registry::default()),
            tracker: TaskTracker::new(),
            link: view::Link::default(),
            starter: Mutex::new(None),
            starter_pending: std::sync::atomic::AtomicBool::new(false),
            flags: AtomicU8::new(0),
        });
        Ok(Lifecycle::start(shared, signals))
    }
}

#[derive(Default)]
struct State {
    trigger: Option<(Trigger, Instant)>,
    force: Option<ForceCause>,
    hooks: Vec<(String, Deferred)>,
    hooks_started: bool,
    closers: Vec<(String, Deferred)>,
}

pub(crate) struct Shared {
    grace: Duration,
    drain_delay: Duration,
    progress_interval: Option<Duration>,
    closer_reserve: Duration,
    log_report: bool,
    phase: watch::Sender<Phase>,
    state: Mutex<State>,
    stages: Mutex<Stages>,
    draining: CancellationToken,
    /// The first stage's token.
    stopping: CancellationToken,
    /// Cancelled on any force (the deadline too): in-flight work aborts.
    forced: CancellationToken,
    /// Cancelled on a force that is not the deadline (a second signal,
    /// `Handle::force`): the closers are skipped too.
    abandon: CancellationToken,
    done: CancellationToken,
    pub(crate) registry: Arc<Registry>,
    pub(crate) tracker: TaskTracker,
    /// What the restart layer keeps here (accepting, where SIGHUP goes,
    /// clean-ups at exit): reached only through the [`View`].
    pub(super) link: view::Link,
    /// Starts the task that drives the shutdown, for a lifecycle built
    /// outside a runtime: taken by the first use inside one
    /// ([`Shared::ensure_driven`]) or by [`Lifecycle::run`].
    starter: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    starter_pending: std::sync::atomic::AtomicBool,
    /// Mirrors of the tokens' states: `CancellationToken::is_cancelled`
    /// takes a mutex shared by every clone, too costly on a per-request
    /// path. Set before the matching token is cancelled.
    flags: AtomicU8,
}

const DRAINING: u8 = 1;
const STOPPING: u8 = 2;
const FORCED: u8 = 4;

impl Shared {
    #[cfg_attr(not(feature = "http"), allow(dead_code))] // used by the HTTP server
    pub(crate) fn trigger_restart(&self, successor: u32) -> bool {
        self.trigger(Trigger::Restart { successor })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        crate::util::lock(&self.state)
    }

    /// The stages. Lock order: this lock, then the registry's, never the
    /// other way.
    pub(crate) fn stages(&self) -> MutexGuard<'_, Stages> {
        crate::util::lock(&self.stages)
    }

    /// Start the shutdown. Returns `false` when it had already started.
    fn trigger(&self, trigger: Trigger) -> bool {
        {
            let mut state = self.lock();
            if state.trigger.is_some() {
                return false;
            }
            state.trigger = Some((trigger.clone(), Instant::now()));
        }
        self.registry.set_draining();
        self.phase.send_replace(Phase::Draining);
        self.flags.fetch_or(DRAINING, Ordering::AcqRel);
        self.draining.cancel();
        // Logged once the phase has moved: whoever reads the line (a test,
        // an operator) sees readiness already failing.
        tracing::info!(target: "lameduck", %trigger, grace = %Secs(self.grace), "shutdown triggered");
        true
    }

    fn force(&self, cause: ForceCause) {
        let abandon = cause != ForceCause::Deadline;
        {
            let mut state = self.lock();
            if state.force.is_some() {
                // The deadline cut the drain; a second signal now also
                // skips the closers. The first cause stays in the report.
                if abandon && !self.abandon.is_cancelled() {
                    tracing::warn!(target: "lameduck", %cause, "closers skipped");
                    self.abandon.cancel();
                }
                return;
            }
            tracing::warn!(target: "lameduck", %cause, "shutdown forced");
            state.force = Some(cause);
        }
        if abandon {
            self.abandon.cancel();
        }
        // Name what is cut before anything reacts to the force, so that an
        // aborted connection is not counted as drained.
        self.registry.force_cut();
        self.flags.fetch_or(FORCED, Ordering::AcqRel);
        self.forced.cancel();
        self.registry.broadcast(true);
    }

    fn stop(&self) {
        self.flags.fetch_or(STOPPING, Ordering::AcqRel);
        self.stopping.cancel();
    }

    fn flag(&self, flag: u8) -> bool {
        self.flags.load(Ordering::Acquire) & flag != 0
    }

    /// How much of the grace is kept for the closers, decided when the
    /// shutdown starts: nothing when no closer is registered.
    fn reserve(&self) -> Duration {
        if self.lock().closers.is_empty() {
            Duration::ZERO
        } else {
            self.closer_reserve
        }
    }

    fn deadline(&self) -> Option<Instant> {
        self.lock().trigger.as_ref().map(|(_, at)| *at + self.grace)
    }

    fn set_phase(&self, phase: Phase) {
        self.phase.send_replace(phase);
    }

    /// Spawn `fut` (which already turned its result or panic into an
    /// outcome) as a tracked, named item of `stage`.
    /// Start driving the shutdown if the lifecycle was built outside a
    /// runtime and this is the first use inside one.
    pub(crate) fn ensure_driven(&self) {
        if self.starter_pending.load(Ordering::Acquire)
            && tokio::runtime::Handle::try_current().is_ok()
        {
            let start = crate::util::lock(&self.starter).take();
            self.starter_pending.store(false, Ordering::Release);
            if let Some(start) = start {
                start();
            }
        }
    }

    pub(crate) fn spawn_item<F>(
        self: &Arc<Self>,
        stage: StageId,
        kind: Kind,
        name: String,
        vital: bool,
        fut: F,
    ) where
        F: Future<Output = Outcome> + Send + 'static,
    {
        self.ensure_driven();
        if kind == Kind::Task {
            self.stages().record_task(&name, stage);
        }
        let guard = self
            .registry
            .register_in(kind, Label::Fixed(name.clone()), stage);
        let id = guard.id();
        let shared = Arc::clone(self);
        let fut = crate::stage::scope(stage, name.as_str().into(), fut);
        let task = self.tracker.spawn(async move {
            let outcome = fut.await;
            match &outcome {
                Outcome::Finished => {
                    tracing::debug!(target: "lameduck", %kind, name = %name, "finished");
                }
                other => {
                    tracing::warn!(target: "lameduck", %kind, name = %name, outcome = %other, "did not finish cleanly");
                    if vital {
                        shared.trigger(Trigger::TaskFailed {
                            task: name.clone(),
                            error: other.to_string(),
                        });
                    }
                }
            }
            guard.finish(outcome);
        });
        self.registry.set_abort(id, task.abort_handle());
    }

    fn spawn_hook(self: &Arc<Self>, name: String, hook: Deferred) {
        self.spawn_item(
            FIRST_ID,
            Kind::Hook,
            name,
            false,
            async move { hook().await },
        );
    }
}

/// The owner of one process's shutdown. Not `Clone`: there is exactly one
/// place that drives the shutdown and receives the [`Report`]; everything
/// else gets a [`Handle`].
///
/// # State model
///
/// A lifecycle starts in [`Phase::Running`]. The first trigger (a signal,
/// [`Handle::shutdown`], or a vital task failing) starts the clock: from then
/// on every wait is bounded by the deadline `trigger + grace`. The phases
/// follow in order (see [`Phase`]); the moment the last in-flight item ends,
/// the next phase starts. Within [`Phase::Stopping`], [stages](crate::stage)
/// are told to stop one after another. The drain has its own deadline,
/// `trigger + grace − closer reserve` ([`Builder::closer_reserve`]): what
/// is still in flight then is cut, and the closers still run in what is
/// left. A second signal or [`Handle::force`] moves it to
/// [`Phase::Forced`] at once: what is left is aborted, the closers are
/// skipped, and the report names both.
///
/// # Example
///
/// ```no_run
/// use std::time::Duration;
/// use lameduck::Lifecycle;
///
/// #[tokio::main]
/// async fn main() -> std::process::ExitCode {
///     let lifecycle = Lifecycle::builder()
///         .grace(Duration::from_secs(10))
///         .build()
///         .expect("install signal handlers");
///     let handle = lifecycle.handle();
///
///     // A background task, told to finish when the lifecycle stops.
///     handle.spawn("ticker", |token| async move {
///         let mut tick = tokio::time::interval(Duration::from_secs(1));
///         loop {
///             tokio::select! {
///                 _ = token.cancelled() => break,
///                 _ = tick.tick() => println!("tick"),
///             }
///         }
///     });
///
///     // Runs after the drain, last registered first.
///     handle.add_closer("flush", || async { Ok::<_, std::io::Error>(()) });
///
///     // Waits for SIGTERM or Ctrl-C, then shuts down. The lifecycle logs
///     // the report (see `Builder::log_report`); the exit code follows it.
///     let report = lifecycle.run().await;
///     report.process_exit_code()
/// }
/// ```
///
/// # Cancellation safety
///
/// [`run`](Self::run) consumes the lifecycle. The shutdown is driven by a
/// task of its own, started by [`Builder::build`] inside a runtime (by
/// `run` otherwise): dropping `run`'s future, or the lifecycle, gives up
/// only the report, which the lifecycle still logs
/// ([`Builder::log_report`]). So an application that never awaits the
/// lifecycle (one that awaits its [server](crate::http::Server::serve)
/// alone) still stops on `SIGTERM`.
pub struct Lifecycle {
    shared: Arc<Shared>,
    driver: DriveSlot,
}

/// The shutdown's future and, once it is over, its report: polled by a
/// task of its own (so that signals are acted on whether or not anyone
/// awaits the lifecycle) until [`Lifecycle::run`] takes it over and polls
/// it itself (one wake-up less between the end of the drain and the
/// report).
struct DriveState {
    drive: Option<Pin<Box<dyn Future<Output = Report> + Send>>>,
    report: Option<Report>,
    /// The task polling `drive`, if one runs.
    task: Option<tokio::task::AbortHandle>,
}

type DriveSlot = Arc<Mutex<DriveState>>;

/// Poll the shutdown's future from a task of its own while it is in
/// `slot`; keep the report there when it is done. Must be called inside a
/// runtime.
fn spawn_driver(slot: &DriveSlot) {
    let polled = Arc::clone(slot);
    let task = tokio::spawn(std::future::poll_fn(move |cx| {
        let mut state = crate::util::lock(&polled);
        let Some(drive) = state.drive.as_mut() else {
            return Poll::Ready(());
        };
        match drive.as_mut().poll(cx) {
            Poll::Ready(report) => {
                state.drive = None;
                state.report = Some(report);
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }));
    crate::util::lock(slot).task = Some(task.abort_handle());
}

/// The shutdown's future while [`Lifecycle::run`] polls it: dropped before
/// it is done, it goes back to a task of its own.
struct Claimed {
    drive: Option<Pin<Box<dyn Future<Output = Report> + Send>>>,
    slot: DriveSlot,
}

impl Future for Claimed {
    type Output = Report;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Report> {
        let Some(drive) = self.drive.as_mut() else {
            return Poll::Pending;
        };
        let report = std::task::ready!(drive.as_mut().poll(cx));
        self.drive = None;
        Poll::Ready(report)
    }
}

impl Drop for Claimed {
    fn drop(&mut self) {
        if let Some(drive) = self.drive.take() {
            crate::util::lock(&self.slot).drive = Some(drive);
            if tokio::runtime::Handle::try_current().is_ok() {
                spawn_driver(&self.slot);
            }
        }
    }
}

impl fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lifecycle")
            .field("phase", &*self.shared.phase.borrow())
            .field("grace", &self.shared.grace)
            .field("drain_delay", &self.shared.drain_delay)
            .field("closer_reserve", &self.shared.closer_reserve)
            .finish_non_exhaustive()
    }
}

impl Lifecycle {
    /// A [`Builder`] with the defaults: 30 s grace, no drain delay, the
    /// operating system's signals.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// A cheap, cloneable handle for everything that is not the owner.
    pub fn handle(&self) -> Handle {
        Handle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Start driving the shutdown in a task of its own when inside a tokio
    /// runtime, so that a signal is acted on even if the lifecycle itself
    /// is never awaited (an application that only awaits its server).
    fn start(shared: Arc<Shared>, signals: Signals) -> Self {
        let driver: DriveSlot = Arc::new(Mutex::new(DriveState {
            drive: Some(Box::pin(drive(Arc::clone(&shared), signals))),
            report: None,
            task: None,
        }));
        if tokio::runtime::Handle::try_current().is_ok() {
            spawn_driver(&driver);
        } else {
            // Built before the runtime: the first use inside one starts it.
            let slot = Arc::clone(&driver);
            *crate::util::lock(&shared.starter) = Some(Box::new(move || spawn_driver(&slot)));
            shared.starter_pending.store(true, Ordering::Release);
        }
        Lifecycle { shared, driver }
    }

    /// Wait for the shutdown to be triggered and driven through its phases,
    /// and return the report. Also available as `lifecycle.await`.
    ///
    /// The shutdown does not depend on this future being polled: a
    /// lifecycle built inside a tokio runtime is driven by a task of its
    /// own from [`Builder::build`] on, which this future takes over while
    /// it is polled (and hands back if dropped before the end).
    ///
    /// # Panics
    ///
    /// Resumes the panic of the task driving the shutdown, if it panicked.
    pub async fn run(self) -> Report {
        // Not started yet (built outside a runtime): this is the start.
        drop(crate::util::lock(&self.shared.starter).take());
        self.shared.starter_pending.store(false, Ordering::Release);
        let claimed = {
            let mut state = crate::util::lock(&self.driver);
            if let Some(report) = state.report.take() {
                return report;
            }
            if let Some(task) = state.task.take() {
                task.abort();
            }
            state.drive.take()
        };
        match claimed {
            Some(drive) => {
                Claimed {
                    drive: Some(drive),
                    slot: Arc::clone(&self.driver),
                }
                .await
            }
            // `run` consumes the lifecycle: nobody else takes the future.
            None => std::future::pending().await,
        }
    }
}

/// Wait for a trigger, then drive the shutdown through its phases and
/// return the report.
async fn drive(shared: Arc<Shared>, mut signals: Signals) -> Report {
    // Running: wait for the first trigger.
    loop {
        tokio::select! {
            biased;
            _ = shared.draining.cancelled() => break,
            signal = signals.stream.next() => match signal {
                Some(Signal::Terminate | Signal::Interrupt) => {
                    shared.trigger(Trigger::Signal { signal: signal.unwrap_or(Signal::Terminate) });
                }
                Some(Signal::Quit) => {
                    shared.trigger(Trigger::Signal { signal: Signal::Quit });
                    shared.force(ForceCause::Signal(Signal::Quit));
                }
                Some(Signal::Hangup) => {
                    let sent = crate::util::lock(&shared.link.hangup)
                        .as_ref()
                        .is_some_and(|tx| tx.send(()).is_ok());
                    if !sent {
                        tracing::info!(target: "lameduck", "SIGHUP ignored: restarts are not enabled");
                    }
                }
                None => signals = Signals::none(),
            },
        }
    }
    let (trigger, t0) = match shared.lock().trigger.clone() {
        Some(t) => t,
        // `draining` is cancelled only after the trigger is stored.
        None => (
            Trigger::Requested {
                reason: "unknown".into(),
            },
            Instant::now(),
        ),
    };
    let deadline = t0 + shared.grace;
    // The drain's own deadline: the rest is kept for the closers.
    let closer_reserve = shared.reserve();
    let drain_end = deadline - closer_reserve;
    let mut driver = Driver {
        shared: Arc::clone(&shared),
        signals,
        t0,
        timings: Vec::new(),
        current: (Phase::Draining, t0),
        forced_in: None,
        progress_at: None,
        pending_closer: None,
    };

    // Draining: start hooks, stay a lame duck for `drain_delay`.
    #[cfg(unix)]
    if !matches!(trigger, Trigger::Restart { .. }) {
        // Tell a service manager that this is a stop (not for a
        // restart's handover: the successor is the main process by then),
        // and how long it will take at most.
        let states = [
            crate::systemd::Notify::Stopping,
            crate::systemd::Notify::ExtendTimeout(shared.grace + Duration::from_secs(1)),
        ];
        if let Err(e) = crate::systemd::notify(&states) {
            tracing::warn!(target: "lameduck", error = %e, "sd_notify failed");
        }
    }
    driver.start_hooks();
    let lame_duck_end = (t0 + shared.drain_delay).min(drain_end);
    // No lame duck after a restart: the successor serves the same
    // sockets, so there is nobody to send away.
    let skip_lame_duck = shared.drain_delay.is_zero() || matches!(trigger, Trigger::Restart { .. });
    let mut wake = if skip_lame_duck {
        // No lame duck: go straight on, without a timer tick.
        if shared.abandon.is_cancelled() {
            driver.forced_in = Some(Phase::Draining);
            Wake::Force
        } else {
            Wake::Done
        }
    } else {
        driver
            .wait(tokio::time::sleep_until(lame_duck_end), drain_end, false)
            .await
    };

    // Stopping: stop accepting, tell in-flight work to finish, wait,
    // stage after stage.
    if wake == Wake::Done {
        driver.enter(Phase::Stopping);
        shared.tracker.close();
        shared.stop();
        shared.registry.broadcast(false);
        wake = driver.drain(drain_end).await;
    }
    match wake {
        Wake::Done => shared.stages().finish(Instant::now(), false),
        // The drain's deadline: cut what is left of it, tell every
        // stage, and still give the closers their turn.
        Wake::Deadline => {
            shared.stop();
            shared.force(ForceCause::Deadline);
            shared.stages().finish(Instant::now(), false);
        }
        Wake::Force => {
            shared.stop();
            shared.stages().finish(Instant::now(), true);
        }
    }

    // Closing: closers in reverse order, each bounded by what is left.
    if wake != Wake::Force {
        driver.enter(Phase::Closing);
        wake = driver.run_closers(deadline).await;
    }

    if wake == Wake::Deadline {
        shared.force(ForceCause::Deadline);
    }
    let forced = shared.lock().force.clone();
    let forced_in = forced.as_ref().and(driver.forced_in);
    if forced.is_some() {
        // Stop everything still running and name it; what never ran is
        // skipped.
        shared.stop();
        shared.registry.force_cut();
        drop(driver.pending_closer.take());
        let closers = std::mem::take(&mut shared.lock().closers);
        for (name, _) in closers.into_iter().rev() {
            shared.registry.record(Item {
                kind: Kind::Closer,
                name,
                outcome: Outcome::Skipped,
                duration: Duration::ZERO,
                detail: String::new(),
            });
        }
        driver.enter(Phase::Forced);
    } else {
        driver.enter(Phase::Done);
    }
    driver.close_timing();
    shared.done.cancel();
    let at_exit = std::mem::take(&mut *crate::util::lock(&shared.link.at_exit));
    for f in at_exit {
        f();
    }

    let (items, counts) = shared.registry.take_report();
    let report = Report {
        trigger,
        forced,
        forced_in,
        phases: driver.timings,
        stages: shared.stages().report(t0),
        items,
        counts,
        total: t0.elapsed(),
        grace: shared.grace,
        closer_reserve,
    };
    if shared.log_report {
        if report.is_clean() {
            tracing::info!(target: "lameduck", exit = report.exit_code(), "{report}");
        } else {
            tracing::warn!(target: "lameduck", exit = report.exit_code(), "{report}");
        }
    }
    report
}

impl IntoFuture for Lifecycle {
    type Output = Report;
    type IntoFuture = BoxFuture<'static, Report>;

    fn into_future(self) -> Self::IntoFuture {
        self.run().boxed()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    Done,
    Deadline,
    Force,
}

struct Driver {
    shared: Arc<Shared>,
    signals: Signals,
    t0: Instant,
    timings: Vec<PhaseTiming>,
    current: (Phase, Instant),
    /// The phase of the first force (the deadline, a signal, a request).
    forced_in: Option<Phase>,
    /// When the next progress line is due.
    progress_at: Option<Instant>,
    pending_closer: Option<InFlight>,
}

impl Driver {
    fn enter(&mut self, phase: Phase) {
        self.close_timing();
        self.current = (phase, Instant::now());
        let left = self.shared.deadline().map_or(Duration::ZERO, |d| {
            d.saturating_duration_since(Instant::now())
        });
        tracing::info!(target: "lameduck", phase = %phase, left = %Secs(left), "entering phase");
        self.shared.set_phase(phase);
    }

    fn close_timing(&mut self) {
        let (phase, start) = self.current;
        if self.timings.last().is_some_and(|t| t.phase == phase) {
            return;
        }
        self.timings.push(PhaseTiming {
            phase,
            start: start.saturating_duration_since(self.t0),
            duration: start.elapsed(),
        });
    }

    fn start_hooks(&mut self) {
        let hooks = {
            let mut state = self.shared.lock();
            state.hooks_started = true;
            std::mem::take(&mut state.hooks)
        };
        for (name, hook) in hooks {
            self.shared.spawn_hook(name, hook);
        }
    }

    /// Wait for `fut`, bounded by `deadline` and by a force; signals that
    /// arrive meanwhile force the shutdown.
    async fn wait<F: Future>(&mut self, fut: F, deadline: Instant, progress: bool) -> Wake {
        tokio::pin!(fut);
        let period = self.shared.progress_interval.filter(|_| progress);
        if period.is_none() {
            self.progress_at = None;
        } else if self.progress_at.is_none() {
            self.progress_at = period.map(|p| Instant::now() + p);
        }
        let wake = loop {
            let progress_at = self.progress_at;
            tokio::select! {
                biased;
                _ = self.shared.abandon.cancelled() => break Wake::Force,
                _ = tokio::time::sleep_until(deadline) => break Wake::Deadline,
                signal = self.signals.stream.next() => match signal {
                    Some(signal @ (Signal::Terminate | Signal::Interrupt | Signal::Quit)) => {
                        self.shared.force(ForceCause::Signal(signal));
                    }
                    Some(other) => {
                        tracing::info!(target: "lameduck", signal = %other, "signal ignored during shutdown");
                    }
                    None => self.signals = Signals::none(),
                },
                _ = &mut fut => break Wake::Done,
                _ = async { tokio::time::sleep_until(progress_at.expect("guarded")).await }, if progress_at.is_some() => {
                    self.progress(deadline);
                    self.progress_at = period.map(|p| Instant::now() + p);
                }
            }
        };
        if wake != Wake::Done && self.forced_in.is_none() {
            self.forced_in = Some(self.current.0);
        }
        wake
    }

    fn progress(&self, deadline: Instant) {
        let list = self.shared.registry.snapshot();
        let mut names = String::new();
        for item in list.iter().filter(|i| i.kind != Kind::Listener).take(5) {
            if !names.is_empty() {
                names.push_str(", ");
            }
            names.push_str(&format!("{} {:?} {}", item.kind, item.name, Secs(item.age)));
        }
        if list.len() > 5 {
            names.push_str(&format!(", and {} more", list.len() - 5));
        }
        let stages = {
            let stages = self.shared.stages();
            if stages.any() && self.current.0 == Phase::Stopping {
                format!(" (stage {})", stages.running().join(", "))
            } else {
                String::new()
            }
        };
        tracing::info!(
            target: "lameduck",
            "{}{stages}: {} in flight, {} left{}{}",
            self.current.0,
            list.len(),
            Secs(deadline.saturating_duration_since(Instant::now())),
            if names.is_empty() { "" } else { ": " },
            names
        );
    }

    /// Stopping: tell each stage to stop in its turn, cut a stage that
    /// holds others up past its share, until every stage has ended and
    /// nothing is in flight, or `drain_end`.
    async fn drain(&mut self, drain_end: Instant) -> Wake {
        let shared = Arc::clone(&self.shared);
        let wake = loop {
            let registry = &shared.registry;
            // Without stages, only the last end matters: one wake-up, not
            // one per connection.
            let any = shared.stages().any();
            registry.watch(if any { Watch::Each } else { Watch::Empty });
            let changed = registry.changed();
            tokio::pin!(changed);
            // Enabled before the state is read: an end in between is not
            // lost.
            changed.as_mut().enable();
            let step = shared.stages().step(registry, Instant::now(), drain_end);
            if step.all_ended && registry.pending() == 0 {
                let tracker = shared.tracker.clone();
                break self
                    .wait(async move { tracker.wait().await }, drain_end, true)
                    .await;
            }
            let next = step.next;
            let woke = self
                .wait(
                    async move {
                        match next {
                            Some(at) => tokio::select! {
                                _ = changed => {}
                                _ = tokio::time::sleep_until(at) => {}
                            },
                            None => changed.await,
                        }
                    },
                    drain_end,
                    true,
                )
                .await;
            if woke != Wake::Done {
                break woke;
            }
        };
        shared.registry.watch(Watch::Off);
        wake
    }

    async fn run_closers(&mut self, deadline: Instant) -> Wake {
        loop {
            let next = self.shared.lock().closers.pop();
            let Some((name, closer)) = next else {
                return Wake::Done;
            };
            let guard = self
                .shared
                .registry
                .register(Kind::Closer, Label::Fixed(name.clone()));
            let mut outcome = None;
            let wake = self
                .wait(
                    async {
                        outcome = Some(closer().await);
                    },
                    deadline,
                    true,
                )
                .await;
            match outcome {
                Some(outcome) if wake == Wake::Done => {
                    if !outcome.is_ok() {
                        tracing::warn!(target: "lameduck", closer = %name, %outcome, "closer did not finish cleanly");
                    }
                    guard.finish(outcome);
                }
                _ => {
                    // Cut: keep the entry until `force_cut` has named it.
                    self.pending_closer = Some(guard);
                    return wake;
                }
            }
        }
    }
}

/// A cheap, cloneable handle to a [`Lifecycle`]: ask for shutdown, observe
/// the phases, spawn named tasks, register hooks and closers.
///
/// Every observer future resolves at once for late subscribers: awaiting
/// [`draining`](Self::draining) after the shutdown began returns immediately.
///
/// ```
/// use lameduck::{Lifecycle, Phase, Signals};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let lifecycle = Lifecycle::builder().signals(Signals::none()).build().unwrap();
/// let handle = lifecycle.handle();
/// assert_eq!(handle.phase(), Phase::Running);
/// assert!(handle.shutdown("maintenance"));
/// assert!(!handle.shutdown("again"), "only the first trigger counts");
/// assert!(handle.is_draining());
/// handle.draining().await; // resolves at once: already draining
/// let report = lifecycle.run().await;
/// assert_eq!(handle.phase(), Phase::Done);
/// # }
/// ```
#[derive(Clone)]
pub struct Handle {
    pub(in crate::lifecycle) shared: Arc<Shared>,
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("phase", &self.phase())
            .field("in_flight", &self.shared.registry.len())
            .finish()
    }
}

impl Handle {
    /// The narrow view of this lifecycle for the HTTP and restart layers.
    #[cfg_attr(not(feature = "http"), allow(dead_code))] // used by the HTTP server
    pub(crate) fn view(&self) -> View {
        View::new(Arc::clone(&self.shared))
    }

    /// Ask for a graceful shutdown, with a reason for the report. Returns
    /// `true` if this call started it, `false` if it had already started
    /// (triggers are idempotent).
    pub fn shutdown(&self, reason: impl Into<String>) -> bool {
        self.shared.trigger(Trigger::Requested {
            reason: reason.into(),
        })
    }

    /// Force the shutdown now: abort what is left, skip what has not run.
    /// Starts the shutdown first if it had not started.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let lifecycle = lameduck::Lifecycle::builder().signals(lameduck::Signals::none()).build().unwrap();
    /// lifecycle.handle().force("operator");
    /// let report = lifecycle.run().await;
    /// assert_eq!(report.exit_code(), lameduck::exit::FORCED);
    /// # }
    /// ```
    pub fn force(&self, reason: impl Into<String>) {
        let reason = reason.into();
        self.shared.trigger(Trigger::Requested {
            reason: reason.clone(),
        });
        self.shared.force(ForceCause::Requested(reason));
    }

    /// What started the shutdown, once it has started.
    pub fn trigger(&self) -> Option<Trigger> {
        self.shared.lock().trigger.as_ref().map(|(t, _)| t.clone())
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        *self.shared.phase.borrow()
    }

    /// A receiver that sees every phase change (and the current phase at
    /// once).
    pub fn watch_phase(&self) -> watch::Receiver<Phase> {
        self.shared.phase.subscribe()
    }

    /// Whether the shutdown has started (any phase after
    /// [`Phase::Running`]).
    pub fn is_draining(&self) -> bool {
        self.shared.flag(DRAINING)
    }

    /// Whether in-flight work has been told to finish ([`Phase::Stopping`]
    /// or later).
    pub fn is_stopping(&self) -> bool {
        self.shared.flag(STOPPING)
    }

    /// Whether the shutdown was forced.
    pub fn is_forced(&self) -> bool {
        self.shared.flag(FORCED)
    }

    /// Resolves when the shutdown starts (lame duck begins).
    ///
    /// # Cancellation safety
    ///
    /// Cancellation safe; resolves at once if the shutdown already started.
    pub async fn draining(&self) {
        self.shared.draining.cancelled().await;
    }

    /// Resolves when in-flight work should finish: listeners stop accepting
    /// and the drain begins. This is the moment [`token`](Self::token) is
    /// cancelled.
    ///
    /// # Cancellation safety
    ///
    /// Cancellation safe; resolves at once if already stopping.
    pub async fn stopping(&self) {
        self.shared.stopping.cancelled().await;
    }

    /// Resolves when the shutdown was forced (deadline, second signal,
    /// [`force`](Self::force)): anything still running is being aborted.
    /// When the drain's deadline forced it, the closers still run
    /// afterwards (see [`Builder::closer_reserve`]): a closer should not
    /// race its work against this.
    ///
    /// # Cancellation safety
    ///
    /// Cancellation safe.
    pub async fn forced(&self) {
        self.shared.forced.cancelled().await;
    }

    /// Resolves when the shutdown is over ([`Phase::Done`] or
    /// [`Phase::Forced`]).
    ///
    /// # Cancellation safety
    ///
    /// Cancellation safe; resolves at once for late subscribers.
    pub async fn done(&self) {
        self.shared.ensure_driven();
        self.shared.done.cancelled().await;
    }

    /// A child [`CancellationToken`] that is cancelled when in-flight work
    /// should finish ([`Phase::Stopping`]): the first [stage](mod@crate::stage)'s
    /// token. Cancelling the child does not affect the lifecycle; use it to
    /// scope a subsystem.
    pub fn token(&self) -> CancellationToken {
        self.shared.stopping.child_token()
    }

    /// A child [`CancellationToken`] cancelled when the shutdown is forced.
    pub fn forced_token(&self) -> CancellationToken {
        self.shared.forced.child_token()
    }

    /// The deadline (`trigger + grace`), once the shutdown has started.
    pub fn deadline(&self) -> Option<Instant> {
        self.shared.deadline()
    }

    /// What is left of the budget, once the shutdown has started.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline()
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// The grace period.
    pub fn grace(&self) -> Duration {
        self.shared.grace
    }

    /// How many items are in flight (tasks, hooks, connections).
    pub fn in_flight(&self) -> usize {
        self.shared.registry.len()
    }

    /// Spawn a named task. `f` receives a token that is cancelled when the
    /// task should finish ([`Phase::Stopping`]); the drain waits for the
    /// task, and the report records how it ended. Panics are caught and
    /// reported.
    ///
    /// The future may return `()` or `Result<(), E: Display>`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let lifecycle = lameduck::Lifecycle::builder().signals(lameduck::Signals::none()).build().unwrap();
    /// lifecycle.handle().spawn("worker", |token| async move { token.cancelled().await });
    /// lifecycle.handle().shutdown("test");
    /// assert_eq!(lifecycle.run().await.exit_code(), 0);
    /// # }
    /// ```
    pub fn spawn<F, Fut>(&self, name: impl Into<String>, f: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future + Send + 'static,
        Fut::Output: TaskResult,
    {
        let fut = outcome_of(f(self.token()));
        self.shared
            .spawn_item(FIRST_ID, Kind::Task, name.into(), false, fut);
    }

    /// Like [`spawn`](Self::spawn), for a task the service cannot live
    /// without: if it returns an error or panics, the shutdown is triggered
    /// with [`Trigger::TaskFailed`] and the exit code is non-zero.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let lifecycle = lameduck::Lifecycle::builder().signals(lameduck::Signals::none()).build().unwrap();
    /// lifecycle.handle().spawn_vital("db", |_| async { Err::<(), _>("connection lost") });
    /// let report = lifecycle.run().await;
    /// assert!(matches!(report.trigger, lameduck::Trigger::TaskFailed { .. }));
    /// assert_eq!(report.exit_code(), lameduck::exit::FAILED);
    /// # }
    /// ```
    pub fn spawn_vital<F, Fut>(&self, name: impl Into<String>, f: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future + Send + 'static,
        Fut::Output: TaskResult,
    {
        let fut = outcome_of(f(self.token()));
        self.shared
            .spawn_item(FIRST_ID, Kind::Task, name.into(), true, fut);
    }

    /// Track a future you drive yourself: while it runs, it counts as in
    /// flight under `name`, and the report records how it ended. It cannot
    /// be aborted at the deadline (it is not a task), but it is named as cut.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let lifecycle = lameduck::Lifecycle::builder().signals(lameduck::Signals::none()).build().unwrap();
    /// let value = lifecycle.handle().track("migration", async { 42 }).await;
    /// assert_eq!(value, 42);
    /// # }
    /// ```
    pub fn track<F>(
        &self,
        name: impl Into<String>,
        fut: F,
    ) -> impl Future<Output = F::Output> + Send
    where
        F: Future + Send,
    {
        let guard = self
            .shared
            .registry
            .register(Kind::Task, Label::Fixed(name.into()));
        crate::stage::tracked(async move {
            let out = fut.await;
            guard.finish(Outcome::Finished);
            out
        })
    }

    /// Register a named hook that starts when draining starts (like Go's
    /// `RegisterOnShutdown`, but awaited and bounded): the drain waits for
    /// it, and the deadline cuts it. Runs exactly once; registered after the
    /// shutdown started, it starts at once.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let lifecycle = lameduck::Lifecycle::builder().signals(lameduck::Signals::none()).build().unwrap();
    /// lifecycle.handle().on_shutdown("deregister", || async { /* tell the registry */ });
    /// # }
    /// ```
    pub fn on_shutdown<F, Fut>(&self, name: impl Into<String>, f: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: TaskResult,
    {
        let name = name.into();
        let hook = defer(f);
        let mut state = self.shared.lock();
        if state.hooks_started {
            drop(state);
            self.shared.spawn_hook(name, hook);
        } else {
            state.hooks.push((name, hook));
        }
    }

    /// Register a named closer: it runs after the drain, in reverse order of
    /// registration, bounded by what is left of the budget. Use it to close
    /// a pool or flush telemetry. The closers run also when the drain was
    /// cut by its deadline: the [closer reserve](Builder::closer_reserve) is
    /// kept for them. Only a second signal (or [`force`](Self::force))
    /// skips them.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let lifecycle = lameduck::Lifecycle::builder().signals(lameduck::Signals::none()).build().unwrap();
    /// lifecycle.handle().add_closer("flush", || async { Ok::<_, std::io::Error>(()) });
    /// # }
    /// ```
    pub fn add_closer<F, Fut>(&self, name: impl Into<String>, f: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: TaskResult,
    {
        self.shared.lock().closers.push((name.into(), defer(f)));
    }
}
