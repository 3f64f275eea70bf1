//! The IO hyper reads and writes through: it counts bytes, detects the
//! protocol from the first bytes, moves the connection's activity on the
//! first byte of an HTTP/1 head, follows HTTP/2 frame boundaries, and hands
//! the transport back to the driver when hyper (or the owner of an upgraded
//! connection) drops it.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

use super::detect::{Decided, Detect};
use super::state::{Activity, ConnShared, Protocol};
use crate::http::Accept;
use crate::registry::InFlight;

/// A byte stream a connection is served over: what a [`Listener`] or a
/// user's [`Accept`]or yields, or a TLS stream over either.
///
/// [`Listener`]: crate::http::Listener
pub(crate) trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// A second handle on the same connection, to shut it down from outside
    /// while someone else owns the stream (an upgraded connection at the
    /// deadline). `None` when the transport has none.
    fn shutdown_handle(&self) -> Option<socket2::Socket> {
        None
    }
}

impl Transport for crate::http::Stream {
    fn shutdown_handle(&self) -> Option<socket2::Socket> {
        <crate::http::Listener as Accept>::shutdown_handle(self).map(socket2::Socket::from)
    }
}

impl Transport for crate::http::accept::BoxIo {
    fn shutdown_handle(&self) -> Option<socket2::Socket> {
        <crate::http::accept::Erased as Accept>::shutdown_handle(self).map(socket2::Socket::from)
    }
}

/// Boxed: a TLS stream is over a kilobyte, and the connection future
/// moves its transport a few times on the way to hyper.
#[cfg(feature = "tls")]
impl<T: Transport> Transport for Box<tokio_rustls::server::TlsStream<T>> {
    fn shutdown_handle(&self) -> Option<socket2::Socket> {
        self.get_ref().0.shutdown_handle()
    }
}

#[cfg(test)]
impl Transport for tokio::io::DuplexStream {}

/// h2's acknowledgement of its own shutdown PING: a PING frame (type 6)
/// with the ACK flag on stream 0, carrying the payload h2 sends with the
/// first GOAWAY (`h2::frame::Ping::SHUTDOWN`, fixed since h2 0.3; the
/// integration test `s28_…` fails if it ever changes).
pub(crate) const SHUTDOWN_PING_ACK: [u8; 17] = [
    0, 0, 8, 6, 1, 0, 0, 0, 0, 0x0b, 0x7b, 0xa2, 0xf0, 0x8b, 0x9b, 0xfe, 0x54,
];

pub(crate) struct ConnIo<T: Transport> {
    stream: Option<T>,
    shared: Arc<ConnShared>,
    detect: Detect,
    back: Option<oneshot::Sender<T>>,
    // Keeps the connection in the registry for as long as anyone holds the
    // IO, including after an upgrade.
    _entry: InFlight,
}

impl<T: Transport> ConnIo<T> {
    pub(crate) fn new(
        stream: T,
        shared: Arc<ConnShared>,
        entry: InFlight,
    ) -> (Self, oneshot::Receiver<T>) {
        let (tx, rx) = oneshot::channel();
        shared.set_tag(entry.tag());
        (
            ConnIo {
                stream: Some(stream),
                shared,
                detect: Detect::new(),
                back: Some(tx),
                _entry: entry,
            },
            rx,
        )
    }

    fn stream(&mut self) -> io::Result<&mut T> {
        self.stream
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "stream handed back"))
    }

    /// The first phase of an HTTP/2 GOAWAY outlasted its bound: hand h2 the
    /// acknowledgement of its shutdown PING that the client did not send,
    /// so that h2 sends the final GOAWAY (with the last stream it really
    /// processed) and closes once its streams are done. Only between two
    /// frames, so that the frame stream h2 reads stays well formed.
    fn supply_ack(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        let Detect::Http2(frames) = &self.detect else {
            return false;
        };
        if !frames.at_boundary()
            || buf.remaining() < SHUTDOWN_PING_ACK.len()
            || !self.shared.supply_ack.swap(false, Ordering::AcqRel)
        {
            return false;
        }
        buf.put_slice(&SHUTDOWN_PING_ACK);
        true
    }

    fn take_upgrade_fd(&mut self) {
        if self.shared.upgrading.load(Ordering::Relaxed) {
            let Ok(mut fd) = self.shared.upgraded_fd.lock() else {
                return;
            };
            if fd.is_none() {
                *fd = self.stream.as_ref().and_then(T::shutdown_handle);
            }
        }
    }
}

impl<T: Transport> Drop for ConnIo<T> {
    fn drop(&mut self) {
        if let (Some(stream), Some(back)) = (self.stream.take(), self.back.take()) {
            let _ = back.send(stream);
        }
    }
}

impl<T: Transport> AsyncRead for ConnIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.shared.supply_ack.load(Ordering::Relaxed) && this.supply_ack(buf) {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let res = Pin::new(this.stream()?).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            let n = buf.filled().len() - before;
            if n > 0 {
                let shared = &this.shared;
                add(&shared.bytes_in, n);
                let new = &buf.filled()[before..];
                match &mut this.detect {
                    Detect::Http1 => {
                        if matches!(shared.activity(), Activity::New | Activity::Idle) {
                            shared.set_activity(Activity::Reading);
                        }
                    }
                    Detect::Http2(frames) => {
                        let acks = frames.advance(new);
                        if acks > 0 {
                            shared.ping_acks.fetch_add(acks, Ordering::AcqRel);
                        }
                    }
                    detect @ Detect::Undecided { .. } => {
                        if shared.activity() == Activity::New {
                            shared.set_activity(Activity::Reading);
                        }
                        match detect.feed(new) {
                            Decided::Not => {}
                            Decided::Http1 => shared.set_protocol(Protocol::Http1),
                            Decided::Http2 { .. } => {
                                // Frames between streams are idle traffic.
                                shared.set_protocol(Protocol::Http2);
                                shared.set_activity(Activity::Idle);
                            }
                        }
                    }
                }
            }
        }
        res
    }
}

impl<T: Transport> AsyncWrite for ConnIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.take_upgrade_fd();
        let res = Pin::new(this.stream()?).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res {
            add(&this.shared.bytes_out, n);
        }
        res
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.take_upgrade_fd();
        let res = Pin::new(this.stream()?).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = res {
            add(&this.shared.bytes_out, n);
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().stream()?).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.shared.upgrading.load(Ordering::Acquire) {
            // The owner of an upgraded connection closes it for real.
            return Pin::new(this.stream()?).poll_shutdown(cx);
        }
        // hyper is closing an HTTP connection. Only flush: the driver sends
        // the FIN once it has checked that no request arrived meanwhile
        // (one that did gets a 503 rather than a bare close).
        Pin::new(this.stream()?).poll_flush(cx)
    }
}

/// Count bytes: the IO has one owner at a time, so a plain load and store
/// does (a locked add on every read and write is not free).
fn add(counter: &AtomicU64, n: usize) {
    counter.store(
        counter.load(Ordering::Relaxed) + n as u64,
        Ordering::Relaxed,
    );
}
