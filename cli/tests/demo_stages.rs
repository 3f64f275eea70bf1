//! The demo shuts down in stages: its job worker is told to stop only once
//! HTTP has drained, so a job accepted during the drain (the lame duck:
//! readiness 503, still accepting) is finished before the process exits.

#![allow(clippy::unwrap_used)]

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::{read_response, request, Demo};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lameduck-stages-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn post_job(demo: &Demo) -> String {
    let r = request(demo.addr, "POST", "/jobs");
    assert_eq!(r.status, 202, "{r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    v["id"].as_str().unwrap().to_owned()
}

/// A job posted during the lame duck, and one whose upload began before
/// the signal and ends only after the listener has closed (HTTP is
/// stopping): the worker is told to stop only once that request is
/// answered, so both are finished by this process before it exits.
#[test]
fn jobs_accepted_during_the_drain_are_finished_before_exit() {
    let dir = temp_dir("drain");
    let mut demo = Demo::start(&[
        "--drain-delay",
        "1s",
        "--job-duration",
        "200ms",
        "--data-dir",
        dir.to_str().unwrap(),
    ]);
    // A job still uploading its payload: the head and half the body.
    let mut upload = TcpStream::connect(demo.addr).unwrap();
    upload
        .write_all(b"POST /jobs HTTP/1.1\r\nhost: test\r\ncontent-length: 6\r\n\r\nabc")
        .unwrap();

    demo.signal(Signal::SIGTERM);
    // Lame duck: readiness fails, the service still accepts jobs.
    let end = Instant::now() + Duration::from_secs(5);
    while request(demo.addr, "GET", "/readyz").status != 503 {
        assert!(Instant::now() < end, "readiness never failed");
        std::thread::sleep(Duration::from_millis(10));
    }
    let in_lame_duck = post_job(&demo);
    // Stopping: the listener is closed, new connections are refused.
    let end = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(demo.addr).is_ok() {
        assert!(Instant::now() < end, "the listener never closed");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Only now does the upload end: the job is accepted while stopping.
    upload.write_all(b"def").unwrap();
    let r = read_response(&mut upload);
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.header("connection").as_deref(), Some("close"), "{r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let while_stopping = v["id"].as_str().unwrap().to_owned();

    let (exit, stderr) = demo.wait_exit(Duration::from_secs(20));
    assert_eq!(exit.code(), Some(0), "{stderr}");
    // Both were finished by this process, none left for a next one.
    let done = std::fs::read_to_string(dir.join("done.log")).unwrap_or_default();
    let pid = demo.child.id();
    for id in [&in_lame_duck, &while_stopping] {
        assert!(
            done.lines().any(|l| l == format!("{id} {pid}")),
            "{id} not finished by {pid}:\n{done}\n{stderr}"
        );
    }
    let pending = std::fs::read_dir(dir.join("pending")).unwrap().count();
    assert_eq!(pending, 0, "{stderr}");
    // The report, logged once by the library, shows the workers' stage
    // told after HTTP, and drained.
    assert_eq!(
        stderr.matches("shutdown complete in").count(),
        1,
        "{stderr}"
    );
    let workers = stderr
        .lines()
        .find(|l| l.contains("stage \"workers\""))
        .unwrap_or_else(|| panic!("no workers stage in the report:\n{stderr}"));
    assert!(workers.contains(": drained"), "{workers}");
    assert!(stderr.contains("stages 2/2 drained"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
