//! Stages and the closer reserve under paused time: order, shares of the
//! budget, cuts, registration errors, and a second signal in each stage.
//! Ordering comes from tokens and oneshots, never from sleeps.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lameduck::{
    exit, ForceCause, Lifecycle, Outcome, Phase, Report, Signal, Signals, StageOutcome, Trigger,
};
use tokio::sync::oneshot;
use tokio::time::Instant;

fn quiet() -> lameduck::Builder {
    Lifecycle::builder().signals(Signals::none())
}

fn item<'a>(report: &'a Report, name: &str) -> &'a lameduck::Item {
    report
        .items
        .iter()
        .find(|i| i.name == name)
        .unwrap_or_else(|| panic!("no item {name:?} in {report}"))
}

fn stage<'a>(report: &'a Report, name: &str) -> &'a lameduck::StageTiming {
    report
        .stages
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no stage {name:?} in {report}"))
}

/// A log of events, in the order they happened.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn push(&self, event: impl Into<String>) {
        self.0.lock().unwrap().push(event.into());
    }
    fn events(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

#[tokio::test(start_paused = true)]
async fn http_then_workers_then_closers() {
    let lifecycle = quiet().grace(Duration::from_secs(30)).build().unwrap();
    let handle = lifecycle.handle();
    let log = Log::default();

    // "http" keeps draining until the test lets it go.
    let (release_http, http_released) = oneshot::channel::<()>();
    let l = log.clone();
    handle.spawn("http", |token| async move {
        token.cancelled().await;
        l.push("http told");
        http_released.await.unwrap();
        l.push("http drained");
    });
    let workers = handle.stage("workers", ["http"]).unwrap();
    let (release_worker, worker_released) = oneshot::channel::<()>();
    let l = log.clone();
    workers.spawn("worker", |token| async move {
        token.cancelled().await;
        l.push("worker told");
        worker_released.await.unwrap();
        l.push("worker done");
    });
    let l = log.clone();
    handle.add_closer("db-pool", move || async move { l.push("db-pool closed") });

    let t0 = Instant::now();
    handle.shutdown("deploy");
    let run = tokio::spawn(lifecycle.run());
    handle.stopping().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // HTTP has been draining for 2 s; the workers have not been told.
    assert!(!workers.is_stopping());
    assert_eq!(log.events(), vec!["http told"]);
    release_http.send(()).unwrap();
    workers.stopping().await;
    let told = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    release_worker.send(()).unwrap();
    let report = run.await.unwrap();

    assert_eq!(told, Duration::from_secs(2));
    assert_eq!(
        log.events(),
        vec![
            "http told",
            "http drained",
            "worker told",
            "worker done",
            "db-pool closed"
        ]
    );
    let first = stage(&report, lameduck::stage::FIRST);
    assert_eq!(first.start, Some(Duration::ZERO));
    assert_eq!(first.duration, Duration::from_secs(2));
    assert_eq!(first.outcome, StageOutcome::Drained);
    let w = stage(&report, "workers");
    assert_eq!(w.after, vec!["http".to_string()]);
    assert_eq!(w.start, Some(Duration::from_secs(2)));
    assert_eq!(w.duration, Duration::from_secs(1));
    assert_eq!(w.outcome, StageOutcome::Drained);
    assert_eq!(report.exit_code(), exit::OK, "{report}");
    let text = report.to_string();
    assert!(text.contains(", stages 2/2 drained; exit 0"), "{text}");
    assert!(
        text.contains("stage \"workers\" at 2.000s for 1.000s: drained"),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_chain_of_stages_waits_for_a_stage_and_for_every_task_of_a_name() {
    let lifecycle = quiet().build().unwrap();
    let handle = lifecycle.handle();
    let log = Log::default();
    // Two tasks under one name: the dependency waits for both.
    let mut releases = Vec::new();
    for i in 0..2 {
        let (tx, rx) = oneshot::channel::<()>();
        releases.push(tx);
        let l = log.clone();
        handle.spawn("consumer", move |token| async move {
            token.cancelled().await;
            rx.await.unwrap();
            l.push(format!("consumer {i} done"));
        });
    }
    let a = handle.stage("a", ["consumer"]).unwrap();
    let b = handle.stage("b", ["a"]).unwrap();
    for (s, name) in [(&a, "a-task"), (&b, "b-task")] {
        let l = log.clone();
        s.spawn(name, move |token| async move {
            token.cancelled().await;
            l.push(format!("{name} told"));
        });
    }
    handle.shutdown("test");
    let run = tokio::spawn(lifecycle.run());
    handle.stopping().await;
    releases.remove(0).send(()).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!a.is_stopping(), "one consumer is still running");
    releases.remove(0).send(()).unwrap();
    let report = run.await.unwrap();
    assert_eq!(
        log.events(),
        vec![
            "consumer 0 done",
            "consumer 1 done",
            "a-task told",
            "b-task told"
        ]
    );
    assert_eq!(stage(&report, "b").after, vec!["a".to_string()]);
    assert!(report.is_clean(), "{report}");
}

#[tokio::test(start_paused = true)]
async fn a_stuck_stage_is_cut_at_its_share_and_later_stages_still_run() {
    // 10 s grace, 1 s kept for the closers: the drain ends at 9 s. The
    // first stage heads a chain of three, so it gets a third of that.
    let lifecycle = quiet().grace(Duration::from_secs(10)).build().unwrap();
    let handle = lifecycle.handle();
    let (dropped_tx, dropped_rx) = oneshot::channel::<()>();
    handle.spawn("http", |_token| async move {
        let _dropped = dropped_tx; // dropped when the task is aborted
        std::future::pending::<()>().await;
    });
    let workers = handle.stage("workers", ["http"]).unwrap();
    let flush = handle.stage("flush", ["workers"]).unwrap();
    let told = Log::default();
    for s in [&workers, &flush] {
        let told = told.clone();
        let name = s.name().to_string();
        s.spawn(format!("{name}-task"), move |token| async move {
            token.cancelled().await;
            told.push(format!("{name} at {:?}", tokio::time::Instant::now()));
            // Finishing takes a while, within the share.
            tokio::time::sleep(Duration::from_secs(1)).await;
        });
    }
    let closed = Log::default();
    let c = closed.clone();
    handle.add_closer("db-pool", move || async move { c.push("db-pool") });
    let t0 = Instant::now();
    handle.shutdown("test");
    let report = lifecycle.run().await;

    assert!(dropped_rx.await.is_err(), "the stuck task was aborted");
    let first = stage(&report, lameduck::stage::FIRST);
    assert_eq!(first.duration, Duration::from_secs(3));
    assert_eq!(
        first.outcome,
        StageOutcome::Cut {
            held_up: vec!["workers".into()]
        }
    );
    // The workers were told at 3 s, drained in 1 s; the flush followed.
    assert_eq!(
        told.events(),
        vec![
            format!("workers at {:?}", t0 + Duration::from_secs(3)),
            format!("flush at {:?}", t0 + Duration::from_secs(4)),
        ]
    );
    assert_eq!(stage(&report, "workers").outcome, StageOutcome::Drained);
    assert_eq!(stage(&report, "flush").outcome, StageOutcome::Drained);
    assert_eq!(stage(&report, "flush").start, Some(Duration::from_secs(4)));
    assert_eq!(closed.events(), vec!["db-pool"]);
    assert_eq!(item(&report, "http").outcome, Outcome::Cut);
    assert_eq!(item(&report, "db-pool").outcome, Outcome::Finished);
    assert_eq!(t0.elapsed(), Duration::from_secs(5));
    // A share ran out, not the budget: not forced, but work was cut.
    assert_eq!(report.forced, None);
    assert_eq!(report.exit_code(), exit::DEADLINE);
    let text = report.to_string();
    assert!(
        text.contains("stage \"first\" at 0.000s for 3.000s: cut, held up \"workers\""),
        "{text}"
    );
    assert!(text.contains("task \"http\" cut after 3.000s"), "{text}");
}

#[tokio::test(start_paused = true)]
async fn time_a_stage_does_not_use_passes_on() {
    // Drain ends at 9 s (10 s grace, 1 s reserve). The first stage ends at
    // once; the stuck workers stage heads a chain of two, so it gets half of
    // the 9 s left when it was told, not a third of the whole.
    let lifecycle = quiet().grace(Duration::from_secs(10)).build().unwrap();
    let handle = lifecycle.handle();
    handle.spawn("http", |token| async move { token.cancelled().await });
    let workers = handle.stage("workers", ["http"]).unwrap();
    workers.spawn("stuck", |_| std::future::pending::<()>());
    let flush = handle.stage("flush", ["workers"]).unwrap();
    flush.spawn("flusher", |token| async move { token.cancelled().await });
    handle.add_closer("db-pool", || async {});
    handle.shutdown("test");
    let report = lifecycle.run().await;
    assert_eq!(
        stage(&report, "workers").duration,
        Duration::from_millis(4500)
    );
    assert_eq!(
        stage(&report, "flush").start,
        Some(Duration::from_millis(4500))
    );
    assert_eq!(stage(&report, "flush").outcome, StageOutcome::Drained);
    assert_eq!(item(&report, "stuck").outcome, Outcome::Cut);
}

#[tokio::test(start_paused = true)]
async fn a_hung_worker_is_cut_at_the_drain_deadline_and_the_pool_still_closes() {
    // The Go pattern: srv.Shutdown, then the workers, then `defer
    // db.Close()`. The worker hangs past the budget; the pool is closed
    // anyway, in the reserve.
    let lifecycle = quiet()
        .grace(Duration::from_secs(10))
        .closer_reserve(Duration::from_secs(2))
        .build()
        .unwrap();
    let handle = lifecycle.handle();
    handle.spawn("http", |token| async move { token.cancelled().await });
    let workers = handle.stage("workers", ["http"]).unwrap();
    workers.spawn("worker", |_token| std::future::pending::<()>());
    let closed = Arc::new(Mutex::new(None));
    let at = Arc::clone(&closed);
    handle.add_closer("db-pool", move || async move {
        // Closing takes 1 s of the 2 s reserve.
        tokio::time::sleep(Duration::from_secs(1)).await;
        *at.lock().unwrap() = Some(Instant::now());
    });
    let t0 = Instant::now();
    handle.shutdown("test");
    let report = lifecycle.run().await;
    println!("{report}");

    assert_eq!(*closed.lock().unwrap(), Some(t0 + Duration::from_secs(9)));
    assert_eq!(report.closer_reserve, Duration::from_secs(2));
    assert_eq!(report.forced, Some(ForceCause::Deadline));
    assert_eq!(report.forced_in, Some(Phase::Stopping));
    assert_eq!(item(&report, "worker").outcome, Outcome::Cut);
    assert_eq!(item(&report, "worker").duration, Duration::from_secs(8));
    assert_eq!(item(&report, "db-pool").outcome, Outcome::Finished);
    // The workers stage was the last one: it held nothing up, so it had
    // the whole drain (until 8 s), and was cut there.
    assert_eq!(
        stage(&report, "workers").outcome,
        StageOutcome::Cut { held_up: vec![] }
    );
    assert_eq!(report.exit_code(), exit::DEADLINE);
    let text = report.to_string();
    assert!(
        text.starts_with("shutdown forced (deadline) in stopping after 9.000s"),
        "{text}"
    );
    assert!(text.contains("tasks 1/2 ok, closers 1/1 ok"), "{text}");
    assert!(text.contains("task \"worker\" cut after 8.000s"), "{text}");
}

#[tokio::test(start_paused = true)]
async fn the_reserve_is_kept_only_when_there_are_closers() {
    let lifecycle = quiet().grace(Duration::from_secs(10)).build().unwrap();
    let handle = lifecycle.handle();
    handle.spawn("stuck", |_| std::future::pending::<()>());
    let t0 = Instant::now();
    handle.shutdown("test");
    let report = lifecycle.run().await;
    assert_eq!(report.closer_reserve, Duration::ZERO);
    assert_eq!(t0.elapsed(), Duration::from_secs(10));

    // The default: a tenth of the grace, at most 5 s.
    for (grace, reserve) in [(10, 1000), (30, 3000), (120, 5000)] {
        let lifecycle = quiet().grace(Duration::from_secs(grace)).build().unwrap();
        lifecycle.handle().add_closer("c", || async {});
        lifecycle.handle().shutdown("test");
        let report = lifecycle.run().await;
        assert_eq!(report.closer_reserve, Duration::from_millis(reserve));
    }
}

#[tokio::test(start_paused = true)]
async fn a_closer_is_bounded_by_what_is_left_of_the_grace() {
    let lifecycle = quiet()
        .grace(Duration::from_secs(10))
        .closer_reserve(Duration::from_secs(2))
        .build()
        .unwrap();
    let handle = lifecycle.handle();
    handle.spawn("stuck", |_| std::future::pending::<()>());
    handle.add_closer("never-runs", || async {});
    handle.add_closer("stuck-closer", std::future::pending::<()>);
    let t0 = Instant::now();
    handle.shutdown("test");
    let report = lifecycle.run().await;
    assert_eq!(t0.elapsed(), Duration::from_secs(10));
    assert_eq!(item(&report, "stuck").duration, Duration::from_secs(8));
    assert_eq!(item(&report, "stuck-closer").outcome, Outcome::Cut);
    assert_eq!(
        item(&report, "stuck-closer").duration,
        Duration::from_secs(2)
    );
    assert_eq!(item(&report, "never-runs").outcome, Outcome::Skipped);
    assert_eq!(report.forced_in, Some(Phase::Stopping));
    assert_eq!(report.exit_code(), exit::DEADLINE);
}

#[tokio::test(start_paused = true)]
async fn a_cycle_is_rejected() {
    let lifecycle = quiet().build().unwrap();
    let handle = lifecycle.handle();
    let a = handle.stage("a", [lameduck::stage::FIRST]).unwrap();
    let b = handle.stage("b", ["a"]).unwrap();
    let c = handle.stage("c", ["b"]).unwrap();
    let err = a.after("c").unwrap_err();
    assert!(err.is_stage());
    assert_eq!(
        err.to_string(),
        r#"stage dependency cycle: "a" after "c" after "b" after "a""#
    );
    // Through a task of a later stage, too.
    c.spawn("c-task", |token| async move { token.cancelled().await });
    let err = b.after("c-task").unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"stage dependency cycle: "b" after "c" after "b""#
    );
    let err = handle.stage("self", ["self"]).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"stage dependency cycle: "self" comes after itself"#
    );
    // Nothing was changed by the rejected calls: the shutdown runs through.
    handle.shutdown("test");
    let report = lifecycle.run().await;
    assert_eq!(stage(&report, "a").after, vec!["first".to_string()]);
    assert!(report.is_clean(), "{report}");
}

#[tokio::test(start_paused = true)]
async fn unknown_and_taken_names_are_rejected_a_finished_task_is_not() {
    let lifecycle = quiet().build().unwrap();
    let handle = lifecycle.handle();
    let err = handle.stage("workers", ["http"]).unwrap_err();
    assert!(err.is_stage());
    assert_eq!(
        err.to_string(),
        r#"stage "workers" comes after "http", which is neither a stage nor a task spawned so far"#
    );
    handle.spawn("migrate", |_| async {});
    tokio::task::yield_now().await; // it finishes
    assert_eq!(handle.in_flight(), 0);
    let after_migrate = handle.stage("serve-jobs", ["migrate"]).unwrap();
    assert!(handle.stage("migrate", ["first"]).unwrap_err().is_stage());
    assert!(handle
        .stage("serve-jobs", ["first"])
        .unwrap_err()
        .is_stage());
    let late = handle.stage("late", ["serve-jobs"]).unwrap();
    assert!(late.after("nope").unwrap_err().is_stage());
    handle.shutdown("test");
    let run = tokio::spawn(lifecycle.run());
    // The dependency had finished already: told when the drain begins.
    after_migrate.stopping().await;
    let report = run.await.unwrap();
    assert_eq!(
        stage(&report, "serve-jobs").start,
        Some(Duration::ZERO),
        "{report}"
    );
    // Too late to add a dependency to a stage that was told.
    assert!(after_migrate.after("first").unwrap_err().is_stage());
}

#[tokio::test(start_paused = true)]
async fn a_stage_made_during_the_drain_gets_its_turn() {
    let lifecycle = quiet().build().unwrap();
    let handle = lifecycle.handle();
    let (release, released) = oneshot::channel::<()>();
    handle.spawn("http", |token| async move {
        token.cancelled().await;
        released.await.unwrap();
    });
    handle.shutdown("test");
    let run = tokio::spawn(lifecycle.run());
    handle.stopping().await;
    let late = handle.stage("late", ["http"]).unwrap();
    let (done_tx, done_rx) = oneshot::channel::<Instant>();
    late.spawn("late-task", |token| async move {
        token.cancelled().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        done_tx.send(Instant::now()).unwrap();
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!late.is_stopping());
    release.send(()).unwrap();
    late.stopping().await;
    let report = run.await.unwrap();
    // The drain waited for the late stage's task.
    let done_at = done_rx.await.unwrap();
    assert!(done_at <= Instant::now());
    assert_eq!(item(&report, "late-task").outcome, Outcome::Finished);
    assert_eq!(stage(&report, "late").start, Some(Duration::from_secs(1)));

    // Made after the drain is over: told at once.
    let after = handle.stage("after-the-end", ["late"]).unwrap();
    assert!(after.is_stopping());
}

/// Stages for the second-signal tests: the first stage ("http"), then
/// "workers", then "flush"; each task, once told, waits for its release.
struct Chain {
    releases: Vec<Option<oneshot::Sender<()>>>,
    stages: Vec<lameduck::Stage>,
}

fn chain(handle: &lameduck::Handle) -> Chain {
    let mut releases = Vec::new();
    let mut rxs = Vec::new();
    for _ in 0..3 {
        let (tx, rx) = oneshot::channel::<()>();
        releases.push(Some(tx));
        rxs.push(rx);
    }
    let mut rxs = rxs.into_iter();
    let rx = rxs.next().unwrap();
    handle.spawn("http", |token| async move {
        token.cancelled().await;
        let _ = rx.await;
    });
    let workers = handle.stage("workers", ["http"]).unwrap();
    let flush = handle.stage("flush", ["workers"]).unwrap();
    for (s, rx) in [&workers, &flush].into_iter().zip(rxs) {
        s.spawn(format!("{}-task", s.name()), |token| async move {
            token.cancelled().await;
            let _ = rx.await;
        });
    }
    Chain {
        releases,
        stages: vec![workers, flush],
    }
}

#[tokio::test(start_paused = true)]
async fn a_second_signal_during_each_stage_forces_and_skips_the_closers() {
    let names = ["first", "workers", "flush"];
    for during in 0..names.len() {
        let (sender, signals) = Signals::channel();
        let lifecycle = Lifecycle::builder()
            .signals(signals)
            .grace(Duration::from_secs(30))
            .build()
            .unwrap();
        let handle = lifecycle.handle();
        let mut chain = chain(&handle);
        handle.add_closer("db-pool", || async {});
        let run = tokio::spawn(lifecycle.run());
        sender.send(Signal::Terminate);
        handle.stopping().await;
        for k in 0..during {
            chain.releases[k].take().unwrap().send(()).unwrap();
            chain.stages[k].stopping().await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        sender.send(Signal::Interrupt);
        let report = run.await.unwrap();

        assert_eq!(
            report.forced,
            Some(ForceCause::Signal(Signal::Interrupt)),
            "during {}: {report}",
            names[during]
        );
        assert_eq!(report.forced_in, Some(Phase::Stopping));
        assert_eq!(report.exit_code(), exit::FORCED);
        assert_eq!(item(&report, "db-pool").outcome, Outcome::Skipped);
        for (k, name) in names.iter().enumerate() {
            let expected = match k.cmp(&during) {
                std::cmp::Ordering::Less => StageOutcome::Drained,
                std::cmp::Ordering::Equal => StageOutcome::Forced,
                std::cmp::Ordering::Greater => StageOutcome::Skipped,
            };
            assert_eq!(
                stage(&report, name).outcome,
                expected,
                "during {}: {report}",
                names[during]
            );
        }
        // Every stage was told in the end.
        assert!(chain.stages.iter().all(|s| s.is_stopping()));
        let text = report.to_string();
        assert!(text.contains("closer \"db-pool\" skipped"), "{text}");
        assert!(
            text.contains(&format!("stage {:?} at ", names[during])) && text.contains(": forced"),
            "{text}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_second_signal_during_the_lame_duck_or_the_closers() {
    // During the lame duck: no stage was told in its turn.
    let (sender, signals) = Signals::channel();
    let lifecycle = Lifecycle::builder()
        .signals(signals)
        .drain_delay(Duration::from_secs(5))
        .build()
        .unwrap();
    let handle = lifecycle.handle();
    let _chain = chain(&handle);
    handle.add_closer("db-pool", || async {});
    let run = tokio::spawn(lifecycle.run());
    sender.send(Signal::Terminate);
    handle.draining().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    sender.send(Signal::Interrupt);
    let report = run.await.unwrap();
    assert_eq!(report.forced_in, Some(Phase::Draining));
    assert!(report
        .stages
        .iter()
        .all(|s| s.outcome == StageOutcome::Skipped));
    assert_eq!(item(&report, "db-pool").outcome, Outcome::Skipped);

    // During the closers, after the deadline cut the drain: the closer
    // running is cut, the rest skipped, and the report says so.
    let (sender, signals) = Signals::channel();
    let lifecycle = Lifecycle::builder()
        .signals(signals)
        .grace(Duration::from_secs(10))
        .build()
        .unwrap();
    let handle = lifecycle.handle();
    handle.spawn("stuck", |_| std::future::pending::<()>());
    handle.add_closer("never-runs", || async {});
    let (closing_tx, closing_rx) = oneshot::channel::<()>();
    handle.add_closer("slow-closer", move || async move {
        closing_tx.send(()).unwrap();
        std::future::pending::<()>().await;
    });
    let run = tokio::spawn(lifecycle.run());
    sender.send(Signal::Terminate);
    closing_rx.await.unwrap();
    sender.send(Signal::Interrupt);
    let report = run.await.unwrap();
    assert_eq!(report.forced, Some(ForceCause::Deadline));
    assert_eq!(report.forced_in, Some(Phase::Stopping));
    assert_eq!(item(&report, "slow-closer").outcome, Outcome::Cut);
    assert_eq!(item(&report, "never-runs").outcome, Outcome::Skipped);
    assert!(matches!(report.trigger, Trigger::Signal { .. }));
}

#[tokio::test(start_paused = true)]
async fn handle_force_during_a_stage_tells_every_stage() {
    let lifecycle = quiet().build().unwrap();
    let handle = lifecycle.handle();
    let chain = chain(&handle);
    handle.shutdown("test");
    let run = tokio::spawn(lifecycle.run());
    handle.stopping().await;
    handle.force("operator");
    let report = run.await.unwrap();
    assert_eq!(
        report.forced,
        Some(ForceCause::Requested("operator".into()))
    );
    assert!(chain.stages.iter().all(|s| s.is_stopping()));
    assert_eq!(stage(&report, "first").outcome, StageOutcome::Forced);
    assert_eq!(stage(&report, "flush").outcome, StageOutcome::Skipped);
}

/// The task that serves HTTP counts as ended only once its connections
/// have: a request in flight holds the stage after it.
#[cfg(feature = "http")]
#[tokio::test]
async fn a_stage_after_the_http_server_waits_for_its_connections() {
    use std::convert::Infallible;

    use bytes::Bytes;
    use http_body_util::Full;
    use lameduck::http::Server;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::Notify;

    let lifecycle = quiet().build().unwrap();
    let handle = lifecycle.handle();
    let entered = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let svc = {
        let (entered, release) = (Arc::clone(&entered), Arc::clone(&release));
        tower::service_fn(move |_req| {
            let (entered, release) = (Arc::clone(&entered), Arc::clone(&release));
            async move {
                entered.notify_one();
                release.notified().await;
                Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from("done\n"))))
            }
        })
    };
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let server = Server::new(handle.clone()).listener(tcp).serve(svc);
    handle.spawn_vital("http", |_| server);
    let workers = handle.stage("workers", ["http"]).unwrap();
    workers.spawn("worker", |token| async move { token.cancelled().await });

    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    entered.notified().await;
    handle.shutdown("test");
    let run = tokio::spawn(lifecycle.run());
    handle.stopping().await;
    // Wait until the server's task and its listener are gone: only the
    // connection and the worker are left in flight.
    tokio::time::timeout(Duration::from_secs(10), async {
        while handle.in_flight() > 2 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    assert!(
        !workers.is_stopping(),
        "the server's task ended, but its request is in flight"
    );
    release.notify_one();
    let mut response = Vec::new();
    conn.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8(response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(response.ends_with("done\n"), "{response}");
    workers.stopping().await;
    let report = run.await.unwrap();
    assert_eq!(item(&report, "http").outcome, Outcome::Finished);
    assert_eq!(stage(&report, "workers").outcome, StageOutcome::Drained);
    assert!(report.is_clean(), "{report}");
}

/// A request that never ends holds the stage after the server only for the
/// first stage's share: then its connection is forced and named as cut, and
/// the workers get their turn.
#[cfg(feature = "http")]
#[tokio::test]
async fn a_stuck_request_is_cut_at_the_first_stages_share() {
    use std::convert::Infallible;

    use bytes::Bytes;
    use http_body_util::Full;
    use lameduck::http::Server;
    use lameduck::Kind;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::Notify;

    // 1 s grace, no closers (no reserve); two stages in the chain: the
    // first gets half.
    let lifecycle = quiet().grace(Duration::from_secs(1)).build().unwrap();
    let handle = lifecycle.handle();
    let entered = Arc::new(Notify::new());
    let svc = {
        let entered = Arc::clone(&entered);
        tower::service_fn(move |_req| {
            let entered = Arc::clone(&entered);
            async move {
                entered.notify_one();
                std::future::pending::<()>().await;
                Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::new())))
            }
        })
    };
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let server = Server::new(handle.clone()).listener(tcp).serve(svc);
    handle.spawn_vital("http", |_| server);
    let workers = handle.stage("workers", ["http"]).unwrap();
    let (told_tx, told_rx) = oneshot::channel::<Instant>();
    workers.spawn("worker", |token| async move {
        token.cancelled().await;
        told_tx.send(Instant::now()).unwrap();
    });

    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /stuck HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    entered.notified().await;
    let t0 = Instant::now();
    handle.shutdown("test");
    let report = lifecycle.run().await;
    let told = told_rx.await.unwrap() - t0;
    // The connection was closed under the client, without a response.
    let mut rest = Vec::new();
    let _ = conn.read_to_end(&mut rest).await;
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));

    assert!(
        told >= Duration::from_millis(500) && told < Duration::from_millis(900),
        "workers told after {told:?}"
    );
    assert_eq!(
        stage(&report, "first").outcome,
        StageOutcome::Cut {
            held_up: vec!["workers".into()]
        }
    );
    let cut = report
        .items
        .iter()
        .find(|i| i.kind == Kind::Connection)
        .unwrap_or_else(|| panic!("no cut connection in {report}"));
    assert_eq!(cut.outcome, Outcome::Cut);
    assert!(cut.name.contains("GET /stuck"), "{}", cut.name);
    assert_eq!(stage(&report, "workers").outcome, StageOutcome::Drained);
    assert_eq!(report.forced, None);
    assert_eq!(report.exit_code(), exit::DEADLINE);
}

#[cfg(feature = "serde")]
#[tokio::test(start_paused = true)]
async fn stages_serialize_to_json() {
    let lifecycle = quiet().grace(Duration::from_secs(10)).build().unwrap();
    let handle = lifecycle.handle();
    handle.spawn("http", |_| std::future::pending::<()>());
    let workers = handle.stage("workers", ["http"]).unwrap();
    workers.spawn("worker", |token| async move { token.cancelled().await });
    handle.add_closer("db-pool", || async {});
    handle.shutdown("test");
    let report = lifecycle.run().await;
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(json["closer_reserve"], 1.0);
    assert_eq!(
        json["stages"][0],
        serde_json::json!({
            "name": "first",
            "after": [],
            "start": 0.0,
            "duration": 4.5,
            "outcome": "cut",
            "held_up": ["workers"],
        })
    );
    assert_eq!(json["stages"][1]["outcome"], "drained");
    assert_eq!(json["stages"][1]["start"], 4.5);
}

#[tokio::test(start_paused = true)]
async fn a_stage_made_after_a_running_one_still_gets_its_turn() {
    // Drain ends at 10 s (no closers). "workers" is told at once and, being
    // last, may use all of it; then "flush" is made after it, at 2 s: the
    // stuck workers now hold it up, so they get half of what was left when
    // they were told (5 s), and "flush" its turn after that.
    let lifecycle = quiet().grace(Duration::from_secs(10)).build().unwrap();
    let handle = lifecycle.handle();
    let workers = handle.stage("workers", [lameduck::stage::FIRST]).unwrap();
    workers.spawn("stuck", |_| std::future::pending::<()>());
    handle.shutdown("test");
    let run = tokio::spawn(lifecycle.run());
    workers.stopping().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let flush = handle.stage("flush", ["workers"]).unwrap();
    let (told_tx, told_rx) = oneshot::channel::<Instant>();
    flush.spawn("flusher", |token| async move {
        token.cancelled().await;
        told_tx.send(Instant::now()).unwrap();
    });
    let report = run.await.unwrap();
    let t0 = Instant::now() - report.total;
    assert_eq!(told_rx.await.unwrap() - t0, Duration::from_secs(5));
    assert_eq!(
        stage(&report, "workers").outcome,
        StageOutcome::Cut {
            held_up: vec!["flush".into()]
        }
    );
    assert_eq!(stage(&report, "flush").outcome, StageOutcome::Drained);
    assert_eq!(item(&report, "flusher").outcome, Outcome::Finished);
}

#[tokio::test(start_paused = true)]
async fn a_stage_holding_nothing_up_runs_to_the_drain_deadline() {
    // Two stages after the first, both stuck: "flush" holds "last" up and
    // is cut at its share; "workers" holds nothing up, so it may use the
    // whole drain, and is cut by the drain's deadline.
    let lifecycle = quiet().grace(Duration::from_secs(4)).build().unwrap();
    let handle = lifecycle.handle();
    let workers = handle.stage("workers", [lameduck::stage::FIRST]).unwrap();
    workers.spawn("stuck", |_| std::future::pending::<()>());
    let flush = handle.stage("flush", [lameduck::stage::FIRST]).unwrap();
    flush.spawn("slow-flusher", |_| std::future::pending::<()>());
    let last = handle.stage("last", ["flush"]).unwrap();
    handle.shutdown("test");
    let report = lifecycle.run().await;
    assert!(last.is_stopping());
    assert_eq!(
        stage(&report, "flush").outcome,
        StageOutcome::Cut {
            held_up: vec!["last".into()]
        }
    );
    assert_eq!(stage(&report, "flush").duration, Duration::from_secs(2));
    assert_eq!(stage(&report, "last").start, Some(Duration::from_secs(2)));
    assert_eq!(
        stage(&report, "workers").outcome,
        StageOutcome::Cut { held_up: vec![] }
    );
    assert_eq!(stage(&report, "workers").duration, Duration::from_secs(4));
    assert_eq!(report.forced, Some(ForceCause::Deadline));
}
