//! The schema layers: what reaches the handler, what is refused with which `error.type`, and
//! what is counted in `messaging_consumer_invalid_messages_total`.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::sample;
use eventscope::classify::{Classifier, ClassifyError, Decide, Decision, Failed};
use eventscope::memory::{MemoryBroker, MemoryMessage, MemoryRecord};
use eventscope::metrics::{label, name, Metrics};
use eventscope::schema::error::{DECODE, SCHEMA, UNKNOWN_SCHEMA};
use eventscope::schema::{
    Checked, SchemaError, SchemaErrorKind, Schemas, Unknown, ValidateIncomingLayer,
};
use eventscope::BoxError;
use tower::{service_fn, Layer, Service, ServiceExt};

const V1: &str = include_str!("../examples/schemas/order-created.v1.json");

fn schemas() -> Schemas {
    Schemas::builder()
        .schema("OrderCreated", 1, V1)
        .schema("Ping", 1, r#"{"type": "object", "required": ["n"]}"#)
        .build()
        .expect("the schemas compile")
}

fn order(amount: &str) -> String {
    format!(
        r#"{{"eventId":"e-1","eventType":"OrderCreated","eventVersion":1,"timestamp":"2024-05-01T10:00:00.000Z","correlationId":"c-1","causationId":null,"data":{{"orderId":"o-1","customerId":"cu-1","amountCents":{amount},"items":[{{"sku":"s-1","quantity":2}}]}}}}"#
    )
}

/// A message outside any broker.
struct Event {
    headers: eventscope::message::HeaderList,
    payload: Vec<u8>,
}

impl Event {
    fn new(payload: &str) -> Self {
        Self {
            headers: eventscope::message::HeaderList::new(),
            payload: payload.as_bytes().to_vec(),
        }
    }
}

impl eventscope::message::Headers for Event {
    fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.headers.iter()
    }
}

impl eventscope::message::IncomingMessage for Event {
    fn system(&self) -> &'static str {
        "test"
    }
    fn destination(&self) -> &str {
        "orders"
    }
    fn payload(&self) -> &[u8] {
        &self.payload
    }
}

fn message(broker_topic: &str, payload: &str) -> MemoryRecord {
    MemoryRecord::new(broker_topic, payload.as_bytes().to_vec())
}

/// Runs `records` through a consumer with the schema layer and a counting handler; returns
/// the handler's calls and the exposition.
async fn consume(records: Vec<MemoryRecord>, unknown: Unknown) -> (usize, String, MemoryBroker) {
    let broker = MemoryBroker::new();
    broker.create_topic("orders", 1).unwrap();
    let n = records.len();
    for record in records {
        broker.publisher().oneshot(record).await.unwrap();
    }
    let metrics = Metrics::new();
    // Until the dead-letter decision exists, a refused message is settled past (Reject).
    let classifier = Classifier::new()
        .on::<SchemaError>("schema-layer")
        .decision("schema-layer", Decision::Reject);
    let consumer = broker
        .consumer("billing")
        .subscribe(["orders"])
        .metrics(metrics.clone())
        .classify_errors(classifier);
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    let validate = ValidateIncomingLayer::new(schemas(), metrics.clone()).unknown(unknown);
    let handler = validate.layer(service_fn(move |_m: MemoryMessage| {
        seen.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, BoxError>(()) }
    }));
    let committed = broker.clone();
    let done = async move {
        while committed.committed("billing", "orders", 0).unwrap_or(0) < n as i64 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), consumer.run(handler, done))
        .await
        .expect("every message settled")
        .unwrap();
    (calls.load(Ordering::SeqCst), metrics.encode(), broker)
}

fn invalid(text: &str, reason: &str) -> f64 {
    sample(text, name::INVALID_MESSAGES, &[(label::REASON, reason)]).unwrap_or(0.0)
}

#[tokio::test]
async fn only_valid_events_reach_the_handler_and_refusals_are_counted_by_reason() {
    let records = vec![
        message("orders", &order("1250")),
        message("orders", &order("\"12\"")),
        message("orders", "not json at all"),
        message("orders", "[1, 2, 3]"),
        message("orders", r#"{"data": {}}"#),
        message("orders", r#"{"eventType":"OrderShipped","eventVersion":1}"#),
        // The header names the type: the payload's own field is not needed.
        message("orders", r#"{"n": 1}"#)
            .header("event-type", "Ping")
            .header("event-version", "1"),
    ];
    let (calls, text, _) = consume(records, Unknown::Reject).await;
    assert_eq!(calls, 2, "the valid order and the one typed by its header");
    assert_eq!(invalid(&text, SCHEMA), 1.0);
    assert_eq!(invalid(&text, DECODE), 3.0);
    assert_eq!(invalid(&text, UNKNOWN_SCHEMA), 1.0);
    assert!(text.contains(r#"messaging_consumer_group_name="billing""#));
}

#[tokio::test]
async fn unknown_events_pass_when_told() {
    let records = vec![message(
        "orders",
        r#"{"eventType":"OrderShipped","eventVersion":1}"#,
    )];
    let (calls, text, _) = consume(records, Unknown::Pass).await;
    assert_eq!(calls, 1);
    assert_eq!(invalid(&text, UNKNOWN_SCHEMA), 0.0);
}

#[tokio::test]
async fn a_schema_error_names_the_path_and_the_complaint_and_the_classifier_sees_it() {
    let metrics = Metrics::new();
    let mut handler =
        ValidateIncomingLayer::new(schemas(), metrics).layer(service_fn(|_m: Event| async {
            Ok::<_, std::io::Error>(())
        }));
    let message = Event::new(&order("-5"));
    let error: BoxError = handler
        .ready()
        .await
        .unwrap()
        .call(message)
        .await
        .unwrap_err();

    let classifier = Classifier::new()
        .on::<SchemaError>("schema")
        .decision("schema", Decision::Reject);
    assert_eq!(classifier.classify(&error), "schema");
    assert_eq!(
        classifier.decide(&Failed::new("schema", 1)),
        Decision::Reject
    );
    let error = error.downcast::<SchemaError>().expect("a SchemaError");
    assert_eq!(error.kind(), SchemaErrorKind::Schema);
    assert_eq!(error.error_type(), "schema");
    assert_eq!(error.path(), Some("/data/amountCents"));
    let text = error.to_string();
    assert!(
        text.starts_with("OrderCreated v1: /data/amountCents: "),
        "{text}"
    );
    assert!(text.contains("-5 is less than the minimum of 0"), "{text}");
}

#[test]
fn several_complaints_are_reported_and_a_huge_value_is_cut() {
    let schemas = schemas();
    let bad = order("\"x\"").replace(r#""orderId":"o-1""#, r#""orderId":7"#);
    let error = schemas.validate(&eventscope::message::HeaderList::new(), bad.as_bytes());
    let error = error.unwrap_err();
    assert!(error.message().contains("; "), "{}", error.message());
    let huge = order(&format!("\"{}\"", "é".repeat(100_000)));
    let error = schemas
        .validate(&eventscope::message::HeaderList::new(), huge.as_bytes())
        .unwrap_err();
    assert!(error.message().len() <= eventscope::schema::error::MAX_MESSAGE_BYTES);
    assert_eq!(error.path(), Some("/data/amountCents"));
}

#[test]
fn versions_come_from_headers_then_event_version_then_version() {
    let schemas = schemas();
    let mut headers = eventscope::message::HeaderList::new();
    let valid = order("1");
    assert_eq!(
        schemas.validate(&headers, valid.as_bytes()).unwrap(),
        Checked::Valid
    );
    // `version` is read when `eventVersion` is absent; a numeric text matches too.
    let by_version = valid.replace(r#""eventVersion":1"#, r#""version":"1""#);
    // The v1 schema requires eventVersion: the version was found, the schema then complains.
    let error = schemas
        .validate(&headers, by_version.as_bytes())
        .unwrap_err();
    assert_eq!(error.kind(), SchemaErrorKind::Schema);
    // No version anywhere: unknown.
    let none = valid.replace(r#""eventVersion":1,"#, "");
    assert_eq!(
        schemas.validate(&headers, none.as_bytes()).unwrap(),
        Checked::Unknown
    );
    // The header wins over the payload: version 0 is unknown (older than every schema).
    headers.push("Event-Version", "0");
    assert_eq!(
        schemas.validate(&headers, valid.as_bytes()).unwrap(),
        Checked::Unknown
    );
}

#[test]
fn a_schema_that_does_not_compile_is_an_error_at_startup() {
    for bad in [
        r#"{"type": 12}"#,
        "not json",
        r#"{"$ref": "https://example.com/schemas/elsewhere.json"}"#,
        r#"{"$ref": "file:///etc/passwd"}"#,
    ] {
        let error = Schemas::builder()
            .schema("OrderCreated", 1, V1)
            .schema("Broken", 3, bad)
            .build()
            .expect_err(bad);
        assert_eq!((error.event_type(), error.version()), ("Broken", "3"));
        assert!(error.to_string().contains("Broken v3"), "{error}");
    }
    let twice = Schemas::builder()
        .schema("OrderCreated", 1, V1)
        .schema("OrderCreated", "1", V1)
        .build();
    assert!(twice.is_err());
}
