use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use tokio::sync::watch;

use super::consumer::MemoryConsumer;
use super::publisher::MemoryPublisher;
use super::record::{MemoryMessage, MemoryRecord, Stored};

const DEFAULT_PARTITIONS: i32 = 3;
const DEFAULT_RETENTION: usize = 100_000;

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
    topics: RwLock<HashMap<String, Arc<Topic>>>,
    groups: Mutex<HashMap<String, Group>>,
    default_partitions: i32,
    retention: usize,
    next_member: AtomicU64,
}

pub(crate) struct Topic {
    pub(crate) name: Arc<str>,
    pub(crate) partitions: Vec<Partition>,
    round_robin: AtomicU64,
}

pub(crate) struct Partition {
    log: Mutex<Log>,
    /// The high watermark (next offset), for consumers waiting on new records.
    high_watermark: watch::Sender<i64>,
}

struct Log {
    start: i64,
    records: VecDeque<Stored>,
}

#[derive(Default)]
struct Group {
    committed: HashMap<(Arc<str>, i32), i64>,
    /// Member id → subscribed topics.
    members: BTreeMap<u64, Vec<String>>,
    generation: Option<watch::Sender<u64>>,
}

impl fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let topics = self.inner.topics.read().unwrap_or_else(|e| e.into_inner());
        f.debug_struct("MemoryBroker")
            .field("topics", &topics.keys().collect::<Vec<_>>())
            .field("retention", &self.inner.retention)
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
}

impl MemoryBrokerBuilder {
    /// Partitions of topics created on first publish or subscribe (default 3).
    pub fn default_partitions(mut self, partitions: i32) -> Self {
        self.default_partitions = partitions.max(1);
        self
    }

    /// Records kept per partition before the oldest are dropped (default 100 000).
    pub fn retention(mut self, records: usize) -> Self {
        self.retention = records.max(1);
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

    /// Configures partitions and retention.
    pub fn builder() -> MemoryBrokerBuilder {
        MemoryBrokerBuilder {
            default_partitions: DEFAULT_PARTITIONS,
            retention: DEFAULT_RETENTION,
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
        MemoryPublisher {
            broker: self.clone(),
        }
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

    /// The offset `group` will read next from a partition, if it committed one.
    pub fn committed(&self, group: &str, topic: &str, partition: i32) -> Option<i64> {
        let groups = self.inner.groups.lock().unwrap_or_else(|e| e.into_inner());
        groups
            .get(group)?
            .committed
            .get(&(Arc::from(topic), partition))
            .copied()
    }

    /// Number of partitions of `topic`, if it exists.
    pub fn partitions(&self, topic: &str) -> Option<i32> {
        self.existing(topic).map(|t| t.partitions.len() as i32)
    }

    /// Appends a record; the heart of [`MemoryPublisher`].
    pub(crate) fn append(&self, record: MemoryRecord) -> Result<(i32, i64), MemoryError> {
        let topic = self.topic_with(&record.topic, self.inner.default_partitions);
        let count = topic.partitions.len() as i32;
        let partition = match (record.partition, &record.key) {
            (Some(p), _) if (0..count).contains(&p) => p,
            (Some(p), _) => {
                return Err(MemoryError::UnknownPartition {
                    topic: record.topic,
                    partition: p,
                })
            }
            (None, Some(key)) => (fnv1a(key) % count as u64) as i32,
            (None, None) => {
                (topic.round_robin.fetch_add(1, Ordering::Relaxed) % count as u64) as i32
            }
        };
        let stored = Stored {
            key: record.key.map(Arc::from),
            payload: Arc::from(record.payload),
            headers: Arc::new(record.headers),
            timestamp: record.timestamp.unwrap_or_else(SystemTime::now),
        };
        let slot = &topic.partitions[partition as usize];
        let offset = {
            let mut log = slot.log.lock().unwrap_or_else(|e| e.into_inner());
            let offset = log.start + log.records.len() as i64;
            log.records.push_back(stored);
            while log.records.len() > self.inner.retention {
                log.records.pop_front();
                log.start += 1;
            }
            offset
        };
        slot.high_watermark.send_replace(offset + 1);
        Ok((partition, offset))
    }

    /// Reads up to `max` records of a partition from `offset` (or from the oldest retained).
    pub(crate) fn read(
        &self,
        topic: &Topic,
        partition: i32,
        offset: i64,
        max: usize,
        group: Option<&Arc<str>>,
    ) -> Vec<MemoryMessage> {
        let slot = &topic.partitions[partition as usize];
        let log = slot.log.lock().unwrap_or_else(|e| e.into_inner());
        let from = offset.max(log.start);
        let skip = (from - log.start) as usize;
        log.records
            .iter()
            .skip(skip)
            .take(max)
            .enumerate()
            .map(|(i, stored)| MemoryMessage {
                topic: Arc::clone(&topic.name),
                partition,
                offset: from + i as i64,
                group: group.cloned(),
                key: stored.key.clone(),
                payload: Arc::clone(&stored.payload),
                headers: Arc::clone(&stored.headers),
                timestamp: stored.timestamp,
            })
            .collect()
    }

    pub(crate) fn log_start(&self, topic: &Topic, partition: i32) -> i64 {
        let slot = &topic.partitions[partition as usize];
        slot.log.lock().unwrap_or_else(|e| e.into_inner()).start
    }

    pub(crate) fn watch_partition(&self, topic: &Topic, partition: i32) -> watch::Receiver<i64> {
        topic.partitions[partition as usize]
            .high_watermark
            .subscribe()
    }

    pub(crate) fn commit(&self, group: &str, topic: &Arc<str>, partition: i32, next: i64) {
        let mut groups = self.inner.groups.lock().unwrap_or_else(|e| e.into_inner());
        let group = groups.entry(group.to_owned()).or_default();
        let slot = group
            .committed
            .entry((Arc::clone(topic), partition))
            .or_insert(next);
        // Commits never move backwards.
        *slot = (*slot).max(next);
    }

    /// Adds a member; returns its id and a receiver that changes on every rebalance.
    pub(crate) fn join(&self, group: &str, topics: &[String]) -> (u64, watch::Receiver<u64>) {
        for topic in topics {
            self.topic_with(topic, self.inner.default_partitions);
        }
        let id = self.inner.next_member.fetch_add(1, Ordering::Relaxed);
        let mut groups = self.inner.groups.lock().unwrap_or_else(|e| e.into_inner());
        let group = groups.entry(group.to_owned()).or_default();
        group.members.insert(id, topics.to_vec());
        let generation = group.generation.get_or_insert_with(|| watch::channel(0).0);
        generation.send_modify(|g| *g += 1);
        (id, generation.subscribe())
    }

    pub(crate) fn leave(&self, group: &str, member: u64) {
        let mut groups = self.inner.groups.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(group) = groups.get_mut(group) {
            if group.members.remove(&member).is_some() {
                if let Some(generation) = &group.generation {
                    generation.send_modify(|g| *g += 1);
                }
            }
        }
    }

    /// The partitions `member` owns now: each topic's partitions dealt round-robin over the
    /// members subscribed to it, in member-id order.
    pub(crate) fn assignment(&self, group: &str, member: u64) -> Vec<(Arc<Topic>, i32)> {
        let subscriptions: Vec<(u64, Vec<String>)> = {
            let groups = self.inner.groups.lock().unwrap_or_else(|e| e.into_inner());
            match groups.get(group) {
                Some(g) => g.members.iter().map(|(id, t)| (*id, t.clone())).collect(),
                None => return Vec::new(),
            }
        };
        let Some((_, mine)) = subscriptions.iter().find(|(id, _)| *id == member) else {
            return Vec::new();
        };
        let mut owned = Vec::new();
        for topic_name in mine {
            let Some(topic) = self.existing(topic_name) else {
                continue;
            };
            let peers: Vec<u64> = subscriptions
                .iter()
                .filter(|(_, topics)| topics.contains(topic_name))
                .map(|(id, _)| *id)
                .collect();
            let me = peers.iter().position(|id| *id == member).unwrap_or(0);
            for partition in 0..topic.partitions.len() {
                if partition % peers.len() == me {
                    owned.push((Arc::clone(&topic), partition as i32));
                }
            }
        }
        owned
    }

    fn existing(&self, topic: &str) -> Option<Arc<Topic>> {
        let topics = self.inner.topics.read().unwrap_or_else(|e| e.into_inner());
        topics.get(topic).cloned()
    }

    fn topic_with(&self, name: &str, partitions: i32) -> Arc<Topic> {
        if let Some(topic) = self.existing(name) {
            return topic;
        }
        let mut topics = self.inner.topics.write().unwrap_or_else(|e| e.into_inner());
        Arc::clone(topics.entry(name.to_owned()).or_insert_with(|| {
            Arc::new(Topic {
                name: Arc::from(name),
                partitions: (0..partitions.max(1))
                    .map(|_| Partition {
                        log: Mutex::new(Log {
                            start: 0,
                            records: VecDeque::new(),
                        }),
                        high_watermark: watch::channel(0).0,
                    })
                    .collect(),
                round_robin: AtomicU64::new(0),
            })
        }))
    }
}

/// FNV-1a: a stable key hash, so a key maps to the same partition in every run.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(topic: &str) -> MemoryRecord {
        MemoryRecord::new(topic, b"x".to_vec())
    }

    #[test]
    fn keys_pick_stable_partitions_and_offsets_grow() {
        let broker = MemoryBroker::new();
        broker.create_topic("t", 4).unwrap();
        let a = broker.append(record("t").key("k1")).unwrap();
        let b = broker.append(record("t").key("k1")).unwrap();
        assert_eq!(a.0, b.0);
        assert_eq!(b.1, a.1 + 1);
        assert!(broker.create_topic("t", 2).is_err());
        assert!(broker.append(record("t").partition(9)).is_err());
    }

    #[test]
    fn retention_bounds_each_partition() {
        let broker = MemoryBroker::builder().retention(10).build();
        broker.create_topic("t", 1).unwrap();
        for _ in 0..25 {
            broker.append(record("t")).unwrap();
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
                        .map(|i| broker.append(record("t").key(format!("{t}-{i}"))).unwrap())
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
