//! Small helpers shared by the modules.

use std::sync::{Mutex, MutexGuard};

/// Lock `m`, also when a panic poisoned it: every critical section in this
/// crate is a single take, push, insert or replace, so a panic cannot leave
/// the state half-written.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Aborts a helper task when its owner ends, however it ends.
#[cfg_attr(not(feature = "http"), allow(dead_code))]
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Something connections are accepted from, for [`accept_while`].
pub(crate) trait NextConn {
    type Conn;
    /// The next connection; cancellation safe.
    fn next_conn(
        &mut self,
    ) -> impl std::future::Future<Output = std::io::Result<Self::Conn>> + Send;
}

#[cfg(unix)]
impl NextConn for tokio::net::UnixListener {
    type Conn = (tokio::net::UnixStream, tokio::net::unix::SocketAddr);

    fn next_conn(
        &mut self,
    ) -> impl std::future::Future<Output = std::io::Result<Self::Conn>> + Send {
        self.accept()
    }
}

/// The accept loop of every listener the crate runs (the HTTP server's, the
/// restart control socket's): take connections from `accept` while
/// `accepting` says so (a restart pauses it without closing the socket),
/// until `end` resolves. A failed accept (out of descriptors, a peer gone
/// before accept) backs off 5 ms per failure in a row, at most 1 s, and is
/// logged on the first failure and every 100th, so that it neither spins
/// nor floods the log.
#[cfg_attr(not(feature = "http"), allow(dead_code))]
pub(crate) async fn accept_while<N: NextConn>(
    what: &str,
    mut accepting: tokio::sync::watch::Receiver<bool>,
    end: impl std::future::Future<Output = ()>,
    source: &mut N,
    mut on_accept: impl FnMut(N::Conn),
) {
    tokio::pin!(end);
    let mut errors = 0u32;
    loop {
        if !*accepting.borrow_and_update() {
            tokio::select! {
                biased;
                () = &mut end => return,
                changed = accepting.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    continue;
                }
            }
        }
        tokio::select! {
            biased;
            () = &mut end => return,
            _ = accepting.changed() => continue,
            accepted = source.next_conn() => match accepted {
                Ok(conn) => {
                    errors = 0;
                    on_accept(conn);
                }
                Err(e) => {
                    errors = errors.saturating_add(1);
                    if errors == 1 || errors % 100 == 0 {
                        tracing::warn!(target: "lameduck", listener = %what, error = %e, failures = errors, "accept failed");
                    }
                    let pause = std::time::Duration::from_millis(5 * u64::from(errors.min(200)));
                    tokio::select! {
                        () = &mut end => return,
                        () = tokio::time::sleep(pause) => {}
                    }
                }
            },
        }
    }
}
