//! The connection state machine, step by step, under paused time.
//!
//! Two levels: [`Driver::decide`] alone (every transition, no hyper, time
//! moved by hand), and the whole connection future over a
//! `tokio::io::duplex` pipe with hyper in it (each timeout lands on its
//! exact instant, since time only moves when every task waits). Ordering
//! comes from the pipe and from `Notify`, never from sleeping.

#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::detect::PREFACE;
use super::driver::{self, Decision, Driver, End, Step};
use super::io::SHUTDOWN_PING_ACK;
use super::policy::Timeouts;
use super::state::{Activity, ConnShared, Protocol, Stop};
use super::Ctx;
use crate::http::ShutdownSignal;
use crate::report::Kind;
use crate::{Lifecycle, Signals};

const MS: Duration = Duration::from_millis(1);

fn timeouts() -> Timeouts {
    Timeouts {
        idle_grace: 50 * MS,
        header_grace: 1000 * MS,
        header_read: 10_000 * MS,
        idle: 60_000 * MS,
        goaway: 250 * MS,
        linger: Duration::ZERO,
    }
}

fn lifecycle() -> Lifecycle {
    Lifecycle::builder()
        .signals(Signals::none())
        .progress_interval(None)
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------
// The decisions alone
// ---------------------------------------------------------------------------

fn shared(lifecycle: &Lifecycle) -> ConnShared {
    ConnShared::new(
        crate::http::Peer::Other("test".into()),
        ShutdownSignal::new(lifecycle.handle()),
    )
}

fn wait(d: Decision) -> Option<Instant> {
    match d {
        Decision::Wait(at) => at,
        other => panic!("expected a wait, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn new_connection_waits_for_the_idle_timeout_then_closes_idle() {
    let l = lifecycle();
    let s = shared(&l);
    let t = timeouts();
    let mut d = Driver::new();
    let t0 = Instant::now();
    // Serving: the lazy re-check falls at the soonest timeout of any state
    // (a head could begin), until the idle deadline is the sooner.
    assert_eq!(wait(d.decide(&s, &t, t0)), Some(t0 + t.header_read));
    let later = t0 + t.idle - t.header_read / 2;
    assert_eq!(wait(d.decide(&s, &t, later)), Some(t0 + t.idle));
    assert!(matches!(d.decide(&s, &t, t0 + t.idle), Decision::Shutdown));
    assert_eq!(d.step, Step::Closing);
    assert!(d.closed_idle);
    assert_eq!(wait(d.decide(&s, &t, t0 + t.idle)), None);
}

#[tokio::test(start_paused = true)]
async fn half_sent_head_and_undecided_bytes_end_with_408_at_the_header_read_timeout() {
    let l = lifecycle();
    let s = shared(&l);
    let t = timeouts();
    let mut d = Driver::new();
    tokio::time::advance(5 * MS).await;
    s.set_activity(Activity::Reading);
    let first = Instant::now();
    assert_eq!(s.protocol(), Protocol::Undecided);
    assert_eq!(wait(d.decide(&s, &t, first)), Some(first + t.header_read));
    assert!(matches!(
        d.decide(&s, &t, first + t.header_read),
        Decision::End(End::HeadTimedOut)
    ));
}

#[tokio::test(start_paused = true)]
async fn stopping_shortens_the_head_to_the_header_grace_and_idleness_to_the_idle_grace() {
    let l = lifecycle();
    let s = shared(&l);
    let t = timeouts();
    let mut d = Driver::new();
    s.set_protocol(Protocol::Http1);
    s.set_activity(Activity::Reading);
    let first = Instant::now();
    s.raise(Stop::Stopping);
    assert_eq!(wait(d.decide(&s, &t, first)), Some(first + t.header_grace));
    // The request arrives in time: in flight, no deadline but the lifecycle's.
    s.request_started(&http::Method::GET, &http::Uri::from_static("/"));
    assert_eq!(wait(d.decide(&s, &t, first + 10 * MS)), None);
    s.request_finished();
    let idle = Instant::now();
    assert_eq!(wait(d.decide(&s, &t, idle)), Some(idle + t.idle_grace));
    assert!(matches!(
        d.decide(&s, &t, idle + t.idle_grace),
        Decision::Shutdown
    ));
    assert_eq!(d.step, Step::Closing);
}

#[tokio::test(start_paused = true)]
async fn http2_goes_away_at_the_idle_timeout_and_supplies_the_ack_only_if_missing() {
    let l = lifecycle();
    let s = shared(&l);
    let t = timeouts();
    s.set_protocol(Protocol::Http2);
    s.set_activity(Activity::Idle);
    let idle = Instant::now();
    let mut d = Driver::new();
    assert_eq!(wait(d.decide(&s, &t, idle)), Some(idle + t.header_read));
    let at = idle + t.idle;
    assert!(matches!(d.decide(&s, &t, at), Decision::Shutdown));
    assert_eq!(
        d.step,
        Step::GoingAway {
            until: at + t.goaway,
            acks: 0
        }
    );
    assert_eq!(wait(d.decide(&s, &t, at + 10 * MS)), Some(at + t.goaway));
    // No ACK within the bound: supplied.
    let bound = at + t.goaway;
    assert_eq!(wait(d.decide(&s, &t, bound)), Some(bound + t.goaway));
    assert!(s.supply_ack.load(Ordering::Acquire));
    assert_eq!(
        d.step,
        Step::FinalGoAway {
            until: Some(bound + t.goaway)
        }
    );
    assert!(matches!(
        d.decide(&s, &t, bound + t.goaway),
        Decision::End(End::Abandoned)
    ));

    // A client that did acknowledge is not given a second ACK.
    let s = shared(&l);
    s.set_protocol(Protocol::Http2);
    s.raise(Stop::Stopping);
    let now = Instant::now();
    let mut d = Driver::new();
    assert!(
        matches!(d.decide(&s, &t, now), Decision::Shutdown),
        "at once when stopping"
    );
    s.ping_acks.fetch_add(1, Ordering::AcqRel);
    let _ = d.decide(&s, &t, now + t.goaway);
    assert!(!s.supply_ack.load(Ordering::Acquire));
}

#[tokio::test(start_paused = true)]
async fn the_final_goaway_bound_counts_from_the_last_stream() {
    let l = lifecycle();
    let s = shared(&l);
    let t = timeouts();
    s.set_protocol(Protocol::Http2);
    s.request_started(&http::Method::GET, &http::Uri::from_static("/slow"));
    s.raise(Stop::Stopping);
    let t0 = Instant::now();
    let mut d = Driver::new();
    assert!(matches!(d.decide(&s, &t, t0), Decision::Shutdown));
    // The first phase ends at its bound, streams or not.
    let _ = d.decide(&s, &t, t0 + t.goaway);
    // A stream in flight: no bound of the connection's own.
    assert_eq!(wait(d.decide(&s, &t, t0 + 10 * t.goaway)), None);
    s.request_finished();
    let last = t0 + 20 * t.goaway;
    assert_eq!(wait(d.decide(&s, &t, last)), Some(last + t.goaway));
    assert!(matches!(
        d.decide(&s, &t, last + t.goaway),
        Decision::End(End::Abandoned)
    ));
}

#[tokio::test(start_paused = true)]
async fn force_ends_every_step() {
    let l = lifecycle();
    let t = timeouts();
    let steps = [
        Step::Serving,
        Step::Closing,
        Step::GoingAway {
            until: Instant::now(),
            acks: 0,
        },
        Step::FinalGoAway { until: None },
    ];
    for step in steps {
        let s = shared(&l);
        s.raise(Stop::Forced);
        let mut d = Driver::new();
        d.step = step;
        assert!(
            matches!(d.decide(&s, &t, Instant::now()), Decision::End(End::Forced)),
            "{step:?}"
        );
        // The stop level never goes back.
        s.raise(Stop::Stopping);
        assert_eq!(s.stop_level(), Stop::Forced);
    }
}

#[tokio::test(start_paused = true)]
async fn activity_changes_wake_the_driver_only_while_it_watches() {
    let l = lifecycle();
    let s = Arc::new(shared(&l));
    let woken = |s: &ConnShared| {
        let waker = futures_util::task::noop_waker();
        s.poll_wake(&mut std::task::Context::from_waker(&waker))
            .is_ready()
    };
    assert!(!woken(&s));
    s.set_activity(Activity::Reading);
    assert!(!woken(&s), "serving: no wake-up per request");
    s.watch(true);
    s.set_activity(Activity::Idle);
    assert!(woken(&s));
    assert!(!woken(&s), "a wake-up is consumed");
    s.watch(false);
    s.raise(Stop::Stopping);
    assert!(woken(&s), "a stop always wakes");
    s.raise(Stop::Stopping);
    assert!(!woken(&s), "raising the same level again does not");
}

// ---------------------------------------------------------------------------
// The whole connection over a pipe
// ---------------------------------------------------------------------------

type Svc = tower::util::BoxCloneSyncService<Request<Incoming>, Response<Full<Bytes>>, Infallible>;

/// `/wait` waits for `release`; everything else answers `hello` at once.
fn service(release: Arc<Notify>) -> Svc {
    tower::util::BoxCloneSyncService::new(tower::service_fn(move |req: Request<Incoming>| {
        let release = Arc::clone(&release);
        async move {
            if req.uri().path() == "/wait" {
                release.notified().await;
            }
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello"))))
        }
    }))
}

struct Pipe {
    client: DuplexStream,
    shared: Arc<ConnShared>,
    release: Arc<Notify>,
    task: JoinHandle<()>,
    lifecycle: Lifecycle,
}

fn pipe() -> Pipe {
    let lifecycle = lifecycle();
    let (client, server) = tokio::io::duplex(64 * 1024);
    let release = Arc::new(Notify::new());
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().header_read_timeout(None);
    let ctx = Arc::new(Ctx {
        builder,
        timeouts: timeouts(),
        view: lifecycle.handle().view(),
        connect_info: false,
        #[cfg(feature = "tls")]
        tls: None,
    });
    let svc = service(Arc::clone(&release));
    let shared = Arc::new(shared(&lifecycle));
    let entry = ctx.view.watch(Kind::Connection, shared.clone());
    let task = tokio::spawn(driver::run(server, Arc::clone(&shared), entry, ctx, svc));
    Pipe {
        client,
        shared,
        release,
        task,
        lifecycle,
    }
}

impl Pipe {
    /// Read until the server closes; what it sent, and when it closed.
    async fn read_until_closed(&mut self) -> (String, Instant) {
        let mut out = Vec::new();
        self.client.read_to_end(&mut out).await.unwrap();
        (String::from_utf8_lossy(&out).into_owned(), Instant::now())
    }

    /// Read one HTTP/1 response (head and a `content-length` body).
    async fn response(&mut self) -> String {
        let mut out = Vec::new();
        let mut byte = [0u8; 1];
        while !out.ends_with(b"\r\n\r\n") {
            self.client.read_exact(&mut byte).await.unwrap();
            out.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&out).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map_or(0, |v| v.trim().parse().unwrap());
        let mut body = vec![0u8; len];
        self.client.read_exact(&mut body).await.unwrap();
        out.extend_from_slice(&body);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Read one HTTP/2 frame: kind, flags, payload; `None` at the end.
    async fn frame(&mut self) -> Option<(u8, u8, Vec<u8>)> {
        let mut head = [0u8; 9];
        self.client.read_exact(&mut head).await.ok()?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        self.client.read_exact(&mut payload).await.ok()?;
        Some((head[3], head[4], payload))
    }

    /// Read frames up to the next GOAWAY; its last-stream-id.
    async fn goaway(&mut self) -> u32 {
        loop {
            let (kind, _, payload) = self.frame().await.expect("closed before a GOAWAY");
            if kind == GOAWAY {
                return u32::from_be_bytes(payload[0..4].try_into().unwrap()) & 0x7fff_ffff;
            }
        }
    }

    /// Send the preface and an empty SETTINGS frame, and acknowledge the
    /// server's SETTINGS.
    async fn h2_hello(&mut self) {
        let mut hello = PREFACE.to_vec();
        hello.extend_from_slice(&[0, 0, 0, SETTINGS, 0, 0, 0, 0, 0]);
        hello.extend_from_slice(&[0, 0, 0, SETTINGS, 1, 0, 0, 0, 0]);
        self.client.write_all(&hello).await.unwrap();
    }
}

const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;

#[tokio::test(start_paused = true)]
async fn pipe_never_used_connection_closes_at_the_idle_timeout() {
    let mut p = pipe();
    let t0 = Instant::now();
    let (sent, at) = p.read_until_closed().await;
    assert_eq!(sent, "");
    assert_eq!(at - t0, timeouts().idle);
    p.task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn pipe_keep_alive_idle_timeout_counts_from_the_end_of_the_response() {
    let mut p = pipe();
    tokio::time::advance(3000 * MS).await;
    p.client
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let resp = p.response().await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let answered = Instant::now();
    let (rest, at) = p.read_until_closed().await;
    assert_eq!(rest, "");
    assert_eq!(at - answered, timeouts().idle);
}

#[tokio::test(start_paused = true)]
async fn pipe_half_sent_head_gets_408_at_the_header_read_timeout() {
    let mut p = pipe();
    tokio::time::advance(100 * MS).await;
    p.client.write_all(b"GET / HT").await.unwrap();
    let first = Instant::now();
    let (sent, at) = p.read_until_closed().await;
    assert!(
        sent.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{sent}"
    );
    assert_eq!(at - first, timeouts().header_read);
}

#[tokio::test(start_paused = true)]
async fn pipe_post_byte_by_byte_is_detected_as_http1_and_timed_from_its_first_byte() {
    let mut p = pipe();
    p.client.write_all(b"P").await.unwrap();
    let first = Instant::now();
    tokio::task::yield_now().await;
    assert_eq!(p.shared.activity(), Activity::Reading);
    assert_eq!(
        p.shared.protocol(),
        Protocol::Undecided,
        "`P` decides nothing"
    );
    tokio::time::advance(3000 * MS).await;
    p.client.write_all(b"O").await.unwrap();
    // Let the server read it: the pipe delivers at once.
    tokio::task::yield_now().await;
    assert_eq!(p.shared.protocol(), Protocol::Http1);
    p.client.write_all(b"ST / HTTP/1.1\r\n").await.unwrap();
    let (sent, at) = p.read_until_closed().await;
    assert!(sent.starts_with("HTTP/1.1 408"), "{sent}");
    assert_eq!(at - first, timeouts().header_read);
}

#[tokio::test(start_paused = true)]
async fn pipe_lone_p_gets_408_at_the_header_read_timeout() {
    let mut p = pipe();
    p.client.write_all(b"P").await.unwrap();
    let first = Instant::now();
    let (sent, at) = p.read_until_closed().await;
    assert!(sent.starts_with("HTTP/1.1 408"), "{sent}");
    assert_eq!(at - first, timeouts().header_read);
}

#[tokio::test(start_paused = true)]
async fn pipe_idle_h2_gets_goaway_at_the_idle_timeout_then_the_final_one_at_the_bound() {
    let mut p = pipe();
    p.h2_hello().await;
    let hello = Instant::now();
    // Never acknowledge the shutdown PING.
    let first = p.goaway().await;
    assert_eq!(first, 0x7fff_ffff);
    assert_eq!(Instant::now() - hello, timeouts().idle);
    let last = p.goaway().await;
    assert_eq!(last, 0, "no stream was processed");
    assert_eq!(Instant::now() - hello, timeouts().idle + timeouts().goaway);
    let (rest, _) = p.read_until_closed().await;
    assert!(
        !rest.contains("HTTP/1.1"),
        "HTTP/1 bytes in HTTP/2: {rest:?}"
    );
    assert_eq!(p.shared.protocol(), Protocol::Http2);
}

#[tokio::test(start_paused = true)]
async fn pipe_h2_ping_ack_ends_the_first_phase_at_once() {
    let mut p = pipe();
    p.h2_hello().await;
    let hello = Instant::now();
    let first = p.goaway().await;
    assert_eq!(first, 0x7fff_ffff);
    // The shutdown PING follows the GOAWAY: acknowledge it.
    let (kind, flags, payload) = p.frame().await.unwrap();
    assert_eq!((kind, flags), (PING, 0));
    assert_eq!(payload, SHUTDOWN_PING_ACK[9..], "h2's shutdown payload");
    let mut ack = vec![0, 0, 8, PING, 1, 0, 0, 0, 0];
    ack.extend_from_slice(&payload);
    p.client.write_all(&ack).await.unwrap();
    assert_eq!(p.goaway().await, 0);
    assert_eq!(
        Instant::now() - hello,
        timeouts().idle,
        "no wait for the bound"
    );
    let _ = p.read_until_closed().await;
    assert!(!p.shared.supply_ack.load(Ordering::Acquire));
}

#[tokio::test(start_paused = true)]
async fn pipe_stop_closes_an_idle_http1_connection_after_the_idle_grace() {
    let mut p = pipe();
    p.client
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(p.response().await.starts_with("HTTP/1.1 200"));
    let idle = Instant::now();
    p.shared.raise(Stop::Stopping);
    let (rest, at) = p.read_until_closed().await;
    assert_eq!(rest, "");
    assert_eq!(at - idle, timeouts().idle_grace);
}

#[tokio::test(start_paused = true)]
async fn pipe_stop_answers_a_half_sent_head_408_after_the_header_grace() {
    let mut p = pipe();
    p.client.write_all(b"PUT /x HTTP/1.1\r\n").await.unwrap();
    let first = Instant::now();
    tokio::task::yield_now().await;
    p.shared.raise(Stop::Stopping);
    let (sent, at) = p.read_until_closed().await;
    assert!(sent.starts_with("HTTP/1.1 408"), "{sent}");
    assert_eq!(at - first, timeouts().header_grace);
}

#[tokio::test(start_paused = true)]
async fn pipe_stop_during_a_request_closes_right_after_its_response() {
    let mut p = pipe();
    p.client
        .write_all(b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    while p.shared.activity() != Activity::Active {
        tokio::task::yield_now().await;
    }
    // Draining (the response says `Connection: close`), then stopping, as
    // the lifecycle's broadcast would.
    assert!(p.lifecycle.handle().shutdown("test"));
    p.shared.raise(Stop::Stopping);
    tokio::time::advance(5000 * MS).await;
    p.release.notify_one();
    let resp = p.response().await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("connection: close"), "{resp}");
    let answered = Instant::now();
    let (rest, at) = p.read_until_closed().await;
    assert_eq!(rest, "");
    assert_eq!(at, answered, "closed at once after the response");
}

#[tokio::test(start_paused = true)]
async fn pipe_stop_sends_goaway_at_once_on_an_idle_h2_connection() {
    let mut p = pipe();
    p.h2_hello().await;
    // The server's SETTINGS (and its ACK of ours) show it is serving.
    let _ = p.frame().await.unwrap();
    let t0 = Instant::now();
    p.shared.raise(Stop::Stopping);
    assert_eq!(p.goaway().await, 0x7fff_ffff);
    assert_eq!(Instant::now(), t0);
    assert_eq!(p.goaway().await, 0);
    assert_eq!(Instant::now() - t0, timeouts().goaway);
    let (_, at) = p.read_until_closed().await;
    assert_eq!(at - t0, timeouts().goaway);
    p.task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn pipe_force_ends_a_request_in_flight_at_once() {
    let mut p = pipe();
    p.client
        .write_all(b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    while p.shared.activity() != Activity::Active {
        tokio::task::yield_now().await;
    }
    let t0 = Instant::now();
    p.shared.raise(Stop::Forced);
    let (sent, at) = p.read_until_closed().await;
    assert_eq!(sent, "", "no response for a forced request");
    assert!(at - t0 <= 20 * MS, "closed {:?} after the force", at - t0);
    p.task.await.unwrap();
}

/// Every connection's task holds this future for the connection's whole
/// life: a buffer or a timer kept in its state costs on each of 10k idle
/// connections (a 4 KiB close buffer once made it 4.7 KiB).
#[tokio::test]
async fn the_connection_future_stays_small() {
    let lifecycle = lifecycle();
    let (_client, server) = tokio::io::duplex(64);
    let ctx = Arc::new(Ctx {
        builder: auto::Builder::new(TokioExecutor::new()),
        timeouts: timeouts(),
        view: lifecycle.handle().view(),
        connect_info: false,
        #[cfg(feature = "tls")]
        tls: None,
    });
    let svc = service(Arc::new(Notify::new()));
    let shared = Arc::new(shared(&lifecycle));
    let entry = ctx.view.watch(Kind::Connection, shared.clone());
    let fut = driver::run(server, shared, entry, ctx, svc);
    let size = std::mem::size_of_val(&fut);
    assert!(size <= 1024, "the connection future is {size} bytes");
}
