//! One accepted connection, from accept to FIN.
//!
//! | file | owns |
//! |---|---|
//! | `state.rs` | what the connection is doing ([`Protocol`], [`Activity`]) and what the lifecycle asks of it ([`Stop`]): the one representation of "stop" and "force" for a connection; its report line |
//! | `detect.rs` | protocol detection from the first bytes, HTTP/2 frame boundaries |
//! | `policy.rs` | the HTTP/1 and HTTP/2 policies: header-read and idle timeouts, the drain's graces, when to close, the GOAWAY bound |
//! | `driver.rs` | the connection future: the [`Step`](driver::Step) state machine that drives hyper |
//! | `io.rs` | the IO hyper reads and writes through; the [`Transport`] it wraps |
//! | `close.rs` | closing politely once hyper is done: 408/503, FIN, linger |
//!
//! The lifecycle reaches a connection only through its registry entry
//! ([`Describe::stop`](crate::registry::Describe::stop) and
//! [`force`](crate::registry::Describe::force)), which raise its
//! [`Stop`] level and wake its driver; nothing else of the lifecycle is
//! seen here.

mod close;
mod detect;
mod driver;
mod io;
mod policy;
mod state;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;

pub(crate) use io::Transport;
pub(crate) use policy::Timeouts;
pub(crate) use state::{ConnShared, Stop};

use super::service::BoxError;
use super::{Peer, ShutdownSignal};
use crate::lifecycle::View;
use crate::report::Kind;

/// What serving a connection needs of the user's service, said once: a
/// tower service of HTTP requests whose futures can move between threads.
pub(crate) trait ConnService<B>:
    tower_service::Service<
        Request<Incoming>,
        Response = Response<B>,
        Future: Send + 'static,
        Error: Into<BoxError>,
    > + Clone
    + Send
    + 'static
{
}

impl<S, B> ConnService<B> for S
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
}

/// What serving a connection needs of a response body.
pub(crate) trait ConnBody:
    Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static
{
}

impl<B> ConnBody for B
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
}

/// What every connection of a server shares. Not the service: each
/// connection has a clone of its own, so that it need not be `Sync`.
pub(crate) struct Ctx {
    pub(crate) builder: auto::Builder<TokioExecutor>,
    pub(crate) timeouts: Timeouts,
    pub(crate) view: View,
    /// Whether requests carry the peer as an extension.
    pub(crate) connect_info: bool,
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<super::tls::TlsConfig>,
}

/// Register `stream` as in flight and return the future that serves it to
/// its end (spawn it as a task the drain waits for).
pub(crate) fn serve<T, S, B>(
    stream: T,
    peer: Peer,
    ctx: Arc<Ctx>,
    service: S,
) -> impl Future<Output = ()> + Send + 'static
where
    T: Transport,
    S: ConnService<B>,
    B: ConnBody,
{
    let view = &ctx.view;
    let shared = Arc::new(ConnShared::new(peer, ShutdownSignal::new(view.handle())));
    let entry = view.watch(Kind::Connection, shared.clone());
    // Registered first, read second: a stop or force either reached the
    // entry, or was flagged before this read.
    if view.is_stopping() {
        shared.raise(Stop::Stopping);
    }
    if view.is_forced() {
        shared.raise(Stop::Forced);
    }
    driver::run(stream, shared, entry, ctx, service)
}
