//! The Kafka lag source (SPEC §5): librdkafka statistics turned into offset lag per assigned
//! partition, and the high watermarks of paused partitions, which statistics stop following,
//! queried off librdkafka's threads.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::Value;

use super::config::Settings;
use crate::consume::Reporter;
use crate::sync::Recover;

/// Lag from statistics, reported once the consumer runs (statistics before that have nobody to
/// report to).
pub(crate) struct Lag {
    settings: Arc<Settings>,
    watermarks: Watermarks,
    reporter: OnceLock<Reporter>,
}

impl Lag {
    pub(crate) fn new(config: &ClientConfig, settings: Arc<Settings>) -> Self {
        Self {
            settings,
            watermarks: Watermarks::new(config),
            reporter: OnceLock::new(),
        }
    }

    /// Reports into `reporter` from now on (the consumer started running).
    pub(crate) fn report_to(&self, reporter: Reporter) {
        let _ = self.reporter.set(reporter);
    }

    /// Reports the lag of every partition in a librdkafka statistics document.
    pub(crate) fn record(&self, statistics: &[u8]) {
        let Some(reporter) = self.reporter.get() else {
            return;
        };
        let stats = match serde_json::from_slice::<Value>(statistics) {
            Ok(stats) => stats,
            Err(error) => {
                tracing::warn!(%error, "unreadable librdkafka statistics");
                return;
            }
        };
        if let Some(up) = connected(&stats) {
            reporter.connected(up);
        }
        for lag in partition_lags(&stats, &self.settings) {
            let end = self.watermarks.end(&lag);
            reporter.lag(lag.topic, Some(lag.partition), lag.messages(end));
        }
    }

    /// Forgets revoked partitions.
    pub(crate) fn forget(&self, revoked: &[(String, i32)]) {
        self.watermarks.forget(revoked);
    }
}

/// The lag of one partition, as read from statistics.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct PartitionLag<'a> {
    pub(crate) topic: &'a str,
    pub(crate) partition: i32,
    /// High watermark (last stable offset under `read_committed`) in the statistics.
    pub(crate) end: i64,
    /// Committed offset (else the log start, see [`EventscopeContext`](super::EventscopeContext)).
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
            .locked()
            .observe(&key, lag, Instant::now());
        if query {
            self.request(key);
        }
        end
    }

    /// Queues a query, starting the query thread on first use; never blocks.
    fn request(&self, key: (String, i32)) {
        let mut requests = self.requests.locked();
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
                self.shared.state.locked().pending.remove(&key);
            }
        }
    }

    /// Forgets revoked partitions.
    fn forget(&self, revoked: &[(String, i32)]) {
        let mut state = self.shared.state.locked();
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
            let mut state = self.state.locked();
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

/// Whether any broker of the cluster is up, by the statistics' `brokers` (the bootstrap and
/// internal entries, node id `-1`, do not count); `None` when the document has none.
pub(crate) fn connected(stats: &Value) -> Option<bool> {
    let brokers = stats.get("brokers")?.as_object()?;
    let known: Vec<&Value> = brokers
        .values()
        .filter(|b| {
            b.get("nodeid")
                .and_then(Value::as_i64)
                .is_some_and(|id| id >= 0)
        })
        .collect();
    if known.is_empty() {
        // Not connected yet or no longer: only the bootstrap entries are left.
        return Some(
            brokers
                .values()
                .any(|b| b.get("state").and_then(Value::as_str) == Some("UP")),
        );
    }
    Some(
        known
            .iter()
            .any(|b| b.get("state").and_then(Value::as_str) == Some("UP")),
    )
}

/// Lag per assigned, actively fetched partition; see [`EventscopeContext`](super::EventscopeContext).
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::config::Settings;

    fn settings(read_committed: bool, reset_earliest: bool) -> Settings {
        Settings {
            group: Arc::from("g"),
            read_committed,
            reset_earliest,
            endpoint: Arc::new(crate::kafka::config::Endpoint::for_tests()),
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
    fn connected_when_a_known_broker_is_up() {
        let doc = |states: &[(i64, &str)]| {
            let brokers: serde_json::Map<String, Value> = states
                .iter()
                .enumerate()
                .map(|(i, (id, state))| {
                    (
                        format!("b{i}"),
                        serde_json::json!({"nodeid": id, "state": state}),
                    )
                })
                .collect();
            serde_json::json!({ "brokers": brokers })
        };
        assert_eq!(connected(&doc(&[(-1, "UP"), (1, "UP")])), Some(true));
        assert_eq!(connected(&doc(&[(-1, "UP"), (1, "DOWN")])), Some(false));
        assert_eq!(connected(&doc(&[(1, "CONNECT"), (2, "UP")])), Some(true));
        assert_eq!(connected(&doc(&[(-1, "TRY_CONNECT")])), Some(false));
        assert_eq!(connected(&serde_json::json!({})), None);
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
