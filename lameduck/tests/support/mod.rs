//! Helpers shared by the integration tests that need them.

#![allow(dead_code, clippy::unwrap_used)] // each test crate uses its own part

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use lameduck::{Handle, Lifecycle, Signals};

/// A lifecycle that reads no signals and reports no progress.
pub(crate) fn quiet(grace: Duration) -> (Lifecycle, Handle) {
    let lifecycle = Lifecycle::builder()
        .signals(Signals::none())
        .grace(grace)
        .progress_interval(None)
        .build()
        .unwrap();
    let handle = lifecycle.handle();
    (lifecycle, handle)
}

/// One HTTP/1.1 GET over any stream; returns status and body, or what
/// went wrong.
pub(crate) async fn try_fetch<T>(io: T, path: &str) -> Result<(u16, String), String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let res = send
        .send_request(
            http::Request::get(path)
                .header("host", "localhost")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .map_err(|e| e.to_string())?;
    let status = res.status().as_u16();
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// [`try_fetch`], which must succeed.
pub(crate) async fn fetch<T>(io: T, path: &str) -> (u16, String)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    try_fetch(io, path).await.unwrap()
}
