//! Running a consumer of the embedded broker until a number of messages are settled.

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::future::{Future, IntoFuture};
use std::panic::Location;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tower_service::Service;

use super::metrics::MetricsSnapshot;
use crate::classify::{ClassifyError, Decide};
use crate::consume::{Adapter, Configured, ConsumeError, Consumer};
use crate::memory::{MemoryBroker, MemoryMessage, MemorySubscription};
use crate::metrics::{label, name, Metrics};
use crate::BoxError;

/// How long [`run_until_settled`] waits by default.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often progress is looked at.
const POLL: Duration = Duration::from_millis(5);
/// How long a consumer that timed out gets to shut down before the failure is reported.
const GRACE: Duration = Duration::from_secs(2);

/// Runs `consumer` (of the embedded broker) with `handler` until `count` more messages of its
/// topics are settled, then shuts it down and returns what [`Consumer::run`] returned.
///
/// A message is settled once its group committed past it (SPEC §7): it was handled, or
/// rejected, or dead-lettered; a retried message is settled when an attempt succeeds. The count
/// starts from the group's committed offsets when the run starts.
///
/// A failure that stops a partition leaves the messages at and after it unsettled for good:
/// they count as done, so the run ends once every other message is settled, and returns the
/// consumer's [`ConsumeError::PartitionStopped`].
///
/// Await it as it is, or set another [`timeout`](UntilSettled::timeout) first (default 10 s).
///
/// # Panics
///
/// When the messages are not settled within the timeout: the consumer is shut down and the
/// panic message tells how far each partition got, and what the consumer returned.
#[track_caller]
pub fn run_until_settled<C, D, S>(
    consumer: Consumer<MemorySubscription, C, D>,
    handler: S,
    count: usize,
) -> UntilSettled<C, D, S> {
    UntilSettled {
        consumer,
        handler,
        count,
        timeout: DEFAULT_TIMEOUT,
        caller: Location::caller(),
    }
}

/// A consumer run that ends once a number of messages are settled: see [`run_until_settled`].
/// Await it (it implements [`IntoFuture`]).
#[must_use = "nothing runs until it is awaited"]
pub struct UntilSettled<C, D, S> {
    consumer: Consumer<MemorySubscription, C, D>,
    handler: S,
    count: usize,
    timeout: Duration,
    /// Named in the failure: an async panic cannot point at the test line itself.
    caller: &'static Location<'static>,
}

impl<C, D, S> fmt::Debug for UntilSettled<C, D, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UntilSettled")
            .field("group", &self.consumer.adapter.group())
            .field("topics", &self.consumer.adapter.topics())
            .field("count", &self.count)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl<C, D, S> UntilSettled<C, D, S> {
    /// Fails (panics) when the messages are not settled after `timeout` (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

impl<C, D, S> IntoFuture for UntilSettled<C, D, S>
where
    S: Service<MemoryMessage> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError> + Send,
    C: ClassifyError<S::Error> + Decide + Clone + Send + Sync + 'static,
    D: Configured<MemoryMessage> + Send + 'static,
{
    type Output = Result<(), ConsumeError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        let Self {
            consumer,
            handler,
            count,
            timeout,
            caller,
        } = self;
        let progress = Progress::start(
            consumer.adapter.broker().clone(),
            consumer.adapter.group(),
            consumer.adapter.topics(),
            consumer.metrics.clone(),
        );
        let expired = Arc::new(AtomicBool::new(false));
        let (expired_tx, expired_rx) = tokio::sync::oneshot::channel::<()>();
        let shutdown = {
            let (progress, expired) = (progress.clone(), Arc::clone(&expired));
            async move {
                tokio::select! {
                    () = progress.reached(count) => {}
                    () = tokio::time::sleep(timeout) => {
                        expired.store(true, Ordering::SeqCst);
                        let _ = expired_tx.send(());
                    }
                }
            }
        };
        let run = consumer.run(handler, shutdown);
        Box::pin(async move {
            // A consumer that timed out gets a moment to shut down, not its whole drain
            // deadline: a hung handler must not hang the test too.
            let gave_up = async {
                if expired_rx.await.is_ok() {
                    tokio::time::sleep(GRACE).await;
                } else {
                    std::future::pending::<()>().await;
                }
            };
            let returned = tokio::select! {
                returned = run => Some(returned),
                () = gave_up => None,
            };
            if expired.load(Ordering::SeqCst) {
                let returned = match returned {
                    Some(returned) => format!("the consumer returned {returned:?}"),
                    None => format!(
                        "the consumer did not shut down within {GRACE:?} (a handler still running?)"
                    ),
                };
                panic!(
                    "run_until_settled (at {caller}): {} within {timeout:?}; {returned}",
                    progress.report(count)
                );
            }
            returned.expect("the run ended before the deadline")
        })
    }
}

/// What a group has settled on its topics since the run started.
#[derive(Clone)]
struct Progress {
    broker: MemoryBroker,
    group: Arc<str>,
    topics: Arc<[String]>,
    metrics: Metrics,
    /// Where the group started on each partition that existed when the run started; a
    /// partition created later starts at 0.
    start: Arc<HashMap<(String, i32), i64>>,
}

/// One partition's state.
struct Partition<'a> {
    topic: &'a str,
    partition: i32,
    start: i64,
    committed: i64,
    high_watermark: i64,
    stopped: bool,
}

impl Progress {
    fn start(broker: MemoryBroker, group: &str, topics: &[String], metrics: Metrics) -> Self {
        let mut start = HashMap::new();
        for topic in topics {
            for partition in 0..broker.partitions(topic).unwrap_or(0) {
                let from = broker
                    .committed(group, topic, partition)
                    .or_else(|| broker.log_start_of(topic, partition))
                    .unwrap_or(0);
                start.insert((topic.clone(), partition), from);
            }
        }
        Self {
            broker,
            group: Arc::from(group),
            topics: topics.into(),
            metrics,
            start: Arc::new(start),
        }
    }

    fn partitions(&self) -> Vec<Partition<'_>> {
        let stopped = self.stopped();
        let mut all = Vec::new();
        for topic in self.topics.iter() {
            for partition in 0..self.broker.partitions(topic).unwrap_or(0) {
                let start = self
                    .start
                    .get(&(topic.clone(), partition))
                    .copied()
                    .unwrap_or(0);
                all.push(Partition {
                    topic,
                    partition,
                    start,
                    committed: self
                        .broker
                        .committed(&self.group, topic, partition)
                        .unwrap_or(start)
                        .max(start),
                    high_watermark: self.broker.high_watermark(topic, partition).unwrap_or(0),
                    stopped: stopped.contains(&(topic.clone(), partition)),
                });
            }
        }
        all
    }

    /// The partitions of this group a failure stopped, from the consumer's
    /// `messaging_consumer_partition_stopped`.
    fn stopped(&self) -> Vec<(String, i32)> {
        let snapshot = MetricsSnapshot::of(&self.metrics);
        let get = |labels: &[(String, String)], key: &str| {
            labels
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        snapshot
            .series(name::PARTITION_STOPPED)
            .filter(|(labels, value)| {
                *value >= 1.0 && get(labels, label::GROUP).as_deref() == Some(&*self.group)
            })
            .filter_map(|(labels, _)| {
                let partition = get(labels, label::PARTITION)?.parse().ok()?;
                Some((get(labels, label::DESTINATION)?, partition))
            })
            .collect()
    }

    /// Settled messages, and messages stuck behind stopped partitions.
    fn counts(partitions: &[Partition<'_>]) -> (i64, i64) {
        let settled = partitions.iter().map(|p| p.committed - p.start).sum();
        let stuck = partitions
            .iter()
            .filter(|p| p.stopped)
            .map(|p| (p.high_watermark - p.committed).max(0))
            .sum();
        (settled, stuck)
    }

    async fn reached(&self, count: usize) {
        let count = i64::try_from(count).unwrap_or(i64::MAX);
        loop {
            let (settled, stuck) = Self::counts(&self.partitions());
            if settled + stuck >= count {
                return;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// How far the run got, per partition.
    fn report(&self, count: usize) -> String {
        let partitions = self.partitions();
        let (settled, stuck) = Self::counts(&partitions);
        let mut report = format!(
            "{settled} of {count} messages settled by group `{}`",
            self.group
        );
        if stuck > 0 {
            let _ = write!(report, " ({stuck} behind stopped partitions)");
        }
        report.push_str(" [");
        for (i, p) in partitions.iter().enumerate() {
            let _ = write!(
                report,
                "{}{}[{}]: committed {} of {} (from {}){}",
                if i == 0 { "" } else { ", " },
                p.topic,
                p.partition,
                p.committed,
                p.high_watermark,
                p.start,
                if p.stopped { ", stopped" } else { "" }
            );
        }
        report.push(']');
        report
    }
}
