//! The undo list: every effect pushes its inverse; a failure unwinds them in reverse and reports
//! every cleanup error together with the first cause. One design for the controller and for
//! drivers (generic over the error type).
//!
//! ```
//! # async fn demo() {
//! use cnm_core::undo::{Cleanup, Undo};
//!
//! #[derive(Debug)]
//! enum MyError { Step(&'static str), WithCleanup(Box<MyError>, Vec<MyError>) }
//! impl Cleanup for MyError {
//!     fn wrap_cleanup(self, cleanup: Vec<Self>) -> Self {
//!         MyError::WithCleanup(Box::new(self), cleanup)
//!     }
//! }
//! impl std::fmt::Display for MyError {
//!     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { write!(f, "{self:?}") }
//! }
//!
//! let mut undo = Undo::new();
//! let result = async {
//!     // ... create a link ...
//!     undo.push("delete link", || async { Ok(()) });
//!     // ... the next step fails ...
//!     Err::<(), _>(MyError::Step("add address"))
//! }
//! .await;
//! let e = undo.finish(result).await.unwrap_err(); // the link was deleted again
//! assert!(matches!(e, MyError::Step("add address")));
//! # }
//! ```

use std::fmt;
use std::future::Future;

use futures::future::BoxFuture;

use crate::CoreError;

/// An error that can carry the errors met while undoing what failed (defined in `cnm-types`,
/// so that `cnm-sandbox`'s error has it too).
pub use cnm_types::Cleanup;

impl Cleanup for CoreError {
    fn wrap_cleanup(self, cleanup: Vec<Self>) -> Self {
        CoreError::Cleanup {
            source: Box::new(self),
            cleanup,
        }
    }
}

type Step<E> = Box<dyn FnOnce() -> BoxFuture<'static, Result<(), E>> + Send>;

/// Inverses of the effects done so far, newest last.
pub struct Undo<E> {
    steps: Vec<(&'static str, Step<E>)>,
}

impl<E> Default for Undo<E> {
    fn default() -> Self {
        Self { steps: Vec::new() }
    }
}

impl<E> fmt::Debug for Undo<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.steps.iter().map(|(what, _)| what))
            .finish()
    }
}

impl<E: Cleanup + fmt::Display + Send + 'static> Undo<E> {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the inverse of an effect that just succeeded.
    pub fn push<F, Fut>(&mut self, what: &'static str, inverse: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
    {
        self.steps
            .push((what, Box::new(move || Box::pin(inverse()))));
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Ok: forgets the inverses. Err: runs them newest first and attaches their failures.
    pub async fn finish<T>(self, result: Result<T, E>) -> Result<T, E> {
        match result {
            Ok(v) => Ok(v),
            Err(e) => Err(self.unwind(e).await),
        }
    }

    /// Runs every inverse, newest first, and returns `cause` with the cleanup failures attached.
    pub async fn unwind(mut self, cause: E) -> E {
        let mut cleanup = Vec::new();
        while let Some((what, step)) = self.steps.pop() {
            if let Err(e) = step().await {
                tracing::warn!(undo = what, error = %e, "undo step failed");
                cleanup.push(e);
            }
        }
        cause.with_cleanup(cleanup)
    }
}

/// Collects errors of best-effort steps (leave, delete): the first is the cause, the rest cleanup.
#[derive(Debug)]
pub struct Errors<E>(Vec<E>);

impl<E> Default for Errors<E> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<E: Cleanup> Errors<E> {
    /// Keeps the error of `r`, if any; returns its value otherwise.
    pub fn check<T>(&mut self, r: Result<T, E>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.0.push(e);
                None
            }
        }
    }

    /// Whether no step failed so far.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Ok when no step failed; else the first error with the others attached.
    pub fn into_result(self) -> Result<(), E> {
        let mut it = self.0.into_iter();
        match it.next() {
            None => Ok(()),
            Some(first) => Err(first.with_cleanup(it.collect())),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[tokio::test]
    async fn unwinds_in_reverse_and_keeps_every_error() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut undo = Undo::new();
        for i in 0..3 {
            let log = log.clone();
            undo.push("step", move || async move {
                log.lock().unwrap().push(i);
                if i == 1 {
                    Err(CoreError::DriverNotFound(format!("d{i}")))
                } else {
                    Ok(())
                }
            });
        }
        let e = undo
            .finish::<()>(Err(CoreError::DriverNotFound("cause".into())))
            .await
            .unwrap_err();
        assert_eq!(*log.lock().unwrap(), [2, 1, 0]);
        let text = e.to_string();
        assert!(
            text.starts_with("driver \"cause\" not found; cleanup also failed: driver \"d1\""),
            "{text}"
        );
        assert!(matches!(e.primary(), CoreError::DriverNotFound(n) if n == "cause"));

        let mut undo = Undo::<CoreError>::new();
        let log2 = log.clone();
        undo.push("never", move || async move {
            log2.lock().unwrap().push(99);
            Ok(())
        });
        assert_eq!(undo.finish(Ok(5)).await.unwrap(), 5);
        assert!(!log.lock().unwrap().contains(&99));
    }

    #[test]
    fn errors_keep_the_first_as_cause() {
        let mut errors = Errors::<CoreError>::default();
        assert_eq!(errors.check(Ok::<_, CoreError>(1)), Some(1));
        assert!(errors.is_empty());
        errors.check::<()>(Err(CoreError::DriverNotFound("a".into())));
        errors.check::<()>(Err(CoreError::DriverNotFound("b".into())));
        let e = errors.into_result().unwrap_err();
        assert!(matches!(e.primary(), CoreError::DriverNotFound(n) if n == "a"));
        assert!(e.to_string().contains("\"b\""), "{e}");
    }
}
