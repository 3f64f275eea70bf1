//! Named tasks, hooks and closers: what their futures may return, and how a
//! panic becomes an [`Outcome`].

use std::any::Any;
use std::fmt::Display;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use crate::report::Outcome;

/// What a task, hook or closer future may return: `()` or
/// `Result<(), E>` where `E: Display`.
///
/// An `Err` is recorded as [`Outcome::Failed`] with the error's `Display`
/// (alternate form, so `anyhow` errors include their causes).
///
/// ```
/// use lameduck::TaskResult;
/// assert!(().into_task_result().is_ok());
/// assert_eq!(Err::<(), _>("disk full").into_task_result(), Err("disk full".to_string()));
/// ```
pub trait TaskResult: Send + 'static {
    /// `Ok(())` on success, or the error message.
    fn into_task_result(self) -> Result<(), String>;
}

impl TaskResult for () {
    fn into_task_result(self) -> Result<(), String> {
        Ok(())
    }
}

impl<E: Display + Send + 'static> TaskResult for Result<(), E> {
    fn into_task_result(self) -> Result<(), String> {
        self.map_err(|e| format!("{e:#}"))
    }
}

/// Run `fut` to completion, turning its result or its panic into an outcome.
pub(crate) async fn outcome_of<F>(fut: F) -> Outcome
where
    F: Future,
    F::Output: TaskResult,
{
    match AssertUnwindSafe(fut).catch_unwind().await {
        Ok(result) => match result.into_task_result() {
            Ok(()) => Outcome::Finished,
            Err(e) => Outcome::Failed(e),
        },
        Err(payload) => Outcome::Panicked(panic_message(payload.as_ref())),
    }
}

pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// A hook or closer, boxed until it runs.
pub(crate) type Deferred = Box<dyn FnOnce() -> BoxFuture<'static, Outcome> + Send>;

pub(crate) fn defer<F, Fut>(f: F) -> Deferred
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: TaskResult,
{
    // The call to `f` itself may panic: run it inside the caught future.
    Box::new(move || outcome_of(async move { f().await }).boxed())
}
