//! `lameduck demo`: a small real service built only on lameduck's public
//! API. Routes: `/`, `/slow?ms=N`, `/events` (SSE), `/ws` (WebSocket echo),
//! `/readyz`, `/livez`, `POST /jobs` and `GET /jobs`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::stream::{self, Stream};
use lameduck::http::axum::{going_away, health_router};
use lameduck::http::tls::TlsConfig;
use lameduck::http::{Readiness, Server, ShutdownSignal};
use lameduck::restart::Restart;
use lameduck::{Handle, Lifecycle};

use crate::jobs::Jobs;

/// Options of `lameduck demo`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Address to listen on; repeat for several.
    #[arg(long = "listen", default_value = "127.0.0.1:8080")]
    listen: Vec<SocketAddr>,
    /// The whole shutdown budget, counted from the first signal.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    grace: Duration,
    /// How long to stay a lame duck (readiness 503, still serving).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    drain_delay: Duration,
    /// Where accepted jobs are persisted, so that the next process finishes
    /// what this one did not.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// How long the background worker spends on one job.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    job_duration: Duration,
    /// Print the shutdown report as JSON on stdout as well.
    #[arg(long)]
    json: bool,
    /// After a restart's successor reports ready, how long this process
    /// keeps its claim on the sockets (rollback if the successor dies).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    probation: Duration,
    /// How long a restart's successor may take to report ready.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    ready_timeout: Duration,
    /// A control socket that answers `lameduck restart --control PATH`.
    #[arg(long)]
    control: Option<PathBuf>,
    /// A PID file, kept pointing at the serving process across restarts,
    /// removed when the last one exits.
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// Start even when `--drain-delay` is not shorter than `--grace` (every
    /// shutdown then ends at the deadline).
    #[arg(long)]
    allow_drain_delay_over_grace: bool,
    /// Serve every --listen over TLS with this certificate chain (PEM);
    /// SIGUSR1 re-reads it and the key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

/// Fault injection for the restart tests, read by a successor only:
/// `exit` (exit before ready), `hang` (never report ready),
/// `crash-after-ready` (exit 100 ms after reporting ready).
const FAULT_ENV: &str = "LAMEDUCK_DEMO_FAULT";

/// One-shot fault injection: a successor that finds this file takes the
/// fault written in it and removes it, so a torture run can fault one
/// restart and not the next.
const FAULT_FILE_ENV: &str = "LAMEDUCK_DEMO_FAULT_FILE";

fn take_fault_file() -> Option<String> {
    let path = std::env::var_os(FAULT_FILE_ENV)?;
    // Rename first: of two processes racing for it, one gets it.
    let taken = std::path::PathBuf::from(&path).with_extension("taken");
    std::fs::rename(&path, &taken).ok()?;
    let fault = std::fs::read_to_string(&taken).ok()?;
    let _ = std::fs::remove_file(&taken);
    Some(fault.trim().to_owned())
}

/// The version of the state handed to a restart's successor.
const STATE_VERSION: u32 = 1;

#[derive(Clone)]
struct App {
    jobs: Arc<Jobs>,
}

pub(crate) async fn run(args: Args) -> ExitCode {
    match serve(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lameduck demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Refuse a lame duck that does not fit in the budget: the drain delay is
/// counted inside the grace, so `--drain-delay 5s --grace 1s` could only
/// ever end at the deadline (exit 3) with nothing drained.
fn check_budget(args: &Args) -> anyhow::Result<()> {
    if args.drain_delay >= args.grace
        && !args.drain_delay.is_zero()
        && !args.allow_drain_delay_over_grace
    {
        anyhow::bail!(
            "--drain-delay {} does not fit in --grace {}: the lame duck is counted inside the grace, \
             so every shutdown would end at the deadline; make the grace longer than the drain delay \
             (or pass --allow-drain-delay-over-grace)",
            humantime::format_duration(args.drain_delay),
            humantime::format_duration(args.grace),
        );
    }
    Ok(())
}

async fn serve(args: Args) -> anyhow::Result<ExitCode> {
    check_budget(&args)?;
    let lifecycle = Lifecycle::builder()
        .grace(args.grace)
        .drain_delay(args.drain_delay)
        .build()?;
    let handle = lifecycle.handle();
    // Run the lifecycle from the start, so that a signal during startup (a
    // stalled state handover, say) is acted on rather than queued.
    let lifecycle = tokio::spawn(lifecycle.run());
    let jobs = match start(&args, &handle).await {
        Ok(jobs) => jobs,
        Err(e) if handle.is_draining() => {
            // Stopped while starting: say so, and end like any shutdown.
            eprintln!("lameduck demo: stopped during startup: {e:#}");
            None
        }
        Err(e) => {
            handle.shutdown("startup failed");
            let _ = lifecycle.await;
            return Err(e);
        }
    };
    let report = lifecycle.await?;
    if args.json {
        println!("{}", report.to_json());
    }
    // The summary is the lifecycle's own log line: not printed again here.
    if let Some(jobs) = jobs {
        let lost = jobs.lost();
        if !lost.is_empty() {
            eprintln!(
                "lameduck demo: {} accepted job(s) were neither finished nor persisted (no --data-dir): {}",
                lost.len(),
                lost.join(" ")
            );
        }
    }
    Ok(report.process_exit_code())
}

/// Everything between building the lifecycle and serving.
async fn start(args: &Args, handle: &Handle) -> anyhow::Result<Option<Arc<Jobs>>> {
    let jobs = Jobs::open(args.data_dir.clone(), args.job_duration)?;
    // Handed to a restart's successor: how many jobs this lineage finished.
    let counted = Arc::clone(&jobs);
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsConfig::from_pem_files(cert, key)?),
        _ => None,
    };
    let mut restart = Restart::builder()
        .handoff_state(STATE_VERSION, move || {
            counted.finished().to_string().into_bytes()
        })
        .probation(args.probation)
        .ready_timeout(args.ready_timeout);
    if let Some(path) = &args.control {
        restart = restart.control_socket(path);
    }
    if let Some(path) = &args.pid_file {
        restart = restart.pid_file(path);
    }
    if let Some(tls) = &tls {
        // Session tickets issued here still resume after a restart.
        restart = restart.tls(tls.clone());
    }
    let restart = restart.build(handle)?;
    match restart.inherited_state().await? {
        Some((STATE_VERSION, bytes)) => {
            let n: u64 = String::from_utf8_lossy(&bytes).trim().parse()?;
            jobs.add_inherited(n);
        }
        // Never report ready on state this version cannot read: the
        // predecessor then keeps serving.
        Some((version, _)) => anyhow::bail!("handed-over state has unknown version {version}"),
        None => {}
    }
    let fault = if restart.is_successor() {
        std::env::var(FAULT_ENV).ok().or_else(take_fault_file)
    } else {
        None
    };
    if fault.as_deref() == Some("exit") {
        eprintln!("lameduck demo: injected fault: exiting before ready");
        std::process::exit(70);
    }

    let readiness = Readiness::new(handle.clone());
    let ready_check = readiness.clone();
    let app = Router::new()
        .route("/", get(hello))
        .route("/slow", get(slow))
        .route("/events", get(events))
        .route("/ws", get(ws))
        .route("/jobs", get(job_stats).post(submit_job))
        .merge(health_router(readiness))
        .with_state(App {
            jobs: Arc::clone(&jobs),
        });

    let mut server = Server::new(handle.clone());
    let mut urls = Vec::new();
    for (i, addr) in args.listen.iter().enumerate() {
        let name = if i == 0 {
            "http".to_owned()
        } else {
            format!("http-{i}")
        };
        let listener = restart.listener(&name, addr).await?;
        if let Some(a) = listener.local_addr() {
            let scheme = if tls.is_some() { "https" } else { "http" };
            urls.push(format!("{scheme}://{a}"));
        }
        server = server.listener(listener);
    }
    if let Some(tls) = &tls {
        server = server.tls(tls.clone());
        // A renewed certificate without a restart: SIGUSR1 re-reads the
        // files; a broken one is refused and the old one stays.
        let tls = tls.clone();
        let mut usr1 =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())?;
        tokio::spawn(async move {
            while usr1.recv().await.is_some() {
                match tls.reload() {
                    Ok(()) => tracing::info!("SIGUSR1: TLS certificate reloaded"),
                    Err(e) => {
                        tracing::error!(error = %format!("{e}: {}", std::error::Error::source(&e).map(ToString::to_string).unwrap_or_default()), "SIGUSR1: TLS certificate not reloaded; the old one stays")
                    }
                }
            }
        });
    }
    let server = server.serve(app);
    handle.spawn_vital("http", |_| server);

    // Shutdown in stages: HTTP drains first (the lame duck still accepts
    // jobs, then every request in flight finishes, one still uploading its
    // job included); only then is the worker told to stop, and it finishes
    // every job still queued, since no request can add one any more. A
    // closer then reports (or, without a data dir, still tries to finish)
    // what a worker cut by the deadline left.
    let workers = handle.stage("workers", ["http"])?;
    let worker = Arc::clone(&jobs);
    workers.spawn_vital("worker", move |token| worker.work(token));
    let rest = Arc::clone(&jobs);
    handle.add_closer("jobs", move || rest.finish_or_persist());

    // Tell a predecessor (or systemd) that this process serves.
    if fault.as_deref() != Some("hang") && ready_check.is_ready() {
        restart.ready()?;
    }
    if fault.as_deref() == Some("crash-after-ready") {
        tokio::spawn(async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            eprintln!("lameduck demo: injected fault: crashing after ready");
            std::process::exit(71);
        });
    }
    eprintln!(
        "lameduck demo: ready, listening on {} (pid {}, generation {}); SIGTERM or Ctrl-C to stop, twice to force; SIGHUP to restart",
        urls.join(" "),
        std::process::id(),
        restart.generation()
    );
    Ok(Some(jobs))
}

async fn hello() -> String {
    format!("hello from lameduck (pid {})\n", std::process::id())
}

#[derive(Debug, serde::Deserialize)]
struct SlowParams {
    ms: Option<u64>,
}

async fn slow(Query(p): Query<SlowParams>) -> String {
    let ms = p.ms.unwrap_or(1000);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    format!("slept {ms} ms\n")
}

/// One event a second; when the server stops, a last `bye` event, then the
/// end of the stream.
async fn events(signal: ShutdownSignal) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stream = stream::unfold((0u64, Some(signal)), |(n, signal)| async move {
        let signal = signal?;
        let next = tokio::select! {
            biased;
            _ = signal.stopping() => None,
            _ = tokio::time::sleep(Duration::from_secs(1).saturating_sub(Duration::from_secs(u64::from(n == 0)))) => Some(n),
        };
        match next {
            Some(n) => Some((
                Ok(Event::default().event("tick").data(n.to_string())),
                (n + 1, Some(signal)),
            )),
            None => Some((
                Ok(Event::default().event("bye").data("server shutting down")),
                (n, None),
            )),
        }
    });
    Sse::new(stream)
}

async fn ws(upgrade: WebSocketUpgrade, signal: ShutdownSignal) -> Response {
    upgrade.on_upgrade(move |socket| echo(socket, signal))
}

/// How long the echo may take to say goodbye to a client: the Close frame
/// is sent and the client's Close awaited within it, so a client that never
/// reads cannot hold the drain.
const WS_GOODBYE: Duration = Duration::from_secs(1);

async fn echo(mut socket: WebSocket, signal: ShutdownSignal) {
    loop {
        let msg = tokio::select! {
            biased;
            _ = signal.stopping() => break,
            msg = socket.recv() => msg,
        };
        match msg {
            Some(Ok(msg @ (Message::Text(_) | Message::Binary(_)))) => {
                // The send waits for the client to read: race it against
                // the stop, or a client that never reads holds the drain.
                let sent = tokio::select! {
                    biased;
                    _ = signal.stopping() => break,
                    sent = socket.send(msg) => sent,
                };
                if sent.is_err() {
                    return;
                }
            }
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
            Some(Ok(_)) => {}
        }
    }
    let goodbye = going_away(&mut socket, "server shutting down", WS_GOODBYE);
    let _ = tokio::time::timeout(WS_GOODBYE, goodbye).await;
}

/// `POST /jobs`: the request body, if any, is the job's payload; it is read
/// in full before the job is accepted (the demo's worker ignores it).
async fn submit_job(State(app): State<App>, payload: axum::body::Bytes) -> Response {
    tracing::debug!(bytes = payload.len(), "job submitted");
    match app.jobs.submit() {
        Ok(id) => (StatusCode::ACCEPTED, Json(serde_json::json!({ "id": id }))).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot persist job");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [("retry-after", "5")],
                format!("cannot persist the job: {e}\n"),
            )
                .into_response()
        }
    }
}

async fn job_stats(State(app): State<App>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "queued": app.jobs.queued(),
        "finished": app.jobs.finished(),
        "finished_by_this_process": app.jobs.finished_here(),
        "failed": app.jobs.failed(),
    }))
}
