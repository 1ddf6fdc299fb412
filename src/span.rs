//! The spans of SPEC §3, created in one place so every layer names and attributes them alike.

use std::fmt;

use opentelemetry::KeyValue;
use opentelemetry_semantic_conventions::attribute as semconv;
use tracing::field::{display, Empty};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// `{operation} {destination}`, formatted only when a subscriber records the field.
struct SpanName<'a>(&'static str, &'a str);

impl fmt::Display for SpanName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.0, self.1)
    }
}

pub(crate) const OP_SEND: &str = "send";
pub(crate) const OP_PROCESS: &str = "process";

/// Fields every messaging span starts with.
pub(crate) struct SpanStart<'a> {
    pub(crate) system: &'static str,
    pub(crate) destination: &'a str,
    pub(crate) message_id: Option<&'a str>,
    pub(crate) conversation_id: Option<&'a str>,
    pub(crate) body_size: Option<usize>,
    pub(crate) partition: Option<i32>,
    pub(crate) group: Option<&'a str>,
}

pub(crate) fn send(start: &SpanStart<'_>) -> Span {
    let span = tracing::info_span!(
        target: "eventscope",
        "send",
        otel.name = %SpanName(OP_SEND, start.destination),
        otel.kind = "producer",
        otel.status_code = Empty,
        { semconv::MESSAGING_SYSTEM } = start.system,
        { semconv::MESSAGING_OPERATION_NAME } = OP_SEND,
        { semconv::MESSAGING_OPERATION_TYPE } = OP_SEND,
        { semconv::MESSAGING_DESTINATION_NAME } = start.destination,
        { semconv::MESSAGING_DESTINATION_PARTITION_ID } = start.partition.map(display),
        { semconv::MESSAGING_MESSAGE_ID } = start.message_id,
        { semconv::MESSAGING_MESSAGE_CONVERSATION_ID } = start.conversation_id,
        { semconv::MESSAGING_MESSAGE_BODY_SIZE } = start.body_size.map(|n| n as i64),
        { semconv::ERROR_TYPE } = Empty,
    );
    span
}

pub(crate) fn process(start: &SpanStart<'_>, batch_size: Option<usize>) -> Span {
    let span = tracing::info_span!(
        target: "eventscope",
        "process",
        otel.name = %SpanName(OP_PROCESS, start.destination),
        otel.kind = "consumer",
        otel.status_code = Empty,
        { semconv::MESSAGING_SYSTEM } = start.system,
        { semconv::MESSAGING_OPERATION_NAME } = OP_PROCESS,
        { semconv::MESSAGING_OPERATION_TYPE } = OP_PROCESS,
        { semconv::MESSAGING_DESTINATION_NAME } = start.destination,
        { semconv::MESSAGING_DESTINATION_PARTITION_ID } = start.partition.map(display),
        { semconv::MESSAGING_CONSUMER_GROUP_NAME } = start.group,
        { semconv::MESSAGING_MESSAGE_ID } = start.message_id,
        { semconv::MESSAGING_MESSAGE_CONVERSATION_ID } = start.conversation_id,
        { semconv::MESSAGING_MESSAGE_BODY_SIZE } = start.body_size.map(|n| n as i64),
        { semconv::MESSAGING_BATCH_MESSAGE_COUNT } = batch_size.map(|n| n as i64),
        { semconv::ERROR_TYPE } = Empty,
    );
    span
}

/// Adds broker-specific attributes; before the span starts they are visible to samplers.
pub(crate) fn add_attributes(span: &Span, attributes: Vec<KeyValue>) {
    for KeyValue { key, value, .. } in attributes {
        span.set_attribute(key, value);
    }
}

/// Marks the span failed with `error.type`.
pub(crate) fn record_error(span: &Span, error_type: &str) {
    span.record(semconv::ERROR_TYPE, error_type);
    span.record("otel.status_code", "error");
}

/// Records the partition the broker reported after the span started.
pub(crate) fn record_partition(span: &Span, partition: i32) {
    span.record(
        semconv::MESSAGING_DESTINATION_PARTITION_ID,
        display(partition),
    );
}
