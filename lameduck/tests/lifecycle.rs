//! Lifecycle behaviour under paused time: phase order, the one budget,
//! closers, hooks, tasks, signals, force and the report.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lameduck::{exit, ForceCause, Kind, Lifecycle, Outcome, Phase, Signal, Signals, Trigger};
use tokio::sync::oneshot;
use tokio::time::Instant;

fn quiet() -> lameduck::Builder {
    Lifecycle::builder().signals(Signals::none())
}

fn item<'a>(report: &'a lameduck::Report, name: &str) -> &'a lameduck::Item {
    report
        .items
        .iter()
        .find(|i| i.name == name)
        .unwrap_or_else(|| panic!("no item {name:?} in {report}"))
}

#[tokio::test(start_paused = true)]
async fn phases_advance_in_order_and_are_observable() {
    let lifecycle = quiet().drain_delay(Duration::from_secs(2)).build().unwrap();
    let handle = lifecycle.handle();
    let mut rx = handle.watch_phase();
    let seen = Arc::new(Mutex::new(vec![*rx.borrow()]));
    let seen2 = Arc::clone(&seen);
    let watcher = tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let p = *rx.borrow_and_update();
            seen2.lock().unwrap().push(p);
            if p.is_finished() {
                break;
            }
        }
    });
    handle.spawn("worker", |token| async move {
        token.cancelled().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    });
    handle.add_closer("close", || async {
        tokio::time::sleep(Duration::from_millis(100)).await;
    });
    let t0 = Instant::now();
    handle.shutdown("test");
    let report = lifecycle.run().await;
    watcher.await.unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            Phase::Running,
            Phase::Draining,
            Phase::Stopping,
            Phase::Closing,
            Phase::Done
        ]
    );
    // Draining lasted exactly the drain delay, Stopping the worker's 300 ms,
    // Closing the closer's 100 ms: nothing polls, nothing lingers.
    let phases: Vec<_> = report
        .phases
        .iter()
        .map(|p| (p.phase, p.duration))
        .collect();
    assert_eq!(
        phases,
        vec![
            (Phase::Draining, Duration::from_secs(2)),
            (Phase::Stopping, Duration::from_millis(300)),
            (Phase::Closing, Duration::from_millis(100)),
            (Phase::Done, Duration::ZERO),
        ]
    );
    assert_eq!(t0.elapsed(), Duration::from_millis(2400));
    assert_eq!(report.exit_code(), exit::OK);
    assert_eq!(
        report.trigger,
        Trigger::Requested {
            reason: "test".into()
        }
    );
}

#[tokio::test(start_paused = true)]
async fn idle_lifecycle_finishes_at_once() {
    let lifecycle = quiet().build().unwrap();
    lifecycle.handle().shutdown("idle");
    let t0 = Instant::now();
    let report = lifecycle.await;
    assert_eq!(t0.elapsed(), Duration::ZERO);
    assert!(report.is_clean());
    assert!(report
        .to_string()
        .starts_with("shutdown complete in 0.000s"));
}

#[tokio::test(start_paused = true)]
async fn budget_is_counted_from_the_first_trigger() {
    let lifecycle = quiet()
        .grace(Duration::from_secs(10))
        .drain_delay(Duration::from_secs(30))
        .build()
        .unwrap();
    let handle = lifecycle.handle();
    assert_eq!(handle.deadline(), None);
    let t0 = Instant::now();
    handle.shutdown("first");
    assert_eq!(handle.deadline(), Some(t0 + Duration::from_secs(10)));
    tokio::time::advance(Duration::from_secs(4)).await;
    // A later trigger does not move the deadline.
    assert!(!handle.shutdown("second"));
    assert_eq!(handle.remaining(), Some(Duration::from_secs(6)));
    // The drain delay (30 s) is longer than the grace: it is cut at the
    // deadline, which forces the shutdown.
    let report = lifecycle.run().await;
    assert_eq!(t0.elapsed(), Duration::from_secs(10));
    assert_eq!(report.forced, Some(ForceCause::Deadline));
    assert_eq!(report.forced_in, Some(Phase::Draining));
    assert_eq!(report.exit_code(), exit::DEADLINE);
}

#[tokio::test(start_paused = true)]
async fn closers_run_in_reverse_order_each_bounded_by_what_is_left() {
    let lifecycle = quiet().grace(Duration::from_secs(5)).build().unwrap();
    let handle = lifecycle.handle();
    let order = Arc::new(Mutex::new(Vec::new()));
    for name in ["db", "cache", "telemetry"] {
        let order = Arc::clone(&order);
        handle.add_closer(name, move || async move {
            order.lock().unwrap().push(name);
            tokio::time::sleep(Duration::from_secs(1)).await;
        });
    }
    handle.shutdown("test");
    let report = lifecycle.run().await;
    assert_eq!(*order.lock().unwrap(), vec!["telemetry", "cache", "db"]);
    assert_eq!(report.exit_code(), exit::OK);
    assert_eq!(item(&report, "db").duration, Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn deadline_cuts_a_stuck_closer_and_skips_the_rest() {
    let lifecycle = quiet().grace(Duration::from_secs(3)).build().unwrap();
    let handle = lifecycle.handle();
    handle.add_closer("never-runs", || async {});
    handle.add_closer("stuck", std::future::pending::<()>);
    handle.add_closer("fails", || async { Err::<(), _>("disk full") });
    let t0 = Instant::now();
    handle.shutdown("test");
    let report = lifecycle.run().await;
    assert_eq!(t0.elapsed(), Duration::from_secs(3));
    assert_eq!(
        item(&report, "fails").outcome,
        Outcome::Failed("disk full".into())
    );
    let stuck = item(&report, "stuck");
    assert_eq!(stuck.outcome, Outcome::Cut);
    assert_eq!(stuck.duration, Duration::from_secs(3));
    assert_eq!(item(&report, "never-runs").outcome, Outcome::Skipped);
    assert_eq!(report.forced_in, Some(Phase::Closing));
    let text = report.to_string();
    assert!(text.contains("closer \"stuck\" cut after 3.000s"), "{text}");
    assert!(text.contains("closer \"never-runs\" skipped"), "{text}");
}

#[tokio::test(start_paused = true)]
async fn deadline_cuts_a_stuck_task_and_hook_and_names_them_and_the_closer_still_runs() {
    // 2 s grace, a tenth of it (0.2 s) kept for the closers by default.
    let lifecycle = quiet().grace(Duration::from_secs(2)).build().unwrap();
    let handle = lifecycle.handle();
    let (dropped_tx, dropped_rx) = oneshot::channel::<()>();
    handle.spawn("ignores-token", |_token| async move {
        let _dropped = dropped_tx; // dropped when the task is aborted
        std::future::pending::<()>().await;
    });
    handle.spawn("cooperates", |token| async move { token.cancelled().await });
    handle.on_shutdown("hangs", std::future::pending::<()>);
    let closed_at = Arc::new(Mutex::new(None));
    let at = Arc::clone(&closed_at);
    handle.add_closer("after", move || async move {
        *at.lock().unwrap() = Some(Instant::now());
    });
    let t0 = Instant::now();
    handle.shutdown("test");
    let report = lifecycle.run().await;
    // The drain was cut at grace − reserve; the closer ran right after.
    assert_eq!(
        *closed_at.lock().unwrap(),
        Some(t0 + Duration::from_millis(1800))
    );
    assert_eq!(t0.elapsed(), Duration::from_millis(1800));
    assert_eq!(report.closer_reserve, Duration::from_millis(200));
    assert_eq!(report.forced, Some(ForceCause::Deadline));
    assert_eq!(report.forced_in, Some(Phase::Stopping));
    assert_eq!(item(&report, "ignores-token").outcome, Outcome::Cut);
    assert_eq!(item(&report, "ignores-token").kind, Kind::Task);
    assert_eq!(item(&report, "hangs").outcome, Outcome::Cut);
    assert_eq!(item(&report, "hangs").kind, Kind::Hook);
    assert_eq!(item(&report, "cooperates").outcome, Outcome::Finished);
    assert_eq!(item(&report, "after").outcome, Outcome::Finished);
    assert_eq!(report.exit_code(), exit::DEADLINE);
    // The cut task really was aborted.
    assert!(dropped_rx.await.is_err());
}

#[tokio::test(start_paused = true)]
async fn vital_task_failure_triggers_shutdown() {
    let lifecycle = quiet().build().unwrap();
    let handle = lifecycle.handle();
    let (fail_tx, fail_rx) = oneshot::channel::<()>();
    handle.spawn_vital("db", |_| async move {
        let _ = fail_rx.await;
        Err::<(), _>(std::io::Error::other("connection lost"))
    });
    handle.spawn("worker", |token| async move { token.cancelled().await });
    let run = tokio::spawn(lifecycle.run());
    tokio::task::yield_now().await;
    assert_eq!(handle.phase(), Phase::Running);
    fail_tx.send(()).unwrap();
    let report = run.await.unwrap();
    assert_eq!(
        report.trigger,
        Trigger::TaskFailed {
            task: "db".into(),
            error: "failed: connection lost".into()
        }
    );
    assert_eq!(item(&report, "worker").outcome, Outcome::Finished);
    assert_eq!(report.exit_code(), exit::FAILED);
}

#[tokio::test(start_paused = true)]
async fn panics_are_caught_and_reported() {
    let lifecycle = quiet().build().unwrap();
    let handle = lifecycle.handle();
    handle.spawn("panics", |token| async move {
        token.cancelled().await;
        panic!("boom") as ()
    });
    handle.spawn_vital("vital-panics", |_| async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        panic!("vital boom") as ()
    });
    handle.add_closer("closer-panics", || async { panic!("closer boom") as () });
    handle.on_shutdown("hook-panics", || async { panic!("hook boom") as () });
    let report = lifecycle.run().await;
    assert!(
        matches!(report.trigger, Trigger::TaskFailed { ref task, .. } if task == "vital-panics")
    );
    assert_eq!(
        item(&report, "panics").outcome,
        Outcome::Panicked("boom".into())
    );
    assert_eq!(
        item(&report, "closer-panics").outcome,
        Outcome::Panicked("closer boom".into())
    );
    assert_eq!(
        item(&report, "hook-panics").outcome,
        Outcome::Panicked("hook boom".into())
    );
    assert_eq!(report.forced, None);
    assert_eq!(report.exit_code(), exit::FAILED);
}

#[tokio::test(start_paused = true)]
async fn late_subscribers_see_past_events() {
    let lifecycle = quiet().build().unwrap();
    let handle = lifecycle.handle();
    handle.shutdown("test");
    lifecycle.run().await;
    // Everything already happened; every observer resolves at once.
    handle.draining().await;
    handle.stopping().await;
    handle.done().await;
    assert!(handle.token().is_cancelled());
    assert!(handle.is_draining() && handle.is_stopping());
    assert_eq!(*handle.watch_phase().borrow(), Phase::Done);
}

#[tokio::test(start_paused = true)]
async fn hooks_run_exactly_once_also_when_registered_late() {
    let lifecycle = quiet().drain_delay(Duration::from_secs(1)).build().unwrap();
    let handle = lifecycle.handle();
    let runs = Arc::new(AtomicUsize::new(0));
    let early = Arc::clone(&runs);
    handle.on_shutdown("early", move || async move {
        early.fetch_add(1, Ordering::SeqCst);
    });
    // Concurrent and repeated triggers.
    let mut triggers = Vec::new();
    for i in 0..8 {
        let h = handle.clone();
        triggers.push(tokio::spawn(async move { h.shutdown(format!("t{i}")) }));
    }
    let run = tokio::spawn(lifecycle.run());
    let mut started = 0;
    for t in triggers {
        started += usize::from(t.await.unwrap());
    }
    assert_eq!(started, 1, "exactly one trigger starts the shutdown");
    handle.draining().await;
    tokio::task::yield_now().await;
    let late = Arc::clone(&runs);
    handle.on_shutdown("late", move || async move {
        late.fetch_add(10, Ordering::SeqCst);
    });
    let report = run.await.unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 11);
    assert_eq!(item(&report, "late").outcome, Outcome::Finished);
    assert_eq!(
        report.items.iter().filter(|i| i.kind == Kind::Hook).count(),
        2
    );
}

#[tokio::test(start_paused = true)]
async fn hooks_start_when_draining_starts() {
    let lifecycle = quiet().drain_delay(Duration::from_secs(5)).build().unwrap();
    let handle = lifecycle.handle();
    let (tx, rx) = oneshot::channel();
    let h = handle.clone();
    handle.on_shutdown("observe", move || async move {
        let _ = tx.send((h.phase(), Instant::now()));
    });
    let t0 = Instant::now();
    handle.shutdown("test");
    let run = tokio::spawn(lifecycle.run());
    let (phase, at) = rx.await.unwrap();
    assert_eq!(phase, Phase::Draining);
    assert_eq!(at, t0);
    run.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn signal_starts_and_second_signal_forces() {
    let (sender, signals) = Signals::channel();
    let lifecycle = Lifecycle::builder()
        .signals(signals)
        .grace(Duration::from_secs(30))
        .build()
        .unwrap();
    let handle = lifecycle.handle();
    handle.spawn("slow-job", |_token| async {
        tokio::time::sleep(Duration::from_secs(20)).await;
    });
    handle.add_closer("skipped", || async {});
    let run = tokio::spawn(lifecycle.run());
    sender.send(Signal::Terminate);
    handle.stopping().await;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    sender.send(Signal::Interrupt);
    let report = run.await.unwrap();
    assert_eq!(t0.elapsed(), Duration::from_secs(1));
    assert_eq!(
        report.trigger,
        Trigger::Signal {
            signal: Signal::Terminate
        }
    );
    assert_eq!(report.forced, Some(ForceCause::Signal(Signal::Interrupt)));
    assert_eq!(item(&report, "slow-job").outcome, Outcome::Cut);
    assert_eq!(item(&report, "skipped").outcome, Outcome::Skipped);
    assert_eq!(report.exit_code(), exit::FORCED);
    assert_eq!(handle.phase(), Phase::Forced);
}

#[tokio::test(start_paused = true)]
async fn sigquit_forces_at_once_and_sighup_is_ignored() {
    let (sender, signals) = Signals::channel();
    let lifecycle = Lifecycle::builder().signals(signals).build().unwrap();
    let handle = lifecycle.handle();
    handle.spawn("job", |token| async move { token.cancelled().await });
    let run = tokio::spawn(lifecycle.run());
    sender.send(Signal::Hangup);
    tokio::task::yield_now().await;
    assert_eq!(handle.phase(), Phase::Running);
    sender.send(Signal::Quit);
    let report = run.await.unwrap();
    assert_eq!(report.forced, Some(ForceCause::Signal(Signal::Quit)));
    assert_eq!(report.exit_code(), exit::FORCED);
}

#[tokio::test(start_paused = true)]
async fn tracked_future_holds_the_drain() {
    let lifecycle = quiet().build().unwrap();
    let handle = lifecycle.handle();
    let h = handle.clone();
    let tracked = tokio::spawn(async move {
        h.track("upload", tokio::time::sleep(Duration::from_millis(700)))
            .await
    });
    tokio::task::yield_now().await;
    assert_eq!(handle.in_flight(), 1);
    let t0 = Instant::now();
    handle.shutdown("test");
    let report = lifecycle.run().await;
    tracked.await.unwrap();
    assert_eq!(t0.elapsed(), Duration::from_millis(700));
    assert_eq!(item(&report, "upload").outcome, Outcome::Finished);
}

#[tokio::test(start_paused = true)]
async fn task_errors_are_reported_without_triggering() {
    let lifecycle = quiet().build().unwrap();
    let handle = lifecycle.handle();
    handle.spawn("flaky", |_| async { Err::<(), _>("oops") });
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        handle.phase(),
        Phase::Running,
        "a non-vital failure does not trigger"
    );
    handle.shutdown("test");
    let report = lifecycle.run().await;
    assert_eq!(
        item(&report, "flaky").outcome,
        Outcome::Failed("oops".into())
    );
    assert_eq!(report.exit_code(), exit::FAILED);
    assert!(report.to_string().contains("task \"flaky\" failed: oops"));
}

#[cfg(feature = "serde")]
#[tokio::test(start_paused = true)]
async fn report_serializes_to_json() {
    let lifecycle = quiet().build().unwrap();
    lifecycle.handle().add_closer("c", || async {});
    lifecycle.handle().shutdown("json");
    let report = lifecycle.run().await;
    let json = report.to_json();
    assert!(json.contains("\"reason\": \"json\""), "{json}");
    assert!(json.contains("\"outcome\": \"finished\""), "{json}");
}

/// The shutdown does not depend on anyone awaiting the lifecycle: a signal
/// is acted on when `run` is never called (the lifecycle's own task drives
/// it), and when `run` was awaited for a while and then dropped (it hands
/// the driving back). Either way the phases reach `Done`.
#[tokio::test]
async fn signals_are_acted_on_without_run_and_after_run_is_dropped() {
    // Never run.
    let (tx, signals) = Signals::channel();
    let lifecycle = quiet().signals(signals).build().unwrap();
    let handle = lifecycle.handle();
    tx.send(Signal::Terminate);
    tokio::time::timeout(Duration::from_secs(5), handle.done())
        .await
        .expect("a signal was ignored while nobody awaited the lifecycle");
    assert_eq!(handle.phase(), Phase::Done);
    // The report is still there for a late `run`.
    let report = lifecycle.run().await;
    assert!(matches!(
        report.trigger,
        Trigger::Signal {
            signal: Signal::Terminate
        }
    ));

    // Run, then dropped before any signal.
    let (tx, signals) = Signals::channel();
    let lifecycle = quiet().signals(signals).build().unwrap();
    let handle = lifecycle.handle();
    let mut run = Box::pin(lifecycle.run());
    assert!(
        futures_util::poll!(run.as_mut()).is_pending(),
        "run finished before any trigger"
    );
    drop(run);
    tx.send(Signal::Terminate);
    tokio::time::timeout(Duration::from_secs(5), handle.done())
        .await
        .expect("a signal was ignored after run's future was dropped");
    assert_eq!(handle.phase(), Phase::Done);
}
