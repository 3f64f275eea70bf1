//! `torture`: zero-downtime restarts of `lameduck demo` under mixed load,
//! with injected faults, as a smoke test.
//!
//! ```text
//! cargo build --release -p lameduck-bench -p lameduck-cli
//! target/release/torture --seconds 60 --every-ms 500 --faults
//! target/release/torture --seconds 10 --every-ms 500 --faults   # CI smoke
//! ```
//!
//! The demo runs with a control socket, a 200 ms probation and a 2 s ready
//! timeout. Tasks of one tokio runtime load it: keep-alive GET loops (they
//! reconnect only after `Connection: close` and never retry a failed
//! request), a new connection per GET, slow uploads (`POST /jobs` with the
//! body sent in chunks with pauses), SSE readers (`/events`; a stream that
//! ends cleanly after its `bye` event is reconnected) and WebSocket echo
//! clients (a Close 1001 from the server is clean; reconnect). Meanwhile a
//! restart is asked for every `--every-ms`; with `--faults` every 4th one
//! first writes a fault for the successor (exit, hang, crash-after-ready in
//! turn), which must fail the restart while the old process keeps serving.
//!
//! Oracles: client errors by class and the kernel's `ListenOverflows` /
//! `ListenDrops` (TcpExt) before and after. Exit status 1 on any client
//! error, unexpected restart answer, or a generation that did not exit 0.
//! Errors of connections that a crash-after-ready successor took down with
//! it (reset, EOF, 1006 or timeout while it was up) are reported apart and
//! not counted, since no server can save them; `--strict` counts them too.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{sleep, timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};

#[derive(Debug, Parser)]
#[command(about = "Restart lameduck demo under mixed load, with injected faults")]
struct Args {
    /// Length of the run (restarts and load).
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Time between restart requests.
    #[arg(long, default_value_t = 500)]
    every_ms: u64,
    /// Every 4th restart, inject a fault into the successor (exit, hang,
    /// crash-after-ready in turn).
    #[arg(long)]
    faults: bool,
    /// Keep-alive GET loops.
    #[arg(long, default_value_t = 6)]
    keepalive: usize,
    /// New-connection-per-request GET loops.
    #[arg(long, default_value_t = 3)]
    oneshot: usize,
    /// Slow-upload loops (keep-alive `POST /jobs`, body in chunks).
    #[arg(long, default_value_t = 2)]
    uploads: usize,
    /// SSE readers.
    #[arg(long, default_value_t = 3)]
    sse: usize,
    /// WebSocket echo clients.
    #[arg(long, default_value_t = 3)]
    ws: usize,
    /// The `lameduck` binary (default: next to this one).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Keep the scratch directory (demo log, data) even after a clean run.
    #[arg(long)]
    keep: bool,
    /// Count as failures the client errors of connections that a successor
    /// injected with crash-after-ready took down with it (by default they
    /// are reported apart: no server can save them).
    #[arg(long)]
    strict: bool,
}

const FAULTS: [&str; 3] = ["exit", "hang", "crash-after-ready"];
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const EVENT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    KeepAlive,
    NewConn,
    Upload,
    Sse,
    Ws,
}

impl Class {
    const ALL: [Class; 5] = [
        Class::KeepAlive,
        Class::NewConn,
        Class::Upload,
        Class::Sse,
        Class::Ws,
    ];

    fn name(self) -> &'static str {
        match self {
            Class::KeepAlive => "keep-alive GET",
            Class::NewConn => "new-connection GET",
            Class::Upload => "slow upload POST /jobs",
            Class::Sse => "SSE events",
            Class::Ws => "WebSocket echoes",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Refused,
    Reset,
    Eof,
    Timeout,
    Non2xx,
    Ws1006,
    Other,
}

impl Kind {
    const ALL: [Kind; 7] = [
        Kind::Refused,
        Kind::Reset,
        Kind::Eof,
        Kind::Timeout,
        Kind::Non2xx,
        Kind::Ws1006,
        Kind::Other,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Refused => "connect refused",
            Kind::Reset => "reset",
            Kind::Eof => "unexpected EOF",
            Kind::Timeout => "timeout",
            Kind::Non2xx => "non-2xx",
            Kind::Ws1006 => "WS 1006",
            Kind::Other => "other",
        }
    }

    fn of(e: &io::Error) -> Kind {
        use io::ErrorKind::*;
        match e.kind() {
            ConnectionRefused => Kind::Refused,
            ConnectionReset | ConnectionAborted | BrokenPipe => Kind::Reset,
            UnexpectedEof => Kind::Eof,
            TimedOut => Kind::Timeout,
            _ => Kind::Other,
        }
    }
}

/// A client failure: its class, when, and what.
#[derive(Debug, Clone)]
struct Failure {
    at: Duration,
    class: Class,
    kind: Kind,
    detail: String,
}

/// A restart request and how it went.
#[derive(Debug, Clone)]
struct RestartRecord {
    n: u64,
    fault: Option<&'static str>,
    asked: Duration,
    answered: Duration,
    answer: String,
    verdict: Verdict,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Ok,
    Injected,
    Unexpected,
}

/// Everything the clients and the restarter report.
struct Stats {
    start: Instant,
    ok: [AtomicU64; 5],
    /// Streams that ended cleanly: SSE after `bye`, WebSocket with 1001.
    clean_ends: [AtomicU64; 5],
    errors: Mutex<Vec<Failure>>,
    restarts: Mutex<Vec<RestartRecord>>,
}

impl Stats {
    fn new() -> Self {
        Stats {
            start: Instant::now(),
            ok: Default::default(),
            clean_ends: Default::default(),
            errors: Mutex::new(Vec::new()),
            restarts: Mutex::new(Vec::new()),
        }
    }

    fn ok(&self, class: Class) {
        self.ok[class as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn clean_end(&self, class: Class) {
        self.clean_ends[class as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn fail(&self, class: Class, kind: Kind, detail: impl Into<String>) {
        let f = Failure {
            at: self.start.elapsed(),
            class,
            kind,
            detail: detail.into(),
        };
        lock(&self.errors).push(f);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether the run is over, for loops to check and await.
#[derive(Clone)]
struct Stop(watch::Receiver<bool>);

impl Stop {
    fn is_set(&self) -> bool {
        *self.0.borrow()
    }

    async fn wait(&mut self) {
        let _ = self.0.wait_for(|v| *v).await;
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let code = runtime.block_on(run(args))?;
    runtime.shutdown_timeout(Duration::from_secs(1));
    std::process::exit(code);
}

fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// `ListenOverflows` and `ListenDrops` from /proc/net/netstat (TcpExt).
fn listen_counters() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let mut lines = text.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        if !names.starts_with("TcpExt:") {
            continue;
        }
        let map: BTreeMap<&str, u64> = names
            .split_whitespace()
            .zip(values.split_whitespace())
            .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
            .collect();
        return (
            map.get("ListenOverflows").copied().unwrap_or(0),
            map.get("ListenDrops").copied().unwrap_or(0),
        );
    }
    (0, 0)
}

/// Our child processes (by their parent pid in /proc).
fn children() -> Vec<i32> {
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1).map(str::to_owned));
        if ppid.as_deref() == Some(me.as_str()) {
            out.push(pid);
        }
    }
    out
}

/// Reap whatever has exited; returns (pid, status) pairs.
fn reap() -> Vec<(i32, WaitStatus)> {
    let mut out = Vec::new();
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => break,
            Ok(s) => {
                if let Some(pid) = s.pid() {
                    out.push((pid.as_raw(), s));
                }
            }
        }
    }
    out
}

async fn control(path: &Path, command: &str, within: Duration) -> io::Result<String> {
    let run = async {
        let mut s = tokio::net::UnixStream::connect(path).await?;
        s.write_all(format!("{command}\n").as_bytes()).await?;
        let mut answer = Vec::new();
        let mut chunk = [0u8; 256];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
                Err(_) if !answer.is_empty() => break,
                Err(e) => return Err(e),
            }
        }
        Ok(String::from_utf8_lossy(&answer).trim().to_owned())
    };
    timeout(within, run)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer"))?
}

async fn run(args: Args) -> anyhow::Result<i32> {
    nix::sys::prctl::set_child_subreaper(true)?;
    let bin = args
        .bin
        .clone()
        .unwrap_or_else(|| target_dir().join("lameduck"));
    if !bin.exists() {
        bail!(
            "{} not built: run `cargo build --release -p lameduck-cli` first",
            bin.display()
        );
    }
    let dir = std::env::temp_dir().join(format!("lameduck-torture-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let sock = dir.join("control.sock");
    let fault_file = dir.join("fault");
    let log_path = dir.join("demo.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)?;

    // A watchdog: whatever happens, nothing outlives the run by much.
    let hard_limit = Duration::from_secs(args.seconds + 120);
    std::thread::spawn(move || {
        std::thread::sleep(hard_limit);
        eprintln!("torture: watchdog: still running after {hard_limit:?}; killing everything");
        for _ in 0..50 {
            for pid in children() {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            reap();
            std::thread::sleep(Duration::from_millis(20));
        }
        std::process::exit(2);
    });

    let (over0, drops0) = listen_counters();
    let first = std::process::Command::new(&bin)
        .args(["demo", "--listen", "127.0.0.1:0", "--control"])
        .arg(&sock)
        .args([
            "--probation",
            "200ms",
            "--ready-timeout",
            "2s",
            "--data-dir",
        ])
        .arg(dir.join("data"))
        .args(["--job-duration", "1ms"])
        .env("LAMEDUCK_DEMO_FAULT_FILE", &fault_file)
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("start {}", bin.display()))?;
    let first_pid = first.id() as i32;
    drop(first); // reaped with waitpid(-1) like every generation
    let addr = {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            if let Some(rest) = text.split("http://").nth(1) {
                let a = rest.split_whitespace().next().unwrap_or_default();
                break a.parse::<SocketAddr>()?;
            }
            if Instant::now() > end {
                let _ = kill(Pid::from_raw(first_pid), Signal::SIGKILL);
                bail!("the demo did not get ready within 10 s:\n{text}");
            }
            sleep(Duration::from_millis(20)).await;
        }
    };
    eprintln!(
        "torture: demo pid {first_pid} on {addr}; {} s, a restart every {} ms{}; scratch {}",
        args.seconds,
        args.every_ms,
        if args.faults { ", faults" } else { "" },
        dir.display()
    );

    let stats = Arc::new(Stats::new());
    let (stop_clients_tx, stop_clients) = watch::channel(false);
    let (stop_restarts_tx, stop_restarts) = watch::channel(false);
    let mut clients = JoinSet::new();
    for _ in 0..args.keepalive {
        clients.spawn(keepalive_loop(
            addr,
            Arc::clone(&stats),
            Stop(stop_clients.clone()),
        ));
    }
    for _ in 0..args.oneshot {
        clients.spawn(oneshot_loop(
            addr,
            Arc::clone(&stats),
            Stop(stop_clients.clone()),
        ));
    }
    for _ in 0..args.uploads {
        clients.spawn(upload_loop(
            addr,
            Arc::clone(&stats),
            Stop(stop_clients.clone()),
        ));
    }
    for _ in 0..args.sse {
        clients.spawn(sse_loop(
            addr,
            Arc::clone(&stats),
            Stop(stop_clients.clone()),
        ));
    }
    for _ in 0..args.ws {
        clients.spawn(ws_loop(
            addr,
            Arc::clone(&stats),
            Stop(stop_clients.clone()),
        ));
    }
    let restarter = tokio::spawn(restart_loop(
        sock.clone(),
        fault_file.clone(),
        args.every_ms,
        args.faults,
        Arc::clone(&stats),
        Stop(stop_restarts),
    ));
    // Exited generations, reaped as they go (this process is their
    // subreaper once their parent has exited).
    let exits = Arc::new(Mutex::new(Vec::<(i32, WaitStatus)>::new()));
    let reaper = {
        let exits = Arc::clone(&exits);
        tokio::spawn(async move {
            loop {
                lock(&exits).extend(reap());
                sleep(Duration::from_millis(50)).await;
            }
        })
    };

    let interrupted = tokio::select! {
        _ = sleep(Duration::from_secs(args.seconds)) => false,
        _ = tokio::signal::ctrl_c() => true,
        _ = terminated() => true,
    };
    if interrupted {
        eprintln!("torture: interrupted; stopping");
    }
    // Stop restarting (the one in progress finishes), let the load run a
    // moment on the last generation, then stop the clients.
    let _ = stop_restarts_tx.send(true);
    match timeout(Duration::from_secs(30), restarter).await {
        Ok(_) => {}
        Err(_) => eprintln!("torture: the last restart did not answer within 30 s"),
    }
    sleep(Duration::from_millis(300)).await;
    let _ = stop_clients_tx.send(true);
    let drain_end = Instant::now() + REQUEST_TIMEOUT + Duration::from_secs(5);
    while !clients.is_empty() {
        match tokio::time::timeout_at(drain_end, clients.join_next()).await {
            Ok(_) => {}
            Err(_) => {
                eprintln!(
                    "torture: {} client tasks did not stop; aborted",
                    clients.len()
                );
                clients.abort_all();
                break;
            }
        }
    }

    // Stop the generation that serves now, and wait for every process.
    let status = control(&sock, "status", Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| format!("error: {e}"));
    let last_pid: Option<i32> = status
        .strip_prefix("ok: pid ")
        .and_then(|r| r.split(',').next())
        .and_then(|p| p.parse().ok());
    match last_pid {
        Some(pid) => {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        None => eprintln!("torture: status answered {status:?}; killing every child"),
    }
    let end = Instant::now() + Duration::from_secs(40);
    let mut killed = false;
    loop {
        lock(&exits).extend(reap());
        let left = children();
        let gone = last_pid.is_none_or(|p| kill(Pid::from_raw(p), None).is_err());
        if left.is_empty() && gone {
            break;
        }
        if Instant::now() > end || last_pid.is_none() {
            for pid in left {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            if let Some(p) = last_pid {
                let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
            }
            killed = true;
        }
        sleep(Duration::from_millis(20)).await;
    }
    reaper.abort();
    lock(&exits).extend(reap());
    let (over1, drops1) = listen_counters();

    // Report.
    let errors = lock(&stats.errors).clone();
    let restarts = lock(&stats.restarts).clone();
    let exits = lock(&exits).clone();
    let count = |v: Verdict| restarts.iter().filter(|r| r.verdict == v).count();
    let (ok, injected, unexpected) = (
        count(Verdict::Ok),
        count(Verdict::Injected),
        count(Verdict::Unexpected),
    );
    let bad_exits: Vec<_> = exits
        .iter()
        .filter(|(_, s)| !matches!(s, WaitStatus::Exited(_, 0)))
        .collect();

    println!("## Restart torture\n");
    println!(
        "`lameduck demo` (probation 200 ms, ready timeout 2 s), {} s, a restart every {} ms{}; load: {} keep-alive GET loops, {} new-connection GET loops, {} slow uploads, {} SSE readers, {} WebSocket echo clients. Clients never retry.\n",
        args.seconds,
        args.every_ms,
        if args.faults {
            ", every 4th with an injected fault (exit, hang, crash-after-ready)"
        } else {
            ""
        },
        args.keepalive,
        args.oneshot,
        args.uploads,
        args.sse,
        args.ws
    );
    println!("| restarts | ok | failed (injected) | unexpected | generations exited | exit ≠ 0 |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| {} | {ok} | {injected} | {unexpected} | {} | {} |\n",
        restarts.len(),
        exits.len(),
        bad_exits.len()
    );
    // The injected fault whose successor was up when an error happened:
    // an error of a connection the successor had (reset, EOF, 1006,
    // timeout) while a crash-after-ready or hang successor was up. A
    // refused connect or a non-2xx answer is never put down to a fault.
    let fault_of = |e: &Failure| {
        if matches!(e.kind, Kind::Refused | Kind::Non2xx) {
            return None;
        }
        restarts.iter().find_map(|r| {
            let up = e.at >= r.asked && e.at <= r.answered + Duration::from_millis(100);
            match r.fault {
                Some(f @ ("hang" | "crash-after-ready")) if up => Some(f),
                _ => None,
            }
        })
    };
    // Connections the crashed successor had die with it: expected. Those
    // of a successor that hangs are not (see the report).
    let excused = |e: &Failure| !args.strict && fault_of(e) == Some("crash-after-ready");
    print!("| class | ok | clean stream ends |");
    for k in Kind::ALL {
        print!(" {} |", k.name());
    }
    println!(" lost with the crashed successor |");
    print!("|---|---|---|");
    for _ in Kind::ALL {
        print!("---|");
    }
    println!("---|");
    for c in Class::ALL {
        let clean = match c {
            Class::Sse | Class::Ws => stats.clean_ends[c as usize]
                .load(Ordering::Relaxed)
                .to_string(),
            _ => "–".into(),
        };
        print!(
            "| {} | {} | {clean} |",
            c.name(),
            stats.ok[c as usize].load(Ordering::Relaxed)
        );
        for k in Kind::ALL {
            let n = errors
                .iter()
                .filter(|e| e.class == c && e.kind == k && !excused(e))
                .count();
            print!(" {n} |");
        }
        let lost = errors.iter().filter(|e| e.class == c && excused(e)).count();
        println!(" {lost} |");
    }
    println!(
        "\nListenOverflows Δ {}, ListenDrops Δ {} (machine-wide TcpExt counters).",
        over1.saturating_sub(over0),
        drops1.saturating_sub(drops0)
    );
    let counted = errors.iter().filter(|e| !excused(e)).count();
    let in_hang = errors
        .iter()
        .filter(|e| fault_of(e) == Some("hang"))
        .count();
    if !errors.is_empty() {
        println!(
            "\n{counted} client errors counted ({in_hang} of them while a successor that never got ready was up); {} lost with a successor that crashed after ready{}.",
            errors.len() - counted,
            if args.strict { " (counted: --strict)" } else { " (not counted)" }
        );
    }
    let mut code = 0;
    if counted > 0 || unexpected > 0 || !bad_exits.is_empty() || killed {
        code = 1;
    }
    for r in restarts.iter().filter(|r| r.verdict == Verdict::Unexpected) {
        eprintln!(
            "torture: unexpected restart answer #{} (fault {:?}) at {:.3}s..{:.3}s: {}",
            r.n,
            r.fault,
            r.asked.as_secs_f64(),
            r.answered.as_secs_f64(),
            r.answer
        );
    }
    for (pid, s) in &bad_exits {
        eprintln!("torture: pid {pid} ended with {s:?}");
    }
    if killed {
        eprintln!("torture: some processes had to be killed");
    }
    for e in errors.iter().take(30) {
        let near = restarts
            .iter()
            .rev()
            .find(|r| r.asked <= e.at + Duration::from_millis(50))
            .map(|r| {
                format!(
                    "restart #{} {:?} asked {:.3}s answered {:.3}s: {}",
                    r.n,
                    r.fault,
                    r.asked.as_secs_f64(),
                    r.answered.as_secs_f64(),
                    r.answer
                )
            })
            .unwrap_or_default();
        let fault = fault_of(e).map_or(String::new(), |f| format!(" [{f} successor up]"));
        eprintln!(
            "torture: error t={:.3}s {} / {}: {}{fault} [last restart: {near}]",
            e.at.as_secs_f64(),
            e.class.name(),
            e.kind.name(),
            e.detail
        );
    }
    if code == 0 && !args.keep {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("torture: demo log and data kept in {}", dir.display());
    }
    Ok(code)
}

/// Resolves on SIGTERM (never, if it cannot be watched).
async fn terminated() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

async fn restart_loop(
    sock: PathBuf,
    fault_file: PathBuf,
    every_ms: u64,
    faults: bool,
    stats: Arc<Stats>,
    mut stop: Stop,
) {
    let every = Duration::from_millis(every_ms.max(1));
    let mut tick = tokio::time::interval_at(Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    loop {
        tokio::select! {
            biased;
            _ = stop.wait() => break,
            _ = tick.tick() => {}
        }
        n += 1;
        let fault = (faults && n % 4 == 0).then(|| FAULTS[((n / 4 - 1) % 3) as usize]);
        if let Some(f) = fault {
            if let Err(e) = std::fs::write(&fault_file, f) {
                eprintln!("torture: cannot write the fault file: {e}");
            }
        }
        let asked = stats.start.elapsed();
        let answer = control(&sock, "restart", Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| format!("error: {e}"));
        let answered = stats.start.elapsed();
        let verdict = match (fault, answer.starts_with("done: new pid ")) {
            (None, true) => Verdict::Ok,
            (Some(_), false) if answer.starts_with("failed: ") => Verdict::Injected,
            _ => Verdict::Unexpected,
        };
        if fault.is_some() {
            // Not taken (the restart never started a successor): do not
            // leave it for the next one.
            let _ = std::fs::remove_file(&fault_file);
        }
        lock(&stats.restarts).push(RestartRecord {
            n,
            fault,
            asked,
            answered,
            answer,
            verdict,
        });
    }
}

/// How a client request failed.
#[derive(Debug)]
struct Fail(Kind, String);

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.0.name(), self.1)
    }
}

impl From<io::Error> for Fail {
    fn from(e: io::Error) -> Self {
        Fail(Kind::of(&e), e.to_string())
    }
}

async fn connect(addr: SocketAddr) -> Result<TcpStream, Fail> {
    match timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err(Fail(Kind::of(&e), format!("connect: {e}"))),
        Err(_) => Err(Fail(Kind::Timeout, "connect: timeout".into())),
    }
}

/// A response head.
#[derive(Debug)]
struct Head {
    status: u16,
    close: bool,
    chunked: bool,
    length: Option<usize>,
}

/// An HTTP/1.1 client connection with its read buffer.
struct Http {
    s: TcpStream,
    buf: Vec<u8>,
    /// The demo's pid, from a `GET /` body on this connection.
    pid: Option<u32>,
    requests: u64,
}

impl Http {
    fn new(s: TcpStream) -> Self {
        Http {
            s,
            buf: Vec::with_capacity(1024),
            pid: None,
            requests: 0,
        }
    }

    /// Read more bytes; EOF is an error here.
    async fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 4096];
        let n = self.s.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "eof ({} bytes unread: {:?})",
                    self.buf.len(),
                    String::from_utf8_lossy(&self.buf)
                ),
            ));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    async fn line(&mut self) -> io::Result<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return Ok(line);
            }
            self.fill().await?;
        }
    }

    async fn head(&mut self) -> io::Result<Head> {
        let status_line = self.line().await?;
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut head = Head {
            status,
            close: false,
            chunked: false,
            length: None,
        };
        loop {
            let line = self.line().await?;
            if line.is_empty() {
                return Ok(head);
            }
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
            match k.as_str() {
                "connection" => head.close |= v.split(',').any(|t| t.trim() == "close"),
                "transfer-encoding" => head.chunked |= v.contains("chunked"),
                "content-length" => head.length = v.parse().ok(),
                _ => {}
            }
        }
    }

    async fn exact(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() < n {
            self.fill().await?;
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// One chunk of a chunked body; `None` after the last one (and its
    /// trailers).
    async fn chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        let size_line = self.line().await?;
        let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad chunk size {size_line:?}"),
                )
            })?;
        if size == 0 {
            while !self.line().await?.is_empty() {}
            return Ok(None);
        }
        let data = self.exact(size).await?;
        if !self.line().await?.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "chunk not followed by CRLF",
            ));
        }
        Ok(Some(data))
    }

    async fn body(&mut self, head: &Head) -> io::Result<Vec<u8>> {
        if head.chunked {
            let mut body = Vec::new();
            while let Some(c) = self.chunk().await? {
                body.extend_from_slice(&c);
            }
            Ok(body)
        } else {
            self.exact(head.length.unwrap_or(0)).await
        }
    }

    /// Send `request` (in parts, with `pause` between them) and read the
    /// whole response, bounded by `REQUEST_TIMEOUT`.
    async fn exchange(
        &mut self,
        parts: &[&[u8]],
        pause: Duration,
    ) -> Result<(Head, Vec<u8>), Fail> {
        self.requests += 1;
        let run = async {
            for (i, p) in parts.iter().enumerate() {
                if i > 0 {
                    sleep(pause).await;
                }
                self.s.write_all(p).await?;
            }
            let head = self.head().await?;
            let body = self.body(&head).await?;
            Ok::<_, io::Error>((head, body))
        };
        match timeout(REQUEST_TIMEOUT, run).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(Fail(Kind::of(&e), e.to_string())),
            Err(_) => Err(Fail(Kind::Timeout, "no response within 10 s".into())),
        }
    }

    fn describe(&self) -> String {
        format!(
            "request #{} on the connection, server pid {}",
            self.requests,
            self.pid.map_or_else(|| "?".into(), |p| p.to_string())
        )
    }
}

fn pid_of(body: &[u8]) -> Option<u32> {
    let text = String::from_utf8_lossy(body);
    text.split("pid ")
        .nth(1)?
        .trim_end_matches([')', '\n'])
        .parse()
        .ok()
}

async fn keepalive_loop(addr: SocketAddr, stats: Arc<Stats>, stop: Stop) {
    let class = Class::KeepAlive;
    let mut conn: Option<Http> = None;
    while !stop.is_set() {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match connect(addr).await {
                Ok(s) => conn.insert(Http::new(s)),
                Err(Fail(kind, detail)) => {
                    stats.fail(class, kind, detail);
                    sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        match c
            .exchange(
                &[b"GET / HTTP/1.1\r\nhost: torture\r\n\r\n"],
                Duration::ZERO,
            )
            .await
        {
            Ok((head, body)) if head.status == 200 => {
                stats.ok(class);
                c.pid = pid_of(&body).or(c.pid);
                if head.close {
                    conn = None;
                }
            }
            Ok((head, body)) => {
                let d = c.describe();
                stats.fail(
                    class,
                    Kind::Non2xx,
                    format!(
                        "status {}: {:?} ({d})",
                        head.status,
                        String::from_utf8_lossy(&body)
                    ),
                );
                conn = None;
            }
            Err(Fail(kind, detail)) => {
                let d = c.describe();
                stats.fail(class, kind, format!("{detail} ({d})"));
                conn = None;
            }
        }
        sleep(Duration::from_millis(2)).await;
    }
}

async fn oneshot_loop(addr: SocketAddr, stats: Arc<Stats>, stop: Stop) {
    let class = Class::NewConn;
    while !stop.is_set() {
        match connect(addr).await {
            Ok(s) => {
                let mut c = Http::new(s);
                match c
                    .exchange(
                        &[b"GET / HTTP/1.1\r\nhost: torture\r\nconnection: close\r\n\r\n"],
                        Duration::ZERO,
                    )
                    .await
                {
                    Ok((head, _)) if head.status == 200 => stats.ok(class),
                    Ok((head, body)) => stats.fail(
                        class,
                        Kind::Non2xx,
                        format!(
                            "status {}: {:?}",
                            head.status,
                            String::from_utf8_lossy(&body)
                        ),
                    ),
                    Err(Fail(kind, detail)) => stats.fail(class, kind, detail),
                }
            }
            Err(Fail(kind, detail)) => stats.fail(class, kind, detail),
        }
        sleep(Duration::from_millis(5)).await;
    }
}

/// One slow upload on a connection of its own: the head, then the body in
/// three chunks with pauses, reading the response all the while (the demo
/// answers `POST /jobs` without reading the body, so the answer may come
/// before the body is sent; then sending stops).
async fn upload_once(addr: SocketAddr, head: &[u8], chunk: &[u8]) -> Result<Head, Fail> {
    let s = connect(addr).await?;
    let (mut rd, mut wr) = s.into_split();
    let send = async move {
        wr.write_all(head).await?;
        for _ in 0..3 {
            sleep(Duration::from_millis(20)).await;
            wr.write_all(chunk).await?;
        }
        // Keep the write half open until the response has been read.
        std::future::pending::<()>().await;
        Ok::<_, io::Error>(())
    };
    let receive = async move {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = rd.read(&mut buf).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("eof after {:?}", String::from_utf8_lossy(&all)),
                ));
            }
            all.extend_from_slice(&buf[..n]);
            if let Some(end) = all.windows(4).position(|w| w == b"\r\n\r\n") {
                let text = String::from_utf8_lossy(&all[..end]).to_ascii_lowercase();
                let status = text
                    .split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let length: usize = text
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if all.len() >= end + 4 + length {
                    return Ok(Head {
                        status,
                        close: true,
                        chunked: false,
                        length: Some(length),
                    });
                }
            }
        }
    };
    let exchange = async {
        tokio::select! {
            // A failed write is reported only if no response comes.
            r = receive => r,
            Err(e) = send => Err(e),
        }
    };
    match timeout(REQUEST_TIMEOUT, exchange).await {
        Ok(Ok(head)) => Ok(head),
        Ok(Err(e)) => Err(Fail(Kind::of(&e), e.to_string())),
        Err(_) => Err(Fail(Kind::Timeout, "no response within 10 s".into())),
    }
}

async fn upload_loop(addr: SocketAddr, stats: Arc<Stats>, stop: Stop) {
    let class = Class::Upload;
    let chunk = [b'x'; 64];
    let head = format!(
        "POST /jobs HTTP/1.1\r\nhost: torture\r\nconnection: close\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\n\r\n",
        chunk.len() * 3
    );
    while !stop.is_set() {
        match upload_once(addr, head.as_bytes(), &chunk).await {
            Ok(head) if head.status == 202 => stats.ok(class),
            Ok(head) => stats.fail(class, Kind::Non2xx, format!("status {}", head.status)),
            Err(Fail(kind, detail)) => stats.fail(class, kind, detail),
        }
        sleep(Duration::from_millis(10)).await;
    }
}

/// One SSE stream, until it ends (Ok: after `bye`) or the run stops.
async fn sse_stream(addr: SocketAddr, stats: &Stats, stop: &mut Stop) -> Result<(), Fail> {
    let class = Class::Sse;
    let mut c = Http::new(connect(addr).await?);
    let started = async {
        c.s.write_all(
            b"GET /events HTTP/1.1\r\nhost: torture\r\naccept: text/event-stream\r\n\r\n",
        )
        .await?;
        c.head().await
    };
    let head = match timeout(REQUEST_TIMEOUT, started).await {
        Ok(r) => r?,
        Err(_) => return Err(Fail(Kind::Timeout, "no response head within 10 s".into())),
    };
    if head.status != 200 {
        return Err(Fail(Kind::Non2xx, format!("status {}", head.status)));
    }
    if !head.chunked {
        return Err(Fail(Kind::Other, format!("not chunked: {head:?}")));
    }
    let mut text = String::new();
    let mut events = 0u64;
    let mut bye = false;
    loop {
        let next = tokio::select! {
            biased;
            _ = stop.wait() => return Ok(()),
            next = timeout(EVENT_TIMEOUT, c.chunk()) => next,
        };
        match next {
            Err(_) => {
                return Err(Fail(
                    Kind::Timeout,
                    format!("no event within 5 s (after {events} events)"),
                ))
            }
            Ok(Err(e)) => {
                return Err(Fail(
                    Kind::of(&e),
                    format!("{e} (after {events} events, bye: {bye})"),
                ))
            }
            Ok(Ok(None)) if bye => {
                stats.clean_end(class);
                return Ok(());
            }
            Ok(Ok(None)) => {
                return Err(Fail(
                    Kind::Eof,
                    format!("stream ended without bye (after {events} events)"),
                ))
            }
            Ok(Ok(Some(data))) => {
                text.push_str(&String::from_utf8_lossy(&data));
                while let Some(i) = text.find("\n\n") {
                    let event: String = text.drain(..i + 2).collect();
                    if event.lines().any(|l| l == "event: bye") {
                        bye = true;
                    } else if event.lines().any(|l| l == "event: tick") {
                        events += 1;
                        stats.ok(class);
                    }
                }
            }
        }
    }
}

async fn sse_loop(addr: SocketAddr, stats: Arc<Stats>, mut stop: Stop) {
    while !stop.is_set() {
        if let Err(Fail(kind, detail)) = sse_stream(addr, &stats, &mut stop).await {
            stats.fail(Class::Sse, kind, detail);
            sleep(Duration::from_millis(50)).await;
        }
    }
}

fn ws_fail(e: tungstenite::Error, echoes: u64) -> Fail {
    use tungstenite::error::ProtocolError;
    use tungstenite::Error as E;
    match e {
        E::Io(e) if Kind::of(&e) == Kind::Reset => {
            Fail(Kind::Ws1006, format!("reset: {e} (after {echoes} echoes)"))
        }
        E::Io(e) => Fail(Kind::of(&e), format!("{e} (after {echoes} echoes)")),
        E::ConnectionClosed
        | E::AlreadyClosed
        | E::Protocol(ProtocolError::ResetWithoutClosingHandshake) => Fail(
            Kind::Ws1006,
            format!("closed without a close frame: {e} (after {echoes} echoes)"),
        ),
        other => Fail(Kind::Other, format!("{other} (after {echoes} echoes)")),
    }
}

/// One WebSocket session, until a clean close (Ok) or the run stops.
async fn ws_session(addr: SocketAddr, stats: &Stats, stop: &mut Stop) -> Result<(), Fail> {
    let class = Class::Ws;
    let s = connect(addr).await?;
    let url = format!("ws://{addr}/ws");
    let (mut ws, _) = match timeout(REQUEST_TIMEOUT, tokio_tungstenite::client_async(url, s)).await
    {
        Err(_) => return Err(Fail(Kind::Timeout, "handshake: timeout".into())),
        Ok(Err(tungstenite::Error::Http(r))) => {
            return Err(Fail(
                Kind::Non2xx,
                format!("handshake: status {}", r.status()),
            ))
        }
        Ok(Err(e)) => {
            let Fail(kind, d) = ws_fail(e, 0);
            // Before the upgrade a reset is a reset.
            let kind = if kind == Kind::Ws1006 {
                Kind::Reset
            } else {
                kind
            };
            return Err(Fail(kind, format!("handshake: {d}")));
        }
        Ok(Ok(ws)) => ws,
    };
    let mut echoes = 0u64;
    loop {
        if stop.is_set() {
            let _ = timeout(Duration::from_secs(1), ws.close(None)).await;
            return Ok(());
        }
        let text = format!("echo {echoes}");
        if let Err(e) = ws.send(Message::text(text.clone())).await {
            return Err(ws_fail(e, echoes));
        }
        // Wait for the echo (or a close).
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            let next = match tokio::time::timeout_at(deadline, ws.next()).await {
                Err(_) => {
                    return Err(Fail(
                        Kind::Timeout,
                        format!("no echo within 5 s (after {echoes} echoes)"),
                    ))
                }
                Ok(next) => next,
            };
            match next {
                Some(Ok(Message::Text(t))) if t.as_str() == text => {
                    echoes += 1;
                    stats.ok(class);
                    break;
                }
                Some(Ok(Message::Close(frame))) => {
                    let code = frame.as_ref().map(|f| f.code);
                    // Finish the closing handshake.
                    let _ = timeout(Duration::from_secs(2), async {
                        while let Some(Ok(_)) = ws.next().await {}
                    })
                    .await;
                    return match code {
                        Some(CloseCode::Away | CloseCode::Normal) => {
                            stats.clean_end(class);
                            Ok(())
                        }
                        other => Err(Fail(
                            Kind::Other,
                            format!("close frame {other:?} (after {echoes} echoes)"),
                        )),
                    };
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(other)) => {
                    return Err(Fail(
                        Kind::Other,
                        format!("unexpected message {other:?} (after {echoes} echoes)"),
                    ))
                }
                Some(Err(e)) => return Err(ws_fail(e, echoes)),
                None => {
                    return Err(Fail(
                        Kind::Ws1006,
                        format!("stream ended without a close frame (after {echoes} echoes)"),
                    ))
                }
            }
        }
        tokio::select! {
            biased;
            _ = stop.wait() => {}
            _ = sleep(Duration::from_millis(100)) => {}
        }
    }
}

async fn ws_loop(addr: SocketAddr, stats: Arc<Stats>, mut stop: Stop) {
    while !stop.is_set() {
        if let Err(Fail(kind, detail)) = ws_session(addr, &stats, &mut stop).await {
            stats.fail(Class::Ws, kind, detail);
            sleep(Duration::from_millis(50)).await;
        }
    }
}
