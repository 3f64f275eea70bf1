//! systemd fit: socket activation (`LISTEN_FDS` / `LISTEN_FDNAMES`) and
//! `sd_notify` state messages.
//!
//! The same protocol carries listening sockets from systemd (socket
//! activation), from `systemfd`, and from a lameduck process to its
//! successor during a [restart](crate::restart).
//!
//! # Platform support
//!
//! Unix only.

#![allow(unsafe_code)] // Adopting inherited descriptors needs `from_raw_fd`.

use std::collections::VecDeque;
use std::fmt;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::Error;
#[cfg(feature = "http")]
use crate::http::Listener;

/// The first inherited descriptor, by the systemd convention.
pub const LISTEN_FDS_START: RawFd = 3;

/// What a `LISTEN_*` environment says, checked but not yet adopted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenEnv {
    /// How many descriptors, starting at [`LISTEN_FDS_START`].
    pub count: usize,
    /// Their names (`LISTEN_FDNAMES`), one per descriptor; `"unknown"` when
    /// not given.
    pub names: Vec<String>,
}

/// Check a `LISTEN_PID` / `LISTEN_FDS` / `LISTEN_FDNAMES` triple.
///
/// Returns `Ok(None)` when there is nothing for this process: no
/// `LISTEN_FDS`, or a `LISTEN_PID` naming another process (inherited by
/// mistake from a parent; systemd's own rule). A missing `LISTEN_PID` is
/// accepted, since a restarting lameduck cannot know its successor's pid
/// before it starts.
///
/// # Errors
///
/// A clear message for a malformed environment: a count or pid that is not
/// a number, an absurd count, or a name list of the wrong length.
///
/// ```
/// use lameduck::systemd::parse_listen_env;
/// let env = parse_listen_env(Some("42"), Some("2"), Some("http:admin"), 42).unwrap().unwrap();
/// assert_eq!(env.names, ["http", "admin"]);
/// assert_eq!(parse_listen_env(Some("7"), Some("2"), None, 42).unwrap(), None);
/// assert!(parse_listen_env(None, Some("two"), None, 42).is_err());
/// ```
pub fn parse_listen_env(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    fd_names: Option<&str>,
    my_pid: u32,
) -> Result<Option<ListenEnv>, String> {
    let Some(fds) = listen_fds else {
        return Ok(None);
    };
    if let Some(pid) = listen_pid {
        let pid: u32 = pid
            .trim()
            .parse()
            .map_err(|_| format!("LISTEN_PID={pid:?} is not a process id"))?;
        if pid != my_pid {
            return Ok(None);
        }
    }
    let count: usize = fds
        .trim()
        .parse()
        .map_err(|_| format!("LISTEN_FDS={fds:?} is not a number"))?;
    if count > 1024 {
        return Err(format!(
            "LISTEN_FDS={count} is more descriptors than a process passes"
        ));
    }
    let names = match fd_names {
        None => vec!["unknown".to_string(); count],
        Some(names) => {
            let names: Vec<String> = names.split(':').map(str::to_owned).collect();
            if names.len() != count {
                return Err(format!(
                    "LISTEN_FDNAMES has {} names for LISTEN_FDS={count}",
                    names.len()
                ));
            }
            names
        }
    };
    Ok(Some(ListenEnv { count, names }))
}

/// One inherited listening socket.
pub struct Inherited {
    /// Its name from `LISTEN_FDNAMES` (`"unknown"` when not given).
    pub name: String,
    /// The socket, non-blocking and close-on-exec.
    pub socket: socket2::Socket,
}

impl fmt::Debug for Inherited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inherited")
            .field("name", &self.name)
            .field("socket", &self.socket)
            .finish()
    }
}

impl Inherited {
    /// As a [`Listener`] for the HTTP server. Must be
    /// called inside a tokio runtime.
    ///
    /// # Errors
    ///
    /// When the socket's family is neither IP nor Unix, or tokio cannot
    /// register it.
    #[cfg(feature = "http")]
    pub fn into_listener(self) -> Result<Listener, Error> {
        let name = self.name;
        let domain = self
            .socket
            .domain()
            .map_err(|e| Error::listener(&name, e))?;
        if domain == socket2::Domain::UNIX {
            let std: std::os::unix::net::UnixListener = self.socket.into();
            tokio::net::UnixListener::from_std(std)
                .map(Listener::from)
                .map_err(|e| Error::listener(&name, e))
        } else if domain == socket2::Domain::IPV4 || domain == socket2::Domain::IPV6 {
            let std: std::net::TcpListener = self.socket.into();
            tokio::net::TcpListener::from_std(std)
                .map(Listener::from)
                .map_err(|e| Error::listener(&name, e))
        } else {
            Err(Error::listener(
                &name,
                format!("unsupported socket family {domain:?}"),
            ))
        }
    }
}

static TAKEN: AtomicBool = AtomicBool::new(false);

/// Take the listening sockets this process inherited through
/// `LISTEN_FDS`, in order, each checked (open, a stream socket, listening),
/// made non-blocking (before tokio sees it: tokio requires it) and
/// close-on-exec (so it does not leak into unrelated children).
///
/// Returns an empty list when nothing was passed to this process, and
/// also on every call after the first (the descriptors have one owner).
///
/// # Errors
///
/// [`Error::is_listener`] with a clear message for a malformed environment
/// or a descriptor that is not a listening stream socket. Never panics.
///
/// ```no_run
/// # fn main() -> Result<(), lameduck::Error> {
/// for inherited in lameduck::systemd::listen_fds()? {
///     println!("inherited {} ({:?})", inherited.name, inherited.socket.local_addr());
/// }
/// # Ok(()) }
/// ```
pub fn listen_fds() -> Result<Vec<Inherited>, Error> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    let names = std::env::var("LISTEN_FDNAMES").ok();
    let env = parse_listen_env(
        pid.as_deref(),
        fds.as_deref(),
        names.as_deref(),
        std::process::id(),
    )
    .map_err(|e| Error::listener("LISTEN_FDS", e))?;
    let Some(env) = env else {
        if fds.is_some() {
            tracing::warn!(target: "lameduck", listen_pid = ?pid, "LISTEN_FDS is for another process; ignored");
        }
        return Ok(Vec::new());
    };
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Ok(Vec::new());
    }
    let mut out = Vec::with_capacity(env.count);
    let mut names: VecDeque<String> = env.names.into();
    for i in 0..env.count {
        let fd = LISTEN_FDS_START + i as RawFd;
        let name = names.pop_front().unwrap_or_else(|| "unknown".into());
        let what = format!("inherited fd {fd} ({name})");
        // Check before taking ownership: a descriptor number that was not
        // passed may belong to someone else in this process (the runtime's
        // epoll instance takes the lowest free number), and must not be
        // closed on the error path.
        let stat = nix::sys::stat::fstat(fd)
            .map_err(|e| Error::listener(&what, format!("not an open descriptor: {e}")))?;
        if stat.st_mode & nix::libc::S_IFMT != nix::libc::S_IFSOCK {
            return Err(Error::listener(&what, "not a socket"));
        }
        // SAFETY: the descriptor is open and a socket (checked above), it
        // was passed to this process for it to own by the LISTEN_FDS
        // protocol, and the `TAKEN` flag makes sure it is adopted at most
        // once.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let socket = socket2::Socket::from(owned);
        let ty = socket
            .r#type()
            .map_err(|e| Error::listener(&what, format!("not a socket: {e}")))?;
        if ty != socket2::Type::STREAM {
            return Err(Error::listener(&what, "not a stream socket"));
        }
        if !socket
            .is_listener()
            .map_err(|e| Error::listener(&what, e))?
        {
            return Err(Error::listener(&what, "not a listening socket"));
        }
        socket
            .set_nonblocking(true)
            .map_err(|e| Error::listener(&what, e))?;
        socket
            .set_cloexec(true)
            .map_err(|e| Error::listener(&what, e))?;
        out.push(Inherited { name, socket });
    }
    Ok(out)
}

/// Descriptors to pass to a child process at 3, 4, ... (the `LISTEN_FDS`
/// protocol): close-on-exec copies at 100 and above, placed by `dup2` in
/// the child between fork and exec, so that no source can sit on a target
/// number and be overwritten. Keep it alive until the child is spawned.
///
/// One home for what [`restart`](crate::restart) and the `lameduck run`
/// supervisor both do.
///
/// ```no_run
/// use std::os::fd::AsFd;
/// # fn main() -> std::io::Result<()> {
/// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
/// let fds = lameduck::systemd::PassFds::new(&[listener.as_fd()])?;
/// let mut command = std::process::Command::new("my-server");
/// command.env("LISTEN_FDS", "1").env("LISTEN_FDNAMES", "http");
/// fds.install(&mut command);
/// let child = command.spawn()?;
/// drop(fds);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct PassFds {
    high: Vec<OwnedFd>,
}

impl PassFds {
    /// Copies of `fds`, to be placed at 3, 4, ... in that order.
    ///
    /// # Errors
    ///
    /// When a descriptor cannot be duplicated (out of descriptors).
    pub fn new(fds: &[std::os::fd::BorrowedFd<'_>]) -> std::io::Result<PassFds> {
        let mut high = Vec::with_capacity(fds.len());
        for fd in fds {
            high.push(high_copy(fd)?);
        }
        Ok(PassFds { high })
    }

    /// How many descriptors are passed.
    pub fn len(&self) -> usize {
        self.high.len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.high.is_empty()
    }

    /// Have `command` place the descriptors at 3, 4, ... in the child.
    pub fn install(&self, command: &mut std::process::Command) {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let raw: Vec<RawFd> = self.high.iter().map(AsRawFd::as_raw_fd).collect();
        // SAFETY: the closure runs in the child between fork and exec,
        // where only async-signal-safe calls are allowed: it calls `dup2`
        // alone, on descriptors open in the parent (kept open by `self`
        // until after the spawn, so open in the child), and allocates
        // nothing. `dup2` onto 3, 4, ... clears close-on-exec there; the
        // high copies keep it and vanish at exec.
        unsafe {
            command.pre_exec(move || {
                for (i, fd) in raw.iter().enumerate() {
                    nix::unistd::dup2(*fd, LISTEN_FDS_START + i as RawFd)
                        .map_err(std::io::Error::from)?;
                }
                Ok(())
            });
        }
    }
}

/// A close-on-exec copy of `fd` at 100 or above.
fn high_copy(fd: &impl std::os::fd::AsRawFd) -> std::io::Result<OwnedFd> {
    let copy = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(100))?;
    // SAFETY: `fcntl(F_DUPFD_CLOEXEC)` returned a new descriptor that
    // nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(copy) })
}

/// A state message for the service manager.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Notify {
    /// `READY=1`: startup finished (or a reload did).
    Ready,
    /// `RELOADING=1`: a restart (reload) began. Sent with
    /// `MONOTONIC_USEC`, as `Type=notify-reload` requires.
    Reloading,
    /// `STOPPING=1`: shutdown began.
    Stopping,
    /// `MAINPID=N`: the service's main process is now `N`.
    MainPid(u32),
    /// `EXTEND_TIMEOUT_USEC=N`: more time is needed.
    ExtendTimeout(std::time::Duration),
    /// `STATUS=...`: a free-form status line.
    Status(String),
}

/// Send state messages to the service manager when `NOTIFY_SOCKET` is set;
/// does nothing (and returns `Ok(false)`) otherwise.
///
/// # Errors
///
/// When `NOTIFY_SOCKET` is set but the message cannot be sent.
///
/// ```
/// // Outside systemd this is a no-op.
/// # std::env::remove_var("NOTIFY_SOCKET");
/// assert!(!lameduck::systemd::notify(&[lameduck::systemd::Notify::Ready]).unwrap());
/// ```
pub fn notify(states: &[Notify]) -> std::io::Result<bool> {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return Ok(false);
    }
    let mut states: Vec<sd_notify::NotifyState<'_>> = states
        .iter()
        .map(|s| match s {
            Notify::Ready => sd_notify::NotifyState::Ready,
            Notify::Reloading => sd_notify::NotifyState::Reloading,
            Notify::Stopping => sd_notify::NotifyState::Stopping,
            Notify::MainPid(pid) => sd_notify::NotifyState::MainPid(*pid),
            Notify::ExtendTimeout(d) => sd_notify::NotifyState::ExtendTimeoutUsec(
                u32::try_from(d.as_micros()).unwrap_or(u32::MAX),
            ),
            Notify::Status(s) => sd_notify::NotifyState::Status(s),
        })
        .collect();
    // `Type=notify-reload` requires the monotonic time with `RELOADING=1`.
    if states
        .iter()
        .any(|s| matches!(s, sd_notify::NotifyState::Reloading))
    {
        states.push(sd_notify::NotifyState::monotonic_usec_now()?);
    }
    sd_notify::notify(false, &states)?;
    Ok(true)
}
