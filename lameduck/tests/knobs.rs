//! The hyper settings `Server` exposes reach the wire: HTTP/2's
//! `SETTINGS_MAX_CONCURRENT_STREAMS`, HTTP/1's header count limit.

#![cfg(feature = "http")]
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use lameduck::http::{Listener, Server};
use lameduck::{Lifecycle, Signals};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start(configure: impl FnOnce(Server) -> Server) -> (SocketAddr, Lifecycle) {
    let lifecycle = Lifecycle::builder()
        .signals(Signals::none())
        .build()
        .unwrap();
    let listener = Listener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = tower::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"ok"))))
    });
    let server = configure(Server::new(lifecycle.handle()).listener(listener)).serve(app);
    lifecycle.handle().spawn_vital("http", |_| server);
    (addr, lifecycle)
}

#[tokio::test]
async fn http2_max_concurrent_streams_is_announced() {
    let (addr, lifecycle) = start(|s| s.http2_max_concurrent_streams(3)).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut client, mut connection) = h2::client::handshake(tcp).await.unwrap();
    let request = http::Request::get(format!("http://{addr}/"))
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let response = tokio::select! {
        r = response => r.unwrap(),
        _ = &mut connection => panic!("connection ended"),
    };
    assert_eq!(response.status(), 200);
    assert_eq!(connection.max_concurrent_send_streams(), 3);
    let handle = lifecycle.handle();
    let report = tokio::spawn(lifecycle.run());
    handle.shutdown("test");
    drop(client);
    let _ = connection.await;
    let report = report.await.unwrap();
    assert_eq!(report.exit_code(), 0, "{report}");
}

#[tokio::test]
async fn http1_max_headers_refuses_more() {
    let (addr, lifecycle) = start(|s| s.http1_max_headers(8)).await;
    let mut ok = TcpStream::connect(addr).await.unwrap();
    ok.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    ok.read_to_end(&mut answer).await.unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );

    let mut many = TcpStream::connect(addr).await.unwrap();
    let mut request = String::from("GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n");
    for i in 0..20 {
        request.push_str(&format!("x-h{i}: {i}\r\n"));
    }
    request.push_str("\r\n");
    many.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = many.read_to_end(&mut answer).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    lifecycle.handle().shutdown("test");
    lifecycle.await;
}
