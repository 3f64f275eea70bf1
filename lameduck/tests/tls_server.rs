//! `http::Server` over TLS against real sockets and a real rustls client:
//! HTTP/1.1 and HTTP/2 by ALPN, a handshake that never finishes (closed at
//! the header-read timeout, at once during a drain), plain-text bytes on the
//! TLS port, and `close_notify` before the FIN when a drain closes an idle
//! connection.

#![cfg(feature = "tls")]
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use lameduck::http::tls::TlsConfig;
use lameduck::http::{Listener, Server};
use lameduck::{Lifecycle, Report, Signals};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

struct Running {
    addr: SocketAddr,
    handle: lameduck::Handle,
    report: JoinHandle<Report>,
    root: CertificateDer<'static>,
}

async fn start(header_read: Duration) -> Running {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let tls = TlsConfig::from_pem(
        c.cert.pem().as_bytes(),
        c.signing_key.serialize_pem().as_bytes(),
    )
    .unwrap();
    let lifecycle = Lifecycle::builder()
        .signals(Signals::none())
        .grace(Duration::from_secs(10))
        .build()
        .unwrap();
    let handle = lifecycle.handle();
    let listener = Listener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = tower::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
        let body = format!("{:?} {}\n", req.version(), req.uri().path());
        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(body))))
    });
    let server = Server::new(handle.clone())
        .listener(listener)
        .header_read_timeout(header_read)
        .tls(tls)
        .serve(app);
    handle.spawn_vital("https", |_| server);
    Running {
        addr,
        handle,
        report: tokio::spawn(lifecycle.run()),
        root: c.cert.der().clone(),
    }
}

fn connector(root: &CertificateDer<'static>, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn tls_connect(run: &Running, alpn: &[&[u8]]) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(run.addr).await.unwrap();
    connector(&run.root, alpn)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

/// One GET over HTTP/1.1 on `tls`; the body.
async fn get_h1(tls: tokio_rustls::client::TlsStream<TcpStream>, path: &str) -> Bytes {
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = send.send_request(req).await.unwrap();
    res.into_body().collect().await.unwrap().to_bytes()
}

/// One GET over HTTP/2 on `tls`; the body.
async fn get_h2(tls: tokio_rustls::client::TlsStream<TcpStream>, uri: &str) -> Bytes {
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(uri).body(Empty::<Bytes>::new()).unwrap();
    let res = send.send_request(req).await.unwrap();
    res.into_body().collect().await.unwrap().to_bytes()
}

#[tokio::test]
async fn http1_and_http2_over_tls_by_alpn() {
    let run = start(Duration::from_secs(5)).await;

    let tls = tls_connect(&run, &[b"http/1.1"]).await;
    let body = get_h1(tls, "/one").await;
    assert_eq!(body, "HTTP/1.1 /one\n");

    let tls = tls_connect(&run, &[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let body = get_h2(tls, "https://localhost/two").await;
    assert_eq!(body, "HTTP/2.0 /two\n");

    run.handle.shutdown("test");
    let report = run.report.await.unwrap();
    assert_eq!(report.exit_code(), 0, "{report}");
}

/// An HTTP/2 client that offers no ALPN at all (prior knowledge over TLS)
/// is served HTTP/2 all the same: the server decides from the preface, as
/// it does for h2c; an HTTP/1 client without ALPN gets HTTP/1.1.
#[tokio::test]
async fn clients_without_alpn_are_served_by_what_they_send() {
    let run = start(Duration::from_secs(5)).await;

    let tls = tls_connect(&run, &[]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), None);
    let body = get_h2(tls, "https://localhost/h2").await;
    assert_eq!(body, "HTTP/2.0 /h2\n");

    let tls = tls_connect(&run, &[]).await;
    let body = get_h1(tls, "/h1").await;
    assert_eq!(body, "HTTP/1.1 /h1\n");

    run.handle.shutdown("test");
    let report = run.report.await.unwrap();
    assert_eq!(report.exit_code(), 0, "{report}");
}

/// TCP connect, then nothing: closed at the header-read timeout; and one
/// under way when the server stops is closed at once, so the drain is not
/// held.
#[tokio::test]
async fn a_handshake_that_never_finishes_is_bounded() {
    let run = start(Duration::from_millis(300)).await;
    let mut silent = TcpStream::connect(run.addr).await.unwrap();
    let t0 = Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
        .await
        .expect("not closed at the header-read timeout")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(
        t0.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t0.elapsed()
    );

    // A partial ClientHello, then a stop.
    let mut partial = TcpStream::connect(run.addr).await.unwrap();
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t0 = Instant::now();
    run.handle.shutdown("test");
    let report = run.report.await.unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "{:?}\n{report}",
        t0.elapsed()
    );
    assert_eq!(report.exit_code(), 0, "{report}");
}

/// Plain-text HTTP on the TLS port: closed, and the server serves on.
#[tokio::test]
async fn plain_text_on_the_tls_port_is_closed() {
    let run = start(Duration::from_secs(5)).await;
    let mut plain = TcpStream::connect(run.addr).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer))
        .await
        .expect("not closed");
    assert!(!answer.starts_with(b"HTTP/1.1 200"), "served plain text");

    let tls = tls_connect(&run, &[b"http/1.1"]).await;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let res = send
        .send_request(http::Request::get("/").body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    run.handle.shutdown("test");
    run.report.await.unwrap();
}

/// An idle keep-alive connection closed by the drain ends with
/// `close_notify` (the client reads a clean end, not an unexpected EOF).
#[tokio::test]
async fn drain_closes_tls_with_close_notify() {
    let run = start(Duration::from_secs(5)).await;
    let mut tls = tls_connect(&run, &[b"http/1.1"]).await;
    tls.write_all(b"GET /idle HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tls.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let mut body = [0u8; 14];
    tls.read_exact(&mut body).await.unwrap();
    assert_eq!(&body, b"HTTP/1.1 /idle");

    run.handle.shutdown("test");
    let mut rest = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut rest))
        .await
        .expect("idle TLS connection not closed by the drain");
    assert!(end.is_ok(), "closed without close_notify: {end:?}");
    let report = run.report.await.unwrap();
    assert_eq!(report.exit_code(), 0, "{report}");
}
