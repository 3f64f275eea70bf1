//! Zero-downtime restarts: hand the listening sockets to a new process,
//! wait until it proves it serves, keep a claim on the sockets during a
//! probation window, then drain and exit.
//!
//! # How a restart goes
//!
//! 1. `SIGHUP`, [`Restart::restart`] or the control socket asks for it.
//!    One restart at a time; asking during one gets a clear "busy" answer.
//! 2. The successor is started from the binary at the path this process was
//!    started from (so a deploy that replaced the file is what starts), with
//!    the same arguments. Every listening socket is passed as an inherited
//!    descriptor named in `LISTEN_FDS` / `LISTEN_FDNAMES` (the systemd
//!    protocol, so the same code path accepts systemd socket activation);
//!    only those descriptors and a readiness pipe survive the exec.
//! 3. The successor adopts the sockets ([`Restart::listener`]), serves, and
//!    calls [`Restart::ready`] once its own readiness passes. If it exits, or
//!    is not ready within `ready_timeout`, this process stops it (SIGTERM, so
//!    that connections it already accepted drain; SIGKILL after 5 s), keeps
//!    serving, says why, and can be asked again.
//! 4. On "ready", this process stops accepting but keeps its copy of the
//!    sockets for `probation`. If the successor dies in that window, this
//!    process resumes accepting (rollback). The listening sockets are never
//!    without an owner, so no connection is refused or reset.
//! 5. After probation this process is triggered with
//!    [`Trigger::Restart`](crate::Trigger::Restart): it skips the lame duck,
//!    drains its connections (HTTP/1 `Connection: close`, HTTP/2 GOAWAY) and
//!    exits 0.
//!
//! With `NOTIFY_SOCKET` set (systemd `Type=notify` or `notify-reload`), the
//! supervisor is told `RELOADING=1`, `MAINPID=<successor>` and `READY=1`,
//! and `MAINPID` goes back on a rollback.
//!
//! # Example
//!
//! ```no_run
//! use lameduck::{restart::Restart, Lifecycle};
//! use lameduck::http::Server;
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let lifecycle = Lifecycle::builder().build()?;
//! let handle = lifecycle.handle();
//! let restart = Restart::builder()
//!     .control_socket("/run/myapp/control.sock")
//!     .build(&handle)?;
//! // Inherited from the predecessor by name, or bound when there is none.
//! let listener = restart.listener("http", "127.0.0.1:8080").await?;
//! # let app = tower::service_fn(|_req| async { Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<bytes::Bytes>::new())) });
//! let server = Server::new(handle.clone()).listener(listener).serve(app);
//! handle.spawn_vital("http", |_| server);
//! restart.ready()?; // tell a predecessor (or systemd) that this process serves
//! let report = lifecycle.await; // the library logs it
//! # Ok(()) }
//! ```
//!
//! # Platform support
//!
//! Unix only (Linux is what is tested).

#![allow(unsafe_code)] // Descriptor passing: `pre_exec`, `from_raw_fd`.

use std::ffi::OsString;
use std::fmt;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use crate::control;
use crate::error::Error;
use crate::http::Listener;
use crate::lifecycle::Handle;
use crate::report::Secs;
use crate::systemd::{self, Inherited, Notify, LISTEN_FDS_START};
use crate::util::{lock, AbortOnDrop};

const READY_FD_ENV: &str = "LAMEDUCK_READY_FD";
const GENERATION_ENV: &str = "LAMEDUCK_GENERATION";
/// The predecessor's pid: the successor honours the other `LAMEDUCK_*`
/// variables only when this names its parent, so that variables leaked
/// into an unrelated process's environment change nothing.
const PARENT_ENV: &str = "LAMEDUCK_PARENT_PID";
/// A pipe the predecessor closes once its probation is over (or it died):
/// until then the successor answers a restart request with "busy".
const COMMIT_FD_ENV: &str = "LAMEDUCK_COMMIT_FD";
const CONTROL_NAME: &str = "lameduck-control";
const STATE_FD_ENV: &str = "LAMEDUCK_STATE_FD";
const STATE_MAGIC: &str = "lameduck-state";
/// The largest state a successor accepts.
const STATE_LIMIT: usize = 64 << 20;

/// Configures [`Restart`].
#[derive(Clone)]
pub struct Builder {
    ready_timeout: Duration,
    probation: Duration,
    control: Option<PathBuf>,
    pid_file: Option<PathBuf>,
    state: Option<(u32, StateFn)>,
    #[cfg(feature = "tls")]
    tls: Option<crate::http::tls::TlsConfig>,
}

type StateFn = Arc<dyn Fn() -> Vec<u8> + Send + Sync>;

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("ready_timeout", &self.ready_timeout)
            .field("probation", &self.probation)
            .field("control", &self.control)
            .field("pid_file", &self.pid_file)
            .field("state_version", &self.state.as_ref().map(|(v, _)| *v))
            .finish()
    }
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            ready_timeout: Duration::from_secs(30),
            probation: Duration::from_secs(2),
            control: None,
            pid_file: None,
            state: None,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

impl Builder {
    /// How long a successor may take to report ready (default 30 s) before
    /// it is killed and the restart fails.
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// How long this process keeps its claim on the sockets after the
    /// successor reported ready (default 2 s); if the successor dies in that
    /// window, this process resumes accepting.
    pub fn probation(mut self, probation: Duration) -> Self {
        self.probation = probation;
        self
    }

    /// A Unix control socket (mode 0600, peers checked to be the same user)
    /// that answers `restart` with `done: new pid N` or `failed: reason`.
    pub fn control_socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.control = Some(path.into());
        self
    }

    /// A PID file, written atomically with this process's pid at start and
    /// with the successor's after its probation.
    pub fn pid_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.pid_file = Some(path.into());
        self
    }

    /// State to hand to the successor: `state` is called when a restart
    /// starts, and its bytes reach the successor under `version`, which it
    /// checks with [`Restart::inherited_state`] before reporting ready.
    pub fn handoff_state<F>(mut self, version: u32, state: F) -> Self
    where
        F: Fn() -> Vec<u8> + Send + Sync + 'static,
    {
        self.state = Some((version, Arc::new(state)));
        self
    }

    /// Hand this TLS configuration's session-ticket keys to the successor
    /// (and, as a successor, take the predecessor's), so that clients that
    /// resume their TLS session after a restart still resume. The keys
    /// travel in the private state pipe; a successor imports them as soon
    /// as they arrive, before it reports ready.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: crate::http::tls::TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Enable restarts for `handle`'s lifecycle: adopt inherited sockets,
    /// route `SIGHUP` here, open the control socket. Must be called inside a
    /// tokio runtime.
    ///
    /// # Errors
    ///
    /// A malformed `LISTEN_FDS` or `LAMEDUCK_READY_FD` environment, or a
    /// control socket or PID file that cannot be created.
    pub fn build(self, handle: &Handle) -> Result<Restart, Error> {
        let mut args = std::env::args_os();
        let arg0 = args.next().unwrap_or_default();
        let exe = start_path(&arg0).map_err(|e| Error::listener("current executable", e))?;
        let inherited = systemd::listen_fds()?;
        let markers = Markers::adopt()?;
        let successor = markers.ready_fd.is_some();
        let inner = Arc::new(Inner {
            handle: handle.clone(),
            exe,
            args: args.collect(),
            config: self.clone(),
            inherited: Mutex::new(inherited.into_iter().map(Some).collect()),
            sockets: Mutex::new(Vec::new()),
            successor,
            ready_fd: Mutex::new(markers.ready_fd),
            state: Mutex::new(None),
            commit_fd: Mutex::new(markers.commit_fd),
            settled: Arc::new(AtomicBool::new(true)),
            announced: AtomicBool::new(false),
            busy: AtomicBool::new(false),
            handed_over: AtomicBool::new(false),
            generation: AtomicU32::new(markers.generation),
        });
        if successor {
            // No traffic and no control requests before this process has
            // reported ready: until then its predecessor serves alone.
            handle.view().set_accepting(false);
        }
        if let Some(fd) = markers.state_fd {
            // Read what the predecessor hands over at once (bounded by the
            // ready timeout, and by a stop): the library's own parts (TLS
            // ticket keys) are used as they arrive; the user's part waits
            // for `inherited_state`.
            let (tx, rx) = oneshot::channel();
            *lock(&inner.state) = Some(rx);
            let timeout = self.ready_timeout;
            let reader = Arc::clone(&inner);
            tokio::spawn(async move {
                tracing::info!(target: "lameduck", timeout = %Secs(timeout), "reading the state handed over by the predecessor");
                let read = tokio::select! {
                    read = read_sections(fd) => read,
                    _ = tokio::time::sleep(timeout) => Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("handed-over state: not received within {}", Secs(timeout)),
                    )),
                    _ = reader.handle.draining() => Err(io::Error::new(
                        io::ErrorKind::Interrupted,
                        "handed-over state: shutdown began while reading it",
                    )),
                };
                let user = read.map(|sections| {
                    #[cfg(feature = "tls")]
                    if let (Some(keys), Some(tls)) = (&sections.tls, &reader.config.tls) {
                        match tls.import_ticket_keys(keys) {
                            Ok(()) => tracing::info!(target: "lameduck", "TLS session-ticket keys taken over from the predecessor"),
                            Err(e) => tracing::warn!(target: "lameduck", error = %e, "handed-over TLS ticket keys not used"),
                        }
                    }
                    sections.user
                });
                let _ = tx.send(user);
            });
        }
        if let Some(pid_file) = &self.pid_file {
            if !successor {
                write_pid_file(pid_file, std::process::id())
                    .map_err(|e| Error::pid_file(pid_file.display(), e))?;
            }
            // Whoever exits last removes it; a process that handed over
            // finds its successor's pid there and leaves it.
            let pid_file = pid_file.clone();
            handle.view().at_exit(move || remove_pid_file(&pid_file));
        }
        // Once the lifecycle stops accepting, the copies kept for a handover
        // must go too, or the kernel would keep queueing connections that
        // nobody accepts instead of refusing them.
        let keeper = Arc::clone(&inner);
        tokio::spawn(async move {
            keeper.handle.stopping().await;
            lock(&keeper.sockets).clear();
        });
        let (tx, rx) = mpsc::unbounded_channel();
        handle.view().on_hangup(tx);
        // Neither loop is a lifecycle task: they must not hold the drain.
        tokio::spawn(hangup_loop(Arc::clone(&inner), rx));
        let restart = Restart { inner };
        if let Some(path) = &self.control {
            // Inherit the control socket like any listener, so that its path
            // never stops answering across a restart or a rollback.
            let (socket, identity) = match restart.take_inherited(CONTROL_NAME) {
                Some(inherited) => (inherited.socket, control::identity(path)),
                None => {
                    let socket = control::bind(path)?;
                    (socket, control::identity(path))
                }
            };
            let copy = socket
                .try_clone()
                .map_err(|e| Error::control_socket(path.display(), e))?;
            lock(&restart.inner.sockets).push((CONTROL_NAME.to_owned(), copy));
            let std: std::os::unix::net::UnixListener = socket.into();
            let listener = UnixListener::from_std(std)
                .map_err(|e| Error::control_socket(path.display(), e))?;
            tokio::spawn(control_loop(Arc::clone(&restart.inner), listener));
            // At exit, the path is this process's to remove only if it is
            // the one serving it: not after it handed over, not as a
            // successor that never took over (the path is still its
            // predecessor's), and not if something else replaced it since.
            let owner = Arc::clone(&restart.inner);
            let path = path.clone();
            handle.view().at_exit(move || {
                let handed_over = owner.handed_over.load(Ordering::Acquire);
                let never_took_over = lock(&owner.ready_fd).is_some();
                if !handed_over
                    && !never_took_over
                    && identity.is_some()
                    && control::identity(&path) == identity
                {
                    let _ = std::fs::remove_file(&path);
                }
            });
        }
        Ok(restart)
    }
}

/// Zero-downtime restarts for one lifecycle. See the [module
/// documentation](self). Cheap to clone.
#[derive(Clone)]
pub struct Restart {
    inner: Arc<Inner>,
}

impl fmt::Debug for Restart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Restart")
            .field("exe", &self.inner.exe)
            .field("successor", &self.inner.is_successor())
            .field("generation", &self.generation())
            .finish_non_exhaustive()
    }
}

struct Inner {
    handle: Handle,
    exe: PathBuf,
    args: Vec<OsString>,
    config: Builder,
    inherited: Mutex<Vec<Option<Inherited>>>,
    /// A copy of every listening socket, with its name, to hand over.
    sockets: Mutex<Vec<(String, socket2::Socket)>>,
    /// Started by a predecessor's restart (its markers checked).
    successor: bool,
    /// The write end of the readiness pipe to the predecessor, until
    /// [`Restart::ready`].
    ready_fd: Mutex<Option<OwnedFd>>,
    /// The user's part of the handed-over state, read by a task started at
    /// build.
    state: Mutex<Option<oneshot::Receiver<io::Result<Option<UserState>>>>>,
    /// The read end of the predecessor's commit pipe, until
    /// [`Restart::ready`] starts watching it.
    commit_fd: Mutex<Option<OwnedFd>>,
    /// False while the predecessor's probation of this process runs.
    settled: Arc<AtomicBool>,
    /// [`Restart::ready`] was called.
    announced: AtomicBool,
    busy: AtomicBool,
    /// A successor reported ready and owns the sockets' paths (cleared
    /// again on a rollback).
    handed_over: AtomicBool,
    generation: AtomicU32,
}

impl Inner {
    fn is_successor(&self) -> bool {
        self.successor
    }
}

impl Restart {
    /// A [`Builder`] with the defaults: 30 s ready timeout, 2 s probation,
    /// no control socket, no PID file.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// Whether this process was started by a predecessor's restart.
    pub fn is_successor(&self) -> bool {
        self.inner.is_successor()
    }

    /// 1 for a process started by hand, one more for each restart.
    pub fn generation(&self) -> u32 {
        self.inner.generation.load(Ordering::Relaxed)
    }

    /// The listener named `name`: the inherited one (from a predecessor or
    /// systemd) when there is one by that name, else a new TCP listener
    /// bound on `addr`. It will be handed over on the next restart.
    ///
    /// # Errors
    ///
    /// [`Error::is_bind`] when binding fails, [`Error::is_listener`] when an
    /// inherited socket cannot be used.
    pub async fn listener(
        &self,
        name: &str,
        addr: impl tokio::net::ToSocketAddrs + fmt::Display,
    ) -> Result<Listener, Error> {
        if let Some(inherited) = self.take_inherited(name) {
            return self.adopt(inherited);
        }
        let listener = Listener::bind(addr).await?;
        self.keep(name, &listener)?;
        Ok(listener)
    }

    /// Like [`listener`](Self::listener), for a Unix-domain socket at
    /// `path`.
    ///
    /// # Errors
    ///
    /// As for [`listener`](Self::listener).
    pub fn listener_unix(&self, name: &str, path: impl Into<PathBuf>) -> Result<Listener, Error> {
        if let Some(inherited) = self.take_inherited(name) {
            return self.adopt(inherited);
        }
        let listener = Listener::bind_unix(path)?;
        self.keep(name, &listener)?;
        Ok(listener)
    }

    fn take_inherited(&self, name: &str) -> Option<Inherited> {
        let mut inherited = lock(&self.inner.inherited);
        inherited
            .iter_mut()
            .find(|i| i.as_ref().is_some_and(|i| i.name == name))
            .and_then(Option::take)
    }

    fn adopt(&self, inherited: Inherited) -> Result<Listener, Error> {
        let name = inherited.name.clone();
        tracing::info!(target: "lameduck", listener = %name, "adopted inherited listener");
        let listener = inherited.into_listener()?;
        self.keep(&name, &listener)?;
        Ok(listener)
    }

    fn keep(&self, name: &str, listener: &Listener) -> Result<(), Error> {
        let copy = listener
            .socket_ref()
            .try_clone()
            .map_err(|e| Error::listener(name, e))?;
        lock(&self.inner.sockets).push((name.to_owned(), copy));
        Ok(())
    }

    /// Report that this process serves: to the predecessor that started it
    /// (which then stops accepting and begins its probation) and, under
    /// systemd, `READY=1` (with `MAINPID` for a successor). Call it once
    /// the listeners are set up and the service's own readiness passes.
    /// Later calls do nothing.
    ///
    /// A successor's listeners and control socket accept nothing before
    /// this call: until then its predecessor serves alone, so a successor
    /// that hangs in its startup is never sent traffic. (A readiness check
    /// that needs to reach this process through the shared listeners
    /// cannot work for that reason; check the service's parts directly.)
    ///
    /// # Errors
    ///
    /// When the predecessor's readiness pipe cannot be written for another
    /// reason than the predecessor being gone (then this process simply
    /// serves alone).
    pub fn ready(&self) -> io::Result<()> {
        if self.inner.announced.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        if let Some(fd) = lock(&self.inner.commit_fd).take() {
            // Busy for restarts until the predecessor's probation is over:
            // it says so by closing the pipe (or by dying).
            self.inner.settled.store(false, Ordering::Release);
            let settled = Arc::clone(&self.inner.settled);
            tokio::spawn(async move {
                if let Ok(pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
                    let mut pipe = pipe;
                    let mut sink = [0u8; 64];
                    while let Ok(n) = pipe.read(&mut sink).await {
                        if n == 0 {
                            break;
                        }
                    }
                }
                settled.store(true, Ordering::Release);
            });
        }
        if self.inner.successor {
            self.inner.handle.view().set_accepting(true);
        }
        let fd = lock(&self.inner.ready_fd).take();
        if let Some(fd) = fd {
            let mut pipe = std::fs::File::from(fd);
            match writeln!(pipe, "READY {}", std::process::id()) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                    tracing::warn!(target: "lameduck", "the predecessor is gone; serving alone");
                }
                Err(e) => return Err(e),
            }
        }
        let mut states = vec![Notify::Ready];
        if self.is_successor() {
            states.push(Notify::MainPid(std::process::id()));
        }
        if let Err(e) = systemd::notify(&states) {
            tracing::warn!(target: "lameduck", error = %e, "sd_notify failed");
        }
        Ok(())
    }

    /// The state the predecessor handed over with
    /// [`Builder::handoff_state`], as `(version, bytes)`; `None` when this
    /// process was not started by a restart, or the predecessor hands over
    /// no state. Read it once, before [`ready`](Self::ready); check the
    /// version and refuse to report ready on what you cannot read (the
    /// predecessor then keeps serving).
    ///
    /// The read is bounded by the ready timeout (the predecessor gives up
    /// on this process then anyway), and ends early when the lifecycle is
    /// triggered meanwhile: spawn or drive [`Lifecycle::run`] before this
    /// call so that signals are seen during startup.
    ///
    /// [`Lifecycle::run`]: crate::Lifecycle::run
    ///
    /// # Errors
    ///
    /// When the state is malformed, truncated or larger than 64 MiB
    /// ([`io::ErrorKind::InvalidData`]), does not arrive within the ready
    /// timeout ([`io::ErrorKind::TimedOut`]), or shutdown began while
    /// waiting for it ([`io::ErrorKind::Interrupted`]).
    ///
    /// # Cancellation safety
    ///
    /// Dropping the future drops the state: a second call returns `None`.
    pub async fn inherited_state(&self) -> io::Result<Option<(u32, Vec<u8>)>> {
        let Some(rx) = lock(&self.inner.state).take() else {
            return Ok(None);
        };
        // The reader is bounded by the ready timeout and ends at a stop.
        rx.await.unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::Interrupted,
                "handed-over state: the reader ended",
            ))
        })
    }

    /// Restart now: start a successor, wait for it, hand over. Returns the
    /// successor's pid once its probation passed (this process is then
    /// draining), or why it failed (this process still serves).
    ///
    /// # Errors
    ///
    /// A [`RestartError`] saying what went wrong.
    ///
    /// # Cancellation safety
    ///
    /// The restart runs in a task of its own: dropping this future does not
    /// stop it half-way (which could leave accepting paused or a successor
    /// orphaned). It goes on to its end, and its outcome is logged.
    pub async fn restart(&self) -> Result<u32, RestartError> {
        spawn_restart(&self.inner).await
    }
}

/// The user's handed-over state: its version and bytes.
type UserState = (u32, Vec<u8>);

/// The sections of a handed-over state: the user's (`lameduck-state`),
/// the TLS ticket keys (`lameduck-tls`). Each is a line
/// `NAME VERSION LENGTH` and the bytes; unknown sections are skipped.
#[derive(Debug, Default)]
struct Sections {
    user: Option<(u32, Vec<u8>)>,
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    tls: Option<Vec<u8>>,
}

const TLS_SECTION: &str = "lameduck-tls";

async fn read_sections(fd: OwnedFd) -> io::Result<Sections> {
    let pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(fd)?;
    let mut reader = BufReader::new(pipe);
    let bad = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("handed-over state: {what}"),
        )
    };
    let mut sections = Sections::default();
    let mut total = 0usize;
    loop {
        let mut header = String::new();
        (&mut reader).take(256).read_line(&mut header).await?;
        if header.is_empty() {
            return Ok(sections);
        }
        let mut parts = header.split_whitespace();
        let name = parts.next().unwrap_or_default().to_owned();
        if !name.starts_with("lameduck-") {
            return Err(bad("bad header"));
        }
        let version: u32 = parts
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad("bad version"))?;
        let len: usize = parts
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad("bad length"))?;
        total = total.saturating_add(len);
        if total > STATE_LIMIT {
            return Err(bad("too large"));
        }
        let mut bytes = vec![0u8; len];
        reader
            .read_exact(&mut bytes)
            .await
            .map_err(|_| bad("truncated"))?;
        match name.as_str() {
            STATE_MAGIC => sections.user = Some((version, bytes)),
            TLS_SECTION if version == 1 => sections.tls = Some(bytes),
            _ => {
                tracing::debug!(target: "lameduck", section = %name, version, "skipped an unknown handed-over section")
            }
        }
    }
}

/// Run a restart in a task of its own, so that whoever asked for it can
/// stop waiting without cutting it half-way.
async fn spawn_restart(inner: &Arc<Inner>) -> Result<u32, RestartError> {
    let task = tokio::spawn(restart(Arc::clone(inner), None));
    match task.await {
        Ok(result) => result,
        Err(e) => Err(RestartError::new(format!("the restart task ended: {e}"))),
    }
}

/// Where a restart's outcome goes before this process starts to drain,
/// with a way to say it was delivered (so that a control client gets its
/// answer before the process that answers it exits).
type Reply = oneshot::Sender<(Result<u32, RestartError>, oneshot::Sender<()>)>;

/// How long a finished handover waits for its answer to be delivered
/// before this process starts to drain anyway.
const ANSWER_WAIT: Duration = Duration::from_secs(1);

/// Why a restart did not happen; the old process still serves.
#[derive(Debug, Clone)]
pub struct RestartError {
    message: String,
    busy: bool,
}

impl RestartError {
    fn new(message: impl Into<String>) -> Self {
        RestartError {
            message: message.into(),
            busy: false,
        }
    }

    fn busy(message: impl Into<String>) -> Self {
        RestartError {
            message: message.into(),
            busy: true,
        }
    }

    /// Another restart was in progress.
    pub fn is_busy(&self) -> bool {
        self.busy
    }
}

impl fmt::Display for RestartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RestartError {}

/// The path to start the successor from: the path this process was started
/// by (not the resolved inode, so a replaced file or a moved symlink is
/// what starts next).
fn start_path(arg0: &std::ffi::OsStr) -> io::Result<PathBuf> {
    let p = Path::new(arg0);
    if p.components().count() > 1 {
        if p.is_absolute() {
            Ok(p.to_path_buf())
        } else {
            Ok(std::env::current_dir()?.join(p))
        }
    } else {
        // Found through PATH: the executable's own path.
        std::env::current_exe()
    }
}

/// What a predecessor's restart passed to this process, checked: the
/// readiness, state and commit pipes and the generation. Honoured only when
/// `LAMEDUCK_PARENT_PID` names this process's parent and the readiness
/// descriptor is an open pipe, so that `LAMEDUCK_*` variables leaked into
/// an unrelated process's environment change nothing.
struct Markers {
    ready_fd: Option<OwnedFd>,
    state_fd: Option<OwnedFd>,
    commit_fd: Option<OwnedFd>,
    generation: u32,
}

/// The markers have one owner in a process, as the `LISTEN_FDS` sockets do.
static MARKERS_TAKEN: AtomicBool = AtomicBool::new(false);

impl Markers {
    fn none() -> Markers {
        Markers {
            ready_fd: None,
            state_fd: None,
            commit_fd: None,
            generation: 1,
        }
    }

    fn adopt() -> Result<Markers, Error> {
        let Ok(ready) = std::env::var(READY_FD_ENV) else {
            return Ok(Markers::none());
        };
        // A predecessor of lameduck 0.1 does not set the parent's pid; the
        // open readiness pipe checked below still ties the markers to this
        // process.
        if let Ok(parent) = std::env::var(PARENT_ENV) {
            let parent_ok = parent
                .trim()
                .parse::<i32>()
                .is_ok_and(|p| p == nix::unistd::getppid().as_raw());
            if !parent_ok {
                tracing::warn!(target: "lameduck", parent = %parent, "LAMEDUCK_* variables are for another process (not started by this process's parent); starting afresh");
                return Ok(Markers::none());
            }
        }
        if MARKERS_TAKEN.swap(true, Ordering::SeqCst) {
            return Ok(Markers::none());
        }
        let ready_fd = adopt_pipe_fd(READY_FD_ENV, &ready)?;
        let state_fd = match std::env::var(STATE_FD_ENV) {
            Ok(v) => Some(adopt_pipe_fd(STATE_FD_ENV, &v)?),
            Err(_) => None,
        };
        let commit_fd = match std::env::var(COMMIT_FD_ENV) {
            Ok(v) => Some(adopt_pipe_fd(COMMIT_FD_ENV, &v)?),
            Err(_) => None,
        };
        let generation = std::env::var(GENERATION_ENV)
            .ok()
            .and_then(|g| g.trim().parse().ok())
            .filter(|g| *g > 1)
            .unwrap_or(2);
        Ok(Markers {
            ready_fd: Some(ready_fd),
            state_fd,
            commit_fd,
            generation,
        })
    }
}

fn adopt_pipe_fd(env: &'static str, value: &str) -> Result<OwnedFd, Error> {
    let fd: RawFd = value
        .trim()
        .parse()
        .map_err(|_| Error::handover(env, format!("{value:?} is not a descriptor number")))?;
    if fd < LISTEN_FDS_START {
        return Err(Error::handover(env, format!("{fd} is a standard stream")));
    }
    let stat = nix::sys::stat::fstat(fd)
        .map_err(|e| Error::handover(env, format!("descriptor {fd} is not open: {e}")))?;
    if stat.st_mode & nix::libc::S_IFMT != nix::libc::S_IFIFO {
        // Not ours to take: whatever holds this number (the runtime's own
        // epoll instance, say) must not be closed.
        return Err(Error::handover(
            env,
            format!("descriptor {fd} is not a pipe"),
        ));
    }
    // SAFETY: the descriptor is open and a pipe (checked above) and was
    // passed to this process, for it alone, by its parent's restart
    // (checked by the caller); `MARKERS_TAKEN` makes sure it is adopted at
    // most once.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    nix::fcntl::fcntl(
        owned.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(|e| Error::handover(env, e))?;
    Ok(owned)
}

fn write_pid_file(path: &Path, pid: u32) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, format!("{pid}\n"))?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Remove the PID file if it still names this process: a process that
/// handed over finds its successor there, and leaves it.
fn remove_pid_file(path: &Path) {
    let me = std::process::id();
    let names_me = std::fs::read_to_string(path)
        .is_ok_and(|s| s.trim().parse::<u32>().is_ok_and(|pid| pid == me));
    if names_me {
        if let Err(e) = std::fs::remove_file(path) {
            tracing::warn!(target: "lameduck", path = %path.display(), error = %e, "cannot remove the PID file");
        }
    }
}

fn notify(states: &[Notify]) {
    if let Err(e) = systemd::notify(states) {
        tracing::warn!(target: "lameduck", error = %e, "sd_notify failed");
    }
}

async fn hangup_loop(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<()>) {
    while rx.recv().await.is_some() {
        // Run the restart beside the loop, so a second SIGHUP gets its
        // "busy" answer at once; the outcome is logged by the restart.
        tokio::spawn(restart(Arc::clone(&inner), None));
    }
}

/// How long a successor that will not take over may take to drain what it
/// accepted before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Stop a successor that will not take over. It may already serve
/// connections it accepted from the shared sockets, so it gets SIGTERM
/// first and drains them like any shutdown; SIGKILL only if it has not
/// exited within [`STOP_GRACE`] (a successor that is truly hung).
async fn stop_successor(child: &mut tokio::process::Child, pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        if pid > 0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        tracing::warn!(target: "lameduck", successor = pid, "successor did not stop after SIGTERM; killing it");
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
}

/// Resets the busy flag however the restart ends.
struct Busy<'a>(&'a AtomicBool);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

async fn restart(inner: Arc<Inner>, reply: Option<Reply>) -> Result<u32, RestartError> {
    let result = try_restart(&inner).await;
    match &result {
        Ok(pid) => tracing::info!(target: "lameduck", successor = pid, "restart done"),
        Err(e) if e.is_busy() => tracing::info!(target: "lameduck", reason = %e, "restart refused"),
        Err(e) => tracing::warn!(target: "lameduck", reason = %e, "restart failed"),
    }
    if let Some(reply) = reply {
        let (delivered, answered) = oneshot::channel();
        if reply.send((result.clone(), delivered)).is_ok() && result.is_ok() {
            let _ = tokio::time::timeout(ANSWER_WAIT, answered).await;
        }
    }
    if let Ok(pid) = result {
        // The successor serves: drain and exit (skipping the lame duck).
        inner.handle.view().trigger_restart(pid);
    }
    result
}

async fn try_restart(inner: &Inner) -> Result<u32, RestartError> {
    if inner.handle.is_draining() {
        return Err(RestartError::new("shutting down: no restart"));
    }
    if lock(&inner.ready_fd).is_some() {
        // This process is itself a successor that has not reported ready:
        // its predecessor is in the middle of a restart.
        return Err(RestartError::busy(
            "busy: this process is starting and not ready yet",
        ));
    }
    if !inner.settled.load(Ordering::Acquire) {
        // Ready, but the predecessor's probation of this process runs:
        // one request, one restart.
        return Err(RestartError::busy(
            "busy: the previous restart is still on probation",
        ));
    }
    if inner.busy.swap(true, Ordering::AcqRel) {
        return Err(RestartError::busy("busy: a restart is already in progress"));
    }
    let _busy = Busy(&inner.busy);
    notify(&[Notify::Reloading]);
    let result = hand_over(inner).await;
    if let Err(e) = &result {
        notify(&[
            Notify::Ready,
            Notify::Status(format!("restart failed: {e}")),
        ]);
    }
    result
}

async fn hand_over(inner: &Inner) -> Result<u32, RestartError> {
    let handle = &inner.handle;
    let config = &inner.config;
    // Every descriptor the successor gets, in order: the sockets, then the
    // readiness, commit and (optional) state pipes.
    let (names, sockets): (Vec<String>, Vec<socket2::Socket>) = {
        let sockets = lock(&inner.sockets);
        if sockets.is_empty() {
            return Err(RestartError::new("no listeners to hand over"));
        }
        let mut names = Vec::new();
        let mut copies = Vec::new();
        for (name, socket) in sockets.iter() {
            copies.push(
                socket
                    .try_clone()
                    .map_err(|e| RestartError::new(format!("cannot duplicate a socket: {e}")))?,
            );
            names.push(name.clone());
        }
        (names, copies)
    };
    let n = sockets.len();
    let (ready_read, ready_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| RestartError::new(format!("cannot create the readiness pipe: {e}")))?;
    // Closed by this process when the successor's probation is over (or
    // when this process dies): until then the successor refuses restarts.
    let (commit_read, commit_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| RestartError::new(format!("cannot create the commit pipe: {e}")))?;
    let mut sections: Vec<(&str, u32, Vec<u8>)> = Vec::new();
    if let Some((version, f)) = &config.state {
        sections.push((STATE_MAGIC, *version, f()));
    }
    #[cfg(feature = "tls")]
    if let Some(tls) = &config.tls {
        sections.push((TLS_SECTION, 1, tls.export_ticket_keys()));
    }
    let state = if sections.is_empty() {
        None
    } else {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| RestartError::new(format!("cannot create the state pipe: {e}")))?;
        Some((sections, read, write))
    };
    let mut passed: Vec<std::os::fd::BorrowedFd<'_>> =
        sockets.iter().map(std::os::fd::AsFd::as_fd).collect();
    passed.push(std::os::fd::AsFd::as_fd(&ready_write));
    passed.push(std::os::fd::AsFd::as_fd(&commit_read));
    if let Some((_, read, _)) = &state {
        passed.push(std::os::fd::AsFd::as_fd(read));
    }
    let fds = systemd::PassFds::new(&passed)
        .map_err(|e| RestartError::new(format!("cannot duplicate a descriptor: {e}")))?;
    drop(passed);

    let generation = inner.generation.load(Ordering::Relaxed) + 1;
    let mut command = std::process::Command::new(&inner.exe);
    command
        .args(&inner.args)
        .env("LISTEN_FDS", n.to_string())
        .env("LISTEN_FDNAMES", names.join(":"))
        .env_remove("LISTEN_PID")
        .env(READY_FD_ENV, (LISTEN_FDS_START + n as RawFd).to_string())
        .env(
            COMMIT_FD_ENV,
            (LISTEN_FDS_START + n as RawFd + 1).to_string(),
        )
        .env(PARENT_ENV, std::process::id().to_string())
        .env(GENERATION_ENV, generation.to_string())
        .env_remove(STATE_FD_ENV)
        .stdin(Stdio::null());
    if state.is_some() {
        command.env(
            STATE_FD_ENV,
            (LISTEN_FDS_START + n as RawFd + 2).to_string(),
        );
    }
    fds.install(&mut command);
    let mut command = tokio::process::Command::from(command);
    command.kill_on_drop(false);
    let state = state.map(|(sections, read, write)| {
        drop(read);
        (sections, write)
    });
    let mut child = command.spawn().map_err(|e| {
        RestartError::new(format!(
            "cannot start successor {}: {e}",
            inner.exe.display()
        ))
    })?;
    drop(fds);
    drop(sockets);
    drop(ready_write);
    drop(commit_read);
    // Write the state beside the handshake: a large state fills the pipe
    // until the successor reads it.
    let writer = state.map(|(sections, write)| {
        let sections: Vec<(String, u32, Vec<u8>)> = sections
            .into_iter()
            .map(|(name, version, bytes)| (name.to_owned(), version, bytes))
            .collect();
        tokio::spawn(async move {
            let mut pipe = tokio::net::unix::pipe::Sender::from_owned_fd(write)?;
            for (name, version, bytes) in sections {
                pipe.write_all(format!("{name} {version} {}\n", bytes.len()).as_bytes())
                    .await?;
                pipe.write_all(&bytes).await?;
            }
            Ok::<_, io::Error>(())
        })
    });
    let _abort_writer = writer.map(|w| AbortOnDrop(w.abort_handle()));
    let pid = child.id().unwrap_or(0);
    tracing::info!(target: "lameduck", successor = pid, generation, exe = %inner.exe.display(), "restart: successor started");

    // Readiness handshake, bounded.
    let pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(ready_read)
        .map_err(|e| RestartError::new(format!("readiness pipe: {e}")))?;
    let mut lines = BufReader::new(pipe);
    let mut line = String::new();
    let outcome = tokio::select! {
        read = lines.read_line(&mut line) => match read {
            Ok(_) if line.starts_with("READY") => Ok(()),
            Ok(_) => {
                // The pipe closes when the successor exits, a moment before
                // its exit can be collected: wait for it, to say why.
                match tokio::time::timeout(Duration::from_secs(1), child.wait()).await {
                    Ok(Ok(status)) => Err(format!("successor pid {pid} exited before it was ready ({status})")),
                    _ => Err(format!("successor pid {pid} closed its readiness pipe without reporting ready")),
                }
            }
            Err(e) => Err(format!("successor pid {pid}: readiness pipe: {e}")),
        },
        status = child.wait() => Err(match status {
            Ok(s) => format!("successor pid {pid} exited before it was ready ({s})"),
            Err(e) => format!("successor pid {pid}: {e}"),
        }),
        _ = tokio::time::sleep(config.ready_timeout) => {
            Err(format!("successor pid {pid} was not ready within {}; stopped", Secs(config.ready_timeout)))
        }
        _ = handle.draining() => Err(format!("shutdown began during the restart; successor pid {pid} stopped")),
    };
    if let Err(reason) = outcome {
        stop_successor(&mut child, pid).await;
        return Err(RestartError::new(reason));
    }

    // Ready: stop accepting, keep the sockets, watch the successor. From
    // here the successor owns the sockets' paths.
    inner.handed_over.store(true, Ordering::Release);
    handle.view().set_accepting(false);
    notify(&[Notify::MainPid(pid), Notify::Ready]);
    tracing::info!(target: "lameduck", successor = pid, probation = %Secs(config.probation), "restart: successor ready; stopped accepting, on probation");
    tokio::select! {
        status = child.wait() => {
            inner.handed_over.store(false, Ordering::Release);
            handle.view().set_accepting(true);
            notify(&[Notify::MainPid(std::process::id()), Notify::Ready]);
            let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
            tracing::warn!(target: "lameduck", successor = pid, %status, "restart: successor died during probation; accepting again");
            return Err(RestartError::new(format!(
                "successor pid {pid} exited during probation ({status}); resumed accepting"
            )));
        }
        _ = tokio::time::sleep(config.probation) => {}
        // Told to stop during probation: the successor serves, so finish
        // the handover now.
        _ = handle.draining() => {}
    }
    if let Some(pid_file) = &config.pid_file {
        if let Err(e) = write_pid_file(pid_file, pid) {
            tracing::warn!(target: "lameduck", error = %e, "cannot update the PID file");
        }
    }
    inner.generation.store(generation, Ordering::Relaxed);
    // Probation over: the successor may take restart requests now.
    drop(commit_write);
    Ok(pid)
}

/// Answer control requests while this process is the one accepting (not
/// before a successor's `ready`, not while a successor is on probation or
/// after it took over), until the lifecycle is done. A failed accept (out
/// of descriptors) backs off instead of spinning.
async fn control_loop(inner: Arc<Inner>, mut listener: UnixListener) {
    let handle = inner.handle.clone();
    crate::util::accept_while(
        "control socket",
        handle.view().accepting(),
        handle.done(),
        &mut listener,
        |(stream, _)| {
            tokio::spawn(control_session(Arc::clone(&inner), stream));
        },
    )
    .await;
}

async fn control_session(inner: Arc<Inner>, mut stream: UnixStream) {
    let command = match control::read_command(&mut stream).await {
        Ok(command) => command,
        Err(refusal) => {
            let _ = stream.write_all(refusal.as_bytes()).await;
            return;
        }
    };
    let answer = {
        match command.as_str() {
            "restart" => {
                let (reply, outcome) = oneshot::channel();
                tokio::spawn(restart(Arc::clone(&inner), Some(reply)));
                let (answer, delivered) = match outcome.await {
                    Ok((Ok(pid), delivered)) => (format!("done: new pid {pid}\n"), Some(delivered)),
                    Ok((Err(e), delivered)) if e.is_busy() => (format!("{e}\n"), Some(delivered)),
                    Ok((Err(e), delivered)) => (format!("failed: {e}\n"), Some(delivered)),
                    Err(_) => ("failed: the restart task ended\n".to_owned(), None),
                };
                let _ =
                    tokio::time::timeout(ANSWER_WAIT, stream.write_all(answer.as_bytes())).await;
                drop(delivered);
                return;
            }
            "status" => format!(
                "ok: pid {}, generation {}, phase {}\n",
                std::process::id(),
                inner.generation.load(Ordering::Relaxed),
                inner.handle.phase()
            ),
            other => format!("error: unknown command {other:?} (try restart or status)\n"),
        }
    };
    let _ = stream.write_all(answer.as_bytes()).await;
}

pub use crate::control::request as control;
