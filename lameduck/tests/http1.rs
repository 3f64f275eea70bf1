//! HTTP/1.1 drain behaviour on real sockets: the listener, HTTP/1.1,
//! deadline and bad-input scenarios of `CONFORMANCE.md`, checked on the
//! wire (status lines, `Connection: close`, FIN versus RST) and in the
//! shutdown report.

#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use lameduck::http::{Listener, Server, ShutdownSignal};
use lameduck::{exit, ForceCause, Handle, Kind, Lifecycle, Outcome, Phase, Report, Signals};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

const MS: Duration = Duration::from_millis(1);

// ---------------------------------------------------------------------------
// The service under test
// ---------------------------------------------------------------------------

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// What the handlers tell the test: which requests reached a handler, and
/// which handler futures were dropped before they completed.
#[derive(Clone)]
struct App {
    entered: mpsc::UnboundedSender<String>,
    dropped: mpsc::UnboundedSender<String>,
}

struct Probe {
    entered: mpsc::UnboundedReceiver<String>,
    dropped: mpsc::UnboundedReceiver<String>,
}

impl Probe {
    /// The next request (path and query) to reach a handler.
    async fn entered(&mut self) -> String {
        within(
            Duration::from_secs(2),
            "a handler to be entered",
            self.entered.recv(),
        )
        .await
        .unwrap()
    }

    /// The next handler whose future was dropped before it completed.
    async fn dropped(&mut self, limit: Duration) -> String {
        within(limit, "a handler future to be dropped", self.dropped.recv())
            .await
            .unwrap()
    }

    /// Requests that reached a handler and were not yet taken.
    fn entered_so_far(&mut self) -> Vec<String> {
        let mut seen = Vec::new();
        while let Ok(s) = self.entered.try_recv() {
            seen.push(s);
        }
        seen
    }
}

fn app() -> (App, Probe) {
    let (entered_tx, entered) = mpsc::unbounded_channel();
    let (dropped_tx, dropped) = mpsc::unbounded_channel();
    (
        App {
            entered: entered_tx,
            dropped: dropped_tx,
        },
        Probe { entered, dropped },
    )
}

/// Reports the handler future as dropped unless it completed.
struct Armed {
    name: String,
    tx: mpsc::UnboundedSender<String>,
    done: bool,
}

impl Drop for Armed {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.tx.send(self.name.clone());
        }
    }
}

fn query(req: &Request<Incoming>, key: &str) -> Option<u64> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.parse().ok()).flatten()
    })
}

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()).boxed_unsync());
    *response.status_mut() = status;
    response
}

fn chunk(i: u64) -> String {
    format!("chunk {i}\n")
}

/// Routes:
/// - `/slow?ms=N`: answers `slow done` after N ms;
/// - `/stream?chunks=N&ms=M`: N chunks, M ms apart, chunked encoding;
/// - `/big`: an endless streaming body of 64 KiB chunks;
/// - `/upload`: reads the whole request body, answers its length;
/// - `/panic`: panics;
/// - anything else: `hello`.
async fn route(app: App, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let target = req
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
    let _ = app.entered.send(target.clone());
    let mut armed = Armed {
        name: target,
        tx: app.dropped.clone(),
        done: false,
    };
    if ShutdownSignal::current().is_none() {
        armed.done = true;
        return Ok(full(
            StatusCode::INTERNAL_SERVER_ERROR,
            "no ShutdownSignal\n",
        ));
    }
    let response = match req.uri().path() {
        "/slow" => {
            let ms = query(&req, "ms").unwrap_or(100);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            full(StatusCode::OK, "slow done\n")
        }
        "/stream" => {
            let chunks = query(&req, "chunks").unwrap_or(3);
            let ms = query(&req, "ms").unwrap_or(50);
            let stream = futures_util::stream::unfold(0u64, move |i| async move {
                if i >= chunks {
                    return None;
                }
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                Some((
                    Ok::<_, Infallible>(Frame::data(Bytes::from(chunk(i)))),
                    i + 1,
                ))
            });
            Response::new(StreamBody::new(stream).boxed_unsync())
        }
        "/big" => {
            let stream = futures_util::stream::repeat_with(|| {
                Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'x'; 64 * 1024])))
            });
            Response::new(StreamBody::new(stream).boxed_unsync())
        }
        "/upload" => match req.into_body().collect().await {
            Ok(body) => full(StatusCode::OK, body.to_bytes().len().to_string()),
            Err(e) => full(StatusCode::BAD_REQUEST, e.to_string()),
        },
        "/panic" => panic!("handler panics on purpose"),
        _ => full(StatusCode::OK, "hello\n"),
    };
    armed.done = true;
    Ok(response)
}

fn service(
    app: App,
) -> impl tower::Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send,
> + Clone
       + Send
       + Sync
       + 'static {
    tower::service_fn(move |req| route(app.clone(), req))
}

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

async fn within<F: Future>(limit: Duration, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

fn quiet(grace: Duration) -> Lifecycle {
    Lifecycle::builder()
        .signals(Signals::none())
        .grace(grace)
        .build()
        .unwrap()
}

/// A lifecycle with a server spawned as its vital task `http`, and the
/// lifecycle's `run` spawned too.
struct Running {
    handle: Handle,
    addr: SocketAddr,
    probe: Probe,
    /// Resolves when `serve` returned, that is when every listener is closed.
    served: Option<oneshot::Receiver<Instant>>,
    report: Option<JoinHandle<(Report, Instant)>>,
}

impl Running {
    /// Trigger the shutdown; returns T0.
    fn trigger(&self) -> Instant {
        let t0 = Instant::now();
        assert!(self.handle.shutdown("test"), "shutdown already started");
        t0
    }

    /// When `serve` returned (every listener dropped).
    async fn listeners_closed(&mut self) -> Instant {
        let rx = self.served.take().expect("listeners_closed called twice");
        within(Duration::from_secs(2), "serve to return", rx)
            .await
            .unwrap()
    }

    /// The report, and when `run` returned it.
    async fn report(&mut self) -> (Report, Instant) {
        let task = self.report.take().expect("report called twice");
        within(Duration::from_secs(5), "the shutdown report", task)
            .await
            .unwrap()
    }
}

async fn start(grace: Duration, tune: impl FnOnce(Server) -> Server) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    start_on(vec![listener.into()], addr, grace, tune)
}

fn start_on(
    listeners: Vec<Listener>,
    addr: SocketAddr,
    grace: Duration,
    tune: impl FnOnce(Server) -> Server,
) -> Running {
    let lifecycle = quiet(grace);
    let handle = lifecycle.handle();
    let (app, probe) = app();
    let mut server = Server::new(handle.clone());
    for l in listeners {
        server = server.listener(l);
    }
    let serve = tune(server).serve(service(app));
    let (tx, served) = oneshot::channel();
    handle.spawn_vital("http", |_| async move {
        let result = serve.await;
        let _ = tx.send(Instant::now());
        result
    });
    let report = tokio::spawn(async move {
        let report = lifecycle.run().await;
        (report, Instant::now())
    });
    Running {
        handle,
        addr,
        probe,
        served: Some(served),
        report: Some(report),
    }
}

fn connection_items(report: &Report) -> Vec<&lameduck::Item> {
    report
        .items
        .iter()
        .filter(|i| i.kind == Kind::Connection)
        .collect()
}

// ---------------------------------------------------------------------------
// A raw HTTP/1 client: exact bytes, and FIN versus RST
// ---------------------------------------------------------------------------

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
    }

    fn chunked(&self) -> bool {
        self.header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// How a connection ended, as the client sees it.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// A read returned `Ok(0)`: the server sent FIN.
    Fin,
    /// A read failed with `ConnectionReset`: the server sent RST.
    Reset,
    /// Some other read error.
    Error(io::ErrorKind),
    /// More bytes arrived (shown as text).
    Data(String),
    /// Nothing happened within the time limit.
    Open,
}

struct Wire<S> {
    io: S,
    buf: Vec<u8>,
    eof: bool,
}

impl Wire<TcpStream> {
    async fn connect(addr: SocketAddr) -> Self {
        let stream = within(Duration::from_secs(2), "connect", TcpStream::connect(addr))
            .await
            .unwrap();
        Wire::new(stream)
    }

    fn local(&self) -> String {
        self.io.local_addr().unwrap().to_string()
    }
}

impl<S> Wire<S> {
    fn new(io: S) -> Self {
        Wire {
            io,
            buf: Vec::new(),
            eof: false,
        }
    }
}

impl<S: AsyncWrite + Unpin> Wire<S> {
    async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        within(
            Duration::from_secs(2),
            "a write",
            self.io.write_all(bytes.as_ref()),
        )
        .await
        .unwrap();
    }

    async fn get(&mut self, target: &str) {
        self.send(format!("GET {target} HTTP/1.1\r\nHost: test\r\n\r\n"))
            .await;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl<S: AsyncRead + Unpin> Wire<S> {
    async fn fill(&mut self) -> io::Result<()> {
        let mut chunk = vec![0u8; 64 * 1024];
        let n = self.io.read(&mut chunk).await?;
        if n == 0 {
            self.eof = true;
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed mid-message",
            ));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    async fn until(&mut self, delim: &[u8]) -> io::Result<Vec<u8>> {
        loop {
            if let Some(pos) = find(&self.buf, delim) {
                return Ok(self.buf.drain(..pos + delim.len()).collect());
            }
            self.fill().await?;
        }
    }

    async fn take(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() < n {
            self.fill().await?;
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// The status line and headers of the next response.
    async fn head(&mut self) -> io::Result<Resp> {
        within(Duration::from_secs(3), "a response head", async {
            let raw = self.until(b"\r\n\r\n").await?;
            let text = String::from_utf8_lossy(&raw).into_owned();
            let mut lines = text.split("\r\n");
            let status_line = lines.next().unwrap_or_default();
            let status = status_line
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .filter(|_| status_line.starts_with("HTTP/1."))
                .ok_or_else(|| invalid(format!("bad status line {status_line:?}")))?;
            let headers = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                .collect();
            Ok(Resp {
                status,
                headers,
                body: Vec::new(),
            })
        })
        .await
    }

    /// The body of a response whose head was read; fails if the
    /// connection ends before the body (or its terminating chunk) does.
    async fn body(&mut self, resp: &mut Resp) -> io::Result<()> {
        within(Duration::from_secs(3), "a response body", async {
            if resp.chunked() {
                loop {
                    let line = self.until(b"\r\n").await?;
                    let line = String::from_utf8_lossy(&line[..line.len() - 2]).into_owned();
                    let size = line.split(';').next().unwrap_or_default().trim();
                    let size = usize::from_str_radix(size, 16)
                        .map_err(|_| invalid(format!("bad chunk size {line:?}")))?;
                    if size == 0 {
                        // Trailers, up to the empty line.
                        while self.until(b"\r\n").await?.len() > 2 {}
                        return Ok(());
                    }
                    let data = self.take(size).await?;
                    resp.body.extend_from_slice(&data);
                    if self.take(2).await? != b"\r\n" {
                        return Err(invalid("chunk not followed by CRLF".into()));
                    }
                }
            } else if let Some(len) = resp.header("content-length") {
                let len = len
                    .parse()
                    .map_err(|_| invalid(format!("bad content-length {len:?}")))?;
                resp.body = self.take(len).await?;
                Ok(())
            } else if matches!(resp.status, 100..=199 | 204 | 304) {
                Ok(())
            } else {
                // Delimited by the end of the connection.
                loop {
                    match self.fill().await {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                        Err(e) => return Err(e),
                    }
                }
                resp.body = std::mem::take(&mut self.buf);
                Ok(())
            }
        })
        .await
    }

    async fn response(&mut self) -> io::Result<Resp> {
        let mut resp = self.head().await?;
        self.body(&mut resp).await?;
        Ok(resp)
    }

    /// What comes after the last response: FIN, RST, more data, or nothing
    /// within `limit`.
    async fn end_within(&mut self, limit: Duration) -> End {
        if !self.buf.is_empty() {
            return End::Data(String::from_utf8_lossy(&self.buf).into_owned());
        }
        if self.eof {
            return End::Fin;
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(limit, self.io.read(&mut chunk)).await {
            Err(_) => End::Open,
            Ok(Ok(0)) => {
                self.eof = true;
                End::Fin
            }
            Ok(Ok(n)) => End::Data(String::from_utf8_lossy(&chunk[..n]).into_owned()),
            Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionReset => End::Reset,
            Ok(Err(e)) => End::Error(e.kind()),
        }
    }

    async fn end(&mut self) -> End {
        self.end_within(Duration::from_secs(2)).await
    }
}

// ---------------------------------------------------------------------------
// Listeners
// ---------------------------------------------------------------------------

/// Scenario 1: new connects are refused right after stop-accepting, while
/// an in-flight (1 s) request still gets its 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s01_connects_refused_after_stop_accepting_while_in_flight_request_completes() {
    let mut srv = start(Duration::from_secs(5), |s| s).await;
    let mut client = Wire::connect(srv.addr).await;
    client.get("/slow?ms=1000").await;
    assert_eq!(srv.probe.entered().await, "/slow?ms=1000");

    let t0 = srv.trigger();
    let closed = srv.listeners_closed().await;
    assert!(
        closed.duration_since(t0) < 200 * MS,
        "listeners closed {:?} after T0",
        closed.duration_since(t0)
    );
    let refused = TcpStream::connect(srv.addr).await;
    let refused_at = t0.elapsed();
    assert_eq!(
        refused.as_ref().map_err(io::Error::kind).err(),
        Some(io::ErrorKind::ConnectionRefused),
        "a connect after stop-accepting must be refused, got {refused:?}"
    );

    let resp = client.response().await.unwrap();
    let response_end = t0.elapsed();
    assert!(
        refused_at < 250 * MS && response_end > 800 * MS,
        "the refusal ({refused_at:?}) must come while the request is in flight \
         (response at {response_end:?})"
    );
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "slow done\n");
    assert!(resp.closes(), "no Connection: close in {resp:?}");
    assert_eq!(client.end().await, End::Fin);
    drop(client);

    let (report, _) = srv.report().await;
    assert_eq!(report.exit_code(), exit::OK, "{report}");
}

/// Scenario 2: a server asked to serve after the shutdown returns at once
/// and accepts nothing (not even a connection already in the backlog).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s02_serving_after_shutdown_returns_at_once_and_accepts_nothing() {
    let lifecycle = quiet(Duration::from_secs(5));
    let handle = lifecycle.handle();
    assert!(handle.shutdown("before serving"));
    let report = within(Duration::from_secs(1), "the report", lifecycle.run()).await;
    assert_eq!(report.exit_code(), exit::OK, "{report}");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Completes the TCP handshake in the kernel's backlog; only accept()
    // would hand it to the server.
    let mut early = Wire::connect(addr).await;
    early.get("/").await;

    let (app, mut probe) = app();
    let serve = Server::new(handle.clone())
        .listener(listener)
        .serve(service(app));
    let t = Instant::now();
    let served = within(Duration::from_secs(1), "serve to return", serve).await;
    assert!(served.is_ok(), "{served:?}");
    assert!(t.elapsed() < 100 * MS, "serve took {:?}", t.elapsed());

    let refused = TcpStream::connect(addr).await;
    assert_eq!(
        refused.as_ref().map_err(io::Error::kind).err(),
        Some(io::ErrorKind::ConnectionRefused),
        "{refused:?}"
    );
    let end = early.end().await;
    assert!(
        matches!(end, End::Fin | End::Reset),
        "the backlog connection must not be served: {end:?}"
    );
    assert!(probe.entered_so_far().is_empty());
}

/// Scenario 3: concurrent shutdowns, shutdown and force after the end,
/// serving after the end: no deadlock, no panic, the hook runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s03_concurrent_and_late_shutdowns_are_idempotent() {
    let mut srv = start(Duration::from_secs(5), |s| s).await;
    let hooks = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hooks);
    srv.handle.on_shutdown("count", move || async move {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    let mut client = Wire::connect(srv.addr).await;
    client.get("/slow?ms=300").await;
    srv.probe.entered().await;

    let barrier = Arc::new(tokio::sync::Barrier::new(8));
    let calls: Vec<_> = (0..8)
        .map(|i| {
            let handle = srv.handle.clone();
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move {
                barrier.wait().await;
                handle.shutdown(format!("caller {i}"))
            })
        })
        .collect();
    let mut started = 0;
    for call in calls {
        if call.await.unwrap() {
            started += 1;
        }
    }
    assert_eq!(started, 1, "exactly one shutdown call starts the shutdown");
    assert!(!srv.handle.shutdown("again while draining"));

    let resp = client.response().await.unwrap();
    assert_eq!(resp.status, 200);
    assert!(resp.closes(), "{resp:?}");
    assert_eq!(client.end().await, End::Fin);
    drop(client);

    let (report, _) = srv.report().await;
    assert_eq!(report.exit_code(), exit::OK, "{report}");
    let hook_items: Vec<_> = report
        .items
        .iter()
        .filter(|i| i.kind == Kind::Hook)
        .collect();
    assert_eq!(hook_items.len(), 1, "{report}");
    assert_eq!(hook_items[0].outcome, Outcome::Finished);
    assert_eq!(hooks.load(Ordering::SeqCst), 1);

    // After the end: shutdown and force are no-ops, serving returns at once.
    assert!(!srv.handle.shutdown("after done"));
    srv.handle.force("after done");
    assert_eq!(srv.handle.phase(), Phase::Done);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (app, _probe) = app();
    let again = Server::new(srv.handle.clone())
        .listener(listener)
        .serve(service(app));
    within(200 * MS, "serve after the end", again)
        .await
        .unwrap();
    assert_eq!(hooks.load(Ordering::SeqCst), 1);
}

/// Scenario 3: close (force) after shutdown, from several callers, and
/// shutdown after close: no deadlock, no panic, the hook runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s03_force_after_shutdown_and_shutdown_after_force() {
    let mut srv = start(Duration::from_secs(10), |s| s).await;
    let hooks = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hooks);
    srv.handle.on_shutdown("count", move || async move {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    let mut client = Wire::connect(srv.addr).await;
    client.get("/slow?ms=30000").await;
    srv.probe.entered().await;

    assert!(srv.handle.shutdown("first"));
    srv.listeners_closed().await;
    let t = Instant::now();
    let forces: Vec<_> = (0..4)
        .map(|i| {
            let handle = srv.handle.clone();
            tokio::spawn(async move { handle.force(format!("force {i}")) })
        })
        .collect();
    for f in forces {
        f.await.unwrap();
    }
    assert!(!srv.handle.shutdown("after force"));

    let (report, done) = srv.report().await;
    assert!(
        done.duration_since(t) < 300 * MS,
        "forced shutdown took {:?}",
        done.duration_since(t)
    );
    assert!(
        matches!(&report.forced, Some(ForceCause::Requested(r)) if r.starts_with("force ")),
        "{report}"
    );
    assert_eq!(report.exit_code(), exit::FORCED);
    assert_eq!(hooks.load(Ordering::SeqCst), 1);
    assert_eq!(
        srv.probe.dropped(Duration::from_secs(1)).await,
        "/slow?ms=30000"
    );
    let end = client.end().await;
    assert!(matches!(end, End::Fin | End::Reset), "{end:?}");
}

/// Scenario 4: TCP v4, TCP v6 (when `[::1]` binds here) and Unix listeners
/// all serve, and are all closed by the shutdown; an in-flight request on
/// the Unix listener still completes.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s04_every_listener_is_closed() {
    let v4 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let v4_addr = v4.local_addr().unwrap();
    let v6 = tokio::net::TcpListener::bind("[::1]:0").await.ok();
    if v6.is_none() {
        eprintln!("[::1] does not bind here; checking v4 and Unix only");
    }
    let v6_addr = v6.as_ref().map(|l| l.local_addr().unwrap());
    let path = std::env::temp_dir().join(format!("lameduck-http1-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let unix = tokio::net::UnixListener::bind(&path).unwrap();

    let mut listeners: Vec<Listener> = vec![v4.into(), unix.into()];
    listeners.extend(v6.map(Listener::from));
    let mut srv = start_on(listeners, v4_addr, Duration::from_secs(5), |s| s);

    let mut tcp_addrs = vec![v4_addr];
    tcp_addrs.extend(v6_addr);
    for addr in &tcp_addrs {
        let mut c = Wire::connect(*addr).await;
        c.get("/").await;
        let resp = c.response().await.unwrap();
        assert_eq!(
            (resp.status, resp.text().as_str()),
            (200, "hello\n"),
            "{addr}"
        );
    }
    let mut unix_client = Wire::new(tokio::net::UnixStream::connect(&path).await.unwrap());
    unix_client.get("/").await;
    assert_eq!(unix_client.response().await.unwrap().status, 200);
    unix_client.get("/slow?ms=300").await;
    while srv.probe.entered().await != "/slow?ms=300" {}

    srv.trigger();
    srv.listeners_closed().await;
    for addr in &tcp_addrs {
        let refused = TcpStream::connect(*addr).await;
        assert_eq!(
            refused.as_ref().map_err(io::Error::kind).err(),
            Some(io::ErrorKind::ConnectionRefused),
            "{addr}: {refused:?}"
        );
    }
    let refused = tokio::net::UnixStream::connect(&path).await;
    assert_eq!(
        refused.as_ref().map_err(io::Error::kind).err(),
        Some(io::ErrorKind::ConnectionRefused),
        "unix: {refused:?}"
    );

    let resp = unix_client.response().await.unwrap();
    assert_eq!(resp.status, 200);
    assert!(resp.closes(), "{resp:?}");
    assert_eq!(unix_client.end().await, End::Fin);
    drop(unix_client);

    let (report, _) = srv.report().await;
    let _ = std::fs::remove_file(&path);
    assert_eq!(report.exit_code(), exit::OK, "{report}");
    assert!(report.problems().next().is_none(), "{report}");
}

/// Scenario 5: with nothing open, the shutdown completes at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s05_nothing_open_shutdown_is_immediate() {
    let mut srv = start(Duration::from_secs(5), |s| s).await;
    let t0 = srv.trigger();
    let (report, done) = srv.report().await;
    let took = done.duration_since(t0);
    assert!(took < 100 * MS, "shutdown with nothing open took {took:?}");
    assert!(report.total < 100 * MS, "{report}");
    assert_eq!(report.exit_code(), exit::OK, "{report}");
}

// ---------------------------------------------------------------------------
// HTTP/1.1
// ---------------------------------------------------------------------------

/// Scenario 6: an idle keep-alive connection is closed by T0 + idle grace,
/// with a FIN, and does not hold the shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s06_idle_keep_alive_connection_closed_with_fin() {
    let mut srv = start(Duration::from_secs(5), |s| s).await;
    let mut client = Wire::connect(srv.addr).await;
    client.get("/").await;
    let resp = client.response().await.unwrap();
    assert_eq!(resp.status, 200);
    assert!(!resp.closes(), "not draining yet: {resp:?}");

    let t0 = srv.trigger();
    assert_eq!(client.end().await, End::Fin);
    let closed = t0.elapsed();
    assert!(
        closed < 300 * MS,
        "idle connection closed {closed:?} after T0"
    );
    drop(client);

    let (report, done) = srv.report().await;
    assert!(done.duration_since(t0) < 400 * MS, "{report}");
    assert_eq!(report.exit_code(), exit::OK, "{report}");
}

/// Scenario 6: a request that arrives on an idle keep-alive connection
/// within the idle grace after stop-accepting is answered with
/// `Connection: close`, then FIN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s06_request_in_idle_window_answered_with_connection_close() {
    let mut srv = start(Duration::from_secs(5), |s| {
        s.idle_grace(Duration::from_secs(1))
    })
    .await;
    let mut client = Wire::connect(srv.addr).await;
    client.get("/").await;
    let resp = client.response().await.unwrap();
    assert!(!resp.closes(), "not draining yet: {resp:?}");

    srv.trigger();
    srv.listeners_closed().await;
    client.get("/second").await;
    let resp = client.response().await.unwrap();
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.text(), "hello\n");
    assert!(resp.closes(), "no Connection: close in {resp:?}");
    assert_eq!(client.end().await, End::Fin);
    drop(client);

    let (report, _) = srv.report().await;
    assert_eq!(report.exit_code(), exit::OK, "{report}");
}

/// Scenario 7: an in-flight request gets its full 200 with
/// `Connection: close`, then FIN; the shutdown completes right after the
/// response ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s07_in_flight_request_completes_then_fin_and_shutdown_follows() {
    let mut srv = start(Duration::from_secs(5), |s| s).await;
    let mut client = Wire::connect(srv.addr).await;
    client.get("/slow?ms=1000").await;
    srv.probe.entered().await;
    let t0 = srv.trigger();

    let resp = client.response().await.unwrap();
    let response_end = Instant::now();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "slow done\n");
    assert!(resp.closes(), "no Connection: close in {resp:?}");
    assert!(
        response_end.duration_since(t0) > 800 * MS,
        "the handler was cut short"
    );
    assert_eq!(client.end().await, End::Fin);
    drop(client);

    let (report, done) = srv.report().await;
    let after = done.duration_since(response_end);
    assert!(
        after < 300 * MS,
        "shutdown completed {after:?} after the response ended"
    );
    assert_eq!(report.exit_code(), exit::OK, "{report}");
    assert_eq!(report.counts.connections_closed, 1, "{report}");
}

/// Scenario 8: a streaming response whose headers went out before T0
/// delivers every chunk and the terminating chunk, then FIN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s08_streaming_response_started_before_t0_completes_then_fin() {
    let mut srv = start(Duration::from_secs(5), |s| s).await;
    let mut client = Wire::connect(srv.addr).await;
    client.get("/stream?chunks=6&ms=60").await;
    let mut resp = client.head().await.unwrap();
    assert_eq!(resp.status, 200);
    assert!(resp.chunked(), "{resp:?}");
    let t0 = srv.trigger();

    client.body(&mut resp).await.unwrap();
    let expected: String = (0..6).map(chunk).collect();
    assert_eq!(resp.text(), expected);
    assert!(
        t0.elapsed() > 150 * MS,
        "chunks kept coming after T0 (took {:?})",
        t0.elapsed()
    );
    assert_eq!(client.end().await, End::Fin);
    drop(client);

    let (report, _) = srv.report().await;
    assert_eq!(report.exit_code(), exit::OK, "{report}");
}

/// Scenario 9: pipelined requests behind a slow one: response 1 carries
/// `Connection: close`, request 2 never reaches a handler, FIN follows
/// response 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s09_pipelined_request_not_dispatched_after_response_with_close() {
    let mut srv = start(Duration::from_secs(5), |s| s).await;
    let mut client = Wire::connect(srv.addr).await;
    client
        .send(
            "GET /slow?ms=400 HTTP/1.1\r\nHost: test\r\n\r\n\
             GET /second HTTP/1.1\r\nHost: test\r\n\r\n",
        )
        .await;
    assert_eq!(srv.probe.entered().await, "/slow?ms=400");
    srv.trigger();

    let resp = client.response().await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "slow done\n");
    assert!(resp.closes(), "no Connection: close in {resp:?}");
    assert_eq!(client.end().await, End::Fin);
    drop(client);

    let (report, _) = srv.report().await;
    assert_eq!(report.exit_code(), exit::OK, "{report}");
    assert_eq!(
        srv.probe.entered_so_far(),
        Vec::<String>::new(),
        "request 2 was dispatched"
    );
}

/// Scenario 10: a never-used connection is closed by T0 + ε (default
/// grace) with FIN and does not hold the shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s10_never_used_connection_closed_promptly() {
    let mut srv = start(Duration::from_secs(5), |s| s).await;
    let mut silent = Wire::connect(srv.addr).await;
    // Accepts are in order: once a later connection was answered, the
    // silent one has been accepted.
    let mut other = Wire::connect(srv.addr).await;
    other
        .send("GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(other.response().await.unwrap().status, 200);
    assert_eq!(other.end().await, End::Fin);
    drop(other);

    let t0 = srv.trigger();
    assert_eq!(silent.end().await, End::Fin);
    let closed = t0.elapsed();
    assert!(
        closed < 300 * MS,
        "never-used connection closed {closed:?} after T0"
    );
    drop(silent);

    let (report, done) = srv.report().await;
    let took = done.duration_since(t0);
    assert!(took < 400 * MS, "shutdown held {took:?}: {report}");
    assert_eq!(report.exit_code(), exit::OK, "{report}");
}

/// Scenario 11: partial headers, then a stall: `408` with
/// `Connection: close` within the header grace, then FIN; the shutdown
/// completes right after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s11_partial_headers_answered_408_within_header_grace() {
    let mut srv = start(Duration::from_secs(5), |s| {
        s.idle_grace(Duration::from_secs(2)).header_grace(300 * MS)
    })
    .await;
    let mut client = Wire::connect(srv.addr).await;
    let first_byte = Instant::now();
    client.send("GET /partial HTTP/1.1\r\nHost: test\r\n").await;
    let t0 = srv.trigger();

    let resp = client.response().await.unwrap();
    let answered = Instant::now();
    assert_eq!(resp.status, 408, "{resp:?}");
    assert!(resp.closes(), "no Connection: close in {resp:?}");
    let since_t0 = answered.duration_since(t0);
    assert!(since_t0 < 800 * MS, "408 came {since_t0:?} after T0");
    assert!(
        answered.duration_since(first_byte) >= 250 * MS,
        "408 before the header grace: {:?}",
        answered.duration_since(first_byte)
    );
    assert_eq!(client.end().await, End::Fin);
    drop(client);

    let (report, done) = srv.report().await;
    let after = done.duration_since(answered);
    assert!(
        after < 300 * MS,
        "shutdown completed {after:?} after the 408"
    );
    assert_eq!(report.exit_code(), exit::OK, "{report}");
    assert!(srv.probe.entered_so_far().is_empty());
}

/// Scenario 12: an upload in progress at T0 completes: 2xx with
/// `Connection: close`, then FIN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s12_upload_in_progress_completes_with_connection_close() {
    let mut srv = start(Duration::from_secs(5), |s| s).await;
    let mut client = Wire::connect(srv.addr).await;
    let part = vec![b'u'; 1000];
    client
        .send("POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: 3000\r\n\r\n")
        .await;
    client.send(&part).await;
    assert_eq!(srv.probe.entered().await, "/upload");
    srv.trigger();
    srv.listeners_closed().await;
    for _ in 0..2 {
        // A slow client: the rest trickles in after stop-accepting.
        tokio::time::sleep(50 * MS).await;
        client.send(&part).await;
    }

    let resp = client.response().await.unwrap();
    assert!((200..300).contains(&resp.status), "{resp:?}");
    assert_eq!(resp.text(), "3000");
    assert!(resp.closes(), "no Connection: close in {resp:?}");
    assert_eq!(client.end().await, End::Fin);
    drop(client);

    let (report, _) = srv.report().await;
    assert_eq!(report.exit_code(), exit::OK, "{report}");
}

// ---------------------------------------------------------------------------
// Deadline, force, report
// ---------------------------------------------------------------------------

/// Scenario 20: a 30 s handler and a 1 s deadline: the shutdown returns at
/// T0 + 1 s with a deadline outcome, and the report names the request
/// (kind, method and path, peer, age, bytes, phase).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s20_deadline_cuts_long_handler_and_report_names_it() {
    let mut srv = start(Duration::from_secs(1), |s| s).await;
    let mut client = Wire::connect(srv.addr).await;
    let peer = client.local();
    client.get("/slow?ms=30000").await;
    srv.probe.entered().await;
    let t0 = srv.trigger();

    let (report, done) = srv.report().await;
    let took = done.duration_since(t0);
    assert!(
        took >= 950 * MS && took < 1400 * MS,
        "shutdown returned {took:?} after T0 with a 1 s grace"
    );
    assert_eq!(report.forced, Some(ForceCause::Deadline), "{report}");
    assert_eq!(report.forced_in, Some(Phase::Stopping), "{report}");
    assert_eq!(report.exit_code(), exit::DEADLINE);
    let conns = connection_items(&report);
    assert_eq!(conns.len(), 1, "{report}");
    let item = conns[0];
    assert_eq!(item.outcome, Outcome::Cut, "{report}");
    assert!(item.name.contains("GET /slow"), "{item:?}");
    assert!(item.name.contains(&peer), "peer {peer} not in {item:?}");
    assert!(item.duration >= 900 * MS, "{item:?}");
    for part in ["in handler", "request age", "bytes in", "bytes out"] {
        assert!(item.detail.contains(part), "{part:?} not in {item:?}");
    }
    // Handlers see cancellation: the handler future is dropped.
    assert_eq!(
        srv.probe.dropped(Duration::from_secs(1)).await,
        "/slow?ms=30000"
    );
}

/// Scenario 22: immediate close: every connection (busy or idle) closed by
/// T0 + ε, and the handler's future is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s22_immediate_close_closes_everything_and_cancels_handlers() {
    let mut srv = start(Duration::from_secs(10), |s| s).await;
    let mut busy = Wire::connect(srv.addr).await;
    busy.get("/slow?ms=30000").await;
    assert_eq!(srv.probe.entered().await, "/slow?ms=30000");
    let mut idle = Wire::connect(srv.addr).await;
    idle.get("/").await;
    assert_eq!(idle.response().await.unwrap().status, 200);
    srv.probe.entered().await;

    let t0 = Instant::now();
    srv.handle.force("immediate");
    assert_eq!(
        srv.probe.dropped(300 * MS).await,
        "/slow?ms=30000",
        "the in-flight handler must be dropped"
    );
    assert_eq!(busy.end_within(300 * MS).await, End::Fin, "busy connection");
    assert_eq!(idle.end_within(300 * MS).await, End::Fin, "idle connection");
    assert!(t0.elapsed() < 400 * MS, "closed after {:?}", t0.elapsed());

    let (report, done) = srv.report().await;
    assert!(done.duration_since(t0) < 300 * MS, "{report}");
    assert_eq!(
        report.forced,
        Some(ForceCause::Requested("immediate".into())),
        "{report}"
    );
    assert_eq!(report.exit_code(), exit::FORCED);
    assert!(
        connection_items(&report)
            .iter()
            .any(|i| i.name.contains("GET /slow") && i.outcome == Outcome::Cut),
        "{report}"
    );
    assert!(!srv.handle.shutdown("shutdown after close"));
}

// ---------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------

/// A malformed request line gets `400`, and the server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_request_line_gets_400() {
    let mut srv = start(Duration::from_secs(5), |s| s).await;
    let mut client = Wire::connect(srv.addr).await;
    client.send("BROKEN REQUEST LINE\r\n\r\n").await;
    let resp = client.response().await.unwrap();
    assert_eq!(resp.status, 400, "{resp:?}");
    assert_eq!(client.end().await, End::Fin);
    drop(client);

    let mut next = Wire::connect(srv.addr).await;
    next.get("/").await;
    assert_eq!(next.response().await.unwrap().status, 200);
    drop(next);
    assert_eq!(srv.probe.entered_so_far(), vec!["/".to_owned()]);

    srv.trigger();
    let (report, _) = srv.report().await;
    assert_eq!(report.exit_code(), exit::OK, "{report}");
}

/// Oversized headers (one huge header, or too many headers) get `431`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431() {
    let mut srv = start(Duration::from_secs(5), |s| s).await;

    // One header larger than hyper's read buffer (about 400 KiB).
    let mut huge = b"GET / HTTP/1.1\r\nHost: test\r\nX-Huge: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 600 * 1024));
    huge.extend_from_slice(b"\r\n\r\n");
    let stream = TcpStream::connect(srv.addr).await.unwrap();
    let (read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        // The server may stop reading once it has answered.
        let _ = write.write_all(&huge).await;
        write
    });
    let mut client = Wire::new(read);
    let resp = client.response().await.unwrap();
    assert_eq!(resp.status, 431, "{resp:?}");
    drop(within(Duration::from_secs(2), "the writer", writer).await);

    // Too many headers.
    let mut many = String::from("GET / HTTP/1.1\r\nHost: test\r\n");
    for i in 0..200 {
        many.push_str(&format!("X-Header-{i}: {i}\r\n"));
    }
    many.push_str("\r\n");
    let mut client = Wire::connect(srv.addr).await;
    client.send(&many).await;
    let resp = client.response().await.unwrap();
    assert_eq!(resp.status, 431, "{resp:?}");
    drop(client);

    assert!(srv.probe.entered_so_far().is_empty());
    srv.trigger();
    let (report, _) = srv.report().await;
    assert_eq!(report.exit_code(), exit::OK, "{report}");
}

/// A handler that panics gets a `500`; the same keep-alive connection and
/// new ones keep being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_handler_gets_500_and_server_keeps_serving() {
    let mut srv = start(Duration::from_secs(5), |s| s).await;
    let stream = TcpStream::connect(srv.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    let driver = tokio::spawn(conn);
    let get = |path: &str| {
        Request::get(path)
            .header(http::header::HOST, "test")
            .body(Empty::<Bytes>::new())
            .unwrap()
    };

    let resp = within(
        Duration::from_secs(2),
        "/panic",
        sender.send_request(get("/panic")),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    resp.into_body().collect().await.unwrap();

    within(Duration::from_secs(2), "the connection", sender.ready())
        .await
        .unwrap();
    let resp = within(Duration::from_secs(2), "/", sender.send_request(get("/")))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"hello\n");
    drop(sender);
    let _ = within(Duration::from_secs(2), "the client connection", driver).await;

    let mut next = Wire::connect(srv.addr).await;
    next.get("/").await;
    assert_eq!(next.response().await.unwrap().status, 200);
    drop(next);

    srv.trigger();
    let (report, _) = srv.report().await;
    assert_eq!(report.exit_code(), exit::OK, "{report}");
}

/// A client that never reads its (endless, streaming) response cannot hold
/// the shutdown past the deadline; the report names it as cut while
/// writing the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_never_reads_cannot_outlast_the_deadline() {
    let mut srv = start(Duration::from_secs(1), |s| s).await;
    let mut client = Wire::connect(srv.addr).await;
    let peer = client.local();
    client.get("/big").await;
    assert_eq!(srv.probe.entered().await, "/big");
    let t0 = srv.trigger();

    let (report, done) = srv.report().await;
    let took = done.duration_since(t0);
    assert!(
        took >= 950 * MS && took < 1500 * MS,
        "shutdown returned {took:?} after T0 with a 1 s grace"
    );
    assert_eq!(report.forced, Some(ForceCause::Deadline), "{report}");
    assert_eq!(report.exit_code(), exit::DEADLINE);
    let conns = connection_items(&report);
    assert_eq!(conns.len(), 1, "{report}");
    let item = conns[0];
    assert_eq!(item.outcome, Outcome::Cut);
    assert!(item.name.contains("GET /big"), "{item:?}");
    assert!(item.name.contains(&peer), "peer {peer} not in {item:?}");
    assert!(item.detail.contains("writing body"), "{item:?}");
    let bytes_out: u64 = item
        .detail
        .split(", ")
        .find_map(|p| p.strip_suffix(" bytes out"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(bytes_out > 64 * 1024, "{item:?}");
    drop(client);
}

/// Bad input: a slowloris client (a request head that never completes)
/// while the server is running gets `408 Request Timeout` with
/// `Connection: close` after the header-read timeout, then FIN; the server
/// keeps serving others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_gets_408_after_header_read_timeout() {
    let srv = start(Duration::from_secs(5), |s| s.header_read_timeout(300 * MS)).await;
    let mut slow = Wire::connect(srv.addr).await;
    let sent = Instant::now();
    slow.send("GET / HTTP/1.1\r\nHost: te").await;
    let resp = within(Duration::from_secs(3), "408", slow.response())
        .await
        .unwrap();
    assert_eq!(resp.status, 408, "{resp:?}");
    assert!(resp.closes(), "no Connection: close in {resp:?}");
    assert!(
        sent.elapsed() >= 250 * MS,
        "408 too early: {:?}",
        sent.elapsed()
    );
    assert_eq!(slow.end().await, End::Fin);

    let mut other = Wire::connect(srv.addr).await;
    other.send("GET / HTTP/1.1\r\nHost: test\r\n\r\n").await;
    assert_eq!(other.response().await.unwrap().status, 200);
}

/// While running, a keep-alive connection idle longer than the idle timeout
/// (and a connection that never sent anything) is closed with a FIN; busy
/// ones are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let srv = start(Duration::from_secs(5), |s| s.idle_timeout(300 * MS)).await;
    let mut used = Wire::connect(srv.addr).await;
    used.send("GET / HTTP/1.1\r\nHost: test\r\n\r\n").await;
    assert_eq!(used.response().await.unwrap().status, 200);
    let mut never = Wire::connect(srv.addr).await;
    let idle_since = Instant::now();
    assert_eq!(
        within(Duration::from_secs(3), "idle close", used.end()).await,
        End::Fin
    );
    assert_eq!(
        within(Duration::from_secs(3), "unused close", never.end()).await,
        End::Fin
    );
    let idle = idle_since.elapsed();
    assert!(idle >= 250 * MS, "closed before the idle timeout: {idle:?}");
    // The server still serves.
    let mut again = Wire::connect(srv.addr).await;
    again.send("GET / HTTP/1.1\r\nHost: test\r\n\r\n").await;
    assert_eq!(again.response().await.unwrap().status, 200);
}

/// A handler that answers without reading the request body: hyper closes
/// the connection after the response (it does not skip an unread body
/// forever). The body bytes still in the socket are the end of a request
/// already answered, not a new one: no second, unrequested response (a 503)
/// may follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_request_body_does_not_get_a_spurious_503() {
    let srv = start(Duration::from_secs(5), |s| s).await;
    for _ in 0..20 {
        let stream = TcpStream::connect(srv.addr).await.unwrap();
        let (mut read, mut write) = stream.into_split();
        // Head and the whole body at once, so that most of the body is
        // still in the server's socket when the response goes out.
        let writer = tokio::spawn(async move {
            let mut req =
                b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 400000\r\n\r\n".to_vec();
            req.extend(std::iter::repeat_n(b'x', 400_000));
            let _ = write.write_all(&req).await;
            write
        });
        let mut seen = Vec::new();
        let _ = within(Duration::from_secs(3), "read to the end", async {
            let mut buf = [0u8; 4096];
            loop {
                match read.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        drop(writer.await);
        let text = String::from_utf8_lossy(&seen);
        assert!(text.starts_with("HTTP/1.1 200"), "{text:?}");
        assert_eq!(
            text.matches("HTTP/1.1").count(),
            1,
            "a second response: {text:?}"
        );
    }
}
