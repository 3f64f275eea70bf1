//! The in-flight registry: every task, hook, connection and upgraded
//! connection that the drain waits for.
//!
//! Completion is event-driven: while the drain watches, the guard that
//! removes an entry wakes it at once; nothing polls.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::report::{Counts, Item, Kind, Outcome};
use crate::stage::{StageId, FIRST_ID};

/// Something in flight that can describe itself at the moment it is listed
/// (an HTTP connection knows its current request only then).
#[cfg_attr(not(feature = "http"), allow(dead_code))] // used by the HTTP server
pub(crate) trait Describe: Send + Sync {
    /// A short name: `GET /slow from 127.0.0.1:4711`.
    fn name(&self) -> String;
    /// Detail for the report: bytes, request phase and so on.
    fn detail(&self) -> String;
    /// The lifecycle entered Stopping: finish up.
    fn stop(&self) {}
    /// The shutdown was forced: abort.
    fn force(&self) {}
}

#[cfg_attr(not(feature = "http"), allow(dead_code))] // used by the HTTP server
pub(crate) enum Label {
    Fixed(String),
    Live(Arc<dyn Describe>),
}

impl Label {
    fn name(&self) -> String {
        match self {
            Label::Fixed(s) => s.clone(),
            Label::Live(d) => d.name(),
        }
    }

    fn detail(&self) -> String {
        match self {
            Label::Fixed(_) => String::new(),
            Label::Live(d) => d.detail(),
        }
    }
}

struct Entry {
    kind: Kind,
    label: Label,
    started: Instant,
    abort: Option<AbortHandle>,
    /// The stage it belongs to ([`crate::stage::FIRST_ID`] for HTTP work,
    /// hooks and tasks spawned on the handle).
    stage: StageId,
    /// Already recorded as cut: its end is not recorded again.
    cut: bool,
}

#[derive(Default)]
struct State {
    next_id: u64,
    entries: HashMap<u64, Entry>,
    finished: Vec<Item>,
    counts: Counts,
    draining: bool,
    forced: bool,
    /// Wake `changed` waiters on every end, or only when nothing is left.
    watch: Watch,
    /// Entries neither finished nor cut: in all, per stage, per task
    /// (stage, name), and HTTP ones (listeners, connections, upgraded), so
    /// that a drain step costs as much as the stages, not the connections.
    pending: Pending,
}

#[derive(Default)]
struct Pending {
    all: usize,
    stages: HashMap<StageId, usize>,
    tasks: HashMap<(StageId, String), usize>,
    http: usize,
}

impl Pending {
    fn change(&mut self, e: &Entry, up: bool) {
        fn step(n: &mut usize, up: bool) {
            if up {
                *n += 1;
            } else {
                *n = n.saturating_sub(1);
            }
        }
        step(&mut self.all, up);
        step(self.stages.entry(e.stage).or_default(), up);
        match (&e.kind, &e.label) {
            (Kind::Task, Label::Fixed(name)) => {
                let key = (e.stage, name.clone());
                let n = self.tasks.entry(key.clone()).or_default();
                step(n, up);
                if *n == 0 {
                    self.tasks.remove(&key);
                }
            }
            (Kind::Listener | Kind::Connection | Kind::Upgraded, _) => step(&mut self.http, up),
            _ => {}
        }
    }
}

/// When the drain wants to hear of an entry's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Watch {
    /// Not draining: nobody listens.
    #[default]
    Off,
    /// Only the last one (no stage waits for a particular entry).
    Empty,
    /// Every end (stages wait for particular entries).
    Each,
}

#[derive(Default)]
pub(crate) struct Registry {
    state: Mutex<State>,
    changed: Notify,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("Registry")
            .field("in_flight", &state.entries.len())
            .field("draining", &state.draining)
            .field("forced", &state.forced)
            .finish()
    }
}

/// A snapshot of one in-flight entry, for progress lines and the report.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub(crate) kind: Kind,
    pub(crate) name: String,
    pub(crate) age: Duration,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, State> {
        crate::util::lock(&self.state)
    }

    pub(crate) fn register(self: &Arc<Self>, kind: Kind, label: Label) -> InFlight {
        self.register_in(kind, label, FIRST_ID)
    }

    /// Register an entry that belongs to `stage`.
    pub(crate) fn register_in(
        self: &Arc<Self>,
        kind: Kind,
        label: Label,
        stage: StageId,
    ) -> InFlight {
        let mut state = self.lock();
        let id = state.next_id;
        state.next_id += 1;
        let entry = Entry {
            kind,
            label,
            started: Instant::now(),
            abort: None,
            stage,
            cut: false,
        };
        state.pending.change(&entry, true);
        state.entries.insert(id, entry);
        InFlight {
            registry: Arc::clone(self),
            id,
            done: false,
        }
    }

    pub(crate) fn set_abort(&self, id: u64, abort: AbortHandle) {
        let mut state = self.lock();
        if state.forced {
            abort.abort();
        }
        if let Some(entry) = state.entries.get_mut(&id) {
            entry.abort = Some(abort);
        }
    }

    #[cfg_attr(not(feature = "http"), allow(dead_code))] // used by the HTTP server
    pub(crate) fn set_kind(&self, id: u64, kind: Kind) {
        let mut state = self.lock();
        let state = &mut *state;
        if let Some(entry) = state.entries.get_mut(&id) {
            if !entry.cut {
                state.pending.change(entry, false);
            }
            entry.kind = kind;
            if !entry.cut {
                state.pending.change(entry, true);
            }
        }
    }

    /// Record an item that never went through `register` (a skipped closer).
    pub(crate) fn record(&self, item: Item) {
        self.lock().finished.push(item);
    }

    pub(crate) fn set_draining(&self) {
        self.lock().draining = true;
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub(crate) fn snapshot(&self) -> Vec<Snapshot> {
        let state = self.lock();
        let now = Instant::now();
        let mut list: Vec<_> = state
            .entries
            .values()
            .map(|e| Snapshot {
                kind: e.kind,
                name: e.label.name(),
                age: now.saturating_duration_since(e.started),
            })
            .collect();
        list.sort_by_key(|s| std::cmp::Reverse(s.age));
        list
    }

    /// Tell every live item that the lifecycle is stopping, or forced. One
    /// pass at shutdown, so that items need not each watch a shared token
    /// (polling one from every connection on every wake-up contends).
    pub(crate) fn broadcast(&self, force: bool) {
        for item in self.live() {
            if force {
                item.force();
            } else {
                item.stop();
            }
        }
    }

    fn live(&self) -> Vec<Arc<dyn Describe>> {
        self.lock()
            .entries
            .values()
            .filter_map(|e| match &e.label {
                Label::Live(d) => Some(Arc::clone(d)),
                Label::Fixed(_) => None,
            })
            .collect()
    }

    /// Abort everything left, and record it as cut. Later guard drops are
    /// not recorded again (closers excepted: they still run after a
    /// deadline cut the drain, and record their own end).
    pub(crate) fn force_cut(&self) {
        let live = {
            let mut state = self.lock();
            state.forced = true;
            Self::cut_where(&mut state, |_| true)
        };
        drop(live);
    }

    /// Cut what is left of one stage: abort its tasks, force its
    /// connections, record each as cut. Returns how many were cut.
    pub(crate) fn cut_stage(&self, stage: StageId) -> usize {
        let (n, live) = {
            let mut state = self.lock();
            let before = state.finished.len();
            let live = Self::cut_where(&mut state, |e| e.stage == stage);
            (state.finished.len() - before, live)
        };
        for item in &live {
            item.force();
        }
        n
    }

    /// Mark the entries that match as cut, abort the tasks among them and
    /// record them; returns the live ones, to be forced outside the lock.
    fn cut_where(state: &mut State, matches: impl Fn(&Entry) -> bool) -> Vec<Arc<dyn Describe>> {
        let now = Instant::now();
        let mut live = Vec::new();
        let mut cut = Vec::new();
        for e in state.entries.values_mut() {
            if e.cut || !matches(e) {
                continue;
            }
            state.pending.change(e, false);
            e.cut = true;
            if let Some(abort) = &e.abort {
                abort.abort();
            }
            if let Label::Live(d) = &e.label {
                live.push(Arc::clone(d));
            }
            if e.kind != Kind::Listener {
                cut.push(Item {
                    kind: e.kind,
                    name: e.label.name(),
                    outcome: Outcome::Cut,
                    duration: now.saturating_duration_since(e.started),
                    detail: e.label.detail(),
                });
            }
        }
        cut.sort_by_key(|i| std::cmp::Reverse(i.duration));
        state.finished.extend(cut);
        live
    }

    /// When to wake [`changed`](Self::changed).
    pub(crate) fn watch(&self, watch: Watch) {
        self.lock().watch = watch;
    }

    /// A future that resolves at the next end of an entry, while watching.
    /// Enable it before checking the state it guards.
    pub(crate) fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// Wake whoever waits on [`changed`](Self::changed): something other
    /// than an entry's end changed (a stage was added).
    pub(crate) fn poke(&self) {
        self.changed.notify_waiters();
    }

    /// How many entries of `stage` are neither finished nor cut.
    pub(crate) fn pending_in(&self, stage: StageId) -> usize {
        self.lock().pending.stages.get(&stage).copied().unwrap_or(0)
    }

    /// Whether a task named `name` in `stage` is neither finished nor cut;
    /// with `http`, also whether any HTTP listener or connection is.
    pub(crate) fn task_pending(&self, stage: StageId, name: &str, http: bool) -> bool {
        let state = self.lock();
        (http && state.pending.http > 0)
            || state.pending.tasks.contains_key(&(stage, name.to_string()))
    }

    /// How many entries are neither finished nor cut.
    pub(crate) fn pending(&self) -> usize {
        self.lock().pending.all
    }

    pub(crate) fn take_report(&self) -> (Vec<Item>, Counts) {
        let mut state = self.lock();
        (
            std::mem::take(&mut state.finished),
            std::mem::take(&mut state.counts),
        )
    }

    fn finish(&self, id: u64, outcome: Option<Outcome>) {
        let mut state = self.lock();
        let Some(entry) = state.entries.remove(&id) else {
            return;
        };
        if !entry.cut {
            state.pending.change(&entry, false);
        }
        if !entry.cut && (!state.forced || entry.kind == Kind::Closer) {
            match entry.kind {
                Kind::Task | Kind::Hook | Kind::Closer => {
                    let item = Item {
                        kind: entry.kind,
                        name: entry.label.name(),
                        outcome: outcome.unwrap_or(Outcome::Cut),
                        duration: entry.started.elapsed(),
                        detail: String::new(),
                    };
                    state.finished.push(item);
                }
                Kind::Connection if state.draining => state.counts.connections_closed += 1,
                Kind::Upgraded if state.draining => state.counts.upgraded_closed += 1,
                _ => {}
            }
        }
        let wake = match state.watch {
            Watch::Off => false,
            Watch::Empty => state.pending.all == 0,
            Watch::Each => true,
        };
        drop(state);
        if wake {
            self.changed.notify_waiters();
        }
    }
}

/// Keeps one entry in the registry until it is finished or dropped.
pub(crate) struct InFlight {
    registry: Arc<Registry>,
    id: u64,
    done: bool,
}

impl fmt::Debug for InFlight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InFlight").field("id", &self.id).finish()
    }
}

impl InFlight {
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// A cheap reference to this entry that can change its kind later
    /// (a connection that upgrades), held by whoever knows when.
    #[cfg_attr(not(feature = "http"), allow(dead_code))] // used by the HTTP server
    pub(crate) fn tag(&self) -> Tag {
        Tag {
            registry: Arc::clone(&self.registry),
            id: self.id,
        }
    }

    pub(crate) fn finish(mut self, outcome: Outcome) {
        self.done = true;
        self.registry.finish(self.id, Some(outcome));
    }
}

/// Changes the kind of an entry while it is in flight; does nothing once the
/// entry is gone.
#[cfg_attr(not(feature = "http"), allow(dead_code))] // used by the HTTP server
pub(crate) struct Tag {
    registry: Arc<Registry>,
    id: u64,
}

#[cfg_attr(not(feature = "http"), allow(dead_code))] // used by the HTTP server
impl Tag {
    pub(crate) fn set_kind(&self, kind: Kind) {
        self.registry.set_kind(self.id, kind);
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tag").field("id", &self.id).finish()
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.done {
            // Dropped without an outcome: the future was aborted or dropped.
            self.registry.finish(self.id, None);
        }
    }
}
