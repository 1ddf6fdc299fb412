use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::broker::{MemoryBroker, Topic};
use super::lag::report_lag;
use super::record::MemoryMessage;
use crate::classify::Classifier;
use crate::consume::{
    ConsumeError, Consumer, Delivery, Event, Lane, OrderedSettler, OrderedSource,
};
use crate::message::system::MEMORY;
use crate::metrics::Metrics;
use crate::BoxError;

/// Records read from a partition per fetch, at most.
const FETCH_MAX: usize = 64;

/// A consumer in a group of the embedded broker, run by the [consumer core](crate::consume).
///
/// Each assigned partition is consumed in order; at most
/// [`max_concurrency`](Consumer::max_concurrency) handler calls run at once across partitions.
/// A message is committed once it and every earlier message of its partition are settled
/// (SPEC §7). When members join or leave the group the partitions are dealt again: a revoked
/// partition's running call finishes, its buffered messages go to the next owner, and its
/// series are removed.
pub type MemoryConsumer<C = Classifier> = Consumer<MemorySubscription, C>;

/// The embedded broker's part of a [`MemoryConsumer`]: the group and its topics.
pub struct MemorySubscription {
    broker: MemoryBroker,
    group: Arc<str>,
    topics: Vec<String>,
    lag_interval: Duration,
}

impl fmt::Debug for MemorySubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemorySubscription")
            .field("group", &self.group)
            .field("topics", &self.topics)
            .field("lag_interval", &self.lag_interval)
            .finish_non_exhaustive()
    }
}

impl MemoryConsumer {
    pub(crate) fn new(broker: MemoryBroker, group: String) -> Self {
        let mut options = crate::consume::Options::DEFAULT;
        // Commits cost nothing here; keep redelivery after a crash small.
        options.commit_interval = Duration::from_millis(10);
        options.max_buffered = 256;
        Consumer::with(
            MemorySubscription {
                broker,
                group: Arc::from(group),
                topics: Vec::new(),
                lag_interval: Duration::from_secs(1),
            },
            Metrics::new(),
            options,
        )
    }
}

impl<C> Consumer<MemorySubscription, C> {
    /// Adds topics to consume (created with the default partitions if missing).
    pub fn subscribe<I, T>(mut self, topics: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.adapter
            .topics
            .extend(topics.into_iter().map(Into::into));
        self
    }

    /// How often lag is reported (default 1 s).
    pub fn lag_interval(mut self, interval: Duration) -> Self {
        self.adapter.lag_interval = interval.max(Duration::from_millis(10));
        self
    }

    /// Reports into `metrics` (default: metrics in a registry of their own). Call it before
    /// [`process_layer`](Consumer::process_layer), which hands out the same metrics.
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    crate::consume::ordered_runs!(MemoryMessage);

    /// Joins the group.
    fn open(self) -> Result<(MemorySource, MemorySettler, crate::consume::Core, C), ConsumeError> {
        let Self {
            adapter,
            classifier,
            metrics,
            options,
            spans,
        } = self;
        let (member, generation) = adapter.broker.join(&adapter.group, &adapter.topics);
        let source = MemorySource {
            broker: adapter.broker.clone(),
            group: Arc::clone(&adapter.group),
            member,
            generation,
            lanes: HashMap::new(),
            pending: VecDeque::new(),
            metrics: metrics.clone(),
            lag_interval: adapter.lag_interval,
            next_lag: Instant::now(),
            joined: false,
        };
        let settler = MemorySettler {
            broker: adapter.broker,
            group: Arc::clone(&adapter.group),
        };
        let core = crate::consume::Core {
            metrics,
            system: MEMORY,
            group: adapter.group,
            options,
            spans,
        };
        Ok((source, settler, core, classifier))
    }
}

impl Delivery for MemoryMessage {
    fn lane_topic(&self) -> &Arc<str> {
        &self.topic
    }

    fn lane_partition(&self) -> i32 {
        self.partition
    }

    fn lane_offset(&self) -> i64 {
        self.offset
    }
}

/// Where a lane is read from.
struct Fetch {
    topic: Arc<Topic>,
    position: i64,
    paused: bool,
    high_watermark: watch::Receiver<i64>,
}

/// The partitions a member owns, read in turn.
struct MemorySource {
    broker: MemoryBroker,
    group: Arc<str>,
    member: u64,
    generation: watch::Receiver<u64>,
    lanes: HashMap<Lane, Fetch>,
    pending: VecDeque<Event<MemoryMessage>>,
    metrics: Metrics,
    lag_interval: Duration,
    next_lag: Instant,
    joined: bool,
}

impl MemorySource {
    /// Deals the partitions again: what is no longer ours is revoked, what is new assigned.
    fn rebalance(&mut self) {
        self.generation.borrow_and_update();
        let now = self.broker.assignment(&self.group, self.member);
        let owned: HashSet<Lane> = now
            .iter()
            .map(|(topic, partition)| Lane::new(Arc::clone(&topic.name), *partition))
            .collect();
        let revoked: Vec<Lane> = self
            .lanes
            .keys()
            .filter(|lane| !owned.contains(*lane))
            .cloned()
            .collect();
        for lane in &revoked {
            self.lanes.remove(lane);
            self.metrics
                .remove_partition(MEMORY, &lane.topic, &self.group, Some(lane.partition));
        }
        let mut assigned = Vec::new();
        for (topic, partition) in now {
            let lane = Lane::new(Arc::clone(&topic.name), partition);
            if self.lanes.contains_key(&lane) {
                continue;
            }
            let position = self
                .broker
                .committed(&self.group, &topic.name, partition)
                .unwrap_or_else(|| self.broker.log_start(&topic, partition));
            let high_watermark = self.broker.watch_partition(&topic, partition);
            self.lanes.insert(
                lane.clone(),
                Fetch {
                    topic,
                    position,
                    paused: false,
                    high_watermark,
                },
            );
            assigned.push(lane);
        }
        self.metrics.record_rebalance(MEMORY, &self.group);
        tracing::debug!(group = %self.group, member = self.member, partitions = self.lanes.len(), "memory consumer assigned");
        if !revoked.is_empty() {
            self.pending.push_back(Event::Revoked(revoked));
        }
        if !assigned.is_empty() {
            self.pending.push_back(Event::Assigned(assigned));
        }
    }

    /// Reads what the unpaused lanes have beyond their position.
    fn fetch(&mut self) {
        for (lane, fetch) in &mut self.lanes {
            if fetch.paused {
                continue;
            }
            let batch = self.broker.read(
                &fetch.topic,
                lane.partition,
                fetch.position,
                FETCH_MAX,
                Some(&self.group),
            );
            if let Some(first) = batch.first() {
                if first.offset > fetch.position {
                    tracing::warn!(
                        topic = %lane.topic, partition = lane.partition, from = fetch.position,
                        to = first.offset, "records dropped by retention before they were consumed"
                    );
                }
            }
            for message in batch {
                fetch.position = message.offset + 1;
                self.pending.push_back(Event::Message(message));
            }
        }
    }
}

impl OrderedSource for MemorySource {
    type Message = MemoryMessage;

    async fn next(&mut self) -> Event<MemoryMessage> {
        {
            loop {
                if let Some(event) = self.pending.pop_front() {
                    return event;
                }
                if Instant::now() >= self.next_lag {
                    let lanes = self.lanes.iter().map(|(l, f)| (&*f.topic, l.partition));
                    report_lag(&self.broker, &self.metrics, &self.group, lanes);
                    self.next_lag = Instant::now() + self.lag_interval;
                }
                if !self.joined || self.generation.has_changed().unwrap_or(false) {
                    self.joined = true;
                    self.rebalance();
                    continue;
                }
                self.fetch();
                if !self.pending.is_empty() {
                    continue;
                }
                let Self {
                    lanes,
                    generation,
                    next_lag,
                    ..
                } = &mut *self;
                let waits: Vec<Pin<Box<dyn Future<Output = ()> + Send + '_>>> = lanes
                    .values_mut()
                    .filter(|fetch| !fetch.paused)
                    .map(|fetch| {
                        let position = fetch.position;
                        let watch = &mut fetch.high_watermark;
                        Box::pin(async move {
                            let _ = watch.wait_for(|high| *high > position).await;
                        }) as Pin<Box<dyn Future<Output = ()> + Send + '_>>
                    })
                    .collect();
                let any_record = async move {
                    if waits.is_empty() {
                        std::future::pending::<()>().await;
                    }
                    futures_util::future::select_all(waits).await;
                };
                let regenerated = tokio::select! {
                    Ok(()) = generation.changed() => true,
                    () = any_record => false,
                    () = tokio::time::sleep_until(*next_lag) => false,
                };
                if regenerated {
                    // `changed` marked the generation seen: deal now.
                    self.rebalance();
                }
            }
        }
    }

    fn pause(&mut self, lane: &Lane) {
        if let Some(fetch) = self.lanes.get_mut(lane) {
            fetch.paused = true;
        }
    }

    fn resume(&mut self, lane: &Lane) {
        if let Some(fetch) = self.lanes.get_mut(lane) {
            fetch.paused = false;
        }
    }
}

impl Drop for MemorySource {
    fn drop(&mut self) {
        self.broker.leave(&self.group, self.member);
        // Leaving revokes every partition: their series go with them (SPEC §5).
        for lane in self.lanes.keys() {
            self.metrics
                .remove_partition(MEMORY, &lane.topic, &self.group, Some(lane.partition));
        }
    }
}

/// Commits a group's offsets in the broker.
struct MemorySettler {
    broker: MemoryBroker,
    group: Arc<str>,
}

impl OrderedSettler for MemorySettler {
    type Cursor = ();

    fn cursor(&self, _lane: &Lane) {}

    fn mark(&self, _cursor: &(), _next: i64) {}

    fn commit(&self, done: &[(Lane, i64)], _last: bool) -> Result<(), BoxError> {
        for (lane, next) in done {
            self.broker
                .commit(&self.group, &lane.topic, lane.partition, *next);
        }
        Ok(())
    }
}
