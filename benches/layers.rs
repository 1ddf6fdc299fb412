//! Per-message cost of publish + process through eventscope's layers, against the same bare
//! services in the same run.
//!
//! ```text
//! cargo bench --bench layers                 # criterion times
//! scripts/bench-instructions.sh              # callgrind instructions per round trip
//! ```
//!
//! The inner publisher and handler complete immediately, so what is measured is the layers
//! alone: span start, header injection and extraction, ids, metrics. Cases:
//!
//! - `bare`: the same services without layers;
//! - `no-sdk`: the layers with no tracer provider installed (the global no-op one);
//! - `unsampled`: an SDK provider whose parent-based sampler drops the root (ratio 0), so the
//!   process span is unsampled because its parent is;
//! - `sampled`: an SDK provider sampling everything into a batch processor whose exporter
//!   discards;
//! - `sdk-floor`: no eventscope at all, only what the OpenTelemetry SDK itself costs for the
//!   spans SPEC §3 asks of an unsampled round trip, started as the layers start them: two span
//!   starts with the four sampler attributes under the `unsampled` provider, the creation
//!   context as the process span's parent, and the process span's context attached twice
//!   (for `call` and for the one poll). No ids, no headers, no metrics. The layers' own cost
//!   with an SDK is `unsampled` minus this.
//! - `unsampled-dedup` (feature `dedup`): `unsampled` with the idempotency layer and its
//!   in-memory store inside the process layer, every message a new id (claimed, then marked
//!   done). The layer's cost is this minus `unsampled`.
//! - `unsampled-dlq`: `unsampled` with the process layer a consumer gives a handler when it has
//!   a retry policy and a dead-letter destination (a `Classifier` whose fallback is a
//!   `RetryPolicy`), and the message told its attempt as the consumer core tells it. What a
//!   message that succeeds pays for the failure path in the layers is this minus `unsampled`;
//!   `benches/consumer.rs` measures the same through the consumer core.
//!
//! With `EVENTSCOPE_CALLGRIND=<case>` the binary runs that case's round trip a fixed number of
//! times instead (after a warm-up), for `valgrind --tool=callgrind
//! --toggle-collect='*measured_round_trip*'`, and prints the allocations per round trip to
//! stderr (`allocations N`), counted by the bench's global allocator over the measured round
//! trips only (on every thread: in `sampled` the batch processor's too).

#[path = "support/mod.rs"]
mod support;

use support::Discard;

use std::alloc::{GlobalAlloc, Layout, System};
use std::future::ready;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::measurement::WallTime;
use criterion::{BatchSize, BenchmarkGroup, Criterion};
use eventscope::message::{
    HeaderList, Headers, HeadersMut, IncomingMessage, OutgoingMessage, Receipt,
};
use eventscope::metrics::Metrics;
use eventscope::process::ProcessLayer;
use eventscope::publish::PublishLayer;
use futures_util::FutureExt;
use opentelemetry::trace::{
    Span as _, SpanBuilder, SpanContext, SpanKind, TraceContextExt, Tracer as _,
    TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tower::{service_fn, Layer, Service};

/// The system allocator, counting allocations (one relaxed add each: a few instructions in
/// the counts, the same for every case).
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to `System` unchanged; the counter has no effect on memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A message that is both what is published and what is consumed.
#[derive(Clone, Debug)]
struct Msg {
    headers: HeaderList,
    payload: Vec<u8>,
    /// As on a broker's record, the creation time is a field, not a clock read: milliseconds
    /// since the epoch, as a Kafka record keeps it.
    created_millis: u64,
    /// The attempt the consumer core hands it for, as adapters keep it.
    attempt: u32,
}

impl Msg {
    fn new() -> Self {
        Self {
            headers: HeaderList::new(),
            payload: vec![0u8; 256],
            created_millis: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            attempt: 1,
        }
    }
}

impl Headers for Msg {
    fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.headers.iter()
    }
}

impl HeadersMut for Msg {
    fn set_header(&mut self, name: &str, value: &str) {
        self.headers.set_header(name, value);
    }

    fn set_static_header(&mut self, name: &'static str, value: &str) {
        self.headers.set_static_header(name, value);
    }

    fn append_static_header(&mut self, name: &'static str, value: &str) {
        self.headers.append_static_header(name, value);
    }

    fn remove_header(&mut self, name: &str) {
        self.headers.remove(name);
    }
}

impl OutgoingMessage for Msg {
    fn system(&self) -> &'static str {
        "kafka"
    }
    fn destination(&self) -> &str {
        "orders"
    }
    fn payload(&self) -> &[u8] {
        &self.payload
    }
}

impl IncomingMessage for Msg {
    fn system(&self) -> &'static str {
        "kafka"
    }
    fn destination(&self) -> &str {
        "orders"
    }
    fn partition(&self) -> Option<i32> {
        Some(0)
    }
    fn consumer_group(&self) -> Option<&str> {
        Some("bench")
    }
    fn created_at(&self) -> Option<std::time::SystemTime> {
        Some(std::time::UNIX_EPOCH + std::time::Duration::from_millis(self.created_millis))
    }
    /// As the Kafka adapter reads it.
    fn created_at_unix_nanos(&self) -> Option<u64> {
        Some(self.created_millis * 1_000_000)
    }
    fn payload(&self) -> &[u8] {
        &self.payload
    }
    fn delivery_attempt(&self) -> Option<u32> {
        Some(self.attempt)
    }
    fn set_delivery_attempt(&mut self, attempt: u32) {
        self.attempt = attempt;
    }
}

/// The broker's acknowledgement carries the message back so it can be "consumed".
struct Sent(Msg);

impl Receipt for Sent {
    fn partition(&self) -> Option<i32> {
        Some(0)
    }
}

/// The broker acknowledges at once, handing the message back so it can be "consumed".
fn broker() -> impl Service<Msg, Response = Sent, Error = std::io::Error> + Clone {
    service_fn(|m: Msg| ready(Ok(Sent(m))))
}

/// The handler completes at once.
fn handler() -> impl Service<Msg, Response = usize, Error = std::io::Error> + Clone {
    service_fn(|m: Msg| ready(Ok(m.payload.len())))
}

const CASES: [&str; 7] = [
    "bare",
    "no-sdk",
    "unsampled",
    "sampled",
    "sdk-floor",
    "unsampled-dedup",
    "unsampled-dlq",
];

fn provider(name: &str) -> Option<SdkTracerProvider> {
    match name {
        "unsampled" | "sdk-floor" | "unsampled-dedup" | "unsampled-dlq" => Some(
            SdkTracerProvider::builder()
                .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                    0.0,
                ))))
                .with_simple_exporter(Discard)
                .build(),
        ),
        "sampled" => Some(
            SdkTracerProvider::builder()
                .with_sampler(Sampler::AlwaysOn)
                .with_batch_exporter(Discard)
                .build(),
        ),
        _ => None,
    }
}

thread_local! {
    /// The publish span's context on its way to the handler (`sdk-floor` has no headers), kept
    /// out of `Msg` so that every case moves the same message.
    static CARRIED: std::cell::Cell<SpanContext> = const { std::cell::Cell::new(SpanContext::NONE) };
}

/// A span builder with the attributes samplers see (SPEC §3), as the layers make it.
fn span_builder(operation: &'static str) -> SpanBuilder {
    let mut attributes = Vec::with_capacity(12);
    attributes.push(KeyValue::new("messaging.system", "kafka"));
    attributes.push(KeyValue::new("messaging.operation.name", operation));
    attributes.push(KeyValue::new("messaging.operation.type", operation));
    attributes.push(KeyValue::new("messaging.destination.name", "orders"));
    SpanBuilder {
        name: operation.into(),
        span_kind: Some(SpanKind::Producer),
        start_time: None,
        attributes: Some(attributes),
        events: None,
        links: None,
    }
}

/// Where a case runs: timed by criterion, or counted by callgrind.
enum Mode<'a, 'b> {
    Criterion(&'a mut BenchmarkGroup<'b, WallTime>),
    Callgrind(usize),
}

/// Runs case `name` in `mode`.
fn run(name: &str, metrics: &Metrics, mode: Mode<'_, '_>) {
    let provider = provider(name);
    if name == "bare" {
        return drive(name, broker(), handler(), mode);
    }
    if let (Some(provider), "sdk-floor") = (&provider, name) {
        let tracer = provider.tracer("sdk-floor");
        let publisher = {
            let tracer = tracer.clone();
            service_fn(move |m: Msg| {
                let span = tracer.build_with_context(span_builder("send"), &Context::current());
                CARRIED.set(span.span_context().clone());
                drop(span);
                ready(Ok::<_, std::io::Error>(Sent(m)))
            })
        };
        let handler = service_fn(move |m: Msg| {
            let parent =
                Context::new().with_remote_span_context(CARRIED.replace(SpanContext::NONE));
            let span = tracer.build_with_context(span_builder("process"), &parent);
            let cx = parent.with_remote_span_context(span.span_context().clone());
            drop(span);
            drop(cx.clone().attach());
            drop(cx.attach());
            ready(Ok::<_, std::io::Error>(m.payload.len()))
        });
        return drive(name, publisher, handler, mode);
    }
    let mut publish = PublishLayer::new(metrics.clone());
    let mut process = ProcessLayer::new(metrics.clone());
    if let Some(provider) = &provider {
        publish = publish.tracer_provider(provider);
        process = process.tracer_provider(provider);
    }
    if name == "unsampled-dedup" {
        #[cfg(feature = "dedup")]
        {
            use eventscope::dedup::{DedupLayer, MemoryStore, Processed};
            let dedup = DedupLayer::new(MemoryStore::default(), metrics.clone());
            let handler = tower::util::MapResponseLayer::new(|p: Processed<usize>| {
                p.into_response().unwrap_or(0)
            })
            .layer(dedup.layer(handler()));
            return drive(name, publish.layer(broker()), process.layer(handler), mode);
        }
        #[cfg(not(feature = "dedup"))]
        return;
    }
    if name == "unsampled-dlq" {
        use eventscope::classify::{Classifier, RetryPolicy};
        let policy =
            RetryPolicy::exponential(std::time::Duration::from_millis(100)).max_attempts(5);
        let process = process.classify_errors(Classifier::new().otherwise(policy));
        let told = tower::util::MapRequestLayer::new(|mut m: Msg| {
            m.set_delivery_attempt(1);
            m
        });
        return drive(
            name,
            publish.layer(broker()),
            told.layer(process.layer(handler())),
            mode,
        );
    }
    drive(
        name,
        publish.layer(broker()),
        process.layer(handler()),
        mode,
    );
}

fn drive<P, H>(name: &str, mut p: P, mut h: H, mode: Mode<'_, '_>)
where
    P: Service<Msg, Response = Sent>,
    P::Error: std::fmt::Debug,
    H: Service<Msg, Response = usize>,
    H::Error: std::fmt::Debug,
{
    match mode {
        Mode::Criterion(group) => {
            group.bench_function(name, |b| {
                b.iter_batched(
                    Msg::new,
                    |m| round_trip(&mut p, &mut h, m),
                    BatchSize::SmallInput,
                )
            });
        }
        Mode::Callgrind(iterations) => {
            for _ in 0..100 {
                std::hint::black_box(round_trip(&mut p, &mut h, Msg::new()));
            }
            let mut allocations = 0;
            for _ in 0..iterations {
                let message = Msg::new();
                let before = ALLOCATIONS.load(Ordering::Relaxed);
                std::hint::black_box(measured_round_trip(&mut p, &mut h, message));
                allocations += ALLOCATIONS.load(Ordering::Relaxed) - before;
            }
            eprintln!("allocations {:.1}", allocations as f64 / iterations as f64);
        }
    }
}

fn round_trip<P, H>(publisher: &mut P, handler: &mut H, message: Msg) -> usize
where
    P: Service<Msg, Response = Sent>,
    P::Error: std::fmt::Debug,
    H: Service<Msg, Response = usize>,
    H::Error: std::fmt::Debug,
{
    let Sent(delivered) = publisher.call(message).now_or_never().unwrap().unwrap();
    handler.call(delivered).now_or_never().unwrap().unwrap()
}

/// The function callgrind counts (`--toggle-collect`), so warm-up calls are not counted.
#[inline(never)]
fn measured_round_trip<P, H>(publisher: &mut P, handler: &mut H, message: Msg) -> usize
where
    P: Service<Msg, Response = Sent>,
    P::Error: std::fmt::Debug,
    H: Service<Msg, Response = usize>,
    H::Error: std::fmt::Debug,
{
    round_trip(publisher, handler, message)
}

fn main() {
    let metrics = Metrics::new();
    if let Ok(name) = std::env::var("EVENTSCOPE_CALLGRIND") {
        let iterations = std::env::var("EVENTSCOPE_CALLGRIND_ITERATIONS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(2_000);
        run(&name, &metrics, Mode::Callgrind(iterations));
        return;
    }
    let mut criterion = Criterion::default().configure_from_args();
    {
        let mut group = criterion.benchmark_group("publish+process");
        for name in CASES {
            run(name, &metrics, Mode::Criterion(&mut group));
        }
        group.finish();
    }
    criterion.final_summary();
}
