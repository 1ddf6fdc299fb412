//! Unordered mode: each message is handled and settled on its own (RabbitMQ, JetStream), at
//! most `max_concurrency` at once.

use std::future::Future;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use futures_util::FutureExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::instrument::WithSubscriber;

use super::handle::{DeadLetter, Failure, Handle};
use super::report::Core;
use super::run::Run;
use super::source::{Unordered, UnorderedSettler, UnorderedSource};
use super::ConsumeError;
use crate::classify::Decision;
use crate::message::IncomingMessage;
use crate::process::Retrying;
use crate::sync::Recover;
use opentelemetry::trace::TraceContextExt;

/// A handled delivery, as its task reports it.
struct Handled {
    destination: String,
    /// A failure that decided `Stop`.
    stopped: Option<Failure>,
}

impl<Src, Set> Run<Src::Message> for Unordered<Src, Set>
where
    Src: UnorderedSource,
    Set: UnorderedSettler<Src::Message>,
{
    async fn run<H>(
        self,
        handler: H,
        max_batch: usize,
        core: Core,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ConsumeError>
    where
        H: Handle<Src::Message> + Clone,
    {
        run_unordered(
            self.source,
            self.settler,
            handler,
            max_batch,
            core,
            shutdown,
        )
        .await
    }
}

/// Runs an unordered source until `shutdown` resolves, a failure decides `Stop`, or the
/// source closes.
async fn run_unordered<Src, Set, H>(
    mut source: Src,
    settler: Set,
    handler: H,
    max_batch: usize,
    core: Core,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ConsumeError>
where
    Src: UnorderedSource,
    Set: UnorderedSettler<Src::Message>,
    H: Handle<Src::Message> + Clone,
{
    let settler = Arc::new(settler);
    let attempts = Arc::new(Attempts::default());
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
        let next = tokio::select! {
            biased;
            () = &mut shutdown => break 'pull,
            next = source.next() => next,
        };
        let first = match next {
            None => break,
            Some(Err(error)) => {
                tracing::error!(%error, system = core.system, "consumer failed");
                outcome.get_or_insert(ConsumeError::Broker(error));
                break;
            }
            Some(Ok(message)) => message,
        };
        // A batch takes what is ready now, never waiting to fill it.
        let mut work = vec![first];
        while work.len() < max_batch {
            match source.next().now_or_never() {
                Some(Some(Ok(message))) => work.push(message),
                Some(Some(Err(error))) => {
                    tracing::error!(%error, system = core.system, "consumer failed");
                    outcome.get_or_insert(ConsumeError::Broker(error));
                    break;
                }
                Some(None) | None => break,
            }
        }
        let (mut handler, settler, core) =
            (handler.clone(), Arc::clone(&settler), Arc::clone(&core));
        let attempts = Arc::clone(&attempts);
        let task = async move {
            // The broker counts deliveries, and the core its own requeues where the broker
            // does not (SPEC §8: the higher wins); a batch is as far as its most tried message.
            let mut attempt = work
                .iter()
                .map(|m| {
                    let delivered = m.delivery_attempt().unwrap_or(1);
                    attempts
                        .next(m)
                        .map_or(delivered, |core| core.max(delivered))
                })
                .max()
                .unwrap_or(1);
            let mut retry_of = None;
            let (decision, failure, failed) = loop {
                let handled = if retry_of.is_none() {
                    handler.handle(&work, attempt).await
                } else {
                    Retrying::new(handler.handle(&work, attempt), retry_of.clone()).await
                };
                let failure = match handled {
                    Ok(()) => break (Decision::Ack, None, None),
                    Err(failure) => failure,
                };
                let failed = crate::process::take_failed();
                let decision = match handler.decide(&failure, attempt) {
                    Decision::DeadLetter if !handler.dead_letters() => {
                        let _about = failed.as_ref().map(|(cx, _)| cx.clone().attach());
                        tracing::error!(
                            error_type = %failure.error_type,
                            "dead-letter decision without a dead-letter destination: the consumer stops instead"
                        );
                        Decision::Stop
                    }
                    decision => decision,
                };
                let Decision::Retry { after } = decision else {
                    break (decision, Some(failure), failed);
                };
                for message in &work {
                    core.metrics.record_retry(
                        core.system,
                        message.destination(),
                        &core.group,
                        &failure.error_type,
                    );
                }
                // Through the broker when the attempts can be counted across the redelivery,
                // else in process.
                if settler.redelivers() && work.iter().all(IncomingMessage::redeliveries_counted) {
                    for message in &work {
                        attempts.retried(message, attempt);
                    }
                    break (decision, Some(failure), failed);
                }
                // A broker that cannot deliver again (core NATS): the core hands the message
                // to the handler again itself, in the same trace.
                {
                    let _about = failed.as_ref().map(|(cx, _)| cx.clone().attach());
                    tracing::debug!(
                        error_type = %failure.error_type, error = %failure.error, ?after, attempt,
                        "handler failed, retrying"
                    );
                }
                retry_of = failed
                    .as_ref()
                    .map(|(cx, _)| cx.span().span_context().clone())
                    .filter(|sc| sc.is_valid())
                    .or(retry_of);
                tokio::time::sleep(after).await;
                attempt = attempt.saturating_add(1);
            };
            let decision = match (decision, &failure) {
                (Decision::DeadLetter, Some(failure)) => {
                    dead_letter(
                        handler.sink(),
                        &*settler,
                        &core,
                        &work,
                        failure,
                        attempt,
                        &failed,
                    )
                    .await
                }
                (decision, _) => decision,
            };
            if !matches!(decision, Decision::Retry { .. }) {
                for message in &work {
                    attempts.settled(message);
                }
            }
            for message in &work {
                let started = SystemTime::now();
                let clock = Instant::now();
                let settled = settler.settle(message, decision).await;
                if let Err(error) = &settled {
                    tracing::warn!(%error, ?decision, "settle failed: the broker delivers the message again");
                }
                core.settled(
                    message.destination(),
                    started,
                    clock.elapsed(),
                    settled.is_err(),
                );
            }
            drop(permit);
            Handled {
                destination: work
                    .first()
                    .map(|m| m.destination().to_owned())
                    .unwrap_or_default(),
                stopped: failure.filter(|_| decision == Decision::Stop),
            }
        };
        tasks.spawn(task.with_current_subscriber());
        if outcome.is_some() {
            break;
        }
    }

    // Stop pulling (the broker stops delivering too); let running calls finish until the
    // deadline; cancel the rest.
    let deadline = tokio::time::sleep(core.options.drain_deadline);
    tokio::pin!(deadline);
    tokio::select! {
        biased;
        () = source.stop() => {}
        () = &mut deadline => {
            tracing::warn!(system = core.system, "stopping the subscription outlasted the drain deadline");
        }
    }
    loop {
        tokio::select! {
            biased;
            done = tasks.join_next() => match done {
                Some(done) => { note(done, &mut outcome); }
                None => break,
            },
            () = &mut deadline => {
                tracing::warn!(
                    running = tasks.len(), deadline = ?core.options.drain_deadline,
                    "drain deadline passed: cancelling running handler calls, their messages stay unsettled"
                );
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                break;
            }
        }
    }
    drop(source);
    core.reporter.remove_all();
    outcome.map_or(Ok(()), Err)
}

/// Publishes the dead-letter copies of `work`; the decision to settle with: `DeadLetter` once
/// every copy is acknowledged, else `Retry` after a backoff (the broker delivers the original
/// again; a broker that cannot is waited on here) so that nothing is lost.
async fn dead_letter<M, D, Set>(
    sink: D,
    settler: &Set,
    core: &Core,
    work: &[M],
    failure: &Failure,
    attempts: u32,
    failed: &Option<(opentelemetry::Context, crate::scope::MessageScope)>,
) -> Decision
where
    M: IncomingMessage,
    D: DeadLetter<M>,
    Set: UnorderedSettler<M>,
{
    let mut tries = 0u32;
    let mut sent = 0;
    while let Some(message) = work.get(sent) {
        let published = sink
            .send(message, failure, attempts, &core.group, failed.as_ref())
            .await;
        let _about = failed.as_ref().map(|(cx, _)| cx.clone().attach());
        match published {
            Ok(()) => {
                core.metrics.record_dead_letter(
                    core.system,
                    message.destination(),
                    &core.group,
                    &failure.error_type,
                );
                tracing::warn!(
                    destination = message.destination(), error_type = %failure.error_type,
                    error = %failure.error, attempts, "handler failed, message dead-lettered"
                );
                sent += 1;
            }
            Err(error) => {
                tries = tries.saturating_add(1);
                let after = super::dead_letter_backoff(tries);
                tracing::warn!(
                    destination = message.destination(), %error, ?after,
                    "dead-letter publish failed: the message stays unsettled, trying again"
                );
                if settler.redelivers() {
                    return Decision::Retry { after };
                }
                drop(_about);
                tokio::time::sleep(after).await;
            }
        }
    }
    Decision::DeadLetter
}

/// The core's own count of the attempts at messages it asked the broker to deliver again,
/// by message id, for brokers that do not count deliveries (RabbitMQ classic queues): bounded,
/// forgotten once a message is settled for good. Costs nothing while empty.
#[derive(Default)]
struct Attempts {
    entries: std::sync::Mutex<Retried>,
    len: std::sync::atomic::AtomicUsize,
}

#[derive(Default)]
struct Retried {
    by_id: std::collections::HashMap<String, u32>,
    order: std::collections::VecDeque<String>,
}

/// Most message ids remembered; the oldest are forgotten first.
const MAX_REMEMBERED: usize = 10_000;

impl Attempts {
    /// The attempt `message` is delivered for, if the core requeued it before.
    fn next<M: IncomingMessage>(&self, message: &M) -> Option<u32> {
        use std::sync::atomic::Ordering;
        if self.len.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let id = message.message_id()?;
        let entries = self.entries.locked();
        entries.by_id.get(&*id).map(|n| n.saturating_add(1))
    }

    /// `message` failed attempt `attempt` and goes back to the broker.
    fn retried<M: IncomingMessage>(&self, message: &M, attempt: u32) {
        use std::sync::atomic::Ordering;
        let Some(id) = message.message_id() else {
            return;
        };
        let mut entries = self.entries.locked();
        if entries.by_id.insert(id.to_string(), attempt).is_none() {
            entries.order.push_back(id.into_owned());
            if entries.order.len() > MAX_REMEMBERED {
                if let Some(oldest) = entries.order.pop_front() {
                    entries.by_id.remove(&oldest);
                }
            }
        }
        self.len.store(entries.by_id.len(), Ordering::Relaxed);
    }

    /// `message` is settled for good.
    fn settled<M: IncomingMessage>(&self, message: &M) {
        use std::sync::atomic::Ordering;
        if self.len.load(Ordering::Relaxed) == 0 {
            return;
        }
        let Some(id) = message.message_id() else {
            return;
        };
        let mut entries = self.entries.locked();
        if entries.by_id.remove(&*id).is_some() {
            entries.order.retain(|known| *known != *id);
        }
        self.len.store(entries.by_id.len(), Ordering::Relaxed);
    }
}

/// Notes a finished task; `true` when it decided `Stop`.
fn note(done: Result<Handled, tokio::task::JoinError>, outcome: &mut Option<ConsumeError>) -> bool {
    match done {
        Ok(Handled {
            destination,
            stopped: Some(failure),
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

#[cfg(test)]
mod tests {
    //! A tiny fake broker that requeues what it is told to: the core's own logic under test.
    use std::collections::{HashMap, VecDeque};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use std::time::Duration;

    use tower::service_fn;

    use super::*;
    use crate::classify::{Classifier, PANIC};
    use crate::consume::handle::One;
    use crate::consume::Options;
    use crate::message::Headers;
    use crate::metrics::{label, name, Metrics, OPERATION_SETTLE};
    use crate::BoxError;

    #[derive(Clone, Debug)]
    struct Fake(u32);

    impl Headers for Fake {
        fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
            std::iter::empty()
        }
    }

    impl IncomingMessage for Fake {
        fn system(&self) -> &'static str {
            crate::message::system::RABBITMQ
        }
        fn destination(&self) -> &str {
            "jobs"
        }
    }

    #[derive(Clone, Default)]
    struct Queue {
        ready: Arc<Mutex<VecDeque<Fake>>>,
        pulled: Arc<AtomicUsize>,
        settled: Arc<Mutex<Vec<(u32, Decision)>>>,
        /// A broker that cannot deliver again (core NATS).
        no_redelivery: bool,
        /// Times the core said it stopped pulling.
        stops: Arc<AtomicUsize>,
    }

    impl UnorderedSource for Queue {
        type Message = Fake;
        async fn next(&mut self) -> Option<Result<Fake, BoxError>> {
            loop {
                if let Some(message) = self.ready.lock().unwrap().pop_front() {
                    self.pulled.fetch_add(1, Ordering::SeqCst);
                    return Some(Ok(message));
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }

        async fn stop(&mut self) {
            self.stops.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl UnorderedSettler<Fake> for Queue {
        async fn settle(&self, message: &Fake, decision: Decision) -> Result<(), BoxError> {
            self.settled.lock().unwrap().push((message.0, decision));
            if let Decision::Retry { .. } = decision {
                assert!(!self.no_redelivery, "never asked to deliver again");
                // A nack with requeue: the broker hands it out again.
                self.ready.lock().unwrap().push_back(message.clone());
            }
            Ok(())
        }

        fn redelivers(&self) -> bool {
            !self.no_redelivery
        }
    }

    #[derive(Debug)]
    struct Poison;
    impl std::fmt::Display for Poison {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("poison")
        }
    }
    impl std::error::Error for Poison {}

    #[derive(Debug)]
    struct Flaky;
    impl std::fmt::Display for Flaky {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("flaky")
        }
    }
    impl std::error::Error for Flaky {}

    fn queue(n: u32) -> Queue {
        let queue = Queue::default();
        queue.ready.lock().unwrap().extend((0..n).map(Fake));
        queue
    }

    fn core(metrics: &Metrics, max_concurrency: usize, drain: Duration) -> Core {
        let mut options = Options::DEFAULT;
        options.max_concurrency = max_concurrency;
        options.drain_deadline = drain;
        let group: Arc<str> = Arc::from("workers");
        Core {
            metrics: metrics.clone(),
            system: crate::message::system::RABBITMQ,
            reporter: crate::consume::report::Reporter::new(
                metrics.clone(),
                crate::message::system::RABBITMQ,
                Arc::clone(&group),
            ),
            group,
            options,
            spans: crate::consume::Spans::default(),
        }
    }

    fn classifier() -> Classifier {
        Classifier::new()
            .on::<Poison>("Poison")
            .on::<Flaky>("Flaky")
            .decision("Poison", Decision::Reject)
            .decision("Flaky", Decision::retry(Duration::from_millis(1)))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_delivery_is_settled_with_its_decision_within_the_bound() {
        let queue = queue(20);
        let metrics = Metrics::new();
        let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let flaked = Arc::new(AtomicUsize::new(0));
        let service = {
            let (running, most, flaked) = (running.clone(), most.clone(), flaked.clone());
            service_fn(move |m: Fake| {
                let (running, most, flaked) = (running.clone(), most.clone(), flaked.clone());
                async move {
                    most.fetch_max(running.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    match m.0 {
                        3 => Err(BoxError::from(Poison)),
                        5 if flaked.fetch_add(1, Ordering::SeqCst) == 0 => Err(Flaky.into()),
                        _ => Ok(()),
                    }
                }
            })
        };
        let settled = Arc::clone(&queue.settled);
        let all_settled = async move {
            while settled.lock().unwrap().len() < 21 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        };
        let handler = One {
            dead_letters: crate::consume::handle::NoDeadLetters,
            service,
            classifier: classifier(),
        };
        let core = core(&metrics, 3, Duration::from_secs(30));
        run_unordered(queue.clone(), queue.clone(), handler, 1, core, all_settled)
            .await
            .expect("no failure stops this consumer");

        let mut by_id: HashMap<u32, Vec<Decision>> = HashMap::new();
        for (id, decision) in queue.settled.lock().unwrap().iter() {
            by_id.entry(*id).or_default().push(*decision);
        }
        assert_eq!(by_id.len(), 20);
        assert_eq!(by_id[&3], [Decision::Reject]);
        assert_eq!(
            by_id[&5],
            [Decision::retry(Duration::from_millis(1)), Decision::Ack]
        );
        assert!(by_id
            .iter()
            .filter(|(id, _)| ![3, 5].contains(*id))
            .all(|(_, d)| *d == [Decision::Ack]));
        assert!(most.load(Ordering::SeqCst) <= 3, "at most three at once");

        let text = metrics.encode();
        let count = |family: &str, labels: &[(&str, &str)]| -> f64 {
            text.lines()
                .filter(|l| l.starts_with(family))
                .filter(|l| {
                    labels
                        .iter()
                        .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        assert_eq!(count(name::RETRIES, &[(label::ERROR_TYPE, "Flaky")]), 1.0);
        assert_eq!(
            count(
                &format!("{}_count", name::OPERATION_DURATION),
                &[
                    (label::OPERATION, OPERATION_SETTLE),
                    (label::DESTINATION, "jobs")
                ]
            ),
            21.0,
            "every settle is timed"
        );
    }

    #[tokio::test]
    async fn stop_settles_the_delivery_and_stops_pulling() {
        let queue = queue(50);
        let metrics = Metrics::new();
        let service = service_fn(|m: Fake| async move {
            if m.0 == 4 {
                panic!("handler bug");
            }
            Ok::<_, BoxError>(())
        });
        let handler = One {
            dead_letters: crate::consume::handle::NoDeadLetters,
            service,
            classifier: Classifier::new(),
        };
        let core = core(&metrics, 2, Duration::from_secs(30));
        let outcome = run_unordered(
            queue.clone(),
            queue.clone(),
            handler,
            1,
            core,
            std::future::pending(),
        )
        .await;
        match outcome {
            Err(ConsumeError::Stopped { error_type, .. }) => assert_eq!(error_type, PANIC),
            other => panic!("expected Stopped, got {other:?}"),
        }
        assert!(queue.settled.lock().unwrap().contains(&(4, Decision::Stop)));
        assert!(
            queue.pulled.load(Ordering::SeqCst) < 50,
            "no more pulls after the stop"
        );
        assert_eq!(
            queue.stops.load(Ordering::SeqCst),
            1,
            "the source was told once"
        );
    }

    #[tokio::test]
    async fn without_redelivery_the_core_retries_in_process_and_settles_once() {
        let mut queue = queue(3);
        queue.no_redelivery = true;
        let metrics = Metrics::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let service = {
            let calls = calls.clone();
            service_fn(move |m: Fake| {
                let failing = m.0 == 1 && calls.fetch_add(1, Ordering::SeqCst) < 2;
                async move {
                    if failing {
                        Err(BoxError::from(Flaky))
                    } else {
                        Ok(())
                    }
                }
            })
        };
        let settled = Arc::clone(&queue.settled);
        let all_settled = async move {
            while settled.lock().unwrap().len() < 3 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        };
        let handler = One {
            dead_letters: crate::consume::handle::NoDeadLetters,
            service,
            classifier: classifier(),
        };
        let core = core(&metrics, 2, Duration::from_secs(30));
        run_unordered(queue.clone(), queue.clone(), handler, 1, core, all_settled)
            .await
            .expect("no failure stops this consumer");
        let settled = queue.settled.lock().unwrap().clone();
        assert_eq!(settled.len(), 3, "each message settled once: {settled:?}");
        assert!(settled.iter().all(|(_, d)| *d == Decision::Ack));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            3,
            "two failed attempts, then success"
        );
        assert!(metrics
            .encode()
            .lines()
            .any(|l| l.starts_with(name::RETRIES) && l.ends_with(" 2")));
    }

    #[tokio::test]
    async fn shutdown_cancels_what_outlives_the_drain_deadline_unsettled() {
        let queue = queue(3);
        let metrics = Metrics::new();
        let service = service_fn(|m: Fake| async move {
            if m.0 == 1 {
                std::future::pending::<()>().await;
            }
            Ok::<_, BoxError>(())
        });
        let handler = One {
            dead_letters: crate::consume::handle::NoDeadLetters,
            service,
            classifier: Classifier::new(),
        };
        let settled = Arc::clone(&queue.settled);
        let others_done = async move {
            while settled.lock().unwrap().len() < 2 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        };
        let core = core(&metrics, 4, Duration::from_millis(20));
        run_unordered(queue.clone(), queue.clone(), handler, 1, core, others_done)
            .await
            .expect("a cancelled call is no failure");
        let settled = queue.settled.lock().unwrap().clone();
        assert!(settled.iter().all(|(id, _)| *id != 1), "left unsettled");
        assert_eq!(settled.len(), 2);
        assert_eq!(
            queue.stops.load(Ordering::SeqCst),
            1,
            "told before the drain"
        );
    }
}
