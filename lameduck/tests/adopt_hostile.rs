//! Hostile clients and careless users of the adoption API: acceptors that
//! never resolve or hand back piles of queued (or dead) connections,
//! watched connections whose client never reads, services that are never
//! ready or panic, `ShutdownSignal::current()` where a handler might look
//! for it, `Lifecycle::run` dropped mid-shutdown, a lifecycle built outside
//! a runtime, and a named Unix client.

#![cfg(feature = "axum")]
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::future::IntoFuture;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use lameduck::http::{Accept, Peer, ShutdownSignal};
use lameduck::{Lifecycle, Signals};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::timeout;

const SECOND: Duration = Duration::from_secs(1);

mod support;
use support::{quiet, try_fetch as fetch};

// ---------------------------------------------------------------------------
// Acceptors
// ---------------------------------------------------------------------------

/// An acceptor whose `accept` never resolves, and whose `close` hands back
/// whatever was put in `queued` (requests already written by clients, or
/// streams whose client already went away).
struct Stuck {
    queued: Vec<(DuplexStream, Peer)>,
    closed: Arc<AtomicBool>,
    polled: Arc<Notify>,
}

impl Accept for Stuck {
    type Io = DuplexStream;

    async fn accept(&mut self) -> io::Result<(DuplexStream, Peer)> {
        self.polled.notify_one();
        std::future::pending().await
    }

    fn describe(&self) -> String {
        "stuck acceptor".into()
    }

    fn close(self) -> Vec<(DuplexStream, Peer)> {
        self.closed.store(true, Ordering::SeqCst);
        self.queued
    }
}

/// An acceptor that never resolves does not hold the stop: its future is
/// dropped, `close` is called once, and the report is clean.
#[tokio::test]
async fn an_accept_that_never_resolves_does_not_hold_the_stop() {
    let (lifecycle, handle) = quiet(5 * SECOND);
    let closed = Arc::new(AtomicBool::new(false));
    let polled = Arc::new(Notify::new());
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    lameduck::http::axum::serve(&handle, tcp, Router::new())
        .accept(Stuck {
            queued: Vec::new(),
            closed: Arc::clone(&closed),
            polled: Arc::clone(&polled),
        })
        .spawn();
    timeout(5 * SECOND, polled.notified()).await.unwrap();
    handle.shutdown("test");
    let report = timeout(5 * SECOND, lifecycle).await.unwrap();
    assert!(report.is_clean(), "{report}");
    assert!(closed.load(Ordering::SeqCst), "close was not called");
    assert!(report.total < 2 * SECOND, "{report}");
}

/// `close` hands back 64 queued connections with a request already
/// written, and 16 whose client is already gone: every live one is
/// answered (with `Connection: close`, the server is draining) and the
/// dead ones do not stain the report.
#[tokio::test]
async fn close_returning_many_queued_and_dead_connections_serves_them_all() {
    let (lifecycle, handle) = quiet(5 * SECOND);
    let closed = Arc::new(AtomicBool::new(false));
    let polled = Arc::new(Notify::new());
    let mut queued = Vec::new();
    let mut clients = Vec::new();
    for i in 0..64 {
        let (mut client, server) = tokio::io::duplex(16 * 1024);
        client
            .write_all(format!("GET /{i} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        queued.push((server, Peer::Other(format!("queued {i}").into())));
        clients.push(client);
    }
    for i in 0..16 {
        let (mut client, server) = tokio::io::duplex(1024);
        // Half send a partial request, half nothing; all hang up.
        if i % 2 == 0 {
            client.write_all(b"GET / HTTP/1.1\r\nho").await.unwrap();
        }
        drop(client);
        queued.push((server, Peer::Other(format!("dead {i}").into())));
    }
    let app = Router::new().route("/{n}", get(|| async { "served\n" }));
    lameduck::http::axum::serve(
        &handle,
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        app,
    )
    .accept(Stuck {
        queued,
        closed: Arc::clone(&closed),
        polled: Arc::clone(&polled),
    })
    .spawn();
    timeout(5 * SECOND, polled.notified()).await.unwrap();
    handle.shutdown("test");
    let mut reads = Vec::new();
    for mut client in clients {
        reads.push(tokio::spawn(async move {
            let mut answer = Vec::new();
            client.read_to_end(&mut answer).await.unwrap();
            String::from_utf8_lossy(&answer).into_owned()
        }));
    }
    for read in reads {
        let answer = timeout(5 * SECOND, read).await.unwrap().unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{answer}"
        );
        assert!(answer.ends_with("served\n"), "{answer}");
    }
    let report = timeout(5 * SECOND, lifecycle).await.unwrap();
    assert!(closed.load(Ordering::SeqCst));
    assert!(report.is_clean(), "{report}");
}

// ---------------------------------------------------------------------------
// watch: a client that never reads
// ---------------------------------------------------------------------------

/// A watched connection whose client never reads a large response (the
/// server's write blocks on a full pipe) is cut at the deadline, `watch`
/// returns an error, and the report names it.
#[tokio::test]
async fn watched_connection_whose_client_never_reads_is_cut_at_the_deadline() {
    let (lifecycle, handle) = quiet(Duration::from_millis(300));
    let (mut client, server) = tokio::io::duplex(1024);
    let answered = Arc::new(Notify::new());
    let svc = {
        let answered = Arc::clone(&answered);
        hyper::service::service_fn(move |_req: http::Request<hyper::body::Incoming>| {
            answered.notify_one();
            async move {
                Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(vec![
                    b'x';
                    4 << 20
                ]))))
            }
        })
    };
    let watched = {
        let handle = handle.clone();
        tokio::spawn(async move {
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(server), svc);
            lameduck::http::watch(&handle, "client that never reads", conn).await
        })
    };
    client
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    timeout(5 * SECOND, answered.notified()).await.unwrap();
    handle.shutdown("test");
    let r = timeout(5 * SECOND, watched)
        .await
        .expect("watch did not return after the deadline")
        .unwrap();
    assert!(r.unwrap_err().to_string().contains("forced"));
    let report = timeout(5 * SECOND, lifecycle).await.unwrap();
    assert!(!report.is_clean(), "{report}");
    assert!(
        report.to_string().contains("client that never reads"),
        "{report}"
    );
    drop(client);
}

// ---------------------------------------------------------------------------
// Services that are never ready, or panic
// ---------------------------------------------------------------------------

#[derive(Clone)]
enum Nasty {
    /// `poll_ready` is Pending forever (and never wakes anyone).
    NeverReady(Arc<Notify>),
    /// `poll_ready` panics.
    PanicsInReady,
    /// The future is Pending once (waking itself), then panics.
    PanicsLater,
}

impl tower::Service<http::Request<hyper::body::Incoming>> for Nasty {
    type Response = http::Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>,
    >;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        match self {
            Nasty::NeverReady(asked) => {
                asked.notify_one();
                Poll::Pending
            }
            Nasty::PanicsInReady => panic!("poll_ready panics on purpose"),
            Nasty::PanicsLater => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, _: http::Request<hyper::body::Incoming>) -> Self::Future {
        Box::pin(async {
            tokio::task::yield_now().await;
            panic!("the future panics after its first Pending");
        })
    }
}

/// A request to a service that is never ready holds the drain until the
/// deadline, is named in the report (a connection cut), and the client
/// sees its connection end.
#[tokio::test]
async fn a_service_never_ready_holds_the_drain_until_the_deadline_and_is_cut() {
    let (lifecycle, handle) = quiet(Duration::from_millis(400));
    let asked = Arc::new(Notify::new());
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let server = lameduck::http::Server::new(handle.clone())
        .accept(tcp)
        .serve(Nasty::NeverReady(Arc::clone(&asked)));
    handle.spawn_vital("http", |_| server);
    let request = tokio::spawn(fetch(TcpStream::connect(addr).await.unwrap(), "/"));
    timeout(5 * SECOND, asked.notified()).await.unwrap();
    handle.shutdown("test");
    let mut lifecycle = std::pin::pin!(lifecycle.into_future());
    assert!(
        timeout(Duration::from_millis(200), &mut lifecycle)
            .await
            .is_err(),
        "the drain did not wait for the request stuck in poll_ready"
    );
    let report = timeout(5 * SECOND, lifecycle).await.unwrap();
    assert!(!report.is_clean(), "{report}");
    assert!(
        report
            .items
            .iter()
            .any(|i| i.kind == lameduck::Kind::Connection),
        "{report}"
    );
    let answer = timeout(5 * SECOND, request).await.unwrap().unwrap();
    assert!(answer.is_err(), "{answer:?}");
}

async fn serve_nasty(nasty: Nasty) -> Result<(u16, String), String> {
    let (lifecycle, handle) = quiet(5 * SECOND);
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let server = lameduck::http::Server::new(handle.clone())
        .accept(tcp)
        .serve(nasty);
    handle.spawn_vital("http", |_| server);
    let answer = timeout(
        5 * SECOND,
        fetch(TcpStream::connect(addr).await.unwrap(), "/"),
    )
    .await
    .unwrap();
    handle.shutdown("test");
    let report = timeout(5 * SECOND, lifecycle).await.unwrap();
    assert_eq!(report.exit_code(), 0, "{report}");
    answer
}

#[tokio::test]
async fn a_service_panicking_in_poll_ready_answers_500() {
    assert_eq!(serve_nasty(Nasty::PanicsInReady).await.unwrap().0, 500);
}

#[tokio::test]
async fn a_future_panicking_after_its_first_pending_answers_500() {
    assert_eq!(serve_nasty(Nasty::PanicsLater).await.unwrap().0, 500);
}

// ---------------------------------------------------------------------------
// ShutdownSignal::current() where handlers look for it
// ---------------------------------------------------------------------------

/// A body that records, on its first poll, whether the signal is in scope.
struct Probing {
    seen: Arc<Mutex<Option<bool>>>,
    done: bool,
}

impl http_body::Body for Probing {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        if self.done {
            return Poll::Ready(None);
        }
        self.done = true;
        *self.seen.lock().unwrap() = Some(ShutdownSignal::current().is_some());
        Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(
            b"body\n",
        )))))
    }
}

/// Observed: the signal is in scope in the handler's future and in
/// futures nested in it (joined, selected, boxed); it is NOT in a task the
/// handler spawns (a thread-local set around each poll does not follow
/// `tokio::spawn`), nor in the response body's polls (only the future is
/// wrapped). Handlers that need it there must take it before.
#[tokio::test]
async fn shutdown_signal_current_in_nested_futures_spawned_tasks_and_bodies() {
    let (lifecycle, handle) = quiet(5 * SECOND);
    let body_seen = Arc::new(Mutex::new(None));
    let app = {
        let body_seen = Arc::clone(&body_seen);
        Router::new()
            .route(
                "/nested",
                get(|| async {
                    let direct = ShutdownSignal::current().is_some();
                    tokio::task::yield_now().await;
                    let boxed: std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>> =
                        Box::pin(async {
                            tokio::task::yield_now().await;
                            ShutdownSignal::current().is_some()
                        });
                    let (a, b) = tokio::join!(boxed, async {
                        tokio::task::yield_now().await;
                        ShutdownSignal::current().is_some()
                    });
                    let spawned = tokio::spawn(async { ShutdownSignal::current().is_some() })
                        .await
                        .unwrap();
                    format!("{direct} {a} {b} {spawned}")
                }),
            )
            .route(
                "/body",
                get(move || {
                    let seen = Arc::clone(&body_seen);
                    async move { axum::body::Body::new(Probing { seen, done: false }) }
                }),
            )
    };
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    lameduck::http::axum::serve(&handle, tcp, app).spawn();
    let (_, nested) = fetch(TcpStream::connect(addr).await.unwrap(), "/nested")
        .await
        .unwrap();
    assert_eq!(nested, "true true true false");
    let (_, body) = fetch(TcpStream::connect(addr).await.unwrap(), "/body")
        .await
        .unwrap();
    assert_eq!(body, "body\n");
    assert_eq!(*body_seen.lock().unwrap(), Some(false));
    // And nothing leaks into the test's own task after the requests.
    assert!(ShutdownSignal::current().is_none());
    handle.shutdown("test");
    let report = timeout(5 * SECOND, lifecycle).await.unwrap();
    assert!(report.is_clean(), "{report}");
}

// ---------------------------------------------------------------------------
// Lifecycle::run dropped mid-shutdown; a lifecycle built outside a runtime
// ---------------------------------------------------------------------------

/// `run`'s future dropped while a slow request is being drained: the
/// shutdown goes on (driven by its own task again), the request is
/// answered, closers run and `done()` resolves.
#[tokio::test]
async fn run_dropped_during_the_drain_still_finishes_the_shutdown() {
    let (lifecycle, handle) = quiet(5 * SECOND);
    let entered = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let app = {
        let (entered, release) = (Arc::clone(&entered), Arc::clone(&release));
        Router::new().route(
            "/slow",
            get(move || {
                let (entered, release) = (Arc::clone(&entered), Arc::clone(&release));
                async move {
                    entered.notify_one();
                    release.notified().await;
                    "slow\n"
                }
            }),
        )
    };
    let closer_ran = Arc::new(AtomicUsize::new(0));
    {
        let closer_ran = Arc::clone(&closer_ran);
        handle.add_closer("pool", move || async move {
            closer_ran.fetch_add(1, Ordering::SeqCst);
        });
    }
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    lameduck::http::axum::serve(&handle, tcp, app).spawn();
    let slow = tokio::spawn(fetch(TcpStream::connect(addr).await.unwrap(), "/slow"));
    entered.notified().await;
    handle.shutdown("test");
    // Poll run() for a while (it takes the polling over), then drop it.
    assert!(timeout(Duration::from_millis(100), lifecycle.run())
        .await
        .is_err());
    release.notify_one();
    assert_eq!(slow.await.unwrap().unwrap(), (200, "slow\n".into()));
    timeout(5 * SECOND, handle.done())
        .await
        .expect("the shutdown did not finish after run was dropped");
    assert_eq!(closer_ran.load(Ordering::SeqCst), 1);
}

/// `run` dropped while a closer is running: the closer finishes, the
/// shutdown completes.
#[tokio::test]
async fn run_dropped_during_a_closer_still_finishes_the_shutdown() {
    let (lifecycle, handle) = quiet(5 * SECOND);
    let in_closer = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let finished = Arc::new(AtomicBool::new(false));
    {
        let (in_closer, release, finished) = (
            Arc::clone(&in_closer),
            Arc::clone(&release),
            Arc::clone(&finished),
        );
        handle.add_closer("slow closer", move || async move {
            in_closer.notify_one();
            release.notified().await;
            finished.store(true, Ordering::SeqCst);
        });
    }
    handle.shutdown("test");
    {
        let run = lifecycle.run();
        tokio::pin!(run);
        tokio::select! {
            _ = &mut run => panic!("finished before the closer was released"),
            () = in_closer.notified() => {}
        }
    }
    release.notify_one();
    timeout(5 * SECOND, handle.done())
        .await
        .expect("the shutdown did not finish after run was dropped in a closer");
    assert!(finished.load(Ordering::SeqCst));
}

/// A lifecycle built before the runtime (a synchronous `main` reading its
/// configuration) and a server awaited alone, as an axum user would.
///
/// The lifecycle starts being driven at its first use inside the runtime
/// (here: the server), so `Serve`'s future resolves after the shutdown.
/// (It once hung: only `Lifecycle::run` drove such a lifecycle.)
#[test]
fn lifecycle_built_outside_a_runtime_then_served_inside_one() {
    let lifecycle = Lifecycle::builder()
        .signals(Signals::none())
        .grace(5 * SECOND)
        .progress_interval(None)
        .build()
        .unwrap();
    let handle = lifecycle.handle();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let outcome = rt.block_on(async move {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let serve = tokio::spawn(
            lameduck::http::axum::serve(
                &handle,
                tcp,
                Router::new().route("/", get(|| async { "hi\n" })),
            )
            .into_future(),
        );
        let answer = fetch(TcpStream::connect(addr).await.unwrap(), "/").await;
        handle.shutdown("test");
        let ended = timeout(3 * SECOND, serve).await;
        (answer, ended.is_ok(), lifecycle)
    });
    let (answer, ended, lifecycle) = outcome;
    assert_eq!(answer.unwrap(), (200, "hi\n".into()));
    drop(lifecycle);
    assert!(
        ended,
        "serve(..).await never returned: nobody drives a lifecycle built outside a runtime"
    );
}

// ---------------------------------------------------------------------------
// Serve awaited after the shutdown; ConnectInfo over a named Unix client
// ---------------------------------------------------------------------------

/// `Serve` awaited once the shutdown is over returns at once.
#[tokio::test]
async fn serve_awaited_after_the_shutdown_returns_at_once() {
    let (lifecycle, handle) = quiet(5 * SECOND);
    handle.shutdown("test");
    let report = timeout(5 * SECOND, lifecycle).await.unwrap();
    assert!(report.is_clean(), "{report}");
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let r = timeout(
        5 * SECOND,
        lameduck::http::axum::serve(&handle, tcp, Router::new()).into_future(),
    )
    .await
    .expect("serve after the shutdown did not return");
    assert!(r.is_ok(), "{r:?}");
}

async fn who_peer(ConnectInfo(peer): ConnectInfo<Peer>) -> String {
    format!("peer {peer}")
}

/// A Unix client that bound a path of its own is named by it.
#[tokio::test]
async fn connect_info_names_a_unix_client_bound_to_a_path() {
    let (lifecycle, handle) = quiet(5 * SECOND);
    let dir = std::env::temp_dir().join(format!("lameduck-adopt-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let server_path = dir.join("server.sock");
    let client_path = dir.join("client.sock");
    let _ = std::fs::remove_file(&server_path);
    let _ = std::fs::remove_file(&client_path);
    let unix = tokio::net::UnixListener::bind(&server_path).unwrap();
    lameduck::http::axum::serve(
        &handle,
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        Router::new().route("/peer", get(who_peer)),
    )
    .accept(unix)
    .with_connect_info()
    .spawn();
    let socket = tokio::net::UnixSocket::new_stream().unwrap();
    socket.bind(&client_path).unwrap();
    let stream = socket.connect(&server_path).await.unwrap();
    let (_, body) = fetch(stream, "/peer").await.unwrap();
    assert_eq!(body, format!("peer unix {}", client_path.display()));
    handle.shutdown("test");
    let report = timeout(5 * SECOND, lifecycle).await.unwrap();
    assert!(report.is_clean(), "{report}");
    let _ = std::fs::remove_dir_all(&dir);
}
