//! The demo over TLS with real clients: curl over HTTP/1.1 and HTTP/2,
//! `openssl s_client` resuming a session across a zero-downtime restart,
//! a certificate reload on SIGUSR1 that refuses a broken file, and a
//! handshake left unfinished during a drain. Needs `curl` and `openssl`
//! (installed by `.ci/run`).

#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::family::{setup, Family, Scratch};

/// A self-signed certificate for localhost, made by openssl.
fn certificate(dir: &Scratch) -> (String, String) {
    let (cert, key) = (dir.path("cert.pem"), dir.path("key.pem"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("openssl (apt-get install openssl)");
    assert!(out.success());
    (
        cert.to_str().unwrap().to_owned(),
        key.to_str().unwrap().to_owned(),
    )
}

fn curl(cert: &str, port: u16, extra: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "--cacert", cert])
        .args(extra)
        .arg(format!("https://localhost:{port}/"))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One `openssl s_client` handshake: "New" or "Reused".
fn s_client(port: u16, session: &Path, save: bool) -> String {
    let mut command = Command::new("openssl");
    command
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-servername", "localhost", "-tls1_3"])
        .arg(if save { "-sess_out" } else { "-sess_in" })
        .arg(session)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = command.spawn().expect("openssl");
    // Stay a moment so that the session ticket arrives, then end.
    std::thread::sleep(Duration::from_millis(300));
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.starts_with("New,") || l.starts_with("Reused,"))
        .unwrap_or_else(|| panic!("no handshake line in {text}"))
        .split(',')
        .next()
        .unwrap()
        .to_owned()
}

fn port_of(demo: &Family) -> u16 {
    let line = demo
        .stderr
        .iter()
        .find(|l| l.contains("ready, listening on https://"))
        .unwrap();
    line.split("https://127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap()
}

/// Start the demo over TLS; the ready line names an https address.
fn start_tls(args: &[&str]) -> Family {
    let mut command = support::demo_command(support::family::EXE, args);
    command.stdout(Stdio::null());
    let mut demo = support::Demo::spawn_unready(command);
    demo.wait_for_line("ready, listening on https://", Duration::from_secs(20));
    Family(demo)
}

#[test]
fn tls_serves_curl_resumes_across_a_restart_and_reloads_safely() {
    setup();
    let dir = Scratch::new("tls");
    let (cert, key) = certificate(&dir);
    let socket = dir.path("control.sock");
    let mut demo = start_tls(&[
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--control",
        socket.to_str().unwrap(),
        "--probation",
        "300ms",
    ]);
    let port = port_of(&demo);
    let pid = demo.pid();
    assert_eq!(
        curl(&cert, port, &[]),
        format!("hello from lameduck (pid {pid})\n")
    );
    let version = curl(
        &cert,
        port,
        &["--http2", "-o", "/dev/null", "-w", "%{http_version}"],
    );
    assert_eq!(version, "2");

    // A session from before the restart resumes after it.
    let session = dir.path("session");
    assert_eq!(s_client(port, &session, true), "New");
    assert_eq!(s_client(port, &session, false), "Reused");
    let answer = support::family::ask("restart", &socket).stdout;
    assert!(answer.starts_with("done: new pid "), "{answer}");
    let new: u32 = answer.trim()["done: new pid ".len()..].parse().unwrap();
    assert_eq!(
        curl(&cert, port, &[]),
        format!("hello from lameduck (pid {new})\n")
    );
    assert_eq!(
        s_client(port, &session, false),
        "Reused",
        "the session was not resumed by the successor"
    );

    // A broken certificate file on SIGUSR1: refused, the old one serves.
    let ca = dir.path("ca.pem");
    std::fs::copy(&cert, &ca).unwrap();
    let ca = ca.to_str().unwrap().to_owned();
    let usr1 =
        || nix::sys::signal::kill(nix::unistd::Pid::from_raw(new as i32), Signal::SIGUSR1).unwrap();
    std::fs::write(&cert, "not a certificate").unwrap();
    usr1();
    demo.wait_for_line("TLS certificate not reloaded", Duration::from_secs(5));
    assert_eq!(
        curl(&ca, port, &[]),
        format!("hello from lameduck (pid {new})\n")
    );

    // A renewed pair on SIGUSR1: served from the next handshake on.
    let renewed = Scratch::new("tls-renewed");
    let (cert2, key2) = certificate(&renewed);
    std::fs::copy(&cert2, &cert).unwrap();
    std::fs::copy(&key2, &key).unwrap();
    usr1();
    demo.wait_for_line("TLS certificate reloaded", Duration::from_secs(5));
    assert_eq!(
        curl(&cert2, port, &[]),
        format!("hello from lameduck (pid {new})\n")
    );
    assert_eq!(
        curl(&ca, port, &[]),
        "",
        "the old certificate is still served"
    );

    // A handshake left unfinished does not hold the drain.
    let _silent = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let t0 = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(new as i32), Signal::SIGTERM).unwrap();
    while !support::family::is_gone(new as i32) {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the successor did not exit"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
}
