//! `lameduck-bench run-restart`: servers in other languages under
//! `lameduck run`, next to the same servers under Debian's `start_server`
//! and a plain stop-then-start, in one run.
//!
//! - Restarts with `Connection: close` load (a new connection per request,
//!   so only the hand-over can fail a request).
//! - Restarts with keep-alive load (what a server does with the
//!   connections it holds when told to stop shows).
//! - A child SIGKILLed under load: the supervisor holds the listening
//!   socket, so nothing is refused; only what the dead child held fails.
//! - Requests per second with and without the supervisor, same server.
//!
//! Peers: `bench/peers/go-run` (Go `net/http`, `Server.Shutdown`),
//! `bench/peers/python/server.py`, `bench/peers/node/server.js` and the
//! lameduck demo. Each wrk run is `wrk -t2 -cC -dNs --latency`.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;

use crate::{control, run_wrk_with, target_dir, Wrk};

/// Options of `run-restart`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Length of each wrk run.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Seconds between restarts.
    #[arg(long, default_value_t = 2.0)]
    every: f64,
    /// wrk connections.
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// Seconds between SIGKILLs in the crash case.
    #[arg(long, default_value_t = 5.0)]
    kill_every: f64,
    /// Which experiments: close, keepalive, kill, overhead.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "close,keepalive,kill,overhead"
    )]
    only: Vec<String>,
    /// Which peers: go, python, node, demo (the ones whose runtime is
    /// missing are skipped and said so).
    #[arg(long, value_delimiter = ',', default_value = "go,python,node,demo")]
    peers: Vec<String>,
    /// Exit non-zero on any failed request or failed restart under
    /// `lameduck run` with `Connection: close` load (CI smoke).
    #[arg(long)]
    fail_on_error: bool,
}

/// A server program, as it runs by itself and as a supervisor's child.
#[derive(Debug, Clone)]
struct Server {
    name: String,
    /// The command; the listen address is appended when it binds itself.
    argv: Vec<String>,
    /// `--ready` for `lameduck run`.
    ready: &'static str,
    env: Vec<(String, String)>,
}

impl Server {
    fn with_env(&self, suffix: &str, key: &str, value: &str) -> Server {
        let mut s = self.clone();
        s.name = format!("{} {suffix}", self.name);
        s.env.push((key.to_owned(), value.to_owned()));
        s
    }
}

/// How a server is run and restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    /// `lameduck run`, restarts through `lameduck restart --control`.
    Lameduck,
    /// `start_server --port`, restarts by SIGHUP to start_server.
    StartServer,
    /// The server binds itself; a restart is SIGTERM, wait for the exit,
    /// start a new one, wait until it answers.
    StopStart,
    /// The server binds itself; no restarts.
    Bare,
}

impl How {
    fn label(self) -> &'static str {
        match self {
            How::Lameduck => "lameduck run",
            How::StartServer => "start_server",
            How::StopStart => "stop, then start",
            How::Bare => "no supervisor",
        }
    }
}

/// One running case: the top process (supervisor or server) and how to
/// reach it.
struct Running {
    how: How,
    server: Server,
    port: u16,
    top: Child,
    control: PathBuf,
    log: PathBuf,
    dir: PathBuf,
    generation: u32,
    restarts_ok: u64,
    restarts_failed: Vec<String>,
}

fn bench_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// A free port outside the ephemeral range, so that no outgoing
/// connection (wrk's) can hold it as its source port while no server
/// listens on it (the stop-then-start case).
fn free_port() -> anyhow::Result<u16> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .unwrap_or_else(|_| "32768 60999".into());
    let mut it = range
        .split_whitespace()
        .filter_map(|v| v.parse::<u32>().ok());
    let lo = it.next().unwrap_or(32768);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let span = lo.saturating_sub(10000).max(1000);
    for i in 0..1000u32 {
        let p = 10000 + (nanos / 7 + i * 7919 + std::process::id()) % span;
        let Ok(p) = u16::try_from(p) else { continue };
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return Ok(p);
        }
    }
    bail!("no free port below {lo}")
}

/// GET / until it answers 200, at most `within`.
fn wait_http(port: u16, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    loop {
        let ok = (|| -> std::io::Result<bool> {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(b"GET / HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n")?;
            let mut head = [0u8; 12];
            s.read_exact(&mut head)?;
            Ok(head.starts_with(b"HTTP/1.") && &head[9..12] == b"200")
        })()
        .unwrap_or(false);
        if ok {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("nothing answered on 127.0.0.1:{port} within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Running {
    fn start(how: How, server: &Server, dir: &Path) -> anyhow::Result<Running> {
        let port = free_port()?;
        let clean = |s: &str| -> String {
            s.chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                .collect()
        };
        let case = format!("{}-{}", clean(how.label()), clean(&server.name));
        let log = dir.join(format!("{case}.log"));
        let control = dir.join(format!("{case}.sock"));
        let mut r = Running {
            how,
            server: server.clone(),
            port,
            top: spawn_top(how, server, port, &control, &log)?,
            control,
            log,
            dir: dir.to_path_buf(),
            generation: 1,
            restarts_ok: 0,
            restarts_failed: Vec::new(),
        };
        if let Err(e) = wait_http(port, Duration::from_secs(20)) {
            r.stop();
            bail!(
                "{} under {}: {e}; log:\n{}",
                server.name,
                how.label(),
                r.tail()
            );
        }
        Ok(r)
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// One restart; returns once it is done (or, for start_server, once
    /// the SIGHUP is sent: it answers nothing).
    fn restart(&mut self) {
        let outcome = match self.how {
            How::Lameduck => match control(&self.control, "restart") {
                Ok(a) if a.starts_with("done:") => Ok(()),
                Ok(a) => Err(a),
                Err(e) => Err(e.to_string()),
            },
            How::StartServer => {
                kill(pid_of(&self.top), Signal::SIGHUP).map_err(|e| format!("SIGHUP: {e}"))
            }
            How::StopStart => {
                let _ = kill(pid_of(&self.top), Signal::SIGTERM);
                let _ = self.top.wait();
                self.generation += 1;
                let log = self.dir.join(format!("stopstart-{}.log", self.generation));
                match spawn_top(self.how, &self.server, self.port, &self.control, &log) {
                    Ok(child) => {
                        self.top = child;
                        wait_http(self.port, Duration::from_secs(20)).map_err(|e| e.to_string())
                    }
                    Err(e) => Err(format!("{e:#}")),
                }
            }
            How::Bare => Ok(()),
        };
        match outcome {
            Ok(()) => self.restarts_ok += 1,
            Err(e) => self.restarts_failed.push(e),
        }
    }

    /// The pid of the child serving now (`lameduck run` only).
    fn current_child(&self) -> Option<i32> {
        let status = control(&self.control, "status").ok()?;
        let rest = status.split(" pid ").nth(2)?;
        rest.split_whitespace().next()?.parse().ok()
    }

    /// For start_server: the restarts its log says were done.
    fn start_server_restarts(&self) -> u64 {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter(|l| l.starts_with("new worker is now running"))
            .count() as u64
    }

    /// SIGTERM to the top process; SIGKILL after 40 s.
    fn stop(&mut self) {
        let pid = pid_of(&self.top);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            match self.top.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    eprintln!(
                        "run-restart: {} did not stop in 40 s; SIGKILL",
                        self.how.label()
                    );
                    let _ = self.top.kill();
                    let _ = self.top.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        // Orphans come back to this process (a child subreaper).
        while let Ok(s) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            if matches!(s, nix::sys::wait::WaitStatus::StillAlive) {
                break;
            }
        }
    }
}

fn pid_of(child: &Child) -> Pid {
    Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX))
}

fn spawn_top(
    how: How,
    server: &Server,
    port: u16,
    control: &Path,
    log: &Path,
) -> anyhow::Result<Child> {
    let addr = format!("127.0.0.1:{port}");
    let mut cmd = match how {
        How::Lameduck => {
            let mut c = Command::new(target_dir().join("lameduck"));
            c.args(["run", "--listen", &addr, "--ready", server.ready])
                .args(["--probation", "500ms", "--grace", "30s", "--control"])
                .arg(control)
                .arg("--")
                .args(&server.argv);
            c
        }
        How::StartServer => {
            let mut c = Command::new("start_server");
            c.arg(format!("--port={addr}")).arg("--").args(&server.argv);
            c
        }
        How::StopStart | How::Bare => {
            let mut c = Command::new(&server.argv[0]);
            c.args(&server.argv[1..]);
            c
        }
    };
    // The demo and a server that binds itself take the address too.
    if server.argv.iter().any(|a| a == "demo") {
        cmd.args(["--listen", &addr]);
    } else if matches!(how, How::StopStart | How::Bare) {
        cmd.arg(&addr);
    }
    let out = File::create(log)?;
    cmd.envs(server.env.iter().map(|(k, v)| (k, v)))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("start {} under {}", server.name, how.label()))
}

/// One row: the server under `how`, wrk for `seconds`, `action` every
/// `every` seconds (first after half of it) while wrk runs.
fn measure(
    running: Running,
    seconds: u64,
    connections: u32,
    close: bool,
    every: Option<f64>,
    action: fn(&mut Running),
) -> anyhow::Result<(Running, Wrk)> {
    let stop = Arc::new(AtomicBool::new(false));
    let addr = running.addr();
    let ticker = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut running = running;
            if let Some(every) = every {
                let mut next = Instant::now() + Duration::from_secs_f64(every / 2.0);
                while !stop.load(Ordering::Relaxed) {
                    if Instant::now() >= next {
                        action(&mut running);
                        next += Duration::from_secs_f64(every);
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            running
        })
    };
    let w = run_wrk_with(addr, connections, seconds, close);
    stop.store(true, Ordering::Relaxed);
    let running = ticker
        .join()
        .map_err(|_| anyhow::anyhow!("the restart thread panicked"))?;
    Ok((running, w?))
}

/// One table row, and the failures it counts.
struct Row {
    server: String,
    how: &'static str,
    restarts: String,
    w: Wrk,
}

impl Row {
    fn failed(&self) -> u64 {
        self.w.connect + self.w.read + self.w.write + self.w.timeout + self.w.non_2xx
    }
    fn print(&self) {
        let w = &self.w;
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | **{}** | {} | {} | {} |",
            self.server,
            self.how,
            self.restarts,
            w.requests,
            w.connect,
            w.read,
            w.write,
            w.timeout,
            w.non_2xx,
            self.failed(),
            w.p50,
            w.p99,
            w.max
        );
    }
}

const HEADER: &str = "| server | supervisor | restarts | requests | connect | read | write | timeout | non-2xx | failed | p50 | p99 | max |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|";

/// A restart run of `server` under `how`; the row and its problems.
fn restart_row(
    how: How,
    server: &Server,
    a: &Args,
    close: bool,
    dir: &Path,
) -> anyhow::Result<Row> {
    eprintln!(
        "run-restart: {} under {}, {} load, {} s",
        server.name,
        how.label(),
        if close {
            "Connection: close"
        } else {
            "keep-alive"
        },
        a.seconds
    );
    let running = Running::start(how, server, dir)?;
    let (mut running, w) = measure(
        running,
        a.seconds,
        a.connections,
        close,
        Some(a.every),
        Running::restart,
    )?;
    if how == How::StartServer {
        // The SIGHUPs were sent; the log says how many restarts it did.
        // start_server waits its --interval (1 s) after each spawn: the last
        // SIGHUP's restart may still be under way; give it 5 s.
        let sent = running.restarts_ok;
        let deadline = Instant::now() + Duration::from_secs(5);
        while running.start_server_restarts() < sent && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        running.restarts_ok = running.start_server_restarts();
        if running.restarts_ok < sent {
            running.restarts_failed.push(format!(
                "{} SIGHUPs, {} restarts done",
                sent, running.restarts_ok
            ));
        }
    }
    running.stop();
    let restarts = if running.restarts_failed.is_empty() {
        running.restarts_ok.to_string()
    } else {
        eprintln!(
            "run-restart: {} under {}: restart failures: {:?}",
            server.name,
            how.label(),
            running.restarts_failed
        );
        format!(
            "{} ({} failed)",
            running.restarts_ok,
            running.restarts_failed.len()
        )
    };
    Ok(Row {
        server: server.name.clone(),
        how: how.label(),
        restarts,
        w,
    })
}

fn sigkill_child(r: &mut Running) {
    match r.current_child() {
        Some(pid) => match kill(Pid::from_raw(pid), Signal::SIGKILL) {
            Ok(()) => r.restarts_ok += 1,
            Err(e) => r.restarts_failed.push(format!("kill {pid}: {e}")),
        },
        None => r.restarts_failed.push("no current child".into()),
    }
}

fn servers(wanted: &[String]) -> anyhow::Result<Vec<Server>> {
    let mut out = Vec::new();
    let has = |tool: &str| {
        Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    };
    for w in wanted {
        match w.as_str() {
            "go" => match build_go()? {
                Some(bin) => out.push(Server {
                    name: "Go net/http".into(),
                    argv: vec![bin.display().to_string()],
                    ready: "notify",
                    env: Vec::new(),
                }),
                None => eprintln!(
                    "run-restart: go not found: the Go peer is skipped (apt-get install golang-go)"
                ),
            },
            "python" => {
                if has("python3") {
                    out.push(Server {
                        name: "Python http.server".into(),
                        argv: vec![
                            "python3".into(),
                            bench_dir()
                                .join("peers/python/server.py")
                                .display()
                                .to_string(),
                        ],
                        ready: "notify",
                        env: Vec::new(),
                    });
                } else {
                    eprintln!("run-restart: python3 not found: the Python peer is skipped");
                }
            }
            "node" => {
                if has("node") {
                    out.push(Server {
                        name: "Node http".into(),
                        argv: vec![
                            "node".into(),
                            bench_dir()
                                .join("peers/node/server.js")
                                .display()
                                .to_string(),
                        ],
                        // No unix datagram socket in Node's standard
                        // library: a probe of its private admin socket.
                        ready: "http://admin/ready",
                        env: Vec::new(),
                    });
                } else {
                    eprintln!("run-restart: node not found: the Node peer is skipped (apt-get install nodejs)");
                }
            }
            "demo" => out.push(Server {
                name: "lameduck demo".into(),
                argv: vec![
                    target_dir().join("lameduck").display().to_string(),
                    "demo".into(),
                ],
                ready: "notify",
                env: Vec::new(),
            }),
            other => bail!("unknown peer {other:?} (go, python, node, demo)"),
        }
    }
    Ok(out)
}

fn build_go() -> anyhow::Result<Option<PathBuf>> {
    if Command::new("go").arg("version").output().is_err() {
        return Ok(None);
    }
    let out = target_dir().join("go-run-peer");
    let status = Command::new("go")
        .args(["build", "-o"])
        .arg(&out)
        .arg(".")
        .current_dir(bench_dir().join("peers/go-run"))
        .env("GOFLAGS", "-mod=mod")
        .env("GOCACHE", target_dir().join("go-cache"))
        .status()
        .context("go build")?;
    if !status.success() {
        bail!("go build of bench/peers/go-run failed");
    }
    Ok(Some(out))
}

fn has_start_server() -> bool {
    Command::new("start_server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

pub(crate) fn run(a: Args) -> anyhow::Result<()> {
    nix::sys::prctl::set_child_subreaper(true)?;
    if !target_dir().join("lameduck").exists() {
        bail!("lameduck not built: run `cargo build --release -p lameduck-cli -p lameduck-bench` first");
    }
    let dir = std::env::temp_dir().join(format!("lameduck-run-restart-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = run_in(&a, &dir);
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("run-restart: logs kept in {}", dir.display());
    }
    result
}

fn run_in(a: &Args, dir: &Path) -> anyhow::Result<()> {
    let all = servers(&a.peers)?;
    let start_server = has_start_server();
    if !start_server {
        eprintln!("run-restart: start_server not found: its rows are skipped (apt-get install libserver-starter-perl)");
    }
    if let Some(o) = a
        .only
        .iter()
        .find(|o| !["close", "keepalive", "kill", "overhead"].contains(&o.as_str()))
    {
        bail!("unknown experiment {o:?} (close, keepalive, kill, overhead)");
    }
    let want = |x: &str| a.only.iter().any(|o| o == x);
    let go = all.iter().find(|s| s.name.starts_with("Go"));
    let peers: Vec<&Server> = all.iter().filter(|s| s.name != "lameduck demo").collect();
    let demo = all.iter().find(|s| s.name == "lameduck demo");
    let (s, c, e) = (a.seconds, a.connections, a.every);
    let mut problems = Vec::new();

    if want("close") {
        println!("## `lameduck run`: restarts with a new connection per request\n");
        println!(
            "`wrk -t2 -c{c} -d{s}s --latency -H 'Connection: close'` (a new connection per request, so only the hand-over \
             can fail a request), a restart every {e} s (first after {} s). `lameduck run --listen ADDR --probation 500ms \
             --grace 30s --control PATH -- SERVER`, restarted by `lameduck restart --control PATH` (it answers once the new \
             child is ready and its probation has passed); `start_server --port=ADDR -- SERVER` (Debian's \
             libserver-starter-perl), restarted by SIGHUP; stop-then-start: SIGTERM, wait for the exit, start again, wait \
             until it answers. Failed requests by class as wrk counts them; \"failed\" is their sum. wrk connects \
             without blocking, so a refused connection shows as a write error (the refusal comes back on the first \
             write), not as a connect error.\n",
            e / 2.0
        );
        println!("{HEADER}");
        let mut cases: Vec<(How, &Server)> = peers.iter().map(|p| (How::Lameduck, *p)).collect();
        if let Some(go) = go {
            if start_server {
                cases.push((How::StartServer, go));
            }
            cases.push((How::StopStart, go));
        }
        for (how, server) in cases {
            let row = restart_row(how, server, a, true, dir)?;
            row.print();
            if how == How::Lameduck && (row.failed() > 0 || row.restarts.contains("failed")) {
                problems.push(format!(
                    "{} under lameduck run: {} failed requests, restarts {}",
                    row.server,
                    row.failed(),
                    row.restarts
                ));
            }
        }
        println!();
    }

    if want("keepalive") {
        println!("## `lameduck run`: restarts with keep-alive load\n");
        println!(
            "`wrk -t2 -c{c} -d{s}s --latency` (keep-alive: each connection sends its next request as soon as the \
             previous answer arrives), a restart every {e} s, the same supervisors as above. \
             `CLOSE_DELAY=500ms` (Go, Node): the server's own lame duck, off by default in those peers; `PLAIN=1` \
             (Python): without the one the Python peer has by default (see \"What a server does\" below).\n"
        );
        println!("{HEADER}");
        let mut cases: Vec<(How, Server)> = Vec::new();
        if let Some(d) = demo {
            cases.push((How::Lameduck, d.clone()));
        }
        for p in &peers {
            cases.push((How::Lameduck, (*p).clone()));
            if start_server {
                cases.push((How::StartServer, (*p).clone()));
            }
        }
        for p in &peers {
            if p.name.starts_with("Go") {
                cases.push((
                    How::Lameduck,
                    p.with_env("CLOSE_DELAY=500ms", "CLOSE_DELAY", "500ms"),
                ));
            } else if p.name.starts_with("Node") {
                cases.push((
                    How::Lameduck,
                    p.with_env("CLOSE_DELAY=500ms", "CLOSE_DELAY", "500"),
                ));
            } else if p.name.starts_with("Python") {
                cases.push((How::Lameduck, p.with_env("PLAIN=1", "PLAIN", "1")));
            }
        }
        let mut rows = Vec::new();
        for (how, server) in &cases {
            let row = restart_row(*how, server, a, false, dir)?;
            row.print();
            rows.push(row);
        }
        println!();
        print_notes(&rows, a.every, a.seconds);
    }

    if want("kill") {
        let victim = go.or(peers.first().copied());
        if let Some(v) = victim {
            println!("## `lameduck run`: the child SIGKILLed under load\n");
            println!(
                "{} under `lameduck run`; SIGKILL to the serving child every {} s (first after {} s); the supervisor \
                 starts a new one (backoff 100 ms after a crash). `wrk -t2 -c{c} -d{s}s`, with and without \
                 `Connection: close`. A refused connection would show as a write error (see above); the requests the \
                 dead child had accepted, read errors, are what may fail.\n",
                v.name,
                a.kill_every,
                a.kill_every / 2.0
            );
            println!("| server | load | SIGKILLs | requests | connect | read | write | timeout | non-2xx | failed | failed per kill |");
            println!("|---|---|---|---|---|---|---|---|---|---|---|");
            for close in [true, false] {
                eprintln!(
                    "run-restart: {} SIGKILLed under lameduck run, close={close}",
                    v.name
                );
                let running = Running::start(How::Lameduck, v, dir)?;
                let (mut running, w) =
                    measure(running, s, c, close, Some(a.kill_every), sigkill_child)?;
                running.stop();
                if !running.restarts_failed.is_empty() {
                    eprintln!("run-restart: kill failures: {:?}", running.restarts_failed);
                }
                let row = Row {
                    server: v.name.clone(),
                    how: "",
                    restarts: String::new(),
                    w,
                };
                let kills = running.restarts_ok;
                println!(
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | **{}** | {:.1} |",
                    row.server,
                    if close {
                        "Connection: close"
                    } else {
                        "keep-alive"
                    },
                    kills,
                    row.w.requests,
                    row.w.connect,
                    row.w.read,
                    row.w.write,
                    row.w.timeout,
                    row.w.non_2xx,
                    row.failed(),
                    row.failed() as f64 / kills.max(1) as f64
                );
            }
            println!();
        }
    }

    if want("overhead") {
        println!("## `lameduck run`: requests per second with and without the supervisor\n");
        println!(
            "The same server bound by itself and under `lameduck run` (the child accepts on the inherited socket; the \
             supervisor is not in the request path). `wrk -t2 -c{c} -d{s}s`, keep-alive, no restarts, interleaved \
             (without, with, with, without); ratio of the means.\n"
        );
        println!("| server | without req/s | with req/s | ratio | failed |");
        println!("|---|---|---|---|---|");
        if let Some(server) = go.or(peers.first().copied()) {
            let mut without = Vec::new();
            let mut with = Vec::new();
            let mut failed = 0;
            for how in [How::Bare, How::Lameduck, How::Lameduck, How::Bare] {
                eprintln!("run-restart: {} under {}, {s} s", server.name, how.label());
                let running = Running::start(how, server, dir)?;
                let (mut running, w) = measure(running, s, c, false, None, Running::restart)?;
                running.stop();
                let rate = w.requests as f64 / s as f64;
                failed += w.connect + w.read + w.write + w.timeout + w.non_2xx;
                if how == How::Bare {
                    without.push(rate);
                } else {
                    with.push(rate);
                }
            }
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
            println!(
                "| {} | {:.0} ({}) | {:.0} ({}) | **{:.3}** | {failed} |",
                server.name,
                mean(&without),
                without
                    .iter()
                    .map(|r| format!("{r:.0}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                mean(&with),
                with.iter()
                    .map(|r| format!("{r:.0}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                mean(&with) / mean(&without)
            );
        }
        println!();
    }

    if a.fail_on_error && !problems.is_empty() {
        bail!("failed under lameduck run: {problems:?}");
    }
    Ok(())
}

/// What each server does about the failures left under keep-alive load,
/// with the figures of this run.
fn print_notes(rows: &[Row], every: f64, seconds: u64) {
    let has = |name: &str| {
        rows.iter()
            .any(|r| r.how == How::Lameduck.label() && r.server == name)
    };
    let failed = |name: &str| {
        rows.iter()
            .find(|r| r.how == How::Lameduck.label() && r.server == name)
            .map_or_else(|| "not measured".to_owned(), |r| r.failed().to_string())
    };
    println!("### What a server does about the failures left\n");
    println!(
        "With a new connection per request the hand-over alone is measured, and under `lameduck run` it fails \
         nothing. With keep-alive load what is left is the server's: told to stop, it must not close a connection \
         on which the client may already be sending its next request. Figures: failed requests under \
         `lameduck run` in the table above ({seconds} s, a restart every {every} s).\n"
    );
    if has("Go net/http") {
        println!(
            "- **Go** (`net/http`): `Server.Shutdown` closes the listener, then closes every idle connection, again \
             and again until none is left. A connection whose next request is on the wire but not yet read is idle, \
             so the client's request meets a closed socket (wrk: a read error). `SetKeepAlivesEnabled(false)` does \
             not help: it closes the idle connections at once too. What helps is a lame duck in the server: on \
             SIGTERM answer every request with `Connection: close` for a moment (`CLOSE_DELAY=500ms` in \
             `bench/peers/go-run`), so that each busy client reconnects, to the new child, after a complete \
             response; then `Shutdown`. Measured: {} failed without, {} with.",
            failed("Go net/http"),
            failed("Go net/http CLOSE_DELAY=500ms")
        );
    }
    if has("Node http") {
        println!(
            "- **Node** (`http`): since Node 19 `server.close()` also calls `closeIdleConnections()`, the same race \
             (Node 18 and older leave idle connections open until `keepAliveTimeout`, 5 s, and the process waits for \
             them). The same fix: `res.setHeader('Connection', 'close')` while stopping, `server.close()` after the \
             delay (`CLOSE_DELAY=500` in `bench/peers/node/server.js`). Measured: {} failed without, {} with.",
            failed("Node http"),
            failed("Node http CLOSE_DELAY=500ms")
        );
    }
    if has("Python http.server") {
        println!(
            "- **Python** (`http.server`): `shutdown()` only ends the accept loop; each connection's thread goes on \
             serving its client. By default (`daemon_threads = True`) the process then exits and cuts those \
             connections (`PLAIN=1`: {} failed). The peer answers `Connection: close` once it is stopping, lets idle \
             connections end by the handler's 2 s timeout and joins the threads (`daemon_threads = False`): {} \
             failed. It also says `Connection: close` back when a request asks for it (RFC 9112, 9.6), which \
             `http.server` does not: without that, wrk counts a read error for every request of the new-connection \
             load, supervisor or not.",
            failed("Python http.server PLAIN=1"),
            failed("Python http.server")
        );
    }
    if has("lameduck demo") {
        println!(
            "- **lameduck demo** (Rust, this crate): {} failed; the crate's drain does the above for Rust servers.",
            failed("lameduck demo")
        );
    }
    println!();
}
