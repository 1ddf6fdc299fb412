//! Unordered mode: each message is handled and settled on its own (RabbitMQ, JetStream), at
//! most `max_concurrency` at once.

use std::future::Future;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::instrument::WithSubscriber;

use super::handle::{Failure, Handle};
use super::ordered::Core;
use super::{settle_span_hook, ConsumeError};
use crate::classify::{Decision, OTHER};
use crate::message::IncomingMessage;
use crate::BoxError;

/// An unordered broker's stream of deliveries.
pub(crate) trait UnorderedSource: Send {
    type Message: IncomingMessage + Clone + Send + Sync + 'static;

    /// The next delivery; `None` when the source is closed. Must be cancel-safe.
    fn next(&mut self) -> impl Future<Output = Option<Result<Self::Message, BoxError>>> + Send;
}

/// Carries out a decision on one delivery (ack, nack with requeue, reject, term, ...).
pub(crate) trait UnorderedSettler<M>: Send + Sync + 'static {
    fn settle(
        &self,
        message: &M,
        decision: Decision,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;
}

/// A handled delivery, as its task reports it.
struct Handled {
    destination: String,
    failure: Option<Failure>,
}

/// Runs an unordered source until `shutdown` resolves, a failure decides `Stop`, or the
/// source closes.
pub(crate) async fn run_unordered<Src, Set, H>(
    mut source: Src,
    settler: Set,
    handler: H,
    core: Core,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ConsumeError>
where
    Src: UnorderedSource,
    Set: UnorderedSettler<Src::Message>,
    H: Handle<Src::Message> + Clone,
{
    let settler = Arc::new(settler);
    let permits = Arc::new(Semaphore::new(core.options.max_concurrency));
    let core = Arc::new(core);
    let mut tasks: JoinSet<Handled> = JoinSet::new();
    let mut outcome: Option<ConsumeError> = None;
    tokio::pin!(shutdown);

    'pull: loop {
        // A permit first: never more deliveries taken than handler calls allowed.
        let permit = loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break 'pull,
                Some(done) = tasks.join_next() => {
                    if note(done, &mut outcome) {
                        break 'pull;
                    }
                }
                permit = Arc::clone(&permits).acquire_owned() => match permit {
                    Ok(permit) => break permit,
                    Err(_) => break 'pull,
                },
            }
        };
        let message = tokio::select! {
            biased;
            () = &mut shutdown => break 'pull,
            next = source.next() => next,
        };
        let message = match message {
            None => break,
            Some(Err(error)) => {
                tracing::error!(%error, system = core.system, "consumer failed");
                outcome.get_or_insert(ConsumeError::Broker(error));
                break;
            }
            Some(Ok(message)) => message,
        };
        let (mut handler, settler, core) =
            (handler.clone(), Arc::clone(&settler), Arc::clone(&core));
        let task = async move {
            let result = handler.handle(std::slice::from_ref(&message)).await;
            let (decision, failure) = match result {
                Ok(()) => (Decision::Ack, None),
                Err(failure) => (failure.decision, Some(failure)),
            };
            if let (Decision::Retry { .. }, Some(failure)) = (decision, &failure) {
                core.metrics.record_retry(
                    core.system,
                    message.destination(),
                    &core.group,
                    &failure.error_type,
                );
            }
            let started = SystemTime::now();
            let clock = Instant::now();
            let settled = settler.settle(&message, decision).await;
            let elapsed = clock.elapsed();
            let error_type = settled.as_ref().err().map(|_| OTHER);
            if let Err(error) = &settled {
                tracing::warn!(%error, ?decision, "settle failed: the broker redelivers");
            }
            core.metrics.record_settle(
                core.system,
                message.destination(),
                error_type.unwrap_or(""),
                elapsed.as_secs_f64(),
            );
            settle_span_hook(
                core.system,
                message.destination(),
                started,
                elapsed,
                error_type,
            );
            drop(permit);
            Handled {
                destination: message.destination().to_owned(),
                failure: failure.filter(|f| f.decision == Decision::Stop),
            }
        };
        tasks.spawn(task.with_current_subscriber());
    }

    // Stop pulling; let running calls finish until the deadline; cancel the rest.
    let deadline = tokio::time::sleep(core.options.drain_deadline);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            biased;
            done = tasks.join_next() => match done {
                Some(done) => { note(done, &mut outcome); }
                None => break,
            },
            () = &mut deadline => {
                tracing::warn!(running = tasks.len(), "drain deadline passed: cancelling running handler calls");
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                break;
            }
        }
    }
    drop(source);
    outcome.map_or(Ok(()), Err)
}

/// Notes a finished task; `true` when it decided `Stop`.
fn note(done: Result<Handled, tokio::task::JoinError>, outcome: &mut Option<ConsumeError>) -> bool {
    match done {
        Ok(Handled {
            destination,
            failure: Some(failure),
        }) => {
            tracing::error!(
                destination, error_type = %failure.error_type, error = %failure.error,
                "handler failed, consumer stopped"
            );
            outcome.get_or_insert(ConsumeError::Stopped {
                destination,
                error_type: failure.error_type.into_owned(),
                source: failure.error,
            });
            true
        }
        Ok(_) => false,
        Err(join) if join.is_cancelled() => false,
        Err(join) => {
            tracing::error!(error = %join, "consumer task failed");
            outcome.get_or_insert(ConsumeError::Broker(Box::new(join)));
            true
        }
    }
}
