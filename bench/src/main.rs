//! `lameduck-bench`: side-by-side measurements of lameduck and its peers.
//!
//! ```text
//! cargo run --release -p lameduck-bench -- drain-delay --runs 5
//! ```
//!
//! `drain-delay`: one in-flight request of 300, 600 and 1500 ms, SIGTERM
//! 50 ms in; the time from the response's arrival to the server process's
//! exit. Peers: the lameduck demo, Go `net/http` `Server.Shutdown`
//! (`bench/peers/go-shutdown`, built with `go build` when `go` is on PATH)
//! and `axum::serve(..).with_graceful_shutdown`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

mod run_restart;
mod tls_overhead;

#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// wrk against the demo while it restarts every `--every`; failed
    /// requests by class, latency against a steady run.
    RestartLoad {
        /// wrk connections; repeat for several.
        #[arg(long, value_delimiter = ',', default_value = "64,256")]
        connections: Vec<u32>,
        /// Length of each wrk run.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Seconds between restarts.
        #[arg(long, default_value_t = 2.0)]
        every: f64,
        /// Exit non-zero on any failed request or failed restart (CI smoke).
        #[arg(long)]
        fail_on_error: bool,
        /// Skip the steady run (CI smoke).
        #[arg(long)]
        restarting_only: bool,
    },
    /// Requests per second and latency of the same hello service on bare
    /// hyper-util, on lameduck and on axum::serve, HTTP/1.1 (wrk) and
    /// HTTP/2 (h2load), as ratios to bare hyper-util.
    Overhead {
        /// Rounds; the peers are interleaved within each round.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Seconds per run.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// The same over TLS, bare hyper-util + tokio-rustls against lameduck
    /// with the same certificate and provider: HTTP/1.1 and HTTP/2
    /// requests/s, full and resumed handshakes/s, server CPU per request.
    TlsOverhead(tls_overhead::Args),
    /// Time from SIGTERM to exit of an idle server.
    IdleExit {
        /// Runs per peer; the table shows the median, min and max.
        #[arg(long, default_value_t = 10)]
        runs: usize,
    },
    /// Servers in other languages under `lameduck run`, next to Debian's
    /// `start_server` and a plain stop-then-start: failed requests by class
    /// under restarts (new connection per request, then keep-alive), a
    /// SIGKILLed child, and req/s with and without the supervisor.
    RunRestart(run_restart::Args),
    /// Time from the last response to process exit after SIGTERM.
    DrainDelay {
        /// Runs per case; the table shows the median, min and max.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Request durations in ms.
        #[arg(long, value_delimiter = ',', default_value = "300,600,1500")]
        ms: Vec<u64>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::DrainDelay { runs, ms } => drain_delay(runs, &ms),
        Cmd::IdleExit { runs } => idle_exit(runs),
        Cmd::RunRestart(args) => run_restart::run(args),
        Cmd::Overhead { rounds, seconds } => overhead(rounds, seconds),
        Cmd::TlsOverhead(args) => tls_overhead::run(args),
        Cmd::RestartLoad {
            connections,
            seconds,
            every,
            fail_on_error,
            restarting_only,
        } => restart_load(&connections, seconds, every, fail_on_error, restarting_only),
    }
}

struct Peer {
    name: &'static str,
    command: Vec<String>,
}

fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.parent().map(Path::to_path_buf).unwrap_or_default()
}

fn peers() -> anyhow::Result<Vec<Peer>> {
    let dir = target_dir();
    let mut peers = vec![
        Peer {
            name: "lameduck",
            command: vec![
                dir.join("lameduck").display().to_string(),
                "demo".into(),
                "--listen".into(),
                "127.0.0.1:0".into(),
            ],
        },
        Peer {
            name: "axum with_graceful_shutdown",
            command: vec![dir.join("axum-peer").display().to_string()],
        },
    ];
    if let Some(go) = build_go_peer()? {
        peers.push(Peer {
            name: "Go net/http Shutdown",
            command: vec![go.display().to_string()],
        });
    } else {
        eprintln!("go not found: the Go peer is skipped (apt-get install golang-go)");
    }
    for p in &peers {
        if !Path::new(&p.command[0]).exists() {
            bail!(
                "{} not built: run `cargo build --release -p lameduck-cli -p lameduck-bench` first",
                p.command[0]
            );
        }
    }
    Ok(peers)
}

fn build_go_peer() -> anyhow::Result<Option<PathBuf>> {
    if Command::new("go").arg("version").output().is_err() {
        return Ok(None);
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/go-shutdown");
    let out = target_dir().join("go-shutdown-peer");
    let status = Command::new("go")
        .arg("build")
        .arg("-o")
        .arg(&out)
        .arg(".")
        .current_dir(&src)
        .env("GOFLAGS", "-mod=mod")
        .env("GOCACHE", target_dir().join("go-cache"))
        .status()
        .context("go build")?;
    if !status.success() {
        bail!("go build of the Go peer failed");
    }
    Ok(Some(out))
}

fn start(peer: &Peer) -> anyhow::Result<(Child, SocketAddr)> {
    let mut child = Command::new(&peer.command[0])
        .args(&peer.command[1..])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {}", peer.name))?;
    let stderr = child.stderr.take().context("stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines.next().context("peer exited before ready")??;
        if let Some(rest) = line.split("http://").nth(1) {
            let a = rest.split_whitespace().next().unwrap_or_default();
            break a.parse::<SocketAddr>()?;
        }
    };
    // Keep draining stderr so the peer never blocks on it.
    std::thread::spawn(move || for _ in lines {});
    Ok((child, addr))
}

/// One run: returns the time from the response's last byte to exit.
fn one_drain(peer: &Peer, ms: u64) -> anyhow::Result<Duration> {
    let (mut child, addr) = start(peer)?;
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    write!(s, "GET /slow?ms={ms} HTTP/1.1\r\nhost: bench\r\n\r\n")?;
    std::thread::sleep(Duration::from_millis(50));
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM)?;
    let waiter = std::thread::spawn(move || {
        let status = child.wait();
        (status, Instant::now())
    });
    // Read the response: head plus content-length body.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let answered = loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            bail!("{}: connection closed before the response", peer.name);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                break Instant::now();
            }
        }
    };
    let (status, exited) = waiter
        .join()
        .map_err(|_| anyhow::anyhow!("waiter panicked"))?;
    let status = status?;
    if !status.success() {
        bail!("{} exited with {status}", peer.name);
    }
    Ok(exited.saturating_duration_since(answered))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn drain_delay(runs: usize, cases: &[u64]) -> anyhow::Result<()> {
    let peers = peers()?;
    println!("## Drain-detection delay\n");
    println!(
        "One in-flight request, SIGTERM 50 ms in; time from the response's arrival to process exit. \
         Median of {runs} runs (min–max), this machine, one run of `lameduck-bench drain-delay`.\n"
    );
    print!("| request |");
    for p in &peers {
        print!(" {} |", p.name);
    }
    println!();
    print!("|---|");
    for _ in &peers {
        print!("---|");
    }
    println!();
    for &ms in cases {
        print!("| {ms} ms |");
        for p in &peers {
            let mut v = Vec::with_capacity(runs);
            for _ in 0..runs {
                v.push(one_drain(p, ms)?);
            }
            v.sort();
            let f = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
            print!(
                " {} ({}–{}) |",
                f(v[v.len() / 2]),
                f(v[0]),
                f(v[v.len() - 1])
            );
        }
        println!();
    }
    Ok(())
}

fn idle_exit(runs: usize) -> anyhow::Result<()> {
    let peers = peers()?;
    println!("## Idle SIGTERM-to-exit\n");
    println!("An idle server (no connection open); time from SIGTERM to the process's exit. Median of {runs} runs (min–max).\n");
    println!("| server | SIGTERM to exit |");
    println!("|---|---|");
    for p in &peers {
        let mut v = Vec::with_capacity(runs);
        for _ in 0..runs {
            let (mut child, _) = start(p)?;
            let sent = Instant::now();
            kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM)?;
            let status = child.wait()?;
            v.push(sent.elapsed());
            if !status.success() {
                bail!("{} exited with {status}", p.name);
            }
        }
        v.sort();
        println!("| {} | {} |", p.name, stats(&v));
    }
    Ok(())
}

fn stats(v: &[Duration]) -> String {
    let f = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1000.0);
    format!("{} ({}–{})", f(v[v.len() / 2]), f(v[0]), f(v[v.len() - 1]))
}

/// What wrk said about one run.
#[derive(Debug, Default)]
struct Wrk {
    requests: u64,
    connect: u64,
    read: u64,
    write: u64,
    timeout: u64,
    non_2xx: u64,
    p50: String,
    p99: String,
    max: String,
}

fn run_wrk(addr: SocketAddr, connections: u32, seconds: u64) -> anyhow::Result<Wrk> {
    run_wrk_with(addr, connections, seconds, false)
}

/// wrk, with `Connection: close` on every request when `close`.
fn run_wrk_with(
    addr: SocketAddr,
    connections: u32,
    seconds: u64,
    close: bool,
) -> anyhow::Result<Wrk> {
    run_wrk_url(&format!("http://{addr}/"), connections, seconds, close)
}

/// wrk against `url` (`http://` or `https://`).
fn run_wrk_url(url: &str, connections: u32, seconds: u64, close: bool) -> anyhow::Result<Wrk> {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t2",
        &format!("-c{connections}"),
        &format!("-d{seconds}s"),
        "--latency",
    ]);
    if close {
        cmd.args(["-H", "Connection: close"]);
    }
    let out = cmd
        .arg(url)
        .output()
        .context("run wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut w = Wrk::default();
    for line in text.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("Socket errors:") {
            for part in rest.split(',') {
                let mut it = part.split_whitespace();
                let (k, v) = (
                    it.next().unwrap_or(""),
                    it.next().and_then(|v| v.parse().ok()).unwrap_or(0),
                );
                match k {
                    "connect" => w.connect = v,
                    "read" => w.read = v,
                    "write" => w.write = v,
                    "timeout" => w.timeout = v,
                    _ => {}
                }
            }
        } else if let Some(rest) = t.strip_prefix("Non-2xx or 3xx responses:") {
            w.non_2xx = rest.trim().parse().unwrap_or(0);
        } else if t.contains("requests in") {
            w.requests = t
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
        } else if let Some(rest) = t.strip_prefix("50%") {
            w.p50 = rest.trim().to_string();
        } else if let Some(rest) = t.strip_prefix("99%") {
            w.p99 = rest.trim().to_string();
        } else if t.starts_with("Latency") && !t.contains("Distribution") {
            w.max = t.split_whitespace().nth(3).unwrap_or("").to_string();
        }
    }
    if w.requests == 0 {
        bail!("could not read wrk's output:\n{text}");
    }
    Ok(w)
}

fn control(path: &Path, command: &str) -> anyhow::Result<String> {
    let mut s = std::os::unix::net::UnixStream::connect(path)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    writeln!(s, "{command}")?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    Ok(answer.trim().to_string())
}

fn restart_load(
    connections: &[u32],
    seconds: u64,
    every: f64,
    fail_on_error: bool,
    restarting_only: bool,
) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    nix::sys::prctl::set_child_subreaper(true)?;
    let dir = std::env::temp_dir().join(format!("lameduck-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let sock = dir.join("control.sock");
    let demo = Peer {
        name: "lameduck",
        command: vec![
            target_dir().join("lameduck").display().to_string(),
            "demo".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--control".into(),
            sock.display().to_string(),
            "--probation".into(),
            "500ms".into(),
        ],
    };
    println!("## Restart under load\n");
    println!("`wrk -t2 -cN -d{seconds}s` against `lameduck demo`, a restart every {every} s through the control socket (probation 500 ms), next to a steady run of the same length. Failed requests by class as wrk counts them.\n");
    println!("| connections | run | restarts | requests | connect | read | write | timeout | non-2xx | p50 | p99 | max |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for &c in connections {
        let runs: &[bool] = if restarting_only {
            &[true]
        } else {
            &[false, true]
        };
        for &restarting in runs {
            let (first, addr) = start(&demo)?;
            let stop = Arc::new(AtomicBool::new(false));
            let restarts = Arc::new(AtomicU64::new(0));
            let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
            let restarter = restarting.then(|| {
                let (stop, restarts, failures, sock) = (
                    Arc::clone(&stop),
                    Arc::clone(&restarts),
                    Arc::clone(&failures),
                    sock.clone(),
                );
                std::thread::spawn(move || {
                    let mut next = Instant::now() + Duration::from_secs_f64(every / 2.0);
                    while !stop.load(Ordering::Relaxed) {
                        if Instant::now() >= next {
                            match control(&sock, "restart") {
                                Ok(a) if a.starts_with("done:") => {
                                    restarts.fetch_add(1, Ordering::Relaxed);
                                }
                                Ok(a) => failures.lock().unwrap_or_else(|e| e.into_inner()).push(a),
                                Err(e) => failures
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .push(e.to_string()),
                            }
                            next += Duration::from_secs_f64(every);
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                })
            });
            let w = run_wrk(addr, c, seconds)?;
            stop.store(true, Ordering::Relaxed);
            if let Some(t) = restarter {
                let _ = t.join();
            }
            // Stop whichever generation serves now, and reap every one.
            let status = control(&sock, "status").unwrap_or_default();
            let pid: Option<i32> = status
                .strip_prefix("ok: pid ")
                .and_then(|r| r.split(',').next())
                .and_then(|p| p.parse().ok());
            if let Some(pid) = pid {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
            let mut first = first;
            let _ = first.wait();
            while nix::sys::wait::wait().is_ok() {}
            let failed = failures.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if !failed.is_empty() {
                eprintln!("restart failures: {failed:?}");
                problems.push(format!("{c} connections: failed restarts {failed:?}"));
            }
            let errors = w.connect + w.read + w.write + w.timeout + w.non_2xx;
            if errors > 0 {
                problems.push(format!("{c} connections: {errors} failed requests ({w:?})"));
            }
            println!(
                "| {c} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                if restarting { "restarting" } else { "steady" },
                restarts.load(Ordering::Relaxed),
                w.requests,
                w.connect,
                w.read,
                w.write,
                w.timeout,
                w.non_2xx,
                w.p50,
                w.p99,
                w.max
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    if fail_on_error && !problems.is_empty() {
        bail!("restart under load failed: {problems:?}");
    }
    Ok(())
}

fn run_h2load(addr: SocketAddr, seconds: u64) -> anyhow::Result<(f64, String)> {
    run_h2load_url(&format!("http://{addr}/"), seconds).map(|(rps, mean, _)| (rps, mean))
}

/// h2load against `url` (h2c for `http://`, h2 by ALPN for `https://`):
/// requests/s, mean time per request, and the whole output.
fn run_h2load_url(url: &str, seconds: u64) -> anyhow::Result<(f64, String, String)> {
    let out = Command::new("h2load")
        .args(["-c16", "-m16", "-t1", "-D", &seconds.to_string()])
        .arg(url)
        .output()
        .context("run h2load (apt-get install nghttp2-client)")?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("finished in"))
        .and_then(|l| l.split(',').nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("could not read h2load's output:\n{text}"))?;
    if !text.contains(" 0 failed, 0 errored") {
        bail!("h2load saw failures:\n{text}");
    }
    let mean = text
        .lines()
        .find(|l| l.trim_start().starts_with("time for request:"))
        .and_then(|l| l.split_whitespace().nth(5))
        .unwrap_or("")
        .to_string();
    Ok((rps, mean, text))
}

fn overhead(rounds: usize, seconds: u64) -> anyhow::Result<()> {
    let dir = target_dir();
    let peers = [
        ("bare hyper-util", "hyper-peer"),
        ("lameduck", "lameduck-peer"),
        ("axum::serve", "axum-peer"),
    ];
    let mut h1: Vec<Vec<(f64, String)>> = vec![Vec::new(); peers.len()];
    let mut h2: Vec<Vec<(f64, String)>> = vec![Vec::new(); peers.len()];
    for _ in 0..rounds {
        for (i, (name, bin)) in peers.iter().enumerate() {
            let peer = Peer {
                name,
                command: vec![dir.join(bin).display().to_string()],
            };
            let (mut child, addr) = start(&peer)?;
            let w = run_wrk(addr, 64, seconds)?;
            if w.connect + w.read + w.write + w.timeout + w.non_2xx > 0 {
                bail!("{name}: wrk saw errors: {w:?}");
            }
            h1[i].push((w.requests as f64 / seconds as f64, w.p99.clone()));
            h2[i].push(run_h2load(addr, seconds)?);
            kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM)?;
            let _ = child.wait();
        }
    }
    let median = |v: &[(f64, String)]| {
        let mut r: Vec<f64> = v.iter().map(|x| x.0).collect();
        r.sort_by(f64::total_cmp);
        (r[r.len() / 2], r[0], r[r.len() - 1])
    };
    println!("## Overhead\n");
    println!(
        "The same hello-world service (`bench/src/bin/*-peer.rs`) on bare hyper-util, on lameduck and on `axum::serve`. \
         HTTP/1.1: `wrk -t2 -c64 -d{seconds}s`; HTTP/2 (h2c): `h2load -c16 -m16 -t1 -D {seconds}`. \
         Median of {rounds} interleaved rounds (min–max); the load generator shares the machine's 2 cores with the server. \
         Ratio: median requests/s against bare hyper-util in the same run. Target: lameduck ≥ 0.98.\n"
    );
    println!("| server | HTTP/1.1 req/s | ratio | p99 (last round) | HTTP/2 req/s | ratio | mean latency (last round) |");
    println!("|---|---|---|---|---|---|---|");
    let base1 = median(&h1[0]).0;
    let base2 = median(&h2[0]).0;
    for (i, (name, _)) in peers.iter().enumerate() {
        let (m1, lo1, hi1) = median(&h1[i]);
        let (m2, lo2, hi2) = median(&h2[i]);
        println!(
            "| {name} | {m1:.0} ({lo1:.0}–{hi1:.0}) | {:.2} | {} | {m2:.0} ({lo2:.0}–{hi2:.0}) | {:.2} | {} |",
            m1 / base1,
            h1[i].last().map(|x| x.1.as_str()).unwrap_or(""),
            m2 / base2,
            h2[i].last().map(|x| x.1.as_str()).unwrap_or(""),
        );
    }
    Ok(())
}
