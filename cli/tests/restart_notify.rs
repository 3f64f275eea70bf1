//! Supervisor fit: `sd_notify` messages to a `NOTIFY_SOCKET` across a
//! restart and a stop, and a PID file that follows the serving process.

#![allow(clippy::unwrap_used)]

mod support;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use support::Demo;

/// Collect datagrams until one contains every needle.
fn expect(sock: &UnixDatagram, needles: &[&str], seen: &mut Vec<String>) {
    let end = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 4096];
    loop {
        let all = seen.join("\n");
        if needles.iter().all(|n| all.contains(n)) {
            return;
        }
        assert!(
            Instant::now() < end,
            "no {needles:?} in notifications {seen:?}"
        );
        if let Ok(n) = sock.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).to_string());
        }
    }
}

#[test]
fn notify_socket_and_pid_file_follow_restarts_and_stop() {
    nix::sys::prctl::set_child_subreaper(true).unwrap();
    let dir = std::env::temp_dir().join(format!("lameduck-notify-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let notify_path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&notify_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let control = dir.join("control.sock");
    let pid_file = dir.join("demo.pid");

    let mut demo = Demo::start_env(
        &[
            "--control",
            control.to_str().unwrap(),
            "--pid-file",
            pid_file.to_str().unwrap(),
            "--probation",
            "200ms",
        ],
        &[("NOTIFY_SOCKET", notify_path.to_str().unwrap())],
    );
    let first = demo.child.id();
    let mut seen = Vec::new();
    expect(&sock, &["READY=1"], &mut seen);
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        first.to_string()
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lameduck"))
        .args(["restart", "--control", control.to_str().unwrap()])
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(out.status.success(), "{answer}");
    let new: u32 = answer
        .strip_prefix("done: new pid ")
        .unwrap()
        .parse()
        .unwrap();
    expect(
        &sock,
        &["RELOADING=1", &format!("MAINPID={new}")],
        &mut seen,
    );
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        new.to_string()
    );
    let (status, stderr) = demo.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{stderr}");
    // The handover is not a stop: no STOPPING from the old process.
    assert!(!seen.join("\n").contains("STOPPING=1"), "{seen:?}");

    kill(Pid::from_raw(new as i32), Signal::SIGTERM).unwrap();
    expect(&sock, &["STOPPING=1", "EXTEND_TIMEOUT_USEC="], &mut seen);
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        match waitpid(Pid::from_raw(new as i32), None) {
            Ok(WaitStatus::Exited(_, code)) => {
                assert_eq!(code, 0);
                break;
            }
            Ok(_) => {}
            Err(e) => panic!("waitpid: {e}"),
        }
        assert!(Instant::now() < end);
    }
    // The last process to exit removes the PID file (it named that one).
    assert!(
        !pid_file.exists(),
        "PID file left behind by the last process"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
