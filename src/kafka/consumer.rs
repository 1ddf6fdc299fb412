use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use rdkafka::consumer::{
    CommitMode, Consumer, ConsumerContext, DefaultConsumerContext, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::TopicPartitionList;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::task::{Id, JoinError, JoinSet};
use tower::ServiceExt;
use tower_service::Service;

use super::carrier::read_headers;
use super::context::{EventscopeContext, Progress, RebalanceEvent, Settings};
use super::record::{system_time_from_millis, Data, KafkaMessage, Origin};
use crate::classify::{ClassifyError, TypeNameClassifier};
use crate::driver::{BoxError, ConsumeError, ErrorClassifier, FailurePolicy};
use crate::message::system::KAFKA;
use crate::metrics::Metrics;
use tracing::instrument::WithSubscriber;

/// Drives a handler with the messages of your `rdkafka` [`StreamConsumer`]; see the
/// [module docs](super).
///
/// The consumer must be created with an [`EventscopeContext`] and with
/// `enable.auto.offset.store=false` ([`run`](Self::run) refuses to start otherwise): a
/// message's offset is stored only after the handler returned `Ok`, and stored offsets are
/// committed every [`commit_interval`](Self::commit_interval), before partitions are revoked
/// and at shutdown. Subscribe (or assign) before or after building the driver, as with any
/// consumer; a partition that is revoked finishes its running handler call and its buffered
/// messages are left to the next owner.
///
/// Messages of one partition are handled in order, one batch at a time; partitions proceed
/// independently, at most [`max_concurrency`](Self::max_concurrency) handler calls at once. A
/// partition with [`max_buffered`](Self::max_buffered) messages waiting is paused in
/// librdkafka until its handler has worked through half of them, so memory stays bounded and a
/// slow partition does not hold the others up.
pub struct KafkaConsumer<C: ConsumerContext + 'static = DefaultConsumerContext> {
    consumer: Arc<StreamConsumer<EventscopeContext<C>>>,
    max_concurrency: usize,
    failure: FailurePolicy,
    commit_interval: Duration,
    max_buffered: usize,
    max_batch: usize,
    classify: Option<ErrorClassifier>,
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
            max_buffered: 2000,
            max_batch: 100,
            classify: None,
        }
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

    /// Messages buffered per partition before it is paused (default 2000). Pausing discards
    /// what librdkafka prefetched for the partition, so it is meant for handlers that really
    /// fall behind, not as flow control for fast ones.
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
    pub async fn run<S>(
        self,
        handler: S,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ConsumeError>
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
            progress: Arc::clone(context.progress()),
            consumer: Arc::clone(&consumer) as Arc<dyn PartitionControl>,
            handler,
            failure: self.failure,
            classify: self.classify.clone(),
            max_batch,
            max_buffered: self.max_buffered,
            permits: Arc::new(Semaphore::new(self.max_concurrency)),
            control: control_tx,
            partitions: Partitions::default(),
            tasks: HashMap::new(),
            retiring: HashMap::new(),
            workers: JoinSet::new(),
            first_failure: None,
            fatal: None,
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
                    driver.receive(&context, received).await;
                    // Take what librdkafka already has without a round through `select!`.
                    let mut stream = consumer.stream();
                    for _ in 1..DRAIN {
                        match stream.next().now_or_never() {
                            Some(Some(received)) => driver.receive(&context, received).await,
                            _ => break,
                        }
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

/// Messages taken from librdkafka per wake-up of the dispatcher, at most.
const DRAIN: usize = 64;

/// Room reserved for headers when a message is copied out of librdkafka (trace context and
/// ids take about 200 bytes).
const HEADER_ROOM: usize = 256;

/// Scheduler turns a full partition buffer gets to drain before the partition is paused.
const RELIEVE_TURNS: usize = 16;

/// Stores the progress of every partition, then commits the stored offsets.
fn commit<C: ConsumerContext + 'static>(
    consumer: &StreamConsumer<EventscopeContext<C>>,
    mode: CommitMode,
) {
    if let Err(error) = consumer.context().progress().store(consumer) {
        tracing::warn!(%error, "storing offsets failed");
    }
    match consumer.commit_consumer_state(mode) {
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(error) => tracing::warn!(%error, ?mode, "kafka commit failed"),
    }
}

/// What the dispatcher needs from the consumer besides receiving.
trait PartitionControl: Send + Sync {
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

/// The dispatcher's state: one worker task per partition with messages.
struct Driver<H> {
    settings: Arc<Settings>,
    metrics: Metrics,
    progress: Arc<Progress>,
    consumer: Arc<dyn PartitionControl>,
    handler: H,
    failure: FailurePolicy,
    classify: Option<ErrorClassifier>,
    max_batch: usize,
    max_buffered: usize,
    permits: Arc<Semaphore>,
    control: mpsc::UnboundedSender<(Arc<str>, i32)>,
    partitions: Partitions,
    tasks: HashMap<Id, (Arc<str>, i32)>,
    /// Workers of revoked partitions still finishing a message; a new worker for the same
    /// partition waits for them, so order holds across a revoke and re-assign.
    retiring: HashMap<(Arc<str>, i32), oneshot::Receiver<()>>,
    workers: JoinSet<Result<(), ConsumeError>>,
    first_failure: Option<ConsumeError>,
    fatal: Option<ConsumeError>,
}

/// The partitions with a worker, by topic (a consumer reads few) and partition number (dense
/// from 0), so routing a message costs no hashing.
#[derive(Default)]
struct Partitions {
    topics: Vec<(Arc<str>, Vec<Option<Slot>>)>,
}

impl Partitions {
    fn topic(&mut self, name: &str) -> &Arc<str> {
        let index = match self.topics.iter().position(|(t, _)| &**t == name) {
            Some(index) => index,
            None => {
                self.topics.push((Arc::from(name), Vec::new()));
                self.topics.len() - 1
            }
        };
        &self.topics[index].0
    }

    fn get(&self, topic: &str, partition: i32) -> Option<&Slot> {
        let (_, slots) = self.topics.iter().find(|(t, _)| &**t == topic)?;
        slots.get(usize::try_from(partition).ok()?)?.as_ref()
    }

    fn get_mut(&mut self, topic: &str, partition: i32) -> Option<&mut Slot> {
        let (_, slots) = self.topics.iter_mut().find(|(t, _)| &**t == topic)?;
        slots.get_mut(usize::try_from(partition).ok()?)?.as_mut()
    }

    fn insert(&mut self, topic: &Arc<str>, partition: i32, slot: Slot) {
        let Ok(index) = usize::try_from(partition) else {
            return;
        };
        self.topic(topic);
        if let Some((_, slots)) = self.topics.iter_mut().find(|(t, _)| t == topic) {
            if slots.len() <= index {
                slots.resize_with(index + 1, || None);
            }
            slots[index] = Some(slot);
        }
    }

    fn remove(&mut self, topic: &str, partition: i32) -> Option<Slot> {
        let (_, slots) = self.topics.iter_mut().find(|(t, _)| &**t == topic)?;
        slots.get_mut(usize::try_from(partition).ok()?)?.take()
    }

    fn slots_mut(&mut self) -> impl Iterator<Item = &mut Slot> {
        self.topics
            .iter_mut()
            .flat_map(|(_, slots)| slots.iter_mut().flatten())
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
        origin: Arc<Origin>,
        buffered: Arc<AtomicUsize>,
        stop: watch::Sender<bool>,
        done: oneshot::Receiver<()>,
    },
    /// The handler failed here under `StopPartition`: paused, and nothing more is handed out.
    Stopped,
}

/// A partition whose buffer reached `max_buffered`.
struct Full {
    topic: Arc<str>,
    partition: i32,
    buffered: Arc<AtomicUsize>,
}

impl<H: Handle + Clone> Driver<H> {
    /// Handles one item of librdkafka's stream.
    async fn receive<C>(
        &mut self,
        context: &EventscopeContext<C>,
        received: Result<BorrowedMessage<'_>, KafkaError>,
    ) {
        // Revocations queued while this message was fetched come first.
        self.apply_rebalances(context);
        let full = match received {
            Ok(message) => self.route(&message),
            Err(error) => {
                self.broker_error(error);
                None
            }
        };
        if let Some(full) = full {
            self.relieve(full).await;
        }
        // librdkafka's stream never runs out of budget: let the partition workers run instead
        // of filling their buffers until the partitions get paused.
        tokio::task::coop::consume_budget().await;
    }

    /// Hands a message to its partition's worker; returns the partition when its buffer is
    /// full and it is not paused yet.
    fn route(&mut self, message: &BorrowedMessage<'_>) -> Option<Full> {
        let partition = message.partition();
        let topic = Arc::clone(self.partitions.topic(message.topic()));
        if self.partitions.get(&topic, partition).is_none() {
            self.spawn(&topic, partition);
        }
        let slot = self.partitions.get_mut(&topic, partition)?;
        let SlotState::Running {
            tx,
            buffered,
            origin,
            ..
        } = &slot.state
        else {
            // Fetched before the pause took effect: left uncommitted, like everything after
            // the failed offset.
            return None;
        };
        let waiting = buffered.fetch_add(1, Ordering::AcqRel) + 1;
        if tx
            .send(Self::detach(message, origin, &self.metrics))
            .is_err()
        {
            // The worker has ended (its outcome is on its way); the message stays uncommitted.
            return None;
        }
        (waiting >= self.max_buffered && !slot.paused).then(|| Full {
            topic,
            partition,
            buffered: Arc::clone(buffered),
        })
    }

    /// A full buffer first gets a few turns of the scheduler to drain: pausing discards what
    /// librdkafka prefetched for the partition and costs a fetch round trip on resume, so it
    /// is kept for handlers that really fall behind.
    async fn relieve(&mut self, full: Full) {
        for _ in 0..RELIEVE_TURNS {
            if full.buffered.load(Ordering::Acquire) < self.max_buffered {
                return;
            }
            tokio::task::yield_now().await;
        }
        if full.buffered.load(Ordering::Acquire) < self.max_buffered {
            return;
        }
        let Some(slot) = self.partitions.get_mut(&full.topic, full.partition) else {
            return;
        };
        if !slot.paused && matches!(slot.state, SlotState::Running { .. }) {
            slot.paused = true;
            self.consumer.pause_partition(&full.topic, full.partition);
        }
    }

    fn detach(
        message: &BorrowedMessage<'_>,
        origin: &Arc<Origin>,
        metrics: &Metrics,
    ) -> KafkaMessage {
        let (key, payload) = (message.key(), message.payload());
        let sizes = key.map_or(0, <[u8]>::len) + payload.map_or(0, <[u8]>::len);
        let mut data = Data {
            bytes: Vec::with_capacity(sizes + HEADER_ROOM),
            ..Data::default()
        };
        data.key = key.map(|key| data.push(key));
        data.payload = payload.map(|payload| data.push(payload));
        let skipped = read_headers(message, &mut data);
        metrics.record_unreadable_headers(KAFKA, skipped);
        KafkaMessage {
            origin: Arc::clone(origin),
            partition: message.partition(),
            offset: message.offset(),
            timestamp: system_time_from_millis(message.timestamp().to_millis()),
            data: Arc::new(data),
        }
    }

    fn spawn(&mut self, topic: &Arc<str>, partition: i32) {
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
            classify: self.classify.clone(),
            progress: self.progress.track(topic, partition),
            metrics: self.metrics.clone(),
            max_batch: self.max_batch,
            predecessor: self.retiring.remove(&(Arc::clone(topic), partition)),
            _done: done_tx,
        };
        // Workers report to the subscriber of the task that runs the consumer.
        let task = self
            .workers
            .spawn(worker.run(self.handler.clone()).with_current_subscriber())
            .id();
        self.tasks.insert(task, (Arc::clone(topic), partition));
        let slot = Slot {
            state: SlotState::Running {
                task,
                tx,
                origin: Arc::new(Origin {
                    topic: Arc::clone(topic),
                    group: Arc::clone(&self.settings.group),
                    server: self.settings.server.clone(),
                }),
                buffered,
                stop: stop_tx,
                done: done_rx,
            },
            paused: false,
        };
        self.partitions.insert(topic, partition, slot);
    }

    fn resume(&mut self, topic: &str, partition: i32) {
        let Some(slot) = self.partitions.get_mut(topic, partition) else {
            return;
        };
        if slot.paused && matches!(slot.state, SlotState::Running { .. }) {
            slot.paused = false;
            self.consumer.resume_partition(topic, partition);
        }
    }

    fn apply_rebalances<C>(&mut self, context: &EventscopeContext<C>) {
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
                            .partitions
                            .get(&topic, partition)
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
        if !matches!(
            self.partitions.get(topic, partition),
            Some(Slot {
                state: SlotState::Running { .. },
                ..
            })
        ) {
            return;
        }
        let name = Arc::clone(self.partitions.topic(topic));
        if let Some(Slot {
            state: SlotState::Running { stop, done, .. },
            ..
        }) = self.partitions.remove(topic, partition)
        {
            let _ = stop.send(true);
            self.retiring.insert((name, partition), done);
        }
    }

    fn stop_all(&mut self) {
        for slot in self.partitions.slots_mut() {
            if let SlotState::Running { stop, .. } = &slot.state {
                let _ = stop.send(true);
            }
        }
    }

    fn worker_done(&mut self, done: Result<(Id, Result<(), ConsumeError>), JoinError>) {
        let (task, outcome) = match done {
            Ok((task, outcome)) => (task, outcome),
            Err(join) => {
                // A panicking handler must not take the consumer down silently.
                tracing::error!(error = %join, "kafka partition task failed");
                self.stop_partition(join.id());
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
                let current = self.partitions.get(&topic, partition).is_some_and(
                    |s| matches!(&s.state, SlotState::Running { task: t, .. } if *t == task),
                );
                if current {
                    self.partitions.remove(&topic, partition);
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
        let Some(slot) = self.partitions.get_mut(&topic, partition) else {
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
                self.fatal
                    .get_or_insert(ConsumeError::Broker(Box::new(error)));
            }
            error => tracing::warn!(%error, "kafka consumer error"),
        }
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

/// What a worker hands to the handler at once.
#[derive(Clone)]
enum Work {
    One(KafkaMessage),
    Batch(Vec<KafkaMessage>),
}

impl Work {
    fn len(&self) -> usize {
        match self {
            Self::One(_) => 1,
            Self::Batch(batch) => batch.len(),
        }
    }

    /// First and last offset.
    fn offsets(&self) -> Option<(i64, i64)> {
        match self {
            Self::One(m) => Some((m.offset, m.offset)),
            Self::Batch(batch) => Some((batch.first()?.offset, batch.last()?.offset)),
        }
    }
}

/// How a worker hands work to the user's service: one message, or a `Vec` of them.
trait Handle: Send + 'static {
    fn handle(&mut self, work: Work) -> impl Future<Output = Result<(), Failure>> + Send;
}

#[derive(Clone)]
struct One<S>(S);

impl<S> Handle for One<S>
where
    S: Service<KafkaMessage> + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError> + Send,
{
    async fn handle(&mut self, work: Work) -> Result<(), Failure> {
        match work {
            Work::One(message) => self.call(message).await,
            Work::Batch(batch) => {
                for message in batch {
                    self.call(message).await?;
                }
                Ok(())
            }
        }
    }
}

impl<S> One<S>
where
    S: Service<KafkaMessage>,
    S::Error: Into<BoxError>,
{
    async fn call(&mut self, message: KafkaMessage) -> Result<(), Failure> {
        let ready = self.0.ready().await.map_err(Failure::new)?;
        ready.call(message).await.map_err(Failure::new)?;
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
    async fn handle(&mut self, work: Work) -> Result<(), Failure> {
        let batch = match work {
            Work::One(message) => vec![message],
            Work::Batch(batch) => batch,
        };
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
    classify: Option<ErrorClassifier>,
    progress: Arc<AtomicI64>,
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
            let first = match self.rx.try_recv() {
                Ok(message) => message,
                Err(mpsc::error::TryRecvError::Disconnected) => return Ok(()),
                Err(mpsc::error::TryRecvError::Empty) => tokio::select! {
                    biased;
                    _ = self.stop.wait_for(|stop| *stop) => return Ok(()),
                    message = self.rx.recv() => match message {
                        Some(message) => message,
                        None => return Ok(()),
                    },
                },
            };
            let work = if self.max_batch == 1 {
                Work::One(first)
            } else {
                let mut batch = Vec::with_capacity(self.max_batch.min(64));
                batch.push(first);
                while batch.len() < self.max_batch {
                    match self.rx.try_recv() {
                        Ok(message) => batch.push(message),
                        Err(_) => break,
                    }
                }
                Work::Batch(batch)
            };
            self.took(work.len());
            if !self.deliver(&mut handler, work).await? {
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

    /// Hands `work` to the handler per the failure policy; `Ok(false)` when asked to stop
    /// before it succeeded.
    async fn deliver<H: Handle>(
        &mut self,
        handler: &mut H,
        mut work: Work,
    ) -> Result<bool, ConsumeError> {
        let Some((first, last)) = work.offsets() else {
            return Ok(true);
        };
        loop {
            if *self.stop.borrow() {
                return Ok(false);
            }
            let attempt = match self.failure {
                FailurePolicy::Redeliver { .. } => work.clone(),
                FailurePolicy::StopPartition => {
                    std::mem::replace(&mut work, Work::Batch(Vec::new()))
                }
            };
            let result = {
                let _permit = self.permits.acquire().await;
                handler.handle(attempt).await
            };
            let failure = match result {
                Ok(()) => {
                    self.progress.store(last + 1, Ordering::Release);
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
                    let error_type = match &self.classify {
                        Some(classify) => classify(&failure.error),
                        None => failure.error_type.clone(),
                    };
                    self.metrics
                        .record_retry(KAFKA, &self.topic, &self.group, &error_type);
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
}
