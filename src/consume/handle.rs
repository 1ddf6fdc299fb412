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
use crate::message::IncomingMessage;
use crate::scope::MessageScope;
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

/// How the core hands work to the user's service (each message, or the batch as a `Vec`),
/// decides on a failure, and dead-letters.
pub trait Handle<M>: Send + 'static {
    /// Calls the service with `work`, each message told it is handed out for `attempt`.
    fn handle<'a>(
        &'a mut self,
        work: &'a [M],
        attempt: u32,
    ) -> impl Future<Output = Result<(), Failure>> + Send + 'a;

    /// What to do with a failed attempt.
    fn decide(&self, failure: &Failure, attempt: u32) -> Decision;

    /// The dead-letter sink.
    type Sink: DeadLetter<M>;

    /// Whether the consumer has a dead-letter destination.
    fn dead_letters(&self) -> bool;

    /// The dead-letter sink, to publish through while the handler is free.
    fn sink(&self) -> Self::Sink;
}

/// A `Service<M>` called once per message.
#[derive(Clone, Debug)]
pub(crate) struct One<S, C, D> {
    pub(crate) service: S,
    pub(crate) classifier: C,
    pub(crate) dead_letters: D,
}

/// A `Service<Vec<M>>` called once per batch.
#[derive(Clone, Debug)]
pub(crate) struct Batch<S, C, D> {
    pub(crate) service: S,
    pub(crate) classifier: C,
    pub(crate) dead_letters: D,
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

/// `message` as handed out for `attempt`.
fn for_attempt<M: IncomingMessage + Clone>(message: &M, attempt: u32) -> M {
    let mut message = message.clone();
    if attempt > 1 || message.delivery_attempt().is_none() {
        message.set_delivery_attempt(attempt);
    }
    message
}

impl<M, S, C, D> Handle<M> for One<S, C, D>
where
    M: IncomingMessage + Clone + Send + Sync + 'static,
    S: Service<M> + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError> + Send,
    C: ClassifyError<S::Error> + Decide + Send + Sync + 'static,
    D: DeadLetter<M>,
{
    async fn handle(&mut self, work: &[M], attempt: u32) -> Result<(), Failure> {
        for message in work {
            let message = for_attempt(message, attempt);
            call(&mut self.service, &self.classifier, message).await?;
        }
        Ok(())
    }

    fn decide(&self, failure: &Failure, attempt: u32) -> Decision {
        self.classifier.decide(
            &Failed::new(&failure.error_type, attempt)
                .with_dead_letter(self.dead_letters.configured()),
        )
    }

    type Sink = D;

    fn dead_letters(&self) -> bool {
        self.dead_letters.configured()
    }

    fn sink(&self) -> D {
        self.dead_letters.clone()
    }
}

impl<M, S, C, D> Handle<M> for Batch<S, C, D>
where
    M: IncomingMessage + Clone + Send + Sync + 'static,
    S: Service<Vec<M>> + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError> + Send,
    C: ClassifyError<S::Error> + Decide + Send + Sync + 'static,
    D: DeadLetter<M>,
{
    async fn handle(&mut self, work: &[M], attempt: u32) -> Result<(), Failure> {
        // The core never hands out an empty batch: no span, no series for nothing.
        if work.is_empty() {
            return Ok(());
        }
        let batch = work.iter().map(|m| for_attempt(m, attempt)).collect();
        call(&mut self.service, &self.classifier, batch).await
    }

    fn decide(&self, failure: &Failure, attempt: u32) -> Decision {
        self.classifier.decide(
            &Failed::new(&failure.error_type, attempt)
                .with_dead_letter(self.dead_letters.configured()),
        )
    }

    type Sink = D;

    fn dead_letters(&self) -> bool {
        self.dead_letters.configured()
    }

    fn sink(&self) -> D {
        self.dead_letters.clone()
    }
}

/// What the core needs of a dead-letter sink, for a message type `M`.
pub trait DeadLetter<M>: Clone + Send + Sync + 'static {
    /// Whether there is a destination at all.
    fn configured(&self) -> bool;

    /// Publishes the dead-letter copy of `message`; resolves once the broker acknowledged it.
    fn send<'a>(
        &'a self,
        message: &'a M,
        failure: &'a Failure,
        attempts: u32,
        group: &'a str,
        failed: Option<&'a (opentelemetry::Context, MessageScope)>,
    ) -> impl Future<Output = Result<(), BoxError>> + Send + 'a;
}

/// A consumer without a dead-letter destination.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoDeadLetters;

impl<M: Send + Sync + 'static> DeadLetter<M> for NoDeadLetters {
    fn configured(&self) -> bool {
        false
    }

    async fn send<'a>(
        &'a self,
        _message: &'a M,
        _failure: &'a Failure,
        _attempts: u32,
        _group: &'a str,
        _failed: Option<&'a (opentelemetry::Context, MessageScope)>,
    ) -> Result<(), BoxError> {
        Err("no dead-letter destination".into())
    }
}
