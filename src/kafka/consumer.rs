use std::borrow::Cow;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, DefaultConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::task::{Id, JoinError, JoinSet};
use tower::ServiceExt;
use tower_service::Service;

use super::carrier::read_headers;
use super::context::{EventscopeContext, RebalanceEvent, Settings};
use super::record::{system_time_from_millis, KafkaMessage};
use crate::classify::{ClassifyError, TypeNameClassifier};
use crate::driver::{BoxError, ConsumeError, FailurePolicy};
use crate::message::system::KAFKA;
use crate::message::HeaderList;
use crate::metrics::Metrics;

/// Drives a handler with the messages of your `rdkafka` [`StreamConsumer`]; see the
/// [module docs](super).
///
/// The consumer must be created with an [`EventscopeContext`] and with
/// `enable.auto.offset.store=false` ([`run`](Self::run) refuses to start otherwise): the driver
/// stores a message's offset only after the handler returned `Ok`, and commits stored offsets
/// every [`commit_interval`](Self::commit_interval), before partitions are revoked and at
/// shutdown. Subscribe (or assign) before or after building the driver, as with any consumer.
///
/// Messages of one partition are handled in order, one batch at a time; partitions proceed
/// independently, at most [`max_concurrency`](Self::max_concurrency) handler calls at once. A
/// partition with more than [`max_buffered`](Self::max_buffered) messages waiting is paused in
/// librdkafka until its handler has caught up to half of that, so memory stays bounded and a
/// slow partition does not hold the others up.
pub struct KafkaConsumer<C: ConsumerContext + 'static = DefaultConsumerContext> {
    consumer: Arc<StreamConsumer<EventscopeContext<C>>>,
    max_concurrency: usize,
    failure: FailurePolicy,
    commit_interval: Duration,
    max_buffered: usize,
    max_batch: usize,
}

impl<C: ConsumerContext + 'static> fmt::Debug for KafkaConsumer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaConsumer")
            .field("group", &self.consumer.context().group())
            .field("max_concurrency", &self.max_concurrency)
            .field("failure", &self.failure)
            .field("commit_interval", &self.commit_interval)
            .field("max_buffered", &self.max_buffered)
            .field("max_batch", &self.max_batch)
            .finish()
    }
}

impl<C: ConsumerContext + 'static> KafkaConsumer<C> {
    /// Drives `consumer` (pass an `Arc` to keep a handle to it, e.g. to read committed offsets
    /// after [`run`](Self::run) returned).
    pub fn new(consumer: impl Into<Arc<StreamConsumer<EventscopeContext<C>>>>) -> Self {
        Self {
            consumer: consumer.into(),
            max_concurrency: 16,
            failure: FailurePolicy::default(),
            commit_interval: Duration::from_secs(1),
            max_buffered: 1000,
            max_batch: 100,
        }
    }

    /// The consumer.
    pub fn consumer(&self) -> &Arc<StreamConsumer<EventscopeContext<C>>> {
        &self.consumer
    }

    /// Most handler calls running at once across partitions (default 16).
    pub fn max_concurrency(mut self, max: usize) -> Self {
        self.max_concurrency = max.max(1);
        self
    }

    /// What to do when the handler fails (default [`FailurePolicy::StopPartition`]).
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.failure = policy;
        self
    }

    /// How often stored offsets are committed (default 1 s). A consumer that dies without
    /// shutting down redelivers what it processed since its last commit.
    pub fn commit_interval(mut self, interval: Duration) -> Self {
        self.commit_interval = interval.max(Duration::from_millis(10));
        self
    }

    /// Messages buffered per partition before it is paused (default 1000).
    pub fn max_buffered(mut self, max: usize) -> Self {
        self.max_buffered = max.max(2);
        self
    }

    /// Most messages per handler call in [`run_batch`](Self::run_batch) (default 100).
    pub fn max_batch_size(mut self, max: usize) -> Self {
        self.max_batch = max.max(1);
        self
    }

    /// Consumes until `shutdown` resolves, then stops fetching, lets running handler calls
    /// finish, commits and returns. Buffered messages not yet handed to the handler are left
    /// for the next consumer of their partition.
    ///
    /// Dropping the returned future instead aborts the partition tasks at once: messages
    /// processed since the last commit are delivered again to the group.
    ///
    /// # Errors
    ///
    /// [`ConsumeError::PartitionStopped`] for the first partition stopped by a handler failure
    /// under [`FailurePolicy::StopPartition`] (reported at shutdown; other partitions go on);
    /// [`ConsumeError::Broker`] when the consumer is misconfigured or fails fatally.
    pub async fn run<S>(self, handler: S, shutdown: impl Future<Output = ()>) -> Result<(), ConsumeError>
    where
        S: Service<KafkaMessage> + Clone + Send + 'static,
        S::Future: Send,
        S::Error: Into<BoxError> + Send,
    {
        let max_batch = 1;
        self.drive(One(handler), max_batch, shutdown).await
    }

    /// Like [`run`](Self::run), handing the handler up to
    /// [`max_batch_size`](Self::max_batch_size) messages of one partition at a time (whatever is
    /// buffered, never waiting to fill a batch). A batch is committed as a whole after the
    /// handler returned `Ok`; on failure it is stopped or redelivered as a whole.
    ///
    /// # Errors
    ///
    /// As for [`run`](Self::run); `offset` in [`ConsumeError::PartitionStopped`] is the first
    /// offset of the failed batch.
    pub async fn run_batch<S>(
        self,
        handler: S,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ConsumeError>
    where
        S: Service<Vec<KafkaMessage>> + Clone + Send + 'static,
        S::Future: Send,
        S::Error: Into<BoxError> + Send,
    {
        let max_batch = self.max_batch;
        self.drive(Batch(handler), max_batch, shutdown).await
    }

    async fn drive<H>(
        self,
        handler: H,
        max_batch: usize,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ConsumeError>
    where
        H: Handle + Clone,
    {
        // Refuses a consumer that would commit what the handler has not processed.
        if let Err(KafkaError::StoreOffset(RDKafkaErrorCode::InvalidArgument)) =
            self.consumer.store_offsets(&TopicPartitionList::new())
        {
            return Err(ConsumeError::Broker(
                "the consumer must be created with enable.auto.offset.store=false".into(),
            ));
        }
        let consumer = Arc::clone(&self.consumer);
        let context = Arc::clone(consumer.context());
        let (control_tx, mut control_rx) = mpsc::unbounded_channel();
        let mut driver = Driver {
            settings: Arc::clone(context.settings()),
            metrics: context.metrics().clone(),
            consumer: Arc::clone(&consumer),
            handler,
            failure: self.failure,
            max_batch,
            max_buffered: self.max_buffered,
            permits: Arc::new(Semaphore::new(self.max_concurrency)),
            control: control_tx,
            topics: HashMap::new(),
            tasks: HashMap::new(),
            retiring: HashMap::new(),
            workers: JoinSet::new(),
            first_failure: None,
            fatal: None,
            empty_headers: Arc::new(HeaderList::new()),
        };
        let mut commit_tick = tokio::time::interval(self.commit_interval);
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);

        while driver.fatal.is_none() {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                Some(done) = driver.workers.join_next_with_id() => driver.worker_done(done),
                Some((topic, partition)) = control_rx.recv() => driver.resume(&topic, partition),
                () = context.rebalanced() => driver.apply_rebalances(&context),
                _ = commit_tick.tick() => commit(&consumer, CommitMode::Async),
                received = consumer.recv() => {
                    // Revocations queued while this message was fetched come first.
                    driver.apply_rebalances(&context);
                    match received {
                        Ok(message) => driver.route(&message),
                        Err(error) => driver.broker_error(error),
                    }
                }
            }
        }

        driver.stop_all();
        while let Some(done) = driver.workers.join_next_with_id().await {
            driver.worker_done(done);
        }
        commit(&consumer, CommitMode::Sync);
        match driver.fatal.or(driver.first_failure) {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

fn commit<C: ConsumerContext + 'static>(
    consumer: &StreamConsumer<EventscopeContext<C>>,
    mode: CommitMode,
) {
    match consumer.commit_consumer_state(mode) {
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(error) => tracing::warn!(%error, ?mode, "kafka commit failed"),
    }
}

/// Where a partition's worker stores the offsets of processed messages.
trait StoreOffset: Send + Sync {
    /// Stores `next`, the offset the partition resumes at.
    fn store_next(&self, topic: &str, partition: i32, next: i64) -> Result<(), KafkaError>;
}

impl<C: ConsumerContext + 'static> StoreOffset for StreamConsumer<EventscopeContext<C>> {
    fn store_next(&self, topic: &str, partition: i32, next: i64) -> Result<(), KafkaError> {
        let mut list = TopicPartitionList::with_capacity(1);
        list.add_partition_offset(topic, partition, Offset::Offset(next))?;
        self.store_offsets(&list)
    }
}

/// The dispatcher's state: one worker task per partition with messages.
struct Driver<H> {
    settings: Arc<Settings>,
    metrics: Metrics,
    consumer: Arc<dyn PartitionControl>,
    handler: H,
    failure: FailurePolicy,
    max_batch: usize,
    max_buffered: usize,
    permits: Arc<Semaphore>,
    control: mpsc::UnboundedSender<(Arc<str>, i32)>,
    topics: HashMap<Arc<str>, HashMap<i32, Slot>>,
    tasks: HashMap<Id, (Arc<str>, i32)>,
    /// Workers of revoked partitions still finishing a message; a new worker for the same
    /// partition waits for them, so order holds across a revoke and re-assign.
    retiring: HashMap<(Arc<str>, i32), oneshot::Receiver<()>>,
    workers: JoinSet<Result<(), ConsumeError>>,
    first_failure: Option<ConsumeError>,
    fatal: Option<ConsumeError>,
    empty_headers: Arc<HeaderList>,
}

/// What the dispatcher needs from the consumer besides receiving.
trait PartitionControl: StoreOffset {
    fn pause_partition(&self, topic: &str, partition: i32);
    fn resume_partition(&self, topic: &str, partition: i32);
    fn assigned(&self, topic: &str, partition: i32) -> bool;
}

impl<C: ConsumerContext + 'static> PartitionControl for StreamConsumer<EventscopeContext<C>> {
    fn pause_partition(&self, topic: &str, partition: i32) {
        let mut list = TopicPartitionList::with_capacity(1);
        list.add_partition(topic, partition);
        if let Err(error) = self.pause(&list) {
            tracing::warn!(%error, topic, partition, "pausing partition failed");
        }
    }

    fn resume_partition(&self, topic: &str, partition: i32) {
        let mut list = TopicPartitionList::with_capacity(1);
        list.add_partition(topic, partition);
        if let Err(error) = self.resume(&list) {
            tracing::warn!(%error, topic, partition, "resuming partition failed");
        }
    }

    fn assigned(&self, topic: &str, partition: i32) -> bool {
        self.assignment()
            .map(|list| list.find_partition(topic, partition).is_some())
            .unwrap_or(false)
    }
}

/// A partition as the dispatcher sees it.
struct Slot {
    state: SlotState,
    paused: bool,
}

enum SlotState {
    Running {
        task: Id,
        tx: mpsc::UnboundedSender<KafkaMessage>,
        buffered: Arc<AtomicUsize>,
        stop: watch::Sender<bool>,
        done: oneshot::Receiver<()>,
    },
    /// The handler failed here under `StopPartition`: paused, and nothing more is handed out.
    Stopped,
}

impl<H: Handle + Clone> Driver<H> {
    fn route(&mut self, message: &BorrowedMessage<'_>) {
        let (topic, partition) = (message.topic(), message.partition());
        let topic: Arc<str> = match self.topics.get_key_value(topic) {
            Some((name, _)) => Arc::clone(name),
            None => {
                let name: Arc<str> = Arc::from(topic);
                self.topics.insert(Arc::clone(&name), HashMap::new());
                name
            }
        };
        let owned = self.detach(message, &topic);
        let slot = match self.topics.get_mut(&topic).and_then(|p| p.get_mut(&partition)) {
            Some(slot) => slot,
            None => self.spawn(&topic, partition),
        };
        let SlotState::Running { tx, buffered, .. } = &slot.state else {
            // Fetched before the pause took effect: left uncommitted, like everything after
            // the failed offset.
            return;
        };
        let waiting = buffered.fetch_add(1, Ordering::AcqRel) + 1;
        if tx.send(owned).is_err() {
            // The worker has ended (its outcome is on its way); the message stays uncommitted.
            return;
        }
        if waiting >= self.max_buffered && !slot.paused {
            slot.paused = true;
            self.consumer.pause_partition(&topic, partition);
        }
    }

    fn detach(&self, message: &BorrowedMessage<'_>, topic: &Arc<str>) -> KafkaMessage {
        let headers = match message.headers() {
            Some(headers) => {
                let (list, skipped) = read_headers(headers);
                if skipped > 0 {
                    tracing::warn!(
                        topic = %topic, partition = message.partition(), offset = message.offset(),
                        skipped, "skipped Kafka headers whose names are not UTF-8"
                    );
                }
                Arc::new(list)
            }
            None => Arc::clone(&self.empty_headers),
        };
        KafkaMessage {
            topic: Arc::clone(topic),
            partition: message.partition(),
            offset: message.offset(),
            group: Arc::clone(&self.settings.group),
            key: message.key().map(Arc::from),
            payload: message.payload().map(Arc::from),
            headers,
            timestamp: system_time_from_millis(message.timestamp().to_millis()),
            server: self.settings.server.clone(),
        }
    }

    fn spawn(&mut self, topic: &Arc<str>, partition: i32) -> &mut Slot {
        let (tx, rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = watch::channel(false);
        let (done_tx, done_rx) = oneshot::channel();
        let buffered = Arc::new(AtomicUsize::new(0));
        let worker = Worker {
            topic: Arc::clone(topic),
            partition,
            group: Arc::clone(&self.settings.group),
            rx,
            buffered: Arc::clone(&buffered),
            resume_at: self.max_buffered / 2,
            control: self.control.clone(),
            stop: stop_rx,
            permits: Arc::clone(&self.permits),
            failure: self.failure,
            store: Arc::clone(&self.consumer),
            metrics: self.metrics.clone(),
            max_batch: self.max_batch,
            predecessor: self.retiring.remove(&(Arc::clone(topic), partition)),
            _done: done_tx,
        };
        let task = self
            .workers
            .spawn(worker.run(self.handler.clone()))
            .id();
        self.tasks.insert(task, (Arc::clone(topic), partition));
        let slot = Slot {
            state: SlotState::Running {
                task,
                tx,
                buffered,
                stop: stop_tx,
                done: done_rx,
            },
            paused: false,
        };
        let partitions = self.topics.entry(Arc::clone(topic)).or_default();
        match partitions.entry(partition) {
            Entry::Occupied(mut e) => {
                e.insert(slot);
                e.into_mut()
            }
            Entry::Vacant(e) => e.insert(slot),
        }
    }

    fn resume(&mut self, topic: &str, partition: i32) {
        let Some(slot) = self.topics.get_mut(topic).and_then(|p| p.get_mut(&partition)) else {
            return;
        };
        if slot.paused && matches!(slot.state, SlotState::Running { .. }) {
            slot.paused = false;
            self.consumer.resume_partition(topic, partition);
        }
    }

    fn apply_rebalances(&mut self, context: &EventscopeContext<impl Sized>) {
        for event in context.take_rebalances() {
            match event {
                RebalanceEvent::Revoked(partitions) => {
                    for (topic, partition) in partitions {
                        self.retire(&topic, partition);
                    }
                }
                RebalanceEvent::Assigned(partitions) => {
                    for (topic, partition) in partitions {
                        let stopped = self
                            .topics
                            .get(topic.as_str())
                            .and_then(|p| p.get(&partition))
                            .is_some_and(|s| matches!(s.state, SlotState::Stopped));
                        // librdkafka may keep a partition's pause across reassignment.
                        if stopped {
                            self.consumer.pause_partition(&topic, partition);
                        } else {
                            self.consumer.resume_partition(&topic, partition);
                        }
                    }
                }
            }
        }
    }

    /// A revoked partition's worker finishes its current call and drops what is buffered.
    fn retire(&mut self, topic: &str, partition: i32) {
        let Some((name, partitions)) = self.topics.get_key_value_mut_compat(topic) else {
            return;
        };
        let name = Arc::clone(name);
        let Some(slot) = partitions.get(&partition) else {
            return;
        };
        if matches!(slot.state, SlotState::Stopped) {
            return;
        }
        if let Some(Slot {
            state: SlotState::Running { stop, done, .. },
            ..
        }) = partitions.remove(&partition)
        {
            let _ = stop.send(true);
            self.retiring.insert((name, partition), done);
        }
    }

    fn stop_all(&mut self) {
        for partitions in self.topics.values_mut() {
            for slot in partitions.values_mut() {
                if let SlotState::Running { stop, .. } = &slot.state {
                    let _ = stop.send(true);
                }
            }
        }
    }

    fn worker_done(&mut self, done: Result<(Id, Result<(), ConsumeError>), JoinError>) {
        let (task, outcome) = match done {
            Ok((task, outcome)) => (task, outcome),
            Err(join) => {
                // A panicking handler must not take the consumer down silently.
                tracing::error!(error = %join, "kafka partition task failed");
                let task = join.id();
                self.stop_partition(task);
                self.first_failure
                    .get_or_insert(ConsumeError::Broker(Box::new(join)));
                return;
            }
        };
        match outcome {
            Ok(()) => {
                let Some((topic, partition)) = self.tasks.remove(&task) else {
                    return;
                };
                let current = self
                    .topics
                    .get(&topic)
                    .and_then(|p| p.get(&partition))
                    .is_some_and(|s| matches!(&s.state, SlotState::Running { task: t, .. } if *t == task));
                if current {
                    if let Some(p) = self.topics.get_mut(&topic) {
                        p.remove(&partition);
                    }
                } else if !self.consumer.assigned(&topic, partition) {
                    // A revoked partition's last message may have re-created its series.
                    self.metrics.remove_partition(
                        KAFKA,
                        &topic,
                        &self.settings.group,
                        Some(partition),
                    );
                }
            }
            Err(error @ ConsumeError::PartitionStopped { .. }) => {
                tracing::error!(%error, "kafka partition stopped");
                self.stop_partition(task);
                self.first_failure.get_or_insert(error);
            }
            Err(error) => {
                tracing::error!(%error, "kafka consumer failed");
                self.tasks.remove(&task);
                self.fatal.get_or_insert(error);
            }
        }
    }

    /// Pauses the partition of `task` for good, unless it was revoked meanwhile.
    fn stop_partition(&mut self, task: Id) {
        let Some((topic, partition)) = self.tasks.remove(&task) else {
            return;
        };
        let Some(slot) = self.topics.get_mut(&topic).and_then(|p| p.get_mut(&partition)) else {
            return;
        };
        if matches!(&slot.state, SlotState::Running { task: t, .. } if *t == task) {
            slot.state = SlotState::Stopped;
            slot.paused = true;
            self.consumer.pause_partition(&topic, partition);
        }
    }

    fn broker_error(&mut self, error: KafkaError) {
        match error {
            KafkaError::MessageConsumptionFatal(_) => {
                tracing::error!(%error, "kafka consumer failed fatally");
                self.fatal.get_or_insert(ConsumeError::Broker(Box::new(error)));
            }
            error => tracing::warn!(%error, "kafka consumer error"),
        }
    }
}

/// `HashMap::get_key_value` plus mutable access to the value, by `&str`.
trait GetKeyValueMut {
    fn get_key_value_mut_compat(
        &mut self,
        topic: &str,
    ) -> Option<(&Arc<str>, &mut HashMap<i32, Slot>)>;
}

impl GetKeyValueMut for HashMap<Arc<str>, HashMap<i32, Slot>> {
    fn get_key_value_mut_compat(
        &mut self,
        topic: &str,
    ) -> Option<(&Arc<str>, &mut HashMap<i32, Slot>)> {
        self.iter_mut().find(|(name, _)| &***name == topic)
    }
}

/// A handler call failed.
struct Failure {
    error_type: Cow<'static, str>,
    error: BoxError,
}

impl Failure {
    fn new<E: Into<BoxError>>(error: E) -> Self {
        Self {
            error_type: TypeNameClassifier.classify(&error),
            error: error.into(),
        }
    }
}

/// How a worker hands a batch to the user's service: one by one, or as a `Vec`.
trait Handle: Send + 'static {
    /// Handles `batch` (exactly one message for single-message handlers).
    fn handle(
        &mut self,
        batch: Vec<KafkaMessage>,
    ) -> impl Future<Output = Result<(), Failure>> + Send;
}

#[derive(Clone)]
struct One<S>(S);

impl<S> Handle for One<S>
where
    S: Service<KafkaMessage> + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError> + Send,
{
    async fn handle(&mut self, batch: Vec<KafkaMessage>) -> Result<(), Failure> {
        for message in batch {
            let ready = self.0.ready().await.map_err(Failure::new)?;
            ready.call(message).await.map_err(Failure::new)?;
        }
        Ok(())
    }
}

#[derive(Clone)]
struct Batch<S>(S);

impl<S> Handle for Batch<S>
where
    S: Service<Vec<KafkaMessage>> + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError> + Send,
{
    async fn handle(&mut self, batch: Vec<KafkaMessage>) -> Result<(), Failure> {
        let ready = self.0.ready().await.map_err(Failure::new)?;
        ready.call(batch).await.map_err(Failure::new)?;
        Ok(())
    }
}

/// Consumes one partition's messages, in order.
struct Worker {
    topic: Arc<str>,
    partition: i32,
    group: Arc<str>,
    rx: mpsc::UnboundedReceiver<KafkaMessage>,
    buffered: Arc<AtomicUsize>,
    resume_at: usize,
    control: mpsc::UnboundedSender<(Arc<str>, i32)>,
    stop: watch::Receiver<bool>,
    permits: Arc<Semaphore>,
    failure: FailurePolicy,
    store: Arc<dyn PartitionControl>,
    metrics: Metrics,
    max_batch: usize,
    predecessor: Option<oneshot::Receiver<()>>,
    /// Dropped when the worker ends, which releases a successor waiting on `predecessor`.
    _done: oneshot::Sender<()>,
}

impl Worker {
    async fn run<H: Handle>(mut self, mut handler: H) -> Result<(), ConsumeError> {
        if let Some(predecessor) = self.predecessor.take() {
            tokio::select! {
                _ = predecessor => {}
                _ = self.stop.wait_for(|stop| *stop) => return Ok(()),
            }
        }
        loop {
            let first = tokio::select! {
                biased;
                _ = self.stop.wait_for(|stop| *stop) => return Ok(()),
                message = self.rx.recv() => match message {
                    Some(message) => message,
                    None => return Ok(()),
                },
            };
            let mut batch = Vec::with_capacity(self.max_batch.min(64));
            batch.push(first);
            while batch.len() < self.max_batch {
                match self.rx.try_recv() {
                    Ok(message) => batch.push(message),
                    Err(_) => break,
                }
            }
            self.took(batch.len());
            if !self.deliver(&mut handler, batch).await? {
                return Ok(());
            }
        }
    }

    /// Counts messages out of the buffer; asks for the partition to be resumed when the buffer
    /// drains to `resume_at` (the dispatcher ignores this when it had not paused it).
    fn took(&self, n: usize) {
        let before = self.buffered.fetch_sub(n, Ordering::AcqRel);
        let after = before.saturating_sub(n);
        if before > self.resume_at && after <= self.resume_at {
            let _ = self.control.send((Arc::clone(&self.topic), self.partition));
        }
    }

    /// Hands `batch` to the handler per the failure policy; `Ok(false)` when asked to stop
    /// before it succeeded.
    async fn deliver<H: Handle>(
        &mut self,
        handler: &mut H,
        mut batch: Vec<KafkaMessage>,
    ) -> Result<bool, ConsumeError> {
        let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
            return Ok(true);
        };
        let (first, last) = (first.offset, last.offset);
        loop {
            if *self.stop.borrow() {
                return Ok(false);
            }
            let attempt = match self.failure {
                FailurePolicy::Redeliver { .. } => batch.clone(),
                FailurePolicy::StopPartition => std::mem::take(&mut batch),
            };
            let result = {
                let _permit = self.permits.acquire().await;
                handler.handle(attempt).await
            };
            let failure = match result {
                Ok(()) => {
                    self.store(last + 1)?;
                    return Ok(true);
                }
                Err(failure) => failure,
            };
            match self.failure {
                FailurePolicy::StopPartition => {
                    return Err(ConsumeError::PartitionStopped {
                        destination: self.topic.to_string(),
                        partition: self.partition,
                        offset: first,
                        source: failure.error,
                    })
                }
                FailurePolicy::Redeliver { backoff } => {
                    self.metrics
                        .record_retry(KAFKA, &self.topic, &self.group, &failure.error_type);
                    tracing::debug!(
                        topic = %self.topic, partition = self.partition, offset = first,
                        error = %failure.error, "redelivering"
                    );
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        _ = self.stop.wait_for(|stop| *stop) => return Ok(false),
                    }
                }
            }
        }
    }

    fn store(&self, next: i64) -> Result<(), ConsumeError> {
        match self.store.store_next(&self.topic, self.partition, next) {
            Ok(()) => Ok(()),
            Err(KafkaError::StoreOffset(RDKafkaErrorCode::InvalidArgument)) => {
                Err(ConsumeError::Broker(
                    "the consumer must be created with enable.auto.offset.store=false".into(),
                ))
            }
            Err(error) => {
                // Typically the partition was revoked meanwhile: its next owner redelivers.
                tracing::debug!(
                    %error, topic = %self.topic, partition = self.partition, next,
                    "offset not stored"
                );
                Ok(())
            }
        }
    }
}
