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
