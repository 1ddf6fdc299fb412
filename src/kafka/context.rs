use std::any::TypeId;
use std::collections::{HashMap, HashSet, VecDeque};
use std::error::Error;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

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
///   commit. Sentinels (`-1`, `-1001`) and partition `-1` are never exported. librdkafka
///   stops fetching a paused partition (one stopped at a failed message, or whose buffer is
///   full), so its statistics stop following the high watermark: a partition that is behind
///   and did not move between two statistics has its high watermark queried from the broker
///   instead, by a background thread with a client of its own (created from the same
///   configuration, without `group.id`, on first need), never on librdkafka's threads.
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
    watermarks: Watermarks,
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
    /// `config`; a copy of it (without `group.id`) is kept for the client that queries the
    /// high watermarks of paused partitions, created only if one is needed.
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
            watermarks: Watermarks::new(config),
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
            let end = self.watermarks.end(&lag);
            self.metrics.record_lag(
                KAFKA,
                lag.topic,
                group,
                Some(lag.partition),
                lag.messages(end),
            );
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
    /// High watermark (last stable offset under `read_committed`) in the statistics.
    pub(crate) end: i64,
    /// Committed offset (else the log start, see [`EventscopeContext`]).
    pub(crate) start: i64,
    /// The next offset librdkafka hands to the application (`app_offset`), `-1` if unknown.
    pub(crate) position: i64,
}

impl PartitionLag<'_> {
    /// Messages behind, up to `end`.
    pub(crate) fn messages(&self, end: i64) -> i64 {
        (end - self.start).max(0)
    }
}

/// How often a stalled partition's high watermark is queried, at most.
const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// How long one query may take.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(5);

/// High watermarks of partitions whose statistics stopped following them (SPEC §5: lag must
/// keep growing while a partition is stopped), queried off librdkafka's threads.
struct Watermarks {
    shared: Arc<Shared>,
    /// Requests to the query thread, started on first need; `None` before.
    requests: Mutex<Option<mpsc::Sender<(String, i32)>>>,
}

#[derive(Default)]
struct Shared {
    /// The configuration of the query client: the consumer's, without group and statistics.
    config: ClientConfig,
    state: Mutex<WatermarkState>,
    /// Set when the query client cannot be created: lag then stays as statistics report it.
    disabled: AtomicBool,
}

#[derive(Default)]
struct WatermarkState {
    /// The statistics' end offset and position of each partition at the previous callback.
    seen: HashMap<(String, i32), (i64, i64)>,
    /// Queried high watermarks, used while they are ahead of the statistics.
    queried: HashMap<(String, i32), i64>,
    /// Partitions with a query under way or queued.
    pending: HashSet<(String, i32)>,
    /// When each partition was last queried.
    last_query: HashMap<(String, i32), Instant>,
}

impl Watermarks {
    fn new(config: &ClientConfig) -> Self {
        let mut config = config.clone();
        for key in ["group.id", "group.instance.id", "statistics.interval.ms"] {
            config.remove(key);
        }
        Self {
            shared: Arc::new(Shared {
                config,
                ..Shared::default()
            }),
            requests: Mutex::new(None),
        }
    }

    /// The end offset to measure `lag` against: the statistics' one, or a queried one that is
    /// ahead of it. Asks for a query when the partition is behind and neither its end offset
    /// nor its position moved since the previous statistics: it may be paused, and librdkafka
    /// does not fetch (so does not learn the high watermark of) a paused partition.
    fn end(&self, lag: &PartitionLag<'_>) -> i64 {
        if self.shared.disabled.load(Ordering::Relaxed) {
            return lag.end;
        }
        let key = (lag.topic.to_owned(), lag.partition);
        let (end, query) = self
            .shared
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .observe(&key, lag, Instant::now());
        if query {
            self.request(key);
        }
        end
    }

    /// Queues a query, starting the query thread on first use; never blocks.
    fn request(&self, key: (String, i32)) {
        let mut requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        if requests.is_none() {
            let (tx, rx) = mpsc::channel();
            let shared = Arc::clone(&self.shared);
            let started = std::thread::Builder::new()
                .name("eventscope-watermarks".into())
                .spawn(move || shared.serve(rx));
            match started {
                Ok(_) => *requests = Some(tx),
                Err(error) => {
                    tracing::warn!(%error, "cannot start the watermark thread; lag of paused partitions will not grow");
                    self.shared.disabled.store(true, Ordering::Relaxed);
                    return;
                }
            }
        }
        if let Some(tx) = requests.as_ref() {
            if tx.send(key.clone()).is_err() {
                self.shared
                    .state
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .pending
                    .remove(&key);
            }
        }
    }

    /// Forgets revoked partitions.
    fn forget(&self, revoked: &[(String, i32)]) {
        let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        for key in revoked {
            state.seen.remove(key);
            state.queried.remove(key);
            state.last_query.remove(key);
        }
    }
}

impl WatermarkState {
    /// Takes in one partition's statistics at `now`: the end offset to use, and whether to
    /// query the partition's high watermark (then marked pending).
    fn observe(
        &mut self,
        key: &(String, i32),
        lag: &PartitionLag<'_>,
        now: Instant,
    ) -> (i64, bool) {
        let previous = self.seen.insert(key.clone(), (lag.end, lag.position));
        let end = match self.queried.get(key) {
            Some(&queried) if queried > lag.end => queried,
            Some(_) => {
                // The statistics caught up: they are current again.
                self.queried.remove(key);
                lag.end
            }
            None => lag.end,
        };
        let stalled = previous == Some((lag.end, lag.position)) && lag.messages(lag.end) > 0;
        let due = self
            .last_query
            .get(key)
            .is_none_or(|at| now.duration_since(*at) >= REFRESH_EVERY);
        let query = stalled && due && self.pending.insert(key.clone());
        if query {
            self.last_query.insert(key.clone(), now);
        }
        (end, query)
    }
}

impl Shared {
    /// The query thread: answers requests until the context (holding the sender) is dropped.
    fn serve(&self, requests: mpsc::Receiver<(String, i32)>) {
        let client: BaseConsumer = match self.config.create() {
            Ok(client) => client,
            Err(error) => {
                tracing::warn!(%error, "cannot create the watermark client; lag of paused partitions will not grow");
                self.disabled.store(true, Ordering::Relaxed);
                return;
            }
        };
        for key in requests {
            let (topic, partition) = &key;
            let result = client.fetch_watermarks(topic, *partition, REFRESH_TIMEOUT);
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            state.pending.remove(&key);
            match result {
                // Only partitions still tracked (not revoked meanwhile) keep a result.
                Ok((_low, high)) if high >= 0 && state.seen.contains_key(&key) => {
                    state.queried.insert(key, high);
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::debug!(%error, topic, partition, "querying the high watermark failed");
                }
            }
        }
    }
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
                end,
                start,
                position: int("app_offset").unwrap_or(-1),
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
        self.watermarks.forget(&revoked);
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
            .map(|l| (l.partition, l.messages(l.end)))
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
    fn a_stalled_partition_behind_gets_its_high_watermark_queried() {
        let key = ("orders".to_owned(), 0);
        let at = |end, start, position| PartitionLag {
            topic: "orders",
            partition: 0,
            end,
            start,
            position,
        };
        let mut state = WatermarkState::default();
        let t0 = Instant::now();
        // First sight, then moving: statistics are current, nothing to ask.
        assert_eq!(state.observe(&key, &at(10, 3, 5), t0), (10, false));
        assert_eq!(state.observe(&key, &at(10, 3, 6), t0), (10, false));
        // Behind and not moving (paused): ask once, not again while it is pending.
        assert_eq!(state.observe(&key, &at(10, 3, 6), t0), (10, true));
        assert_eq!(state.observe(&key, &at(10, 3, 6), t0), (10, false));
        // The answer is ahead of the statistics: it is the end until they catch up.
        state.pending.remove(&key);
        state.queried.insert(key.clone(), 16);
        assert_eq!(state.observe(&key, &at(10, 3, 6), t0), (16, false));
        let later = t0 + REFRESH_EVERY;
        assert_eq!(state.observe(&key, &at(10, 3, 6), later), (16, true));
        assert_eq!(state.observe(&key, &at(16, 3, 6), later), (16, false));
        assert!(state.queried.is_empty());
        // Caught up and idle: nothing to ask.
        let mut idle = WatermarkState::default();
        assert_eq!(idle.observe(&key, &at(10, 10, 10), t0), (10, false));
        assert_eq!(idle.observe(&key, &at(10, 10, 10), later), (10, false));
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
