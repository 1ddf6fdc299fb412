//! Prometheus metrics: the catalogue of SPEC §4 in a [`prometheus::Registry`].
//!
//! A [`Metrics`] handle is cheap to clone and shared by every layer and driver of a service. It
//! registers the families in the registry you pass (or its own), bounds the number of distinct
//! destinations per family, and keeps the lag gauges as SPEC §5 defines them.
//!
//! # Example
//!
//! ```
//! use eventscope::metrics::Metrics;
//!
//! let registry = prometheus::Registry::new();
//! let metrics = Metrics::builder().registry(registry.clone()).max_destinations(100).build()?;
//! metrics.record_duplicate("kafka", "orders", "billing");
//! assert!(metrics.encode().contains("messaging_consumer_duplicates_total"));
//! # Ok::<(), prometheus::Error>(())
//! ```

mod cache;
mod catalogue;
mod lag;

use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};

use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

pub use catalogue::{
    label, name, MetricFamily, MetricKind, CATALOGUE, DURATION_BUCKETS, QUEUE_TIME_BUCKETS,
};

use crate::sync::RecoverRw;
use cache::LabelCache;

/// The destination label used once the cardinality bound is reached.
pub const OTHER_DESTINATION: &str = "_other";
/// Default bound on distinct destinations per metric family.
pub const DEFAULT_MAX_DESTINATIONS: usize = 1000;
/// `messaging.operation.name` of a publish.
pub const OPERATION_SEND: &str = "send";
/// `messaging.operation.name` of processing a message (spans only: the process duration has a
/// family of its own).
pub const OPERATION_PROCESS: &str = "process";
/// `messaging.operation.name` of a commit / ack / nack / term made by a consumer.
pub const OPERATION_SETTLE: &str = "settle";

/// Shared handle to eventscope's metric families.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    families: Families,
    destinations: DestinationLimit,
    publishers: LabelCache<PublishInstruments>,
    consumers: LabelCache<ConsumerInstruments>,
    partitions: LabelCache<PartitionState>,
    consumer_partitions: LabelCache<ConsumerPartition>,
    /// Bumped whenever cached handles are evicted, so memoised lookups are redone.
    generation: AtomicU64,
}

struct Families {
    operation_duration: HistogramVec,
    sent: IntCounterVec,
    consumed: IntCounterVec,
    process_duration: HistogramVec,
    queue_time: HistogramVec,
    in_flight: IntGaugeVec,
    lag_messages: IntGaugeVec,
    lag_seconds: GaugeVec,
    last_timestamp: GaugeVec,
    retries: IntCounterVec,
    dead_lettered: IntCounterVec,
    duplicates: IntCounterVec,
    invalid: IntCounterVec,
    rebalances: IntCounterVec,
    dropped: IntCounterVec,
    partition_stopped: IntGaugeVec,
    unacked: IntGaugeVec,
    reconnects: IntCounterVec,
    connected: IntGaugeVec,
    trace_invalid: IntCounterVec,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("max_destinations", &self.inner.destinations.max)
            .finish_non_exhaustive()
    }
}

impl Default for Metrics {
    /// Metrics in a registry of their own.
    fn default() -> Self {
        Self::builder()
            .build()
            .expect("a fresh registry has no conflicting families")
    }
}

/// Builds [`Metrics`]; see [`Metrics::builder`].
#[derive(Debug, Default)]
pub struct MetricsBuilder {
    registry: Option<Registry>,
    max_destinations: Option<usize>,
}

impl MetricsBuilder {
    /// Registers the families in `registry` instead of a new one.
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// At most `max` distinct destinations per family; the rest are recorded as
    /// `messaging_destination_name="_other"`. Default 1000.
    pub fn max_destinations(mut self, max: usize) -> Self {
        self.max_destinations = Some(max);
        self
    }

    /// Registers every family of the [`CATALOGUE`].
    ///
    /// # Errors
    ///
    /// When the registry already holds a family of the same name.
    pub fn build(self) -> Result<Metrics, prometheus::Error> {
        let registry = self.registry.unwrap_or_default();
        let families = Families::register(&registry)?;
        Ok(Metrics {
            inner: Arc::new(Inner {
                registry,
                families,
                destinations: DestinationLimit::new(
                    self.max_destinations.unwrap_or(DEFAULT_MAX_DESTINATIONS),
                ),
                publishers: LabelCache::default(),
                consumers: LabelCache::default(),
                partitions: LabelCache::default(),
                consumer_partitions: LabelCache::default(),
                generation: AtomicU64::new(0),
            }),
        })
    }
}

impl Families {
    fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        use catalogue as c;
        fn histogram(
            r: &Registry,
            f: MetricFamily,
            buckets: &[f64],
        ) -> Result<HistogramVec, prometheus::Error> {
            let vec = HistogramVec::new(
                HistogramOpts::new(f.name, f.help).buckets(buckets.to_vec()),
                f.labels,
            )?;
            r.register(Box::new(vec.clone()))?;
            Ok(vec)
        }
        fn counter(r: &Registry, f: MetricFamily) -> Result<IntCounterVec, prometheus::Error> {
            // The client library appends nothing: the catalogue names already end in `_total`.
            let vec = IntCounterVec::new(Opts::new(f.name, f.help), f.labels)?;
            r.register(Box::new(vec.clone()))?;
            Ok(vec)
        }
        fn int_gauge(r: &Registry, f: MetricFamily) -> Result<IntGaugeVec, prometheus::Error> {
            let vec = IntGaugeVec::new(Opts::new(f.name, f.help), f.labels)?;
            r.register(Box::new(vec.clone()))?;
            Ok(vec)
        }
        fn gauge(r: &Registry, f: MetricFamily) -> Result<GaugeVec, prometheus::Error> {
            let vec = GaugeVec::new(Opts::new(f.name, f.help), f.labels)?;
            r.register(Box::new(vec.clone()))?;
            Ok(vec)
        }
        Ok(Self {
            operation_duration: histogram(registry, c::OPERATION_DURATION, DURATION_BUCKETS)?,
            sent: counter(registry, c::SENT_MESSAGES)?,
            consumed: counter(registry, c::CONSUMED_MESSAGES)?,
            process_duration: histogram(registry, c::PROCESS_DURATION, DURATION_BUCKETS)?,
            queue_time: histogram(registry, c::QUEUE_TIME, QUEUE_TIME_BUCKETS)?,
            in_flight: int_gauge(registry, c::IN_FLIGHT)?,
            lag_messages: int_gauge(registry, c::LAG_MESSAGES)?,
            lag_seconds: gauge(registry, c::LAG_SECONDS)?,
            last_timestamp: gauge(registry, c::LAST_MESSAGE_TIMESTAMP)?,
            retries: counter(registry, c::RETRIES)?,
            dead_lettered: counter(registry, c::DEAD_LETTERED)?,
            duplicates: counter(registry, c::DUPLICATES)?,
            invalid: counter(registry, c::INVALID_MESSAGES)?,
            rebalances: counter(registry, c::REBALANCES)?,
            dropped: counter(registry, c::DROPPED_MESSAGES)?,
            partition_stopped: int_gauge(registry, c::PARTITION_STOPPED)?,
            unacked: int_gauge(registry, c::UNACKED_MESSAGES)?,
            reconnects: counter(registry, c::RECONNECTS)?,
            connected: int_gauge(registry, c::CONNECTED)?,
            trace_invalid: counter(registry, c::TRACE_CONTEXT_INVALID)?,
        })
    }
}

impl Metrics {
    /// Metrics in a registry of their own, at most 1000 destinations per family.
    pub fn new() -> Self {
        Self::default()
    }

    /// Configures the registry and the cardinality bound.
    pub fn builder() -> MetricsBuilder {
        MetricsBuilder::default()
    }

    /// The registry the families live in.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// The registry's text exposition (what `/metrics` serves).
    pub fn encode(&self) -> String {
        encode_registry(&self.inner.registry)
    }

    /// A handler retried a message.
    pub(crate) fn record_retry(
        &self,
        system: &str,
        destination: &str,
        group: &str,
        error_type: &str,
    ) {
        let destination = self.inner.destinations.admit(destination);
        self.inner
            .families
            .retries
            .with_label_values(&[system, &destination, group, error_type])
            .inc();
    }

    /// A message was routed to its dead-letter destination.
    pub(crate) fn record_dead_letter(
        &self,
        system: &str,
        destination: &str,
        group: &str,
        error_type: &str,
    ) {
        let destination = self.inner.destinations.admit(destination);
        self.inner
            .families
            .dead_lettered
            .with_label_values(&[system, &destination, group, error_type])
            .inc();
    }

    /// A delivery was skipped because it was already processed.
    pub fn record_duplicate(&self, system: &str, destination: &str, group: &str) {
        let destination = self.inner.destinations.admit(destination);
        self.inner
            .families
            .duplicates
            .with_label_values(&[system, &destination, group])
            .inc();
    }

    /// A message was rejected before the handler; `reason` is `schema` or `decode`.
    pub fn record_invalid(&self, system: &str, destination: &str, group: &str, reason: &str) {
        let destination = self.inner.destinations.admit(destination);
        self.inner
            .families
            .invalid
            .with_label_values(&[system, &destination, group, reason])
            .inc();
    }

    /// A consumer-group rebalance was seen.
    pub(crate) fn record_rebalance(&self, system: &str, group: &str) {
        self.inner
            .families
            .rebalances
            .with_label_values(&[system, group])
            .inc();
    }

    /// A consumer's reconnect counter: created at 0 when the consumer runs, so a dashboard
    /// has the series before the first reconnect.
    pub(crate) fn reconnects_counter(&self, system: &str, group: &str) -> IntCounter {
        self.inner
            .families
            .reconnects
            .with_label_values(&[system, group])
    }

    /// The broker removed `count` messages of a partition before `group` received them
    /// (`partition` is `None` for brokers without partitions).
    pub(crate) fn record_dropped(
        &self,
        system: &str,
        destination: &str,
        partition: Option<i32>,
        group: &str,
        count: u64,
    ) {
        self.dropped_counter(system, destination, partition, group)
            .inc_by(count);
    }

    /// The dropped-messages counter of one partition and group, for adapters that count on a
    /// hot path; resolving it creates the series at 0.
    pub(crate) fn dropped_counter(
        &self,
        system: &str,
        destination: &str,
        partition: Option<i32>,
        group: &str,
    ) -> IntCounter {
        let destination = self.inner.destinations.admit(destination);
        let partition = partition.map(|p| p.to_string()).unwrap_or_default();
        self.inner
            .families
            .dropped
            .with_label_values(&[system, &destination, &partition, group])
    }

    /// A consumer settled messages of `destination` (a commit, ack, nack or term) in `seconds`;
    /// `error_type` is empty when it succeeded.
    pub(crate) fn record_settle(
        &self,
        system: &str,
        destination: &str,
        error_type: &str,
        seconds: f64,
    ) {
        let destination = self.inner.destinations.admit(destination);
        self.inner
            .families
            .operation_duration
            .with_label_values(&[system, OPERATION_SETTLE, &destination, error_type])
            .observe(seconds);
    }

    /// Shows (`stopped`) or removes the `messaging_consumer_partition_stopped` series of a
    /// partition.
    pub(crate) fn set_partition_stopped(
        &self,
        system: &str,
        destination: &str,
        group: &str,
        partition: Option<i32>,
        stopped: bool,
    ) {
        let destination = self.inner.destinations.admit(destination);
        let partition = partition.map(|p| p.to_string()).unwrap_or_default();
        let values = [system, &*destination, &*partition, group];
        let gauge = &self.inner.families.partition_stopped;
        if stopped {
            gauge.with_label_values(&values).set(1);
        } else {
            // Absent series are fine: removal is idempotent for the caller.
            let _ = gauge.remove_label_values(&values);
        }
    }

    /// Messages of `destination` delivered to `group` and not yet settled, as the broker counts
    /// them.
    pub(crate) fn record_unacked(&self, system: &str, destination: &str, group: &str, count: i64) {
        let destination = self.inner.destinations.admit(destination);
        self.inner
            .families
            .unacked
            .with_label_values(&[system, &destination, group])
            .set(count.max(0));
    }

    /// Removes the unacked series of a destination (its consumer returned).
    pub(crate) fn remove_unacked(&self, system: &str, destination: &str, group: &str) {
        let destination = self.inner.destinations.admit(destination);
        // Absent series are fine: removal is idempotent for the caller.
        let _ = self
            .inner
            .families
            .unacked
            .remove_label_values(&[system, &destination, group]);
    }

    /// Shows whether a consumer is connected (`Some`), or removes its series (`None`).
    pub(crate) fn set_connected(&self, system: &str, group: &str, connected: Option<bool>) {
        let gauge = &self.inner.families.connected;
        match connected {
            Some(up) => gauge.with_label_values(&[system, group]).set(i64::from(up)),
            None => {
                let _ = gauge.remove_label_values(&[system, group]);
            }
        }
    }

    /// An incoming trace context was unusable.
    pub(crate) fn record_trace_context_invalid(&self, system: &str) {
        self.inner
            .families
            .trace_invalid
            .with_label_values(&[system])
            .inc();
    }

    /// `count` headers of a message could not be read and were skipped (the message itself was
    /// processed). Such a header may have been its trace context, so the message counts once in
    /// `eventscope_trace_context_invalid_total`; nothing is recorded for 0.
    pub(crate) fn record_unreadable_headers(&self, system: &str, count: usize) {
        if count > 0 {
            self.record_trace_context_invalid(system);
        }
    }

    pub(crate) fn publisher(
        &self,
        system: &'static str,
        destination: &str,
    ) -> Arc<PublishInstruments> {
        let inner = &self.inner;
        let make = |destination: &str| PublishInstruments {
            system,
            destination: destination.into(),
            ok_duration: inner.families.operation_duration.with_label_values(&[
                system,
                OPERATION_SEND,
                destination,
                "",
            ]),
            ok_sent: inner
                .families
                .sent
                .with_label_values(&[system, destination, ""]),
            durations: inner.families.operation_duration.clone(),
            sent: inner.families.sent.clone(),
            span_name: std::sync::OnceLock::new(),
        };
        if let Some(hit) = inner.publishers.get(&[system, destination], 0) {
            return hit;
        }
        let label = inner.destinations.admit(destination);
        inner
            .publishers
            .get_or_insert_with(&[system, &label], 0, || make(&label))
    }

    pub(crate) fn consumer(
        &self,
        system: &'static str,
        destination: &str,
        group: &str,
    ) -> Arc<ConsumerInstruments> {
        let inner = &self.inner;
        if let Some(hit) = inner.consumers.get(&[system, destination, group], 0) {
            return hit;
        }
        let label = inner.destinations.admit(destination);
        let values = [system, &*label, group];
        inner.consumers.get_or_insert_with(&values, 0, || {
            let f = &inner.families;
            ConsumerInstruments {
                system,
                destination: Arc::from(&*label),
                group: group.into(),
                consumed: f.consumed.with_label_values(&values),
                queue_time: f.queue_time.with_label_values(&values),
                in_flight: f.in_flight.with_label_values(&values),
                ok_duration: f
                    .process_duration
                    .with_label_values(&[system, &label, group, ""]),
                durations: f.process_duration.clone(),
                span_name: std::sync::OnceLock::new(),
            }
        })
    }

    pub(crate) fn partition(
        &self,
        system: &str,
        destination: &str,
        group: &str,
        partition: Option<i32>,
    ) -> Arc<PartitionState> {
        let inner = &self.inner;
        let slot = partition_slot(partition);
        if let Some(hit) = inner.partitions.get(&[system, destination, group], slot) {
            return hit;
        }
        let label = inner.destinations.admit(destination);
        inner
            .partitions
            .get_or_insert_with(&[system, &label, group], slot, || {
                let partition_label = partition.map(|p| p.to_string()).unwrap_or_default();
                let values = [system, &*label, &*partition_label, group];
                let f = &inner.families;
                PartitionState {
                    last_timestamp: f.last_timestamp.with_label_values(&values),
                    lag_messages: f.lag_messages.with_label_values(&values),
                    lag_seconds: f.lag_seconds.with_label_values(&values),
                    last_created_nanos: AtomicU64::new(0),
                    first_behind_nanos: AtomicU64::new(0),
                }
            })
    }

    /// Consumer instruments and partition state in one lookup: the process layer's hot path.
    pub(crate) fn consumer_partition(
        &self,
        system: &'static str,
        destination: &str,
        group: &str,
        partition: Option<i32>,
    ) -> Arc<ConsumerPartition> {
        let slot = partition_slot(partition);
        let cache = &self.inner.consumer_partitions;
        if let Some(hit) = cache.get(&[system, destination, group], slot) {
            return hit;
        }
        let consumer = self.consumer(system, destination, group);
        let state = self.partition(system, &consumer.destination, group, partition);
        let label = Arc::clone(&consumer.destination);
        cache.get_or_insert_with(&[system, &label, group], slot, || ConsumerPartition {
            consumer,
            partition: state,
        })
    }
}

/// A layer's memo of its last metric-handle lookup: the same destination (and group and
/// partition) as the message before costs a comparison instead of a locked hash lookup.
pub(crate) struct Memo<T> {
    last: Option<MemoEntry<T>>,
}

struct MemoEntry<T> {
    generation: u64,
    system: &'static str,
    destination: Box<str>,
    group: Box<str>,
    partition: Option<i32>,
    value: Arc<T>,
}

impl<T> Default for Memo<T> {
    fn default() -> Self {
        Self { last: None }
    }
}

impl<T> Clone for Memo<T> {
    /// A clone starts empty: memos are per service instance.
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl<T> fmt::Debug for Memo<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Memo")
    }
}

impl<T> Memo<T> {
    pub(crate) fn get_or(
        &mut self,
        metrics: &Metrics,
        system: &'static str,
        destination: &str,
        group: &str,
        partition: Option<i32>,
        lookup: impl FnOnce() -> Arc<T>,
    ) -> Arc<T> {
        let generation = metrics
            .inner
            .generation
            .load(std::sync::atomic::Ordering::Acquire);
        if let Some(last) = &self.last {
            if last.generation == generation
                && last.partition == partition
                && std::ptr::eq(last.system, system)
                && crate::text::same(last.destination.as_bytes(), destination.as_bytes())
                && crate::text::same(last.group.as_bytes(), group.as_bytes())
            {
                return Arc::clone(&last.value);
            }
        }
        let value = lookup();
        self.last = Some(MemoEntry {
            generation,
            system,
            destination: destination.into(),
            group: group.into(),
            partition,
            value: Arc::clone(&value),
        });
        value
    }
}

/// Text exposition of any registry.
pub(crate) fn encode_registry(registry: &Registry) -> String {
    prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap_or_else(|e| format!("# eventscope: encoding failed: {e}\n"))
}

fn partition_slot(partition: Option<i32>) -> i64 {
    partition.map_or(-1, i64::from)
}

/// Cached metric children of one publisher destination.
pub(crate) struct PublishInstruments {
    pub(crate) system: &'static str,
    pub(crate) destination: Arc<str>,
    pub(crate) ok_duration: Histogram,
    pub(crate) ok_sent: IntCounter,
    /// The families, for a failure's `error_type` children (so a publish in flight holds no
    /// handle of the whole `Metrics`).
    durations: HistogramVec,
    sent: IntCounterVec,
    /// The `send` spans' name for this destination, kept by the span module (its `NameSlot`).
    pub(crate) span_name: std::sync::OnceLock<Option<&'static str>>,
}

impl PublishInstruments {
    /// A failed publish: its duration and its count under `error_type`.
    pub(crate) fn record_error(&self, error_type: &str, seconds: f64) {
        let (system, destination) = (self.system, &*self.destination);
        self.durations
            .with_label_values(&[system, OPERATION_SEND, destination, error_type])
            .observe(seconds);
        self.sent
            .with_label_values(&[system, destination, error_type])
            .inc();
    }
}

/// Cached metric children of one consumer (system, destination, group).
pub(crate) struct ConsumerInstruments {
    pub(crate) system: &'static str,
    pub(crate) destination: Arc<str>,
    /// Shared with the spans' `messaging.consumer.group.name`, so a recording span copies nothing.
    pub(crate) group: Arc<str>,
    pub(crate) consumed: IntCounter,
    pub(crate) queue_time: Histogram,
    pub(crate) in_flight: IntGauge,
    pub(crate) ok_duration: Histogram,
    /// The family, for a failure's `error_type` child.
    durations: HistogramVec,
    /// The `process` spans' name for this destination, kept by the span module (its `NameSlot`).
    pub(crate) span_name: std::sync::OnceLock<Option<&'static str>>,
}

impl ConsumerInstruments {
    /// `messaging_process_duration_seconds` under a failure's `error_type`.
    pub(crate) fn error_duration(&self, error_type: &str) -> Histogram {
        self.durations
            .with_label_values(&[self.system, &self.destination, &self.group, error_type])
    }
}

/// What the process layer records per message.
pub(crate) struct ConsumerPartition {
    pub(crate) consumer: Arc<ConsumerInstruments>,
    pub(crate) partition: Arc<PartitionState>,
}

/// Per-partition state behind the lag gauges.
pub(crate) struct PartitionState {
    last_timestamp: Gauge,
    lag_messages: IntGauge,
    lag_seconds: Gauge,
    /// Creation time of the last message processed, ns since the epoch; 0 = none yet.
    last_created_nanos: AtomicU64,
    /// When the partition was first seen behind, ns since the epoch; 0 = not behind.
    first_behind_nanos: AtomicU64,
}

impl PartitionState {
    /// Records that a message created at `nanos` (since the epoch) was processed.
    pub(crate) fn processed(&self, nanos: u64) {
        self.last_created_nanos
            .fetch_max(nanos, std::sync::atomic::Ordering::Relaxed);
        self.last_timestamp.set(nanos as f64 / 1e9);
    }
}

pub(crate) use crate::clock::unix_nanos;

/// Bounds the distinct destination label values.
struct DestinationLimit {
    max: usize,
    seen: RwLock<std::collections::HashSet<Box<str>>>,
}

impl DestinationLimit {
    fn new(max: usize) -> Self {
        Self {
            max,
            seen: RwLock::default(),
        }
    }

    fn admit<'a>(&self, destination: &'a str) -> std::borrow::Cow<'a, str> {
        use std::borrow::Cow;
        {
            let seen = self.seen.read_locked();
            if seen.contains(destination) {
                return Cow::Borrowed(destination);
            }
            // Over the bound nothing new is admitted: no write lock for such destinations.
            if seen.len() >= self.max {
                return Cow::Borrowed(OTHER_DESTINATION);
            }
        }
        let mut seen = self.seen.write_locked();
        if seen.contains(destination) {
            Cow::Borrowed(destination)
        } else if seen.len() < self.max {
            seen.insert(destination.into());
            Cow::Borrowed(destination)
        } else {
            Cow::Borrowed(OTHER_DESTINATION)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn same_text_is_equality() {
        let texts = [
            "",
            "a",
            "orders",
            "orders.",
            "orders-eu-west-1",
            "orders-eu-west-2",
            "ordérs",
        ];
        for a in texts {
            for b in texts {
                assert_eq!(
                    crate::text::same(a.as_bytes(), b.as_bytes()),
                    a == b,
                    "{a:?} {b:?}"
                );
            }
        }
    }

    use super::*;

    #[test]
    fn destinations_beyond_the_bound_become_other() {
        let metrics = Metrics::builder().max_destinations(2).build().unwrap();
        for dest in ["a", "b", "c", "d", "a"] {
            metrics.publisher("kafka", dest).ok_sent.inc();
        }
        let text = metrics.encode();
        assert!(text.contains(r#"messaging_destination_name="a""#));
        assert!(text.contains(r#"messaging_destination_name="b""#));
        assert!(!text.contains(r#"messaging_destination_name="c""#));
        assert!(text.contains(
            r#"messaging_client_sent_messages_total{error_type="",messaging_destination_name="_other",messaging_system="kafka"} 2"#
        ));
    }

    #[test]
    fn registering_twice_in_one_registry_is_an_error() {
        let registry = Registry::new();
        Metrics::builder()
            .registry(registry.clone())
            .build()
            .unwrap();
        assert!(Metrics::builder().registry(registry).build().is_err());
    }

    #[test]
    fn catalogue_names_are_unique_and_counters_end_in_total() {
        let mut names: Vec<_> = CATALOGUE.iter().map(|f| f.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), CATALOGUE.len());
        for f in CATALOGUE {
            assert_eq!(
                f.kind == MetricKind::Counter,
                f.name.ends_with("_total"),
                "{}",
                f.name
            );
        }
    }
}
