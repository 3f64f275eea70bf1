//! The axum and tonic integrations end to end: an axum `Router` with state
//! served by `lameduck::http::Server` (the `ShutdownSignal` extractor,
//! `Readiness` turning 503 while draining), and a tonic health service whose
//! statuses turn `NOT_SERVING` during the lame-duck period.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use lameduck::http::axum::health_router;
use lameduck::http::{Listener, Readiness, Server, ShutdownSignal};
use lameduck::{exit, Lifecycle, Phase, Signals};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::{timeout, Instant};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const WAIT: Duration = Duration::from_secs(3);

async fn h1_connect(addr: SocketAddr) -> SendRequest<Empty<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// One GET on `sender`: status, whether it carried `Connection: close`, and
/// the body.
async fn h1_get(sender: &mut SendRequest<Empty<Bytes>>, path: &str) -> (u16, bool, String) {
    let fut = async {
        sender.ready().await.unwrap();
        let req = http::Request::get(path)
            .header(http::header::HOST, "localhost")
            .body(Empty::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        let close = parts
            .headers
            .get(http::header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        (
            parts.status.as_u16(),
            close,
            String::from_utf8_lossy(&body).into_owned(),
        )
    };
    timeout(WAIT, fut).await.expect("no HTTP/1 response")
}

#[derive(Clone)]
struct AppState {
    greeting: Arc<str>,
    entered: Arc<Notify>,
}

async fn hello(State(state): State<AppState>) -> String {
    format!("{}\n", state.greeting)
}

/// A long poll: answers once the server stops, saying what it observed.
async fn long_poll(State(state): State<AppState>, signal: ShutdownSignal) -> String {
    let draining_at_entry = signal.is_draining();
    state.entered.notify_one();
    signal.stopping().await;
    format!(
        "draining at entry: {draining_at_entry}, stopping: {}",
        signal.is_stopping()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_router_with_state_shutdown_signal_and_readiness() {
    let drain_delay = Duration::from_millis(400);
    let lifecycle = Lifecycle::builder()
        .signals(Signals::none())
        .grace(Duration::from_secs(5))
        .drain_delay(drain_delay)
        .progress_interval(None)
        .build()
        .unwrap();
    let handle = lifecycle.handle();
    let readiness = Readiness::new(handle.clone());
    let state = AppState {
        greeting: Arc::from("hello from state"),
        entered: Arc::new(Notify::new()),
    };
    let app = Router::new()
        .route("/hello", get(hello))
        .route("/poll", get(long_poll))
        .merge(health_router(readiness.clone()))
        .with_state(state.clone());
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let server = Server::new(handle.clone()).listener(tcp).serve(app);
    handle.spawn_vital("http", |_| server);

    let mut client = h1_connect(addr).await;
    assert_eq!(
        h1_get(&mut client, "/hello").await,
        (200, false, "hello from state\n".to_owned())
    );
    assert_eq!(
        h1_get(&mut client, "/readyz").await,
        (200, false, "ready\n".to_owned())
    );
    assert!(readiness.is_ready());

    // A long poll in flight, on its own connection.
    let mut poller = h1_connect(addr).await;
    let poll = tokio::spawn(async move {
        let answer = h1_get(&mut poller, "/poll").await;
        (answer, Instant::now())
    });
    timeout(WAIT, state.entered.notified())
        .await
        .expect("the long poll never reached its handler");

    let t0 = Instant::now();
    handle.shutdown("integration test");
    let done = tokio::spawn(lifecycle.run());
    assert!(!readiness.is_ready());
    let mut fresh = h1_connect(addr).await;
    assert_eq!(
        h1_get(&mut fresh, "/readyz").await,
        (503, true, "draining\n".to_owned())
    );
    assert_eq!(handle.phase(), Phase::Draining);
    assert!(
        !poll.is_finished(),
        "the long poll ended during the lame duck"
    );

    let ((status, close, body), answered_at) = timeout(WAIT, poll).await.unwrap().unwrap();
    assert_eq!(status, 200);
    assert!(close, "the long poll's answer lacks Connection: close");
    assert_eq!(body, "draining at entry: false, stopping: true");
    assert!(
        answered_at - t0 >= drain_delay,
        "ShutdownSignal::stopping fired {} ms after T0, before the drain delay",
        (answered_at - t0).as_millis()
    );

    let report = timeout(WAIT, done).await.unwrap().unwrap();
    assert_eq!(report.exit_code(), exit::OK, "{report}");
    assert!(report.problems().next().is_none(), "{report}");
}

async fn health(client: &mut HealthClient<tonic::transport::Channel>, service: &str) -> i32 {
    let req = HealthCheckRequest {
        service: service.to_owned(),
    };
    timeout(WAIT, client.check(req))
        .await
        .expect("health check timed out")
        .unwrap()
        .into_inner()
        .status
}

/// Watch `service` until it reports `want` (the reporter sets statuses from
/// a task of its own, so the first answer may precede them).
async fn wait_for(
    client: &mut HealthClient<tonic::transport::Channel>,
    service: &str,
    want: ServingStatus,
) {
    let req = HealthCheckRequest {
        service: service.to_owned(),
    };
    let mut stream = timeout(WAIT, client.watch(req))
        .await
        .unwrap()
        .unwrap()
        .into_inner();
    loop {
        let msg = timeout(WAIT, stream.message())
            .await
            .unwrap_or_else(|_| panic!("{service:?} never became {want:?}"))
            .unwrap()
            .expect("watch stream ended");
        if msg.status == want as i32 {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_health_turns_not_serving_while_draining() {
    let drain_delay = Duration::from_millis(1000);
    let lifecycle = Lifecycle::builder()
        .signals(Signals::none())
        .grace(Duration::from_secs(5))
        .drain_delay(drain_delay)
        .progress_interval(None)
        .build()
        .unwrap();
    let handle = lifecycle.handle();
    let (_reporter, health_server) = lameduck::http::tonic::health_reporter(&handle, &["test.Svc"]);
    let routes = tonic::service::Routes::new(health_server);
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    lameduck::http::tonic::serve(&handle, Listener::from(tcp), routes).spawn();

    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    wait_for(&mut client, "", ServingStatus::Serving).await;
    wait_for(&mut client, "test.Svc", ServingStatus::Serving).await;
    assert_eq!(health(&mut client, "").await, ServingStatus::Serving as i32);
    assert_eq!(
        health(&mut client, "test.Svc").await,
        ServingStatus::Serving as i32
    );

    let t0 = Instant::now();
    handle.shutdown("integration test");
    let done = tokio::spawn(lifecycle.run());
    wait_for(&mut client, "", ServingStatus::NotServing).await;
    wait_for(&mut client, "test.Svc", ServingStatus::NotServing).await;
    assert_eq!(
        health(&mut client, "").await,
        ServingStatus::NotServing as i32
    );
    assert_eq!(
        health(&mut client, "test.Svc").await,
        ServingStatus::NotServing as i32
    );
    assert_eq!(
        handle.phase(),
        Phase::Draining,
        "NOT_SERVING must be visible during the lame duck ({} ms after T0)",
        t0.elapsed().as_millis()
    );

    let report = timeout(WAIT, done).await.unwrap().unwrap();
    drop(client);
    assert_eq!(report.exit_code(), exit::OK, "{report}");
    assert!(report.problems().next().is_none(), "{report}");
    assert!(
        report.total < drain_delay + Duration::from_millis(500),
        "shutdown took {:?}",
        report.total
    );
}

/// A streaming RPC that ignores the shutdown (here the health `Watch`
/// stream, which never ends by itself) is ended when the server stops, at a
/// message boundary, with `UNAVAILABLE`: the client sees every update, then
/// a status it can retry on, and the drain does not wait for the deadline.
#[tokio::test]
async fn grpc_stream_ends_with_unavailable_when_the_server_stops() {
    let grace = Duration::from_secs(10);
    let lifecycle = Lifecycle::builder()
        .signals(Signals::none())
        .grace(grace)
        .drain_delay(Duration::from_millis(300))
        .progress_interval(None)
        .build()
        .unwrap();
    let handle = lifecycle.handle();
    let (_reporter, health_server) = lameduck::http::tonic::health_reporter(&handle, &[]);
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    lameduck::http::tonic::serve(
        &handle,
        Listener::from(tcp),
        tonic::service::Routes::new(health_server),
    )
    .spawn();
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    let mut stream = client
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = timeout(WAIT, stream.message()).await.unwrap().unwrap();
    assert_eq!(first.unwrap().status, ServingStatus::Serving as i32);

    handle.shutdown("grpc stream test");
    let done = tokio::spawn(lifecycle.run());
    let second = timeout(WAIT, stream.message()).await.unwrap().unwrap();
    assert_eq!(second.unwrap().status, ServingStatus::NotServing as i32);
    let end = timeout(WAIT, stream.message()).await.unwrap();
    let status = end.expect_err("the stream must end with a status");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("shutting down"), "{status:?}");

    let report = timeout(WAIT, done).await.unwrap().unwrap();
    assert_eq!(report.exit_code(), exit::OK, "{report}");
    assert!(
        report.total < grace / 2,
        "drain waited for the deadline: {report}"
    );
}
