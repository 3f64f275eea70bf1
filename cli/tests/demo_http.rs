//! The demo as a user runs it: a real process, real sockets, real signals.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::{request, request_on, Demo};

/// CONFORMANCE 24: SIGTERM with a 2 s request, an idle keep-alive
/// connection and an SSE stream open.
#[test]
fn sigterm_end_to_end_with_request_idle_connection_and_sse() {
    let mut demo = Demo::start(&[]);
    let addr = demo.addr;

    // An idle keep-alive connection, used once.
    let mut idle = TcpStream::connect(addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let first = request_on(&mut idle, "GET", "/");
    assert_eq!(first.status, 200);
    assert_eq!(first.header("connection"), None);

    // An SSE stream.
    let mut sse = TcpStream::connect(addr).unwrap();
    sse.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(sse, "GET /events HTTP/1.1\r\nhost: t\r\n\r\n").unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("event: tick") {
        let n = sse.read(&mut buf).unwrap();
        assert!(n > 0, "SSE ended early");
        seen.extend_from_slice(&buf[..n]);
    }

    // A 2 s request.
    let slow = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let r = request_on(&mut s, "GET", "/slow?ms=2000");
        let mut rest = [0u8; 16];
        let eof = s.read(&mut rest).unwrap();
        (r, eof, Instant::now())
    });
    // Let the slow request reach its handler.
    std::thread::sleep(Duration::from_millis(200));

    let sent = Instant::now();
    demo.signal(Signal::SIGTERM);

    // New connects are refused soon after stop-accepting.
    let refused_after = loop {
        match TcpStream::connect(addr) {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => break sent.elapsed(),
            // A connect racing the listener's close: the kernel resets a
            // handshake still in its queue when the socket goes away.
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break sent.elapsed(),
            Err(e) => panic!("unexpected connect error {e}"),
            Ok(_) => {
                assert!(sent.elapsed() < Duration::from_secs(2), "still accepting");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    };
    assert!(
        refused_after < Duration::from_millis(500),
        "{refused_after:?}"
    );

    // The idle connection is closed with a FIN.
    let mut b = [0u8; 16];
    assert_eq!(
        idle.read(&mut b).unwrap(),
        0,
        "idle connection not closed cleanly"
    );

    // The SSE stream gets its last event, then ends.
    loop {
        match sse.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e) => panic!("SSE stream error {e}"),
        }
    }
    let text = String::from_utf8_lossy(&seen);
    assert!(text.contains("event: bye"), "{text}");

    // The slow request gets its 200 with Connection: close, then FIN.
    let (response, eof, answered) = slow.join().unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.header("connection").as_deref(), Some("close"));
    assert_eq!(eof, 0);

    let (status, stderr) = demo.wait_exit(Duration::from_secs(10));
    let exited = Instant::now();
    assert_eq!(status.code(), Some(0), "stderr:\n{stderr}");
    assert!(stderr.contains("shutdown complete in"), "{stderr}");
    // Exit follows the last response closely (generous bound; the real
    // figure is in the benchmark).
    let after = exited.saturating_duration_since(answered);
    assert!(
        after < Duration::from_millis(800),
        "exit {after:?} after the last response"
    );
}

/// CONFORMANCE 26: during the lame-duck period readiness is 503, the
/// listener still accepts and responses carry `Connection: close`.
#[test]
fn drain_delay_keeps_serving_with_readiness_failing() {
    let mut demo = Demo::start(&["--drain-delay", "1500ms"]);
    let addr = demo.addr;
    assert_eq!(request(addr, "GET", "/readyz").status, 200);
    demo.signal(Signal::SIGTERM);
    demo.wait_for_line("shutdown triggered", Duration::from_secs(5));
    let ready = request(addr, "GET", "/readyz");
    assert_eq!(ready.status, 503);
    assert_eq!(ready.header("connection").as_deref(), Some("close"));
    let live = request(addr, "GET", "/livez");
    assert_eq!(live.status, 200);
    let hello = request(addr, "GET", "/");
    assert_eq!(hello.status, 200, "still serving new connections");
    assert_eq!(hello.header("connection").as_deref(), Some("close"));
    let (status, stderr) = demo.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{stderr}");
}

/// CONFORMANCE 25 with HTTP work in flight: a second signal forces, the
/// report names the request, and the exit code is the documented one.
#[test]
fn second_signal_during_http_drain_forces() {
    let mut demo = Demo::start(&[]);
    let addr = demo.addr;
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET /slow?ms=20000 HTTP/1.1\r\nhost: t\r\n\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    demo.signal(Signal::SIGTERM);
    demo.wait_for_line("phase=stopping", Duration::from_secs(5));
    demo.signal(Signal::SIGINT);
    let (status, stderr) = demo.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("GET /slow"), "{stderr}");
    assert!(stderr.contains("cut after"), "{stderr}");
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lameduck-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn submit(addr: std::net::SocketAddr) -> String {
    let r = request(addr, "POST", "/jobs");
    assert_eq!(r.status, 202, "{r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    v["id"].as_str().unwrap().to_string()
}

/// The demo's job guarantee: submit jobs, SIGTERM mid-way with a budget too
/// short to finish the queue (the worker, which drains the queue once HTTP
/// has drained, is cut by the deadline), start again on the same data dir:
/// every accepted id is finished exactly once.
#[test]
fn accepted_jobs_are_finished_exactly_once_across_restarts() {
    let dir = temp_dir("jobs");
    let dir_arg = dir.to_str().unwrap().to_string();
    let args = ["--data-dir", dir_arg.as_str(), "--job-duration", "100ms"];

    let mut first = Demo::start(&[&args[..], &["--grace", "1s"]].concat());
    let mut ids: Vec<String> = (0..30).map(|_| submit(first.addr)).collect();
    std::thread::sleep(Duration::from_millis(200));
    first.signal(Signal::SIGTERM);
    let (status, stderr) = first.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("stage \"workers\""), "{stderr}");
    assert!(stderr.contains("closers 1/1 ok"), "{stderr}");
    let left = std::fs::read_dir(dir.join("pending")).unwrap().count();
    assert!(left > 0, "the test wants jobs left for the next process");

    let mut second = Demo::start(&args);
    ids.extend((0..5).map(|_| submit(second.addr)));
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = request(second.addr, "GET", "/jobs");
        let v: serde_json::Value = serde_json::from_str(&stats.body).unwrap();
        if v["queued"] == 0 && std::fs::read_dir(dir.join("pending")).unwrap().count() == 0 {
            break;
        }
        assert!(Instant::now() < end, "jobs not finished: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
    second.signal(Signal::SIGTERM);
    let (status, stderr) = second.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{stderr}");

    let log = std::fs::read_to_string(dir.join("done.log")).unwrap();
    let mut count: HashMap<&str, usize> = HashMap::new();
    for line in log.lines() {
        let id = line.split_whitespace().next().unwrap();
        *count.entry(id).or_default() += 1;
    }
    for id in &ids {
        assert_eq!(
            count.get(id.as_str()),
            Some(&1),
            "job {id} in done.log: {log}"
        );
        assert!(dir.join("done").join(id).exists());
    }
    assert_eq!(count.len(), ids.len(), "no unknown ids finished");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Without a data dir, queued jobs are finished before exit.
#[test]
fn without_data_dir_queued_jobs_finish_before_exit() {
    let mut demo = Demo::start(&["--job-duration", "30ms"]);
    for _ in 0..10 {
        submit(demo.addr);
    }
    demo.signal(Signal::SIGTERM);
    let (status, stderr) = demo.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("closers 1/1 ok"), "{stderr}");
}
