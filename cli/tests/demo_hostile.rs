//! The demo against hostile input and careless settings: a job that can
//! never be finished, a data dir that goes away, jobs cut by the deadline
//! without a data dir, a WebSocket client that never reads, a lame duck
//! longer than the whole budget.

#![allow(clippy::unwrap_used)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::family::{fails_to_start, EXE};
use support::{demo_command, request, Demo};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lameduck-hostile-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn jobs(demo: &Demo) -> serde_json::Value {
    let r = request(demo.addr, "GET", "/jobs");
    assert_eq!(r.status, 200, "{r:?}");
    serde_json::from_str(&r.body).unwrap()
}

/// Wait until `GET /jobs` satisfies `done`.
fn wait_jobs(demo: &Demo, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let v = jobs(demo);
        if done(&v) {
            return v;
        }
        assert!(Instant::now() < end, "jobs never got there: {v}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Issue 8.10: a pending job that cannot be finished (its `done/` target
/// is a non-empty directory) is moved aside to `failed/` and shown by
/// `GET /jobs`; the service keeps serving and finishing other jobs, exits
/// 0, and the next start does not trip over it again.
#[test]
fn poison_job_is_moved_aside_and_the_service_keeps_serving() {
    let dir = temp_dir("poison");
    std::fs::create_dir_all(dir.join("pending")).unwrap();
    std::fs::create_dir_all(dir.join("done/poison-1/inside")).unwrap();
    std::fs::write(dir.join("pending/poison-1.job"), "poison-1").unwrap();
    let args = [
        "--data-dir",
        dir.to_str().unwrap(),
        "--job-duration",
        "10ms",
    ];

    let mut demo = Demo::start(&args);
    let v = wait_jobs(&demo, |v| v["failed"]["count"] == 1);
    assert_eq!(v["failed"]["latest"][0], "poison-1", "{v}");
    assert!(dir.join("failed/poison-1.job").exists());
    assert!(!dir.join("pending/poison-1.job").exists());
    assert_eq!(request(demo.addr, "GET", "/").status, 200);
    assert_eq!(request(demo.addr, "POST", "/jobs").status, 202);
    wait_jobs(&demo, |v| v["finished_by_this_process"] == 1);
    demo.signal(Signal::SIGTERM);
    let (exit, stderr) = demo.wait_exit(Duration::from_secs(10));
    assert_eq!(exit.code(), Some(0), "{stderr}");
    assert!(stderr.contains("moved aside to failed/"), "{stderr}");

    let mut again = Demo::start(&args);
    assert_eq!(jobs(&again)["failed"]["count"], 0);
    again.signal(Signal::SIGTERM);
    let (exit, stderr) = again.wait_exit(Duration::from_secs(10));
    assert_eq!(exit.code(), Some(0), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 8.10: a data dir that cannot take a job at `POST /jobs` time is a
/// 503 with the reason; the service keeps serving.
#[test]
fn unwritable_data_dir_is_a_503_not_a_shutdown() {
    let dir = temp_dir("gone");
    let mut demo = Demo::start(&["--data-dir", dir.to_str().unwrap()]);
    // As root, permissions do not stop a write: replace the directory with
    // a file instead.
    std::fs::remove_dir_all(dir.join("pending")).unwrap();
    std::fs::write(dir.join("pending"), "not a directory").unwrap();
    let r = request(demo.addr, "POST", "/jobs");
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.body.contains("cannot persist the job"), "{r:?}");
    assert_eq!(r.header("retry-after").as_deref(), Some("5"));
    assert_eq!(request(demo.addr, "GET", "/").status, 200);
    demo.signal(Signal::SIGTERM);
    let (exit, stderr) = demo.wait_exit(Duration::from_secs(10));
    assert_eq!(exit.code(), Some(0), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 8.11: without a data dir, jobs that the deadline cuts are counted
/// and named after the report, never lost silently.
#[test]
fn jobs_cut_without_a_data_dir_are_named() {
    let mut demo = Demo::start(&["--job-duration", "5s", "--grace", "1s"]);
    let ids: Vec<String> = (0..4)
        .map(|_| {
            let r = request(demo.addr, "POST", "/jobs");
            assert_eq!(r.status, 202);
            let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            v["id"].as_str().unwrap().to_owned()
        })
        .collect();
    demo.signal(Signal::SIGTERM);
    let (exit, stderr) = demo.wait_exit(Duration::from_secs(10));
    assert_eq!(exit.code(), Some(3), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains("accepted job(s) were neither finished nor persisted"))
        .unwrap_or_else(|| panic!("no lost-jobs line:\n{stderr}"));
    assert!(
        line.contains(": 4 accepted") || line.contains("demo: 4 accepted"),
        "{line}"
    );
    for id in &ids {
        assert!(line.contains(id.as_str()), "{id} not named: {line}");
    }
}

/// Issue 8.13: a WebSocket client that sends and never reads fills the
/// echo's send; SIGTERM still ends the demo promptly (the send is raced
/// against the stop and the goodbye is bounded), not at the deadline.
#[test]
fn websocket_client_that_never_reads_does_not_hold_the_drain() {
    let mut demo = Demo::start(&["--grace", "10s"]);
    let mut ws = TcpStream::connect(demo.addr).unwrap();
    ws.write_all(
        b"GET /ws HTTP/1.1\r\nhost: test\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
          sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        ws.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    // Masked (with a zero key) 64 KiB text frames, until the server stops
    // reading because its echo cannot be sent.
    let payload = vec![b'x'; 64 * 1024];
    let mut frame = vec![0x81, 0xFF];
    frame.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend_from_slice(&payload);
    ws.set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut sent = 0;
    while sent < 1000 && ws.write_all(&frame).is_ok() {
        sent += 1;
    }
    assert!(
        sent < 1000,
        "the server kept reading: the test did not fill its send"
    );

    let t0 = Instant::now();
    demo.signal(Signal::SIGTERM);
    let (exit, stderr) = demo.wait_exit(Duration::from_secs(15));
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(5), "took {took:?}:\n{stderr}");
    assert_eq!(exit.code(), Some(0), "{stderr}");
    drop(ws);
}

/// Issue 8.14: a lame duck that does not fit in the grace is refused with
/// the reason; the flag lets it through.
#[test]
fn drain_delay_longer_than_the_grace_is_refused() {
    let stderr = fails_to_start(demo_command(EXE, &["--drain-delay", "5s", "--grace", "1s"]));
    assert!(stderr.contains("does not fit in --grace"), "{stderr}");
    let mut demo = Demo::start(&[
        "--drain-delay",
        "5s",
        "--grace",
        "1s",
        "--allow-drain-delay-over-grace",
    ]);
    demo.signal(Signal::SIGTERM);
    let (exit, stderr) = demo.wait_exit(Duration::from_secs(10));
    assert_eq!(exit.code(), Some(3), "{stderr}");
}
