//! Small helpers shared by the modules.

use std::sync::{Mutex, MutexGuard};

/// Lock `m`, also when a panic poisoned it: every critical section in this
/// crate is a single take, push, insert or replace, so a panic cannot leave
/// the state half-written.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Lets a log line through once per `every`, counting what it held back:
/// a client (or a scanner) that can make the server log on every
/// connection must not be able to flood the log.
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
#[derive(Debug, Default)]
pub(crate) struct LogLimit {
    /// Milliseconds since `base` of the last line let through, plus one
    /// (0: never).
    last: std::sync::atomic::AtomicU64,
    held: std::sync::atomic::AtomicU64,
    base: std::sync::OnceLock<std::time::Instant>,
}

#[cfg_attr(not(feature = "tls"), allow(dead_code))]
impl LogLimit {
    /// `Some(n)` when a line may be logged now, `n` being how many were
    /// held back since the last one; `None` to stay quiet.
    pub(crate) fn allow(&self, every: std::time::Duration) -> Option<u64> {
        use std::sync::atomic::Ordering;
        let base = *self.base.get_or_init(std::time::Instant::now);
        let now = u64::try_from(base.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1;
        let last = self.last.load(Ordering::Relaxed);
        let every = u64::try_from(every.as_millis()).unwrap_or(u64::MAX);
        if last != 0 && now.saturating_sub(last) < every
            || self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            self.held.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.held.swap(0, Ordering::Relaxed))
    }
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

#[cfg(test)]
mod tests {
    use super::LogLimit;
    use std::time::Duration;

    #[test]
    fn log_limit_lets_one_line_through_per_period_and_counts_the_rest() {
        let limit = LogLimit::default();
        let hour = Duration::from_secs(3600);
        assert_eq!(limit.allow(hour), Some(0));
        for _ in 0..50 {
            assert_eq!(limit.allow(hour), None);
        }
        // The next line let through says how many were held back.
        assert_eq!(limit.allow(Duration::ZERO), Some(50));
        assert_eq!(limit.allow(Duration::ZERO), Some(0));
    }
}
