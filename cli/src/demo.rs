//! `lameduck demo`: a small service with a background worker and a closer.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lameduck::Lifecycle;

/// Options of `lameduck demo`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The whole shutdown budget, counted from the first signal.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    grace: Duration,
    /// How long to stay a lame duck (readiness failing, still serving).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    drain_delay: Duration,
    /// How long the background worker spends on one generated job.
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    job_duration: Duration,
    /// Print the shutdown report as JSON on stdout as well.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(args: Args) -> ExitCode {
    let lifecycle = match Lifecycle::builder()
        .grace(args.grace)
        .drain_delay(args.drain_delay)
        .build()
    {
        Ok(l) => l,
        Err(e) => {
            eprintln!("lameduck demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    let handle = lifecycle.handle();
    let done = Arc::new(AtomicU64::new(0));

    // The worker finishes the job in hand when told to stop, and never
    // starts a new one after that.
    let job_duration = args.job_duration;
    let worker_done = Arc::clone(&done);
    handle.spawn_vital("worker", move |token| async move {
        let mut next = 0u64;
        while !token.is_cancelled() {
            next += 1;
            tracing::debug!(job = next, "working");
            tokio::time::sleep(job_duration).await;
            worker_done.fetch_add(1, Ordering::Relaxed);
        }
        Ok::<_, std::io::Error>(())
    });

    let flushed = Arc::clone(&done);
    handle.add_closer("flush", move || async move {
        tracing::info!(
            jobs = flushed.load(Ordering::Relaxed),
            "flushed job counter"
        );
        Ok::<_, std::io::Error>(())
    });

    eprintln!(
        "lameduck demo: ready (pid {}); send SIGTERM or press Ctrl-C to stop, twice to force",
        std::process::id()
    );
    let report = lifecycle.run().await;
    if args.json {
        println!("{}", report.to_json());
    }
    eprintln!("lameduck demo: {report}");
    report.process_exit_code()
}
