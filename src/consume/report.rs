//! What the consumer core and the adapters report through: the [`Core`] every mode's loop
//! shares (the one settle path, rebalances, partition series), and the [`Reporter`] an adapter
//! is opened with.
//!
//! `Core` is `pub` inside a private module: the sealed `Run` trait names it, and nothing
//! outside the crate can.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::{Options, Spans};
use crate::classify::OTHER;
use crate::metrics::Metrics;
use crate::sync::Recover;

/// Who the core reports as, and how: what every mode's loop shares.
#[derive(Debug)]
pub struct Core {
    pub(crate) metrics: Metrics,
    pub(crate) system: &'static str,
    pub(crate) group: Arc<str>,
    pub(crate) options: Options,
    pub(crate) spans: Spans,
    pub(crate) reporter: Reporter,
}

impl Core {
    /// The one settle path: a commit / ack / nack / term of `destination` that started at
    /// `started` and took `elapsed`, `failed` when the broker refused it. Timed in
    /// `messaging_client_operation_duration_seconds{messaging_operation_name="settle"}` and,
    /// when enabled, a `settle {destination}` CLIENT span (SPEC §3).
    pub(crate) fn settled(
        &self,
        destination: &str,
        started: SystemTime,
        elapsed: Duration,
        failed: bool,
    ) {
        let error_type = failed.then_some(OTHER);
        self.metrics.record_settle(
            self.system,
            destination,
            error_type.unwrap_or(""),
            elapsed.as_secs_f64(),
        );
        if !self.spans.settle {
            return;
        }
        let start = crate::span::SpanStart {
            operation: crate::span::OP_SETTLE,
            kind: opentelemetry::trace::SpanKind::Client,
            system: self.system,
            destination,
            label: None,
            message_id: None,
            conversation_id: None,
            body_size: None,
            partition: None,
            group: Some(&self.group),
            group_label: None,
            batch_size: None,
            name_slot: None,
        };
        let span = opentelemetry::Context::map_current(|parent| {
            self.spans.tracer.start_at(&start, parent, started)
        });
        span.describe(&start, |_| {});
        let span = span.into_ending();
        if let Some(error_type) = error_type {
            span.fail(error_type);
        }
        span.end_at(started + elapsed);
    }

    /// Partitions are ours after a rebalance (SPEC §4: counted per group).
    pub(crate) fn assigned(&self) {
        self.metrics.record_rebalance(self.system, &self.group);
    }

    /// Partition `partition` of `topic` is no longer ours: its series go (SPEC §5).
    pub(crate) fn revoked(&self, topic: &str, partition: i32) {
        self.reporter.remove_partition(topic, Some(partition));
    }

    /// Shows or removes a partition's `messaging_consumer_partition_stopped` series.
    pub(crate) fn stopped(&self, topic: &str, partition: i32, stopped: bool) {
        self.metrics.set_partition_stopped(
            self.system,
            topic,
            &self.group,
            Some(partition),
            stopped,
        );
    }
}

/// A lag series: destination and partition.
type Series = (Arc<str>, Option<i32>);

/// Where an adapter reports what only the broker knows, for its consumer's system and group.
///
/// Lag series reported here are removed by the core when their partition is revoked and when
/// the consumer returns; a report that arrives after the consumer returned (a broker client's
/// statistics thread outliving it) is ignored, so no series comes back.
#[derive(Clone)]
pub struct Reporter {
    metrics: Metrics,
    system: &'static str,
    group: Arc<str>,
    reconnects: prometheus::IntCounter,
    /// The gauges reported. Every gauge is written under this lock, so none is written after
    /// [`remove_all`](Self::remove_all).
    reported: Arc<Mutex<Reported>>,
}

/// The gauge series a [`Reporter`] wrote, to remove them when the consumer returns.
#[derive(Default)]
struct Reported {
    /// The consumer returned: nothing is reported any more.
    closed: bool,
    /// Lag series.
    series: HashSet<Series>,
    /// The destinations whose unacked count was reported.
    unacked: HashSet<Arc<str>>,
}

impl fmt::Debug for Reporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reporter")
            .field("system", &self.system)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl Reporter {
    pub(crate) fn new(metrics: Metrics, system: &'static str, group: Arc<str>) -> Self {
        Self {
            reconnects: metrics.reconnects_counter(system, &group),
            metrics,
            system,
            group,
            reported: Arc::default(),
        }
    }

    /// The consumer group reported under.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The lag of a partition (`None` for brokers without partitions) in messages: offsets
    /// behind (Kafka), ready messages (RabbitMQ), pending (JetStream). Negative values are
    /// ignored; `lag_seconds` follows SPEC §5.
    pub fn lag(&self, destination: &str, partition: Option<i32>, messages: i64) {
        if messages < 0 || partition.is_some_and(|p| p < 0) {
            return;
        }
        let mut reported = self.reported.locked();
        if reported.closed {
            return;
        }
        reported.series.insert((Arc::from(destination), partition));
        self.metrics
            .record_lag(self.system, destination, &self.group, partition, messages);
    }

    /// Whether the consumer is connected to its broker now (`messaging_consumer_connected`):
    /// report `false` while the client cannot reach the broker and retries, so an outage
    /// shows (and alerts) even when the lag cannot be read.
    pub fn connected(&self, connected: bool) {
        let reported = self.reported.locked();
        if reported.closed {
            return;
        }
        self.metrics
            .set_connected(self.system, &self.group, Some(connected));
        drop(reported);
    }

    /// The broker removed `count` messages before this consumer received them (retention
    /// overflow, a slow consumer's drops).
    pub fn dropped(&self, destination: &str, partition: Option<i32>, count: u64) {
        self.metrics
            .record_dropped(self.system, destination, partition, &self.group, count);
    }

    /// Messages of `destination` delivered to this consumer and not yet settled, as the broker
    /// counts them (JetStream `num_ack_pending`); negative values are ignored. The series is
    /// removed when the consumer returns.
    pub fn unacked(&self, destination: &str, messages: i64) {
        if messages < 0 {
            return;
        }
        let mut reported = self.reported.locked();
        if reported.closed {
            return;
        }
        reported.unacked.insert(Arc::from(destination));
        self.metrics
            .record_unacked(self.system, destination, &self.group, messages);
    }

    /// `count` headers of a message could not be read and were skipped (the message itself is
    /// processed); see `eventscope_trace_context_invalid_total`.
    pub fn unreadable_headers(&self, count: usize) {
        self.metrics.record_unreadable_headers(self.system, count);
    }

    /// The consumer lost its connection to the broker and restored it `count` times more: it
    /// consumes again. Counted in `messaging_consumer_reconnects_total` (per system and
    /// group), which reads 0 for a consumer that never reconnected (the series exists from the
    /// consumer's start). Log the loss and the recovery too: the counter says how often, the
    /// log says why.
    pub fn reconnected(&self, count: u64) {
        self.reconnects.inc_by(count);
    }

    /// Removes a partition's series (it was revoked).
    pub(crate) fn remove_partition(&self, destination: &str, partition: Option<i32>) {
        let mut reported = self.reported.locked();
        reported.series.remove(&(Arc::from(destination), partition));
        self.metrics
            .remove_partition(self.system, destination, &self.group, partition);
    }

    /// Removes every series reported (the consumer returned).
    pub(crate) fn remove_all(&self) {
        let mut reported = self.reported.locked();
        reported.closed = true;
        self.metrics.set_connected(self.system, &self.group, None);
        for (destination, partition) in reported.series.drain() {
            self.metrics
                .remove_partition(self.system, &destination, &self.group, partition);
        }
        for destination in reported.unacked.drain() {
            self.metrics
                .remove_unacked(self.system, &destination, &self.group);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_reported_after_the_consumer_returned() {
        const FAMILIES: [&str; 3] = [
            "messaging_consumer_connected{",
            "messaging_consumer_lag_messages{",
            "messaging_consumer_unacked_messages{",
        ];
        let metrics = Metrics::new();
        let reporter = Reporter::new(metrics.clone(), "kafka", Arc::from("billing"));
        reporter.connected(true);
        reporter.lag("orders", Some(0), 5);
        reporter.unacked("orders", 2);
        let text = metrics.encode();
        for family in FAMILIES {
            assert!(text.contains(family), "{family} reported:\n{text}");
        }

        reporter.remove_all();
        // A broker client's statistics thread reporting once more after the consumer returned.
        reporter.connected(false);
        reporter.lag("orders", Some(0), 7);
        reporter.unacked("orders", 3);
        let text = metrics.encode();
        for family in FAMILIES {
            assert!(!text.contains(family), "{family} came back:\n{text}");
        }
    }
}
