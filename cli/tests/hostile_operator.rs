//! What a hostile or careless operator does to restarts and the control
//! socket, end to end against the real binary: SIGTERM in the middle of a
//! probation, a `--control` path that holds something else, a stalled
//! state handover, leaked internal variables, a PID file left behind, a
//! successor that never gets ready, a storm of restart requests, and a
//! process out of descriptors.

#![allow(clippy::unwrap_used)]
#![allow(unsafe_code)] // `pre_exec` to place descriptors and set limits in the demo.

mod support;

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::family::*;
use support::{demo_command, request, Demo};

/// A close-on-exec copy of `fd` at 100 or above, so that placing copies at
/// 3, 4, ... in the child cannot overwrite a source.
fn high(fd: &impl AsRawFd) -> OwnedFd {
    let copy =
        nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(100)).unwrap();
    // SAFETY: `fcntl` returned a new descriptor nobody else owns.
    unsafe { OwnedFd::from_raw_fd(copy) }
}

/// In the child, place each descriptor at 3, 4, ... (clearing close-on-exec
/// there).
fn place(command: &mut std::process::Command, fds: Vec<RawFd>) {
    // SAFETY: between fork and exec the closure only calls `dup2`, which is
    // async-signal-safe, on descriptors open in the parent (kept alive by
    // the caller until after the spawn); it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            for (i, fd) in fds.iter().enumerate() {
                nix::unistd::dup2(*fd, 3 + i as RawFd).map_err(std::io::Error::from)?;
            }
            Ok(())
        });
    }
}

/// `lameduck status --control PATH`: its one-line answer, or panics.
fn status(socket: &std::path::Path) -> String {
    let out = ask("status", socket);
    assert!(out.status.success(), "status failed: {out:?}");
    out.stdout.trim().to_owned()
}

/// Issue 8.1: SIGTERM to the old process while the successor is on
/// probation. The old process exits 0; the successor serves, and its
/// control socket still answers (the old process must not remove the path
/// once a successor owns it).
#[test]
fn sigterm_during_probation_leaves_the_control_socket_to_the_successor() {
    setup();
    let dir = Scratch::new("probation-term");
    let socket = dir.path("control.sock");
    let mut demo = Family::start(
        &["--control", socket.to_str().unwrap(), "--probation", "5s"],
        &[],
    );
    demo.signal(Signal::SIGHUP);
    let successor =
        successor_pid(&demo.wait_for_line("successor started", Duration::from_secs(10)));
    demo.wait_for_line("on probation", Duration::from_secs(10));
    demo.signal(Signal::SIGTERM);
    let (exit, stderr) = demo.0.wait_exit(Duration::from_secs(10));
    assert_eq!(exit.code(), Some(0), "{stderr}");
    let answer = status(&socket);
    assert!(
        answer.starts_with(&format!("ok: pid {successor},")),
        "{answer}\n{stderr}"
    );
    let hello = request(demo.addr, "GET", "/");
    assert_eq!(
        hello.body,
        format!("hello from lameduck (pid {successor})\n")
    );
}

/// Issue 8.2: a `--control` path that holds a regular file is refused, and
/// the file is left as it was.
#[test]
fn control_path_that_is_not_a_socket_is_refused_and_kept() {
    let dir = Scratch::new("control-file");
    let path = dir.path("precious.txt");
    std::fs::write(&path, "precious\n").unwrap();
    let stderr = fails_to_start(demo_command(EXE, &["--control", path.to_str().unwrap()]));
    assert!(
        stderr.contains("cannot use control socket") && stderr.contains("not a socket"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious\n");
}

/// Issue 8.2: a second instance pointed at a live instance's control socket
/// is refused, and the first keeps its socket after the second is gone.
#[test]
fn control_path_of_a_live_instance_is_refused() {
    setup();
    let dir = Scratch::new("control-live");
    let socket = dir.path("control.sock");
    let first = Family::start(&["--control", socket.to_str().unwrap()], &[]);
    let stderr = fails_to_start(demo_command(EXE, &["--control", socket.to_str().unwrap()]));
    assert!(stderr.contains("another live process answers"), "{stderr}");
    let answer = status(&socket);
    assert!(
        answer.starts_with(&format!("ok: pid {},", first.pid())),
        "{answer}"
    );
}

/// Issue 8.2: a stale socket (nobody listens) is replaced.
#[test]
fn stale_control_socket_is_replaced() {
    setup();
    let dir = Scratch::new("control-stale");
    let socket = dir.path("control.sock");
    drop(UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let demo = Family::start(&["--control", socket.to_str().unwrap()], &[]);
    let answer = status(&socket);
    assert!(
        answer.starts_with(&format!("ok: pid {},", demo.pid())),
        "{answer}"
    );
}

/// A demo started as if by a predecessor's restart (this test process is
/// its parent): a readiness pipe at 3 and a state pipe at 4 whose header
/// promises 100 bytes that never come. Returns the demo and the pipe ends
/// to keep open.
fn with_stalled_state(extra: &[&str]) -> (Demo, Vec<OwnedFd>) {
    let (ready_r, ready_w) = nix::unistd::pipe().unwrap();
    let (state_r, state_w) = nix::unistd::pipe().unwrap();
    let mut writer = std::fs::File::from(state_w);
    writer.write_all(b"lameduck-state 1 100\n").unwrap();
    let sources = vec![high(&ready_w), high(&state_r)];
    let mut args = extra.to_vec();
    if !args.contains(&"--ready-timeout") {
        args.extend(["--ready-timeout", "30s"]);
    }
    let mut command = demo_command(EXE, &args);
    command
        .env("LAMEDUCK_PARENT_PID", std::process::id().to_string())
        .env("LAMEDUCK_READY_FD", "3")
        .env("LAMEDUCK_STATE_FD", "4")
        .env("LAMEDUCK_GENERATION", "2");
    place(
        &mut command,
        sources.iter().map(AsRawFd::as_raw_fd).collect(),
    );
    let demo = Demo::spawn_unready(command);
    drop(sources);
    drop(ready_w);
    drop(state_r);
    (demo, vec![ready_r, OwnedFd::from(writer)])
}

/// Issue 8.3: a stalled state handover does not make the process deaf to
/// SIGTERM: it exits at once, without serving.
#[test]
fn sigterm_during_a_stalled_state_handover_exits() {
    let (mut demo, _keep) = with_stalled_state(&[]);
    demo.wait_for_line("reading the state handed over", Duration::from_secs(10));
    let sent = Instant::now();
    demo.signal(Signal::SIGTERM);
    let (exit, stderr) = demo.wait_exit(Duration::from_secs(5));
    assert!(sent.elapsed() < Duration::from_secs(2), "{stderr}");
    assert_eq!(exit.code(), Some(0), "{stderr}");
    assert!(stderr.contains("stopped during startup"), "{stderr}");
    assert!(!stderr.contains("ready, listening"), "{stderr}");
}

/// Issue 8.3: without a signal, the read is bounded by the ready timeout,
/// and the process says why it gave up.
#[test]
fn stalled_state_handover_is_bounded_by_the_ready_timeout() {
    let (demo, _keep) = with_stalled_state(&["--ready-timeout", "1s"]);
    let mut demo = demo;
    let (exit, stderr) = demo.wait_exit(Duration::from_secs(10));
    assert_eq!(exit.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("state: not received within 1.000s"),
        "{stderr}"
    );
}

/// Issue 8.4 and 8.5: a fresh start with the successor's variables in its
/// environment (not started by a lameduck restart) is a fresh start: it
/// writes its PID file and says generation 1. And the PID file is removed
/// when the process exits.
#[test]
fn leaked_internal_variables_change_nothing_and_the_pid_file_goes_at_exit() {
    setup();
    let dir = Scratch::new("leaked");
    let socket = dir.path("control.sock");
    let pid_file = dir.path("demo.pid");
    let mut demo = Family::start(
        &[
            "--control",
            socket.to_str().unwrap(),
            "--pid-file",
            pid_file.to_str().unwrap(),
        ],
        &[
            ("LAMEDUCK_GENERATION", "7"),
            ("LAMEDUCK_READY_FD", "1"),
            ("LAMEDUCK_PARENT_PID", "1"),
            ("LAMEDUCK_STATE_FD", "0"),
        ],
    );
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        demo.pid().to_string()
    );
    let answer = status(&socket);
    assert!(answer.contains("generation 1,"), "{answer}");
    demo.signal(Signal::SIGTERM);
    let (exit, stderr) = demo.0.wait_exit(Duration::from_secs(10));
    assert_eq!(exit.code(), Some(0), "{stderr}");
    assert!(!pid_file.exists(), "PID file left behind:\n{stderr}");
    assert!(!socket.exists(), "control socket left behind:\n{stderr}");
}

/// Issue 8.5: a PID file that cannot be written is named for what it is.
#[test]
fn pid_file_error_says_pid_file() {
    let dir = Scratch::new("pid-missing");
    let pid_file = dir.path("no/such/dir/demo.pid");
    let stderr = fails_to_start(demo_command(
        EXE,
        &["--pid-file", pid_file.to_str().unwrap()],
    ));
    assert!(stderr.contains("cannot write PID file"), "{stderr}");
    assert!(!stderr.contains("listener"), "{stderr}");
}

/// Issue 8.6: a successor that never reports ready gets no traffic: every
/// request during its startup is answered by the old process.
#[test]
fn successor_that_never_gets_ready_is_sent_no_traffic() {
    setup();
    let dir = Scratch::new("unready");
    let socket = dir.path("control.sock");
    let mut demo = Family::start(
        &[
            "--control",
            socket.to_str().unwrap(),
            "--ready-timeout",
            "3s",
        ],
        &[(FAULT, "hang")],
    );
    demo.signal(Signal::SIGHUP);
    demo.wait_for_line("successor started", Duration::from_secs(10));
    // The successor's own "ready, listening" line: it runs, it only never
    // reports ready.
    demo.wait_for_line("ready, listening", Duration::from_secs(10));
    for i in 0..20 {
        let r = request(demo.addr, "GET", "/");
        assert_eq!(
            r.body,
            demo.hello(),
            "request {i} went to the unready successor"
        );
    }
    let answer = status(&socket);
    assert!(
        answer.starts_with(&format!("ok: pid {},", demo.pid())),
        "{answer}"
    );
    demo.wait_for_line("restart failed", Duration::from_secs(10));
}

/// Issue 8.7: twenty concurrent restart requests make one restart: one
/// `done:`, and `busy:` for the others, whichever process they reach.
#[test]
fn concurrent_restart_requests_make_one_restart() {
    setup();
    let dir = Scratch::new("storm");
    let socket = dir.path("control.sock");
    let mut demo = Family::start(
        &["--control", socket.to_str().unwrap(), "--probation", "1s"],
        &[],
    );
    let clients: Vec<_> = (0..20)
        .map(|_| {
            let socket = socket.clone();
            std::thread::spawn(move || ask("restart", &socket).stdout.trim().to_owned())
        })
        .collect();
    let answers: Vec<String> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let done = answers.iter().filter(|a| a.starts_with("done:")).count();
    let busy = answers.iter().filter(|a| a.starts_with("busy:")).count();
    assert_eq!((done, busy), (1, 19), "{answers:#?}");
    let (exit, _) = demo.0.wait_exit(Duration::from_secs(10));
    assert_eq!(exit.code(), Some(0));
    // Nothing else was started meanwhile (the successor's log lines come
    // through the same stderr).
    std::thread::sleep(Duration::from_millis(500));
    demo.drain_stderr();
    let started = demo
        .stderr
        .iter()
        .filter(|l| l.contains("successor started"))
        .count();
    assert_eq!(started, 1, "{}", demo.stderr.join("\n"));
}

/// CPU time (user + system, in clock ticks) used so far by `pid`.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let (_, rest) = stat.rsplit_once(')').unwrap();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Issue 8.8: out of descriptors, the control socket's accept loop backs
/// off instead of spinning.
#[test]
fn control_accept_out_of_descriptors_does_not_spin() {
    setup();
    let dir = Scratch::new("emfile");
    let socket = dir.path("control.sock");
    let mut command = demo_command(EXE, &["--control", socket.to_str().unwrap()]);
    // SAFETY: `setrlimit` is async-signal-safe and allocates nothing.
    unsafe {
        command.pre_exec(|| {
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, 48, 48)
                .map_err(std::io::Error::from)
        });
    }
    let demo = Family(Demo::spawn(command));
    // Sessions wait up to 5 s for a command that never comes, each holding
    // a descriptor: the process runs out, and more connections queue.
    let mut held = Vec::new();
    for _ in 0..80 {
        if let Ok(conn) = UnixStream::connect(&socket) {
            held.push(conn);
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = cpu_ticks(demo.pid());
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(demo.pid()) - before;
    // A hot loop burns a whole core: ~100 ticks a second.
    assert!(
        used < 30,
        "{used} ticks of CPU in 1 s while out of descriptors"
    );
    drop(held);
}
