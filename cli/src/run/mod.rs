//! `lameduck run -- CMD`: a supervisor that gives a server in any language
//! zero-downtime restarts, a lame duck and a bounded stop.
//!
//! The supervisor binds the listening sockets (or adopts the ones systemd
//! passes it) and keeps them for its whole life; each child gets them as
//! descriptors 3, 4, ... in the systemd protocol (`LISTEN_FDS`,
//! `LISTEN_FDNAMES`, `LISTEN_PID`), in `start_server`'s
//! (`SERVER_STARTER_PORT`) and in Einhorn's (`EINHORN_FD_COUNT`,
//! `EINHORN_FD_n`). Because the sockets never close, clients queue in the
//! kernel's backlog while no child accepts; nothing is refused.
//!
//! - Restart (SIGHUP, or `lameduck restart --control PATH`): start a new
//!   child from the command line as given, wait until it is ready
//!   (`--ready`, bounded by `--ready-timeout`), keep both serving through
//!   `--probation`, then stop the old child (`--stop-signal`, SIGKILL to its
//!   process group after `--grace`). A new child that dies or never gets
//!   ready is stopped; the old one was never told anything.
//! - Stop (SIGTERM, SIGINT): lame duck first (`--health` `/readyz` 503 for
//!   `--drain-delay` while the child still serves), then the stop signal,
//!   all inside one `--grace` counted from the signal; a second signal
//!   forces (SIGKILL to every process group).
//! - Crash: a child that dies on its own is started again with backoff;
//!   after `--max-failures` failures in a row the supervisor gives up.
//! - PID 1 duties: child subreaper (orphans are reaped), SIGQUIT, SIGUSR1
//!   and SIGUSR2 forwarded to the current child, a parent-death signal on
//!   every child, process groups killed whole.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use nix::sys::signal::Signal;
use tokio::io::AsyncWriteExt;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub(crate) mod child;
mod ready;

use child::{Child, Exit, Reaper};
use ready::{Mode, NotifySocket};

/// Options of `lameduck run`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// A socket to listen on and pass to every child: `[NAME=]HOST:PORT` or
    /// `[NAME=]unix:PATH`; repeat for several. Sockets that systemd passes
    /// to the supervisor are passed on too.
    #[arg(long = "listen", value_name = "[NAME=]ADDR")]
    listen: Vec<ListenSpec>,
    /// How a child says it is ready: `notify` (sd_notify `READY=1` on a
    /// private `NOTIFY_SOCKET`), `http://HOST:PORT/PATH` (HOST `admin`: a
    /// private socket per child, named `admin`), `tcp:HOST:PORT`, or
    /// `after:DUR`.
    #[arg(long, default_value = "notify")]
    ready: Mode,
    /// The whole stop budget, counted from the first signal; also how long
    /// an old child may drain after a restart.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    grace: Duration,
    /// How long `/readyz` fails before the child is told to stop.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    drain_delay: Duration,
    /// How long old and new child both serve after the new one is ready.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    probation: Duration,
    /// How long a child may take to get ready.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    ready_timeout: Duration,
    /// The signal that tells a child to stop (`TERM`, `INT`, `QUIT`, ...).
    #[arg(long, default_value = "TERM", value_parser = parse_signal)]
    stop_signal: Signal,
    /// Serve `/readyz` and `/livez` on this address.
    #[arg(long)]
    health: Option<SocketAddr>,
    /// A control socket for `lameduck restart` and `lameduck status`.
    #[arg(long)]
    control: Option<PathBuf>,
    /// A PID file with the supervisor's pid, removed at exit.
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// Give up after this many failed starts or crashes in a row.
    #[arg(long, default_value_t = 5)]
    max_failures: u32,
    /// Print each report as a JSON line on stdout as well.
    #[arg(long)]
    json: bool,
    /// The server to run, and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<OsString>,
}

fn parse_signal(s: &str) -> Result<Signal, String> {
    let name = s.trim().to_ascii_uppercase();
    let name = if name.starts_with("SIG") {
        name
    } else {
        format!("SIG{name}")
    };
    name.parse::<Signal>()
        .map_err(|_| format!("{s:?} is not a signal name"))
}

/// `--listen [NAME=]ADDR`.
#[derive(Debug, Clone)]
struct ListenSpec {
    name: Option<String>,
    addr: ListenAddr,
}

#[derive(Debug, Clone)]
enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::str::FromStr for ListenSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, addr) = match s.split_once('=') {
            Some((n, a)) if !n.is_empty() && !n.contains(':') => (Some(n.to_owned()), a),
            _ => (None, s),
        };
        let addr = if let Some(path) = addr.strip_prefix("unix:") {
            ListenAddr::Unix(PathBuf::from(path))
        } else {
            ListenAddr::Tcp(
                addr.parse()
                    .map_err(|_| format!("{addr:?} is not HOST:PORT or unix:PATH"))?,
            )
        };
        Ok(ListenSpec { name, addr })
    }
}

/// The entry point: a single-threaded runtime, so that every child is
/// started by the main thread (a parent-death signal fires when the thread
/// that forked exits, not the process).
pub(crate) fn main(args: Args) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lameduck run: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(supervise(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lameduck run: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A socket passed to every child.
struct Socket {
    name: String,
    socket: socket2::Socket,
    /// For `SERVER_STARTER_PORT`.
    describe: String,
    /// A Unix socket's path, removed at exit if it is still ours.
    unix_path: Option<(PathBuf, Option<(u64, u64)>)>,
}

impl Drop for Socket {
    fn drop(&mut self) {
        if let Some((path, identity)) = &self.unix_path {
            if identity.is_some() && lameduck::control::identity(path) == *identity {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

fn bind(spec: &ListenSpec, index: usize) -> anyhow::Result<Socket> {
    let name = spec.name.clone().unwrap_or_else(|| {
        if index == 0 {
            "http".to_owned()
        } else {
            format!("http-{index}")
        }
    });
    let (socket, describe) = match &spec.addr {
        ListenAddr::Tcp(addr) => {
            let socket = socket2::Socket::new(
                socket2::Domain::for_address(*addr),
                socket2::Type::STREAM,
                None,
            )?;
            socket.set_reuse_address(true)?;
            if addr.is_ipv6() {
                socket.set_only_v6(true)?;
            }
            socket
                .bind(&(*addr).into())
                .with_context(|| format!("cannot bind {addr}"))?;
            let local = socket
                .local_addr()?
                .as_socket()
                .map_or_else(|| addr.to_string(), |a| a.to_string());
            (socket, local)
        }
        ListenAddr::Unix(path) => {
            if let Ok(meta) = std::fs::symlink_metadata(path) {
                use std::os::unix::fs::FileTypeExt;
                if !meta.file_type().is_socket() {
                    anyhow::bail!(
                        "cannot bind unix:{}: the path exists and is not a socket",
                        path.display()
                    );
                }
                if lameduck::control::answers(path) {
                    anyhow::bail!(
                        "cannot bind unix:{}: another live process listens on it",
                        path.display()
                    );
                }
                // A stale socket left by a process that is gone.
                std::fs::remove_file(path)
                    .with_context(|| format!("cannot replace {}", path.display()))?;
            }
            let socket = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)?;
            socket
                .bind(&socket2::SockAddr::unix(path)?)
                .with_context(|| format!("cannot bind unix:{}", path.display()))?;
            (socket, path.display().to_string())
        }
    };
    let unix_path = match &spec.addr {
        ListenAddr::Unix(path) => Some((path.clone(), lameduck::control::identity(path))),
        ListenAddr::Tcp(_) => None,
    };
    // A deep backlog: while no child accepts (a crash, a slow start),
    // clients wait in it instead of being refused.
    socket.listen(4096)?;
    socket.set_cloexec(true)?;
    Ok(Socket {
        name,
        socket,
        describe,
        unix_path,
    })
}

/// A child and what was set up for it alone.
struct Launch {
    child: Child,
    notify: Option<NotifySocket>,
    /// The private `admin` socket, when the ready mode wants one.
    admin: Option<(std::net::TcpListener, SocketAddr)>,
    ready_at: Option<Instant>,
}

impl Launch {
    fn describe(&self) -> String {
        format!(
            "generation {} pid {}",
            self.child.generation, self.child.pid
        )
    }
}

/// Why a child is being brought up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    First,
    Recover,
    Restart,
}

/// What bringing up a child came to.
enum Up {
    /// Ready (and, for a restart, through its probation).
    Ready(Duration),
    NotReady(String),
    /// Told to give up (a stop began).
    Cancelled,
}

/// Wait until `launch` is ready, then (for a restart) through its
/// probation; a child that exits, or is not ready within the timeout,
/// fails. Returns the launch either way, so the caller can stop it.
async fn bring_up(
    mut launch: Launch,
    mode: Mode,
    timeout: Duration,
    probation: Duration,
    cancel: CancellationToken,
) -> (Launch, Up) {
    let started = launch.child.started;
    let deadline = Instant::now() + timeout;
    let what = launch.describe();
    let notify = launch.notify.take();
    let admin = launch.admin.as_ref().map(|(_, a)| *a);
    let ready = async {
        match &mode {
            Mode::Notify => match &notify {
                Some(n) => n.ready(deadline).await,
                None => false,
            },
            Mode::After(d) => {
                tokio::time::sleep((*d).min(timeout)).await;
                *d <= timeout
            }
            probe => ready::probe(probe, admin, deadline).await,
        }
    };
    let child = &mut launch.child;
    let up = tokio::select! {
        ready = ready => if ready {
            Ok(started.elapsed())
        } else {
            Err(format!("{what} was not ready within {}", humantime::format_duration(timeout)))
        },
        exit = child.wait() => Err(format!("{what} exited before it was ready ({exit})")),
        _ = cancel.cancelled() => Err(String::new()),
    };
    if cancel.is_cancelled() {
        launch.notify = notify;
        return (launch, Up::Cancelled);
    }
    launch.notify = notify;
    let ready_in = match up {
        Ok(d) => d,
        Err(reason) => return (launch, Up::NotReady(reason)),
    };
    launch.ready_at = Some(Instant::now());
    if probation.is_zero() {
        return (launch, Up::Ready(ready_in));
    }
    tracing::info!(child = %what, ready_in = ?ready_in, probation = ?probation, "new child ready; on probation");
    let child = &mut launch.child;
    let outcome = tokio::select! {
        exit = child.wait() => Up::NotReady(format!("{what} exited during probation ({exit}); the old child keeps serving")),
        _ = tokio::time::sleep(probation) => Up::Ready(ready_in),
        _ = cancel.cancelled() => Up::Cancelled,
    };
    (launch, outcome)
}

/// Stop `launch`: the stop signal, then SIGKILL to its process group at
/// `deadline`. Returns how it ended and whether it had to be killed.
async fn stop_child(mut launch: Launch, signal: Signal, deadline: Instant) -> Stopped {
    let told = Instant::now();
    launch.child.signal(signal);
    let killed = tokio::select! {
        _ = launch.child.wait() => false,
        _ = tokio::time::sleep_until(deadline) => true,
    };
    if killed {
        tracing::warn!(child = %launch.describe(), "did not stop in time; killing its process group");
        launch.child.kill_group();
    }
    let exit = launch.child.wait().await;
    let drained_in = told.elapsed();
    if launch.child.kill_leftovers() {
        tracing::warn!(child = %launch.describe(), "killed what its process group left behind");
    }
    (launch, exit, killed, drained_in)
}

/// A stopped child: how it ended, whether it had to be killed, and how
/// long it took from the stop signal.
type Stopped = (Launch, Exit, bool, Duration);

/// Children being stopped, and who they are.
#[derive(Default)]
struct Draining {
    tasks: Vec<JoinHandle<Stopped>>,
    who: Vec<(u32, i32)>,
}

impl Draining {
    fn push(&mut self, launch: Launch, signal: Signal, deadline: Instant) {
        self.who.push((launch.child.generation, launch.child.pid));
        self.tasks
            .push(tokio::spawn(stop_child(launch, signal, deadline)));
    }

    fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// The next child to have stopped; pending while there is none.
    async fn next(&mut self) -> Result<Stopped, tokio::task::JoinError> {
        if self.tasks.is_empty() {
            return std::future::pending().await;
        }
        let (result, index, _) = futures_util::future::select_all(self.tasks.iter_mut()).await;
        self.tasks.swap_remove(index);
        self.who.swap_remove(index);
        result
    }

    fn describe(&self) -> String {
        if self.who.is_empty() {
            return "none stopping".to_owned();
        }
        let who: Vec<String> = self
            .who
            .iter()
            .map(|(g, p)| format!("generation {g} pid {p}"))
            .collect();
        format!("stopping: {}", who.join(", "))
    }
}

/// A finished handover, reported once the old child has drained.
struct Handover {
    generation: u32,
    pid: i32,
    ready_in: Duration,
}

/// A child being brought up: why, its task, and the control clients
/// waiting for the outcome.
type Bringing = (
    Purpose,
    JoinHandle<(Launch, Up)>,
    Vec<oneshot::Sender<String>>,
);

/// A control request from a client, with where its answer goes.
type Request = (String, oneshot::Sender<String>);

struct Supervisor {
    args: Args,
    program: PathBuf,
    sockets: Vec<Socket>,
    runtime_dir: PathBuf,
    reaper: Reaper,
    generation: u32,
    ready: Arc<AtomicBool>,
    started_at: Instant,
    restarts_ok: u32,
    restarts_failed: u32,
}

impl Supervisor {
    /// Start a child of the next generation.
    fn launch(&mut self) -> anyhow::Result<Launch> {
        self.generation += 1;
        let generation = self.generation;
        let notify = match self.args.ready {
            Mode::Notify => Some(NotifySocket::bind(&self.runtime_dir, generation)?),
            _ => None,
        };
        let admin = if self.args.ready.wants_admin() {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            let addr = listener.local_addr()?;
            Some((listener, addr))
        } else {
            None
        };
        let mut fds: Vec<std::os::fd::BorrowedFd<'_>> =
            self.sockets.iter().map(|s| s.socket.as_fd()).collect();
        let mut names: Vec<&str> = self.sockets.iter().map(|s| s.name.as_str()).collect();
        if let Some((listener, _)) = &admin {
            fds.push(listener.as_fd());
            names.push("admin");
        }
        let pass = lameduck::systemd::PassFds::new(&fds)?;
        let mut env = vec![
            ("LISTEN_FDS".to_owned(), fds.len().to_string()),
            ("LISTEN_FDNAMES".to_owned(), names.join(":")),
            ("EINHORN_FD_COUNT".to_owned(), fds.len().to_string()),
            ("LAMEDUCK_RUN_GENERATION".to_owned(), generation.to_string()),
            (
                "SERVER_STARTER_PORT".to_owned(),
                self.sockets
                    .iter()
                    .enumerate()
                    .map(|(i, s)| format!("{}={}", s.describe, 3 + i))
                    .collect::<Vec<_>>()
                    .join(";"),
            ),
        ];
        for i in 0..fds.len() {
            env.push((format!("EINHORN_FD_{i}"), (3 + i).to_string()));
        }
        if let Some(n) = &notify {
            env.push((
                "NOTIFY_SOCKET".to_owned(),
                n.path().to_string_lossy().into_owned(),
            ));
        }
        let child = child::spawn(
            child::Spawn {
                program: &self.program,
                args: &self.args.command[1..],
                env,
                fds: &pass,
                generation,
            },
            &self.reaper,
        )
        .with_context(|| format!("cannot start {}", self.program.display()))?;
        drop(pass);
        tracing::info!(generation, pid = child.pid, "child started");
        Ok(Launch {
            child,
            notify,
            admin,
            ready_at: None,
        })
    }

    fn bring_up(
        &self,
        launch: Launch,
        purpose: Purpose,
        cancel: &CancellationToken,
    ) -> JoinHandle<(Launch, Up)> {
        let probation = if purpose == Purpose::Restart {
            self.args.probation
        } else {
            Duration::ZERO
        };
        tokio::spawn(bring_up(
            launch,
            self.args.ready.clone(),
            self.args.ready_timeout,
            probation,
            cancel.child_token(),
        ))
    }

    fn report(&self, json: serde_json::Value, line: String) {
        say(&format!("lameduck run: {line}"));
        if self.args.json {
            println!("{json}");
        }
    }
}

/// One `kind` of state a stop is in.
struct Stopping {
    trigger: Signal,
    t0: Instant,
    deadline: Instant,
    /// The stop signal has been sent (the lame duck is over).
    told: bool,
    forced: bool,
    killed: bool,
    last_exit: Option<Exit>,
}

async fn supervise(args: Args) -> anyhow::Result<ExitCode> {
    let program = child::resolve(&args.command[0]).map_err(|e| anyhow::anyhow!(e))?;
    if !args.drain_delay.is_zero() && args.drain_delay >= args.grace {
        anyhow::bail!(
            "--drain-delay {} does not fit in --grace {}: the lame duck is counted inside the grace",
            humantime::format_duration(args.drain_delay),
            humantime::format_duration(args.grace)
        );
    }
    // Sockets systemd passed to the supervisor, then our own.
    let mut sockets: Vec<Socket> = lameduck::systemd::listen_fds()?
        .into_iter()
        .map(|i| {
            let describe = i
                .socket
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket().map(|a| a.to_string()))
                .unwrap_or_else(|| i.name.clone());
            Socket {
                name: i.name,
                socket: i.socket,
                describe,
                // systemd owns the paths of the sockets it passes.
                unix_path: None,
            }
        })
        .collect();
    let inherited = sockets.len();
    for (i, spec) in args.listen.iter().enumerate() {
        sockets.push(bind(spec, inherited + i)?);
    }
    if sockets.is_empty() {
        anyhow::bail!(
            "nothing to listen on: give --listen ADDR (or run under systemd socket activation)"
        );
    }
    let _ = nix::sys::prctl::set_child_subreaper(true);
    let runtime_dir = runtime_dir()?;
    let _cleanup = RemoveDir(runtime_dir.clone());

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut quit = signal(SignalKind::quit())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;
    let mut chld = signal(SignalKind::child())?;

    let ready = Arc::new(AtomicBool::new(false));
    if let Some(addr) = args.health {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot bind --health {addr}"))?;
        tokio::spawn(health(listener, Arc::clone(&ready)));
    }
    let (control_tx, mut control_rx) = mpsc::channel::<Request>(64);
    let _control = match &args.control {
        Some(path) => {
            let socket = lameduck::control::bind(path)?;
            let std: std::os::unix::net::UnixListener = socket.into();
            let listener = tokio::net::UnixListener::from_std(std)?;
            tokio::spawn(control_loop(listener, control_tx.clone()));
            Some(RemoveSocket(
                path.clone(),
                lameduck::control::identity(path),
            ))
        }
        None => None,
    };
    let _pid_file = match &args.pid_file {
        Some(path) => {
            std::fs::write(path, format!("{}\n", std::process::id()))
                .with_context(|| format!("cannot write PID file {}", path.display()))?;
            Some(RemovePidFile(path.clone()))
        }
        None => None,
    };

    // Reap beside the loop: whatever the loop awaits, exits are collected.
    let reaper = Reaper::default();
    {
        let reaper = reaper.clone();
        tokio::spawn(async move {
            loop {
                reaper.reap();
                if chld.recv().await.is_none() {
                    return;
                }
            }
        });
    }
    let mut sup = Supervisor {
        args,
        program,
        sockets,
        runtime_dir,
        reaper,
        generation: 0,
        ready: Arc::clone(&ready),
        started_at: Instant::now(),
        restarts_ok: 0,
        restarts_failed: 0,
    };
    let cancel = CancellationToken::new();
    let mut current: Option<Launch> = None;
    let mut bringing: Option<Bringing>;
    let mut draining = Draining::default();
    let mut failures = 0u32;
    let mut respawn_at: Option<Instant> = None;
    let mut stop: Option<Stopping> = None;
    let mut handovers: std::collections::HashMap<i32, Handover> = std::collections::HashMap::new();
    // With a probe for readiness, `/readyz` keeps mirroring the serving
    // child's answer: probed once a second.
    let probing = !matches!(sup.args.ready, Mode::Notify | Mode::After(_));
    let mut probe_tick = tokio::time::interval(Duration::from_secs(1));
    probe_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (probe_tx, mut probe_rx) = mpsc::channel::<(i32, bool)>(4);
    let mut first_ready = false;

    let first = sup.launch()?;
    bringing = Some((
        Purpose::First,
        sup.bring_up(first, Purpose::First, &cancel),
        Vec::new(),
    ));

    loop {
        // A stop ends when every child is gone.
        if let Some(st) = &stop {
            if st.told && current.is_none() && bringing.is_none() && draining.is_empty() {
                break;
            }
        }
        let lame_duck_end = stop
            .as_ref()
            .filter(|s| !s.told)
            .map(|s| (s.t0 + sup.args.drain_delay).min(s.deadline));
        let stop_deadline = stop
            .as_ref()
            .filter(|s| s.told && !s.killed)
            .map(|s| s.deadline);
        tokio::select! {
            _ = term.recv() => on_stop_signal(&mut sup, &mut stop, Signal::SIGTERM, &cancel, &mut current, &mut draining),
            _ = int.recv() => on_stop_signal(&mut sup, &mut stop, Signal::SIGINT, &cancel, &mut current, &mut draining),
            _ = probe_tick.tick(), if probing => {
                if let (None, Some(c)) = (&stop, &current) {
                    let (pid, mode, tx) = (c.child.pid, sup.args.ready.clone(), probe_tx.clone());
                    let admin = c.admin.as_ref().map(|(_, a)| *a);
                    tokio::spawn(async move {
                        let ok = ready::probe(&mode, admin, Instant::now() + Duration::from_millis(900)).await;
                        let _ = tx.send((pid, ok)).await;
                    });
                }
            }
            Some((pid, ok)) = probe_rx.recv() => {
                let serving = current.as_ref().is_some_and(|c| c.child.pid == pid);
                if serving && stop.is_none() && sup.ready.swap(ok, Ordering::AcqRel) != ok {
                    if ok {
                        tracing::info!(pid, "the child is ready again");
                    } else {
                        tracing::warn!(pid, "the child no longer passes its readiness probe; /readyz fails");
                    }
                }
            }
            _ = quit.recv() => forward(&current, Signal::SIGQUIT),
            _ = usr1.recv() => forward(&current, Signal::SIGUSR1),
            _ = usr2.recv() => forward(&current, Signal::SIGUSR2),
            _ = hup.recv() => {
                let answer = request_restart(&mut sup, &stop, &mut bringing, &cancel, None);
                if let Some(answer) = answer {
                    tracing::info!("SIGHUP: {}", answer.trim());
                }
            }
            Some((command, reply)) = control_rx.recv() => match command.as_str() {
                "restart" => {
                    if let Some(answer) = request_restart(&mut sup, &stop, &mut bringing, &cancel, Some(reply)) {
                        tracing::info!("restart request: {}", answer.trim());
                    }
                }
                "status" => {
                    let _ = reply.send(status(&sup, &stop, &current, &bringing, &draining));
                }
                other => {
                    let _ = reply.send(format!("error: unknown command {other:?} (try restart or status)\n"));
                }
            },
            _ = async {
                match current.as_mut() {
                    Some(c) if !c.child.has_exited() => { c.child.wait().await; }
                    _ => std::future::pending::<()>().await,
                }
            } => {
                // The current child exited on its own.
                let Some(mut dead) = current.take() else { continue };
                let exit = dead.child.wait().await;
                if dead.child.kill_leftovers() {
                    tracing::warn!(child = %dead.describe(), "killed what its process group left behind");
                }
                sup.ready.store(false, Ordering::Release);
                if let Some(st) = stop.as_mut() {
                    st.last_exit = Some(exit);
                    continue;
                }
                let ran_long = dead.ready_at.is_some_and(|r| r.elapsed() >= sup.args.probation.max(Duration::from_secs(1)));
                if ran_long {
                    failures = 0;
                }
                failures += 1;
                sup.report(
                    serde_json::json!({"event": "crash", "generation": dead.child.generation, "pid": dead.child.pid, "exit": exit.to_string(), "failures": failures}),
                    format!("{} died on its own ({exit}); failure {failures} of {}", dead.describe(), sup.args.max_failures),
                );
                if bringing.is_none() {
                    if failures >= sup.args.max_failures {
                        return Ok(give_up(&sup, failures));
                    }
                    respawn_at = Some(Instant::now() + backoff(failures));
                }
            }
            _ = async {
                match respawn_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                respawn_at = None;
                if stop.is_none() && bringing.is_none() && current.is_none() {
                    match sup.launch() {
                        Ok(l) => bringing = Some((Purpose::Recover, sup.bring_up(l, Purpose::Recover, &cancel), Vec::new())),
                        Err(e) => {
                            failures += 1;
                            tracing::error!(error = %format!("{e:#}"), "cannot start a child");
                            if failures >= sup.args.max_failures {
                                return Ok(give_up(&sup, failures));
                            }
                            respawn_at = Some(Instant::now() + backoff(failures));
                        }
                    }
                }
            }
            joined = async {
                match bringing.as_mut() {
                    Some((_, handle, _)) => handle.await,
                    None => std::future::pending().await,
                }
            } => {
                let Some((purpose, _, waiters)) = bringing.take() else { continue };
                let (launch, up) = match joined {
                    Ok(v) => v,
                    Err(e) => anyhow::bail!("the start of a child failed: {e}"),
                };
                let what = launch.describe();
                match up {
                    Up::Ready(ready_in) if stop.is_none() => {
                        let old = current.replace(launch);
                        sup.ready.store(true, Ordering::Release);
                        notify(&[lameduck::systemd::Notify::Ready]);
                        if !first_ready {
                            first_ready = true;
                            let listening: Vec<&str> = sup.sockets.iter().map(|s| s.describe.as_str()).collect();
                            say(&format!(
                                "lameduck run: ready: {what} (in {}), listening on {}; supervisor pid {}",
                                secs(ready_in),
                                listening.join(" "),
                                std::process::id()
                            ));
                        }
                        if let Some(old) = old {
                            let deadline = Instant::now() + sup.args.grace;
                            tracing::info!(new = %what, old = %old.describe(), "restart done; stopping the old child");
                            if let Some(new) = current.as_ref() {
                                handovers.insert(old.child.pid, Handover {
                                    generation: new.child.generation,
                                    pid: new.child.pid,
                                    ready_in,
                                });
                            }
                            draining.push(old, sup.args.stop_signal, deadline);
                            sup.restarts_ok += 1;
                        } else if purpose == Purpose::Restart {
                            sup.restarts_ok += 1;
                        }
                        let pid = current.as_ref().map_or(0, |c| c.child.pid);
                        for w in waiters {
                            let _ = w.send(format!("done: new pid {pid}\n"));
                        }
                    }
                    Up::Ready(_) | Up::Cancelled => {
                        // A stop began meanwhile: this child stops too.
                        for w in waiters {
                            let _ = w.send("failed: shutting down\n".to_owned());
                        }
                        let deadline = stop.as_ref().map_or_else(|| Instant::now() + sup.args.grace, |s| s.deadline);
                        draining.push(launch, sup.args.stop_signal, deadline);
                    }
                    Up::NotReady(reason) => {
                        let exited = launch.child.has_exited();
                        // It may already serve connections it accepted from
                        // the shared sockets: a stop signal first.
                        let deadline = Instant::now() + sup.args.grace.min(Duration::from_secs(5));
                        if !exited {
                            draining.push(launch, sup.args.stop_signal, deadline);
                        }
                        for w in waiters {
                            let _ = w.send(format!("failed: {reason}\n"));
                        }
                        if purpose == Purpose::Restart {
                            sup.restarts_failed += 1;
                            notify(&[lameduck::systemd::Notify::Ready, lameduck::systemd::Notify::Status(format!("restart failed: {reason}"))]);
                            sup.report(
                                serde_json::json!({"event": "restart", "outcome": "failed", "reason": reason}),
                                format!("restart failed: {reason}"),
                            );
                        } else {
                            failures += 1;
                            sup.report(
                                serde_json::json!({"event": "start", "outcome": "failed", "reason": reason, "failures": failures}),
                                format!("start failed: {reason}; failure {failures} of {}", sup.args.max_failures),
                            );
                        }
                        if current.is_none() && stop.is_none() {
                            if failures >= sup.args.max_failures {
                                for d in draining.tasks.drain(..) {
                                    if let Ok((l, _, _, _)) = d.await {
                                        drop(l);
                                    }
                                }
                                return Ok(give_up(&sup, failures));
                            }
                            respawn_at = Some(Instant::now() + backoff(failures));
                        }
                    }
                }
            }
            finished = async {
                draining.next().await
            } => {
                let result = finished;
                if let Ok((launch, exit, killed, drained_in)) = result {
                    let took = launch.child.started.elapsed();
                    if killed {
                        if let Some(st) = stop.as_mut() { st.killed = true; }
                    }
                    tracing::info!(child = %launch.describe(), %exit, killed, up = %secs(took), "child stopped");
                    if let Some(h) = handovers.remove(&launch.child.pid) {
                        let outcome = if killed { "old child killed at the grace" } else { "ok" };
                        sup.report(
                            serde_json::json!({
                                "event": "restart", "generation": h.generation, "pid": h.pid,
                                "ready_in_s": h.ready_in.as_secs_f64(),
                                "probation_s": sup.args.probation.as_secs_f64(),
                                "old_generation": launch.child.generation, "old_pid": launch.child.pid,
                                "old_drained_in_s": drained_in.as_secs_f64(), "old_exit": exit.to_string(),
                                "outcome": outcome,
                            }),
                            format!(
                                "restart to generation {}: pid {} ready in {}, probation {}; generation {} pid {} drained in {} ({exit}); {outcome}",
                                h.generation, h.pid, secs(h.ready_in), secs(sup.args.probation),
                                launch.child.generation, launch.child.pid, secs(drained_in),
                            ),
                        );
                    }
                }
            }
            _ = async {
                match lame_duck_end {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                // The lame duck is over: tell every child to stop.
                if let Some(st) = stop.as_mut() {
                    st.told = true;
                    tracing::info!(signal = sup.args.stop_signal.as_str(), "lame duck over; stopping the child");
                    if let Some(c) = current.take() {
                        draining.push(c, sup.args.stop_signal, st.deadline);
                    }
                }
            }
            _ = async {
                match stop_deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                // stop_child kills what is left at the deadline by itself;
                // this wakes the loop to record it.
                if let Some(st) = stop.as_mut() { st.killed = true; }
            }
        }
        if let Some(st) = stop.as_mut() {
            if st.forced && !st.told {
                st.told = true;
            }
        }
    }

    // The stop is over.
    let Some(st) = stop else {
        return Ok(ExitCode::SUCCESS);
    };
    let took = st.t0.elapsed();
    let (code, outcome) = if st.forced {
        (4, "forced".to_owned())
    } else if st.killed {
        (3, "deadline: killed what was left".to_owned())
    } else {
        match st.last_exit {
            Some(Exit::Code(0)) | None => (0, "ok".to_owned()),
            Some(Exit::Signal(s)) if s == sup.args.stop_signal => (0, "ok".to_owned()),
            Some(Exit::Code(c)) => (c.clamp(1, 255), format!("child exit {c}")),
            Some(e @ Exit::Signal(_)) => (1, format!("child {e}")),
        }
    };
    sup.report(
        serde_json::json!({"event": "exit", "trigger": st.trigger.as_str(), "took_s": took.as_secs_f64(), "grace_s": sup.args.grace.as_secs_f64(), "generations": sup.generation, "restarts_ok": sup.restarts_ok, "restarts_failed": sup.restarts_failed, "outcome": outcome, "exit": code}),
        format!(
            "stopped in {} (trigger: {}; grace {}), {} generation(s), restarts {} ok / {} failed; {outcome}; exit {code}",
            secs(took),
            st.trigger.as_str(),
            secs(sup.args.grace),
            sup.generation,
            sup.restarts_ok,
            sup.restarts_failed
        ),
    );
    let code = u8::try_from(code).unwrap_or(1);
    Ok(ExitCode::from(code))
}

/// A line on stderr in one `write`: children share this stderr, and a
/// line written in pieces could be torn by theirs.
fn say(line: &str) {
    use std::io::Write;
    let mut buf = String::with_capacity(line.len() + 1);
    buf.push_str(line);
    buf.push('\n');
    let _ = std::io::stderr().lock().write_all(buf.as_bytes());
}

fn secs(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

/// 100 ms, doubling, at most 10 s.
fn backoff(failures: u32) -> Duration {
    Duration::from_millis(100u64 << failures.saturating_sub(1).min(7)).min(Duration::from_secs(10))
}

fn give_up(sup: &Supervisor, failures: u32) -> ExitCode {
    sup.report(
        serde_json::json!({"event": "exit", "outcome": "gave up", "failures": failures, "exit": 1}),
        format!("gave up after {failures} failure(s) in a row; exit 1"),
    );
    ExitCode::FAILURE
}

fn notify(states: &[lameduck::systemd::Notify]) {
    if let Err(e) = lameduck::systemd::notify(states) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

fn forward(current: &Option<Launch>, signal: Signal) {
    match current {
        Some(c) => {
            tracing::info!(signal = signal.as_str(), pid = c.child.pid, "forwarding");
            c.child.signal(signal);
        }
        None => tracing::info!(signal = signal.as_str(), "no child to forward to"),
    }
}

fn on_stop_signal(
    sup: &mut Supervisor,
    stop: &mut Option<Stopping>,
    signal: Signal,
    cancel: &CancellationToken,
    current: &mut Option<Launch>,
    draining: &mut Draining,
) {
    match stop {
        None => {
            let t0 = Instant::now();
            tracing::info!(signal = signal.as_str(), grace = %secs(sup.args.grace), drain_delay = %secs(sup.args.drain_delay), "stopping: lame duck first");
            sup.ready.store(false, Ordering::Release);
            notify(&[
                lameduck::systemd::Notify::Stopping,
                lameduck::systemd::Notify::ExtendTimeout(sup.args.grace + Duration::from_secs(1)),
            ]);
            cancel.cancel();
            *stop = Some(Stopping {
                trigger: signal,
                t0,
                deadline: t0 + sup.args.grace,
                told: false,
                forced: false,
                killed: false,
                last_exit: None,
            });
        }
        Some(st) => {
            tracing::warn!(
                signal = signal.as_str(),
                "second signal: forcing, SIGKILL to every child"
            );
            st.forced = true;
            st.told = true;
            if let Some(c) = current.take() {
                c.child.kill_group();
                let deadline = Instant::now();
                draining.push(c, Signal::SIGKILL, deadline);
            }
            // Children already being stopped (old generations, a new one
            // cut by the stop) are killed here; their stop tasks then end.
            let _ = draining;
            kill_all_groups();
        }
    }
}

/// SIGKILL every process group this supervisor started (each child leads
/// its own).
fn kill_all_groups() {
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ppid: i32 = fields.get(1).and_then(|f| f.parse().ok()).unwrap_or(0);
        if ppid == nix::unistd::getpid().as_raw() {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Start a restart unless one runs or a stop began; the answer when the
/// request is refused at once (also sent to `reply`).
fn request_restart(
    sup: &mut Supervisor,
    stop: &Option<Stopping>,
    bringing: &mut Option<Bringing>,
    cancel: &CancellationToken,
    reply: Option<oneshot::Sender<String>>,
) -> Option<String> {
    let refuse = |answer: String, reply: Option<oneshot::Sender<String>>| {
        if let Some(r) = reply {
            let _ = r.send(answer.clone());
        }
        Some(answer)
    };
    if stop.is_some() {
        return refuse("failed: shutting down: no restart\n".to_owned(), reply);
    }
    if let Some((purpose, _, _)) = bringing {
        let why = match purpose {
            Purpose::Restart => "a restart is already in progress",
            Purpose::First | Purpose::Recover => "a child is starting",
        };
        return refuse(format!("busy: {why}\n"), reply);
    }
    notify(&[lameduck::systemd::Notify::Reloading]);
    match sup.launch() {
        Ok(launch) => {
            let handle = sup.bring_up(launch, Purpose::Restart, cancel);
            *bringing = Some((Purpose::Restart, handle, reply.into_iter().collect()));
            None
        }
        Err(e) => {
            sup.restarts_failed += 1;
            notify(&[lameduck::systemd::Notify::Ready]);
            refuse(format!("failed: {e:#}\n"), reply)
        }
    }
}

fn status(
    sup: &Supervisor,
    stop: &Option<Stopping>,
    current: &Option<Launch>,
    bringing: &Option<Bringing>,
    draining: &Draining,
) -> String {
    let phase = match stop {
        None => "running",
        Some(s) if !s.told => "lame duck",
        Some(_) => "stopping",
    };
    let serving = match current {
        Some(c) => format!(
            "generation {} pid {} {} (up {})",
            c.child.generation,
            c.child.pid,
            if sup.ready.load(Ordering::Acquire) {
                "ready"
            } else {
                "not ready"
            },
            secs(c.child.started.elapsed())
        ),
        None => "no child".to_owned(),
    };
    let starting = match bringing {
        Some((purpose, _, _)) => format!("; starting generation {} ({purpose:?})", sup.generation),
        None => String::new(),
    };
    format!(
        "ok: supervisor pid {}, phase {phase}, up {}, serving: {serving}{starting}; {}; restarts {} ok / {} failed\n",
        std::process::id(),
        secs(sup.started_at.elapsed()),
        draining.describe(),
        sup.restarts_ok,
        sup.restarts_failed
    )
}

async fn control_loop(listener: tokio::net::UnixListener, tx: mpsc::Sender<Request>) {
    let mut errors = 0u32;
    loop {
        match listener.accept().await {
            Ok((mut stream, _)) => {
                errors = 0;
                let tx = tx.clone();
                tokio::spawn(async move {
                    let answer = match lameduck::control::read_command(&mut stream).await {
                        Err(refusal) => refusal,
                        Ok(command) => {
                            let (reply, answer) = oneshot::channel();
                            if tx.send((command, reply)).await.is_err() {
                                return;
                            }
                            answer.await.unwrap_or_else(|_| {
                                "failed: the supervisor is stopping\n".to_owned()
                            })
                        }
                    };
                    let _ = tokio::time::timeout(
                        Duration::from_secs(5),
                        stream.write_all(answer.as_bytes()),
                    )
                    .await;
                });
            }
            Err(e) => {
                errors = errors.saturating_add(1);
                if errors == 1 || errors % 100 == 0 {
                    tracing::warn!(error = %e, "control socket: accept failed");
                }
                tokio::time::sleep(Duration::from_millis(5 * u64::from(errors.min(200)))).await;
            }
        }
    }
}

/// `/readyz` (200 while the current child is ready and no stop began) and
/// `/livez` (200 while the supervisor runs).
async fn health(listener: tokio::net::TcpListener, ready: Arc<AtomicBool>) {
    use axum::http::StatusCode;
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/readyz",
            get(move || {
                let ready = ready.load(Ordering::Acquire);
                async move {
                    if ready {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                    }
                }
            }),
        )
        .route("/livez", get(|| async { "alive\n" }));
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "health endpoint failed");
    }
}

/// A private directory (mode 0700) for the children's notify sockets.
fn runtime_dir() -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("lameduck-run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct RemoveSocket(PathBuf, Option<(u64, u64)>);

impl Drop for RemoveSocket {
    fn drop(&mut self) {
        if self.1.is_some() && lameduck::control::identity(&self.0) == self.1 {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

struct RemovePidFile(PathBuf);

impl Drop for RemovePidFile {
    fn drop(&mut self) {
        let me = std::process::id().to_string();
        if std::fs::read_to_string(&self.0).is_ok_and(|s| s.trim() == me) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}
