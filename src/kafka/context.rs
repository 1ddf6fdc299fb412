//! The consumer context: what only librdkafka's callbacks can tell (statistics for lag,
//! rebalances), passed on to the consumer, and everything else delegated to your own context.

use std::any::TypeId;
use std::collections::{HashMap, VecDeque};
use std::error::Error;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
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
use tokio::sync::Notify;

use super::config::Settings;
use super::lag::Lag;
use crate::consume::{Lane, Progress, Reporter};
use crate::sync::Recover;

/// The consumer context that gives eventscope what only librdkafka knows: statistics (for
/// lag) and rebalances. Create your `StreamConsumer` with it, from the same [`ClientConfig`],
/// when you bring your own (`KafkaConsumer::from_config` does it for you).
///
/// - **Lag** (SPEC §5): on every statistics callback — enable them with
///   `statistics.interval.ms`, e.g. `1000` — each assigned partition in an active fetch state
///   reports `high watermark − committed offset`, clamped at 0, once the consumer runs. The
///   high watermark is the last stable offset under `isolation.level=read_committed`
///   (librdkafka's default). Before the group has committed anything, the log start offset
///   stands in for the committed offset when `auto.offset.reset` is `earliest`; with `latest`
///   nothing is reported until the first commit. Sentinels (`-1`, `-1001`) and partition `-1`
///   are never exported. librdkafka stops fetching a paused partition (one stopped at a failed
///   message, or whose buffer is full), so its statistics stop following the high watermark: a
///   partition that is behind and did not move between two statistics has its high watermark
///   queried from the broker instead, by a background thread with a client of its own
///   (created from the same configuration, without `group.id`, on first need), never on
///   librdkafka's threads.
/// - **Rebalances**: before partitions are revoked, the offsets of processed messages are
///   stored and committed synchronously; then the consumer is told, counts the rebalance and
///   removes the revoked partitions' series.
///
/// Everything else is delegated to your own context `C` (logging, statistics, errors, OAuth,
/// commit callbacks). Only `pre_rebalance` / `post_rebalance` cannot be: librdkafka calls them
/// with a consumer typed by the outer context, which a `C` cannot accept.
pub struct EventscopeContext<C = DefaultConsumerContext> {
    inner: C,
    settings: Arc<Settings>,
    rebalances: Mutex<VecDeque<RebalanceEvent>>,
    /// Set while `rebalances` is not empty, so the driver can check it per message for free.
    has_rebalances: AtomicBool,
    notify: Notify,
    /// The core's progress through each partition it handles, committed before a revoke.
    tracked: Mutex<HashMap<(Arc<str>, i32), Progress>>,
    lag: Lag,
}

/// A rebalance, as the consumer driver needs to hear of it.
#[derive(Debug)]
pub(crate) enum RebalanceEvent {
    Assigned(Vec<(String, i32)>),
    Revoked(Vec<(String, i32)>),
}

impl EventscopeContext {
    /// A context for a consumer created from `config`.
    ///
    /// `group.id`, `isolation.level`, `auto.offset.reset` and `bootstrap.servers` are read from
    /// `config`; a copy of it (without `group.id`) is kept for the client that queries the
    /// high watermarks of paused partitions, created only if one is needed.
    pub fn new(config: &ClientConfig) -> Self {
        Self::wrap(config, DefaultConsumerContext)
    }
}

impl<C> EventscopeContext<C> {
    /// Like [`new`](EventscopeContext::new), delegating to your own context `inner`.
    pub fn wrap(config: &ClientConfig, inner: C) -> Self {
        let settings = Arc::new(Settings::from_config(config));
        Self {
            inner,
            lag: Lag::new(config, Arc::clone(&settings)),
            settings,
            rebalances: Mutex::default(),
            has_rebalances: AtomicBool::new(false),
            notify: Notify::new(),
            tracked: Mutex::default(),
        }
    }

    /// Your context.
    pub fn inner(&self) -> &C {
        &self.inner
    }

    /// The consumer group, from `group.id`.
    pub fn group(&self) -> &str {
        &self.settings.group
    }

    pub(crate) fn settings(&self) -> &Arc<Settings> {
        &self.settings
    }

    /// Lag goes to `reporter` from now on.
    pub(crate) fn report_to(&self, reporter: Reporter) {
        self.lag.report_to(reporter);
    }

    /// The core handles `lane` with `progress` from now on.
    pub(crate) fn track(&self, lane: &Lane, progress: &Progress) {
        self.tracked
            .locked()
            .insert((Arc::clone(&lane.topic), lane.partition), progress.clone());
    }

    /// Rebalances since the last call, oldest first.
    pub(crate) fn take_rebalances(&self) -> VecDeque<RebalanceEvent> {
        if !self.has_rebalances.swap(false, Ordering::AcqRel) {
            return VecDeque::new();
        }
        std::mem::take(&mut *self.rebalances.locked())
    }

    /// Resolves after the next rebalance is queued.
    pub(crate) fn rebalanced(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }

    fn push_rebalance(&self, event: RebalanceEvent) {
        self.rebalances.locked().push_back(event);
        self.has_rebalances.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    /// Puts the progress of every tracked partition into the consumer's offset store.
    fn store_tracked<K: ConsumerContext>(&self, consumer: &impl Consumer<K>) -> KafkaResult<()> {
        let mut list = TopicPartitionList::new();
        for ((topic, partition), progress) in self.tracked.locked().iter() {
            if let Some(next) = progress.get() {
                list.add_partition_offset(topic, *partition, Offset::Offset(next))?;
            }
        }
        if list.count() == 0 {
            return Ok(());
        }
        consumer.store_offsets(&list)
    }
}

impl<C> fmt::Debug for EventscopeContext<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventscopeContext")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl<C: ClientContext + 'static> ClientContext for EventscopeContext<C> {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = C::ENABLE_REFRESH_OAUTH_TOKEN;

    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.inner.log(level, fac, log_message);
    }

    fn stats_raw(&self, statistics: &[u8]) {
        self.lag.record(statistics);
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
            if let Err(error) = self.store_tracked(base_consumer) {
                tracing::warn!(%error, "storing offsets before revocation failed");
            }
            match base_consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                Err(error) => tracing::warn!(%error, "commit before revocation failed"),
            }
        }
        self.tracked.locked().retain(|(topic, partition), _| {
            !revoked
                .iter()
                .any(|(t, p)| p == partition && t.as_str() == &**topic)
        });
        self.lag.forget(&revoked);
        tracing::debug!(group = %self.settings.group, partitions = ?revoked, "kafka partitions revoked");
        self.push_rebalance(RebalanceEvent::Revoked(revoked));
    }

    fn post_rebalance(&self, _base_consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                let assigned = elements(partitions);
                tracing::debug!(group = %self.settings.group, partitions = ?assigned, "kafka partitions assigned");
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
