//! lameduck gives a tokio service its whole end of life. A signal arrives;
//! the service goes *lame duck* (still serving, but telling load balancers it
//! is leaving), stops accepting, lets every request, stream and background
//! task finish, closes its resources in order, and exits inside one time
//! budget, with a [`Report`] of anything that did not finish.
//!
//! It is Go's `net/http` `Server.Shutdown` pattern (signal, stop accepting,
//! wait for in-flight work, exit before a deadline), generalised to every
//! kind of work a service does.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use lameduck::Lifecycle;
//!
//! #[tokio::main]
//! async fn main() -> std::process::ExitCode {
//!     let lifecycle = Lifecycle::builder()
//!         .grace(Duration::from_secs(25))
//!         .build()
//!         .expect("install signal handlers");
//!     let handle = lifecycle.handle();
//!
//!     // A named background task; the drain waits for it.
//!     handle.spawn("worker", |token| async move {
//!         while !token.is_cancelled() {
//!             // ... take a job, finish it ...
//!             tokio::select! {
//!                 _ = token.cancelled() => {}
//!                 _ = tokio::time::sleep(Duration::from_millis(100)) => {}
//!             }
//!         }
//!     });
//!     // Runs when draining starts; awaited and bounded.
//!     handle.on_shutdown("deregister", || async { /* tell service discovery */ });
//!     // Runs after the drain, in reverse order of registration.
//!     handle.add_closer("flush", || async { Ok::<_, std::io::Error>(()) });
//!
//!     // SIGTERM or Ctrl-C starts the shutdown; a second one forces it.
//!     let report = lifecycle.await;
//!     eprintln!("{report}");
//!     report.process_exit_code()
//! }
//! ```
//!
//! # Phases
//!
//! ```text
//! Running ──trigger──▶ Draining (lame duck: readiness fails, still serving; lasts drain_delay)
//!         ──▶ Stopping (stop accepting; in-flight work told to finish and waited for)
//!         ──▶ Closing  (closers, last registered first)
//!         ──▶ Done     (report; exit 0)
//!  any phase ──deadline or second signal──▶ Forced (abort what is left; the report names it)
//! ```
//!
//! Every wait is bounded by one deadline, `first trigger + grace`, so the
//! whole shutdown fits inside a Kubernetes `terminationGracePeriodSeconds` or
//! a systemd `TimeoutStopSec`. Completion is event-driven: the moment the
//! last in-flight item ends, the next phase starts.
//!
//! # Exit codes
//!
//! See [`report`]: 0 when everything finished, 1 when something failed, 3
//! when the deadline cut work, 4 when a second signal forced the shutdown.
//!
//! # Features
//!
//! | feature | enables |
//! |---|---|
//! | `http` | [`http`]: the graceful HTTP/1.1 + HTTP/2 server on hyper-util |
//! | `axum` | `http::axum`: serve an axum `Router` with the lifecycle |
//! | `tonic` | `http::tonic`: serve tonic gRPC services, health set to NOT_SERVING on draining |
//! | `serde` | `Serialize` for the [`Report`] and `Report::to_json` |
//! | `full` | all of the above |
//!
//! # Platform support
//!
//! The lifecycle runs wherever tokio does. Signals: on Unix, `SIGTERM`,
//! `SIGINT` and `SIGQUIT`; elsewhere, Ctrl-C only (see [`signal`]).
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

#[cfg(unix)]
pub mod control;
pub mod error;
#[cfg(feature = "http")]
pub mod http;
pub mod lifecycle;
mod registry;
pub mod report;
#[cfg(all(unix, feature = "http"))]
pub mod restart;
pub mod signal;
pub mod stage;
#[cfg(unix)]
pub mod systemd;
mod task;
mod util;

pub use error::Error;
pub use lifecycle::{Builder, Handle, Lifecycle, Phase, Trigger};
pub use report::{exit, ForceCause, Item, Kind, Outcome, Report, StageOutcome, StageTiming};
pub use signal::{Signal, SignalSender, Signals};
pub use stage::Stage;
pub use task::TaskResult;
pub use tokio_util::sync::CancellationToken;

#[cfg(all(doctest, feature = "full"))]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
