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
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Time from SIGTERM to exit of an idle server.
    IdleExit {
        /// Runs per peer; the table shows the median, min and max.
        #[arg(long, default_value_t = 10)]
        runs: usize,
    },
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
