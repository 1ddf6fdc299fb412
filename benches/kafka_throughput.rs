//! Throughput of producing and consuming through a real Kafka-compatible broker, raw `rdkafka`
//! against eventscope-wrapped, measured in the same run with the same messages and settings.
//!
//! ```text
//! scripts/kafka.sh start
//! cargo bench --features kafka --bench kafka_throughput
//! cargo bench --features kafka,jemalloc --bench kafka_throughput   # jemalloc as the process's malloc
//! ```
//!
//! Environment: `KAFKA_BOOTSTRAP` (the broker list), else `127.0.0.1:$KAFKA_PORT` (port 9092
//! by default), as `scripts/kafka.sh` starts it; `BENCH_MESSAGES` (default 200 000: with
//! fewer, start and shutdown weigh on the rates), `BENCH_REPS` (default 6), `BENCH_SETUPS`
//! (comma-separated subset of `none,unsampled,sampled`; default all). Messages are 256 bytes
//! with a 7-byte key, over 4 partitions. Each repetition produces into a fresh topic per side
//! and then consumes the wrapped topic (which carries the headers the layer writes) with a fresh
//! group per side, the order of the sides rotating between repetitions. Printed: every run's
//! rates and its ratios to raw, then the median of those within-run ratios and of the
//! microseconds a side adds per message.
//!
//! - raw produce: `FutureProducer::send_result`, waiting 1 ms on `QueueFull`, then every
//!   delivery report awaited;
//! - adapter produce: `KafkaPublisher` alone (`ready` + `call`), no layer, no headers;
//! - headers produce: `KafkaPublisher` alone with the headers the layer writes in the setup
//!   (`message-id` and `correlation-id`, 36 bytes each, and `traceparent` under a tracer
//!   provider), no layer: the floor for any propagation in Kafka headers, so wrapped ÷ headers
//!   is the layer's own cost;
//! - wrapped produce: `PublishLayer` over `KafkaPublisher`: ids, trace context and metrics;
//! - raw consume: `StreamConsumer::recv`, then `store_offset_from_message` (what an
//!   at-least-once consumer does), one message at a time;
//! - otel consume: raw, instrumented by hand with plain OpenTelemetry as its guides show: the
//!   SDK's W3C propagator extracts the parent from the headers, one consumer span starts with
//!   the four attributes samplers see (SPEC §3), its context is current while the message is
//!   handled, and it ends. No ids, no metrics, no lag, no consumer core: what tracing each
//!   message costs an application that does it by hand, beside which wrapped ÷ raw can be read
//!   (the span start and the attach are what any library that gives each message a span pays;
//!   the propagator's parse is the SDK's, slower than eventscope's W3C fast path);
//! - adapter consume: `KafkaConsumer::run` with the bare handler;
//! - wrapped consume: `KafkaConsumer::run` with a `ProcessLayer` handler. Consumer times include
//!   the graceful shutdown and final commit.
//!
//! Allocations per consumed message: the bench's global allocator counts every allocation and
//! reallocation made through Rust's allocator during each consume side (consumer start to
//! shutdown), divided by the messages. librdkafka's own C `malloc` calls are not counted, with
//! or without the `jemalloc` feature: they reach `malloc` directly, not Rust's allocator.
//!
//! Tracer setups: `none` (no tracer provider), `unsampled` (an SDK provider with
//! `Sampler::AlwaysOff`) and `sampled` (`Sampler::AlwaysOn`, spans batched to an exporter that
//! discards them), given to the layers and the consumer with `tracer_provider`.

#[path = "support/mod.rs"]
mod support;

use support::{env_usize, median, Discard};

use std::alloc::{GlobalAlloc, Layout};
use std::cell::RefCell;
use std::future::ready;
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventscope::kafka::{
    consumer_config, producer_config, EventscopeContext, KafkaConsumer, KafkaMessage,
    KafkaPublisher, KafkaRecord,
};
use eventscope::metrics::Metrics;
use eventscope::publish::PublishLayer;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SpanKind, TraceContextExt as _, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedHeaders, BorrowedMessage, Headers as _, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::Notify;
use tower::{service_fn, Layer, Service, ServiceExt};

const PARTITIONS: i32 = 4;
const PAYLOAD: usize = 256;

/// Allocation and reallocation calls made through Rust's allocator, on any thread.
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

/// The process's allocator, counting its calls into [`ALLOCATIONS`].
struct Counting<A>(A);

// SAFETY: every call is forwarded unchanged to the wrapped allocator, which upholds the
// contract; counting touches no memory the allocator hands out.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Counting<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's guarantees, passed on.
        unsafe { self.0.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's guarantees, passed on.
        unsafe { self.0.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's guarantees, passed on.
        unsafe { self.0.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's guarantees, passed on.
        unsafe { self.0.dealloc(ptr, layout) }
    }
}

/// jemalloc for Rust; built unprefixed, it is librdkafka's `malloc` as well.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: Counting<tikv_jemallocator::Jemalloc> = Counting(tikv_jemallocator::Jemalloc);

#[cfg(not(feature = "jemalloc"))]
#[global_allocator]
static GLOBAL: Counting<std::alloc::System> = Counting(std::alloc::System);

const ALLOCATOR: &str = if cfg!(feature = "jemalloc") {
    "jemalloc (Rust and librdkafka)"
} else {
    "the system malloc (glibc here)"
};

/// Allocations per message while `consume` runs.
async fn counting_allocations<F: std::future::Future<Output = f64>>(
    n: usize,
    consume: F,
) -> (f64, f64) {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let rate = consume.await;
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    (rate, allocations as f64 / n as f64)
}

/// `KAFKA_BOOTSTRAP`, else `127.0.0.1:$KAFKA_PORT` (9092 when unset), as `scripts/kafka.sh`.
fn bootstrap() -> String {
    if let Some(servers) = std::env::var("KAFKA_BOOTSTRAP")
        .ok()
        .filter(|s| !s.trim().is_empty())
    {
        return servers;
    }
    let port = std::env::var("KAFKA_PORT").unwrap_or_else(|_| "9092".into());
    format!("127.0.0.1:{port}")
}

/// `BENCH_CONSUMER_CONFIG`: librdkafka settings (`key=value,…`) for every consumer.
fn consumer_settings() -> Vec<(String, String)> {
    let settings = std::env::var("BENCH_CONSUMER_CONFIG").unwrap_or_default();
    settings
        .split(',')
        .filter_map(|pair| pair.split_once('='))
        .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
        .collect()
}

/// Whether the first broker of the list accepts connections.
fn reachable(servers: &str) -> bool {
    use std::net::{TcpStream, ToSocketAddrs};
    let first = servers.split(',').next().unwrap_or_default().trim();
    let first = first.split_once("://").map_or(first, |(_, rest)| rest);
    first.to_socket_addrs().is_ok_and(|mut addrs| {
        addrs.any(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok())
    })
}
fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}

struct Bench {
    bootstrap: String,
    /// From `BENCH_CONSUMER_CONFIG`.
    consumer_settings: Vec<(String, String)>,
    n: usize,
    keys: Vec<Vec<u8>>,
    payload: Vec<u8>,
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    metrics: Metrics,
    /// The setup's tracer provider (`None`: no provider, the global no-op one).
    tracer: RefCell<Option<SdkTracerProvider>>,
}

impl Bench {
    async fn create_topic(&self, prefix: &str) -> String {
        let topic = unique(prefix);
        let new = NewTopic::new(&topic, PARTITIONS, TopicReplication::Fixed(1));
        for result in self
            .admin
            .create_topics(&[new], &AdminOptions::new())
            .await
            .expect("create topic")
        {
            result.expect("topic created");
        }
        topic
    }

    async fn delete_topics(&self, topics: &[String]) {
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        // Keeps the in-memory broker small; a broker without DeleteTopics just keeps them.
        let _ = self.admin.delete_topics(&names, &AdminOptions::new()).await;
    }

    async fn produce_raw(&self, topic: &str) -> f64 {
        let start = Instant::now();
        let mut deliveries = Vec::with_capacity(self.n);
        for key in &self.keys {
            let mut record = FutureRecord::to(topic)
                .payload(self.payload.as_slice())
                .key(key.as_slice());
            loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => break deliveries.push(delivery),
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err((error, _)) => panic!("raw produce failed: {error}"),
                }
            }
        }
        for delivery in deliveries {
            delivery.await.expect("report").expect("delivered");
        }
        self.n as f64 / start.elapsed().as_secs_f64()
    }

    async fn produce_wrapped(&self, topic: &str) -> f64 {
        let mut layer = PublishLayer::new(self.metrics.clone());
        if let Some(provider) = &*self.tracer.borrow() {
            layer = layer.tracer_provider(provider);
        }
        let publisher = layer.layer(KafkaPublisher::new(self.producer.clone()));
        self.produce_with(publisher, topic).await
    }

    async fn produce_adapter(&self, topic: &str) -> f64 {
        self.produce_with(KafkaPublisher::new(self.producer.clone()), topic)
            .await
    }

    /// The adapter alone, with the headers the layer writes in this setup (two ids, plus
    /// `traceparent` under a tracer provider) and nothing else of eventscope: the floor for
    /// propagation in Kafka headers.
    async fn produce_adapter_headers(&self, topic: &str) -> f64 {
        let mut publisher = KafkaPublisher::new(self.producer.clone());
        let traced = self.tracer.borrow().is_some();
        let start = Instant::now();
        let mut deliveries = Vec::with_capacity(self.n);
        let id = eventscope::message::new_id();
        for key in &self.keys {
            let mut record = KafkaRecord::new(topic, self.payload.clone())
                .key(key.clone())
                .header("message-id", id.clone())
                .header("correlation-id", id.clone());
            if traced {
                record = record.header(
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
                );
            }
            deliveries.push(publisher.ready().await.expect("ready").call(record));
        }
        for delivery in deliveries {
            delivery.await.expect("delivered");
        }
        self.n as f64 / start.elapsed().as_secs_f64()
    }

    async fn produce_with<S>(&self, mut publisher: S, topic: &str) -> f64
    where
        S: Service<KafkaRecord>,
        S::Error: std::fmt::Debug,
    {
        let start = Instant::now();
        let mut deliveries = Vec::with_capacity(self.n);
        for key in &self.keys {
            let record = KafkaRecord::new(topic, self.payload.clone()).key(key.clone());
            deliveries.push(publisher.ready().await.expect("ready").call(record));
        }
        for delivery in deliveries {
            delivery.await.expect("delivered");
        }
        self.n as f64 / start.elapsed().as_secs_f64()
    }

    /// eventscope's consumer configuration, with `BENCH_CONSUMER_CONFIG` (`key=value,…`) on
    /// top, for every consume side alike.
    fn consumer_config(&self) -> ClientConfig {
        let mut config = consumer_config(&self.bootstrap, &unique("bench-group"));
        for (key, value) in &self.consumer_settings {
            config.set(key, value);
        }
        config
    }

    fn assign_all<C: ConsumerContext>(consumer: &impl Consumer<C>, topic: &str) {
        let mut list = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            list.add_partition_offset(topic, p, Offset::Beginning)
                .expect("offset");
        }
        consumer.assign(&list).expect("assign");
    }

    async fn consume_raw(&self, topic: &str) -> f64 {
        self.consume_raw_with(topic, false).await
    }

    /// Raw, instrumented by hand with plain OpenTelemetry (see the module docs): with the
    /// setup's provider's own tracer (no boxed spans), else the global one.
    async fn consume_otel(&self, topic: &str) -> f64 {
        let provider = self.tracer.borrow().clone();
        match provider {
            Some(provider) => {
                self.consume_otel_with(provider.tracer("bench-otel"), topic)
                    .await
            }
            None => {
                self.consume_otel_with(opentelemetry::global::tracer("bench-otel"), topic)
                    .await
            }
        }
    }

    async fn consume_otel_with<T>(&self, tracer: T, topic: &str) -> f64
    where
        T: opentelemetry::trace::Tracer,
        T::Span: Send + Sync + 'static,
    {
        let propagator = TraceContextPropagator::new();
        self.consume_plain(topic, |message| {
            let parent = propagator.extract(&HeaderExtractor(message.headers()));
            let span = tracer
                .span_builder("process")
                .with_kind(SpanKind::Consumer)
                .with_attributes([
                    KeyValue::new("messaging.system", "kafka"),
                    KeyValue::new("messaging.operation.name", "process"),
                    KeyValue::new("messaging.operation.type", "process"),
                    KeyValue::new("messaging.destination.name", message.topic().to_owned()),
                ])
                .start_with_context(&tracer, &parent);
            let cx = parent.with_span(span);
            {
                let _current = cx.clone().attach();
                black_box(message.payload().map(<[u8]>::len));
            }
            cx.span().end();
        })
        .await
    }

    /// Raw, but reading every header as a traced consumer must (librdkafka parses the header
    /// list on first access); for `BENCH_ONLY=consume-raw-headers`.
    async fn consume_raw_headers(&self, topic: &str) -> f64 {
        self.consume_raw_with(topic, true).await
    }

    async fn consume_raw_with(&self, topic: &str, read_headers: bool) -> f64 {
        self.consume_plain(topic, |message| {
            black_box(message.payload().map(<[u8]>::len));
            if read_headers {
                if let Some(headers) = message.headers() {
                    for header in headers.iter() {
                        black_box((header.key.len(), header.value.map(<[u8]>::len)));
                    }
                }
            }
        })
        .await
    }

    /// Consumes the messages of `topic` with a plain `StreamConsumer`, one at a time: `handle`,
    /// then `store_offset_from_message` (what an at-least-once consumer does). The rate.
    async fn consume_plain(
        &self,
        topic: &str,
        mut handle: impl FnMut(&BorrowedMessage<'_>),
    ) -> f64 {
        let consumer: StreamConsumer = self.consumer_config().create().expect("consumer");
        Self::assign_all(&consumer, topic);
        let start = Instant::now();
        let mut seen = 0;
        while seen < self.n {
            let message = consumer.recv().await.expect("message");
            handle(&message);
            consumer
                .store_offset_from_message(&message)
                .expect("store offset");
            seen += 1;
        }
        self.n as f64 / start.elapsed().as_secs_f64()
    }

    async fn consume_wrapped(&self, topic: &str) -> f64 {
        self.consume_with(topic, true).await
    }

    async fn consume_adapter(&self, topic: &str) -> f64 {
        self.consume_with(topic, false).await
    }

    async fn consume_with(&self, topic: &str, layered: bool) -> f64 {
        let config = self.consumer_config();
        let consumer: StreamConsumer<EventscopeContext> = config
            .create_with_context(EventscopeContext::new(&config))
            .expect("consumer");
        Self::assign_all(&consumer, topic);
        let seen = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(Notify::new());
        let n = self.n;
        let handler = service_fn({
            let (seen, done) = (seen.clone(), done.clone());
            move |message: KafkaMessage| {
                black_box(message.payload().len());
                if seen.fetch_add(1, Ordering::Relaxed) + 1 == n {
                    done.notify_one();
                }
                ready(Ok::<_, std::io::Error>(()))
            }
        });
        let mut driver = KafkaConsumer::new(consumer).metrics(self.metrics.clone());
        if let Some(provider) = &*self.tracer.borrow() {
            driver = driver.tracer_provider(provider);
        }
        if !layered {
            driver = driver.without_process_layer_for_benchmarks();
        }
        let start = Instant::now();
        driver
            .run(handler, done.notified())
            .await
            .expect("consumer");
        n as f64 / start.elapsed().as_secs_f64()
    }
}

/// rdkafka's headers as the OpenTelemetry propagator reads them (text values only).
struct HeaderExtractor<'a>(Option<&'a BorrowedHeaders>);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0?
            .iter()
            .find(|header| header.key.eq_ignore_ascii_case(key))
            .and_then(|header| std::str::from_utf8(header.value?).ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .map(|headers| headers.iter().map(|header| header.key).collect())
            .unwrap_or_default()
    }
}

fn provider(sampler: Sampler) -> SdkTracerProvider {
    SdkTracerProvider::builder()
        .with_sampler(sampler)
        .with_batch_exporter(Discard)
        .build()
}

/// The sides of one repetition, in the order of [`PRODUCE`] and [`CONSUME`].
struct Run {
    produce: [f64; 4],
    consume: [f64; 4],
    /// Allocations per consumed message.
    allocations: [f64; 4],
}

const PRODUCE: [&str; 4] = ["raw", "adapter", "headers", "wrapped"];
const CONSUME: [&str; 4] = ["raw", "otel", "adapter", "wrapped"];

/// Microseconds `side` adds per message over `base`, from their rates.
fn added_micros(base: f64, side: f64) -> f64 {
    (1.0 / side - 1.0 / base) * 1e6
}

fn print_run(rep: usize, run: &Run) {
    let [raw, adapter, headers, wrapped] = run.produce;
    println!(
        "  run {rep}: produce raw {raw:>7.0}/s  adapter {adapter:>7.0} ({:.3})  headers {headers:>7.0} ({:.3})  wrapped {wrapped:>7.0} ({:.3}; {:.3} of headers)",
        adapter / raw,
        headers / raw,
        wrapped / raw,
        wrapped / headers,
    );
    let [raw, otel, adapter, wrapped] = run.consume;
    let [raw_allocs, otel_allocs, adapter_allocs, wrapped_allocs] = run.allocations;
    println!(
        "         consume raw {raw:>7.0}/s  otel {otel:>7.0} ({:.3})  adapter {adapter:>7.0} ({:.3})  wrapped {wrapped:>7.0} ({:.3})  allocations/msg raw {raw_allocs:.2}  otel {otel_allocs:.2}  adapter {adapter_allocs:.2}  wrapped {wrapped_allocs:.2}",
        otel / raw,
        adapter / raw,
        wrapped / raw,
    );
}

/// Medians over the runs of each within-run ratio and added time.
fn print_summary(runs: &[Run]) {
    let produce = |f: fn(&[f64; 4]) -> f64| median(runs.iter().map(|r| f(&r.produce)));
    let consume = |f: fn(&[f64; 4]) -> f64| median(runs.iter().map(|r| f(&r.consume)));
    println!(
        "  median of {} runs (ratios and µs within each run):",
        runs.len()
    );
    println!(
        "    produce: adapter ÷ raw {:.3}, headers ÷ raw {:.3}, wrapped ÷ raw {:.3}, wrapped ÷ headers {:.3}",
        produce(|[r, a, _, _]| a / r),
        produce(|[r, _, h, _]| h / r),
        produce(|[r, _, _, w]| w / r),
        produce(|[_, _, h, w]| w / h),
    );
    println!(
        "             µs/msg: raw {:.2}, headers {:+.2} over raw, wrapped {:+.2} over raw, {:+.2} over headers",
        produce(|[r, _, _, _]| 1e6 / r),
        produce(|[r, _, h, _]| added_micros(*r, *h)),
        produce(|[r, _, _, w]| added_micros(*r, *w)),
        produce(|[_, _, h, w]| added_micros(*h, *w)),
    );
    println!(
        "    consume: otel ÷ raw {:.3}, adapter ÷ raw {:.3}, wrapped ÷ raw {:.3}; µs/msg: raw {:.2}, otel {:+.2}, adapter {:+.2}, wrapped {:+.2} over raw",
        consume(|[r, o, _, _]| o / r),
        consume(|[r, _, a, _]| a / r),
        consume(|[r, _, _, w]| w / r),
        consume(|[r, _, _, _]| 1e6 / r),
        consume(|[r, o, _, _]| added_micros(*r, *o)),
        consume(|[r, _, a, _]| added_micros(*r, *a)),
        consume(|[r, _, _, w]| added_micros(*r, *w)),
    );
    let allocations = |i: usize| median(runs.iter().map(|r| r.allocations[i]));
    println!(
        "    allocations per consumed message (Rust's allocator only): raw {:.2}, otel {:.2}, adapter {:.2}, wrapped {:.2}",
        allocations(0),
        allocations(1),
        allocations(2),
        allocations(3),
    );
}

async fn run_setup(bench: &Bench, reps: usize) {
    // For profiling one side: `produce-wrapped`, `consume-wrapped`, ….
    if let Ok(only) = std::env::var("BENCH_ONLY") {
        let topic = bench.create_topic("bench-only").await;
        bench.produce_wrapped(&topic).await;
        for _ in 0..reps {
            let rate = match only.as_str() {
                "produce-raw" => bench.produce_raw(&topic).await,
                "produce-adapter" => bench.produce_adapter(&topic).await,
                "produce-adapter-headers" => bench.produce_adapter_headers(&topic).await,
                "produce-wrapped" => bench.produce_wrapped(&topic).await,
                "consume-raw" => bench.consume_raw(&topic).await,
                "consume-raw-headers" => bench.consume_raw_headers(&topic).await,
                "consume-otel" => bench.consume_otel(&topic).await,
                "consume-adapter" => bench.consume_adapter(&topic).await,
                "consume-wrapped" => bench.consume_wrapped(&topic).await,
                other => panic!("unknown BENCH_ONLY {other}"),
            };
            println!("  {only}: {rate:.0} msg/s");
        }
        bench.delete_topics(&[topic]).await;
        return;
    }
    let mut runs = Vec::with_capacity(reps);
    for rep in 0..reps {
        let mut run = Run {
            produce: [0.0; 4],
            consume: [0.0; 4],
            allocations: [0.0; 4],
        };
        let mut topics = Vec::with_capacity(PRODUCE.len());
        for side in PRODUCE {
            topics.push(bench.create_topic(&format!("bench-{side}")).await);
        }
        // Each side goes first, second, … in turn.
        for i in 0..PRODUCE.len() {
            let side = (i + rep) % PRODUCE.len();
            let topic = &topics[side];
            run.produce[side] = match side {
                0 => bench.produce_raw(topic).await,
                1 => bench.produce_adapter(topic).await,
                2 => bench.produce_adapter_headers(topic).await,
                _ => bench.produce_wrapped(topic).await,
            };
        }
        // Everyone consumes the wrapped topic: the same messages, trace headers included.
        let wrapped_topic = &topics[PRODUCE.len() - 1];
        for i in 0..CONSUME.len() {
            let side = (i + rep) % CONSUME.len();
            let consume = async {
                match side {
                    0 => bench.consume_raw(wrapped_topic).await,
                    1 => bench.consume_otel(wrapped_topic).await,
                    2 => bench.consume_adapter(wrapped_topic).await,
                    _ => bench.consume_wrapped(wrapped_topic).await,
                }
            };
            (run.consume[side], run.allocations[side]) =
                counting_allocations(bench.n, consume).await;
        }
        bench.delete_topics(&topics).await;
        print_run(rep + 1, &run);
        runs.push(run);
    }
    print_summary(&runs);
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let n = env_usize("BENCH_MESSAGES", 200_000);
    let reps = env_usize("BENCH_REPS", 6).max(1);
    let setups = std::env::var("BENCH_SETUPS").unwrap_or_else(|_| "none,unsampled,sampled".into());
    let bootstrap = bootstrap();
    if !reachable(&bootstrap) {
        eprintln!("no broker on {bootstrap}: run `scripts/kafka.sh start` first (KAFKA_PORT, KAFKA_BOOTSTRAP)");
        std::process::exit(1);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let bench = Bench {
            n,
            keys: (0..n)
                .map(|i| format!("k{:06}", i % 1_000_000).into_bytes())
                .collect(),
            payload: vec![b'p'; PAYLOAD],
            producer: producer_config(&bootstrap).create().expect("producer"),
            admin: producer_config(&bootstrap).create().expect("admin"),
            metrics: Metrics::new(),
            tracer: RefCell::new(None),
            bootstrap,
            consumer_settings: consumer_settings(),
        };
        println!(
            "{n} messages of {PAYLOAD} B, {PARTITIONS} partitions, {reps} runs, broker {}, allocator: {ALLOCATOR}",
            bench.bootstrap
        );
        println!("(allocations/msg count Rust's allocator only: librdkafka's C mallocs are not seen)");
        if !bench.consumer_settings.is_empty() {
            println!("consumer settings: {:?}", bench.consumer_settings);
        }
        for setup in setups.split(',').map(str::trim) {
            let sampler = match setup {
                "none" => None,
                "unsampled" => Some(Sampler::AlwaysOff),
                "sampled" => Some(Sampler::AlwaysOn),
                other => panic!("unknown setup {other}"),
            };
            println!("tracer: {setup}");
            *bench.tracer.borrow_mut() = sampler.map(provider);
            run_setup(&bench, reps).await;
        }
    });
}
