use std::any::TypeId;
use std::collections::{HashMap, VecDeque};
use std::error::Error;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use rdkafka::client::{ClientContext, OAuthToken};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, DefaultConsumerContext, Rebalance,
};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;
use tokio::sync::Notify;

use super::record::ServerAddress;
use crate::message::system::KAFKA;
use crate::metrics::Metrics;

/// The consumer context that gives eventscope what only librdkafka knows: statistics (for
/// lag) and rebalances. Create your `StreamConsumer` with it, from the same [`ClientConfig`].
///
/// - **Lag** (SPEC §5): on every statistics callback — enable them with
///   `statistics.interval.ms`, e.g. `1000` — each assigned partition in an active fetch state
///   reports `high watermark − committed offset`, clamped at 0. The high watermark is the last
///   stable offset under `isolation.level=read_committed` (librdkafka's default). Before the
///   group has committed anything, the log start offset stands in for the committed offset
///   when `auto.offset.reset` is `earliest`; with `latest` nothing is reported until the first
///   commit. Sentinels (`-1`, `-1001`) and partition `-1` are never exported.
/// - **Rebalances**: each new assignment counts in `messaging_consumer_rebalances_total`.
///   Before partitions are revoked, the offsets stored for processed messages are committed
///   synchronously, the revoked partitions' lag series are removed, and the
///   [`KafkaConsumer`](super::KafkaConsumer) is told to stop handing out their messages.
///
/// Everything else is delegated to your own context `C` (logging, statistics, errors, OAuth,
/// commit callbacks). Only `pre_rebalance` / `post_rebalance` cannot be: librdkafka calls them
/// with a consumer typed by the outer context, which a `C` cannot accept.
pub struct EventscopeContext<C = DefaultConsumerContext> {
    inner: C,
    metrics: Metrics,
    settings: Arc<Settings>,
    rebalances: Mutex<VecDeque<RebalanceEvent>>,
    /// Set while `rebalances` is not empty, so the driver can check it per message for free.
    has_rebalances: AtomicBool,
    notify: Notify,
    progress: Arc<Progress>,
}

/// Per partition, the offset after the last message the handler finished, kept in an atomic
/// the partition's worker writes and handed to librdkafka's offset store only before a commit:
/// a store per message would cost more than the rest of the driver.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    partitions: Mutex<HashMap<TopicPartition, Arc<AtomicI64>>>,
}

type TopicPartition = (Arc<str>, i32);

/// No offset to store yet.
const NOTHING_PROCESSED: i64 = -1;

impl Progress {
    /// The progress cell of a partition, shared by its successive workers.
    pub(crate) fn track(&self, topic: &Arc<str>, partition: i32) -> Arc<AtomicI64> {
        let mut partitions = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(
            partitions
                .entry((Arc::clone(topic), partition))
                .or_insert_with(|| Arc::new(AtomicI64::new(NOTHING_PROCESSED))),
        )
    }

    /// Stops storing a partition's progress (it was revoked: a later owner commits).
    fn forget(&self, revoked: &[(String, i32)]) {
        let mut partitions = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
        partitions.retain(|(topic, partition), _| {
            !revoked
                .iter()
                .any(|(t, p)| p == partition && t.as_str() == &**topic)
        });
    }

    /// Puts every partition's progress into the consumer's offset store.
    pub(crate) fn store<K: ConsumerContext>(&self, consumer: &impl Consumer<K>) -> KafkaResult<()> {
        let mut list = TopicPartitionList::new();
        {
            let partitions = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
            for ((topic, partition), next) in partitions.iter() {
                let next = next.load(Ordering::Acquire);
                if next != NOTHING_PROCESSED {
                    list.add_partition_offset(topic, *partition, Offset::Offset(next))?;
                }
            }
        }
        if list.count() == 0 {
            return Ok(());
        }
        consumer.store_offsets(&list)
    }
}

/// What the context knows from the consumer's configuration.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) group: Arc<str>,
    pub(crate) read_committed: bool,
    pub(crate) reset_earliest: bool,
    pub(crate) server: Option<Arc<ServerAddress>>,
}

impl Settings {
    fn from_config(config: &ClientConfig) -> Self {
        let group = config.get("group.id").unwrap_or_default();
        Self {
            group: Arc::from(group),
            read_committed: config.get("isolation.level") != Some("read_uncommitted"),
            reset_earliest: matches!(
                config.get("auto.offset.reset"),
                Some("earliest" | "smallest" | "beginning")
            ),
            server: config
                .get("bootstrap.servers")
                .or_else(|| config.get("metadata.broker.list"))
                .and_then(ServerAddress::from_bootstrap)
                .map(Arc::new),
        }
    }
}

/// A rebalance, as the consumer driver needs to hear of it.
#[derive(Debug)]
pub(crate) enum RebalanceEvent {
    Assigned(Vec<(String, i32)>),
    Revoked(Vec<(String, i32)>),
}

impl EventscopeContext {
    /// A context for a consumer created from `config`, reporting into `metrics`.
    ///
    /// `group.id`, `isolation.level`, `auto.offset.reset` and `bootstrap.servers` are read from
    /// `config`.
    pub fn new(config: &ClientConfig, metrics: Metrics) -> Self {
        Self::wrap(config, metrics, DefaultConsumerContext)
    }
}

impl<C> EventscopeContext<C> {
    /// Like [`new`](EventscopeContext::new), delegating to your own context `inner`.
    pub fn wrap(config: &ClientConfig, metrics: Metrics, inner: C) -> Self {
        Self {
            inner,
            metrics,
            settings: Arc::new(Settings::from_config(config)),
            rebalances: Mutex::default(),
            has_rebalances: AtomicBool::new(false),
            notify: Notify::new(),
            progress: Arc::default(),
        }
    }

    /// Your context.
    pub fn inner(&self) -> &C {
        &self.inner
    }

    /// The metrics lag and rebalances are reported into.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The consumer group, from `group.id`.
    pub fn group(&self) -> &str {
        &self.settings.group
    }

    pub(crate) fn settings(&self) -> &Arc<Settings> {
        &self.settings
    }

    pub(crate) fn progress(&self) -> &Arc<Progress> {
        &self.progress
    }

    /// Rebalances since the last call, oldest first.
    pub(crate) fn take_rebalances(&self) -> VecDeque<RebalanceEvent> {
        if !self.has_rebalances.swap(false, Ordering::AcqRel) {
            return VecDeque::new();
        }
        std::mem::take(&mut *self.rebalances.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Resolves after the next rebalance is queued.
    pub(crate) fn rebalanced(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }

    fn push_rebalance(&self, event: RebalanceEvent) {
        self.rebalances
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(event);
        self.has_rebalances.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    /// Reports the lag of every partition in a librdkafka statistics document.
    fn record_lag(&self, stats: &Value) {
        let group = &*self.settings.group;
        for lag in partition_lags(stats, &self.settings) {
            self.metrics
                .record_lag(KAFKA, lag.topic, group, Some(lag.partition), lag.messages);
        }
    }
}

impl<C> fmt::Debug for EventscopeContext<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventscopeContext")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// The lag of one partition, as read from statistics.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct PartitionLag<'a> {
    pub(crate) topic: &'a str,
    pub(crate) partition: i32,
    pub(crate) messages: i64,
}

/// Lag per assigned, actively fetched partition; see [`EventscopeContext`].
pub(crate) fn partition_lags<'a>(
    stats: &'a Value,
    settings: &'a Settings,
) -> impl Iterator<Item = PartitionLag<'a>> + 'a {
    let topics = stats.get("topics").and_then(Value::as_object);
    topics
        .into_iter()
        .flat_map(|topics| topics.iter())
        .flat_map(|(topic, t)| {
            t.get("partitions")
                .and_then(Value::as_object)
                .into_iter()
                .flat_map(|p| p.values())
                .map(move |p| (topic.as_str(), p))
        })
        .filter_map(move |(topic, p)| {
            let int = |field: &str| p.get(field).and_then(Value::as_i64);
            let partition = i32::try_from(int("partition")?).ok()?;
            if partition < 0 || p.get("fetch_state").and_then(Value::as_str) != Some("active") {
                return None;
            }
            let end = int(if settings.read_committed {
                "ls_offset"
            } else {
                "hi_offset"
            })
            .filter(|o| *o >= 0)?;
            let committed = int("committed_offset").filter(|o| *o >= 0);
            let start = match committed {
                Some(committed) => committed,
                None if settings.reset_earliest => int("lo_offset").filter(|o| *o >= 0)?,
                None => return None,
            };
            Some(PartitionLag {
                topic,
                partition,
                messages: (end - start).max(0),
            })
        })
}

impl<C: ClientContext + 'static> ClientContext for EventscopeContext<C> {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = C::ENABLE_REFRESH_OAUTH_TOKEN;

    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.inner.log(level, fac, log_message);
    }

    fn stats_raw(&self, statistics: &[u8]) {
        match serde_json::from_slice::<Value>(statistics) {
            Ok(stats) => self.record_lag(&stats),
            Err(error) => tracing::warn!(%error, "unreadable librdkafka statistics"),
        }
        // The default context would only log the whole document at info level every
        // interval; a context of the user's own gets the statistics as it always did.
        if TypeId::of::<C>() != TypeId::of::<DefaultConsumerContext>() {
            self.inner.stats_raw(statistics);
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.inner.error(error, reason);
    }

    fn generate_oauth_token(
        &self,
        oauthbearer_config: Option<&str>,
    ) -> Result<OAuthToken, Box<dyn Error>> {
        self.inner.generate_oauth_token(oauthbearer_config)
    }
}

impl<C: ConsumerContext + 'static> ConsumerContext for EventscopeContext<C> {
    fn pre_rebalance(&self, base_consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(partitions) = rebalance else {
            return;
        };
        let revoked = elements(partitions);
        // Commit the work done while the partitions are still ours.
        if !base_consumer.assignment_lost() {
            if let Err(error) = self.progress.store(base_consumer) {
                tracing::warn!(%error, "storing offsets before revocation failed");
            }
            match base_consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                Err(error) => tracing::warn!(%error, "commit before revocation failed"),
            }
        }
        self.progress.forget(&revoked);
        for (topic, partition) in &revoked {
            self.metrics
                .remove_partition(KAFKA, topic, &self.settings.group, Some(*partition));
        }
        tracing::debug!(group = %self.settings.group, ?revoked, "partitions revoked");
        self.push_rebalance(RebalanceEvent::Revoked(revoked));
    }

    fn post_rebalance(&self, _base_consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                self.metrics.record_rebalance(KAFKA, &self.settings.group);
                let assigned = elements(partitions);
                tracing::debug!(group = %self.settings.group, ?assigned, "partitions assigned");
                self.push_rebalance(RebalanceEvent::Assigned(assigned));
            }
            Rebalance::Error(error) => {
                tracing::warn!(group = %self.settings.group, %error, "rebalance failed");
            }
            Rebalance::Revoke(_) => {}
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        self.inner.commit_callback(result, offsets);
    }

    fn main_queue_min_poll_interval(&self) -> Timeout {
        self.inner.main_queue_min_poll_interval()
    }
}

fn elements(partitions: &TopicPartitionList) -> Vec<(String, i32)> {
    partitions
        .elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(read_committed: bool, reset_earliest: bool) -> Settings {
        Settings {
            group: Arc::from("g"),
            read_committed,
            reset_earliest,
            server: None,
        }
    }

    fn stats() -> Value {
        serde_json::json!({
            "topics": { "orders": { "topic": "orders", "partitions": {
                "0": { "partition": 0, "fetch_state": "active", "lo_offset": 0,
                       "hi_offset": 120, "ls_offset": 100, "committed_offset": 90 },
                "1": { "partition": 1, "fetch_state": "active", "lo_offset": 5,
                       "hi_offset": 50, "ls_offset": 50, "committed_offset": -1001 },
                "2": { "partition": 2, "fetch_state": "none", "lo_offset": 0,
                       "hi_offset": 10, "ls_offset": 10, "committed_offset": 0 },
                "3": { "partition": 3, "fetch_state": "active", "lo_offset": 0,
                       "hi_offset": -1, "ls_offset": -1, "committed_offset": 4 },
                "4": { "partition": 4, "fetch_state": "active", "lo_offset": 0,
                       "hi_offset": 7, "ls_offset": 7, "committed_offset": 9 },
                "-1": { "partition": -1, "fetch_state": "active", "hi_offset": 3,
                        "ls_offset": 3, "committed_offset": 0 }
            }}}
        })
    }

    fn lags(settings: &Settings) -> Vec<(i32, i64)> {
        let stats = stats();
        let mut lags: Vec<_> = partition_lags(&stats, settings)
            .map(|l| (l.partition, l.messages))
            .collect();
        lags.sort_unstable();
        lags
    }

    #[test]
    fn lag_uses_lso_when_read_committed_and_skips_sentinels() {
        assert_eq!(lags(&settings(true, false)), vec![(0, 10), (4, 0)]);
        assert_eq!(lags(&settings(false, false)), vec![(0, 30), (4, 0)]);
        // Nothing committed yet: from the log start when the consumer starts there.
        assert_eq!(lags(&settings(true, true)), vec![(0, 10), (1, 45), (4, 0)]);
    }

    #[test]
    fn settings_come_from_the_config() {
        let mut config = ClientConfig::new();
        config
            .set("group.id", "billing")
            .set("bootstrap.servers", "127.0.0.1:9092")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_uncommitted");
        let s = Settings::from_config(&config);
        assert_eq!(&*s.group, "billing");
        assert!(!s.read_committed && s.reset_earliest);
        assert_eq!(s.server.as_ref().and_then(|s| s.port), Some(9092));
        assert!(Settings::from_config(&ClientConfig::new()).read_committed);
    }

    #[test]
    fn garbage_statistics_are_ignored() {
        let s = settings(true, true);
        for doc in [
            serde_json::json!(null),
            serde_json::json!({"topics": 3}),
            serde_json::json!({"topics": {"t": {"partitions": {"0": {"partition": "x"}}}}}),
        ] {
            assert_eq!(partition_lags(&doc, &s).count(), 0);
        }
    }
}
