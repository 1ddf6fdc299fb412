//! The embedded broker's partition logs: appending under the retention bound and the overflow
//! policy, reading, commits, and each group's progress on each partition.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::time::{Duration, Instant, SystemTime};

use prometheus::IntCounter;
use tokio::sync::watch;

use super::broker::{MemoryBroker, MemoryError, Overflow};
use super::record::{MemoryMessage, MemoryReceipt, MemoryRecord, Stored};
use crate::message::system::MEMORY;
use crate::sync::{Recover, RecoverRw};

/// At most one "records dropped" warning per group and partition in this interval; the counter
/// has every record.
const DROP_WARNING_INTERVAL: Duration = Duration::from_secs(10);

pub(crate) struct Topic {
    pub(crate) name: Arc<str>,
    pub(crate) partitions: Vec<Partition>,
    pub(super) round_robin: AtomicU64,
}

pub(crate) struct Partition {
    pub(super) log: Mutex<Log>,
    /// The high watermark (next offset), for consumers waiting on new records.
    pub(super) high_watermark: watch::Sender<i64>,
}

pub(crate) struct Log {
    pub(super) start: i64,
    pub(super) records: VecDeque<Stored>,
    /// Every group that subscribed to the topic or committed on this partition, with its
    /// progress here. Kept under the log's lock, so retention sees commits atomically.
    pub(super) readers: HashMap<Arc<str>, Reader>,
    /// Publishers waiting for room ([`Overflow::Block`]), woken by commits and departures.
    pub(super) waiting: Vec<Waker>,
}

/// One group's progress on one partition.
pub(crate) struct Reader {
    /// Members of the group subscribed to the topic now; only subscribed groups hold records.
    pub(super) subscribers: usize,
    pub(super) committed: Option<i64>,
    /// The log start when the group first met the partition: where it begins without a commit.
    pub(super) base: i64,
    /// One past the last record handed to the group since the last rebalance.
    pub(super) fetched: i64,
    pub(super) dropped: Option<IntCounter>,
    /// Records dropped since the last warning, and when that was.
    pub(super) unwarned: u64,
    pub(super) warned_at: Option<Instant>,
}

impl Reader {
    /// The first record the group has not consumed (committed past).
    pub(crate) fn position(&self) -> i64 {
        self.committed.unwrap_or(self.base)
    }

    /// The first record the group has not received.
    fn received(&self) -> i64 {
        self.position().max(self.fetched)
    }
}

/// The outcome of offering a record to a partition.
pub(crate) enum Appended {
    Stored(MemoryReceipt),
    /// The partition is full under [`Overflow::Block`]; the record comes back, pinned to its
    /// partition, and the waker (if any) is woken when a group commits or leaves.
    Full(MemoryRecord),
}

impl MemoryBroker {
    pub(super) fn offer(
        &self,
        mut record: MemoryRecord,
        waker: Option<&Waker>,
    ) -> Result<Appended, MemoryError> {
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
        let slot = &topic.partitions[partition as usize];
        let offset = {
            let mut log = slot.log.locked();
            let excess = (log.records.len() + 1).saturating_sub(self.inner.retention);
            if excess > 0 {
                if self.inner.overflow == Overflow::Block && self.consumed(&log) < excess {
                    if let Some(waker) = waker {
                        if !log.waiting.iter().any(|w| w.will_wake(waker)) {
                            log.waiting.push(waker.clone());
                        }
                    }
                    drop(log);
                    // Retried on the same partition: a keyless record keeps its place in line.
                    record.partition = Some(partition);
                    return Ok(Appended::Full(record));
                }
                evict(&mut log, &topic.name, partition, excess);
            }
            let offset = log.start + log.records.len() as i64;
            log.records.push_back(Stored {
                key: record.key.map(Arc::from),
                payload: Arc::from(record.payload),
                headers: Arc::new(record.headers),
                timestamp: record.timestamp.unwrap_or_else(SystemTime::now),
            });
            offset
        };
        slot.high_watermark.send_replace(offset + 1);
        Ok(Appended::Stored(MemoryReceipt { partition, offset }))
    }

    /// How many of the oldest records every subscribed group has committed past.
    fn consumed(&self, log: &Log) -> usize {
        let floor = log
            .readers
            .values()
            .filter(|r| r.subscribers > 0)
            .map(Reader::position)
            .min()
            .unwrap_or(i64::MAX);
        usize::try_from(floor.saturating_sub(log.start))
            .unwrap_or(0)
            .min(log.records.len())
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
        let mut log = slot.log.locked();
        let from = offset.max(log.start);
        let skip = usize::try_from(from - log.start).unwrap_or(0);
        let batch: Vec<MemoryMessage> = log
            .records
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
                attempt: 1,
            })
            .collect();
        if let (Some(group), false) = (group, batch.is_empty()) {
            if let Some(reader) = log.readers.get_mut(&**group) {
                // What was handed out is received: its removal is not a drop.
                reader.fetched = from + batch.len() as i64;
            }
        }
        batch
    }

    pub(crate) fn log_start(&self, topic: &Topic, partition: i32) -> i64 {
        let slot = &topic.partitions[partition as usize];
        slot.log.locked().start
    }

    pub(crate) fn watch_partition(&self, topic: &Topic, partition: i32) -> watch::Receiver<i64> {
        topic.partitions[partition as usize]
            .high_watermark
            .subscribe()
    }

    pub(crate) fn commit(&self, group: &str, topic: &Arc<str>, partition: i32, next: i64) {
        let topic = self.topic_with(topic, self.inner.default_partitions);
        let Some(slot) = usize::try_from(partition)
            .ok()
            .and_then(|p| topic.partitions.get(p))
        else {
            return;
        };
        let waiting = {
            let mut log = slot.log.locked();
            let reader = self.reader(&mut log, &topic.name, partition, group);
            // Commits never move backwards.
            reader.committed = Some(reader.committed.map_or(next, |c| c.max(next)));
            std::mem::take(&mut log.waiting)
        };
        waiting.into_iter().for_each(Waker::wake);
    }

    /// `group`'s progress on a partition, met now if it is new.
    pub(super) fn reader<'a>(
        &self,
        log: &'a mut Log,
        topic: &str,
        partition: i32,
        group: &str,
    ) -> &'a mut Reader {
        let start = log.start;
        if !log.readers.contains_key(group) {
            // Resolved once: a drop is counted without a label lookup, and the series exists
            // at 0 from the start, so the first drop shows in `rate()`.
            let dropped = self
                .inner
                .metrics
                .as_ref()
                .map(|m| m.dropped_counter(MEMORY, topic, Some(partition), group));
            log.readers.insert(
                Arc::from(group),
                Reader {
                    subscribers: 0,
                    committed: None,
                    base: start,
                    fetched: 0,
                    dropped,
                    unwarned: 0,
                    warned_at: None,
                },
            );
        }
        log.readers
            .get_mut(group)
            .expect("the reader was just inserted")
    }

    pub(super) fn existing(&self, topic: &str) -> Option<Arc<Topic>> {
        let topics = self.inner.topics.read_locked();
        topics.get(topic).cloned()
    }

    pub(super) fn topic_with(&self, name: &str, partitions: i32) -> Arc<Topic> {
        if let Some(topic) = self.existing(name) {
            return topic;
        }
        let mut topics = self.inner.topics.write_locked();
        Arc::clone(topics.entry(name.to_owned()).or_insert_with(|| {
            Arc::new(Topic {
                name: Arc::from(name),
                partitions: (0..partitions.max(1))
                    .map(|_| Partition {
                        log: Mutex::new(Log {
                            start: 0,
                            records: VecDeque::new(),
                            readers: HashMap::new(),
                            waiting: Vec::new(),
                        }),
                        high_watermark: watch::channel(0).0,
                    })
                    .collect(),
                round_robin: AtomicU64::new(0),
            })
        }))
    }
}

/// Removes the `count` oldest records, counting each for every group that had not received it.
fn evict(log: &mut Log, topic: &str, partition: i32, count: usize) {
    let end = log.start + count as i64;
    let start = log.start;
    for (group, reader) in &mut log.readers {
        let lost = end - reader.received().max(start);
        if lost <= 0 {
            continue;
        }
        let lost = lost as u64;
        if let Some(counter) = &reader.dropped {
            counter.inc_by(lost);
        }
        reader.unwarned += lost;
        if reader
            .warned_at
            .is_none_or(|at| at.elapsed() >= DROP_WARNING_INTERVAL)
        {
            tracing::warn!(
                topic, partition, group = %group, dropped = reader.unwarned,
                "records removed by retention before the group received them"
            );
            reader.unwarned = 0;
            reader.warned_at = Some(Instant::now());
        }
    }
    log.records.drain(..count);
    log.start = end;
}

/// FNV-1a: a stable key hash, so a key maps to the same partition in every run.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
