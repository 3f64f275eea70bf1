//! Starting and reaping children.
//!
//! A child is started through a small shim, `lameduck __exec CMD ARGS`, that
//! sets `LISTEN_PID` to its own pid and then `exec`s the command (the pid
//! survives the exec): systemd sets `LISTEN_PID` between fork and exec, and
//! doing that in the forked child of a multi-threaded process is not
//! async-signal-safe; an exec through the shim is. Between fork and exec
//! the child also gets its own process group (so that a SIGKILL at the
//! deadline reaches its grandchildren), a parent-death signal (so that it
//! never outlives a SIGKILLed supervisor) and the listening sockets at
//! 3, 4, ...
//!
//! The supervisor is a child subreaper and reaps every process that comes
//! back to it with `waitpid(-1)`; exits are routed to the waiter of each
//! child by pid.

#![allow(unsafe_code)] // `pre_exec`: process group, parent-death signal.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::oneshot;

/// The hidden subcommand of the shim.
pub(crate) const SHIM: &str = "__exec";

/// Run as the shim: `LISTEN_PID` is this process, then become `CMD`.
/// Returns only on failure.
pub(crate) fn exec_shim(args: &[OsString]) -> std::process::ExitCode {
    let Some((cmd, rest)) = args.split_first() else {
        eprintln!("lameduck: {SHIM} needs a command");
        return std::process::ExitCode::from(127);
    };
    let mut command = Command::new(cmd);
    command.args(rest);
    if std::env::var_os("LISTEN_FDS").is_some() {
        command.env("LISTEN_PID", std::process::id().to_string());
    }
    let err = command.exec();
    eprintln!(
        "lameduck run: cannot start {}: {err}",
        cmd.to_string_lossy()
    );
    std::process::ExitCode::from(127)
}

/// Find `cmd` as a shell would (a path, or a name on `PATH`), checked to be
/// an executable file; a clear error otherwise.
pub(crate) fn resolve(cmd: &OsStr) -> Result<PathBuf, String> {
    let name = cmd.to_string_lossy();
    let candidates: Vec<PathBuf> = if Path::new(cmd).components().count() > 1 {
        vec![PathBuf::from(cmd)]
    } else {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path).map(|d| d.join(cmd)).collect()
    };
    let mut last = format!("{name}: command not found");
    for candidate in candidates {
        match std::fs::metadata(&candidate) {
            Ok(meta) if meta.is_dir() => last = format!("{}: is a directory", candidate.display()),
            Ok(_) => match nix::unistd::access(&candidate, nix::unistd::AccessFlags::X_OK) {
                Ok(()) => return Ok(candidate),
                Err(e) => last = format!("{}: not executable ({e})", candidate.display()),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => last = format!("{}: {e}", candidate.display()),
        }
    }
    Err(last)
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    Code(i32),
    Signal(Signal),
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit {c}"),
            Exit::Signal(s) => write!(f, "killed by {}", s.as_str()),
        }
    }
}

/// Routes the exits `waitpid(-1)` collects to each child's waiter.
#[derive(Debug, Default, Clone)]
pub(crate) struct Reaper {
    inner: Arc<Mutex<ReaperState>>,
}

#[derive(Debug, Default)]
struct ReaperState {
    waiters: HashMap<i32, oneshot::Sender<Exit>>,
}

impl Reaper {
    /// Collect every child that has exited (ours or orphans that came back
    /// to this subreaper).
    pub(crate) fn reap(&self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => self.route(pid, Exit::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => self.route(pid, Exit::Signal(sig)),
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    fn route(&self, pid: Pid, exit: Exit) {
        let waiter = lock(&self.inner).waiters.remove(&pid.as_raw());
        match waiter {
            Some(tx) => {
                let _ = tx.send(exit);
            }
            None => tracing::debug!(pid = pid.as_raw(), %exit, "reaped an orphan"),
        }
    }

    /// Wait for `pid`'s exit. Register right after the spawn, before any
    /// await: the reaper runs on the same thread, so it cannot reap the
    /// child in between.
    fn watch(&self, pid: i32) -> oneshot::Receiver<Exit> {
        let (tx, rx) = oneshot::channel();
        lock(&self.inner).waiters.insert(pid, tx);
        rx
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running child.
#[derive(Debug)]
pub(crate) struct Child {
    pub(crate) generation: u32,
    pub(crate) pid: i32,
    pub(crate) started: tokio::time::Instant,
    exit: Option<oneshot::Receiver<Exit>>,
    exited: Option<Exit>,
}

impl Child {
    /// Wait until the child exits. Cancellation-safe: call again after a
    /// dropped wait; after the exit, returns it at once.
    pub(crate) async fn wait(&mut self) -> Exit {
        if let Some(exit) = self.exited {
            return exit;
        }
        let exit = match self.exit.as_mut() {
            Some(rx) => rx.await.unwrap_or(Exit::Code(-1)),
            None => Exit::Code(-1),
        };
        self.exit = None;
        self.exited = Some(exit);
        exit
    }

    pub(crate) fn has_exited(&self) -> bool {
        self.exited.is_some()
    }

    /// Send `signal` to the child alone.
    pub(crate) fn signal(&self, signal: Signal) {
        if self.exited.is_none() {
            let _ = kill(Pid::from_raw(self.pid), signal);
        }
    }

    /// SIGKILL what is left of the child's process group once the child
    /// itself is gone (a grandchild would otherwise keep the inherited
    /// sockets and take connections nobody serves). Whether anything was.
    pub(crate) fn kill_leftovers(&self) -> bool {
        killpg(Pid::from_raw(self.pid), Signal::SIGKILL).is_ok()
    }

    /// SIGKILL the child's whole process group (its grandchildren too).
    pub(crate) fn kill_group(&self) {
        let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
        let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
    }
}

/// What a child is started with.
#[derive(Debug)]
pub(crate) struct Spawn<'a> {
    pub(crate) program: &'a Path,
    pub(crate) args: &'a [OsString],
    pub(crate) env: Vec<(String, String)>,
    pub(crate) fds: &'a lameduck::systemd::PassFds,
    pub(crate) generation: u32,
}

/// Variables of the supervisor's own environment that must not reach a
/// child: the supervisor's socket-activation and notify protocol, and the
/// markers of other supervisors and of lameduck's in-process restarts.
const SCRUBBED: &[&str] = &[
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "WATCHDOG_PID",
    "WATCHDOG_USEC",
    "SERVER_STARTER_PORT",
    "SERVER_STARTER_GENERATION",
    "EINHORN_FD_COUNT",
    "LAMEDUCK_READY_FD",
    "LAMEDUCK_STATE_FD",
    "LAMEDUCK_COMMIT_FD",
    "LAMEDUCK_PARENT_PID",
    "LAMEDUCK_GENERATION",
];

pub(crate) fn spawn(spec: Spawn<'_>, reaper: &Reaper) -> std::io::Result<Child> {
    let shim = Path::new("/proc/self/exe");
    let mut command = Command::new(shim);
    command.arg(SHIM).arg(spec.program).args(spec.args);
    for name in SCRUBBED {
        command.env_remove(name);
    }
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("EINHORN_FD_") {
            command.env_remove(name);
        }
    }
    command.envs(spec.env);
    command.stdin(Stdio::null());
    spec.fds.install(&mut command);
    let parent = nix::unistd::getpid();
    // SAFETY: between fork and exec the closure calls only
    // async-signal-safe functions (`setpgid`, `prctl`, `getppid`) on plain
    // integers, and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0))?;
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            // The supervisor died before the line above: nobody is left to
            // stop this child, so it must not run.
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::other("the supervisor is gone"));
            }
            Ok(())
        });
    }
    let child = command.spawn()?;
    let pid = i32::try_from(child.id()).map_err(std::io::Error::other)?;
    let exit = reaper.watch(pid);
    // The std handle is not waited on (the reaper collects the exit);
    // dropping it closes nothing of the child's.
    drop(child);
    Ok(Child {
        generation: spec.generation,
        pid,
        started: tokio::time::Instant::now(),
        exit: Some(exit),
        exited: None,
    })
}
