//! The control socket: a Unix socket (mode 0600, peers checked to be the
//! same user) that takes one command a connection and answers with one
//! line. [`restart`](crate::restart) answers `restart` and `status` on it,
//! and so does the `lameduck run` supervisor.
//!
//! Binding is careful with what is already at the path: a path that is not
//! a socket is never removed, a socket that a live process answers on is
//! refused, and only a stale socket (nobody listening) is replaced.
//!
//! # Platform support
//!
//! Unix only.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::error::Error;

/// The longest command line read from a client.
const COMMAND_LIMIT: usize = 64;
/// How long a client may take to send its command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Bind a control socket at `path` (mode 0600, non-blocking). What is
/// already there is replaced only when it is a stale socket (nobody
/// answers on it): a path that is not a socket is never removed, and a
/// socket that answers belongs to a live process.
///
/// # Errors
///
/// [`Error::is_control_socket`]: the path holds something that is not a
/// socket, another live process answers on it, or binding failed.
///
/// ```no_run
/// # fn main() -> Result<(), lameduck::Error> {
/// let socket = lameduck::control::bind("/run/myapp/control.sock".as_ref())?;
/// # Ok(()) }
/// ```
pub fn bind(path: &Path) -> Result<socket2::Socket, Error> {
    let err = |e: io::Error| Error::control_socket(path.display(), e);
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
        Ok(meta) => {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(Error::control_socket(
                    path.display(),
                    "the path exists and is not a socket; refusing to replace it",
                ));
            }
            match probe(path) {
                Probe::Live => {
                    return Err(Error::control_socket(
                        path.display(),
                        "another live process answers on it (is another instance running?)",
                    ))
                }
                Probe::Gone => {}
                Probe::Stale => {
                    tracing::info!(target: "lameduck", path = %path.display(), "replacing a stale control socket");
                    match std::fs::remove_file(path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(err(e)),
                    }
                }
                Probe::Unknown(e) => return Err(err(e)),
            }
        }
    }
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    listener.set_nonblocking(true).map_err(err)?;
    Ok(socket2::Socket::from(OwnedFd::from(listener)))
}

/// Whether a live process listens on the Unix socket at `path` (it
/// accepts, or its accept queue is full). The connect does not block.
pub fn answers(path: &Path) -> bool {
    matches!(probe(path), Probe::Live)
}

enum Probe {
    /// Something accepts connections there (or queues them).
    Live,
    /// A socket file nobody listens on.
    Stale,
    /// Nothing there any more.
    Gone,
    Unknown(io::Error),
}

/// Whether a live process listens on the Unix socket at `path`. The
/// connect is non-blocking, so a live process with a full accept queue
/// counts as live instead of blocking this call.
fn probe(path: &Path) -> Probe {
    let socket = match socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None) {
        Ok(s) => s,
        Err(e) => return Probe::Unknown(e),
    };
    if let Err(e) = socket.set_nonblocking(true) {
        return Probe::Unknown(e);
    }
    let addr = match socket2::SockAddr::unix(path) {
        Ok(a) => a,
        Err(e) => return Probe::Unknown(e),
    };
    match socket.connect(&addr) {
        Ok(()) => Probe::Live,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Probe::Live,
        Err(e) if e.raw_os_error() == Some(nix::libc::EINPROGRESS) => Probe::Live,
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Probe::Stale,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Probe::Gone,
        Err(e) => Probe::Unknown(e),
    }
}

/// Read one command from a control client: a line of at most 64 bytes
/// within 5 s, from a peer of this process's user.
///
/// # Errors
///
/// The line to answer with instead (`refused: ...`, `error: no command`),
/// when the peer is another user or sends no command in time.
pub async fn read_command(stream: &mut UnixStream) -> Result<String, String> {
    // Read the command first, even from a peer that will be refused:
    // closing with unread bytes would reset the connection and lose the
    // answer.
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(COMMAND_TIMEOUT, async {
        while buf.len() < COMMAND_LIMIT {
            match stream.read(&mut byte).await {
                Ok(1) if byte[0] != b'\n' => buf.push(byte[0]),
                _ => break,
            }
        }
    })
    .await;
    let me = nix::unistd::geteuid().as_raw();
    match stream.peer_cred() {
        Ok(cred) if cred.uid() == me => {}
        Ok(cred) => {
            tracing::warn!(target: "lameduck", uid = cred.uid(), "control socket: refused a peer of another user");
            return Err(format!(
                "refused: peer uid {} is not the owner (uid {me})\n",
                cred.uid()
            ));
        }
        Err(e) => return Err(format!("refused: {e}\n")),
    }
    if read.is_err() {
        return Err("error: no command\n".to_owned());
    }
    Ok(String::from_utf8_lossy(&buf).trim().to_owned())
}

/// The device and inode of what is at `path` (not following a symlink).
pub fn identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// Ask the process behind the control socket at `path` to run `command`
/// (`restart` or `status`) and return its one-line answer.
///
/// # Errors
///
/// When the socket cannot be reached or the answer cannot be read within
/// `timeout`.
///
/// ```no_run
/// # #[tokio::main] async fn main() -> std::io::Result<()> {
/// let answer = lameduck::control::request("/run/myapp/control.sock", "restart", std::time::Duration::from_secs(60)).await?;
/// println!("{answer}"); // "done: new pid 4242" or "failed: ..."
/// # Ok(()) }
/// ```
pub async fn request(
    path: impl AsRef<Path>,
    command: &str,
    timeout: Duration,
) -> io::Result<String> {
    let run = async {
        let mut stream = UnixStream::connect(path.as_ref()).await?;
        stream.write_all(format!("{command}\n").as_bytes()).await?;
        let mut answer = Vec::new();
        let mut chunk = [0u8; 256];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
                // A reset after the answer arrived still leaves the answer.
                Err(_) if !answer.is_empty() => break,
                Err(e) => return Err(e),
            }
        }
        Ok::<_, io::Error>(String::from_utf8_lossy(&answer).trim().to_owned())
    };
    tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer from the control socket"))?
}
