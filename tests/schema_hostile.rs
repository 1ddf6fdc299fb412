//! Hostile input through the schema layer: 10,000 arbitrary payloads and header sets. None
//! panics, and each is either handed to the handler or counted as `schema` or `decode` in
//! `messaging_consumer_invalid_messages_total` (read from the real exposition).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use eventscope::message::{HeaderList, Headers, IncomingMessage};
use eventscope::metrics::{label, name, Metrics};
use eventscope::schema::error::{DECODE, SCHEMA, UNKNOWN_SCHEMA};
use eventscope::schema::{Schemas, Unknown, ValidateIncomingLayer};
use futures_util::FutureExt;
use proptest::prelude::*;
use tower::{service_fn, Layer, Service};

const V1: &str = include_str!("../examples/schemas/order-created.v1.json");
const CASES: u32 = 10_000;

struct Hostile {
    headers: HeaderList,
    payload: Vec<u8>,
}

impl Headers for Hostile {
    fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.headers.iter()
    }
}

impl IncomingMessage for Hostile {
    fn system(&self) -> &'static str {
        "kafka"
    }
    fn destination(&self) -> &str {
        "orders"
    }
    fn consumer_group(&self) -> Option<&str> {
        Some("fuzz")
    }
    fn payload(&self) -> &[u8] {
        &self.payload
    }
}

/// Payloads that get past the JSON parser often enough to reach the validator: raw bytes,
/// JSON-ish text, and envelopes with arbitrary values in their fields.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    let value = prop_oneof![
        Just("null".to_owned()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| f.to_string()),
        ".{0,40}".prop_map(|s| serde_json::to_string(&s).unwrap()),
        Just("[]".to_owned()),
        Just("{}".to_owned()),
        Just(r#"[{"sku":"s","quantity":0}]"#.to_owned()),
    ];
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        "[ -~]{0,200}".prop_map(String::into_bytes),
        (value.clone(), value.clone(), value.clone(), value).prop_map(|(t, v, a, i)| {
            format!(
                r#"{{"eventType":{t},"eventVersion":{v},"eventId":"e","timestamp":"t","correlationId":"c","data":{{"orderId":"o","customerId":"c","amountCents":{a},"items":{i}}}}}"#
            )
            .into_bytes()
        }),
        (0usize..300).prop_map(|depth| format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes()),
    ]
}

fn headers() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    let name = prop_oneof![
        Just("event-type".to_owned()),
        Just("Event-Version".to_owned()),
        Just("EVENT-TYPE".to_owned()),
        "[a-z-]{0,12}",
    ];
    let value = prop_oneof![
        Just(b"OrderCreated".to_vec()),
        Just(b"1".to_vec()),
        Just(b"2".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..64),
    ];
    proptest::collection::vec((name, value), 0..6)
}

#[test]
fn arbitrary_payloads_and_headers_are_valid_or_counted() {
    let schemas = Schemas::builder()
        .schema("OrderCreated", 1, V1)
        .build()
        .unwrap();
    let metrics = Metrics::new();
    let handled = Arc::new(AtomicU64::new(0));
    let seen = Arc::clone(&handled);
    // Unknown types pass, so every case is handled, `schema` or `decode`.
    let layer = ValidateIncomingLayer::new(schemas, metrics.clone())
        .unknown(Unknown::Pass)
        .layer(service_fn(move |_m: Hostile| {
            seen.fetch_add(1, Ordering::Relaxed);
            std::future::ready(Ok::<_, std::io::Error>(()))
        }));
    let cases = Arc::new(AtomicU64::new(0));
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(&(payload(), headers()), |(payload, headers)| {
            cases.fetch_add(1, Ordering::Relaxed);
            let mut list = HeaderList::new();
            for (name, value) in headers {
                list.push_bytes(name, value);
            }
            let message = Hostile {
                headers: list,
                payload,
            };
            let result = layer
                .clone()
                .call(message)
                .now_or_never()
                .expect("the layer answers at once");
            if let Err(error) = result {
                let error = error
                    .downcast::<eventscope::schema::SchemaError>()
                    .expect("only schema errors");
                prop_assert!(error.message().len() <= 1024);
                prop_assert!([SCHEMA, DECODE].contains(&error.error_type()));
            }
            Ok(())
        })
        .unwrap();

    let text = metrics.encode();
    let count = |reason: &str| {
        text.lines()
            .filter(|l| l.starts_with(name::INVALID_MESSAGES))
            .filter(|l| l.contains(&format!(r#"{}="{reason}""#, label::REASON)))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum::<u64>()
    };
    let (schema, decode) = (count(SCHEMA), count(DECODE));
    let handled = handled.load(Ordering::Relaxed);
    assert_eq!(count(UNKNOWN_SCHEMA), 0);
    assert_eq!(cases.load(Ordering::Relaxed), u64::from(CASES));
    assert_eq!(handled + schema + decode, u64::from(CASES), "{text}");
    // The generators reach every outcome, not only the parser's refusals.
    assert!(
        handled > 0 && schema > 0 && decode > 0,
        "handled {handled}, schema {schema}, decode {decode}"
    );
    println!("handled {handled}, schema {schema}, decode {decode}");
}
