//! [`Serve`]: a server configured by value and awaited, as `axum::serve`
//! is; and [`watch`]: a connection the user drives, under the drain.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::server::graceful::GracefulConnection;

use super::service::BoxError;
use super::{Accept, Server};
use crate::error::Error;
use crate::lifecycle::Handle;
use crate::report::Kind;

/// A [`Server`] and its service, ready to run as a named vital task of the
/// lifecycle: configure it by value, then `.await` it (or
/// [`spawn`](Self::spawn) it). Made by
/// [`axum::serve`](super::axum::serve) and
/// [`tonic::serve`](super::tonic::serve).
///
/// Awaited, it runs the server as the lifecycle's vital task
/// [`name`](Self::name) and resolves when the shutdown is over: every
/// connection drained or cut, the closers run, the report logged. It
/// returns the server's error, if it had one. The lifecycle reads signals
/// by itself, so this is all `main` needs:
///
/// ```no_run
/// use axum::{routing::get, Router};
///
/// # #[tokio::main] async fn main() -> Result<std::process::ExitCode, lameduck::Error> {
/// let lifecycle = lameduck::Lifecycle::builder().build()?;
/// let app = Router::new().route("/", get(|| async { "hello\n" }));
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await.unwrap();
/// lameduck::http::axum::serve(&lifecycle.handle(), listener, app)
///     .name("api")
///     .with_connect_info()
///     .configure(|server| server.idle_timeout(std::time::Duration::from_secs(60)))
///     .await?; // after SIGTERM, once everything has drained
/// let report = lifecycle.await; // already over: for the exit code
/// Ok(report.process_exit_code())
/// # }
/// ```
///
/// Awaited inside a task of the lifecycle (where waiting for the end of
/// the shutdown would wait for itself), it serves in place instead, and
/// resolves when the listeners close.
#[must_use = "a Serve does nothing until it is awaited or spawned"]
pub struct Serve<S> {
    server: Server,
    service: S,
    name: String,
}

impl<S> fmt::Debug for Serve<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Serve")
            .field("name", &self.name)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl<S, B> Serve<S>
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    pub(crate) fn new(server: Server, service: S, name: &str) -> Self {
        Serve {
            server,
            service,
            name: name.into(),
        }
    }

    /// The name of the lifecycle task, as the report and [stages](crate::stage)
    /// know it (default `http` for axum, `grpc` for tonic).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let lifecycle = lameduck::Lifecycle::builder().signals(lameduck::Signals::none()).build().unwrap();
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    /// lameduck::http::axum::serve(&lifecycle.handle(), listener, axum::Router::new())
    ///     .name("api")
    ///     .spawn();
    /// // Workers that stop once the API has drained.
    /// let workers = lifecycle.handle().stage("workers", ["api"]).unwrap();
    /// # drop(workers);
    /// # }
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Give handlers the peer's address (see [`Server::connect_info`]):
    /// `ConnectInfo<SocketAddr>` works as with axum's
    /// `into_make_service_with_connect_info`.
    ///
    /// ```
    /// use std::net::SocketAddr;
    /// use axum::{extract::ConnectInfo, routing::get, Router};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let lifecycle = lameduck::Lifecycle::builder().signals(lameduck::Signals::none()).build().unwrap();
    /// let app = Router::new().route("/", get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move {
    ///     format!("hello {peer}\n")
    /// }));
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    /// lameduck::http::axum::serve(&lifecycle.handle(), listener, app)
    ///     .with_connect_info()
    ///     .spawn();
    /// # }
    /// ```
    pub fn with_connect_info(mut self) -> Self {
        self.server = self.server.connect_info();
        self
    }

    /// Change anything else of the [`Server`]: timeouts, hyper's settings,
    /// TLS, more listeners.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # let lifecycle = lameduck::Lifecycle::builder().signals(lameduck::Signals::none()).build().unwrap();
    /// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    /// let serve = lameduck::http::axum::serve(&lifecycle.handle(), listener, axum::Router::new())
    ///     .configure(|s| s.http2_max_concurrent_streams(100).header_read_timeout(std::time::Duration::from_secs(5)));
    /// # }
    /// ```
    pub fn configure(mut self, f: impl FnOnce(Server) -> Server) -> Self {
        self.server = f(self.server);
        self
    }

    /// Add a source of connections (see [`Server::accept`]).
    ///
    /// ```no_run
    /// # async fn f(handle: lameduck::Handle) -> std::io::Result<()> {
    /// let tcp = tokio::net::TcpListener::bind("0.0.0.0:8080").await?;
    /// let unix = tokio::net::UnixListener::bind("/run/app/http.sock")?;
    /// lameduck::http::axum::serve(&handle, tcp, axum::Router::new())
    ///     .accept(unix)
    ///     .spawn();
    /// # Ok(()) }
    /// ```
    pub fn accept(mut self, acceptor: impl Accept) -> Self {
        self.server = self.server.accept(acceptor);
        self
    }

    /// Run it as the lifecycle's vital task without waiting: for a
    /// `main` that awaits the lifecycle itself.
    ///
    /// ```no_run
    /// # #[tokio::main] async fn main() -> std::process::ExitCode {
    /// let lifecycle = lameduck::Lifecycle::builder().build().unwrap();
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await.unwrap();
    /// lameduck::http::axum::serve(&lifecycle.handle(), listener, axum::Router::new()).spawn();
    /// lifecycle.await.process_exit_code()
    /// # }
    /// ```
    pub fn spawn(self) {
        let (handle, name, fut) = self.into_parts();
        handle.spawn_vital(name, |_| fut);
    }

    /// The lifecycle, the task's name and the server's future.
    fn into_parts(
        self,
    ) -> (
        Handle,
        String,
        impl Future<Output = Result<(), Error>> + Send + 'static,
    ) {
        let Serve {
            server,
            service,
            name,
        } = self;
        let handle = server.handle.clone();
        (handle, name, server.serve(service))
    }
}

impl<S, B> IntoFuture for Serve<S>
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Output = Result<(), Error>;
    type IntoFuture = BoxFuture<'static, Result<(), Error>>;

    fn into_future(self) -> Self::IntoFuture {
        let (handle, name, fut) = self.into_parts();
        async move {
            if crate::stage::in_lifecycle() {
                return fut.await;
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            handle.spawn_vital(name, |_| async move {
                let result = fut.await;
                // The report gets the message, the caller the error.
                let message = result.as_ref().map_err(ToString::to_string).copied();
                let _ = tx.send(result);
                message
            });
            handle.done().await;
            match rx.await {
                Ok(result) => result,
                // Cut at the deadline: the report says so.
                Err(_) => Ok(()),
            }
        }
        .boxed()
    }
}

/// Put a connection you accepted and drive yourself (a hyper or hyper-util
/// connection) under the lifecycle, like hyper-util's
/// `GracefulShutdown::watch`: it counts as in flight for the drain and is
/// named in the report as `name`; when the lifecycle stops, it is asked to
/// shut down gracefully (HTTP/1: close after the response in flight;
/// HTTP/2: GOAWAY); when the shutdown is forced, it is dropped and the
/// future resolves with an error.
///
/// Only hyper's own graceful shutdown applies: the timeouts, the GOAWAY
/// bound and the polite closes of [`Server`] do not. For those, hand the
/// stream to a server through [`Accept`] instead.
///
/// ```no_run
/// use hyper_util::rt::{TokioExecutor, TokioIo};
/// use hyper_util::server::conn::auto;
///
/// # async fn f(handle: lameduck::Handle, listener: tokio::net::TcpListener) {
/// let hello = hyper::service::service_fn(|_req| async {
///     Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from("hello\n"))))
/// });
/// loop {
///     let (stream, peer) = listener.accept().await.unwrap();
///     let handle = handle.clone();
///     tokio::spawn(async move {
///         let builder = auto::Builder::new(TokioExecutor::new());
///         let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), hello);
///         let _ = lameduck::http::watch(&handle, format!("connection from {peer}"), conn).await;
///     });
/// }
/// # }
/// ```
///
/// # Errors
///
/// The connection's own error, or one saying it was cut when the shutdown
/// was forced.
pub fn watch<C, E>(
    handle: &Handle,
    name: impl Into<String>,
    conn: C,
) -> impl Future<Output = Result<(), BoxError>> + Send
where
    C: GracefulConnection<Error = E> + Send,
    E: Into<BoxError>,
{
    let view = handle.view();
    let handle = handle.clone();
    let entry = view.register(Kind::Connection, name.into());
    async move {
        let mut conn: Pin<Box<C>> = Box::pin(conn);
        let mut asked = false;
        let result = loop {
            tokio::select! {
                biased;
                r = conn.as_mut() => break r.map_err(Into::into),
                () = handle.forced() => {
                    drop(conn);
                    break Err("connection cut: the shutdown was forced".into());
                }
                () = view.stopping(), if !asked => {
                    asked = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        };
        drop(entry);
        result
    }
}
