//! Zero-downtime restarts under load: keep-alive clients that never retry
//! see no failed request across a series of restarts; every restart brings
//! a new pid, every old generation exits 0, and every accepted job is
//! finished exactly once.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use support::Demo;

fn control(path: &Path, command: &str) -> String {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    writeln!(s, "{command}").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer.trim().to_string()
}

/// Wait for a process that was reparented to this one (subreaper) to exit.
fn wait_reaped(pid: i32, timeout: Duration) -> WaitStatus {
    let end = Instant::now() + timeout;
    loop {
        match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(status) => return status,
            Err(nix::errno::Errno::ECHILD) => {
                // Not (yet) our child: it may still be running under its
                // parent. Check it exists at all.
                if kill(Pid::from_raw(pid), None).is_err() {
                    return WaitStatus::Exited(Pid::from_raw(pid), -1);
                }
            }
            Err(e) => panic!("waitpid {pid}: {e}"),
        }
        assert!(
            Instant::now() < end,
            "pid {pid} did not exit within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[derive(Default)]
struct Load {
    ok: AtomicU64,
    failed: AtomicU64,
    reconnects: AtomicU64,
    errors: Mutex<Vec<String>>,
    jobs: Mutex<Vec<String>>,
    pids: Mutex<HashMap<String, u64>>,
}

/// Read one response (content-length bodies), or an error.
fn read_response(s: &mut TcpStream) -> std::io::Result<(u16, bool, String)> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "eof in head",
            ));
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let close = head.lines().any(|l| l.trim() == "connection: close");
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    Ok((status, close, String::from_utf8_lossy(&body).to_string()))
}

/// A keep-alive client that never retries: a request that fails is a
/// failure (like wrk). It reconnects only when the server says
/// `Connection: close`.
fn client(addr: SocketAddr, load: Arc<Load>, stop: Arc<AtomicBool>, id: usize) {
    let connect = || {
        let s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.set_nodelay(true)?;
        Ok::<_, std::io::Error>(s)
    };
    let mut conn: Option<TcpStream> = None;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let post = n % 100 == (id as u64 * 7);
        let s = match conn.as_mut() {
            Some(s) => s,
            None => match connect() {
                Ok(s) => {
                    load.reconnects.fetch_add(1, Ordering::Relaxed);
                    conn.insert(s)
                }
                Err(e) => {
                    load.failed.fetch_add(1, Ordering::Relaxed);
                    load.errors.lock().unwrap().push(format!("connect: {e}"));
                    continue;
                }
            },
        };
        let req = if post {
            "POST /jobs HTTP/1.1\r\nhost: t\r\ncontent-length: 0\r\n\r\n"
        } else {
            "GET / HTTP/1.1\r\nhost: t\r\n\r\n"
        };
        let result = s.write_all(req.as_bytes()).and_then(|()| read_response(s));
        match result {
            Ok((status, close, body)) if (post && status == 202) || (!post && status == 200) => {
                load.ok.fetch_add(1, Ordering::Relaxed);
                if post {
                    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                    load.jobs
                        .lock()
                        .unwrap()
                        .push(v["id"].as_str().unwrap().to_string());
                } else if let Some(pid) = body.split("pid ").nth(1) {
                    *load
                        .pids
                        .lock()
                        .unwrap()
                        .entry(pid.trim_end_matches([')', '\n']).to_string())
                        .or_default() += 1;
                }
                if close {
                    conn = None;
                }
            }
            Ok((status, _, body)) => {
                load.failed.fetch_add(1, Ordering::Relaxed);
                load.errors
                    .lock()
                    .unwrap()
                    .push(format!("status {status}: {body}"));
                conn = None;
            }
            Err(e) => {
                load.failed.fetch_add(1, Ordering::Relaxed);
                load.errors.lock().unwrap().push(format!("request: {e}"));
                conn = None;
            }
        }
    }
}

#[test]
fn restarts_under_keep_alive_load_lose_nothing() {
    nix::sys::prctl::set_child_subreaper(true).unwrap();
    let dir = std::env::temp_dir().join(format!("lameduck-restart-load-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("control.sock");
    let data = dir.join("data");
    let mut demo = Demo::start_env(
        &[
            "--control",
            sock.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--job-duration",
            "1ms",
            "--probation",
            "300ms",
        ],
        &[("RUST_LOG", "info")],
    );
    let addr = demo.addr;
    let first_pid = demo.child.id() as i32;

    let load = Arc::new(Load::default());
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let (load, stop) = (Arc::clone(&load), Arc::clone(&stop));
            std::thread::spawn(move || client(addr, load, stop, i))
        })
        .collect();

    let restarts = 5;
    let mut pids = vec![first_pid];
    for _ in 0..restarts {
        std::thread::sleep(Duration::from_millis(300));
        let before = load.ok.load(Ordering::Relaxed);
        let answer = control(&sock, "restart");
        let new_pid: i32 = answer
            .strip_prefix("done: new pid ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("restart answered {answer:?}"));
        let old = *pids.last().unwrap();
        assert_ne!(new_pid, old);
        // The old generation drains and exits 0.
        if old == first_pid {
            let end = Instant::now() + Duration::from_secs(10);
            let status = loop {
                if let Some(status) = demo.child.try_wait().unwrap() {
                    break status;
                }
                assert!(Instant::now() < end, "first generation did not exit");
                std::thread::sleep(Duration::from_millis(5));
            };
            demo.drain_stderr();
            assert_eq!(status.code(), Some(0), "{}", demo.stderr.join("\n"));
        } else {
            assert_eq!(
                wait_reaped(old, Duration::from_secs(10)),
                WaitStatus::Exited(Pid::from_raw(old), 0)
            );
        }
        pids.push(new_pid);
        assert!(load.ok.load(Ordering::Relaxed) >= before, "load stalled");
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let last = *pids.last().unwrap();
    // Let the last generation finish the queued jobs, then stop it.
    let end = Instant::now() + Duration::from_secs(10);
    while std::fs::read_dir(data.join("pending")).unwrap().count() > 0 {
        assert!(Instant::now() < end, "jobs left pending");
        std::thread::sleep(Duration::from_millis(20));
    }
    // State handed over across restarts: the last generation knows what
    // its predecessors finished (a snapshot taken as each restart began).
    let stats = support::request(addr, "GET", "/jobs");
    let stats: serde_json::Value = serde_json::from_str(&stats.body).unwrap();
    let lineage = stats["finished"].as_u64().unwrap();
    let here = stats["finished_by_this_process"].as_u64().unwrap();
    let logged = std::fs::read_to_string(data.join("done.log"))
        .unwrap()
        .lines()
        .count() as u64;
    assert!(lineage > here, "no state handed over: {stats}");
    assert!(lineage <= logged, "{stats} vs {logged} logged");
    kill(Pid::from_raw(last), Signal::SIGTERM).unwrap();
    assert_eq!(
        wait_reaped(last, Duration::from_secs(10)),
        WaitStatus::Exited(Pid::from_raw(last), 0)
    );

    let ok = load.ok.load(Ordering::Relaxed);
    let failed = load.failed.load(Ordering::Relaxed);
    let errors = load.errors.lock().unwrap().clone();
    let served: HashMap<String, u64> = load.pids.lock().unwrap().clone();
    eprintln!(
        "restart load: {restarts} restarts, {ok} ok, {failed} failed, {} reconnects, responses by pid {served:?}",
        load.reconnects.load(Ordering::Relaxed)
    );
    assert_eq!(failed, 0, "failed requests: {errors:?}");
    assert!(ok > 100, "too little load to mean anything: {ok}");
    let mut distinct = pids.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), pids.len(), "pids: {pids:?}");
    assert!(
        served.len() >= 3,
        "responses came from too few generations: {served:?}"
    );

    // Every accepted job finished exactly once.
    let jobs = load.jobs.lock().unwrap().clone();
    assert!(!jobs.is_empty());
    let log = std::fs::read_to_string(data.join("done.log")).unwrap();
    let mut count: HashMap<&str, usize> = HashMap::new();
    for line in log.lines() {
        *count
            .entry(line.split_whitespace().next().unwrap())
            .or_default() += 1;
    }
    for id in &jobs {
        assert_eq!(count.get(id.as_str()), Some(&1), "job {id}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
