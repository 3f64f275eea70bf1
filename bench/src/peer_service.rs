//! The hello-world service every benchmark peer serves, so that they
//! differ only in the server around it: `/` answers `hello`, `/slow?ms=N`
//! answers after N ms.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;

pub(crate) async fn hello(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/slow" {
        let ms: u64 = req
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("ms="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        return Ok(Response::new(Full::new(Bytes::from(format!(
            "slept {ms} ms\n"
        )))));
    }
    Ok(Response::new(Full::new(Bytes::from_static(b"hello\n"))))
}
