//! Restart faults, end to end: the real binary, real signals, real sockets.
//! Whatever goes wrong with a successor (missing binary, early exit, hang,
//! crash on probation, a second request, SIGTERM meanwhile), the old
//! process keeps serving its keep-alive connections and new ones; the
//! control socket refuses other users; inherited `LISTEN_FDS` sockets are
//! adopted, and a malformed or foreign `LISTEN_FDS` environment is handled
//! without a panic.

#![allow(clippy::unwrap_used)]
#![allow(unsafe_code)] // `pre_exec` to place descriptors at 3 in the demo.

mod support;

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;
use support::{demo_command, request, request_on, run_to_end, Demo, Finished};

const EXE: &str = env!("CARGO_BIN_EXE_lameduck");
const FAULT: &str = "LAMEDUCK_DEMO_FAULT";
const NOBODY: u32 = 65534;

/// Orphans (a successor whose parent died) come back to this process, so
/// that the guards can kill and reap them.
fn setup() {
    nix::sys::prctl::set_child_subreaper(true).unwrap();
}

/// A directory of its own for one test, removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("faults-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `pid`'s parent, from `/proc`; `None` when it is gone.
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Every live descendant of `root`.
fn descendants(root: i32) -> Vec<i32> {
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
fn successor_pid(line: &str) -> i32 {
    line.split("successor=")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no successor pid in {line:?}"))
}

/// Whether `pid` is gone: no such process, or a zombie (dead, not yet
/// reaped; reaped here when it is this process's child).
fn is_gone(pid: i32) -> bool {
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
struct Family(Demo);

impl Family {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Family {
        Family(Demo::start_env(args, env))
    }

    fn pid(&self) -> u32 {
        self.0.child.id()
    }

    /// The answer body of the old process.
    fn hello(&self) -> String {
        format!("hello from lameduck (pid {})\n", self.pid())
    }

    /// A keep-alive connection that got one 200 from the old process.
    fn keep_alive(&self) -> TcpStream {
        let mut conn = TcpStream::connect(self.0.addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let r = request_on(&mut conn, "GET", "/");
        assert_eq!(r.status, 200);
        assert_eq!(r.body, self.hello());
        conn
    }

    /// The old process still serves: `conn` (opened before the fault) and a
    /// new connection both get 200 from it, neither told to close.
    fn assert_serves(&self, conn: &mut TcpStream, when: &str) {
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
fn ask(command: &str, socket: &Path) -> Finished {
    let mut client = Command::new(EXE);
    client.args([command, "--control"]).arg(socket);
    run_to_end(client, Duration::from_secs(15))
}

/// Ask for a restart and expect a `failed:` answer (exit non-zero).
fn restart_fails(socket: &Path) -> String {
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
fn not_fd3(fd: impl AsFd) -> (Vec<OwnedFd>, RawFd) {
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
fn place_fd3(command: &mut Command, fd: Option<RawFd>) {
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
fn fails_to_start(mut command: Command) -> String {
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

/// Case 1: The binary to start the successor from is gone.
#[test]
fn successor_binary_missing_fails_cleanly_and_keeps_serving() {
    setup();
    let dir = Scratch::new("missing");
    let socket = dir.path("control.sock");
    let copy = dir.path("lameduck");
    if std::fs::hard_link(EXE, &copy).is_err() {
        // Another file system: copy in a child, so that no descriptor of
        // this process has the file open for writing (ETXTBSY).
        let cp = Command::new("cp").arg(EXE).arg(&copy).status().unwrap();
        assert!(cp.success());
    }
    let mut command = demo_command(&copy, &["--control", socket.to_str().unwrap()]);
    command.env_remove(FAULT);
    let demo = Family(Demo::spawn(command));
    let mut conn = demo.keep_alive();
    std::fs::remove_file(&copy).unwrap();

    let answer = restart_fails(&socket);
    assert!(
        answer.starts_with("failed: cannot start successor"),
        "{answer}"
    );
    assert!(answer.contains(copy.to_str().unwrap()), "{answer}");
    demo.assert_serves(&mut conn, "after the failed restart");
}

/// Case 2: The successor exits at once; the restart can be asked again.
#[test]
fn successor_exiting_before_ready_fails_cleanly_and_can_be_retried() {
    setup();
    let dir = Scratch::new("exit");
    let socket = dir.path("control.sock");
    let demo = Family::start(&["--control", socket.to_str().unwrap()], &[(FAULT, "exit")]);
    let mut conn = demo.keep_alive();
    for attempt in 1..=2 {
        let answer = restart_fails(&socket);
        assert!(
            answer.contains("exited before it was ready"),
            "attempt {attempt}: {answer}"
        );
        demo.assert_serves(&mut conn, &format!("after failed attempt {attempt}"));
    }
}

/// Case 3: The successor never reports ready: killed after the ready timeout.
#[test]
fn hung_successor_is_killed_after_the_ready_timeout() {
    setup();
    let dir = Scratch::new("hang");
    let socket = dir.path("control.sock");
    let mut demo = Family::start(
        &[
            "--control",
            socket.to_str().unwrap(),
            "--ready-timeout",
            "1s",
        ],
        &[(FAULT, "hang")],
    );
    let mut conn = demo.keep_alive();
    let asked = Instant::now();
    let answer = restart_fails(&socket);
    assert!(
        asked.elapsed() >= Duration::from_millis(900),
        "answered before the ready timeout: {answer}"
    );
    assert!(answer.contains("not ready within"), "{answer}");
    assert!(answer.ends_with("; stopped"), "{answer}");
    let pid = successor_pid(&demo.wait_for_line("successor started", Duration::from_secs(1)));
    assert!(answer.contains(&format!("pid {pid}")), "{answer}");
    // The old process waits for the stopped successor before it answers.
    assert!(is_gone(pid), "hung successor {pid} still runs");
    demo.assert_serves(&mut conn, "after the hung successor was stopped");
    // The stopped successor left the control socket to its predecessor.
    assert!(socket.exists(), "the control socket path is gone");
    assert!(restart_fails(&socket).contains("not ready within"));
}

/// Case 4: The successor dies on probation: the old process resumes accepting.
#[test]
fn successor_crashing_on_probation_rolls_back() {
    setup();
    let dir = Scratch::new("crash");
    let socket = dir.path("control.sock");
    let demo = Family::start(
        &["--control", socket.to_str().unwrap(), "--probation", "2s"],
        &[(FAULT, "crash-after-ready")],
    );
    let mut conn = demo.keep_alive();
    let answer = restart_fails(&socket);
    assert!(answer.contains("exited during probation"), "{answer}");
    assert!(answer.ends_with("; resumed accepting"), "{answer}");
    // Rollback: the old process accepts again, and is the only one.
    for i in 0..5 {
        let r = request(demo.addr, "GET", "/");
        assert_eq!(r.status, 200, "new connection {i} after rollback");
        assert_eq!(r.body, demo.hello(), "new connection {i} after rollback");
    }
    demo.assert_serves(&mut conn, "after the rollback");
}

/// Case 5: A restart asked while one is in progress gets `busy:`.
#[test]
fn second_restart_during_a_restart_is_busy() {
    setup();
    let dir = Scratch::new("busy");
    let socket = dir.path("control.sock");
    let mut demo = Family::start(
        &[
            "--control",
            socket.to_str().unwrap(),
            "--ready-timeout",
            "2s",
        ],
        &[(FAULT, "hang")],
    );
    let mut conn = demo.keep_alive();
    demo.signal(Signal::SIGHUP);
    let pid = successor_pid(&demo.wait_for_line("successor started", Duration::from_secs(5)));

    let out = ask("restart", &socket);
    let answer = out.stdout.trim();
    demo.drain_stderr();
    assert!(
        answer.starts_with("busy:"),
        "answer {out:?}; demo stderr:\n{}",
        demo.stderr.join("\n")
    );
    assert!(!out.status.success(), "busy must exit non-zero");
    // The old process serves its keep-alive connection meanwhile.
    let r = request_on(&mut conn, "GET", "/");
    assert_eq!(r.status, 200, "keep-alive during the restart");
    assert_eq!(r.body, demo.hello(), "keep-alive during the restart");

    // The first restart then fails on its own, and the old one still serves.
    let failed = demo.wait_for_line("restart failed", Duration::from_secs(4));
    assert!(failed.contains("not ready within"), "{failed}");
    assert!(is_gone(pid), "hung successor {pid} still runs");
    demo.assert_serves(&mut conn, "after the busy answer and the failure");
}

/// Case 6: SIGTERM during a restart: the old process exits 0 at once and kills
/// the successor.
#[test]
fn sigterm_during_a_restart_exits_zero_and_kills_the_successor() {
    setup();
    let dir = Scratch::new("term");
    let socket = dir.path("control.sock");
    let mut demo = Family::start(
        &[
            "--control",
            socket.to_str().unwrap(),
            "--ready-timeout",
            "5s",
        ],
        &[(FAULT, "hang")],
    );
    let mut conn = demo.keep_alive();
    demo.signal(Signal::SIGHUP);
    let pid = successor_pid(&demo.wait_for_line("successor started", Duration::from_secs(5)));
    // Before the SIGTERM the old process serves its keep-alive connection;
    // a new connection is answered (by either process: the hung successor
    // serves too, it only never says ready).
    let r = request_on(&mut conn, "GET", "/");
    assert_eq!(r.status, 200, "keep-alive during the restart");
    assert_eq!(r.body, demo.hello(), "keep-alive during the restart");
    assert_eq!(request(demo.addr, "GET", "/").status, 200);

    let sent = Instant::now();
    demo.signal(Signal::SIGTERM);
    let (status, stderr) = demo.wait_exit(Duration::from_secs(4));
    let took = sent.elapsed();
    assert_eq!(status.code(), Some(0), "stderr:\n{stderr}");
    assert!(took < Duration::from_secs(2), "took {took:?}:\n{stderr}");
    let end = Instant::now() + Duration::from_secs(1);
    while !is_gone(pid) {
        assert!(
            Instant::now() < end,
            "successor {pid} survives its predecessor's SIGTERM:\n{stderr}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The built binary, or a copy that uid 65534 can run.
fn exe_for_nobody(dir: &Scratch) -> PathBuf {
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
fn status_as_nobody(exe: &Path, socket: &Path) -> Finished {
    let mut client = Command::new(exe);
    client
        .args(["status", "--control"])
        .arg(socket)
        .uid(NOBODY)
        .gid(NOBODY);
    run_to_end(client, Duration::from_secs(10))
}

/// Case 7: The control socket refuses a client of another user.
#[test]
fn control_socket_refuses_another_user() {
    setup();
    assert!(
        nix::unistd::geteuid().is_root(),
        "needs root to run as 65534"
    );
    let dir = Scratch::new("uid");
    let socket = dir.path("control.sock");
    let exe = exe_for_nobody(&dir);
    let demo = Family::start(&["--control", socket.to_str().unwrap()], &[]);
    let mut conn = demo.keep_alive();

    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "control socket mode");
    let out = status_as_nobody(&exe, &socket);
    assert!(
        !out.status.success(),
        "connected through a 0600 socket: {out:?}"
    );
    assert!(!out.stdout.contains("ok:"), "{out:?}");

    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = status_as_nobody(&exe, &socket);
    let output = format!("{}{}", out.stdout, out.stderr);
    assert!(
        output.contains(&format!("refused: peer uid {NOBODY}")),
        "{out:?}"
    );
    assert!(!out.status.success(), "{out:?}");

    // The owner still gets an answer, and the service still serves.
    let own = ask("status", &socket);
    assert!(
        own.stdout
            .starts_with(&format!("ok: pid {}, generation 1", demo.pid())),
        "{own:?}"
    );
    demo.assert_serves(&mut conn, "after the refused client");
}

/// Case 8: systemd-style socket activation: the demo serves on the socket it
/// was given as descriptor 3.
#[test]
fn socket_activation_serves_on_the_inherited_socket() {
    setup();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let given = listener.local_addr().unwrap();
    let (keep, fd) = not_fd3(&listener);
    let mut command = demo_command(EXE, &[]);
    command
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "http")
        .env_remove("LISTEN_PID")
        .env_remove(FAULT);
    place_fd3(&mut command, Some(fd));
    let mut demo = Family(Demo::spawn(command));
    // Only the demo holds the socket now.
    drop(keep);
    drop(listener);
    assert_eq!(demo.addr, given, "ready line: {:?}", demo.stderr.last());
    let r = request(given, "GET", "/");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, demo.hello());
    demo.drain_stderr();
    assert!(
        demo.stderr
            .iter()
            .any(|l| l.contains("adopted inherited listener")),
        "stderr:\n{}",
        demo.stderr.join("\n")
    );
}

/// Case 9a: `LISTEN_FDS` that is not a number.
#[test]
fn listen_fds_not_a_number_is_a_clear_error() {
    let mut command = demo_command(EXE, &[]);
    command.env("LISTEN_FDS", "abc").env_remove("LISTEN_PID");
    let stderr = fails_to_start(command);
    assert!(stderr.contains("LISTEN_FDS"), "stderr:\n{stderr}");
    assert!(stderr.contains("abc"), "stderr:\n{stderr}");
}

/// Case 9b: `LISTEN_FDS=1` with no descriptor 3 open.
#[test]
fn listen_fds_without_the_descriptor_is_a_clear_error() {
    let mut command = demo_command(EXE, &[]);
    command
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "http")
        .env_remove("LISTEN_PID");
    place_fd3(&mut command, None);
    let stderr = fails_to_start(command);
    assert!(stderr.contains("inherited fd 3"), "stderr:\n{stderr}");
}

/// Case 9c: Descriptor 3 is a regular file.
#[test]
fn listen_fds_on_a_regular_file_is_not_a_socket() {
    let dir = Scratch::new("file");
    let file = std::fs::File::create(dir.path("not-a-socket")).unwrap();
    let (keep, fd) = not_fd3(&file);
    let mut command = demo_command(EXE, &[]);
    command
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "http")
        .env_remove("LISTEN_PID");
    place_fd3(&mut command, Some(fd));
    let stderr = fails_to_start(command);
    drop(keep);
    assert!(stderr.contains("not a socket"), "stderr:\n{stderr}");
}

/// Case 9d: More names than descriptors.
#[test]
fn listen_fdnames_of_the_wrong_length_is_a_clear_error() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let (keep, fd) = not_fd3(&listener);
    let mut command = demo_command(EXE, &[]);
    command
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "a:b")
        .env_remove("LISTEN_PID");
    place_fd3(&mut command, Some(fd));
    let stderr = fails_to_start(command);
    drop(keep);
    assert!(stderr.contains("LISTEN_FDNAMES"), "stderr:\n{stderr}");
}

/// Case 9e: `LISTEN_FDS` meant for another process (`LISTEN_PID=1`) is ignored:
/// the demo binds its own address.
#[test]
fn listen_fds_for_another_pid_is_ignored() {
    setup();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let foreign: SocketAddr = listener.local_addr().unwrap();
    let (keep, fd) = not_fd3(&listener);
    let mut command = demo_command(EXE, &[]);
    command
        .env("LISTEN_PID", "1")
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "http")
        .env_remove(FAULT);
    place_fd3(&mut command, Some(fd));
    let mut demo = Family(Demo::spawn(command));
    drop(keep);
    assert_ne!(demo.addr, foreign, "adopted a socket meant for pid 1");
    assert_eq!(demo.addr.ip(), foreign.ip());
    let r = request(demo.addr, "GET", "/");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, demo.hello());
    demo.drain_stderr();
    assert!(
        demo.stderr
            .iter()
            .any(|l| l.contains("LISTEN_FDS is for another process")),
        "stderr:\n{}",
        demo.stderr.join("\n")
    );
    drop(listener);
}
