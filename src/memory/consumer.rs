use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::broker::MemoryBroker;
use super::lag::report_lag;
use super::log::Topic;
use super::record::MemoryMessage;
use crate::classify::Classifier;
use crate::consume::{
    Adapter, ConsumeError, Consumer, Event, Lane, Opening, Ordered, OrderedSettler, OrderedSource,
    Positioned, Reporter,
};
use crate::message::system::MEMORY;
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
}

#[cfg(feature = "testing")]
impl MemorySubscription {
    /// The broker consumed from (the test kit reads its committed offsets).
    pub(crate) fn broker(&self) -> &MemoryBroker {
        &self.broker
    }

    /// The topics subscribed to.
    pub(crate) fn topics(&self) -> &[String] {
        &self.topics
    }
}

impl Adapter for MemorySubscription {
    type Message = MemoryMessage;
    type Mode = Ordered<MemorySource, MemorySettler>;

    fn system(&self) -> &'static str {
        MEMORY
    }

    fn group(&self) -> &str {
        &self.group
    }

    /// Joins the group.
    async fn open(self, opening: Opening) -> Result<Self::Mode, ConsumeError> {
        let (member, generation) = self.broker.join(&self.group, &self.topics);
        // In process: connected for as long as the consumer runs.
        opening.reporter().connected(true);
        let source = MemorySource {
            broker: self.broker.clone(),
            group: Arc::clone(&self.group),
            member,
            generation,
            lanes: HashMap::new(),
            pending: VecDeque::new(),
            reporter: opening.reporter().clone(),
            lag_interval: self.lag_interval,
            next_lag: Instant::now(),
            joined: false,
        };
        let settler = MemorySettler {
            broker: self.broker,
            group: self.group,
        };
        Ok(Ordered { source, settler })
    }
}

impl Positioned for MemoryMessage {
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
    /// Records skipped over since the last warning, and when that was (one warning per lane
    /// per [`DROP_WARNING_INTERVAL`]; the dropped counter has every record).
    unwarned: i64,
    warned_at: Option<Instant>,
}

/// At most one "records dropped" warning per lane in this interval.
const DROP_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// The partitions a member owns, read in turn.
pub struct MemorySource {
    broker: MemoryBroker,
    group: Arc<str>,
    member: u64,
    generation: watch::Receiver<u64>,
    lanes: HashMap<Lane, Fetch>,
    pending: VecDeque<Event<MemoryMessage>>,
    reporter: Reporter,
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
                    unwarned: 0,
                    warned_at: None,
                },
            );
            assigned.push(lane);
        }
        tracing::debug!(group = %self.group, member = self.member, partitions = self.lanes.len(), "memory consumer assigned");
        if !revoked.is_empty() {
            self.pending.push_back(Event::Revoked(revoked));
        }
        self.pending.push_back(Event::Assigned(assigned));
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
                    fetch.unwarned += first.offset - fetch.position;
                    let due = fetch
                        .warned_at
                        .is_none_or(|at| at.elapsed() >= DROP_WARNING_INTERVAL);
                    if due {
                        tracing::warn!(
                            topic = %lane.topic, partition = lane.partition, group = %self.group,
                            skipped = fetch.unwarned, next = first.offset,
                            "records dropped by retention before they were consumed"
                        );
                        fetch.unwarned = 0;
                        fetch.warned_at = Some(Instant::now());
                    }
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
        loop {
            if let Some(event) = self.pending.pop_front() {
                return event;
            }
            if Instant::now() >= self.next_lag {
                let lanes = self.lanes.iter().map(|(l, f)| (&*f.topic, l.partition));
                report_lag(&self.broker, &self.reporter, lanes);
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
        // Leaving revokes every partition; the core removed their series as it returned.
        self.broker.leave(&self.group, self.member);
    }
}

impl fmt::Debug for MemorySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemorySource")
            .field("group", &self.group)
            .field("member", &self.member)
            .finish_non_exhaustive()
    }
}

/// Commits a group's offsets in the broker.
#[derive(Debug)]
pub struct MemorySettler {
    broker: MemoryBroker,
    group: Arc<str>,
}

impl OrderedSettler for MemorySettler {
    fn commit(&self, done: &[(Lane, i64)], _last: bool) -> Result<(), BoxError> {
        for (lane, next) in done {
            self.broker
                .commit(&self.group, &lane.topic, lane.partition, *next);
        }
        Ok(())
    }
}
