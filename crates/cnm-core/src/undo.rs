//! The undo list: every effect pushes its inverse; a failure unwinds them in reverse and reports
//! every cleanup error together with the first cause.

use std::future::Future;

use futures::future::BoxFuture;

use crate::CoreError;

type Step = Box<dyn FnOnce() -> BoxFuture<'static, Result<(), CoreError>> + Send>;

/// Inverses of the effects done so far, newest last.
#[derive(Default)]
pub(crate) struct Undo {
    steps: Vec<(&'static str, Step)>,
}

impl Undo {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Records the inverse of an effect that just succeeded.
    pub(crate) fn push<F, Fut>(&mut self, what: &'static str, inverse: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), CoreError>> + Send + 'static,
    {
        self.steps
            .push((what, Box::new(move || Box::pin(inverse()))));
    }

    /// Ok: forgets the inverses. Err: runs them newest first and attaches their failures.
    pub(crate) async fn finish<T>(self, result: Result<T, CoreError>) -> Result<T, CoreError> {
        match result {
            Ok(v) => Ok(v),
            Err(e) => Err(self.unwind(e).await),
        }
    }

    /// Runs every inverse, newest first, and returns `cause` with the cleanup failures attached.
    pub(crate) async fn unwind(mut self, cause: CoreError) -> CoreError {
        let mut cleanup = Vec::new();
        while let Some((what, step)) = self.steps.pop() {
            if let Err(e) = step().await {
                tracing::warn!(undo = what, error = %e, "undo step failed");
                cleanup.push(e);
            }
        }
        with_cleanup(cause, cleanup)
    }
}

/// Attaches cleanup errors to a cause (the cause alone when there are none).
pub(crate) fn with_cleanup(cause: CoreError, cleanup: Vec<CoreError>) -> CoreError {
    if cleanup.is_empty() {
        cause
    } else {
        CoreError::Cleanup {
            source: Box::new(cause),
            cleanup,
        }
    }
}

/// Collects errors of best-effort steps (leave, delete): the first is the cause, the rest cleanup.
#[derive(Default)]
pub(crate) struct Errors(Vec<CoreError>);

impl Errors {
    pub(crate) fn check<T>(&mut self, r: Result<T, CoreError>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.0.push(e);
                None
            }
        }
    }

    pub(crate) fn into_result(self) -> Result<(), CoreError> {
        let mut it = self.0.into_iter();
        match it.next() {
            None => Ok(()),
            Some(first) => Err(with_cleanup(first, it.collect())),
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

        let mut undo = Undo::new();
        let log2 = log.clone();
        undo.push("never", move || async move {
            log2.lock().unwrap().push(99);
            Ok(())
        });
        assert_eq!(undo.finish(Ok(5)).await.unwrap(), 5);
        assert!(!log.lock().unwrap().contains(&99));
    }
}
