//! Listeners (TCP v4/v6, Unix) and the streams they accept.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
#[cfg(unix)]
use tokio::net::{UnixListener, UnixStream};

use super::accept::{Accept, Peer};
use crate::error::Error;

/// A listening socket the [`Server`](super::Server) accepts connections on.
///
/// Build one from a tokio listener with `From`, or bind with
/// [`Listener::bind`]. The set of kinds is open, so match on it with a
/// wildcard arm; any other source of connections can be served through
/// the [`Accept`] trait ([`Server::accept`](super::Server::accept)).
#[non_exhaustive]
pub enum Listener {
    /// A TCP listener (IPv4 or IPv6).
    Tcp(TcpListener),
    /// A Unix-domain stream listener.
    #[cfg(unix)]
    Unix(UnixListener),
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Listener({})", self.describe())
    }
}

impl From<TcpListener> for Listener {
    fn from(l: TcpListener) -> Self {
        Listener::Tcp(l)
    }
}

#[cfg(unix)]
impl From<UnixListener> for Listener {
    fn from(l: UnixListener) -> Self {
        Listener::Unix(l)
    }
}

impl Listener {
    /// Bind a TCP listener on `addr` (such as `127.0.0.1:8080` or `[::1]:0`).
    ///
    /// # Errors
    ///
    /// [`Error::is_bind`] when the address cannot be bound.
    ///
    /// ```no_run
    /// # #[tokio::main] async fn main() -> Result<(), lameduck::Error> {
    /// let listener = lameduck::http::Listener::bind("127.0.0.1:8080").await?;
    /// println!("listening on {:?}", listener.local_addr());
    /// # Ok(()) }
    /// ```
    pub async fn bind(addr: impl tokio::net::ToSocketAddrs + fmt::Display) -> Result<Self, Error> {
        let what = addr.to_string();
        TcpListener::bind(addr)
            .await
            .map(Listener::Tcp)
            .map_err(|e| Error::bind(what, e))
    }

    /// Bind a Unix-domain listener at `path`.
    ///
    /// # Errors
    ///
    /// [`Error::is_bind`] when the path cannot be bound.
    #[cfg(unix)]
    pub fn bind_unix(path: impl Into<PathBuf>) -> Result<Self, Error> {
        let path = path.into();
        UnixListener::bind(&path)
            .map(Listener::Unix)
            .map_err(|e| Error::bind(path.display(), e))
    }

    /// The TCP address, for TCP listeners.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok(),
            #[cfg(unix)]
            Listener::Unix(_) => None,
        }
    }

    /// A printable name: `tcp 127.0.0.1:8080` or `unix /run/app.sock`.
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => match l.local_addr() {
                Ok(a) => format!("tcp {a}"),
                Err(_) => "tcp ?".into(),
            },
            #[cfg(unix)]
            Listener::Unix(l) => match l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
            {
                Some(p) => format!("unix {p}"),
                None => "unix (unnamed)".into(),
            },
        }
    }

    /// The listening socket, to duplicate for a restart.
    #[cfg(unix)]
    pub(crate) fn socket_ref(&self) -> socket2::SockRef<'_> {
        match self {
            Listener::Tcp(l) => socket2::SockRef::from(l),
            Listener::Unix(l) => socket2::SockRef::from(l),
        }
    }
}

impl Accept for Listener {
    type Io = Stream;

    async fn accept(&mut self) -> io::Result<(Stream, Peer)> {
        match self {
            Listener::Tcp(l) => Accept::accept(l).await.map(|(s, p)| (Stream::Tcp(s), p)),
            #[cfg(unix)]
            Listener::Unix(l) => Accept::accept(l).await.map(|(s, p)| (Stream::Unix(s), p)),
        }
    }

    fn describe(&self) -> String {
        Listener::describe(self)
    }

    fn close(self) -> Vec<(Stream, Peer)> {
        match self {
            Listener::Tcp(l) => l
                .close()
                .into_iter()
                .map(|(s, p)| (Stream::Tcp(s), p))
                .collect(),
            #[cfg(unix)]
            Listener::Unix(l) => l
                .close()
                .into_iter()
                .map(|(s, p)| (Stream::Unix(s), p))
                .collect(),
        }
    }

    #[cfg(unix)]
    fn shutdown_handle(io: &Stream) -> Option<std::os::fd::OwnedFd> {
        use std::os::fd::AsFd;
        match io {
            Stream::Tcp(s) => s.as_fd().try_clone_to_owned().ok(),
            Stream::Unix(s) => s.as_fd().try_clone_to_owned().ok(),
        }
    }
}

/// A connection accepted by a [`Listener`] (its [`Accept::Io`]).
///
/// ```
/// use lameduck::http::{Accept, Listener, Peer, Stream};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let mut listener = Listener::bind("127.0.0.1:0").await.unwrap();
/// let addr = listener.local_addr().unwrap();
/// let (accepted, client) = tokio::join!(listener.accept(), tokio::net::TcpStream::connect(addr));
/// let (stream, peer) = accepted.unwrap();
/// assert!(matches!(stream, Stream::Tcp(_)));
/// assert_eq!(peer, Peer::Tcp(client.unwrap().local_addr().unwrap()));
/// # }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Stream {
    /// A TCP connection.
    Tcp(TcpStream),
    /// A Unix-domain connection.
    #[cfg(unix)]
    Unix(UnixStream),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(unix)]
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(unix)]
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            #[cfg(unix)]
            Stream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            #[cfg(unix)]
            Stream::Unix(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            #[cfg(unix)]
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(unix)]
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
