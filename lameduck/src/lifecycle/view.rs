//! The narrow view of a lifecycle that the HTTP and restart layers get.
//!
//! In the spirit of hyper-util's `GracefulShutdown`/`Watcher` pair: a layer
//! that serves connections needs to know *that* the lifecycle stops or
//! forces, to pause and resume accepting, and to register what it has in
//! flight so that the drain waits for it and the report can name it. It
//! needs nothing else of the lifecycle's internals (its tokens, flags,
//! phase channel, budget or closers), and through this view it sees
//! nothing else.
//!
//! Stop and force reach a registered live item in one pass, by
//! [`Describe::stop`] and [`Describe::force`] (see
//! [`Registry::broadcast`](crate::registry::Registry::broadcast)), rather
//! than by every item polling a shared token: an item registered after the
//! pass reads [`is_stopping`](View::is_stopping) /
//! [`is_forced`](View::is_forced) once, which are set before the pass.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;

use super::{Handle, Shared, FORCED, STOPPING};
use crate::registry::{Describe, InFlight, Label};
use crate::report::Kind;

/// What the HTTP (and restart) layer may see and do of a lifecycle. Cheap to
/// clone.
#[derive(Clone)]
#[cfg_attr(not(feature = "http"), allow(dead_code))] // used by the HTTP server
pub(crate) struct View {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("View")
            .field("stopping", &self.is_stopping())
            .field("forced", &self.is_forced())
            .finish()
    }
}

#[cfg_attr(not(feature = "http"), allow(dead_code))] // used by the HTTP server
impl View {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        View { shared }
    }

    /// A public handle on the same lifecycle (for [`ShutdownSignal`]s given
    /// to handlers).
    ///
    /// [`ShutdownSignal`]: crate::http::ShutdownSignal
    pub(crate) fn handle(&self) -> Handle {
        Handle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Whether in-flight work has been told to finish (stop accepting,
    /// close at the next boundary).
    /// See [`Shared::ensure_driven`].
    pub(crate) fn ensure_driven(&self) {
        self.shared.ensure_driven();
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.shared.flag(STOPPING)
    }

    /// Whether what is left is being aborted.
    pub(crate) fn is_forced(&self) -> bool {
        self.shared.flag(FORCED)
    }

    /// Resolves when the lifecycle stops accepting. Cancellation safe.
    pub(crate) async fn stopping(&self) {
        self.shared.stopping.cancelled().await;
    }

    /// Whether listeners should accept right now: `false` while accepting
    /// is paused (a restart's successor on probation), with the sockets
    /// kept open. Watch it for resumes.
    pub(crate) fn accepting(&self) -> watch::Receiver<bool> {
        self.shared.link.accepting.subscribe()
    }

    /// Pause (`false`) or resume (`true`) accepting, without closing the
    /// listening sockets (for the restart layer).
    pub(crate) fn set_accepting(&self, accepting: bool) {
        self.shared.link.accepting.send_replace(accepting);
    }

    /// Start the shutdown because a restart's successor took over (for the
    /// restart layer). Returns `false` when it had already started.
    pub(crate) fn trigger_restart(&self, successor: u32) -> bool {
        self.shared.trigger_restart(successor)
    }

    /// Where `SIGHUP` goes from now on (for the restart layer).
    pub(crate) fn on_hangup(&self, tx: tokio::sync::mpsc::UnboundedSender<()>) {
        *crate::util::lock(&self.shared.link.hangup) = Some(tx);
    }

    /// Run `f` once, as the last thing before the report is returned
    /// (removing a PID file, a control socket's path): a task waiting for
    /// the end might never be polled again once `main` returns.
    pub(crate) fn at_exit(&self, f: impl FnOnce() + Send + 'static) {
        crate::util::lock(&self.shared.link.at_exit).push(Box::new(f));
    }

    /// Register an in-flight item with a fixed name; the drain waits until
    /// the returned guard is dropped or finished.
    pub(crate) fn register(&self, kind: Kind, name: String) -> InFlight {
        self.shared.registry.register(kind, Label::Fixed(name))
    }

    /// Register an in-flight item that describes itself when listed and is
    /// told when the lifecycle stops ([`Describe::stop`]) or forces
    /// ([`Describe::force`]).
    pub(crate) fn watch(&self, kind: Kind, item: Arc<dyn Describe>) -> InFlight {
        self.shared.registry.register(kind, Label::Live(item))
    }

    /// Run `fut` as a task the drain waits for (without a name of its own:
    /// it registers what it serves itself).
    pub(crate) fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.shared.tracker.spawn(fut);
    }
}

/// The restart layer's state, kept by the lifecycle but reached only
/// through the [`View`]: whether listeners accept, where `SIGHUP` goes, and
/// clean-ups to run at exit.
pub(crate) struct Link {
    accepting: watch::Sender<bool>,
    pub(super) hangup: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedSender<()>>>,
    pub(super) at_exit: std::sync::Mutex<Vec<Box<dyn FnOnce() + Send>>>,
}

impl Default for Link {
    fn default() -> Self {
        Link {
            accepting: watch::channel(true).0,
            hangup: std::sync::Mutex::new(None),
            at_exit: std::sync::Mutex::new(Vec::new()),
        }
    }
}
