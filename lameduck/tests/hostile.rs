//! Hostile and idle clients (CONFORMANCE.md scenarios 27-30), on real
//! sockets on 127.0.0.1: an idle HTTP/2 connection, a client that never
//! acknowledges the shutdown PING, a half-sent request head whose first byte
//! is also the first byte of the HTTP/2 preface, and a WebSocket peer that
//! never reads. Each is a regression test for a defect of issue 9.

#![allow(clippy::unwrap_used)]

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::routing::get;
use axum::Router;
use lameduck::http::{axum::going_away, Server, ShutdownSignal};
use lameduck::{exit, Handle, Lifecycle, Report, Signals};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Mutex, Notify};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};

const MS: Duration = Duration::from_millis(1);
/// How long any single wait for the server may take before the test fails.
const WAIT: Duration = Duration::from_secs(5);

fn app() -> Router {
    Router::new().route("/fast", get(|| async { "fast" }))
}

async fn serve(
    router: Router,
    grace: Duration,
    tune: impl FnOnce(Server) -> Server,
) -> (Lifecycle, Handle, SocketAddr) {
    let lifecycle = Lifecycle::builder()
        .signals(Signals::none())
        .grace(grace)
        .progress_interval(None)
        .build()
        .unwrap();
    let handle = lifecycle.handle();
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let server = tune(Server::new(handle.clone()).listener(tcp)).serve(router);
    handle.spawn_vital("http", |_| server);
    (lifecycle, handle, addr)
}

fn run(lifecycle: Lifecycle) -> JoinHandle<(Report, Instant)> {
    tokio::spawn(async move {
        let report = lifecycle.run().await;
        (report, Instant::now())
    })
}

async fn finish(done: JoinHandle<(Report, Instant)>) -> (Report, Instant) {
    timeout(WAIT, done)
        .await
        .expect("the lifecycle did not finish")
        .unwrap()
}

// ---------------------------------------------------------------------------
// A raw h2c client that keeps every byte the server sends
// ---------------------------------------------------------------------------

const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const FLAG_ACK: u8 = 0x1;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const MAX_STREAM_ID: u32 = 0x7fff_ffff;
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
    at: Instant,
}

/// Everything the server sent, cut into frames, and how it ended.
#[derive(Debug, Default)]
struct H2Seen {
    frames: Vec<Frame>,
    /// Bytes that do not parse as HTTP/2 frames (an HTTP/1 response, say).
    garbage: Vec<u8>,
    closed: Option<(Instant, Option<io::ErrorKind>)>,
}

impl H2Seen {
    fn goaways(&self) -> Vec<(u32, Instant)> {
        self.frames
            .iter()
            .filter(|f| f.kind == GOAWAY)
            .map(|f| (be32(&f.payload[0..4]) & MAX_STREAM_ID, f.at))
            .collect()
    }

    /// The second-phase GOAWAY: one naming a real last stream.
    fn final_goaway(&self) -> Option<(u32, Instant)> {
        self.goaways().into_iter().find(|g| g.0 != MAX_STREAM_ID)
    }

    fn end_stream(&self, stream: u32) -> bool {
        self.frames
            .iter()
            .any(|f| f.stream == stream && f.flags & FLAG_END_STREAM != 0 && f.kind <= HEADERS)
    }
}

struct H2Client {
    writer: Arc<Mutex<OwnedWriteHalf>>,
    seen: Arc<std::sync::Mutex<H2Seen>>,
    changed: Arc<Notify>,
    reader: JoinHandle<()>,
}

impl H2Client {
    /// Connect and send the preface and an empty SETTINGS frame. `ack_pings`:
    /// whether PINGs are acknowledged, like any client does (SETTINGS always
    /// are).
    async fn connect(addr: SocketAddr, ack_pings: bool) -> Self {
        let (rd, mut wr) = TcpStream::connect(addr).await.unwrap().into_split();
        let mut hello = PREFACE.to_vec();
        hello.extend(h2_frame(SETTINGS, 0, 0, &[]));
        wr.write_all(&hello).await.unwrap();
        let writer = Arc::new(Mutex::new(wr));
        let seen = Arc::new(std::sync::Mutex::new(H2Seen::default()));
        let changed = Arc::new(Notify::new());
        let reader = tokio::spawn(read_frames(
            rd,
            Arc::clone(&writer),
            Arc::clone(&seen),
            Arc::clone(&changed),
            ack_pings,
        ));
        H2Client {
            writer,
            seen,
            changed,
            reader,
        }
    }

    async fn send(&self, bytes: &[u8]) {
        self.writer.lock().await.write_all(bytes).await.unwrap();
    }

    async fn get(&self, stream: u32, path: &str) {
        let mut block = vec![0x82, 0x86, 0x04, u8::try_from(path.len()).unwrap()];
        block.extend_from_slice(path.as_bytes());
        block.extend_from_slice(&[0x01, 9]);
        block.extend_from_slice(b"localhost");
        self.send(&h2_frame(
            HEADERS,
            FLAG_END_HEADERS | FLAG_END_STREAM,
            stream,
            &block,
        ))
        .await;
    }

    /// Wait until `until` holds for what was seen (or the connection ends).
    async fn wait(&self, what: &str, until: impl Fn(&H2Seen) -> bool) {
        timeout(WAIT, async {
            loop {
                let notified = self.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                {
                    let seen = self.seen.lock().unwrap();
                    if until(&seen) || seen.closed.is_some() {
                        return;
                    }
                }
                notified.await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
    }

    async fn closed(&self) -> (Instant, Option<io::ErrorKind>) {
        self.wait("the server to close", |s| s.closed.is_some())
            .await;
        self.seen.lock().unwrap().closed.unwrap()
    }
}

impl Drop for H2Client {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn read_frames(
    mut rd: OwnedReadHalf,
    writer: Arc<Mutex<OwnedWriteHalf>>,
    seen: Arc<std::sync::Mutex<H2Seen>>,
    changed: Arc<Notify>,
    ack_pings: bool,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = match rd.read(&mut chunk).await {
            Ok(0) => {
                seen.lock().unwrap().closed = Some((Instant::now(), None));
                changed.notify_waiters();
                return;
            }
            Ok(n) => n,
            Err(e) => {
                seen.lock().unwrap().closed = Some((Instant::now(), Some(e.kind())));
                changed.notify_waiters();
                return;
            }
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut acks = Vec::new();
        {
            let mut seen = seen.lock().unwrap();
            if !seen.garbage.is_empty() || buf.starts_with(b"HTTP/") {
                seen.garbage.append(&mut buf);
            }
            while buf.len() >= 9 {
                let len = be32(&[0, buf[0], buf[1], buf[2]]) as usize;
                if buf.len() < 9 + len {
                    break;
                }
                let frame: Vec<u8> = buf.drain(..9 + len).collect();
                let (kind, flags) = (frame[3], frame[4]);
                let payload = frame[9..].to_vec();
                match kind {
                    SETTINGS if flags & FLAG_ACK == 0 => {
                        acks.push(h2_frame(SETTINGS, FLAG_ACK, 0, &[]));
                    }
                    PING if flags & FLAG_ACK == 0 && ack_pings => {
                        acks.push(h2_frame(PING, FLAG_ACK, 0, &payload));
                    }
                    _ => {}
                }
                seen.frames.push(Frame {
                    kind,
                    flags,
                    stream: be32(&frame[5..9]) & MAX_STREAM_ID,
                    payload,
                    at: Instant::now(),
                });
            }
        }
        for ack in acks {
            let _ = writer.lock().await.write_all(&ack).await;
        }
        changed.notify_waiters();
    }
}

/// What an idle h2c connection must see at its end: HTTP/2 frames only (no
/// HTTP/1 bytes), a final GOAWAY, then a FIN.
fn assert_ended_the_http2_way(seen: &H2Seen) {
    assert!(
        seen.garbage.is_empty(),
        "bytes that are not HTTP/2 frames: {:?}",
        String::from_utf8_lossy(&seen.garbage)
    );
    assert!(!seen.goaways().is_empty(), "no GOAWAY: {seen:?}");
    assert!(seen.final_goaway().is_some(), "no final GOAWAY: {seen:?}");
    let (_, error) = seen.closed.expect("not closed");
    assert_eq!(error, None, "closed with an error, not a FIN");
}

// ---------------------------------------------------------------------------
// 27. Idle HTTP/2 connections
// ---------------------------------------------------------------------------

/// Scenario 27 (defect 1): preface and SETTINGS, then silence, while
/// running: the connection is ended with GOAWAY and a FIN at the idle
/// timeout, never with an HTTP/1 `408` inside the HTTP/2 stream (which the
/// header-read timeout used to send).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s27_idle_h2c_after_preface_gets_goaway_at_idle_timeout() {
    let (_lifecycle, _handle, addr) = serve(app(), WAIT, |s| {
        s.header_read_timeout(200 * MS).idle_timeout(600 * MS)
    })
    .await;
    let start = Instant::now();
    let client = H2Client::connect(addr, true).await;
    let (closed_at, _) = client.closed().await;
    let seen = client.seen.lock().unwrap();
    assert_ended_the_http2_way(&seen);
    let first = seen.goaways()[0].1;
    assert!(
        first - start >= 500 * MS,
        "GOAWAY {:?} after connect, before the idle timeout",
        first - start
    );
    assert!(
        closed_at - start < 2000 * MS,
        "closed {:?} after connect",
        closed_at - start
    );
}

/// Scenario 27 (defect 1): a finished request, then a PING, then silence:
/// the same (the PING must not make the connection look like a half-sent
/// request head).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s27_idle_h2c_after_ping_gets_goaway_at_idle_timeout() {
    let (_lifecycle, _handle, addr) = serve(app(), WAIT, |s| {
        s.header_read_timeout(200 * MS).idle_timeout(600 * MS)
    })
    .await;
    let client = H2Client::connect(addr, true).await;
    client.get(1, "/fast").await;
    client.wait("the response", |s| s.end_stream(1)).await;
    client.send(&h2_frame(PING, 0, 0, &[7; 8])).await;
    let pinged = Instant::now();
    let (closed_at, _) = client.closed().await;
    let seen = client.seen.lock().unwrap();
    assert_ended_the_http2_way(&seen);
    assert_eq!(seen.final_goaway().unwrap().0, 1, "{seen:?}");
    assert!(
        closed_at - pinged < 2000 * MS,
        "closed {:?} after the PING",
        closed_at - pinged
    );
}

/// Scenario 27: an idle h2c connection (preface and SETTINGS only) is ended
/// with GOAWAY and a FIN at once during a drain; the drain is not held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s27_idle_h2c_ended_at_once_during_a_drain() {
    let (lifecycle, handle, addr) = serve(app(), WAIT, |s| s).await;
    let client = H2Client::connect(addr, true).await;
    client
        .wait("the server's SETTINGS", |s| {
            s.frames.iter().any(|f| f.kind == SETTINGS)
        })
        .await;
    let t0 = Instant::now();
    handle.shutdown("scenario 27");
    let done = run(lifecycle);
    let (closed_at, _) = client.closed().await;
    assert_ended_the_http2_way(&client.seen.lock().unwrap());
    let (report, done_at) = finish(done).await;
    assert!(
        closed_at - t0 < 300 * MS,
        "closed {:?} after T0",
        closed_at - t0
    );
    assert!(done_at - t0 < 450 * MS, "shutdown took {:?}", done_at - t0);
    assert_eq!(report.exit_code(), exit::OK, "{report}");
}

// ---------------------------------------------------------------------------
// 28. A client that never acknowledges the shutdown PING
// ---------------------------------------------------------------------------

/// Scenario 28 (defect 3): an idle h2c client that never ACKs the shutdown
/// PING does not hold the drain: after the first GOAWAY, the final GOAWAY
/// and a FIN follow within the bound; the shutdown completes with exit 0,
/// long before the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s28_h2_client_that_never_acks_the_shutdown_ping_does_not_hold_the_drain() {
    let (lifecycle, handle, addr) = serve(app(), Duration::from_secs(3), |s| s).await;
    let client = H2Client::connect(addr, false).await;
    client.get(1, "/fast").await;
    client.wait("the response", |s| s.end_stream(1)).await;

    let t0 = Instant::now();
    handle.shutdown("scenario 28");
    let done = run(lifecycle);
    let (closed_at, _) = client.closed().await;
    let (report, done_at) = finish(done).await;
    let seen = client.seen.lock().unwrap();
    assert_ended_the_http2_way(&seen);
    let first = seen.goaways()[0];
    assert_eq!(first.0, MAX_STREAM_ID, "first phase: {seen:?}");
    assert!(
        first.1 - t0 < 200 * MS,
        "first GOAWAY {:?} after T0",
        first.1 - t0
    );
    let last = seen.final_goaway().unwrap();
    assert_eq!(last.0, 1);
    assert!(
        last.1 - first.1 < 1000 * MS,
        "final GOAWAY {:?} after the first",
        last.1 - first.1
    );
    assert!(
        closed_at - t0 < 1200 * MS,
        "closed {:?} after T0",
        closed_at - t0
    );
    assert!(done_at - t0 < 1500 * MS, "shutdown took {:?}", done_at - t0);
    assert_eq!(report.exit_code(), exit::OK, "{report}");
}

/// Scenario 28 (defect 3), at the idle timeout: a client that never ACKs
/// the PING is still closed (final GOAWAY, FIN) soon after the idle
/// timeout, rather than left open forever after the first GOAWAY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s28_h2_client_that_never_acks_is_closed_at_the_idle_timeout() {
    let (_lifecycle, _handle, addr) = serve(app(), WAIT, |s| s.idle_timeout(400 * MS)).await;
    let client = H2Client::connect(addr, false).await;
    client.get(1, "/fast").await;
    client.wait("the response", |s| s.end_stream(1)).await;
    let answered = Instant::now();
    let (closed_at, _) = client.closed().await;
    let seen = client.seen.lock().unwrap();
    assert_ended_the_http2_way(&seen);
    assert_eq!(seen.final_goaway().unwrap().0, 1);
    assert!(
        closed_at - answered < 2500 * MS,
        "closed {:?} after the last response",
        closed_at - answered
    );
}

// ---------------------------------------------------------------------------
// 29. A half-sent head whose first byte is also the preface's
// ---------------------------------------------------------------------------

/// Reads what the server sends until it closes (bounded by [`WAIT`]).
async fn read_to_end(stream: &mut TcpStream) -> (Vec<u8>, Instant) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    timeout(WAIT, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the server never closed the connection");
    (out, Instant::now())
}

/// Scenario 29 (defect 2), while running: `POST`, `PUT` and `PATCH` heads
/// sent one byte at a time get `408` at the header-read timeout, like a
/// `GET`; a lone `P` (a prefix of the HTTP/2 preface) too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s29_half_sent_post_put_patch_heads_get_408_while_running() {
    let (_lifecycle, _handle, addr) = serve(app(), WAIT, |s| s.header_read_timeout(400 * MS)).await;
    let mut tasks = Vec::new();
    for head in [
        "P",
        "POST /fast HT",
        "PUT /fast HTTP/1.1\r\n",
        "PATCH /f",
        "PR",
    ] {
        tasks.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let sent = Instant::now();
            for b in head.as_bytes() {
                stream.write_all(&[*b]).await.unwrap();
                tokio::time::sleep(10 * MS).await;
            }
            let (bytes, at) = read_to_end(&mut stream).await;
            let text = String::from_utf8_lossy(&bytes).into_owned();
            assert!(
                text.starts_with("HTTP/1.1 408"),
                "{head:?} got {text:?} after {:?}",
                at - sent
            );
            assert!(
                at - sent >= 350 * MS,
                "{head:?}: 408 before the timeout ({:?})",
                at - sent
            );
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Scenario 29 (defect 2), while draining: a `POST` head sent one byte at a
/// time gets `408` within the drain's header grace, and the drain is not
/// held to the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s29_half_sent_post_head_gets_408_within_the_drain_header_grace() {
    let (lifecycle, handle, addr) =
        serve(app(), Duration::from_secs(4), |s| s.header_grace(300 * MS)).await;
    let mut streams = Vec::new();
    for head in ["P", "POST /fast HTTP/1.1\r\nHost: x", "PUT /f", "PATCH"] {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        for b in head.as_bytes() {
            stream.write_all(&[*b]).await.unwrap();
            tokio::time::sleep(5 * MS).await;
        }
        streams.push((head, stream));
    }
    // Let the server read what was sent.
    tokio::time::sleep(50 * MS).await;
    let t0 = Instant::now();
    handle.shutdown("scenario 29");
    let done = run(lifecycle);
    for (head, mut stream) in streams {
        let (bytes, at) = read_to_end(&mut stream).await;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        assert!(text.starts_with("HTTP/1.1 408"), "{head:?} got {text:?}");
        assert!(at - t0 < 1500 * MS, "{head:?}: 408 {:?} after T0", at - t0);
    }
    let (report, done_at) = finish(done).await;
    assert!(done_at - t0 < 2000 * MS, "shutdown took {:?}", done_at - t0);
    assert_eq!(report.exit_code(), exit::OK, "{report}");
}

// ---------------------------------------------------------------------------
// 30. A WebSocket peer that never reads
// ---------------------------------------------------------------------------

/// A WebSocket handler that sends until the peer's window and buffers are
/// full (telling the test), then, when the server stops, says going away
/// with a 300 ms bound.
fn flooding_ws_app(full: Arc<Notify>, ended: mpsc::UnboundedSender<bool>) -> Router {
    Router::new().route(
        "/ws",
        get(move |ws: WebSocketUpgrade, signal: ShutdownSignal| {
            let full = Arc::clone(&full);
            let ended = ended.clone();
            async move { ws.on_upgrade(move |socket| flood(socket, signal, full, ended)) }
        }),
    )
}

async fn flood(
    mut socket: WebSocket,
    signal: ShutdownSignal,
    full: Arc<Notify>,
    ended: mpsc::UnboundedSender<bool>,
) {
    let chunk = Message::Binary(vec![b'x'; 64 * 1024].into());
    loop {
        match timeout(100 * MS, socket.send(chunk.clone())).await {
            Ok(Ok(())) => continue,
            Ok(Err(_)) => return,
            // Nothing moves: the peer does not read.
            Err(_) => break,
        }
    }
    full.notify_one();
    signal.stopping().await;
    let answered = going_away(&mut socket, "server restarting", 300 * MS).await;
    let _ = ended.send(answered);
}

/// Scenario 30 (defect 4): a WebSocket peer that never reads: `going_away`
/// gives up after its bound instead of waiting forever to send the Close
/// frame, the connection is closed, and the drain completes with exit 0
/// long before the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s30_websocket_peer_that_never_reads_does_not_hold_the_drain() {
    let full = Arc::new(Notify::new());
    let (ended_tx, mut ended) = mpsc::unbounded_channel();
    let (lifecycle, handle, addr) = serve(
        flooding_ws_app(Arc::clone(&full), ended_tx),
        Duration::from_secs(4),
        |s| s,
    )
    .await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .unwrap();
    // Read the 101 head only, then never read again.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        timeout(WAIT, stream.read_exact(&mut byte))
            .await
            .unwrap()
            .unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&head)
    );
    timeout(WAIT, full.notified())
        .await
        .expect("the handler never filled the socket");

    let t0 = Instant::now();
    handle.shutdown("scenario 30");
    let done = run(lifecycle);
    let answered = timeout(WAIT, ended.recv()).await.unwrap().unwrap();
    let gave_up = t0.elapsed();
    assert!(!answered, "a peer that never reads cannot answer the Close");
    assert!(
        gave_up < 1000 * MS,
        "going_away returned {gave_up:?} after T0"
    );
    let (report, done_at) = finish(done).await;
    assert!(done_at - t0 < 1500 * MS, "shutdown took {:?}", done_at - t0);
    assert_eq!(report.exit_code(), exit::OK, "{report}");
    drop(stream);
}
