//! Hostile headers never panic and never reject a message: each unusable trace context gives a
//! fresh root and one count in `eventscope_trace_context_invalid_total` (SPEC §2); a malformed
//! id is replaced and counted the same way, without touching a usable trace context.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use eventscope::message::{HeaderList, Headers, IncomingMessage};
use eventscope::metrics::Metrics;
use eventscope::process::ProcessLayer;
use proptest::prelude::*;
use tower::{service_fn, Layer, ServiceExt};

const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[derive(Clone, Debug)]
struct Raw(HeaderList);

impl Headers for Raw {
    fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.0.iter()
    }
}

impl IncomingMessage for Raw {
    fn system(&self) -> &'static str {
        "kafka"
    }
    fn destination(&self) -> &str {
        "hostile"
    }
}

struct Outcome {
    invalid_count: f64,
    calls: usize,
    root: bool,
    links: usize,
}

fn process(headers: Vec<(String, Vec<u8>)>) -> Outcome {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let capture = capture();
    let metrics = Metrics::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let handler = {
        let calls = calls.clone();
        ProcessLayer::new(metrics.clone())
            .tracer_provider(&capture.provider)
            .layer(service_fn(move |_m: Raw| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Ok::<_, std::io::Error>(()) }
            }))
    };
    runtime
        .block_on(handler.oneshot(Raw(HeaderList::from(headers))))
        .expect("the handler's Ok is passed through");
    let spans = capture.spans();
    let span = one(&spans, "process hostile");
    Outcome {
        invalid_count: sample(
            &metrics.encode(),
            "eventscope_trace_context_invalid_total",
            &[],
        )
        .unwrap_or(0.0),
        calls: calls.load(Ordering::SeqCst),
        root: is_root(span),
        links: span.links.len(),
    }
}

fn header(name: &str, value: impl Into<Vec<u8>>) -> (String, Vec<u8>) {
    (name.to_owned(), value.into())
}

/// Ways to break a well-formed trace context.
fn corruption() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    prop_oneof![
        // Random bytes as traceparent (filtered so they are not accidentally valid).
        proptest::collection::vec(any::<u8>(), 0..200)
            .prop_filter("not a valid traceparent", |b| b != VALID.as_bytes())
            .prop_map(|b| vec![header("traceparent", b)]),
        // Non-UTF-8 bytes spliced into a valid value.
        (0usize..55).prop_map(|i| {
            let mut b = VALID.as_bytes().to_vec();
            b[i] = 0xff;
            vec![header("traceparent", b)]
        }),
        // Invalid versions and ids.
        prop::sample::select(vec![
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ])
        .prop_map(|v| vec![header("traceparent", v)]),
        // Duplicates, in any letter case.
        prop::sample::select(vec!["traceparent", "TraceParent", "TRACEPARENT"])
            .prop_map(|n| vec![header("traceparent", VALID), header(n, VALID)]),
        // Oversized tracestate: too many members or too many bytes.
        (33usize..80).prop_map(|n| {
            let members: Vec<String> = (0..n).map(|i| format!("k{i}=v")).collect();
            vec![
                header("traceparent", VALID),
                header("tracestate", members.join(",")),
            ]
        }),
        (513usize..4096).prop_map(|n| {
            vec![
                header("traceparent", VALID),
                header("tracestate", format!("k={}", "v".repeat(n))),
            ]
        }),
        // Oversized baggage, alone or spread over several headers.
        (8193usize..20000).prop_map(|n| vec![header("baggage", format!("k={}", "v".repeat(n)))]),
        (65usize..200).prop_map(|n| {
            let members: Vec<String> = (0..n).map(|i| format!("k{i}=v")).collect();
            vec![header("baggage", members.join(","))]
        }),
        proptest::collection::vec(any::<u8>(), 1..64)
            .prop_filter("not UTF-8", |b| std::str::from_utf8(b).is_err())
            .prop_map(|b| vec![header("baggage", b)]),
    ]
}

fn noise() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    proptest::collection::vec(
        (
            prop::sample::select(vec![
                "content-type",
                "x-b3-traceid",
                "correlation-id",
                "message-id",
                "",
            ]),
            proptest::collection::vec(any::<u8>(), 0..64),
        )
            .prop_map(|(n, v)| (n.to_owned(), v)),
        0..6,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn every_corruption_is_a_counted_fresh_root(bad in corruption(), extra in noise()) {
        let mut headers = extra;
        headers.extend(bad);
        let out = process(headers);
        prop_assert_eq!(out.calls, 1);
        prop_assert_eq!(out.invalid_count, 1.0);
        prop_assert!(out.root);
        prop_assert_eq!(out.links, 0);
    }

    #[test]
    fn arbitrary_headers_never_panic_or_reject(
        headers in proptest::collection::vec(
            (
                prop::sample::select(vec!["traceparent", "tracestate", "baggage", "Baggage", "correlation-id", "x"]),
                proptest::collection::vec(any::<u8>(), 0..600),
            ).prop_map(|(n, v)| (n.to_owned(), v)),
            0..8,
        )
    ) {
        let out = process(headers);
        prop_assert_eq!(out.calls, 1);
        // A span either continues a usable context or is a counted (or header-less) root.
        prop_assert!(out.root || out.invalid_count == 0.0);
    }

    #[test]
    fn a_valid_context_survives_any_noise(extra in noise()) {
        let mut headers: Vec<_> = extra.into_iter().filter(|(n, _)| !n.is_empty()).collect();
        headers.push(header("TraceParent", VALID));
        headers.push(header("tracestate", "vendor=opaque"));
        headers.push(header("baggage", "tenant=acme"));
        // Ids are bounded too (SPEC §2): a malformed id in the noise is counted, once.
        let bad_ids = headers.iter().any(|(name, value)| {
            ["correlation-id", "causation-id", "message-id"]
                .iter()
                .any(|id| name.eq_ignore_ascii_case(id))
                && !value.is_empty()
                && (value.len() > eventscope::header::MAX_ID_BYTES
                    || std::str::from_utf8(value).is_err()
                    || value.iter().any(|b| *b < 0x20 || *b == 0x7f))
        });
        let out = process(headers);
        prop_assert_eq!(out.invalid_count, if bad_ids { 1.0 } else { 0.0 });
        prop_assert!(!out.root, "the creation context is the parent");
        prop_assert_eq!(out.links, 1);
    }
}
