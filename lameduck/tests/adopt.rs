//! What a user adopting lameduck from `axum::serve` or raw hyper writes, on
//! real sockets: `serve(..).await` alone (no `lifecycle.await`) stops on a
//! real `SIGTERM` and drains first; `ConnectInfo` reaches handlers (TCP,
//! TLS, Unix); a source of connections of the user's own ([`Accept`]) is
//! served and drained like a listener; a hyper connection the user drives
//! is put under the drain with [`watch`]; a service that is not `Sync` is
//! served; `Serve` names its task and returns the server's error.

#![cfg(feature = "axum")]
#![allow(clippy::unwrap_used)]

use std::cell::Cell;
use std::convert::Infallible;
use std::future::IntoFuture;
use std::io;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http_body_util::{Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use lameduck::http::{Accept, Listener, Peer, Server};
use lameduck::Lifecycle;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};
use tokio::time::timeout;

mod support;
use support::fetch;

const SECOND: Duration = Duration::from_secs(1);

fn quiet() -> (Lifecycle, lameduck::Handle) {
    support::quiet(5 * SECOND)
}

// ---------------------------------------------------------------------------
// `serve(..).await` alone, with a real SIGTERM to a real process
// ---------------------------------------------------------------------------

/// The child: the code an axum user writes, `serve(..).await` and nothing
/// else (the lifecycle is never awaited before the server returns). Runs
/// only when re-executed by `serve_awaited_alone_stops_on_sigterm`.
#[test]
fn child_serve_awaited_alone() {
    if std::env::var_os("LAMEDUCK_ADOPT_CHILD").is_none() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let lifecycle = Lifecycle::builder()
            .grace(Duration::from_secs(10))
            .build()
            .unwrap();
        let app = Router::new().route(
            "/slow",
            get(|| async {
                println!("entered");
                tokio::time::sleep(Duration::from_millis(500)).await;
                "slow done\n"
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("listening {}", listener.local_addr().unwrap());
        lameduck::http::axum::serve(&lifecycle.handle(), listener, app)
            .name("api")
            .await
            .unwrap();
        println!("serve returned");
        let report = lifecycle.await;
        println!("exit {}", report.exit_code());
    });
}

/// The child of `child_serve_awaited_alone`, with a request in its handler.
struct Child {
    process: tokio::process::Child,
    pid: nix::unistd::Pid,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    /// A connection whose `/slow` request is in the handler.
    tcp: TcpStream,
}

async fn child_with_a_request_in_flight() -> Child {
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_serve_awaited_alone",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("LAMEDUCK_ADOPT_CHILD", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let addr: SocketAddr = loop {
        let line = timeout(10 * SECOND, lines.next_line())
            .await
            .expect("the child did not start")
            .unwrap()
            .expect("the child ended before listening");
        // libtest prints the test's name on the same line first.
        if let Some((_, a)) = line.split_once("listening ") {
            break a.trim().parse().unwrap();
        }
    };
    // A request in flight when SIGTERM arrives: it must still be answered.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    // Wait until the request is in the handler (it answers 500 ms later).
    loop {
        let line = timeout(10 * SECOND, lines.next_line())
            .await
            .unwrap()
            .unwrap();
        if line.expect("the child ended").contains("entered") {
            break;
        }
    }
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap());
    Child {
        process: child,
        pid,
        lines,
        tcp,
    }
}

#[tokio::test]
async fn serve_awaited_alone_stops_on_sigterm() {
    let mut child = child_with_a_request_in_flight().await;
    nix::sys::signal::kill(child.pid, nix::sys::signal::Signal::SIGTERM).unwrap();

    let mut answer = Vec::new();
    timeout(5 * SECOND, child.tcp.read_to_end(&mut answer))
        .await
        .expect("the in-flight request was not answered")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("slow done\n"), "{answer}");

    let mut rest = Vec::new();
    while let Ok(Some(line)) = timeout(5 * SECOND, child.lines.next_line()).await.unwrap() {
        rest.push(line);
    }
    let status = timeout(5 * SECOND, child.process.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?} {rest:?}");
    assert!(
        rest.iter().any(|l| l.contains("serve returned")),
        "{rest:?}"
    );
    assert!(rest.iter().any(|l| l.contains("exit 0")), "{rest:?}");
}

/// An operator who sends fifty SIGTERMs at once to a server awaited
/// alone: the process exits promptly by itself, never hangs and is never
/// killed by the signal. A burst that arrives before the first signal is
/// read counts as one (signals of one kind coalesce), so the request in
/// flight is answered and the exit is clean; if the burst is read as two
/// or more, the second forces: the request is cut and the exit code says
/// so. Either way the outcome and the exit code agree.
#[tokio::test]
async fn fifty_sigterms_to_a_server_awaited_alone_end_it_promptly() {
    let mut child = child_with_a_request_in_flight().await;
    let sent = std::time::Instant::now();
    for _ in 0..50 {
        // The process may be gone before the last ones.
        let _ = nix::sys::signal::kill(child.pid, nix::sys::signal::Signal::SIGTERM);
    }
    let mut answer = Vec::new();
    let _ = timeout(5 * SECOND, child.tcp.read_to_end(&mut answer))
        .await
        .expect("the connection was neither answered nor closed");
    let answered = String::from_utf8_lossy(&answer).ends_with("slow done\n");

    let mut rest = Vec::new();
    while let Ok(Some(line)) = timeout(5 * SECOND, child.lines.next_line()).await.unwrap() {
        rest.push(line);
    }
    let status = timeout(5 * SECOND, child.process.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?} {rest:?}");
    assert!(
        sent.elapsed() < 2 * SECOND,
        "took {:?} after the signals",
        sent.elapsed()
    );
    let expected = if answered {
        format!("exit {}", lameduck::exit::OK)
    } else {
        format!("exit {}", lameduck::exit::FORCED)
    };
    assert!(
        rest.iter().any(|l| l.contains(&expected)),
        "answered: {answered}, {rest:?}"
    );
}

// ---------------------------------------------------------------------------
// ConnectInfo
// ---------------------------------------------------------------------------

async fn who_tcp(ConnectInfo(peer): ConnectInfo<SocketAddr>) -> String {
    format!("tcp {peer}")
}

async fn who_peer(ConnectInfo(peer): ConnectInfo<Peer>) -> String {
    format!("peer {peer}")
}

fn who_app() -> Router {
    Router::new()
        .route("/tcp", get(who_tcp))
        .route("/peer", get(who_peer))
}

#[tokio::test]
async fn connect_info_reaches_axum_handlers_over_tcp_and_unix() {
    let (lifecycle, handle) = quiet();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let dir = std::env::temp_dir().join(format!("lameduck-adopt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("unix.sock");
    let _ = std::fs::remove_file(&path);
    let unix = tokio::net::UnixListener::bind(&path).unwrap();
    lameduck::http::axum::serve(&handle, tcp, who_app())
        .accept(unix)
        .with_connect_info()
        .spawn();

    let client = TcpStream::connect(addr).await.unwrap();
    let local = client.local_addr().unwrap();
    let (status, body) = fetch(client, "/tcp").await;
    assert_eq!((status, body), (200, format!("tcp {local}")));
    let (_, body) = fetch(TcpStream::connect(addr).await.unwrap(), "/peer").await;
    assert!(body.starts_with("peer 127.0.0.1:"), "{body}");

    let (_, body) = fetch(
        tokio::net::UnixStream::connect(&path).await.unwrap(),
        "/peer",
    )
    .await;
    assert_eq!(body, "peer unix");
    // No TCP peer on a Unix connection: axum's extractor rejects it.
    let (status, _) = fetch(
        tokio::net::UnixStream::connect(&path).await.unwrap(),
        "/tcp",
    )
    .await;
    assert_eq!(status, 500);

    handle.shutdown("test");
    let report = timeout(5 * SECOND, lifecycle).await.unwrap();
    assert!(report.is_clean(), "{report}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn without_connect_info_the_extractor_is_rejected() {
    let (lifecycle, handle) = quiet();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    lameduck::http::axum::serve(&handle, tcp, who_app()).spawn();
    let (status, _) = fetch(TcpStream::connect(addr).await.unwrap(), "/tcp").await;
    assert_eq!(status, 500);
    handle.shutdown("test");
    timeout(5 * SECOND, lifecycle).await.unwrap();
}

#[cfg(feature = "tls")]
#[tokio::test]
async fn connect_info_over_tls_is_the_tcp_peer() {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let tls = lameduck::http::tls::TlsConfig::from_pem(
        c.cert.pem().as_bytes(),
        c.signing_key.serialize_pem().as_bytes(),
    )
    .unwrap();
    let (lifecycle, handle) = quiet();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    lameduck::http::axum::serve(&handle, tcp, who_app())
        .with_connect_info()
        .configure(|s| s.tls(tls))
        .spawn();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(c.cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let local = tcp.local_addr().unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let (status, body) = fetch(stream, "/tcp").await;
    assert_eq!((status, body), (200, format!("tcp {local}")));
    handle.shutdown("test");
    timeout(5 * SECOND, lifecycle).await.unwrap();
}

// ---------------------------------------------------------------------------
// A source of connections of the user's own
// ---------------------------------------------------------------------------

struct Handed(mpsc::Receiver<DuplexStream>);

impl Accept for Handed {
    type Io = DuplexStream;

    async fn accept(&mut self) -> io::Result<(DuplexStream, Peer)> {
        match self.0.recv().await {
            Some(io) => Ok((io, Peer::Other("in-memory".into()))),
            None => std::future::pending().await,
        }
    }

    fn describe(&self) -> String {
        "in-memory".into()
    }
}

#[tokio::test]
async fn own_accept_is_served_and_drained_like_a_listener() {
    let (lifecycle, handle) = quiet();
    let entered = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let app = {
        let (entered, release) = (Arc::clone(&entered), Arc::clone(&release));
        Router::new().route("/", get(|| async { "hello\n" })).route(
            "/held",
            get(move || {
                let (entered, release) = (Arc::clone(&entered), Arc::clone(&release));
                async move {
                    entered.notify_one();
                    release.notified().await;
                    "released\n"
                }
            }),
        )
    };
    let (tx, rx) = mpsc::channel(4);
    lameduck::http::axum::serve(&handle, Listener::bind("127.0.0.1:0").await.unwrap(), app)
        .accept(Handed(rx))
        .with_connect_info()
        .spawn();

    let (client, server) = tokio::io::duplex(64 * 1024);
    tx.send(server).await.unwrap();
    assert_eq!(fetch(client, "/").await, (200, "hello\n".into()));

    // A request in flight on a handed-over stream holds the drain.
    let (client, server) = tokio::io::duplex(64 * 1024);
    tx.send(server).await.unwrap();
    let held = tokio::spawn(fetch(client, "/held"));
    entered.notified().await;
    handle.shutdown("test");
    let mut lifecycle = std::pin::pin!(lifecycle.into_future());
    assert!(
        timeout(Duration::from_millis(300), &mut lifecycle)
            .await
            .is_err(),
        "the drain did not wait for the handed-over connection"
    );
    release.notify_one();
    assert_eq!(held.await.unwrap(), (200, "released\n".into()));
    let report = timeout(5 * SECOND, lifecycle).await.unwrap();
    assert!(report.is_clean(), "{report}");
}

// ---------------------------------------------------------------------------
// A service that is not Sync
// ---------------------------------------------------------------------------

/// `Send` and `Clone` but not `Sync` (a `Cell`), like a `BoxCloneService`.
#[derive(Clone)]
struct Counting {
    seen: Cell<u32>,
}

impl tower::Service<http::Request<hyper::body::Incoming>> for Counting {
    type Response = http::Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<hyper::body::Incoming>) -> Self::Future {
        self.seen.set(self.seen.get() + 1);
        std::future::ready(Ok(http::Response::new(Full::new(Bytes::from(format!(
            "call {}\n",
            self.seen.get()
        ))))))
    }
}

#[tokio::test]
async fn a_service_that_is_not_sync_is_served() {
    let (lifecycle, handle) = quiet();
    let listener = Listener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::new(handle.clone())
        .listener(listener)
        .serve(Counting { seen: Cell::new(0) });
    handle.spawn_vital("http", |_| server);
    let (status, body) = fetch(TcpStream::connect(addr).await.unwrap(), "/").await;
    assert_eq!((status, body.as_str()), (200, "call 1\n"));
    handle.shutdown("test");
    timeout(5 * SECOND, lifecycle).await.unwrap();

    // A BoxCloneService (Send, not Sync) too.
    let (lifecycle, handle) = quiet();
    let listener = Listener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let boxed = tower::util::BoxCloneService::new(Counting {
        seen: Cell::new(10),
    });
    let server = Server::new(handle.clone()).listener(listener).serve(boxed);
    handle.spawn_vital("http", |_| server);
    let (_, body) = fetch(TcpStream::connect(addr).await.unwrap(), "/").await;
    assert_eq!(body, "call 11\n");
    handle.shutdown("test");
    timeout(5 * SECOND, lifecycle).await.unwrap();
}

// ---------------------------------------------------------------------------
// Serve: named, awaited, with the server's error
// ---------------------------------------------------------------------------

#[tokio::test]
async fn serve_names_its_task_and_resolves_when_the_shutdown_is_over() {
    let (lifecycle, handle) = quiet();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let app = Router::new().route("/", get(|| async { "hello\n" }));
    let serve = tokio::spawn(
        lameduck::http::axum::serve(&handle, tcp, app)
            .name("api")
            .into_future(),
    );
    assert_eq!(
        fetch(TcpStream::connect(addr).await.unwrap(), "/").await.0,
        200
    );
    let closer_ran = Arc::new(Notify::new());
    {
        let closer_ran = Arc::clone(&closer_ran);
        handle.add_closer("pool", move || async move {
            closer_ran.notify_one();
        });
    }
    handle.shutdown("test");
    timeout(5 * SECOND, serve).await.unwrap().unwrap().unwrap();
    // Resolved after the closers, not at the listener's close.
    timeout(Duration::from_millis(10), closer_ran.notified())
        .await
        .expect("serve resolved before the closers ran");
    let report = timeout(SECOND, lifecycle).await.unwrap();
    assert!(
        report
            .items
            .iter()
            .any(|i| i.name == "api" && i.kind == lameduck::Kind::Task),
        "{report}"
    );
}

struct Exploding;

impl Accept for Exploding {
    type Io = DuplexStream;

    async fn accept(&mut self) -> io::Result<(DuplexStream, Peer)> {
        panic!("this acceptor explodes");
    }
}

#[tokio::test]
async fn serve_returns_the_servers_error_and_the_report_names_it() {
    let (lifecycle, handle) = quiet();
    let app = Router::new();
    let result = timeout(
        5 * SECOND,
        lameduck::http::axum::serve(&handle, Listener::bind("127.0.0.1:0").await.unwrap(), app)
            .name("api")
            .accept(Exploding),
    )
    .await
    .unwrap();
    let error = result.unwrap_err();
    assert!(error.is_listener(), "{error}");
    let report = timeout(SECOND, lifecycle).await.unwrap();
    assert!(
        matches!(&report.trigger, lameduck::Trigger::TaskFailed { task, .. } if task == "api"),
        "{report}"
    );
    assert_eq!(report.exit_code(), lameduck::exit::FAILED);
}

// ---------------------------------------------------------------------------
// watch: a hyper connection the user drives
// ---------------------------------------------------------------------------

#[tokio::test]
async fn watched_connection_drains_gracefully_and_is_cut_when_forced() {
    let (lifecycle, handle) = quiet();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let entered = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    {
        let (handle, entered, release) =
            (handle.clone(), Arc::clone(&entered), Arc::clone(&release));
        tokio::spawn(async move {
            loop {
                let (stream, peer) = listener.accept().await.unwrap();
                let (handle, entered, release, done_tx) = (
                    handle.clone(),
                    Arc::clone(&entered),
                    Arc::clone(&release),
                    done_tx.clone(),
                );
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let (entered, release) = (Arc::clone(&entered), Arc::clone(&release));
                            async move {
                                if req.uri().path() == "/held" {
                                    entered.notify_one();
                                    release.notified().await;
                                }
                                Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(
                                    "ok\n",
                                ))))
                            }
                        },
                    );
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                    let r = lameduck::http::watch(
                        &handle,
                        format!("user connection from {peer}"),
                        conn,
                    )
                    .await;
                    let _ = done_tx.send(r.map_err(|e| e.to_string()));
                });
            }
        });
    }
    // A request in flight: on stop, hyper finishes it and closes.
    let held = tokio::spawn(fetch(TcpStream::connect(addr).await.unwrap(), "/held"));
    entered.notified().await;
    handle.shutdown("test");
    let mut lifecycle = std::pin::pin!(lifecycle.into_future());
    assert!(
        timeout(Duration::from_millis(300), &mut lifecycle)
            .await
            .is_err(),
        "the drain did not wait for the watched connection"
    );
    release.notify_one();
    assert_eq!(held.await.unwrap(), (200, "ok\n".into()));
    assert_eq!(
        timeout(5 * SECOND, done_rx.recv()).await.unwrap(),
        Some(Ok(()))
    );
    let report = timeout(5 * SECOND, lifecycle).await.unwrap();
    assert!(report.is_clean(), "{report}");
}

#[tokio::test]
async fn watched_connection_that_hangs_is_cut_and_named() {
    let (lifecycle, handle) = quiet();
    let (client, server) = tokio::io::duplex(64 * 1024);
    let entered = Arc::new(Notify::new());
    let svc = {
        let entered = Arc::clone(&entered);
        hyper::service::service_fn(move |_req: http::Request<hyper::body::Incoming>| {
            let entered = Arc::clone(&entered);
            async move {
                entered.notify_one();
                std::future::pending::<()>().await;
                Ok::<_, Infallible>(http::Response::new(Empty::<Bytes>::new()))
            }
        })
    };
    let watched = {
        let handle = handle.clone();
        tokio::spawn(async move {
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(server), svc);
            lameduck::http::watch(&handle, "hung user connection", conn).await
        })
    };
    let _request = tokio::spawn(fetch(client, "/"));
    entered.notified().await;
    handle.shutdown("test");
    handle.force("test");
    let r = timeout(5 * SECOND, watched).await.unwrap().unwrap();
    assert!(r.unwrap_err().to_string().contains("forced"));
    let report = timeout(5 * SECOND, lifecycle).await.unwrap();
    let text = report.to_string();
    assert!(text.contains("hung user connection"), "{text}");
}

// ---------------------------------------------------------------------------
// Services that are not ready, fail or panic outside their future
// ---------------------------------------------------------------------------

/// A service with a readiness of its own: `Later` is not ready on the first
/// `poll_ready` of each clone (it wakes the caller at once), `Fails` errs
/// there, `Panics` panics in its synchronous `call`.
#[derive(Clone)]
enum Picky {
    Later { asked: bool },
    Fails,
    Panics,
}

impl tower::Service<http::Request<hyper::body::Incoming>> for Picky {
    type Response = http::Response<Full<Bytes>>;
    type Error = io::Error;
    type Future = std::future::Ready<Result<Self::Response, io::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), io::Error>> {
        match self {
            Picky::Later { asked } if !*asked => {
                *asked = true;
                cx.waker().wake_by_ref();
                std::task::Poll::Pending
            }
            Picky::Fails => std::task::Poll::Ready(Err(io::Error::other("not ready, ever"))),
            _ => std::task::Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, _: http::Request<hyper::body::Incoming>) -> Self::Future {
        if matches!(self, Picky::Panics) {
            panic!("call panics on purpose");
        }
        // The signal is in scope where handlers run: in the future's polls.
        std::future::ready(Ok(http::Response::new(Full::new(Bytes::from("ready\n")))))
    }
}

async fn serve_picky(picky: Picky) -> (u16, String) {
    let (lifecycle, handle) = quiet();
    let listener = Listener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::new(handle.clone()).listener(listener).serve(picky);
    handle.spawn_vital("http", |_| server);
    let answer = fetch(TcpStream::connect(addr).await.unwrap(), "/").await;
    handle.shutdown("test");
    let report = timeout(5 * SECOND, lifecycle).await.unwrap();
    assert_eq!(report.exit_code(), 0, "{report}");
    answer
}

#[tokio::test]
async fn a_service_not_ready_at_first_is_served_once_ready() {
    assert_eq!(
        serve_picky(Picky::Later { asked: false }).await,
        (200, "ready\n".into())
    );
}

#[tokio::test]
async fn a_service_that_fails_readiness_or_panics_in_call_answers_500() {
    assert_eq!(serve_picky(Picky::Fails).await.0, 500);
    assert_eq!(serve_picky(Picky::Panics).await.0, 500);
}

// ---------------------------------------------------------------------------
// Hostile acceptors and misplaced awaits
// ---------------------------------------------------------------------------

/// Fails every accept (like a listener out of descriptors), counting calls.
struct Failing(Arc<std::sync::atomic::AtomicUsize>);

impl Accept for Failing {
    type Io = DuplexStream;

    async fn accept(&mut self) -> io::Result<(DuplexStream, Peer)> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Err(io::Error::from_raw_os_error(24)) // EMFILE
    }
}

/// An acceptor that fails at once, forever, is retried with a growing
/// back-off (not a spin: about 19 tries in the first second) and does not
/// hold the shutdown.
#[tokio::test(start_paused = true)]
async fn an_acceptor_that_always_fails_backs_off_and_stops() {
    let (lifecycle, handle) = quiet();
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let server = Server::new(handle.clone())
        .accept(Failing(Arc::clone(&calls)))
        .serve(Router::new());
    handle.spawn_vital("http", |_| server);
    tokio::time::sleep(SECOND).await;
    let n = calls.load(std::sync::atomic::Ordering::Relaxed);
    assert!((2..=25).contains(&n), "{n} accepts in one second");
    handle.shutdown("test");
    let report = timeout(5 * SECOND, lifecycle).await.unwrap();
    assert_eq!(report.exit_code(), 0, "{report}");
}

/// `Serve` awaited inside a task of the lifecycle serves in place instead
/// of waiting for the end of the shutdown (which would wait for itself).
#[tokio::test]
async fn serve_awaited_inside_a_lifecycle_task_does_not_wait_for_itself() {
    let (lifecycle, handle) = quiet();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let serve = lameduck::http::axum::serve(
        &handle,
        tcp,
        Router::new().route("/", get(|| async { "in place\n" })),
    );
    handle.spawn_vital("outer", |_| serve.into_future());
    assert_eq!(
        fetch(TcpStream::connect(addr).await.unwrap(), "/").await,
        (200, "in place\n".into())
    );
    handle.shutdown("test");
    let report = timeout(5 * SECOND, lifecycle).await.unwrap();
    assert_eq!(report.exit_code(), 0, "{report}");
    assert!(report.total < 2 * SECOND, "{report}");
}
