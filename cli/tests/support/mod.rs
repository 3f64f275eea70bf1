//! Start the real `lameduck` binary as a child process, read its stderr,
//! send it real signals.

#![allow(dead_code, unreachable_pub)]

pub mod family;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub struct Demo {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub stderr: Vec<String>,
    /// The first address the demo listens on.
    pub addr: SocketAddr,
}

impl Demo {
    /// Start `lameduck demo ARGS...` and wait for its ready line.
    pub fn start(args: &[&str]) -> Demo {
        Demo::spawn(demo_command(env!("CARGO_BIN_EXE_lameduck"), args))
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).expect("send signal");
    }

    /// Wait for a stderr line containing `needle`; panics with everything
    /// read so far after `timeout`.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> String {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.stderr.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line containing {needle:?} within {timeout:?}; stderr so far:\n{}",
                    self.stderr.join("\n")
                ),
            }
        }
    }

    /// Wait for the process to exit; returns its status and all of stderr.
    pub fn wait_exit(&mut self, timeout: Duration) -> (ExitStatus, String) {
        let end = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Collect what is left, bounded: a successor started by a
                // restart shares this stderr and may keep writing to it.
                let end = Instant::now() + Duration::from_secs(2);
                while let Ok(line) = self
                    .lines
                    .recv_timeout(end.saturating_duration_since(Instant::now()))
                {
                    self.stderr.push(line);
                }
                return (status, self.stderr.join("\n"));
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                panic!(
                    "demo did not exit within {timeout:?}; stderr:\n{}",
                    self.stderr.join("\n")
                );
            }
            while let Ok(line) = self.lines.try_recv() {
                self.stderr.push(line);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A parsed HTTP/1.1 response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// Send one request on `stream` and read one response (content-length
/// bodies only), leaving the connection open.
pub fn request_on(stream: &mut TcpStream, method: &str, path: &str) -> Response {
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nhost: test\r\ncontent-length: 0\r\n\r\n"
    )
    .expect("write request");
    read_response(stream)
}

pub fn read_response(stream: &mut TcpStream) -> Response {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            other => panic!(
                "connection ended inside a response head ({other:?}); got {:?}",
                String::from_utf8_lossy(&buf)
            ),
        }
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let mut response = Response {
        status,
        head,
        body: String::new(),
    };
    let len: usize = response
        .header("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).expect("read body");
    response.body = String::from_utf8_lossy(&body).to_string();
    response
}

/// One request on a fresh connection.
pub fn request(addr: SocketAddr, method: &str, path: &str) -> Response {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    request_on(&mut stream, method, path)
}

/// `lameduck demo ARGS...` started from `exe`, set up as [`Demo::start`]
/// sets it up (`--listen 127.0.0.1:0` unless given, `NO_COLOR`, `RUST_LOG`,
/// piped output) but not started: add environment variables or a
/// `pre_exec`, then pass it to [`Demo::spawn`] or [`run_to_end`].
pub fn demo_command(exe: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Command {
    let mut command = Command::new(exe);
    command.arg("demo");
    if !args.contains(&"--listen") {
        command.args(["--listen", "127.0.0.1:0"]);
    }
    command
        .args(args)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info,lameduck::jobs=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

impl Demo {
    /// Like [`Demo::start`], with extra environment variables.
    pub fn start_env(args: &[&str], env: &[(&str, &str)]) -> Demo {
        let mut command = demo_command(env!("CARGO_BIN_EXE_lameduck"), args);
        command.envs(env.iter().copied());
        Demo::spawn(command)
    }

    /// Start `command` (see [`demo_command`]) and wait for its ready line,
    /// as [`Demo::start`] does.
    pub fn spawn(command: Command) -> Demo {
        let mut demo = Demo::spawn_unready(command);
        let line = demo.wait_for_line("ready", Duration::from_secs(20));
        demo.addr = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        demo
    }

    /// Start `command` without waiting for anything (`addr` is not known).
    pub fn spawn_unready(mut command: Command) -> Demo {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start lameduck demo");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Demo {
            child,
            lines: rx,
            stderr: Vec::new(),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }

    /// Move the stderr lines read so far into `self.stderr`, without
    /// waiting.
    pub fn drain_stderr(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.stderr.push(line);
        }
    }
}

/// How a process run by [`run_to_end`] ended.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Run `command` to its end with piped stdout and stderr (stdin null);
/// kills it and panics with its output if it is still running after
/// `timeout`.
pub fn run_to_end(mut command: Command, timeout: Duration) -> Finished {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start command");
    let read_all = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = read_all(Box::new(child.stderr.take().expect("piped stderr")));
    let end = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{command:?} did not end within {timeout:?}; stdout:\n{}\nstderr:\n{}",
                stdout.join().unwrap_or_default(),
                stderr.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    Finished {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}
