use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tower::ServiceExt;
use tower_service::Service;
use tracing::instrument::WithSubscriber;

use super::broker::{MemoryBroker, Topic};
use super::record::MemoryMessage;
use crate::classify::{ClassifyError, TypeNameClassifier};
use crate::driver::{BoxError, ConsumeError, ErrorClassifier, FailurePolicy};
use crate::message::system::MEMORY;
use crate::metrics::Metrics;

const FETCH_MAX: usize = 64;

/// Drives a handler with the messages of a consumer group; see the [module docs](super).
///
/// Each assigned partition is consumed in order by its own task; at most
/// [`max_concurrency`](Self::max_concurrency) handlers run at once across partitions. A message
/// is committed only after the handler returned `Ok`. When members join or leave the group the
/// partitions are dealt again: each partition task finishes its current message (committing it)
/// before the partition moves, and the lag series of revoked partitions are removed.
pub struct MemoryConsumer {
    broker: MemoryBroker,
    group: Arc<str>,
    topics: Vec<String>,
    max_concurrency: usize,
    failure: FailurePolicy,
    lag_interval: Duration,
    metrics: Option<Metrics>,
    classify: Option<ErrorClassifier>,
}

impl fmt::Debug for MemoryConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryConsumer")
            .field("group", &self.group)
            .field("topics", &self.topics)
            .field("max_concurrency", &self.max_concurrency)
            .field("failure", &self.failure)
            .finish_non_exhaustive()
    }
}

impl MemoryConsumer {
    pub(crate) fn new(broker: MemoryBroker, group: String) -> Self {
        Self {
            broker,
            group: Arc::from(group),
            topics: Vec::new(),
            max_concurrency: 16,
            failure: FailurePolicy::default(),
            lag_interval: Duration::from_secs(1),
            metrics: None,
            classify: None,
        }
    }

    /// Adds topics to consume (created with the default partitions if missing).
    pub fn subscribe<I, T>(mut self, topics: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.topics.extend(topics.into_iter().map(Into::into));
        self
    }

    /// Most handlers running at once across partitions (default 16).
    pub fn max_concurrency(mut self, max: usize) -> Self {
        self.max_concurrency = max.max(1);
        self
    }

    /// What to do when the handler fails (default [`FailurePolicy::StopPartition`]).
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.failure = policy;
        self
    }

    /// How often lag is reported (default 1 s).
    pub fn lag_interval(mut self, interval: Duration) -> Self {
        self.lag_interval = interval.max(Duration::from_millis(10));
        self
    }

    /// Derives the `error_type` of counted redeliveries from the handler's error (default: the
    /// error's type name, see [`TypeNameClassifier`]).
    pub fn classify_errors(
        mut self,
        classify: impl Fn(&BoxError) -> Cow<'static, str> + Send + Sync + 'static,
    ) -> Self {
        self.classify = Some(Arc::new(classify));
        self
    }

    /// Reports lag, rebalances and redeliveries into `metrics`.
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Consumes until `shutdown` resolves, then stops fetching, lets in-flight handlers finish,
    /// commits, leaves the group and returns.
    ///
    /// Dropping the returned future instead aborts the partition tasks at once: messages in
    /// flight are not committed and are delivered again to the group.
    ///
    /// # Errors
    ///
    /// [`ConsumeError::PartitionStopped`] for the first partition stopped by a handler failure
    /// under [`FailurePolicy::StopPartition`] (reported at shutdown; other partitions go on).
    pub async fn run<S>(
        self,
        handler: S,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ConsumeError>
    where
        S: Service<MemoryMessage> + Clone + Send + 'static,
        S::Future: Send,
        S::Response: Send,
        S::Error: Into<BoxError> + Send,
    {
        let Self {
            broker,
            group,
            topics,
            max_concurrency,
            failure,
            lag_interval,
            metrics,
            classify,
        } = self;
        let (member, mut generation) = broker.join(&group, &topics);
        let permits = Arc::new(Semaphore::new(max_concurrency));
        let mut first_failure: Option<ConsumeError> = None;
        let mut stopped: HashSet<(Arc<str>, i32)> = HashSet::new();
        let mut assigned: Vec<(Arc<Topic>, i32)> = Vec::new();
        let mut lag_tick = tokio::time::interval(lag_interval);
        lag_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);

        loop {
            generation.borrow_and_update();
            let now = broker.assignment(&group, member);
            for (topic, partition) in &assigned {
                let kept = now
                    .iter()
                    .any(|(t, p)| t.name == topic.name && p == partition);
                if !kept {
                    if let Some(m) = &metrics {
                        m.remove_partition(MEMORY, &topic.name, &group, Some(*partition));
                    }
                }
            }
            if let Some(m) = &metrics {
                m.record_rebalance(MEMORY, &group);
            }
            assigned = now;
            tracing::debug!(group = %group, member, partitions = assigned.len(), "memory consumer assigned");

            let (stop_tx, stop_rx) = watch::channel(false);
            let mut workers = JoinSet::new();
            for (topic, partition) in &assigned {
                if stopped.contains(&(Arc::clone(&topic.name), *partition)) {
                    continue;
                }
                // Partition tasks report to the subscriber of the task that runs the consumer.
                workers.spawn(
                    PartitionWorker {
                        broker: broker.clone(),
                        topic: Arc::clone(topic),
                        partition: *partition,
                        group: Arc::clone(&group),
                        permits: Arc::clone(&permits),
                        failure,
                        metrics: metrics.clone(),
                        classify: classify.clone(),
                        stop: stop_rx.clone(),
                    }
                    .run(handler.clone())
                    .with_current_subscriber(),
                );
            }

            let shutting_down = loop {
                tokio::select! {
                    () = &mut shutdown => break true,
                    changed = generation.changed() => break changed.is_err(),
                    Some(done) = workers.join_next() => {
                        note_worker(done, &mut stopped, &mut first_failure);
                    }
                    _ = lag_tick.tick() => {
                        if let Some(m) = &metrics {
                            report_lag(&broker, m, &group, &assigned);
                        }
                    }
                }
            };
            let _ = stop_tx.send(true);
            while let Some(done) = workers.join_next().await {
                note_worker(done, &mut stopped, &mut first_failure);
            }
            if shutting_down {
                break;
            }
        }

        broker.leave(&group, member);
        // Leaving revokes every partition: their series go with them (SPEC §5).
        if let Some(m) = &metrics {
            for (topic, partition) in &assigned {
                m.remove_partition(MEMORY, &topic.name, &group, Some(*partition));
            }
        }
        first_failure.map_or(Ok(()), Err)
    }
}

fn note_worker(
    done: Result<Result<(), ConsumeError>, tokio::task::JoinError>,
    stopped: &mut HashSet<(Arc<str>, i32)>,
    first_failure: &mut Option<ConsumeError>,
) {
    match done {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::error!(error = %error, "memory consumer partition stopped");
            if let ConsumeError::PartitionStopped {
                destination,
                partition,
                ..
            } = &error
            {
                stopped.insert((Arc::from(destination.as_str()), *partition));
            }
            first_failure.get_or_insert(error);
        }
        Err(join) => {
            // A panicking handler must not take the consumer down silently.
            tracing::error!(error = %join, "memory consumer partition task failed");
            first_failure.get_or_insert(ConsumeError::Broker(Box::new(join)));
        }
    }
}

fn report_lag(
    broker: &MemoryBroker,
    metrics: &Metrics,
    group: &str,
    assigned: &[(Arc<Topic>, i32)],
) {
    for (topic, partition) in assigned {
        let Some(high) = broker.high_watermark(&topic.name, *partition) else {
            continue;
        };
        let next = broker
            .position(group, &topic.name, *partition)
            .unwrap_or_else(|| broker.log_start(topic, *partition));
        metrics.record_lag(
            MEMORY,
            &topic.name,
            group,
            Some(*partition),
            (high - next).max(0),
        );
    }
}

struct PartitionWorker {
    broker: MemoryBroker,
    topic: Arc<Topic>,
    partition: i32,
    group: Arc<str>,
    permits: Arc<Semaphore>,
    failure: FailurePolicy,
    metrics: Option<Metrics>,
    classify: Option<ErrorClassifier>,
    stop: watch::Receiver<bool>,
}

impl PartitionWorker {
    async fn run<S>(mut self, mut handler: S) -> Result<(), ConsumeError>
    where
        S: Service<MemoryMessage>,
        S::Error: Into<BoxError>,
    {
        let broker = self.broker.clone();
        let (topic, partition) = (Arc::clone(&self.topic), self.partition);
        let mut position = broker
            .committed(&self.group, &topic.name, partition)
            .unwrap_or_else(|| broker.log_start(&topic, partition));
        let mut high_watermark = broker.watch_partition(&topic, partition);
        loop {
            let batch = broker.read(&topic, partition, position, FETCH_MAX, Some(&self.group));
            if batch.is_empty() {
                tokio::select! {
                    _ = high_watermark.wait_for(|high| *high > position) => continue,
                    _ = self.stop.wait_for(|stop| *stop) => return Ok(()),
                }
            }
            for message in batch {
                if message.offset > position {
                    // Counted and warned about (rate-limited) by the broker.
                    tracing::debug!(
                        topic = %topic.name, partition, from = position, to = message.offset,
                        "records dropped by retention before they were consumed"
                    );
                }
                position = message.offset;
                if !self.deliver(&mut handler, message).await? {
                    return Ok(());
                }
                position += 1;
                broker.commit(&self.group, &topic.name, partition, position);
            }
        }
    }

    /// Hands one message to the handler until it succeeds; `Ok(false)` when asked to stop first.
    async fn deliver<S>(
        &mut self,
        handler: &mut S,
        message: MemoryMessage,
    ) -> Result<bool, ConsumeError>
    where
        S: Service<MemoryMessage>,
        S::Error: Into<BoxError>,
    {
        loop {
            if *self.stop.borrow() {
                return Ok(false);
            }
            let result = {
                let _permit = self.permits.acquire().await;
                match handler.ready().await {
                    Ok(ready) => ready.call(message.clone()).await,
                    Err(error) => Err(error),
                }
            };
            let error = match result {
                Ok(_) => return Ok(true),
                Err(error) => error,
            };
            match self.failure {
                FailurePolicy::StopPartition => {
                    return Err(ConsumeError::PartitionStopped {
                        destination: self.topic.name.to_string(),
                        partition: self.partition,
                        offset: message.offset,
                        source: error.into(),
                    })
                }
                FailurePolicy::Redeliver { backoff } => {
                    let type_name = TypeNameClassifier.classify(&error);
                    let error: BoxError = error.into();
                    let error_type = match &self.classify {
                        Some(classify) => classify(&error),
                        None => type_name,
                    };
                    if let Some(m) = &self.metrics {
                        m.record_retry(MEMORY, &self.topic.name, &self.group, &error_type);
                    }
                    tracing::debug!(offset = message.offset, error = %error, "redelivering");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        _ = self.stop.wait_for(|stop| *stop) => return Ok(false),
                    }
                }
            }
        }
    }
}
