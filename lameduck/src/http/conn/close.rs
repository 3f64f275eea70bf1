//! Closing a connection hyper no longer owns, politely.

use std::time::Duration;

use futures_util::FutureExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::io::Transport;

/// Canned responses written by the driver itself, outside hyper (only ever
/// on a connection that is not HTTP/2).
pub(crate) const RESPONSE_408: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
pub(crate) const RESPONSE_503: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\nretry-after: 1\r\ncontent-length: 0\r\n\r\n";

/// Answer a request that arrived unread (if `unread_gets_503`) or a
/// half-sent head (`answer`), send FIN, and keep reading (and discarding)
/// until the peer closes, bounded by `linger`, so that late bytes do not
/// turn the close into a reset. Every step is bounded by `linger`.
///
/// The lingering part runs detached: it must not hold the drain, since the
/// response has already been delivered and a client that keeps its socket
/// open would otherwise delay the exit by the whole linger.
pub(crate) async fn close_politely<T: Transport>(
    mut stream: T,
    answer: Option<&'static [u8]>,
    unread_gets_503: bool,
    linger: Duration,
) {
    let mut response = answer;
    if response.is_none() && unread_gets_503 {
        // Whatever is already buffered, without waiting: one byte tells.
        let mut first = [0u8; 1];
        if let Some(Ok(n)) = stream.read(&mut first).now_or_never() {
            if n > 0 {
                // A request arrived after hyper decided to close: answer it.
                response = Some(RESPONSE_503);
            }
        }
    }
    if let Some(bytes) = response {
        let _ = tokio::time::timeout(linger, stream.write_all(bytes)).await;
    }
    let _ = tokio::time::timeout(linger, stream.shutdown()).await;
    if linger.is_zero() {
        return;
    }
    // On the heap, and only now (a buffer in this future's state would be
    // part of every connection's task for its whole life); not zeroed.
    let mut buf = Vec::with_capacity(4096);
    // A peer that has already closed (the usual case) needs no lingering
    // task at all.
    match stream.read_buf(&mut buf).now_or_never() {
        Some(Ok(0) | Err(_)) => return,
        _ => buf.clear(),
    }
    tokio::spawn(async move {
        let _ = tokio::time::timeout(linger, async {
            loop {
                match stream.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => buf.clear(),
                }
            }
        })
        .await;
    });
}
