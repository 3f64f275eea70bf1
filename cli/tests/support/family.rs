//! A demo and every process it starts, for the restart tests: scratch
//! directories, the process tree, control-socket clients, descriptor
//! placement.

#![allow(unsafe_code)] // `pre_exec` to place descriptors at 3 in the demo.
#![allow(clippy::unwrap_used)]

use std::io;
use std::net::TcpStream;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;

use super::{request, request_on, run_to_end, Demo, Finished};

pub const EXE: &str = env!("CARGO_BIN_EXE_lameduck");
pub const FAULT: &str = "LAMEDUCK_DEMO_FAULT";
pub const NOBODY: u32 = 65534;

/// Orphans (a successor whose parent died) come back to this process, so
/// that the guards can kill and reap them.
pub fn setup() {
    nix::sys::prctl::set_child_subreaper(true).unwrap();
}

/// A directory of its own for one test, removed at the end.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("faults-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        Scratch(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `pid`'s parent, from `/proc`; `None` when it is gone.
pub fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Every live descendant of `root`.
pub fn descendants(root: i32) -> Vec<i32> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) {
            if let Some(ppid) = parent_of(pid) {
                all.push((pid, ppid));
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        out.extend(all.iter().filter(|(_, p)| *p == parent).map(|(c, _)| *c));
        i += 1;
    }
    out.remove(0);
    out
}

/// The pid in a `successor=N` log field.
pub fn successor_pid(line: &str) -> i32 {
    line.split("successor=")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no successor pid in {line:?}"))
}

/// Whether `pid` is gone: no such process, or a zombie (dead, not yet
/// reaped; reaped here when it is this process's child).
pub fn is_gone(pid: i32) -> bool {
    match kill(Pid::from_raw(pid), None) {
        Err(Errno::ESRCH) => return true,
        Err(e) => panic!("kill({pid}, 0): {e}"),
        Ok(()) => {}
    }
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true);
    if zombie {
        let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
    }
    zombie
}

/// A demo and everything it started: on drop (also when a test fails),
/// kills the demo and every successor, and reaps those that came back here.
pub struct Family(pub Demo);

impl Family {
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Family {
        Family(Demo::start_env(args, env))
    }

    pub fn pid(&self) -> u32 {
        self.0.child.id()
    }

    /// The answer body of the old process.
    pub fn hello(&self) -> String {
        format!("hello from lameduck (pid {})\n", self.pid())
    }

    /// A keep-alive connection that got one 200 from the old process.
    pub fn keep_alive(&self) -> TcpStream {
        let mut conn = TcpStream::connect(self.0.addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let r = request_on(&mut conn, "GET", "/");
        assert_eq!(r.status, 200);
        assert_eq!(r.body, self.hello());
        conn
    }

    /// The old process still serves: `conn` (opened before the fault) and a
    /// new connection both get 200 from it, neither told to close.
    pub fn assert_serves(&self, conn: &mut TcpStream, when: &str) {
        let old = request_on(conn, "GET", "/");
        assert_eq!(old.status, 200, "keep-alive connection {when}");
        assert_eq!(old.body, self.hello(), "keep-alive connection {when}");
        assert_eq!(old.header("connection"), None, "keep-alive {when}");
        let new = request(self.0.addr, "GET", "/");
        assert_eq!(new.status, 200, "new connection {when}");
        assert_eq!(new.body, self.hello(), "new connection {when}");
    }
}

impl std::ops::Deref for Family {
    type Target = Demo;
    fn deref(&self) -> &Demo {
        &self.0
    }
}

impl std::ops::DerefMut for Family {
    fn deref_mut(&mut self) -> &mut Demo {
        &mut self.0
    }
}

impl Drop for Family {
    fn drop(&mut self) {
        let root = self.pid() as i32;
        self.0.drain_stderr();
        let mut pids: Vec<i32> = self
            .0
            .stderr
            .iter()
            .filter(|l| l.contains("successor started"))
            .map(|l| successor_pid(l))
            .collect();
        pids.extend(descendants(root));
        // Once the demo is dead and reaped, its live descendants are this
        // process's children (subreaper).
        let _ = self.0.child.kill();
        let _ = self.0.child.wait();
        let me = std::process::id() as i32;
        for pid in pids {
            if parent_of(pid) == Some(me) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                let _ = waitpid(Pid::from_raw(pid), None);
            }
        }
    }
}

/// `lameduck COMMAND --control SOCKET` with the built binary.
pub fn ask(command: &str, socket: &Path) -> Finished {
    let mut client = Command::new(EXE);
    client.args([command, "--control"]).arg(socket);
    run_to_end(client, Duration::from_secs(15))
}

/// Ask for a restart and expect a `failed:` answer (exit non-zero).
pub fn restart_fails(socket: &Path) -> String {
    let out = ask("restart", socket);
    let answer = out.stdout.trim().to_owned();
    assert!(
        answer.starts_with("failed: "),
        "answer {answer:?}, stderr {:?}",
        out.stderr
    );
    assert!(!out.status.success(), "a failed restart must exit non-zero");
    answer
}

/// Keep `fd` open under a number other than 3 (so that `dup2` onto 3 in
/// the child really places it there and clears close-on-exec): the
/// descriptors to keep until the spawn, and the one to pass.
pub fn not_fd3(fd: impl AsFd) -> (Vec<OwnedFd>, RawFd) {
    let a = fd.as_fd().try_clone_to_owned().unwrap();
    let b = fd.as_fd().try_clone_to_owned().unwrap();
    let pass = if a.as_raw_fd() == 3 {
        b.as_raw_fd()
    } else {
        a.as_raw_fd()
    };
    (vec![a, b], pass)
}

/// In the child, make `fd` descriptor 3, or close 3 for `None`.
pub fn place_fd3(command: &mut Command, fd: Option<RawFd>) {
    // SAFETY: between fork and exec the closure only calls `dup2` or
    // `close`, both async-signal-safe, on plain integers; it allocates
    // nothing. `fd` is open in the parent (kept alive until after the
    // spawn), so in the child too.
    unsafe {
        command.pre_exec(move || match fd {
            Some(fd) => nix::unistd::dup2(fd, 3).map(drop).map_err(io::Error::from),
            None => match nix::unistd::close(3) {
                Ok(()) | Err(Errno::EBADF) => Ok(()),
                Err(e) => Err(io::Error::from(e)),
            },
        });
    }
}

/// A demo that must fail to start: non-zero exit (not a signal, not a
/// panic's 101), and no panic message. Returns its stderr.
pub fn fails_to_start(mut command: Command) -> String {
    command.env_remove(FAULT);
    let out = run_to_end(command, Duration::from_secs(10));
    let stderr = out.stderr;
    assert_eq!(out.status.signal(), None, "killed by a signal: {stderr}");
    assert_ne!(out.status.code(), Some(0), "started anyway: {stderr}");
    assert_ne!(out.status.code(), Some(101), "panicked: {stderr}");
    assert!(!stderr.contains("panicked"), "panicked: {stderr}");
    assert!(!stderr.contains("ready, listening"), "served: {stderr}");
    stderr
}

/// The built binary, or a copy that uid 65534 can run.
pub fn exe_for_nobody(dir: &Scratch) -> PathBuf {
    let exe = PathBuf::from(EXE);
    let reachable = exe
        .ancestors()
        .skip(1)
        .all(|d| std::fs::metadata(d).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
        && std::fs::metadata(&exe).is_ok_and(|m| m.permissions().mode() & 0o005 == 0o005);
    if reachable {
        return exe;
    }
    let copy = dir.path("lameduck-client");
    let cp = Command::new("cp").arg(&exe).arg(&copy).status().unwrap();
    assert!(cp.success());
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    copy
}

/// `lameduck status --control SOCKET` as uid/gid 65534.
pub fn status_as_nobody(exe: &Path, socket: &Path) -> Finished {
    let mut client = Command::new(exe);
    client
        .args(["status", "--control"])
        .arg(socket)
        .uid(NOBODY)
        .gid(NOBODY);
    run_to_end(client, Duration::from_secs(10))
}
