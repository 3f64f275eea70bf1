//! `scale`: memory per connection and drain timing with many connections.
//!
//! ```text
//! cargo build --release -p lameduck-bench
//! target/release/scale --idle 10000 --active 1000 --slow-ms 2000
//! ```
//!
//! For each peer (`lameduck-peer`, `hyper-peer`, next to this binary): start
//! it, read its RSS, open `--idle` keep-alive connections that each made one
//! request and then stay idle, plus `--active` connections with a
//! `/slow?ms=N` request in flight, read the RSS again, then send SIGTERM and
//! measure the time to the last slow response and from there to the exit
//! (waitpid). Every slow request must get a 200; idle connections should end
//! with a FIN before the process exits. One tokio runtime, one task per
//! connection.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::{timeout, Instant};

#[derive(Debug, Parser)]
#[command(about = "Memory per connection and SIGTERM drain timing with many connections")]
struct Args {
    /// Keep-alive connections that made one request and stay idle.
    #[arg(long, default_value_t = 10_000)]
    idle: usize,
    /// Connections with a `/slow?ms=N` request in flight at SIGTERM.
    #[arg(long, default_value_t = 1_000)]
    active: usize,
    /// How long each slow request takes on the server.
    #[arg(long, default_value_t = 2_000)]
    slow_ms: u64,
    /// Peer binaries (next to this one) to measure.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "lameduck-peer,hyper-peer"
    )]
    peers: Vec<String>,
    /// Connection attempts in flight at once (the peers' listen backlog is
    /// 1024).
    #[arg(long, default_value_t = 128)]
    connect_concurrency: usize,
}

/// How one idle connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdleEnd {
    /// FIN before the server process exited.
    Fin(Instant),
    /// Reset by the server.
    Reset,
    /// Unexpected bytes (a response nobody asked for).
    Data,
    /// Still open when the measurement gave up.
    Open,
}

/// What one peer run measured.
struct Run {
    name: String,
    connections: usize,
    rss_before_kib: u64,
    rss_after_kib: u64,
    term_to_last: Option<Duration>,
    last_to_exit: Option<Duration>,
    slow_ok: usize,
    slow_failed: usize,
    failures: Vec<String>,
    idle_open_failed: usize,
    idle_fin_before_exit: usize,
    idle_closed_at_exit: usize,
    idle_reset: usize,
    idle_data: usize,
    idle_open: usize,
    last_idle_fin: Option<Duration>,
    exit: String,
    late_start: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    raise_nofile(args.idle + args.active + 256)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run_all(args))
}

/// Raise the soft descriptor limit (the peers inherit it too).
fn raise_nofile(need: usize) -> anyhow::Result<()> {
    let need = need as u64;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= need {
        return Ok(());
    }
    if hard < need {
        bail!("{need} descriptors needed, hard limit is {hard}: lower --idle/--active");
    }
    setrlimit(Resource::RLIMIT_NOFILE, need.max(soft), hard)?;
    Ok(())
}

fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.parent().map(Path::to_path_buf).unwrap_or_default()
}

async fn run_all(args: Args) -> anyhow::Result<()> {
    let mut runs = Vec::new();
    for name in &args.peers {
        let path = target_dir().join(name);
        if !path.exists() {
            bail!(
                "{} not built: run `cargo build --release -p lameduck-bench` first",
                path.display()
            );
        }
        eprintln!("scale: {name}: {} idle + {} active", args.idle, args.active);
        let run = one_peer(&args, name, &path).await?;
        eprintln!(
            "scale: {name}: done ({} slow ok, {} failed, exit {})",
            run.slow_ok, run.slow_failed, run.exit
        );
        runs.push(run);
        // Let the TIME_WAIT sockets and the peer's memory go before the next.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    print_tables(&args, &runs);
    let bad = runs.iter().any(|r| {
        r.slow_failed > 0 || r.idle_open_failed > 0 || r.exit != "0" || r.term_to_last.is_none()
    });
    if bad {
        for r in &runs {
            for f in r.failures.iter().take(10) {
                eprintln!("scale: {}: {f}", r.name);
            }
        }
        std::process::exit(1);
    }
    Ok(())
}

/// Start a peer; returns the child and its address. The peer's stderr is
/// drained by a task (and its last lines kept for errors).
#[allow(unsafe_code)] // `pre_exec`, to tie the peer's life to this process.
async fn start(path: &Path) -> anyhow::Result<(Child, SocketAddr)> {
    let mut command = Command::new(path);
    // SAFETY: runs in the child between fork and exec; `prctl` is a plain
    // system call (async-signal-safe) and nothing is allocated.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
    let mut child = command
        .arg("127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("start {}", path.display()))?;
    let stderr = child.stderr.take().context("stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let addr = timeout(Duration::from_secs(10), async {
        loop {
            let line = lines
                .next_line()
                .await?
                .context("peer exited before ready")?;
            if let Some(rest) = line.split("http://").nth(1) {
                let a = rest.split_whitespace().next().unwrap_or_default();
                break Ok::<_, anyhow::Error>(a.parse::<SocketAddr>()?);
            }
        }
    })
    .await
    .context("peer not ready within 10 s")??;
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("peer: {line}");
        }
    });
    Ok((child, addr))
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// One HTTP/1.1 response with a content-length body: (status, body).
async fn read_response(s: &mut TcpStream) -> std::io::Result<(u16, Vec<u8>)> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let status = head
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return Ok((status, buf[end + 4..end + 4 + len].to_vec()));
            }
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "eof before the end of the response",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn classify(e: &std::io::Error) -> &'static str {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => "connect refused",
        ConnectionReset | ConnectionAborted | BrokenPipe => "reset",
        UnexpectedEof => "unexpected eof",
        TimedOut => "timeout",
        _ => "other",
    }
}

async fn one_peer(args: &Args, name: &str, path: &Path) -> anyhow::Result<Run> {
    let (mut child, addr) = start(path).await?;
    let pid = child.id().context("peer pid")?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_before_kib = rss_kib(pid)?;
    let fds_before = fd_count(pid);
    let permits = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let note = {
        let failures = Arc::clone(&failures);
        move |what: String| {
            let mut f = failures.lock().unwrap_or_else(|e| e.into_inner());
            if f.len() < 1000 {
                f.push(what);
            }
        }
    };

    // Idle connections: one request each, then wait for the server's end.
    let (opened_tx, mut opened_rx) = mpsc::unbounded_channel::<bool>();
    let mut idle_tasks = Vec::with_capacity(args.idle);
    for _ in 0..args.idle {
        let (permits, opened_tx, note) = (Arc::clone(&permits), opened_tx.clone(), note.clone());
        idle_tasks.push(tokio::spawn(async move {
            let opened = async {
                let _permit = permits.acquire().await.ok();
                let mut s = TcpStream::connect(addr).await?;
                s.set_nodelay(true)?;
                s.write_all(b"GET / HTTP/1.1\r\nhost: scale\r\n\r\n")
                    .await?;
                let (status, _) = read_response(&mut s).await?;
                if status != 200 {
                    return Err(std::io::Error::other(format!("status {status}")));
                }
                Ok::<_, std::io::Error>(s)
            };
            let mut s = match timeout(Duration::from_secs(20), opened).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    note(format!("idle open: {} ({e})", classify(&e)));
                    let _ = opened_tx.send(false);
                    return None;
                }
                Err(_) => {
                    note("idle open: timeout".into());
                    let _ = opened_tx.send(false);
                    return None;
                }
            };
            let _ = opened_tx.send(true);
            let mut buf = [0u8; 512];
            // Bounded by the caller (the peer is killed at worst).
            Some(match s.read(&mut buf).await {
                Ok(0) => IdleEnd::Fin(Instant::now()),
                Ok(_) => IdleEnd::Data,
                Err(_) => IdleEnd::Reset,
            })
        }));
    }
    drop(opened_tx);
    // Every task answers once (and keeps its sender while it waits for the
    // end of its connection): count the answers.
    let mut idle_ok = 0usize;
    let mut idle_open_failed = 0usize;
    for _ in 0..args.idle {
        let Some(ok) = opened_rx.recv().await else {
            break;
        };
        if ok {
            idle_ok += 1;
        } else {
            idle_open_failed += 1;
        }
    }

    // Active connections: a slow request each, sent before SIGTERM.
    let answered_early = Arc::new(AtomicUsize::new(0));
    let (sent_tx, mut sent_rx) = mpsc::unbounded_channel::<Option<Instant>>();
    let slow_path = format!(
        "GET /slow?ms={} HTTP/1.1\r\nhost: scale\r\n\r\n",
        args.slow_ms
    );
    let slow_path: Arc<str> = slow_path.into();
    let mut active_tasks = Vec::with_capacity(args.active);
    let budget = Duration::from_millis(args.slow_ms) + Duration::from_secs(60);
    for _ in 0..args.active {
        let (permits, sent_tx, req, early) = (
            Arc::clone(&permits),
            sent_tx.clone(),
            Arc::clone(&slow_path),
            Arc::clone(&answered_early),
        );
        active_tasks.push(tokio::spawn(async move {
            let sent = async {
                let _permit = permits.acquire().await.ok();
                let mut s = TcpStream::connect(addr).await?;
                s.set_nodelay(true)?;
                s.write_all(req.as_bytes()).await?;
                Ok::<_, std::io::Error>(s)
            };
            let mut s = match timeout(Duration::from_secs(20), sent).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    let _ = sent_tx.send(None);
                    return Err(format!("slow send: {} ({e})", classify(&e)));
                }
                Err(_) => {
                    let _ = sent_tx.send(None);
                    return Err("slow send: timeout".into());
                }
            };
            let _ = sent_tx.send(Some(Instant::now()));
            drop(sent_tx);
            match timeout(budget, read_response(&mut s)).await {
                Ok(Ok((200, _))) => {
                    early.fetch_add(1, Ordering::Relaxed);
                    Ok(Instant::now())
                }
                Ok(Ok((status, body))) => Err(format!(
                    "slow: status {status}: {}",
                    String::from_utf8_lossy(&body).trim()
                )),
                Ok(Err(e)) => Err(format!("slow: {} ({e})", classify(&e))),
                Err(_) => Err("slow: timeout".into()),
            }
        }));
    }
    drop(sent_tx);
    let mut first_sent: Option<Instant> = None;
    let mut active_sent = 0usize;
    while let Some(sent) = sent_rx.recv().await {
        if let Some(at) = sent {
            first_sent.get_or_insert(at);
            active_sent += 1;
        }
    }

    // Wait for the server to hold every connection, then give it a moment
    // to read the slow requests.
    let want = fds_before + idle_ok + active_sent;
    let end = Instant::now() + Duration::from_secs(5);
    while fd_count(pid) < want && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "scale: {name}: server holds {} descriptors (before {fds_before}, want {want})",
        fd_count(pid)
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let rss_after_kib = rss_kib(pid)?;
    let late_start = answered_early.load(Ordering::Relaxed) > 0;
    if late_start {
        eprintln!(
            "scale: {name}: some slow requests were answered before SIGTERM (opening the connections took {:?}); use a larger --slow-ms",
            first_sent.map(|f| f.elapsed())
        );
    }

    let term = Instant::now();
    kill(Pid::from_raw(pid as i32), Signal::SIGTERM)?;
    let exit_wait = tokio::spawn(async move {
        let status = timeout(budget, child.wait()).await;
        let at = Instant::now();
        match status {
            Ok(Ok(s)) => (
                at,
                s.code()
                    .map_or_else(|| format!("signal {s}"), |c| c.to_string()),
            ),
            Ok(Err(e)) => (at, format!("wait: {e}")),
            Err(_) => {
                let _ = child.kill().await;
                (at, "killed (did not exit in time)".into())
            }
        }
    });

    let mut slow_ok = 0usize;
    let mut slow_failed = 0usize;
    let mut last: Option<Instant> = None;
    for t in active_tasks {
        match t.await {
            Ok(Ok(at)) => {
                slow_ok += 1;
                last = Some(last.map_or(at, |l| l.max(at)));
            }
            Ok(Err(e)) => {
                slow_failed += 1;
                note(e);
            }
            Err(e) => {
                slow_failed += 1;
                note(format!("task: {e}"));
            }
        }
    }
    slow_failed += args.active.saturating_sub(slow_ok + slow_failed);
    let (exited, exit) = exit_wait.await?;

    // After the exit every socket is closed: the idle tasks end at once.
    let mut run = Run {
        name: name.to_owned(),
        connections: idle_ok + active_sent,
        rss_before_kib,
        rss_after_kib,
        term_to_last: last.map(|l| l.saturating_duration_since(term)),
        last_to_exit: last.map(|l| exited.saturating_duration_since(l)),
        slow_ok,
        slow_failed,
        failures: Vec::new(),
        idle_open_failed,
        idle_fin_before_exit: 0,
        idle_closed_at_exit: 0,
        idle_reset: 0,
        idle_data: 0,
        idle_open: 0,
        last_idle_fin: None,
        exit,
        late_start,
    };
    let idle_deadline = Instant::now() + Duration::from_secs(5);
    for t in idle_tasks {
        let end = match tokio::time::timeout_at(idle_deadline, t).await {
            Ok(Ok(Some(end))) => end,
            Ok(Ok(None)) => continue,
            Ok(Err(_)) | Err(_) => IdleEnd::Open,
        };
        match end {
            IdleEnd::Fin(at) if at <= exited => {
                run.idle_fin_before_exit += 1;
                let d = at.saturating_duration_since(term);
                run.last_idle_fin = Some(run.last_idle_fin.map_or(d, |l| l.max(d)));
            }
            IdleEnd::Fin(_) => run.idle_closed_at_exit += 1,
            IdleEnd::Reset => run.idle_reset += 1,
            IdleEnd::Data => run.idle_data += 1,
            IdleEnd::Open => run.idle_open += 1,
        }
    }
    run.failures = failures.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok(run)
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(
        || "–".into(),
        |d| format!("{:.1} ms", d.as_secs_f64() * 1000.0),
    )
}

fn print_tables(args: &Args, runs: &[Run]) {
    println!("## Many connections: memory and drain\n");
    println!(
        "Per server: {} idle keep-alive connections (one request each) and {} connections with a \
         `/slow?ms={}` request in flight; RSS (VmRSS) before and after, per connection; then \
         SIGTERM: time to the last slow response, and from it to the exit (waitpid). One client \
         process (tokio, one task per connection), loopback, {} cores.\n",
        args.idle,
        args.active,
        args.slow_ms,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("| server | connections | RSS per connection | SIGTERM → last response | last response → exit | failed |");
    println!("|---|---|---|---|---|---|");
    for r in runs {
        let per = if r.connections == 0 {
            "–".to_owned()
        } else {
            let delta = r.rss_after_kib.saturating_sub(r.rss_before_kib) as f64;
            format!(
                "{:.1} KiB ({:.1} → {:.1} MiB)",
                delta / r.connections as f64,
                r.rss_before_kib as f64 / 1024.0,
                r.rss_after_kib as f64 / 1024.0
            )
        };
        println!(
            "| {} | {} | {} | {}{} | {} | {} of {} |",
            r.name,
            r.connections,
            per,
            ms(r.term_to_last),
            if r.late_start { " (late start)" } else { "" },
            ms(r.last_to_exit),
            r.slow_failed,
            r.slow_ok + r.slow_failed,
        );
    }
    println!("\nHow the idle connections ended:\n");
    println!("| server | could not open | FIN before exit | last FIN after SIGTERM | closed at exit | reset | unexpected data | still open | exit code |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in runs {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            r.idle_open_failed,
            r.idle_fin_before_exit,
            ms(r.last_idle_fin),
            r.idle_closed_at_exit,
            r.idle_reset,
            r.idle_data,
            r.idle_open,
            r.exit
        );
    }
}
