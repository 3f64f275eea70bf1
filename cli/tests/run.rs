//! `lameduck run -- CMD`, end to end: the real supervisor, a real child in
//! another language (a Python standard-library server,
//! `tests/fixtures/child.py`), real signals and sockets. Every fault the
//! issue lists: a command that is not there, a child that exits at once,
//! never gets ready, crashes on probation, ignores SIGTERM or leaves a
//! grandchild with the socket; a restart storm; a stop during a restart;
//! control-socket garbage; a malformed `LISTEN_FDS`; a `--control` path
//! that is a file.

#![allow(clippy::unwrap_used)]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::family::{ask, fails_to_start, is_gone, setup, Scratch, EXE};
use support::{request, run_to_end, Demo};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/child.py");

/// `lameduck run ARGS -- python3 child.py`, with the fixture's variables.
fn run_command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(EXE);
    command.arg("run");
    if !args.contains(&"--listen") {
        command.args(["--listen", "127.0.0.1:0"]);
    }
    command
        .args(args)
        .args(["--", "python3", FIXTURE])
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .envs(env.iter().copied());
    command
}

/// A running supervisor; on drop, it and everything it started are killed.
struct Run {
    demo: Demo,
    addr: SocketAddr,
}

impl Run {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut demo = Demo::spawn_unready(run_command(args, env));
        let line = demo.wait_for_line("lameduck run: ready", Duration::from_secs(20));
        let addr = line
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.trim_end_matches(';').parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        Run { demo, addr }
    }

    /// The pid of the child that answers a new connection.
    fn child_pid(&self) -> u32 {
        let r = request(self.addr, "GET", "/");
        assert_eq!(r.status, 200, "{r:?}");
        r.body
            .trim()
            .strip_suffix(')')
            .and_then(|b| b.rsplit(' ').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no pid in {:?}", r.body))
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let root = self.demo.child.id() as i32;
        let family = support::family::descendants(root);
        let _ = self.demo.child.kill();
        let _ = self.demo.child.wait();
        for pid in family {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// A one-shot fault for the next child that starts.
fn fault(dir: &Scratch, what: &str) -> PathBuf {
    let path = dir.path("fault");
    std::fs::write(&path, what).unwrap();
    path
}

fn restart(socket: &Path) -> String {
    ask("restart", socket).stdout.trim().to_owned()
}

/// What a child saw: its pid, environment and whether fd 3 listens.
fn recorded(dir: &Path) -> Vec<serde_json::Value> {
    let mut out: Vec<serde_json::Value> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("env-"))
        .map(|e| serde_json::from_str(&std::fs::read_to_string(e.path()).unwrap()).unwrap())
        .collect();
    out.sort_by_key(|v| v["pid"].as_u64());
    out
}

#[test]
fn child_gets_the_sockets_in_every_protocol_and_nothing_else() {
    setup();
    let dir = Scratch::new("run-env");
    let record = dir.path("record");
    std::fs::create_dir_all(&record).unwrap();
    let run = Run::start(
        &["--listen", "web=127.0.0.1:0"],
        &[
            ("FIXTURE_DIR", record.to_str().unwrap()),
            ("LAMEDUCK_READY_FD", "7"),
            ("LISTEN_FDS", "9"),
            ("LISTEN_PID", "1"),
            ("EINHORN_FD_5", "5"),
        ],
    );
    let pid = run.child_pid();
    let seen = recorded(&record);
    assert_eq!(seen.len(), 1);
    let env = &seen[0]["env"];
    assert_eq!(seen[0]["pid"], pid);
    assert_eq!(seen[0]["fd3_listening"], true);
    assert_eq!(env["LISTEN_PID"], pid.to_string());
    assert_eq!(env["LISTEN_FDS"], "1");
    assert_eq!(env["LISTEN_FDNAMES"], "web");
    assert_eq!(env["EINHORN_FD_COUNT"], "1");
    assert_eq!(env["EINHORN_FD_0"], "3");
    assert_eq!(env["SERVER_STARTER_PORT"], format!("{}=3", run.addr));
    let notify = env["NOTIFY_SOCKET"].as_str().unwrap();
    assert!(notify.contains("lameduck-run-"), "{notify}");
    for leaked in ["LAMEDUCK_READY_FD", "EINHORN_FD_5"] {
        assert!(env.get(leaked).is_none(), "{leaked} leaked into the child");
    }
}

/// Restarts under a client loop that opens a new connection per request:
/// every request is answered, and the pid changes each time.
#[test]
fn restarts_lose_no_request() {
    setup();
    let dir = Scratch::new("run-restarts");
    let socket = dir.path("control.sock");
    let run = Run::start(
        &[
            "--control",
            socket.to_str().unwrap(),
            "--probation",
            "200ms",
        ],
        &[],
    );
    let addr = run.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut ok, mut failed) = (0u32, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match std::panic::catch_unwind(|| request(addr, "GET", "/")) {
                        Ok(r) if r.status == 200 => ok += 1,
                        Ok(r) => failed.push(format!("{r:?}")),
                        Err(_) => failed.push("connection failed".to_owned()),
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let mut pids = vec![run.child_pid()];
    for _ in 0..3 {
        let answer = restart(&socket);
        let pid: u32 = answer
            .strip_prefix("done: new pid ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{answer}"));
        pids.push(pid);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut run = run;
    let line = run
        .demo
        .wait_for_line("restart to generation 4", Duration::from_secs(10));
    assert!(
        line.contains(&format!("pid {} ready in", pids[3])),
        "{line}"
    );
    assert!(
        line.contains(&format!("pid {} drained in", pids[2])),
        "{line}"
    );
    assert!(line.ends_with("; ok"), "{line}");
    let mut total = 0;
    for c in clients {
        let (ok, failed) = c.join().unwrap();
        assert!(failed.is_empty(), "failed requests: {failed:?}");
        total += ok;
    }
    assert!(total > 0);
    assert_eq!(run.child_pid(), pids[3]);
    for old in &pids[..3] {
        let end = Instant::now() + Duration::from_secs(5);
        while !is_gone(*old as i32) {
            assert!(Instant::now() < end, "old child {old} still runs");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[test]
fn command_not_found_is_refused_before_anything_binds() {
    // Hold the port: an error about the address would mean the supervisor
    // bound before it checked the command.
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().to_string();
    let mut command = Command::new(EXE);
    command.args(["run", "--listen", &port, "--", "/no/such/server"]);
    let out = run_to_end(command, Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("/no/such/server"), "{}", out.stderr);
    assert!(!out.stderr.contains("bind"), "{}", out.stderr);

    let dir = Scratch::new("run-noexec");
    let file = dir.path("server.txt");
    std::fs::write(&file, "not a program").unwrap();
    let mut command = Command::new(EXE);
    command.args(["run", "--listen", &port, "--"]).arg(&file);
    let out = run_to_end(command, Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("not executable"), "{}", out.stderr);
}

#[test]
fn child_that_always_exits_is_given_up_on() {
    let mut command = run_command(&["--max-failures", "3"], &[("FIXTURE_ALWAYS", "exit")]);
    command.env_remove("FIXTURE_FAULT");
    let out = run_to_end(command, Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("gave up after 3 failure(s)"),
        "{}",
        out.stderr
    );
    assert_eq!(
        out.stderr
            .matches("exited before it was ready (exit 3)")
            .count(),
        3,
        "{}",
        out.stderr
    );
}

#[test]
fn child_that_never_gets_ready_is_stopped_at_the_ready_timeout() {
    let command = run_command(
        &["--max-failures", "1", "--ready-timeout", "1s"],
        &[("FIXTURE_ALWAYS", "hang")],
    );
    let t0 = Instant::now();
    let out = run_to_end(command, Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("was not ready within 1s"),
        "{}",
        out.stderr
    );
    assert!(t0.elapsed() < Duration::from_secs(10), "{}", out.stderr);
}

#[test]
fn restart_whose_child_crashes_on_probation_keeps_the_old_child() {
    setup();
    let dir = Scratch::new("run-probation");
    let socket = dir.path("control.sock");
    let fault_file = fault(&dir, "");
    let run = Run::start(
        &["--control", socket.to_str().unwrap(), "--probation", "1s"],
        &[("FIXTURE_FAULT", fault_file.to_str().unwrap())],
    );
    let old = run.child_pid();
    std::fs::write(&fault_file, "crash-after-ready").unwrap();
    let answer = restart(&socket);
    assert!(
        answer.starts_with("failed: ") && answer.contains("during probation"),
        "{answer}"
    );
    assert_eq!(run.child_pid(), old);
    // Not a crash of the serving child: no respawn, and restarts work again.
    let answer = restart(&socket);
    assert!(answer.starts_with("done: new pid "), "{answer}");
}

#[test]
fn old_child_that_ignores_sigterm_is_killed_at_the_grace() {
    setup();
    let dir = Scratch::new("run-ignore");
    let socket = dir.path("control.sock");
    let fault_file = fault(&dir, "ignore-term");
    let mut run = Run::start(
        &[
            "--control",
            socket.to_str().unwrap(),
            "--probation",
            "100ms",
            "--grace",
            "1s",
        ],
        &[("FIXTURE_FAULT", fault_file.to_str().unwrap())],
    );
    let old = run.child_pid();
    let answer = restart(&socket);
    assert!(answer.starts_with("done: "), "{answer}");
    let new: u32 = answer["done: new pid ".len()..].parse().unwrap();
    let status = ask("status", &socket).stdout;
    assert!(
        status.contains(&format!("serving: generation 2 pid {new} ready"))
            && status.contains(&format!("stopping: generation 1 pid {old}")),
        "{status}"
    );
    run.demo
        .wait_for_line("did not stop in time", Duration::from_secs(5));
    let line = run
        .demo
        .wait_for_line("restart to generation 2", Duration::from_secs(5));
    assert!(line.contains("old child killed at the grace"), "{line}");
    let end = Instant::now() + Duration::from_secs(3);
    while !is_gone(old as i32) {
        assert!(Instant::now() < end, "old child {old} still runs");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A grandchild that keeps the socket and ignores SIGTERM dies with its
/// child's process group at the deadline of a stop.
#[test]
fn grandchild_holding_the_socket_is_killed_with_the_group() {
    setup();
    let dir = Scratch::new("run-grandchild");
    let fault_file = fault(&dir, "grandchild");
    let mut run = Run::start(
        &["--grace", "1s"],
        &[("FIXTURE_FAULT", fault_file.to_str().unwrap())],
    );
    let root = run.demo.child.id() as i32;
    let family = support::family::descendants(root);
    assert!(family.len() >= 2, "no grandchild: {family:?}");
    run.demo.signal(Signal::SIGTERM);
    let (status, stderr) = run.demo.wait_exit(Duration::from_secs(10));
    // The child itself stopped; only its grandchild had to be killed.
    assert!(matches!(status.code(), Some(0) | Some(3)), "{stderr}");
    // SIGKILL is sent; its delivery is the kernel's, a moment later.
    let end = Instant::now() + Duration::from_secs(3);
    for pid in family {
        while !is_gone(pid) {
            assert!(Instant::now() < end, "{pid} survived the stop:\n{stderr}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// 50 SIGHUPs in a second: one restart at a time, the others refused as
/// busy; the service keeps answering and ends with one child.
#[test]
fn restart_storm_runs_one_restart_at_a_time() {
    setup();
    // A grace of 5 s and a ready timeout of 10 s: a child that does not
    // stop (or start) in time is killed then, so "one child left" is the
    // supervisor's bound, not Python's speed on a loaded machine.
    let mut run = Run::start(
        &[
            "--probation",
            "200ms",
            "--grace",
            "5s",
            "--ready-timeout",
            "10s",
        ],
        &[],
    );
    for _ in 0..50 {
        run.demo.signal(Signal::SIGHUP);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(request(run.addr, "GET", "/").status, 200);
    }
    run.demo.drain_stderr();
    let busy = run
        .demo
        .stderr
        .iter()
        .filter(|l| l.contains("busy: a restart is already in progress"))
        .count();
    assert!(busy > 0, "{}", run.demo.stderr.join("\n"));
    // The last restart of the storm finishes (start, probation, the old
    // child's stop, at most the grace); then one child is left.
    let end = Instant::now() + Duration::from_secs(25);
    loop {
        let children = support::family::descendants(run.demo.child.id() as i32);
        if children.len() == 1 {
            break;
        }
        if Instant::now() >= end {
            run.demo.drain_stderr();
            let states: Vec<String> = children
                .iter()
                .map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default())
                .collect();
            panic!(
                "children after the storm: {states:?}\n{}",
                run.demo.stderr.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(request(run.addr, "GET", "/").status, 200);
}

/// SIGTERM while a restart waits for its new child: both children stop,
/// the supervisor exits 0 at once.
#[test]
fn stop_during_a_restart_stops_both_children() {
    setup();
    let dir = Scratch::new("run-stop-restart");
    let fault_file = fault(&dir, "");
    let mut run = Run::start(&[], &[("FIXTURE_FAULT", fault_file.to_str().unwrap())]);
    std::fs::write(&fault_file, "slow-ready").unwrap();
    run.demo.signal(Signal::SIGHUP);
    run.demo
        .wait_for_line("generation=2", Duration::from_secs(5));
    let family = support::family::descendants(run.demo.child.id() as i32);
    assert_eq!(family.len(), 2, "{family:?}");
    let t0 = Instant::now();
    run.demo.signal(Signal::SIGTERM);
    let (status, stderr) = run.demo.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(t0.elapsed() < Duration::from_secs(3), "{stderr}");
    let end = Instant::now() + Duration::from_secs(3);
    for pid in family {
        while !is_gone(pid) {
            assert!(Instant::now() < end, "{pid} survived:\n{stderr}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The lame duck: `/readyz` fails at once while the child still serves;
/// then the child stops and the supervisor exits with its code.
#[test]
fn stop_is_lame_duck_first_then_bounded() {
    let health = TcpListener::bind("127.0.0.1:0").unwrap();
    let health_addr = health.local_addr().unwrap();
    drop(health);
    let mut run = Run::start(
        &[
            "--health",
            &health_addr.to_string(),
            "--drain-delay",
            "1s",
            "--grace",
            "5s",
            "--json",
        ],
        &[],
    );
    assert_eq!(request(health_addr, "GET", "/readyz").status, 200);
    let t0 = Instant::now();
    run.demo.signal(Signal::SIGTERM);
    run.demo
        .wait_for_line("stopping: lame duck first", Duration::from_secs(5));
    assert_eq!(request(health_addr, "GET", "/readyz").status, 503);
    assert_eq!(request(health_addr, "GET", "/livez").status, 200);
    assert_eq!(
        request(run.addr, "GET", "/").status,
        200,
        "child serves during the lame duck"
    );
    let (status, stderr) = run.demo.wait_exit(Duration::from_secs(10));
    let took = t0.elapsed();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(4),
        "{took:?}\n{stderr}"
    );
    assert!(stderr.contains("stopped in"), "{stderr}");
    let mut stdout = String::new();
    run.demo
        .child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let exit: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(exit["event"], "exit", "{stdout}");
    assert_eq!(exit["exit"], 0, "{stdout}");
    assert_eq!(exit["trigger"], "SIGTERM", "{stdout}");
}

/// A second signal forces: SIGKILL to the child (here one that ignores
/// SIGTERM), exit 4 at once.
#[test]
fn second_signal_forces() {
    setup();
    let mut run = Run::start(&["--grace", "30s"], &[("FIXTURE_ALWAYS", "ignore-term")]);
    let child = run.child_pid();
    run.demo.signal(Signal::SIGTERM);
    run.demo
        .wait_for_line("lame duck over", Duration::from_secs(5));
    let t0 = Instant::now();
    run.demo.signal(Signal::SIGINT);
    let (status, stderr) = run.demo.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(4), "{stderr}");
    assert!(t0.elapsed() < Duration::from_secs(2), "{stderr}");
    let end = Instant::now() + Duration::from_secs(3);
    while !is_gone(child as i32) {
        assert!(Instant::now() < end, "child {child} survived the force");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A child that dies on its own is started again; the socket never closes,
/// so a client that connects meanwhile waits and is answered.
#[test]
fn crashed_child_is_restarted_and_no_connect_is_refused() {
    setup();
    let run = Run::start(&[], &[]);
    let first = run.child_pid();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(first as i32), Signal::SIGKILL).unwrap();
    // Straight away: the kernel queues the connection until the next child
    // accepts it.
    let r = request(run.addr, "GET", "/");
    assert_eq!(r.status, 200, "{r:?}");
    assert_ne!(run.child_pid(), first);
}

#[test]
fn control_socket_answers_garbage_and_refuses_a_file() {
    setup();
    let dir = Scratch::new("run-control");
    let socket = dir.path("control.sock");
    let _run = Run::start(&["--control", socket.to_str().unwrap()], &[]);
    for garbage in [
        &b"make-coffee\n"[..],
        b"\x00\xff\xfe garbage",
        &[b'x'; 10_000],
    ] {
        let mut conn = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let _ = conn.write_all(garbage);
        let _ = conn.shutdown(std::net::Shutdown::Write);
        let mut answer = String::new();
        let _ = conn.read_to_string(&mut answer);
        assert!(
            answer.starts_with("error: unknown command"),
            "{answer:?} for {garbage:?}"
        );
    }
    let status = ask("status", &socket);
    assert!(
        status.stdout.starts_with("ok: supervisor pid"),
        "{status:?}"
    );

    let file = dir.path("precious");
    std::fs::write(&file, "keep me").unwrap();
    let stderr = fails_to_start(run_command(&["--control", file.to_str().unwrap()], &[]));
    assert!(stderr.contains("not a socket"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
}

#[test]
fn malformed_listen_fds_for_the_supervisor_is_a_clear_error() {
    let mut command = run_command(&[], &[]);
    command.env("LISTEN_FDS", "two").env_remove("LISTEN_PID");
    let stderr = fails_to_start(command);
    assert!(stderr.contains("LISTEN_FDS"), "{stderr}");
}

/// A SIGKILLed supervisor leaves no child behind (parent-death signal).
#[test]
fn children_do_not_outlive_a_killed_supervisor() {
    setup();
    let mut run = Run::start(&[], &[]);
    let child = run.child_pid();
    run.demo.signal(Signal::SIGKILL);
    let _ = run.demo.wait_exit(Duration::from_secs(5));
    let end = Instant::now() + Duration::from_secs(5);
    while !is_gone(child as i32) {
        assert!(
            Instant::now() < end,
            "child {child} outlived its supervisor"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A Unix listener: served, refused to a second supervisor while live,
/// removed at exit.
#[test]
fn unix_listener_is_served_guarded_and_removed() {
    setup();
    let dir = Scratch::new("run-unix");
    let path = dir.path("app.sock");
    let listen = format!("unix:{}", path.display());
    let mut demo = Demo::spawn_unready(run_command(&["--listen", &listen], &[]));
    demo.wait_for_line("lameduck run: ready", Duration::from_secs(20));
    let mut conn = std::os::unix::net::UnixStream::connect(&path).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"),
        "{answer}"
    );

    let stderr = fails_to_start(run_command(&["--listen", &listen], &[]));
    assert!(stderr.contains("another live process listens"), "{stderr}");

    demo.signal(Signal::SIGTERM);
    let (status, stderr) = demo.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(!path.exists(), "socket path left behind");
}

/// The supervisor's control socket is owner-only and checks its peers.
#[test]
fn control_socket_refuses_another_user() {
    setup();
    let dir = Scratch::new("run-uid");
    let socket = dir.path("control.sock");
    let exe = support::family::exe_for_nobody(&dir);
    let _run = Run::start(&["--control", socket.to_str().unwrap()], &[]);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = support::family::status_as_nobody(&exe, &socket);
    let output = format!("{}{}", out.stdout, out.stderr);
    assert!(output.contains("refused: peer uid 65534"), "{out:?}");
    assert!(!out.status.success());
    assert!(ask("status", &socket)
        .stdout
        .starts_with("ok: supervisor pid"));
}

/// The supervisor speaks sd_notify for itself: READY=1 once the first child
/// is ready, RELOADING=1 with MONOTONIC_USEC and READY=1 around a restart,
/// STOPPING=1 on stop; its own NOTIFY_SOCKET never reaches a child.
#[test]
fn supervisor_notifies_its_service_manager() {
    setup();
    let dir = Scratch::new("run-notify");
    let notify_path = dir.path("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let socket = dir.path("control.sock");
    let mut run = Run::start(
        &[
            "--control",
            socket.to_str().unwrap(),
            "--probation",
            "100ms",
        ],
        &[("NOTIFY_SOCKET", notify_path.to_str().unwrap())],
    );
    let mut seen = String::new();
    let expect = |needles: &[&str], seen: &mut String| {
        let end = Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 4096];
        while !needles.iter().all(|n| seen.contains(n)) {
            assert!(Instant::now() < end, "no {needles:?} in {seen:?}");
            if let Ok(n) = sock.recv(&mut buf) {
                seen.push_str(&String::from_utf8_lossy(&buf[..n]));
                seen.push('\n');
            }
        }
    };
    expect(&["READY=1"], &mut seen);
    seen.clear();
    assert!(restart(&socket).starts_with("done: "));
    expect(&["RELOADING=1", "MONOTONIC_USEC=", "READY=1"], &mut seen);
    seen.clear();
    run.demo.signal(Signal::SIGTERM);
    expect(&["STOPPING=1"], &mut seen);
    let (status, stderr) = run.demo.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{stderr}");
}

/// `--ready http://admin/readyz`: each child gets a private `admin` socket
/// for the probe, and `/readyz` on `--health` keeps mirroring the serving
/// child's answer.
#[test]
fn probe_on_a_private_admin_socket_and_readyz_mirrors_it() {
    setup();
    let dir = Scratch::new("run-admin");
    let unready = dir.path("unready");
    let record = dir.path("record");
    std::fs::create_dir_all(&record).unwrap();
    let health = TcpListener::bind("127.0.0.1:0").unwrap();
    let health_addr = health.local_addr().unwrap();
    drop(health);
    let run = Run::start(
        &[
            "--ready",
            "http://admin/readyz",
            "--health",
            &health_addr.to_string(),
        ],
        &[
            ("FIXTURE_UNREADY", unready.to_str().unwrap()),
            ("FIXTURE_DIR", record.to_str().unwrap()),
        ],
    );
    let seen = recorded(&record);
    assert_eq!(seen[0]["env"]["LISTEN_FDNAMES"], "http:admin");
    assert_eq!(seen[0]["env"]["LISTEN_FDS"], "2");
    assert_eq!(request(health_addr, "GET", "/readyz").status, 200);
    let wait_for = |want: u16| {
        let end = Instant::now() + Duration::from_secs(10);
        while request(health_addr, "GET", "/readyz").status != want {
            assert!(Instant::now() < end, "/readyz never {want}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    std::fs::write(&unready, "").unwrap();
    wait_for(503);
    assert_eq!(request(run.addr, "GET", "/").status, 200, "still serves");
    std::fs::remove_file(&unready).unwrap();
    wait_for(200);
}
