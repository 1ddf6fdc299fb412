//! Every metric family eventscope exports, defined once (SPEC §4).
//!
//! Code, dashboards, alert rules and tests all refer to these names.

/// Label names.
pub mod label {
    /// `messaging.system`.
    pub const SYSTEM: &str = "messaging_system";
    /// `messaging.destination.name`.
    pub const DESTINATION: &str = "messaging_destination_name";
    /// `messaging.destination.partition.id`.
    pub const PARTITION: &str = "messaging_destination_partition_id";
    /// `messaging.consumer.group.name`.
    pub const GROUP: &str = "messaging_consumer_group_name";
    /// `messaging.operation.name`.
    pub const OPERATION: &str = "messaging_operation_name";
    /// `error.type`; empty on success.
    pub const ERROR_TYPE: &str = "error_type";
    /// Why a message was rejected before the handler.
    pub const REASON: &str = "reason";
}

/// Metric family names, as exposed.
pub mod name {
    /// Publish (and receive/settle) duration until the broker acknowledged.
    pub const OPERATION_DURATION: &str = "messaging_client_operation_duration_seconds";
    /// Messages the publisher tried to send.
    pub const SENT_MESSAGES: &str = "messaging_client_sent_messages_total";
    /// Messages delivered to the handler.
    pub const CONSUMED_MESSAGES: &str = "messaging_client_consumed_messages_total";
    /// Time in the wrapped handler.
    pub const PROCESS_DURATION: &str = "messaging_process_duration_seconds";
    /// Process start minus the message's creation time.
    pub const QUEUE_TIME: &str = "messaging_consumer_queue_time_seconds";
    /// Messages being processed now.
    pub const IN_FLIGHT: &str = "messaging_consumer_in_flight_messages";
    /// Consumer lag in messages.
    pub const LAG_MESSAGES: &str = "messaging_consumer_lag_messages";
    /// Consumer lag in seconds.
    pub const LAG_SECONDS: &str = "messaging_consumer_lag_seconds";
    /// Creation time of the last message processed.
    pub const LAST_MESSAGE_TIMESTAMP: &str = "messaging_consumer_last_message_timestamp_seconds";
    /// Handler retries.
    pub const RETRIES: &str = "messaging_consumer_retries_total";
    /// Messages routed to a dead-letter destination.
    pub const DEAD_LETTERED: &str = "messaging_consumer_dead_lettered_messages_total";
    /// Deliveries skipped as already processed.
    pub const DUPLICATES: &str = "messaging_consumer_duplicates_total";
    /// Messages rejected before the handler.
    pub const INVALID_MESSAGES: &str = "messaging_consumer_invalid_messages_total";
    /// Consumer-group rebalances seen.
    pub const REBALANCES: &str = "messaging_consumer_rebalances_total";
    /// Messages removed by the broker before the consumer group received them.
    pub const DROPPED_MESSAGES: &str = "messaging_consumer_dropped_messages_total";
    /// 1 while a partition is stopped at a failed message.
    pub const PARTITION_STOPPED: &str = "messaging_consumer_partition_stopped";
    /// Delivered but not yet settled, as the broker counts them.
    pub const UNACKED_MESSAGES: &str = "messaging_consumer_unacked_messages";
    /// A consumer's broker connection lost and restored, the consumer resuming by itself.
    pub const RECONNECTS: &str = "messaging_consumer_reconnects_total";
    /// 1 while a consumer is connected to its broker, 0 while it is not.
    pub const CONNECTED: &str = "messaging_consumer_connected";
    /// Malformed incoming trace context.
    pub const TRACE_CONTEXT_INVALID: &str = "eventscope_trace_context_invalid_total";
}

/// Duration histogram buckets in seconds (semconv advisory buckets).
pub const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Queue-time buckets: the duration buckets plus minutes and hours.
pub const QUEUE_TIME_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 30.0, 60.0,
    300.0, 900.0, 3600.0,
];

/// The kind of a metric family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    /// A monotonic counter (name ends in `_total`).
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// A histogram (series `_bucket`, `_sum`, `_count`).
    Histogram,
}

/// One metric family of the catalogue.
#[derive(Clone, Copy, Debug)]
pub struct MetricFamily {
    /// Exposition name.
    pub name: &'static str,
    /// `# HELP` text.
    pub help: &'static str,
    /// Counter, gauge or histogram.
    pub kind: MetricKind,
    /// Label names, in order.
    pub labels: &'static [&'static str],
}

use label::*;
use MetricKind::*;

const SYS_DEST_GROUP: &[&str] = &[SYSTEM, DESTINATION, GROUP];
const SYS_DEST_GROUP_ERR: &[&str] = &[SYSTEM, DESTINATION, GROUP, ERROR_TYPE];
const SYS_DEST_PART_GROUP: &[&str] = &[SYSTEM, DESTINATION, PARTITION, GROUP];

/// Operation duration.
pub(super) const OPERATION_DURATION: MetricFamily = MetricFamily {
    name: name::OPERATION_DURATION,
    help: "Duration of a messaging client operation (publish until the broker acknowledged), in seconds.",
    kind: Histogram,
    labels: &[SYSTEM, OPERATION, DESTINATION, ERROR_TYPE],
};
/// Sent messages.
pub(super) const SENT_MESSAGES: MetricFamily = MetricFamily {
    name: name::SENT_MESSAGES,
    help: "Messages the publisher tried to send.",
    kind: Counter,
    labels: &[SYSTEM, DESTINATION, ERROR_TYPE],
};
/// Consumed messages.
pub(super) const CONSUMED_MESSAGES: MetricFamily = MetricFamily {
    name: name::CONSUMED_MESSAGES,
    help: "Messages delivered to the handler.",
    kind: Counter,
    labels: SYS_DEST_GROUP,
};
/// Process duration.
pub(super) const PROCESS_DURATION: MetricFamily = MetricFamily {
    name: name::PROCESS_DURATION,
    help: "Time spent in the wrapped handler, in seconds.",
    kind: Histogram,
    labels: SYS_DEST_GROUP_ERR,
};
/// Queue time.
pub(super) const QUEUE_TIME: MetricFamily = MetricFamily {
    name: name::QUEUE_TIME,
    help: "Process start minus the message's creation time (end-to-end latency through the broker), in seconds.",
    kind: Histogram,
    labels: SYS_DEST_GROUP,
};
/// In-flight messages.
pub(super) const IN_FLIGHT: MetricFamily = MetricFamily {
    name: name::IN_FLIGHT,
    help: "Messages being processed now.",
    kind: Gauge,
    labels: SYS_DEST_GROUP,
};
/// Lag in messages.
pub(super) const LAG_MESSAGES: MetricFamily = MetricFamily {
    name: name::LAG_MESSAGES,
    help: "Consumer lag in messages: high watermark minus committed offset (Kafka), ready messages (RabbitMQ), pending (JetStream).",
    kind: Gauge,
    labels: SYS_DEST_PART_GROUP,
};
/// Lag in seconds.
pub(super) const LAG_SECONDS: MetricFamily = MetricFamily {
    name: name::LAG_SECONDS,
    help: "Upper bound on the age of the oldest unprocessed message, in seconds; 0 when there is no lag.",
    kind: Gauge,
    labels: SYS_DEST_PART_GROUP,
};
/// Last message timestamp.
pub(super) const LAST_MESSAGE_TIMESTAMP: MetricFamily = MetricFamily {
    name: name::LAST_MESSAGE_TIMESTAMP,
    help: "Creation time of the last message processed, in seconds since the Unix epoch.",
    kind: Gauge,
    labels: SYS_DEST_PART_GROUP,
};
/// Retries.
pub(super) const RETRIES: MetricFamily = MetricFamily {
    name: name::RETRIES,
    help: "Handler retries.",
    kind: Counter,
    labels: SYS_DEST_GROUP_ERR,
};
/// Dead letters.
pub(super) const DEAD_LETTERED: MetricFamily = MetricFamily {
    name: name::DEAD_LETTERED,
    help: "Messages routed to the dead-letter destination.",
    kind: Counter,
    labels: SYS_DEST_GROUP_ERR,
};
/// Duplicates.
pub(super) const DUPLICATES: MetricFamily = MetricFamily {
    name: name::DUPLICATES,
    help: "Deliveries skipped as already processed.",
    kind: Counter,
    labels: SYS_DEST_GROUP,
};
/// Invalid messages.
pub(super) const INVALID_MESSAGES: MetricFamily = MetricFamily {
    name: name::INVALID_MESSAGES,
    help: "Messages rejected before the handler (reason: schema, decode).",
    kind: Counter,
    labels: &[SYSTEM, DESTINATION, GROUP, REASON],
};
/// Rebalances.
pub(super) const REBALANCES: MetricFamily = MetricFamily {
    name: name::REBALANCES,
    help: "Consumer-group rebalances seen.",
    kind: Counter,
    labels: &[SYSTEM, GROUP],
};
/// Dropped messages.
pub(super) const DROPPED_MESSAGES: MetricFamily = MetricFamily {
    name: name::DROPPED_MESSAGES,
    help: "Messages the broker removed (retention overflow) before the consumer group received them; the group will never process them.",
    kind: Counter,
    labels: SYS_DEST_PART_GROUP,
};
/// Stopped partitions.
pub(super) const PARTITION_STOPPED: MetricFamily = MetricFamily {
    name: name::PARTITION_STOPPED,
    help: "1 while the consumer holds a partition stopped at a failed message (settle decision Stop); absent otherwise.",
    kind: Gauge,
    labels: SYS_DEST_PART_GROUP,
};
/// Unacked messages.
pub(super) const UNACKED_MESSAGES: MetricFamily = MetricFamily {
    name: name::UNACKED_MESSAGES,
    help: "Messages delivered to the consumer but not yet settled, as the broker counts them (JetStream num_ack_pending).",
    kind: Gauge,
    labels: SYS_DEST_GROUP,
};
/// Reconnects.
pub(super) const RECONNECTS: MetricFamily = MetricFamily {
    name: name::RECONNECTS,
    help: "Times a consumer lost its connection to the broker and restored it, consuming again (RabbitMQ, NATS; 0 where the client reconnects internally and says nothing, as librdkafka does, or there is no connection).",
    kind: Counter,
    labels: &[SYSTEM, GROUP],
};
/// Connected.
pub(super) const CONNECTED: MetricFamily = MetricFamily {
    name: name::CONNECTED,
    help: "1 while the consumer is connected to its broker, 0 while it is not and its client is trying again (Kafka: some broker of the cluster is up); absent once the consumer returned.",
    kind: Gauge,
    labels: &[SYSTEM, GROUP],
};
/// Invalid trace context.
pub(super) const TRACE_CONTEXT_INVALID: MetricFamily = MetricFamily {
    name: name::TRACE_CONTEXT_INVALID,
    help: "Incoming messages whose trace context, baggage or ids were malformed, oversized or duplicated, or that carried a header that could not be read; each was processed, as a new root where its trace context was unusable.",
    kind: Counter,
    labels: &[SYSTEM],
};

/// The whole catalogue, in exposition order.
pub const CATALOGUE: &[MetricFamily] = &[
    OPERATION_DURATION,
    SENT_MESSAGES,
    CONSUMED_MESSAGES,
    PROCESS_DURATION,
    QUEUE_TIME,
    IN_FLIGHT,
    LAG_MESSAGES,
    LAG_SECONDS,
    LAST_MESSAGE_TIMESTAMP,
    RETRIES,
    DEAD_LETTERED,
    DUPLICATES,
    INVALID_MESSAGES,
    REBALANCES,
    DROPPED_MESSAGES,
    PARTITION_STOPPED,
    UNACKED_MESSAGES,
    RECONNECTS,
    CONNECTED,
    TRACE_CONTEXT_INVALID,
];
