//! How the supervisor learns that a child is ready (`--ready`).
//!
//! - `notify` (the default): each child gets a private `NOTIFY_SOCKET`;
//!   `READY=1` means ready, `STATUS=` is logged, `EXTEND_TIMEOUT_USEC=`
//!   extends the wait, the rest is logged at debug level. A child that
//!   already speaks sd_notify needs no change.
//! - `http://HOST:PORT/PATH`, `tcp:HOST:PORT`: probe an address until it
//!   answers (HTTP: a 2xx; TCP: a connect, which proves little when the
//!   address is a socket this supervisor holds: the kernel completes it
//!   from the backlog). With the host `admin` (`http://admin/readyz`) each
//!   child gets a private listening socket of its own, named `admin` among
//!   the inherited descriptors, and the probe goes there, so that it cannot
//!   be answered by the old child through the shared listeners. `tcp:admin`
//!   is refused for the reason above.
//! - `after:DUR`: alive after DUR, the weak fallback.

use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram as StdDatagram;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixDatagram};
use tokio::sync::watch;
use tokio::time::Instant;

/// `--ready MODE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Mode {
    Notify,
    Http { target: Target, path: String },
    Tcp(Target),
    After(Duration),
}

/// Where a probe goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    /// The child's private `admin` socket.
    Admin,
    Addr(SocketAddr),
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let target = |t: &str| -> Result<Target, String> {
            if t == "admin" {
                return Ok(Target::Admin);
            }
            t.parse::<SocketAddr>()
                .map(Target::Addr)
                .map_err(|_| format!("{t:?} is not `admin` or an IP:PORT address"))
        };
        if s == "notify" {
            Ok(Mode::Notify)
        } else if let Some(rest) = s.strip_prefix("http://") {
            let (host, path) = match rest.find('/') {
                Some(i) => (&rest[..i], rest[i..].to_owned()),
                None => (rest, "/".to_owned()),
            };
            Ok(Mode::Http {
                target: target(host)?,
                path,
            })
        } else if let Some(rest) = s.strip_prefix("tcp:") {
            match target(rest)? {
                // The supervisor makes that socket listening before the
                // child starts, so the kernel completes a connect whether or
                // not the child ever accepts: the probe could not tell.
                Target::Admin => Err(
                    "tcp:admin cannot tell a ready child from a hung one (the kernel completes a connect \
                     to the inherited listening socket either way); use http://admin/PATH"
                        .to_owned(),
                ),
                t => Ok(Mode::Tcp(t)),
            }
        } else if let Some(rest) = s.strip_prefix("after:") {
            humantime::parse_duration(rest)
                .map(Mode::After)
                .map_err(|e| format!("after:{rest}: {e}"))
        } else {
            Err(format!(
                "{s:?}: expected notify, http://HOST:PORT/PATH, tcp:HOST:PORT (HOST may be `admin`) or after:DUR"
            ))
        }
    }
}

impl Mode {
    /// Whether each child needs a private admin socket.
    pub(crate) fn wants_admin(&self) -> bool {
        matches!(
            self,
            Mode::Http {
                target: Target::Admin,
                ..
            }
        )
    }
}

/// A child's private notify socket: a datagram socket in the supervisor's
/// private runtime directory, read for the child's whole life (a sender
/// whose messages are not read would block once the queue is full),
/// removed when dropped.
#[derive(Debug)]
pub(crate) struct NotifySocket {
    path: PathBuf,
    ready: watch::Receiver<bool>,
    extended: watch::Receiver<Option<Instant>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.reader.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

impl NotifySocket {
    pub(crate) fn bind(dir: &Path, generation: u32) -> std::io::Result<NotifySocket> {
        let path = dir.join(format!("notify-{generation}.sock"));
        let _ = std::fs::remove_file(&path);
        let std = StdDatagram::bind(&path)?;
        std.set_nonblocking(true)?;
        let socket = UnixDatagram::from_std(std)?;
        let (ready_tx, ready) = watch::channel(false);
        let (extend_tx, extended) = watch::channel(None);
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok(n) = socket.recv(&mut buf).await else {
                    continue;
                };
                let text = String::from_utf8_lossy(&buf[..n]);
                for line in text.lines() {
                    match line.split_once('=') {
                        Some(("READY", "1")) => {
                            ready_tx.send_replace(true);
                        }
                        Some(("STATUS", status)) => {
                            tracing::info!(generation, status, "child status")
                        }
                        Some(("EXTEND_TIMEOUT_USEC", usec)) => {
                            if let Ok(usec) = usec.parse::<u64>() {
                                extend_tx.send_replace(Some(
                                    Instant::now() + Duration::from_micros(usec),
                                ));
                            }
                        }
                        Some(("ERRNO", errno)) => {
                            tracing::warn!(generation, errno, "child reports an error")
                        }
                        _ => tracing::debug!(generation, message = line, "child notification"),
                    }
                }
            }
        });
        Ok(NotifySocket {
            path,
            ready,
            extended,
            reader,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Wait for `READY=1`. `deadline` moves with `EXTEND_TIMEOUT_USEC`;
    /// returns `false` at the deadline.
    pub(crate) async fn ready(&self, deadline: Instant) -> bool {
        let mut ready = self.ready.clone();
        let mut extended = self.extended.clone();
        let mut deadline = deadline;
        loop {
            if *ready.borrow_and_update() {
                return true;
            }
            if let Some(at) = *extended.borrow_and_update() {
                deadline = deadline.max(at);
            }
            tokio::select! {
                _ = ready.changed() => {}
                _ = extended.changed() => {}
                _ = tokio::time::sleep_until(deadline) => return *ready.borrow(),
            }
        }
    }
}

/// Probe until it passes or `deadline`; every 50 ms, each attempt bounded.
pub(crate) async fn probe(mode: &Mode, admin: Option<SocketAddr>, deadline: Instant) -> bool {
    let addr = |t: &Target| match t {
        Target::Admin => admin,
        Target::Addr(a) => Some(*a),
    };
    loop {
        let attempt = async {
            match mode {
                Mode::Tcp(t) => match addr(t) {
                    Some(a) => TcpStream::connect(a).await.is_ok(),
                    None => false,
                },
                Mode::Http { target, path } => match addr(target) {
                    Some(a) => http_ok(a, path).await,
                    None => false,
                },
                Mode::Notify | Mode::After(_) => false,
            }
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left.min(Duration::from_secs(2)), attempt)
            .await
            .unwrap_or(false)
        {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50).min(left)).await;
    }
}

/// One `GET` with `Connection: close`: whether the status is 2xx.
async fn http_ok(addr: SocketAddr, path: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return false;
    };
    let request = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    // Read the whole answer (up to 64 KiB): closing on a server that is
    // still writing makes it log a broken pipe.
    let mut answer = Vec::new();
    let _ = (&mut stream).take(64 * 1024).read_to_end(&mut answer).await;
    answer.len() >= 12 && answer.starts_with(b"HTTP/1.") && answer[9] == b'2'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse() {
        assert_eq!("notify".parse(), Ok(Mode::Notify));
        assert_eq!(
            "http://admin/readyz".parse(),
            Ok(Mode::Http {
                target: Target::Admin,
                path: "/readyz".into()
            })
        );
        assert_eq!(
            "tcp:127.0.0.1:9000".parse(),
            Ok(Mode::Tcp(Target::Addr(([127, 0, 0, 1], 9000).into())))
        );
        assert_eq!(
            "after:1500ms".parse(),
            Ok(Mode::After(Duration::from_millis(1500)))
        );
        assert!("http://example.com/".parse::<Mode>().is_err());
        assert!("tcp:admin".parse::<Mode>().is_err());
        assert!("sometimes".parse::<Mode>().is_err());
    }
}
