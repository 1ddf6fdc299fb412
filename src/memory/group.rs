//! The embedded broker's consumer groups: members joining and leaving, rebalances, and the
//! partitions each member owns.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Waker;

use tokio::sync::watch;

use super::broker::MemoryBroker;
use super::log::Topic;
use crate::sync::{Recover, RecoverRw};

#[derive(Default)]
pub(crate) struct Group {
    pub(super) members: BTreeMap<u64, Member>,
    pub(super) generation: u64,
}

pub(crate) struct Member {
    pub(super) topics: Vec<String>,
    /// The member's own rebalance signal. Its consumer holds the receiver for as long as it
    /// runs, so a closed channel means the consumer was dropped without leaving.
    pub(super) generation: watch::Sender<u64>,
}

impl Group {
    fn rebalance(&mut self) {
        self.generation += 1;
        for member in self.members.values() {
            member.generation.send_replace(self.generation);
        }
    }
}

impl MemoryBroker {
    /// Adds a member; returns its id and a receiver that changes on every rebalance.
    ///
    /// From here on the group holds back retention on every partition of `topics`.
    pub(crate) fn join(&self, group: &str, topics: &[String]) -> (u64, watch::Receiver<u64>) {
        for name in topics {
            let topic = self.topic_with(name, self.inner.default_partitions);
            for (partition, slot) in topic.partitions.iter().enumerate() {
                let mut log = slot.log.locked();
                self.reader(&mut log, &topic.name, partition as i32, group)
                    .subscribers += 1;
            }
        }
        self.rebalanced(group);
        let id = self.inner.next_member.fetch_add(1, Ordering::Relaxed);
        let mut groups = self.inner.groups.locked();
        let group = groups.entry(group.to_owned()).or_default();
        group.rebalance();
        let (generation, receiver) = watch::channel(group.generation);
        group.members.insert(
            id,
            Member {
                topics: topics.to_vec(),
                generation,
            },
        );
        (id, receiver)
    }

    /// Makes members whose consumer was dropped without leaving leave; `true` if there were
    /// any. Without this, an aborted consumer would hold back retention forever.
    pub(super) fn leave_departed(&self) -> bool {
        let departed: Vec<(String, u64)> = {
            let groups = self.inner.groups.locked();
            groups
                .iter()
                .flat_map(|(name, g)| {
                    g.members
                        .iter()
                        .filter(|(_, m)| m.generation.is_closed())
                        .map(move |(id, _)| (name.clone(), *id))
                })
                .collect()
        };
        for (group, member) in &departed {
            self.leave(group, *member);
        }
        !departed.is_empty()
    }

    /// Removes a member; publishers its group held back are woken.
    pub(crate) fn leave(&self, group: &str, member: u64) {
        let topics = {
            let mut groups = self.inner.groups.locked();
            let Some(g) = groups.get_mut(group) else {
                return;
            };
            let Some(gone) = g.members.remove(&member) else {
                return;
            };
            g.rebalance();
            gone.topics
        };
        for name in &topics {
            let Some(topic) = self.existing(name) else {
                continue;
            };
            for slot in &topic.partitions {
                let waiting = {
                    let mut log = slot.log.locked();
                    if let Some(reader) = log.readers.get_mut(group) {
                        reader.subscribers = reader.subscribers.saturating_sub(1);
                    }
                    std::mem::take(&mut log.waiting)
                };
                waiting.into_iter().for_each(Waker::wake);
            }
        }
        self.rebalanced(group);
    }

    /// Partitions move after a join or leave and are read again from the committed offsets:
    /// records fetched but not committed are no longer counted as received.
    fn rebalanced(&self, group: &str) {
        let topics: Vec<Arc<Topic>> = {
            let topics = self.inner.topics.read_locked();
            topics.values().cloned().collect()
        };
        for topic in topics {
            for slot in &topic.partitions {
                let mut log = slot.log.locked();
                if let Some(reader) = log.readers.get_mut(group) {
                    reader.fetched = 0;
                }
            }
        }
    }

    /// The partitions `member` owns now: each topic's partitions dealt round-robin over the
    /// members subscribed to it, in member-id order.
    pub(crate) fn assignment(&self, group: &str, member: u64) -> Vec<(Arc<Topic>, i32)> {
        let subscriptions: Vec<(u64, Vec<String>)> = {
            let groups = self.inner.groups.locked();
            match groups.get(group) {
                Some(g) => g
                    .members
                    .iter()
                    .map(|(id, m)| (*id, m.topics.clone()))
                    .collect(),
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
}
