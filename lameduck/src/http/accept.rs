//! Where connections come from: the [`Accept`] trait every listener of a
//! [`Server`](super::Server) goes through, and the [`Peer`] of a
//! connection.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
#[cfg(unix)]
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Who is on the other end of a connection.
///
/// Handlers get it as `axum::extract::ConnectInfo<Peer>` (and TCP peers as
/// `ConnectInfo<SocketAddr>`) when the server is built with
/// [`connect_info`](super::Server::connect_info); the report names
/// connections by it.
///
/// ```
/// use lameduck::http::Peer;
/// let peer = Peer::Tcp("192.0.2.7:51234".parse().unwrap());
/// assert_eq!(peer.to_string(), "192.0.2.7:51234");
/// assert_eq!(peer.socket_addr().map(|a| a.port()), Some(51234));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Peer {
    /// A TCP peer (also under TLS).
    Tcp(SocketAddr),
    /// A Unix-domain peer, with its path when it bound one (most do not).
    Unix(Option<PathBuf>),
    /// A peer described by a custom [`Accept`]or.
    Other(Arc<str>),
}

impl Peer {
    /// The address of a TCP peer.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self {
            Peer::Tcp(a) => Some(*a),
            _ => None,
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Tcp(a) => write!(f, "{a}"),
            Peer::Unix(Some(p)) => write!(f, "unix {}", p.display()),
            Peer::Unix(None) => f.write_str("unix"),
            Peer::Other(s) => f.write_str(s),
        }
    }
}

impl From<SocketAddr> for Peer {
    fn from(a: SocketAddr) -> Self {
        Peer::Tcp(a)
    }
}

/// A source of connections for a [`Server`](super::Server): a listener of
/// any kind (TCP, Unix, an inherited descriptor, a TLS terminator of your
/// own, an in-memory channel of streams). Every connection it yields is
/// served under the lifecycle exactly like one from a [`Listener`](super::Listener):
/// timeouts, drain, force, the report.
///
/// [`Listener`](super::Listener), tokio's `TcpListener` and `UnixListener`
/// implement it; add your own with [`Server::accept`](super::Server::accept).
///
/// ```
/// use std::io;
/// use lameduck::http::{Accept, Peer};
/// use tokio::io::DuplexStream;
/// use tokio::sync::mpsc;
///
/// /// Connections handed over by another part of the program.
/// struct Handed(mpsc::Receiver<DuplexStream>);
///
/// impl Accept for Handed {
///     type Io = DuplexStream;
///
///     async fn accept(&mut self) -> io::Result<(DuplexStream, Peer)> {
///         match self.0.recv().await {
///             Some(io) => Ok((io, Peer::Other("in-memory".into()))),
///             // No more connections: wait for the server to stop.
///             None => std::future::pending().await,
///         }
///     }
///
///     fn describe(&self) -> String {
///         "in-memory".into()
///     }
/// }
/// ```
pub trait Accept: Send + 'static {
    /// The connection's byte stream.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// The next connection. A failure is logged and retried after a short
    /// back-off (5 ms per failure in a row, at most 1 s), as for a
    /// listener out of descriptors: return an error only for what a retry
    /// can cure.
    ///
    /// # Cancellation safety
    ///
    /// Must be cancellation safe: the server drops the future when it stops
    /// accepting (or pauses for a restart) and calls again later; a
    /// connection must not be lost in between.
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Io, Peer)>> + Send;

    /// A printable name for logs and the report (`tcp 127.0.0.1:8080`).
    fn describe(&self) -> String {
        "custom listener".into()
    }

    /// Called once, when the server stops accepting: close the listener
    /// and return the connections it had already accepted but not yet
    /// handed out (a kernel's backlog), so that they are served rather than
    /// reset. The default drops `self` and returns none. Not called for a
    /// server started after the lifecycle stopped: that one accepts
    /// nothing and drops the acceptor.
    fn close(self) -> Vec<(Self::Io, Peer)>
    where
        Self: Sized,
    {
        Vec::new()
    }

    /// A second descriptor of `io`'s socket. It is used once, to shut an
    /// upgraded connection (a WebSocket, whose handler owns the stream)
    /// down when the lifecycle forces the shutdown. The default has none:
    /// such a connection then ends when its handler drops it.
    #[cfg(unix)]
    fn shutdown_handle(io: &Self::Io) -> Option<OwnedFd> {
        let _ = io;
        None
    }
}

impl Accept for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;

    async fn accept(&mut self) -> io::Result<(Self::Io, Peer)> {
        let (s, peer) = tokio::net::TcpListener::accept(self).await?;
        // Latency over throughput for request/response traffic; failure to
        // set it is not worth dropping the connection.
        let _ = s.set_nodelay(true);
        Ok((s, Peer::Tcp(peer)))
    }

    fn describe(&self) -> String {
        match self.local_addr() {
            Ok(a) => format!("tcp {a}"),
            Err(_) => "tcp ?".into(),
        }
    }

    /// Takes every connection the kernel has already completed and queued:
    /// closing with them in the queue would reset them, request bytes and
    /// all.
    fn close(self) -> Vec<(Self::Io, Peer)> {
        let mut out = Vec::new();
        let Ok(std) = self.into_std() else { return out };
        while let Ok((s, peer)) = std.accept() {
            let _ = s.set_nodelay(true);
            if s.set_nonblocking(true).is_err() {
                continue;
            }
            if let Ok(s) = tokio::net::TcpStream::from_std(s) {
                out.push((s, Peer::Tcp(peer)));
            }
        }
        out
    }

    #[cfg(unix)]
    fn shutdown_handle(io: &Self::Io) -> Option<OwnedFd> {
        use std::os::fd::AsFd;
        io.as_fd().try_clone_to_owned().ok()
    }
}

#[cfg(unix)]
impl Accept for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;

    async fn accept(&mut self) -> io::Result<(Self::Io, Peer)> {
        let (s, peer) = tokio::net::UnixListener::accept(self).await?;
        Ok((s, unix_peer(peer.as_pathname())))
    }

    fn describe(&self) -> String {
        match self
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
        {
            Some(p) => format!("unix {p}"),
            None => "unix (unnamed)".into(),
        }
    }

    /// Like TCP's: the queued connections are served, not reset.
    fn close(self) -> Vec<(Self::Io, Peer)> {
        let mut out = Vec::new();
        let Ok(std) = self.into_std() else { return out };
        while let Ok((s, peer)) = std.accept() {
            if s.set_nonblocking(true).is_err() {
                continue;
            }
            if let Ok(s) = tokio::net::UnixStream::from_std(s) {
                out.push((s, unix_peer(peer.as_pathname())));
            }
        }
        out
    }

    fn shutdown_handle(io: &Self::Io) -> Option<OwnedFd> {
        use std::os::fd::AsFd;
        io.as_fd().try_clone_to_owned().ok()
    }
}

#[cfg(unix)]
fn unix_peer(path: Option<&std::path::Path>) -> Peer {
    Peer::Unix(path.map(std::path::Path::to_path_buf))
}

/// The crate's accept loop over any [`Accept`]or.
pub(crate) struct Source<A>(pub(crate) A);

impl<A: Accept> crate::util::NextConn for Source<A> {
    type Conn = (A::Io, Peer);

    fn next_conn(&mut self) -> impl Future<Output = io::Result<Self::Conn>> + Send {
        self.0.accept()
    }
}

/// A user's [`Accept`]or with its stream type erased, so that a
/// [`Server`](super::Server) can hold listeners of different kinds. One
/// virtual call per read or write; the crate's own listeners are not
/// erased.
pub(crate) struct Erased(Box<dyn DynAccept>);

impl Erased {
    pub(crate) fn new<A: Accept>(a: A) -> Self {
        Erased(Box::new(Holder(Some(a))))
    }
}

impl fmt::Debug for Erased {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Accept({})", self.0.describe())
    }
}

trait DynAccept: Send {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxIo, Peer)>>;
    fn describe(&self) -> String;
    fn close(&mut self) -> Vec<(BoxIo, Peer)>;
}

struct Holder<A>(Option<A>);

impl<A: Accept> DynAccept for Holder<A> {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxIo, Peer)>> {
        match &mut self.0 {
            Some(a) => a
                .accept()
                .map(|r| r.map(|(io, peer)| (Box::new(Typed::<A>(io)) as BoxIo, peer)))
                .boxed(),
            None => futures_util::future::pending().boxed(),
        }
    }

    fn describe(&self) -> String {
        self.0
            .as_ref()
            .map_or_else(|| "closed".into(), Accept::describe)
    }

    fn close(&mut self) -> Vec<(BoxIo, Peer)> {
        self.0.take().map_or_else(Vec::new, |a| {
            a.close()
                .into_iter()
                .map(|(io, peer)| (Box::new(Typed::<A>(io)) as BoxIo, peer))
                .collect()
        })
    }
}

impl Accept for Erased {
    type Io = BoxIo;

    fn accept(&mut self) -> impl Future<Output = io::Result<(BoxIo, Peer)>> + Send {
        self.0.accept()
    }

    fn describe(&self) -> String {
        self.0.describe()
    }

    fn close(mut self) -> Vec<(BoxIo, Peer)> {
        self.0.close()
    }

    #[cfg(unix)]
    fn shutdown_handle(io: &BoxIo) -> Option<OwnedFd> {
        io.shutdown_handle()
    }
}

/// The stream of an erased [`Accept`]or (tokio reads and writes through
/// a `Box` of it as through the stream itself).
pub(crate) type BoxIo = Box<dyn DynIo>;

pub(crate) trait DynIo: AsyncRead + AsyncWrite + Unpin + Send {
    #[cfg(unix)]
    fn shutdown_handle(&self) -> Option<OwnedFd>;
}

struct Typed<A: Accept>(A::Io);

impl<A: Accept> DynIo for Typed<A> {
    #[cfg(unix)]
    fn shutdown_handle(&self) -> Option<OwnedFd> {
        A::shutdown_handle(&self.0)
    }
}

impl<A: Accept> AsyncRead for Typed<A> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl<A: Accept> AsyncWrite for Typed<A> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}
