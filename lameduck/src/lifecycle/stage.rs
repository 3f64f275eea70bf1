//! Stages: what is told to stop after what.
//!
//! By default everything a lifecycle runs is told to stop at the same
//! moment, when [`Phase::Stopping`](crate::Phase::Stopping) begins. That is
//! wrong for work that feeds other work: a job worker told to stop while
//! the HTTP requests that enqueue jobs are still being drained either
//! leaves early (and a job accepted a moment later is never done) or has
//! to hand-roll "keep consuming until the producers are gone". Go services
//! order it by hand: `srv.Shutdown(ctx)`, *then* stop the workers, *then*
//! `db.Close()`. A [`Stage`] says the same thing declaratively.
//!
//! # Model
//!
//! Every task belongs to exactly one stage. The **first stage**, named
//! [`FIRST`], is implicit: the HTTP servers with all their connections, the
//! hooks, and every task spawned on a [`Handle`]. A stage made with
//! [`Handle::stage`] names what it comes after; each name is either
//!
//! - a **stage** (every task in it has ended), or
//! - a **task** (every task spawned under that name, in the stage where the
//!   name was first used, has ended). The task that runs an HTTP server
//!   ([`http::Server::serve`](crate::http), spawned as `"http"` by the axum
//!   integration and `"grpc"` by the tonic one) counts as ended only once
//!   every HTTP connection has ended too: its future returns when the
//!   listeners close, but the connections are what the next stage waits for.
//!
//! When the shutdown reaches [`Phase::Stopping`](crate::Phase::Stopping),
//! the first stage is told to stop. Each other stage is told (its
//! [`token`](Stage::token) is cancelled) the moment everything it comes
//! after has ended. The drain is over when every stage has ended; then the
//! closers run. Completion is event-driven: no stage polls.
//!
//! # One budget, shared
//!
//! Stages never extend the budget. The drain ends at `grace − closer
//! reserve` (see [`Builder::closer_reserve`](crate::Builder::closer_reserve));
//! within that, a stage that holds others up gets a share of the time left
//! when it was told to stop: with `n` stages still to come after it in the
//! longest chain, it gets `1 / (n + 1)` of what is left. If it has not ended
//! by then, it is **cut**: its tasks are aborted and its connections forced,
//! each is recorded as [`Outcome::Cut`](crate::Outcome::Cut), the report
//! names the stages it held up, and those are told to stop at once. A
//! stage that holds nothing up (the last of a chain) may use everything
//! left. Time a stage does not use passes on to the stages after it. The
//! chain is looked at afresh at every step: a stage made during the drain
//! after a running one shortens the running one's share, so that it still
//! gets its own turn.
//!
//! A second signal (or [`Handle::force`]) during any stage cuts everything
//! at once: running stages are reported as forced, stages that never got
//! their turn as skipped, and the closers are skipped.
//!
//! # Registration
//!
//! Names are resolved when the stage is made, so a mistake is an [`Error`]
//! there and then, never a hang at shutdown:
//!
//! - a name that is neither a stage nor a task spawned so far is rejected
//!   (spawn the task first; a task that already *finished* is fine, and
//!   counts as ended);
//! - a stage name that is already a stage or a task name is rejected;
//! - a dependency that would close a cycle ([`Stage::after`] can add one
//!   later) is rejected, with the cycle in the message.
//!
//! Stages may be made at any time. One made after the drain began is told
//! to stop as soon as what it comes after has ended; one made after the
//! drain ended is told at once, and nothing waits for its tasks.
//!
//! # Comparison to nested subsystems
//!
//! `tokio-graceful-shutdown` nests subsystems in a tree, and a parent
//! shuts down after its children. Stages are a flat graph instead: a stage
//! can come after several things (the HTTP server *and* a consumer), and
//! the order is written where the dependency is, not by where the code was
//! spawned. When the order does not matter, do not use stages: everything
//! on the [`Handle`] already drains together, which is the fastest.
//!
//! # Example
//!
//! HTTP, then the workers, then the pool:
//!
//! ```
//! use lameduck::{Lifecycle, Signals};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), lameduck::Error> {
//! let lifecycle = Lifecycle::builder().signals(Signals::none()).build()?;
//! let handle = lifecycle.handle();
//! # let server = async { Ok::<(), lameduck::Error>(()) };
//! handle.spawn_vital("http", |_| server); // Server::new(..).serve(app)
//!
//! // The workers are told to stop once HTTP has drained: a job accepted
//! // by the last request is still consumed.
//! let workers = handle.stage("workers", ["http"])?;
//! workers.spawn("worker", |token| async move {
//!     token.cancelled().await; // then finish the queue and return
//! });
//!
//! // Closers run after every stage, bounded by the closer reserve at least.
//! handle.add_closer("db-pool", || async { /* pool.close().await */ });
//!
//! handle.shutdown("example");
//! let report = lifecycle.await;
//! assert_eq!(report.stages[1].name, "workers");
//! # Ok(()) }
//! ```

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::lifecycle::Handle;
use crate::registry::Registry;
use crate::report::{Kind, StageOutcome, StageTiming};
use crate::task::{outcome_of, TaskResult};

/// The name of the implicit first stage: HTTP servers and their
/// connections, hooks, and tasks spawned on a [`Handle`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lameduck::Error> {
/// let lifecycle = lameduck::Lifecycle::builder().signals(lameduck::Signals::none()).build()?;
/// // After everything in the first stage, not only one task of it.
/// let flush = lifecycle.handle().stage("flush", [lameduck::stage::FIRST])?;
/// assert_eq!(flush.name(), "flush");
/// # Ok(()) }
/// ```
pub const FIRST: &str = "first";

pub(crate) type StageId = usize;
pub(crate) const FIRST_ID: StageId = 0;

tokio::task_local! {
    /// The stage and name of the lifecycle task being polled.
    static CURRENT: (StageId, Arc<str>);
    /// Set while a future tracked by `Handle::track` is polled.
    static TRACKED: ();
}

/// Run `fut` as the lifecycle task `name` of `stage`.
pub(crate) fn scope<F: Future>(
    stage: StageId,
    name: Arc<str>,
    fut: F,
) -> impl Future<Output = F::Output> {
    CURRENT.scope((stage, name), fut)
}

/// Called by the HTTP server when it starts serving: if it runs as a
/// lifecycle task, a dependency on that task also waits for every HTTP
/// connection to end.
#[cfg_attr(not(feature = "http"), allow(dead_code))] // used by the HTTP server
///
/// Returns whether the caller runs inside the lifecycle: as one of its
/// tasks or under [`Handle::track`].
pub(crate) fn serving_http(handle: &Handle) -> bool {
    let _ = CURRENT.try_with(|(stage, name)| {
        handle
            .shared
            .stages()
            .http
            .insert((*stage, name.to_string()));
    });
    in_lifecycle()
}

/// Whether the caller runs inside the lifecycle: as one of its tasks or
/// under [`Handle::track`].
#[cfg_attr(not(feature = "http"), allow(dead_code))] // used by the HTTP server
pub(crate) fn in_lifecycle() -> bool {
    CURRENT.try_with(|_| ()).is_ok() || TRACKED.try_with(|()| ()).is_ok()
}

/// Run `fut` as a future tracked by [`Handle::track`].
pub(crate) fn tracked<F: Future>(fut: F) -> impl Future<Output = F::Output> {
    TRACKED.scope((), fut)
}

/// What a stage comes after.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Dep {
    Stage(StageId),
    /// The tasks of this name in this stage.
    Task(StageId, String),
}

impl Dep {
    fn stage(&self) -> StageId {
        match self {
            Dep::Stage(s) | Dep::Task(s, _) => *s,
        }
    }
}

#[derive(Debug)]
struct StageState {
    name: String,
    after: Vec<Dep>,
    token: CancellationToken,
    started: Option<Instant>,
    ended: Option<(Instant, StageOutcome)>,
}

/// Every stage of one lifecycle, behind the lifecycle's lock.
#[derive(Debug)]
pub(crate) struct Stages {
    list: Vec<StageState>,
    /// Task names, and the stage where each was first used.
    tasks: HashMap<String, StageId>,
    /// Tasks (stage, name) that serve HTTP.
    http: HashSet<(StageId, String)>,
    /// The drain is over: stages made now are told at once.
    over: bool,
}

/// What [`Stages::step`] found.
pub(crate) struct Step {
    /// Every stage has ended (drained or cut).
    pub(crate) all_ended: bool,
    /// When the next running stage is due to be cut.
    pub(crate) next: Option<Instant>,
}

impl Stages {
    pub(crate) fn new(first: CancellationToken) -> Self {
        Stages {
            list: vec![StageState {
                name: FIRST.to_string(),
                after: Vec::new(),
                token: first,
                started: None,
                ended: None,
            }],
            tasks: HashMap::new(),
            http: HashSet::new(),
            over: false,
        }
    }

    /// The stages told to stop that have not ended yet, for progress lines.
    pub(crate) fn running(&self) -> Vec<&str> {
        self.list
            .iter()
            .filter(|s| s.started.is_some() && s.ended.is_none())
            .map(|s| s.name.as_str())
            .collect()
    }

    /// Whether any stage other than the first exists.
    pub(crate) fn any(&self) -> bool {
        self.list.len() > 1
    }

    pub(crate) fn record_task(&mut self, name: &str, stage: StageId) {
        if !self.tasks.contains_key(name) {
            self.tasks.insert(name.to_string(), stage);
        }
    }

    fn resolve(&self, name: &str, of: &str) -> Result<Dep, Error> {
        if let Some(id) = self.list.iter().position(|s| s.name == name) {
            return Ok(Dep::Stage(id));
        }
        if let Some(&stage) = self.tasks.get(name) {
            return Ok(Dep::Task(stage, name.to_string()));
        }
        Err(Error::stage(format!(
            "stage {of:?} comes after {name:?}, which is neither a stage nor a task spawned so far"
        )))
    }

    fn label(&self, dep: &Dep) -> String {
        match dep {
            Dep::Stage(s) => self.list[*s].name.clone(),
            Dep::Task(_, n) => n.clone(),
        }
    }

    /// The stages in a path from `from` to `to`, following dependencies.
    fn path(&self, from: StageId, to: StageId) -> Option<Vec<StageId>> {
        if from == to {
            return Some(vec![to]);
        }
        self.list[from].after.iter().find_map(|d| {
            self.path(d.stage(), to).map(|mut p| {
                p.insert(0, from);
                p
            })
        })
    }

    fn add(&mut self, name: String, after: Vec<String>) -> Result<StageId, Error> {
        if self.list.iter().any(|s| s.name == name) || self.tasks.contains_key(&name) {
            return Err(Error::stage(format!(
                "stage {name:?}: the name is already a stage or a task"
            )));
        }
        if after.contains(&name) {
            return Err(Error::stage(format!(
                "stage dependency cycle: {name:?} comes after itself"
            )));
        }
        let mut deps = Vec::new();
        for a in &after {
            let dep = self.resolve(a, &name)?;
            if !deps.contains(&dep) {
                deps.push(dep);
            }
        }
        if deps.is_empty() {
            deps.push(Dep::Stage(FIRST_ID));
        }
        let token = CancellationToken::new();
        if self.over {
            token.cancel();
        }
        self.list.push(StageState {
            name,
            after: deps,
            token,
            started: None,
            ended: None,
        });
        Ok(self.list.len() - 1)
    }

    fn add_after(&mut self, id: StageId, name: &str) -> Result<(), Error> {
        let me = self.list[id].name.clone();
        if self.list[id].started.is_some() || self.over {
            return Err(Error::stage(format!(
                "stage {me:?} was already told to stop: too late to add {name:?}"
            )));
        }
        let dep = self.resolve(name, &me)?;
        if let Some(path) = self.path(dep.stage(), id) {
            let mut chain = vec![format!("{me:?}")];
            chain.extend(path.iter().map(|s| format!("{:?}", self.list[*s].name)));
            return Err(Error::stage(format!(
                "stage dependency cycle: {}",
                chain.join(" after ")
            )));
        }
        if !self.list[id].after.contains(&dep) {
            self.list[id].after.push(dep);
        }
        Ok(())
    }

    fn satisfied(&self, dep: &Dep, registry: &Registry) -> bool {
        match dep {
            Dep::Stage(s) => self.list[*s].ended.is_some(),
            Dep::Task(s, n) => {
                self.list[*s].ended.is_some()
                    || !registry.task_pending(*s, n, self.http.contains(&(*s, n.clone())))
            }
        }
    }

    /// How many stages follow `id` in its longest chain of dependents.
    fn height(&self, id: StageId) -> u32 {
        self.list
            .iter()
            .enumerate()
            .filter(|(_, s)| s.after.iter().any(|d| d.stage() == id))
            .map(|(other, _)| 1 + self.height(other))
            .max()
            .unwrap_or(0)
    }

    /// The stages that wait for `id` and have not been told to stop.
    fn held_up(&self, id: StageId, registry: &Registry) -> Vec<String> {
        self.list
            .iter()
            .filter(|s| s.started.is_none())
            .filter(|s| {
                s.after
                    .iter()
                    .any(|d| d.stage() == id && !self.satisfied(d, registry))
            })
            .map(|s| s.name.clone())
            .collect()
    }

    /// When a stage that was told at `started` is cut, if it still holds
    /// others up: its share of what was left then. Computed afresh, so that
    /// a stage made later, after a running one, shortens the running one's
    /// share and still gets its own turn.
    fn share_end(&self, id: StageId, started: Instant, drain_end: Instant) -> Instant {
        let left = drain_end.saturating_duration_since(started);
        started + left / (self.height(id) + 1)
    }

    fn start(&mut self, id: StageId, now: Instant, drain_end: Instant) {
        let share = self.share_end(id, now, drain_end) - now;
        let stage = &mut self.list[id];
        stage.started = Some(now);
        stage.token.cancel();
        if id != FIRST_ID {
            tracing::info!(target: "lameduck", stage = %stage.name, share = %crate::report::Secs(share), "stage told to stop");
        }
    }

    /// Move the stages on: end those that drained, tell those whose
    /// dependencies ended, cut those past their share that hold others up.
    pub(crate) fn step(&mut self, registry: &Registry, now: Instant, drain_end: Instant) -> Step {
        loop {
            let mut changed = false;
            for id in 0..self.list.len() {
                let s = &self.list[id];
                if s.started.is_some() && s.ended.is_none() && registry.pending_in(id) == 0 {
                    self.list[id].ended = Some((now, StageOutcome::Drained));
                    changed = true;
                }
            }
            for id in 0..self.list.len() {
                let s = &self.list[id];
                if s.started.is_none() && s.after.iter().all(|d| self.satisfied(d, registry)) {
                    self.start(id, now, drain_end);
                    changed = true;
                }
            }
            for id in 0..self.list.len() {
                let s = &self.list[id];
                let due = s
                    .started
                    .is_some_and(|at| self.share_end(id, at, drain_end) <= now);
                if s.ended.is_some() || !due {
                    continue;
                }
                let held_up = self.held_up(id, registry);
                if held_up.is_empty() {
                    continue;
                }
                let cut = registry.cut_stage(id);
                tracing::warn!(target: "lameduck", stage = %self.list[id].name, cut, held_up = ?held_up, "stage cut at the end of its share of the budget");
                self.list[id].ended = Some((now, StageOutcome::Cut { held_up }));
                changed = true;
            }
            if !changed {
                break;
            }
        }
        let all_ended = self.list.iter().all(|s| s.ended.is_some());
        let next = (0..self.list.len())
            .filter(|&id| self.list[id].ended.is_none() && !self.held_up(id, registry).is_empty())
            .filter_map(|id| {
                let at = self.list[id].started?;
                Some(self.share_end(id, at, drain_end))
            })
            .min();
        Step { all_ended, next }
    }

    /// The drain is over, by the deadline (`forced` false) or a force:
    /// every stage is told, what runs is cut (or forced), what never got
    /// its turn is skipped. Also marks the drain as over.
    pub(crate) fn finish(&mut self, now: Instant, forced: bool) {
        self.over = true;
        let outcomes: Vec<Option<StageOutcome>> = (0..self.list.len())
            .map(|id| {
                let s = &self.list[id];
                if s.ended.is_some() {
                    return None;
                }
                Some(match (s.started.is_some(), forced) {
                    (false, _) => StageOutcome::Skipped,
                    (true, true) => StageOutcome::Forced,
                    // What was waiting for it, and never got its turn.
                    (true, false) => StageOutcome::Cut {
                        held_up: self
                            .list
                            .iter()
                            .filter(|w| {
                                w.started.is_none() && w.after.iter().any(|d| d.stage() == id)
                            })
                            .map(|w| w.name.clone())
                            .collect(),
                    },
                })
            })
            .collect();
        for (s, outcome) in self.list.iter_mut().zip(outcomes) {
            s.token.cancel();
            if let Some(outcome) = outcome {
                s.ended = Some((now, outcome));
            }
        }
    }

    /// The report of every stage, with times from `t0`; empty when there
    /// was only the first stage.
    pub(crate) fn report(&self, t0: Instant) -> Vec<StageTiming> {
        if !self.any() {
            return Vec::new();
        }
        self.list
            .iter()
            .map(|s| {
                let start = s.started.map(|at| at.saturating_duration_since(t0));
                let duration = match (s.started, &s.ended) {
                    (Some(at), Some((end, _))) => end.saturating_duration_since(at),
                    _ => Duration::ZERO,
                };
                StageTiming {
                    name: s.name.clone(),
                    after: s.after.iter().map(|d| self.label(d)).collect(),
                    start,
                    duration,
                    outcome: s
                        .ended
                        .as_ref()
                        .map_or(StageOutcome::Skipped, |(_, o)| o.clone()),
                }
            })
            .collect()
    }
}

/// A group of tasks told to stop only after what it comes after has ended.
/// See the [module documentation](self).
///
/// Cheap to clone. Made by [`Handle::stage`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lameduck::Error> {
/// let lifecycle = lameduck::Lifecycle::builder().signals(lameduck::Signals::none()).build()?;
/// let handle = lifecycle.handle();
/// handle.spawn("consumer", |token| async move { token.cancelled().await });
/// let flush = handle.stage("flush", ["consumer"])?;
/// flush.spawn("flusher", |token| async move { token.cancelled().await });
/// assert!(!flush.is_stopping());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Stage {
    handle: Handle,
    id: StageId,
    name: Arc<str>,
    token: CancellationToken,
}

impl fmt::Debug for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stage")
            .field("name", &self.name)
            .field("stopping", &self.is_stopping())
            .finish_non_exhaustive()
    }
}

impl Handle {
    /// Make a stage named `name`, told to stop only after everything in
    /// `after` has ended: stage names, task names (the task that serves
    /// HTTP counts with its connections), or [`FIRST`]. An empty `after`
    /// means [`FIRST`]. See the [stage module](crate::stage).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lameduck::Error> {
    /// let lifecycle = lameduck::Lifecycle::builder().signals(lameduck::Signals::none()).build()?;
    /// let handle = lifecycle.handle();
    /// # handle.spawn("http", |_| async {});
    /// let workers = handle.stage("workers", ["http"])?;
    /// let pool = handle.stage("pool", ["workers"])?;
    /// assert!(handle.stage("typo", ["htpp"]).unwrap_err().is_stage());
    /// # drop((workers, pool));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// A name in `after` that is neither a stage nor a task spawned so far,
    /// a `name` already used by a stage or a task, or `name` in `after`.
    pub fn stage<I, S>(&self, name: impl Into<String>, after: I) -> Result<Stage, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let name = name.into();
        let after: Vec<String> = after.into_iter().map(|s| s.as_ref().to_string()).collect();
        let (id, token) = {
            let mut stages = self.shared.stages();
            let id = stages.add(name.clone(), after)?;
            (id, stages.list[id].token.clone())
        };
        // A stage made during the drain may be ready at once.
        self.shared.registry.poke();
        Ok(Stage {
            handle: self.clone(),
            id,
            name: name.into(),
            token,
        })
    }
}

impl Stage {
    /// The stage's name.
    ///
    /// ```
    /// # let lifecycle = lameduck::Lifecycle::builder().signals(lameduck::Signals::none()).build().unwrap();
    /// let s = lifecycle.handle().stage("workers", [lameduck::stage::FIRST]).unwrap();
    /// assert_eq!(s.name(), "workers");
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Also come after `name` (a stage or a task), as long as this stage
    /// has not been told to stop.
    ///
    /// ```
    /// # let lifecycle = lameduck::Lifecycle::builder().signals(lameduck::Signals::none()).build().unwrap();
    /// let handle = lifecycle.handle();
    /// let a = handle.stage("a", [lameduck::stage::FIRST]).unwrap();
    /// let b = handle.stage("b", ["a"]).unwrap();
    /// let err = a.after("b").unwrap_err();
    /// assert_eq!(err.to_string(), r#"stage dependency cycle: "a" after "b" after "a""#);
    /// ```
    ///
    /// # Errors
    ///
    /// An unknown name, a dependency that would close a cycle, or a stage
    /// that was already told to stop.
    pub fn after(&self, name: impl AsRef<str>) -> Result<(), Error> {
        self.handle
            .shared
            .stages()
            .add_after(self.id, name.as_ref())
    }

    /// A child token of this stage, cancelled when the stage is told to
    /// stop (or the shutdown is forced).
    ///
    /// ```
    /// # let lifecycle = lameduck::Lifecycle::builder().signals(lameduck::Signals::none()).build().unwrap();
    /// let s = lifecycle.handle().stage("s", [lameduck::stage::FIRST]).unwrap();
    /// assert!(!s.token().is_cancelled());
    /// ```
    pub fn token(&self) -> CancellationToken {
        self.token.child_token()
    }

    /// Whether this stage has been told to stop.
    ///
    /// ```
    /// # let lifecycle = lameduck::Lifecycle::builder().signals(lameduck::Signals::none()).build().unwrap();
    /// let s = lifecycle.handle().stage("s", [lameduck::stage::FIRST]).unwrap();
    /// assert!(!s.is_stopping());
    /// ```
    pub fn is_stopping(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves when this stage is told to stop.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let lifecycle = lameduck::Lifecycle::builder().signals(lameduck::Signals::none()).build().unwrap();
    /// let s = lifecycle.handle().stage("s", [lameduck::stage::FIRST]).unwrap();
    /// lifecycle.handle().shutdown("example");
    /// let run = tokio::spawn(lifecycle.run());
    /// s.stopping().await;
    /// run.await.unwrap();
    /// # }
    /// ```
    ///
    /// # Cancellation safety
    ///
    /// Cancellation safe; resolves at once if the stage was already told.
    pub async fn stopping(&self) {
        self.token.cancelled().await;
    }

    /// The lifecycle's handle.
    ///
    /// ```
    /// # let lifecycle = lameduck::Lifecycle::builder().signals(lameduck::Signals::none()).build().unwrap();
    /// let s = lifecycle.handle().stage("s", [lameduck::stage::FIRST]).unwrap();
    /// assert!(!s.handle().is_draining());
    /// ```
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Spawn a named task in this stage: like [`Handle::spawn`], but its
    /// token is cancelled when this stage is told to stop.
    ///
    /// ```
    /// # let lifecycle = lameduck::Lifecycle::builder().signals(lameduck::Signals::none()).build().unwrap();
    /// # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    /// # rt.block_on(async {
    /// let s = lifecycle.handle().stage("s", [lameduck::stage::FIRST]).unwrap();
    /// s.spawn("worker", |token| async move { token.cancelled().await });
    /// # });
    /// ```
    pub fn spawn<F, Fut>(&self, name: impl Into<String>, f: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future + Send + 'static,
        Fut::Output: TaskResult,
    {
        let fut = outcome_of(f(self.token()));
        self.handle
            .shared
            .spawn_item(self.id, Kind::Task, name.into(), false, fut);
    }

    /// Like [`spawn`](Self::spawn), for a task the service cannot live
    /// without (see [`Handle::spawn_vital`]).
    ///
    /// ```
    /// # let lifecycle = lameduck::Lifecycle::builder().signals(lameduck::Signals::none()).build().unwrap();
    /// # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    /// # rt.block_on(async {
    /// let s = lifecycle.handle().stage("s", [lameduck::stage::FIRST]).unwrap();
    /// s.spawn_vital("consumer", |token| async move { token.cancelled().await });
    /// # });
    /// ```
    pub fn spawn_vital<F, Fut>(&self, name: impl Into<String>, f: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future + Send + 'static,
        Fut::Output: TaskResult,
    {
        let fut = outcome_of(f(self.token()));
        self.handle
            .shared
            .spawn_item(self.id, Kind::Task, name.into(), true, fut);
    }
}
