//! The embedded broker's public face: the broker handle, its builder, its overflow policy and
//! its errors. The partition logs and retention are in `log.rs`, the consumer groups in
//! `group.rs`.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::task::Waker;

use super::consumer::MemoryConsumer;
use super::group::Group;
use super::log::{Appended, Reader, Topic};
use super::publisher::MemoryPublisher;
use super::record::MemoryRecord;
use crate::metrics::Metrics;
use crate::sync::{Recover, RecoverRw};

const DEFAULT_PARTITIONS: i32 = 3;
const DEFAULT_RETENTION: usize = 100_000;

/// What a partition at its retention limit does with one more record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Overflow {
    /// The publish waits until every consumer group subscribed to the topic has committed past
    /// the partition's oldest record, which is then removed to make room (the default).
    ///
    /// Nothing a subscribed group has not consumed is ever removed. A subscribed group that
    /// never commits (stalled, or its partition stopped by a failure) keeps the publisher
    /// waiting for as long as it stays subscribed.
    #[default]
    Block,
    /// The oldest record is removed at once, whoever has not read it yet: publishing never
    /// waits. Every group that had not received a removed record counts it in
    /// `messaging_consumer_dropped_messages_total` (with
    /// [`metrics`](MemoryBrokerBuilder::metrics)), and its lag keeps counting it until it
    /// moves past.
    DropOldest,
}

/// Errors of the embedded broker.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MemoryError {
    /// The record named a partition the topic does not have.
    UnknownPartition {
        /// Topic.
        topic: String,
        /// The partition asked for.
        partition: i32,
    },
    /// The topic exists with another partition count.
    TopicExists {
        /// Topic.
        topic: String,
        /// Its partition count.
        partitions: i32,
    },
    /// A topic needs at least one partition.
    NoPartitions,
}

impl fmt::Display for MemoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownPartition { topic, partition } => {
                write!(f, "topic {topic} has no partition {partition}")
            }
            Self::TopicExists { topic, partitions } => {
                write!(
                    f,
                    "topic {topic} already exists with {partitions} partitions"
                )
            }
            Self::NoPartitions => f.write_str("a topic needs at least one partition"),
        }
    }
}

impl std::error::Error for MemoryError {}

/// The embedded broker; cheap to clone, every clone is the same broker.
#[derive(Clone)]
pub struct MemoryBroker {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(super) topics: RwLock<HashMap<String, Arc<Topic>>>,
    pub(super) groups: Mutex<HashMap<String, Group>>,
    pub(super) default_partitions: i32,
    pub(super) retention: usize,
    pub(super) overflow: Overflow,
    pub(super) metrics: Option<Metrics>,
    pub(super) next_member: AtomicU64,
}

impl fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let topics = self.inner.topics.read_locked();
        f.debug_struct("MemoryBroker")
            .field("topics", &topics.keys().collect::<Vec<_>>())
            .field("retention", &self.inner.retention)
            .field("overflow", &self.inner.overflow)
            .finish()
    }
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self::builder().build()
    }
}

/// Configures a [`MemoryBroker`].
#[derive(Debug, Clone)]
pub struct MemoryBrokerBuilder {
    default_partitions: i32,
    retention: usize,
    overflow: Overflow,
    metrics: Option<Metrics>,
}

impl MemoryBrokerBuilder {
    /// Partitions of topics created on first publish or subscribe (default 3).
    pub fn default_partitions(mut self, partitions: i32) -> Self {
        self.default_partitions = partitions.max(1);
        self
    }

    /// Records kept per partition (default 100 000); what happens beyond is the
    /// [`overflow`](Self::overflow) policy.
    pub fn retention(mut self, records: usize) -> Self {
        self.retention = records.max(1);
        self
    }

    /// What a publish to a partition holding `retention` records does (default
    /// [`Overflow::Block`]: it waits for the subscribed groups to consume).
    pub fn overflow(mut self, overflow: Overflow) -> Self {
        self.overflow = overflow;
        self
    }

    /// Counts records removed before a group received them in
    /// `messaging_consumer_dropped_messages_total`, per topic, partition and group.
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The broker.
    pub fn build(self) -> MemoryBroker {
        MemoryBroker {
            inner: Arc::new(Inner {
                topics: RwLock::default(),
                groups: Mutex::default(),
                default_partitions: self.default_partitions,
                retention: self.retention,
                overflow: self.overflow,
                metrics: self.metrics,
                next_member: AtomicU64::new(1),
            }),
        }
    }
}

impl MemoryBroker {
    /// A broker with 3 partitions per topic and 100 000 records retained per partition.
    pub fn new() -> Self {
        Self::default()
    }

    /// Configures partitions, retention, overflow and metrics.
    pub fn builder() -> MemoryBrokerBuilder {
        MemoryBrokerBuilder {
            default_partitions: DEFAULT_PARTITIONS,
            retention: DEFAULT_RETENTION,
            overflow: Overflow::default(),
            metrics: None,
        }
    }

    /// Creates `topic` with `partitions` partitions; succeeds if it already exists alike.
    ///
    /// # Errors
    ///
    /// When the topic exists with another partition count, or `partitions` < 1.
    pub fn create_topic(&self, topic: &str, partitions: i32) -> Result<(), MemoryError> {
        if partitions < 1 {
            return Err(MemoryError::NoPartitions);
        }
        let existing = self.topic_with(topic, partitions);
        if existing.partitions.len() as i32 != partitions {
            return Err(MemoryError::TopicExists {
                topic: topic.to_owned(),
                partitions: existing.partitions.len() as i32,
            });
        }
        Ok(())
    }

    /// A publisher service for this broker.
    pub fn publisher(&self) -> MemoryPublisher {
        MemoryPublisher::new(self.clone())
    }

    /// A consumer in `group`; add topics with [`MemoryConsumer::subscribe`].
    pub fn consumer(&self, group: impl Into<String>) -> MemoryConsumer {
        MemoryConsumer::new(self.clone(), group.into())
    }

    /// The next offset to be written to a partition, if the topic and partition exist.
    pub fn high_watermark(&self, topic: &str, partition: i32) -> Option<i64> {
        let topic = self.existing(topic)?;
        let slot = topic.partitions.get(usize::try_from(partition).ok()?)?;
        let high = *slot.high_watermark.borrow();
        Some(high)
    }

    /// The oldest offset a partition still holds, if the topic and partition exist.
    #[cfg(feature = "testing")]
    pub(crate) fn log_start_of(&self, topic: &str, partition: i32) -> Option<i64> {
        let topic = self.existing(topic)?;
        usize::try_from(partition)
            .ok()
            .filter(|p| *p < topic.partitions.len())?;
        Some(self.log_start(&topic, partition))
    }

    /// The offset `group` will read next from a partition, if it committed one.
    pub fn committed(&self, group: &str, topic: &str, partition: i32) -> Option<i64> {
        let topic = self.existing(topic)?;
        let slot = topic.partitions.get(usize::try_from(partition).ok()?)?;
        let log = slot.log.locked();
        log.readers.get(group)?.committed
    }

    /// Number of partitions of `topic`, if it exists.
    pub fn partitions(&self, topic: &str) -> Option<i32> {
        self.existing(topic).map(|t| t.partitions.len() as i32)
    }

    /// The first record `group` has not consumed on a partition: its committed offset, else
    /// where it began (the log start when it subscribed). Lag counts from here, so records
    /// removed before the group received them stay in its lag until it moves past them.
    pub(crate) fn position(&self, group: &str, topic: &str, partition: i32) -> Option<i64> {
        let topic = self.existing(topic)?;
        let slot = topic.partitions.get(usize::try_from(partition).ok()?)?;
        let log = slot.log.locked();
        log.readers.get(group).map(Reader::position)
    }

    /// Offers a record to its partition; the heart of [`MemoryPublisher`].
    ///
    /// A full partition under [`Overflow::Block`] gives the record back, and registers `waker`
    /// (checked and registered under the partition's lock, so no commit is missed).
    pub(crate) fn try_append(
        &self,
        record: MemoryRecord,
        waker: Option<&Waker>,
    ) -> Result<Appended, MemoryError> {
        match self.offer(record, waker)? {
            // A consumer dropped without leaving may be what holds the partition.
            Appended::Full(record) if self.leave_departed() => self.offer(record, waker),
            appended => Ok(appended),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::task::{Context, Poll, Wake};

    use tower_service::Service;

    use super::*;
    use crate::metrics::{label, name};

    fn record(topic: &str) -> MemoryRecord {
        MemoryRecord::new(topic, b"x".to_vec())
    }

    fn append(broker: &MemoryBroker, record: MemoryRecord) -> Result<(i32, i64), MemoryError> {
        match broker.try_append(record, None)? {
            Appended::Stored(d) => Ok((d.partition, d.offset)),
            Appended::Full(_) => panic!("partition full"),
        }
    }

    /// A waker that remembers it was woken.
    #[derive(Default)]
    struct Flag(AtomicBool);

    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    impl Flag {
        fn waker() -> (Arc<Self>, Waker) {
            let flag = Arc::new(Self::default());
            (Arc::clone(&flag), Waker::from(flag))
        }

        fn woken(&self) -> bool {
            self.0.swap(false, Ordering::SeqCst)
        }
    }

    fn dropped(metrics: &Metrics, group: &str) -> Option<u64> {
        let group = format!(r#"{}="{group}""#, label::GROUP);
        metrics
            .encode()
            .lines()
            .find(|l| l.starts_with(name::DROPPED_MESSAGES) && l.contains(&group))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    #[test]
    fn groups_not_subscribed_do_not_block_but_count_what_they_miss() {
        let metrics = Metrics::new();
        let broker = MemoryBroker::builder()
            .retention(10)
            .metrics(metrics.clone())
            .build();
        broker.create_topic("t", 1).unwrap();
        let topics = vec!["t".to_owned()];
        let (member, _) = broker.join("gone", &topics);
        broker.commit("gone", &Arc::from("t"), 0, 3);
        broker.leave("gone", member);
        // Committed offsets without ever subscribing: known, but holding nothing back.
        broker.commit("offline", &Arc::from("t"), 0, 0);

        let mut publisher = broker.publisher();
        let (_, waker) = Flag::waker();
        let mut cx = Context::from_waker(&waker);
        for i in 0..25 {
            assert!(publisher.poll_ready(&mut cx).is_ready());
            let mut delivery = publisher.call(record("t"));
            match Pin::new(&mut delivery).poll(&mut cx) {
                Poll::Ready(Ok(d)) => assert_eq!(d.offset, i),
                other => panic!("publish {i} did not complete: {other:?}"),
            }
        }
        let topic = broker.existing("t").unwrap();
        assert_eq!(broker.log_start(&topic, 0), 15);
        // Neither group blocked, and each counts what it will never see: offsets 3..15 for
        // the departed group, 0..15 for the one that never subscribed.
        assert_eq!(dropped(&metrics, "gone"), Some(12));
        assert_eq!(dropped(&metrics, "offline"), Some(15));
    }

    #[test]
    fn a_blocked_publisher_wakes_when_the_group_commits_or_leaves() {
        let broker = MemoryBroker::builder().retention(3).build();
        broker.create_topic("t", 1).unwrap();
        let topic: Arc<str> = Arc::from("t");
        // The receiver stands for a running consumer: dropping it would leave the group.
        let (member, _running) = broker.join("g", &["t".to_owned()]);
        let mut publisher = broker.publisher();
        let (ready_flag, ready_waker) = Flag::waker();
        let (future_flag, future_waker) = Flag::waker();
        let mut ready_cx = Context::from_waker(&ready_waker);
        let mut future_cx = Context::from_waker(&future_waker);
        for _ in 0..3 {
            assert!(publisher.poll_ready(&mut ready_cx).is_ready());
            let mut delivery = publisher.call(record("t"));
            assert!(Pin::new(&mut delivery).poll(&mut future_cx).is_ready());
        }

        // Full, and the group has consumed nothing: the fourth record waits, and so does the
        // service.
        assert!(publisher.poll_ready(&mut ready_cx).is_ready());
        let mut fourth = publisher.call(record("t"));
        assert!(Pin::new(&mut fourth).poll(&mut future_cx).is_pending());
        assert!(publisher.poll_ready(&mut ready_cx).is_pending());
        assert!(!ready_flag.woken() && !future_flag.woken());
        assert_eq!(broker.high_watermark("t", 0), Some(3));

        broker.commit("g", &topic, 0, 1);
        assert!(
            future_flag.woken(),
            "the record's future is woken by the commit"
        );
        assert!(
            ready_flag.woken(),
            "poll_ready's task is woken by the commit"
        );
        match Pin::new(&mut fourth).poll(&mut future_cx) {
            Poll::Ready(Ok(d)) => assert_eq!(d.offset, 3),
            other => panic!("not stored after the commit: {other:?}"),
        }
        assert!(publisher.poll_ready(&mut ready_cx).is_ready());
        let t = broker.existing("t").unwrap();
        assert_eq!(broker.log_start(&t, 0), 1);

        // poll_ready alone drives a parked record; leaving releases the partition.
        let mut fifth = publisher.call(record("t"));
        assert!(publisher.poll_ready(&mut ready_cx).is_pending());
        broker.leave("g", member);
        assert!(ready_flag.woken());
        assert!(publisher.poll_ready(&mut ready_cx).is_ready());
        assert_eq!(broker.high_watermark("t", 0), Some(5));
        match Pin::new(&mut fifth).poll(&mut future_cx) {
            Poll::Ready(Ok(d)) => assert_eq!(d.offset, 4),
            other => panic!("not stored after the group left: {other:?}"),
        }
    }

    #[test]
    fn a_consumer_dropped_without_leaving_does_not_block() {
        let broker = MemoryBroker::builder().retention(2).build();
        broker.create_topic("t", 1).unwrap();
        let topics = vec!["t".to_owned()];
        let (_, alive) = broker.join("g", &topics);
        let (_, dropped) = broker.join("g", &topics);
        append(&broker, record("t")).unwrap();
        append(&broker, record("t")).unwrap();
        assert!(matches!(
            broker.try_append(record("t"), None),
            Ok(Appended::Full(_))
        ));
        // One member's consumer is gone; the other still holds the partition.
        drop(dropped);
        assert!(matches!(
            broker.try_append(record("t"), None),
            Ok(Appended::Full(_))
        ));
        drop(alive);
        assert_eq!(append(&broker, record("t")).unwrap(), (0, 2));
    }

    #[test]
    fn a_dropped_waiting_future_withdraws_its_record() {
        let broker = MemoryBroker::builder().retention(1).build();
        broker.create_topic("t", 1).unwrap();
        let (_member, _running) = broker.join("g", &["t".to_owned()]);
        let mut publisher = broker.publisher();
        let (_, waker) = Flag::waker();
        let mut cx = Context::from_waker(&waker);
        drop(publisher.call(record("t")));
        drop(publisher.call(record("t")));
        assert!(publisher.poll_ready(&mut cx).is_ready());
        broker.commit("g", &Arc::from("t"), 0, 1);
        assert_eq!(broker.high_watermark("t", 0), Some(1));
    }

    #[test]
    fn drop_oldest_counts_what_each_group_never_received() {
        let metrics = Metrics::new();
        let broker = MemoryBroker::builder()
            .retention(5)
            .overflow(Overflow::DropOldest)
            .metrics(metrics.clone())
            .build();
        broker.create_topic("t", 1).unwrap();
        let topics = vec!["t".to_owned()];
        let _reader = broker.join("reader", &topics);
        let _idle = broker.join("idle", &topics);
        let topic = broker.existing("t").unwrap();
        for _ in 0..3 {
            append(&broker, record("t")).unwrap();
        }
        let group: Arc<str> = Arc::from("reader");
        assert_eq!(broker.read(&topic, 0, 0, 100, Some(&group)).len(), 3);
        for _ in 0..9 {
            append(&broker, record("t")).unwrap();
        }
        assert_eq!(broker.log_start(&topic, 0), 7);
        // "reader" had offsets 0..3 in hand (not yet committed): only 3..7 are lost to it.
        assert_eq!(dropped(&metrics, "reader"), Some(4));
        assert_eq!(dropped(&metrics, "idle"), Some(7));
        // Lag counts from where each group is, behind the log start.
        assert_eq!(broker.position("idle", "t", 0), Some(0));
        broker.commit("reader", &topic.name, 0, 3);
        assert_eq!(broker.position("reader", "t", 0), Some(3));
    }

    #[test]
    fn keys_pick_stable_partitions_and_offsets_grow() {
        let broker = MemoryBroker::new();
        broker.create_topic("t", 4).unwrap();
        let a = append(&broker, record("t").key("k1")).unwrap();
        let b = append(&broker, record("t").key("k1")).unwrap();
        assert_eq!(a.0, b.0);
        assert_eq!(b.1, a.1 + 1);
        assert!(broker.create_topic("t", 2).is_err());
        assert!(append(&broker, record("t").partition(9)).is_err());
    }

    #[test]
    fn retention_bounds_each_partition() {
        let broker = MemoryBroker::builder().retention(10).build();
        broker.create_topic("t", 1).unwrap();
        for _ in 0..25 {
            append(&broker, record("t")).unwrap();
        }
        let topic = broker.existing("t").unwrap();
        assert_eq!(broker.log_start(&topic, 0), 15);
        assert_eq!(broker.high_watermark("t", 0), Some(25));
        let read = broker.read(&topic, 0, 0, 100, None);
        assert_eq!(read.len(), 10);
        assert_eq!(read[0].offset, 15);
    }

    #[test]
    fn partitions_are_dealt_over_members() {
        let broker = MemoryBroker::new();
        broker.create_topic("t", 5).unwrap();
        let topics = vec!["t".to_owned()];
        let (a, _) = broker.join("g", &topics);
        let (b, _) = broker.join("g", &topics);
        let pa = broker.assignment("g", a);
        let pb = broker.assignment("g", b);
        assert_eq!(pa.len() + pb.len(), 5);
        assert!(pa.iter().all(|(_, p)| !pb.iter().any(|(_, q)| p == q)));
        broker.leave("g", b);
        assert_eq!(broker.assignment("g", a).len(), 5);
    }

    #[test]
    fn concurrent_publishers_get_unique_gap_free_offsets() {
        let broker = MemoryBroker::new();
        broker.create_topic("t", 3).unwrap();
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let broker = broker.clone();
                std::thread::spawn(move || {
                    (0..500)
                        .map(|i| append(&broker, record("t").key(format!("{t}-{i}"))).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut per_partition: HashMap<i32, Vec<i64>> = HashMap::new();
        for thread in threads {
            for (partition, offset) in thread.join().unwrap() {
                per_partition.entry(partition).or_default().push(offset);
            }
        }
        let mut total = 0;
        for (partition, mut offsets) in per_partition {
            offsets.sort_unstable();
            let expected: Vec<i64> = (0..offsets.len() as i64).collect();
            assert_eq!(offsets, expected, "partition {partition}");
            assert_eq!(
                broker.high_watermark("t", partition),
                Some(offsets.len() as i64)
            );
            total += offsets.len();
        }
        assert_eq!(total, 4000);
    }

    #[test]
    fn commits_never_move_backwards() {
        let broker = MemoryBroker::new();
        let topic: Arc<str> = Arc::from("t");
        broker.commit("g", &topic, 0, 5);
        broker.commit("g", &topic, 0, 3);
        assert_eq!(broker.committed("g", "t", 0), Some(5));
    }
}
