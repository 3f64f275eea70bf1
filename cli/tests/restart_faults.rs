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

use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::family::*;
use support::{demo_command, request, request_on, Demo};

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
    // Before the SIGTERM the old process serves its keep-alive connection
    // and new ones (the hung successor accepts nothing before it is ready).
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
