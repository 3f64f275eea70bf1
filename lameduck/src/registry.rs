//! The in-flight registry: every task, hook, connection and upgraded
//! connection that the drain waits for.
//!
//! Completion is event-driven: the guard that removes the last entry wakes
//! the drain at once; nothing polls.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::report::{Counts, Item, Kind, Outcome};

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
}

#[derive(Default)]
struct State {
    next_id: u64,
    entries: HashMap<u64, Entry>,
    finished: Vec<Item>,
    counts: Counts,
    draining: bool,
    forced: bool,
}

#[derive(Default)]
pub(crate) struct Registry {
    state: Mutex<State>,
    empty: Notify,
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
        let mut state = self.lock();
        let id = state.next_id;
        state.next_id += 1;
        state.entries.insert(
            id,
            Entry {
                kind,
                label,
                started: Instant::now(),
                abort: None,
            },
        );
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
        if let Some(entry) = self.lock().entries.get_mut(&id) {
            entry.kind = kind;
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

    /// Wait until nothing is in flight. Cancellation safe.
    pub(crate) async fn wait_empty(&self) {
        loop {
            let notified = self.empty.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.lock().entries.is_empty() {
                return;
            }
            notified.await;
        }
    }

    /// Abort everything left, and record it as cut. Later guard drops are
    /// not recorded again.
    pub(crate) fn force_cut(&self) {
        let mut state = self.lock();
        if state.forced {
            return;
        }
        state.forced = true;
        let now = Instant::now();
        let mut cut: Vec<Item> = state
            .entries
            .values()
            .map(|e| {
                if let Some(abort) = &e.abort {
                    abort.abort();
                }
                Item {
                    kind: e.kind,
                    name: e.label.name(),
                    outcome: Outcome::Cut,
                    duration: now.saturating_duration_since(e.started),
                    detail: e.label.detail(),
                }
            })
            .filter(|item| item.kind != Kind::Listener)
            .collect();
        cut.sort_by_key(|i| std::cmp::Reverse(i.duration));
        state.finished.extend(cut);
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
        if !state.forced {
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
        let empty = state.entries.is_empty();
        drop(state);
        if empty {
            self.empty.notify_waiters();
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
