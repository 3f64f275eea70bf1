//! The signal contract, end to end: the real binary, real signals.

mod support;

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::Demo;

#[test]
fn sigterm_drains_and_exits_zero_with_a_summary() {
    let mut demo = Demo::start(&["--job-duration", "10ms"]);
    let sent = Instant::now();
    demo.signal(Signal::SIGTERM);
    let (status, stderr) = demo.wait_exit(Duration::from_secs(10));
    let took = sent.elapsed();
    assert_eq!(status.code(), Some(0), "stderr:\n{stderr}");
    assert!(stderr.contains("shutdown complete in"), "stderr:\n{stderr}");
    assert!(stderr.contains("trigger: SIGTERM"), "stderr:\n{stderr}");
    // Printed once: by the library's log line, not again by the demo.
    assert_eq!(
        stderr.matches("shutdown complete in").count(),
        1,
        "stderr:\n{stderr}"
    );
    // Generous bound: the real figure (a few ms) is measured in the note.
    assert!(
        took < Duration::from_secs(3),
        "idle demo took {took:?} to exit"
    );
}

#[test]
fn sigint_is_graceful_too() {
    let mut demo = Demo::start(&["--job-duration", "10ms"]);
    demo.signal(Signal::SIGINT);
    let (status, stderr) = demo.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "stderr:\n{stderr}");
    assert!(stderr.contains("trigger: SIGINT"), "stderr:\n{stderr}");
}

#[test]
fn second_sigterm_forces_and_names_the_slow_task() {
    let mut demo = Demo::start(&["--job-duration", "60s"]);
    support::request(demo.addr, "POST", "/jobs");
    demo.wait_for_line("working", Duration::from_secs(5));
    demo.signal(Signal::SIGTERM);
    demo.wait_for_line("phase=stopping", Duration::from_secs(10));
    demo.signal(Signal::SIGTERM);
    let (status, stderr) = demo.wait_exit(Duration::from_secs(10));
    assert_eq!(status.signal(), None, "must not die from the signal");
    assert_eq!(status.code(), Some(4), "stderr:\n{stderr}");
    assert!(
        stderr.contains("shutdown forced (second signal SIGTERM) in stopping"),
        "stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("task \"worker\" cut after"),
        "stderr:\n{stderr}"
    );
}

#[test]
fn deadline_cuts_the_slow_task_with_its_own_exit_code() {
    let mut demo = Demo::start(&["--job-duration", "60s", "--grace", "500ms"]);
    support::request(demo.addr, "POST", "/jobs");
    demo.wait_for_line("working", Duration::from_secs(5));
    let sent = Instant::now();
    demo.signal(Signal::SIGTERM);
    let (status, stderr) = demo.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(3), "stderr:\n{stderr}");
    // The drain is cut at grace − closer reserve (a tenth: 450 ms); the
    // `jobs` closer still gets its turn, in the reserve.
    assert!(sent.elapsed() >= Duration::from_millis(450));
    assert!(
        stderr.contains("shutdown forced (deadline) in stopping"),
        "stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("task \"worker\" cut after"),
        "stderr:\n{stderr}"
    );
    assert!(stderr.contains("closers 1/1 ok"), "stderr:\n{stderr}");
    // The job in hand was cut: named as lost, without a data dir.
    assert!(
        stderr.contains("1 accepted job(s) were neither finished nor persisted"),
        "stderr:\n{stderr}"
    );
}

#[test]
fn progress_is_logged_while_draining() {
    let mut demo = Demo::start(&["--job-duration", "60s", "--grace", "3s"]);
    support::request(demo.addr, "POST", "/jobs");
    demo.wait_for_line("working", Duration::from_secs(5));
    demo.signal(Signal::SIGTERM);
    let line = demo.wait_for_line("in flight", Duration::from_secs(5));
    assert!(line.contains("task \"worker\""), "{line}");
    assert!(line.contains("left"), "{line}");
    let (status, _) = demo.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(3));
}
