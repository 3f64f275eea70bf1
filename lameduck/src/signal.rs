//! Operating-system signals, or any other source of them, as shutdown triggers.
//!
//! A [`Lifecycle`](crate::Lifecycle) listens to one [`Signals`] source. The
//! contract:
//!
//! | signal | first time | again during shutdown |
//! |---|---|---|
//! | `SIGTERM`, `SIGINT` (Ctrl-C) | start a graceful shutdown | force: abort what is left, report, exit |
//! | `SIGQUIT` | force at once (no lame duck, no drain) | – |
//! | `SIGHUP` | a zero-downtime restart when [restarts](crate::restart) are enabled; otherwise logged and ignored | ignored |
//!
//! The process never dies *from* a signal it listens to: the lifecycle turns
//! it into a trigger, and `main` returns the report's exit code.
//!
//! # Platform support
//!
//! On Unix, [`Signals::os`] listens to `SIGTERM`, `SIGINT`, `SIGQUIT` and
//! `SIGHUP`. On
//! other platforms it listens to Ctrl-C only (reported as
//! [`Signal::Interrupt`]).
//!
//! # Injecting signals
//!
//! Tests and embedders drive a lifecycle without real signals through
//! [`Signals::channel`]:
//!
//! ```
//! use lameduck::{Lifecycle, Signal, Signals};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let (sender, signals) = Signals::channel();
//! let lifecycle = Lifecycle::builder().signals(signals).build().unwrap();
//! sender.send(Signal::Terminate);
//! let report = lifecycle.run().await;
//! assert_eq!(report.exit_code(), 0);
//! # }
//! ```

use std::fmt;
use std::io;

use futures_util::stream::{self, BoxStream, StreamExt};
use tokio::sync::mpsc;

/// A signal that the lifecycle reacts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub enum Signal {
    /// `SIGTERM`: the supervisor asks the service to stop.
    Terminate,
    /// `SIGINT` or Ctrl-C.
    Interrupt,
    /// `SIGQUIT`: stop now, without a graceful drain.
    Quit,
    /// `SIGHUP`: reserved for zero-downtime restarts.
    Hangup,
}

impl Signal {
    /// The conventional name of the signal, such as `"SIGTERM"`.
    ///
    /// ```
    /// assert_eq!(lameduck::Signal::Terminate.name(), "SIGTERM");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            Signal::Terminate => "SIGTERM",
            Signal::Interrupt => "SIGINT",
            Signal::Quit => "SIGQUIT",
            Signal::Hangup => "SIGHUP",
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A source of [`Signal`]s for a [`Lifecycle`](crate::Lifecycle).
///
/// See the [module documentation](self) for the contract.
pub struct Signals {
    pub(crate) stream: BoxStream<'static, Signal>,
}

impl fmt::Debug for Signals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signals").finish_non_exhaustive()
    }
}

impl Signals {
    /// Listen to the operating system's signals.
    ///
    /// The handlers are installed when this returns, so from then on the
    /// process no longer dies from `SIGTERM`, `SIGINT`, `SIGQUIT` or `SIGHUP`. Must be
    /// called inside a tokio runtime.
    ///
    /// # Errors
    ///
    /// Fails when a signal handler cannot be installed.
    ///
    /// ```no_run
    /// # #[tokio::main] async fn main() -> std::io::Result<()> {
    /// let signals = lameduck::Signals::os()?;
    /// # Ok(()) }
    /// ```
    pub fn os() -> io::Result<Self> {
        os_stream().map(|stream| Signals { stream })
    }

    /// A source that never delivers a signal: shutdown starts only from a
    /// [`Handle`](crate::Handle).
    ///
    /// ```
    /// let signals = lameduck::Signals::none();
    /// ```
    pub fn none() -> Self {
        Signals {
            stream: stream::pending().boxed(),
        }
    }

    /// A source fed by hand, for tests and for embedders that receive
    /// signals some other way.
    ///
    /// ```
    /// let (sender, signals) = lameduck::Signals::channel();
    /// sender.send(lameduck::Signal::Interrupt);
    /// ```
    pub fn channel() -> (SignalSender, Self) {
        let (tx, rx) = mpsc::unbounded_channel();
        let stream = stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|signal| (signal, rx))
        });
        (SignalSender { tx }, Signals::from_stream(stream))
    }

    /// A source built from any stream of signals.
    ///
    /// ```
    /// use futures_util::stream;
    /// let signals = lameduck::Signals::from_stream(stream::iter([lameduck::Signal::Terminate]));
    /// ```
    pub fn from_stream<S>(stream: S) -> Self
    where
        S: futures_util::Stream<Item = Signal> + Send + 'static,
    {
        // Once the given stream ends, no more signals will come: stay pending
        // rather than reporting the end, so the lifecycle keeps waiting for
        // other triggers.
        Signals {
            stream: stream.chain(stream::pending()).boxed(),
        }
    }
}

/// Sends signals into a [`Signals::channel`] source.
///
/// Cloneable; sending after the lifecycle is gone does nothing.
#[derive(Debug, Clone)]
pub struct SignalSender {
    tx: mpsc::UnboundedSender<Signal>,
}

impl SignalSender {
    /// Deliver `signal` as if the operating system had sent it.
    ///
    /// ```
    /// let (sender, _signals) = lameduck::Signals::channel();
    /// sender.send(lameduck::Signal::Terminate);
    /// ```
    pub fn send(&self, signal: Signal) {
        let _ = self.tx.send(signal);
    }
}

#[cfg(unix)]
fn os_stream() -> io::Result<BoxStream<'static, Signal>> {
    use tokio::signal::unix::{signal, SignalKind};

    let kinds = [
        (SignalKind::terminate(), Signal::Terminate),
        (SignalKind::interrupt(), Signal::Interrupt),
        (SignalKind::quit(), Signal::Quit),
        (SignalKind::hangup(), Signal::Hangup),
    ];
    let mut streams = Vec::with_capacity(kinds.len());
    for (kind, sig) in kinds {
        let listener = signal(kind)?;
        streams.push(
            stream::unfold(listener, move |mut listener| async move {
                listener.recv().await.map(|()| (sig, listener))
            })
            .boxed(),
        );
    }
    Ok(stream::select_all(streams).chain(stream::pending()).boxed())
}

#[cfg(not(unix))]
fn os_stream() -> io::Result<BoxStream<'static, Signal>> {
    // Register eagerly so that the error surfaces here, not later.
    let ctrl_c = tokio::signal::windows::ctrl_c()?;
    Ok(stream::unfold(ctrl_c, |mut ctrl_c| async move {
        ctrl_c.recv().await.map(|()| (Signal::Interrupt, ctrl_c))
    })
    .chain(stream::pending())
    .boxed())
}
