//! Calling the user's handler stack: one message or a batch, a result classified into an
//! `error.type`, a panic caught as a failure, and the [`Decision`] for a failed attempt.
//!
//! The items here are `pub` inside a private module: the sealed [`Run`](super::run::Run) trait
//! names them, and nothing outside the crate can.

use std::any::Any;
use std::borrow::Cow;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;
use tower::ServiceExt;
use tower_service::Service;

use crate::classify::{ClassifyError, Decide, Decision, Failed, PANIC};
use crate::BoxError;

/// A failed handler call, classified.
#[derive(Debug)]
pub struct Failure {
    pub(crate) error_type: Cow<'static, str>,
    pub(crate) error: BoxError,
}

impl Failure {
    fn error<E, C>(classifier: &C, error: E) -> Self
    where
        E: Into<BoxError>,
        C: ClassifyError<E>,
    {
        Self {
            error_type: classifier.classify(&error),
            error: error.into(),
        }
    }

    fn panic(panic: &(dyn Any + Send)) -> Self {
        let text = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Self {
            error_type: Cow::Borrowed(PANIC),
            error: format!("handler panicked: {text}").into(),
        }
    }
}

/// How the core hands work to the user's service: each message, or the batch as a `Vec`.
pub trait Handle<M>: Send + 'static {
    /// Calls the service with `work`.
    fn handle<'a>(
        &'a mut self,
        work: &'a [M],
    ) -> impl Future<Output = Result<(), Failure>> + Send + 'a;

    /// What to do with a failed attempt.
    fn decide(&self, failure: &Failure, attempt: u32) -> Decision;
}

/// A `Service<M>` called once per message.
#[derive(Clone, Debug)]
pub(crate) struct One<S, C> {
    pub(crate) service: S,
    pub(crate) classifier: C,
}

/// A `Service<Vec<M>>` called once per batch.
#[derive(Clone, Debug)]
pub(crate) struct Batch<S, C> {
    pub(crate) service: S,
    pub(crate) classifier: C,
}

/// Calls `service` with `request`, catching a panic in `call` or in its future.
async fn call<S, C, R>(service: &mut S, classifier: &C, request: R) -> Result<(), Failure>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
    C: ClassifyError<S::Error>,
{
    let ready = match AssertUnwindSafe(service.ready()).catch_unwind().await {
        Ok(Ok(ready)) => ready,
        Ok(Err(error)) => return Err(Failure::error(classifier, error)),
        Err(panic) => return Err(Failure::panic(&*panic)),
    };
    let future = match std::panic::catch_unwind(AssertUnwindSafe(|| ready.call(request))) {
        Ok(future) => future,
        Err(panic) => return Err(Failure::panic(&*panic)),
    };
    match AssertUnwindSafe(future).catch_unwind().await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(Failure::error(classifier, error)),
        Err(panic) => Err(Failure::panic(&*panic)),
    }
}

impl<M, S, C> Handle<M> for One<S, C>
where
    M: Clone + Send + Sync + 'static,
    S: Service<M> + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError> + Send,
    C: ClassifyError<S::Error> + Decide + Send + Sync + 'static,
{
    async fn handle(&mut self, work: &[M]) -> Result<(), Failure> {
        for message in work {
            call(&mut self.service, &self.classifier, message.clone()).await?;
        }
        Ok(())
    }

    fn decide(&self, failure: &Failure, attempt: u32) -> Decision {
        self.classifier
            .decide(&Failed::new(&failure.error_type, attempt))
    }
}

impl<M, S, C> Handle<M> for Batch<S, C>
where
    M: Clone + Send + Sync + 'static,
    S: Service<Vec<M>> + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError> + Send,
    C: ClassifyError<S::Error> + Decide + Send + Sync + 'static,
{
    async fn handle(&mut self, work: &[M]) -> Result<(), Failure> {
        // The core never hands out an empty batch: no span, no series for nothing.
        if work.is_empty() {
            return Ok(());
        }
        call(&mut self.service, &self.classifier, work.to_vec()).await
    }

    fn decide(&self, failure: &Failure, attempt: u32) -> Decision {
        self.classifier
            .decide(&Failed::new(&failure.error_type, attempt))
    }
}
