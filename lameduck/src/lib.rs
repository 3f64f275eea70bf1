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
//!     tracing_subscriber::fmt::init(); // lameduck reports through `tracing`
//!     let lifecycle = Lifecycle::builder()
//!         .grace(Duration::from_secs(25))
//!         .build()
//!         .expect("install signal handlers");
//!     let handle = lifecycle.handle();
//!     # let server = async { Ok::<(), lameduck::Error>(()) };
//!     // The HTTP server (see `http::Server`), in the first stage.
//!     handle.spawn_vital("http", |_| server);
//!
//!     // The workers stop only once HTTP has drained: no request can
//!     // enqueue a job they would never see.
//!     let workers = handle.stage("workers", ["http"]).expect("http is spawned");
//!     workers.spawn("worker", |token| async move {
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
//!     // Runs after every stage, last registered first, even when the drain
//!     // was cut by its deadline.
//!     handle.add_closer("db-pool", || async { Ok::<_, std::io::Error>(()) });
//!
//!     // SIGTERM or Ctrl-C starts the shutdown; a second one forces it. The
//!     // lifecycle logs the report; the exit code follows from it.
//!     let report = lifecycle.await;
//!     report.process_exit_code()
//! }
//! ```
//!
//! # Phases
//!
//! ```text
//! Running ──trigger──▶ Draining (lame duck: readiness fails, still serving; lasts drain_delay)
//!         ──▶ Stopping (stop accepting; in-flight work told to finish and waited for, stage by stage)
//!         ──▶ Closing  (closers, last registered first)
//!         ──▶ Done     (report; exit 0)
//!  drain deadline (grace − closer reserve) ──▶ what is in flight is cut; Closing still runs
//!  any phase ──second signal──▶ Forced (abort what is left, skip the closers; the report names it)
//! ```
//!
//! Every wait is bounded by one deadline, `first trigger + grace`, so the
//! whole shutdown fits inside a Kubernetes `terminationGracePeriodSeconds` or
//! a systemd `TimeoutStopSec`. The drain ends a little earlier, at `grace −
//! closer reserve` ([`Builder::closer_reserve`]), so the closers always get
//! their turn. Completion is event-driven: the moment the last in-flight
//! item ends, the next phase starts.
//!
//! # Stages
//!
//! By default everything is told to stop at once. [`Handle::stage`] makes
//! a [`Stage`] told to stop only after named stages or tasks have drained
//! (the HTTP server's task counts with its connections); each stage that
//! holds others up gets a share of the budget, and is cut when it runs out,
//! so the stages after it still get their turn. See [`stage`].
//!
//! # The report
//!
//! When the shutdown is over, the lifecycle logs the [`Report`] itself:
//! one `tracing` event, target `lameduck`, `INFO` when clean and `WARN`
//! otherwise, with the summary line, one line per stage and one per
//! problem. Applications do not print it again; they return
//! [`Report::process_exit_code`], or serialize it with the `serde`
//! feature. An application that prints it its own way turns the log off
//! with [`Builder::log_report`].
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
pub use lifecycle::stage;
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
