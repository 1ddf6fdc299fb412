//! A long search for bad input over the extraction and id path (issue 9): arbitrary header sets
//! (any names, case variants of the propagation headers, duplicates, non-UTF-8 bytes, values up
//! to 1 MiB) go through `Propagation::extract` and through a process → publish round trip.
//! No panic, no message slower than 1 ms, and the outgoing headers keep SPEC §2.
//!
//! Kept out of the default run; in release, 100 000 cases by default:
//!
//! ```sh
//! cargo test --release --test fuzz_headers -- --ignored
//! FUZZ_CASES=1000000 cargo test --release --test fuzz_headers -- --ignored
//! ```

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventscope::header;
use eventscope::memory::{MemoryBroker, MemoryRecord};
use eventscope::message::{HeaderList, Headers, IncomingMessage};
use eventscope::metrics::Metrics;
use eventscope::process::ProcessLayer;
use eventscope::propagation::Propagation;
use eventscope::publish::PublishLayer;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tower::{service_fn, Layer, ServiceExt};
use tracing_subscriber::layer::SubscriberExt;

/// The stated bound per message (issue 9), in release builds.
const PER_MESSAGE: Duration = Duration::from_millis(1);
/// An over-budget case is measured again this many times and fails on its fastest run, so a
/// preempted thread on a shared machine is not mistaken for pathological complexity.
const REMEASURE: usize = 5;
/// SPEC §2: the longest id propagated.
const MAX_ID_BYTES: usize = 256;
const DESTINATION: &str = "fuzz";
/// The native id of every fuzzed message, `{topic}/{partition}/{offset}` as on the embedded
/// broker: what `causation-id` falls back to when the `message-id` header is absent.
const NATIVE_ID: &str = "fuzz/0/42";

/// An incoming message with whatever headers the case holds.
#[derive(Clone, Debug)]
struct Fuzzed(HeaderList);

impl Headers for Fuzzed {
    fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.0.iter()
    }
}

impl IncomingMessage for Fuzzed {
    fn system(&self) -> &'static str {
        "kafka"
    }
    fn destination(&self) -> &str {
        DESTINATION
    }
    /// Like the crate's adapters: the header when it is a usable id (its length checked before
    /// it is decoded, so a huge value costs nothing), else the broker's native id.
    fn message_id(&self) -> Option<Cow<'_, str>> {
        let header = self
            .headers()
            .find(|(name, _)| name.eq_ignore_ascii_case(header::MESSAGE_ID))
            .map(|(_, value)| value)
            .filter(|value| !value.is_empty() && value.len() <= MAX_ID_BYTES)
            .and_then(|value| std::str::from_utf8(value).ok());
        Some(header.map_or(Cow::Borrowed(NATIVE_ID), Cow::Borrowed))
    }
    fn partition(&self) -> Option<i32> {
        Some(0)
    }
}

/// The outgoing headers `check` reads.
const CHECKED: [&str; 4] = [
    header::TRACEPARENT,
    header::CORRELATION_ID,
    header::CAUSATION_ID,
    header::MESSAGE_ID,
];

/// What the handler does with the message it processes.
#[derive(Clone, Copy, Debug)]
enum Follow {
    /// Publishes a new event (the usual case): every id on it is the layer's.
    Fresh,
    /// Republishes the message with all its headers (a retry or a forward).
    Republish,
}

struct Case {
    headers: Vec<(String, Vec<u8>)>,
    follow: Follow,
}

/// Long values are shown by length and head, so a failing 1 MiB case prints readably.
impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const SHOWN: usize = 96;
        let mut list = f.debug_list();
        for (name, value) in &self.headers {
            let head = String::from_utf8_lossy(&value[..value.len().min(SHOWN)]);
            list.entry(&format_args!("({name:?}, {} bytes: {head:?})", value.len()));
        }
        list.finish()?;
        write!(f, " {:?}", self.follow)
    }
}

const PROPAGATION_NAMES: &[&str] = &[
    "traceparent",
    "TraceParent",
    "TRACEPARENT",
    "tracestate",
    "TraceState",
    "baggage",
    "Baggage",
    "BAGGAGE",
    "correlation-id",
    "Correlation-Id",
    "CORRELATION-ID",
    "causation-id",
    "Causation-ID",
    "message-id",
    "Message-Id",
    "MESSAGE-ID",
];

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(PROPAGATION_NAMES).prop_map(str::to_owned),
        2 => "[a-zA-Z-]{0,24}",
        1 => any::<String>(),
        1 => Just(String::new()),
    ]
}

fn hex(len: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[0-9a-f]{{{len}}}")).unwrap()
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // Arbitrary bytes, mostly not UTF-8.
        4 => prop::collection::vec(any::<u8>(), 0..300),
        // Well-formed or nearly well-formed trace context.
        3 => (hex(2), hex(32), hex(16), hex(2))
            .prop_map(|(v, t, s, f)| format!("{v}-{t}-{s}-{f}").into_bytes()),
        // Ids a producer would send.
        3 => "[A-Za-z0-9-]{1,64}".prop_map(String::into_bytes),
        // Ids around the 256-byte bound, in one- and two-byte characters.
        2 => (200usize..320).prop_map(|n| "x".repeat(n).into_bytes()),
        1 => (100usize..160).prop_map(|n| "é".repeat(n).into_bytes()),
        // Baggage- and tracestate-like member lists.
        2 => prop::collection::vec("[a-z0-9]{1,8}=[a-zA-Z0-9%]{0,16}", 0..80)
            .prop_map(|members| members.join(",").into_bytes()),
        // Any text.
        1 => any::<String>().prop_map(String::into_bytes),
    ]
}

/// A huge value, up to 1 MiB, from a repeated random chunk (cheap to generate).
fn huge() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(any::<u8>(), 1..32),
        64_000usize..=1 << 20,
    )
        .prop_map(|(chunk, len)| chunk.iter().copied().cycle().take(len).collect())
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec((name(), value()), 0..16),
        // Occasionally one huge header, anywhere in the list.
        prop_oneof![19 => Just(None), 1 => (name(), huge(), any::<prop::sample::Index>()).prop_map(Some)],
        prop_oneof![3 => Just(Follow::Fresh), 1 => Just(Follow::Republish)],
    )
        .prop_map(|(mut headers, huge, follow)| {
            if let Some((name, value, at)) = huge {
                headers.insert(at.index(headers.len() + 1), (name, value));
            }
            Case { headers, follow }
        })
}

/// One process → publish round trip, reusing the runtime, metrics and broker across cases.
struct RoundTrip {
    runtime: tokio::runtime::Runtime,
    metrics: Metrics,
    broker: MemoryBroker,
    propagation: Propagation,
}

impl RoundTrip {
    fn new() -> Self {
        Self {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            metrics: Metrics::new(),
            // Republished records carry the fuzzed headers: keep few of them.
            broker: MemoryBroker::builder().retention(8).build(),
            propagation: Propagation::default(),
        }
    }

    /// Runs `case`: the time `extract` took, the time the round trip took, the published headers.
    fn run(&self, case: &Case) -> (Duration, Duration, HeaderList) {
        let incoming = Fuzzed(HeaderList::from(case.headers.clone()));

        let started = Instant::now();
        let extracted = self.propagation.extract(&incoming);
        let extract_time = started.elapsed();
        drop(extracted);

        let published = Arc::new(Mutex::new(None::<HeaderList>));
        let kept = Arc::new(Mutex::new(None::<MemoryRecord>));
        let tap = {
            let published = published.clone();
            let kept = kept.clone();
            let broker = self.broker.publisher();
            service_fn(move |record: MemoryRecord| {
                // Only what `check` reads: copying a 1 MiB header here would time the harness.
                let mut checked = HeaderList::new();
                for (name, value) in record.headers().iter() {
                    if CHECKED.iter().any(|c| name.eq_ignore_ascii_case(c)) {
                        checked.push_bytes(name, value.to_vec());
                    }
                }
                *published.lock().unwrap() = Some(checked);
                // The record itself comes back to be dropped after the clock stopped: freeing
                // a megabyte is the harness's cost, not the layers'.
                *kept.lock().unwrap() = Some(record);
                broker
                    .clone()
                    .oneshot(MemoryRecord::new("follow-up", b"{}".to_vec()))
            })
        };
        let publisher = PublishLayer::new(self.metrics.clone()).layer(tap);
        let follow = case.follow;
        let handler =
            ProcessLayer::new(self.metrics.clone()).layer(service_fn(move |message: Fuzzed| {
                let publisher = publisher.clone();
                async move {
                    let mut record = MemoryRecord::new("follow-up", b"{}".to_vec());
                    let mut rest = None;
                    match follow {
                        // Moved, not copied: the handler's own cost stays near zero.
                        Follow::Republish => {
                            for (name, value) in message.0.into_vec() {
                                record = record.header_bytes(name, value);
                            }
                        }
                        // Handed back, so it is dropped after the clock stopped.
                        Follow::Fresh => rest = Some(message),
                    }
                    publisher.oneshot(record).await.map(|_| rest)
                }
            }));

        let started = Instant::now();
        let rest = self
            .runtime
            .block_on(handler.oneshot(incoming))
            .expect("the handler publishes");
        let round_trip_time = started.elapsed();
        drop(rest);
        drop(kept);

        let headers = published
            .lock()
            .unwrap()
            .take()
            .expect("the handler published through the layer");
        (extract_time, round_trip_time, headers)
    }
}

fn values_of<'a>(headers: &'a HeaderList, name: &str) -> Vec<&'a [u8]> {
    headers
        .iter()
        .filter(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value)
        .collect()
}

/// The single value of `name`, when the case holds exactly one and it is an id a well-behaved
/// producer would send (so every reading of SPEC §2 propagates it unchanged).
fn plain_id<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a str> {
    let mut values = headers
        .iter()
        .filter(|(key, _)| key.eq_ignore_ascii_case(name));
    let (_, value) = values.next()?;
    if values.next().is_some() || value.is_empty() || value.len() > 64 {
        return None;
    }
    value
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        .then(|| std::str::from_utf8(value).unwrap())
}

fn is_traceparent(value: &[u8]) -> bool {
    let parts: Vec<&[u8]> = value.split(|b| *b == b'-').collect();
    parts.len() == 4
        && parts
            .iter()
            .zip([2, 32, 16, 2])
            .all(|(part, len)| part.len() == len && part.iter().all(u8::is_ascii_hexdigit))
}

fn check(case: &Case, published: &HeaderList) -> Result<(), TestCaseError> {
    let traceparents = values_of(published, header::TRACEPARENT);
    prop_assert_eq!(traceparents.len(), 1, "one traceparent: {:?}", published);
    prop_assert!(is_traceparent(traceparents[0]), "{:?}", published);

    let correlation = values_of(published, header::CORRELATION_ID);
    prop_assert_eq!(correlation.len(), 1, "one correlation-id: {:?}", published);
    let causation = values_of(published, header::CAUSATION_ID);
    prop_assert_eq!(causation.len(), 1, "one causation-id: {:?}", published);

    if let Follow::Republish = case.follow {
        // The record carried the message's own ids on purpose; only uniqueness is the layer's.
        return Ok(());
    }
    let message_id = values_of(published, header::MESSAGE_ID);
    prop_assert_eq!(message_id.len(), 1, "one message-id: {:?}", published);
    for (name, value) in [
        (header::CORRELATION_ID, correlation[0]),
        (header::CAUSATION_ID, causation[0]),
        (header::MESSAGE_ID, message_id[0]),
    ] {
        prop_assert!(
            std::str::from_utf8(value).is_ok(),
            "outgoing {} is UTF-8",
            name
        );
        prop_assert!(
            value.len() <= MAX_ID_BYTES,
            "outgoing {} is at most {} bytes, is {}",
            name,
            MAX_ID_BYTES,
            value.len()
        );
        // SPEC §2 is silent on empty ids; an empty one names nothing, and the publish layer
        // already treats an empty correlation-id as absent.
        prop_assert!(!value.is_empty(), "outgoing {} is not empty", name);
    }
    if let Some(id) = plain_id(&case.headers, header::CORRELATION_ID) {
        prop_assert_eq!(correlation[0], id.as_bytes(), "the flow's correlation-id");
    }
    let cause = if values_of(&HeaderList::from(case.headers.clone()), header::MESSAGE_ID).is_empty()
    {
        Some(NATIVE_ID)
    } else {
        plain_id(&case.headers, header::MESSAGE_ID)
    };
    if let Some(cause) = cause {
        prop_assert_eq!(causation[0], cause.as_bytes(), "the cause's id");
    }
    Ok(())
}

#[test]
#[ignore = "a long search: cargo test --release --test fuzz_headers -- --ignored"]
fn arbitrary_headers_never_panic_stay_fast_and_keep_the_id_bounds() {
    // The 1 ms bound is for release builds; a debug run checks everything else.
    let timed = !cfg!(debug_assertions);
    if !timed {
        eprintln!("debug build: per-message time not checked (run with --release)");
    }
    let cases = std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);

    // Recorded spans (the sampler says yes) with nowhere to go, so attribute building runs.
    let provider = SdkTracerProvider::builder().build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("fuzz_headers")));
    let _guard = tracing::subscriber::set_default(subscriber);

    let round_trip = RoundTrip::new();
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&case(), |case| {
        let (mut extract, mut whole, published) = round_trip.run(&case);
        check(&case, &published)?;
        if !timed {
            return Ok(());
        }
        for _ in 0..REMEASURE {
            if extract <= PER_MESSAGE && whole <= PER_MESSAGE {
                break;
            }
            let (e, w, _) = round_trip.run(&case);
            extract = extract.min(e);
            whole = whole.min(w);
        }
        prop_assert!(
            extract <= PER_MESSAGE,
            "extract took {:?} (fastest of {} runs)",
            extract,
            REMEASURE + 1
        );
        prop_assert!(
            whole <= PER_MESSAGE,
            "process + publish took {:?} (fastest of {} runs)",
            whole,
            REMEASURE + 1
        );
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
