//! Throughput of producing and consuming through a real Kafka-compatible broker, raw `rdkafka`
//! against eventscope-wrapped, measured in the same run with the same messages and settings.
//!
//! ```text
//! scripts/kafka.sh start
//! cargo bench --features kafka --bench kafka_throughput
//! ```
//!
//! Environment: `BENCH_MESSAGES` (default 50 000), `BENCH_REPS` (default 5), `BENCH_SETUPS`
//! (comma-separated subset of `none,unsampled,sampled`; default all). Messages are 256 bytes
//! with a 7-byte key, over 4 partitions. Each repetition produces into a fresh topic per side
//! (the order of the sides rotating between repetitions) and then consumes the wrapped topic
//! (which carries the headers the layer writes) with a fresh group per side, rotating too.
//! Reported: median messages/s per side and its ratio to raw.
//!
//! - raw produce: `FutureProducer::send_result`, waiting 1 ms on `QueueFull`, then every
//!   delivery report awaited;
//! - adapter produce: `KafkaPublisher` alone (`ready` + `call`), no layer, no headers;
//! - wrapped produce: `PublishLayer` over `KafkaPublisher`: ids, trace context and metrics;
//! - raw consume: `StreamConsumer::recv`, then `store_offset_from_message` (what an
//!   at-least-once consumer does), one message at a time;
//! - adapter consume: `KafkaConsumer::run` with the bare handler;
//! - wrapped consume: `KafkaConsumer::run` with a `ProcessLayer` handler. Consumer times include
//!   the graceful shutdown and final commit.
//!
//! Tracer setups: `none` (no tracer provider), `unsampled` (an SDK provider with
//! `Sampler::AlwaysOff`) and `sampled` (`Sampler::AlwaysOn`, spans batched to an exporter that
//! discards them), given to the layers and the consumer with `tracer_provider`.

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
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers as _, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::Notify;
use tower::{service_fn, Layer, Service, ServiceExt};

const BOOTSTRAP: &str = "127.0.0.1:9092";
const PARTITIONS: i32 = 4;
const PAYLOAD: usize = 256;

#[derive(Debug)]
struct Discard;

impl SpanExporter for Discard {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        drop(batch);
        ready(Ok(()))
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}

fn median(mut rates: Vec<f64>) -> f64 {
    rates.sort_by(|a, b| a.total_cmp(b));
    rates[rates.len() / 2]
}

struct Bench {
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
    /// `traceparent` under a tracer provider) and nothing else of eventscope.
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

    fn consumer_config(&self) -> ClientConfig {
        consumer_config(BOOTSTRAP, &unique("bench-group"))
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

    /// Raw, but reading every header as a traced consumer must (librdkafka parses the header
    /// list on first access); for `BENCH_ONLY=consume-raw-headers`.
    async fn consume_raw_headers(&self, topic: &str) -> f64 {
        self.consume_raw_with(topic, true).await
    }

    async fn consume_raw_with(&self, topic: &str, read_headers: bool) -> f64 {
        let consumer: StreamConsumer = self.consumer_config().create().expect("consumer");
        Self::assign_all(&consumer, topic);
        let start = Instant::now();
        let mut seen = 0;
        while seen < self.n {
            let message = consumer.recv().await.expect("message");
            black_box(message.payload().map(<[u8]>::len));
            if read_headers {
                if let Some(headers) = message.headers() {
                    for header in headers.iter() {
                        black_box((header.key.len(), header.value.map(<[u8]>::len)));
                    }
                }
            }
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

fn provider(sampler: Sampler) -> SdkTracerProvider {
    SdkTracerProvider::builder()
        .with_sampler(sampler)
        .with_batch_exporter(Discard)
        .build()
}

fn report(what: &str, raw: Vec<f64>, adapter: Vec<f64>, wrapped: Vec<f64>) {
    let (raw, adapter, wrapped) = (median(raw), median(adapter), median(wrapped));
    println!(
        "  {what:<8} raw {raw:>8.0}/s   adapter {adapter:>8.0}/s ({:.3})   wrapped {wrapped:>8.0}/s ({:.3})",
        adapter / raw,
        wrapped / raw
    );
}

/// One side of the comparison.
#[derive(Clone, Copy)]
enum Side {
    Raw,
    Adapter,
    Wrapped,
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
                "consume-adapter" => bench.consume_adapter(&topic).await,
                "consume-wrapped" => bench.consume_wrapped(&topic).await,
                other => panic!("unknown BENCH_ONLY {other}"),
            };
            println!("  {only}: {rate:.0} msg/s");
        }
        bench.delete_topics(&[topic]).await;
        return;
    }
    let mut produced = [vec![], vec![], vec![]];
    let mut consumed = [vec![], vec![], vec![]];
    let sides = [Side::Raw, Side::Adapter, Side::Wrapped];
    for rep in 0..reps {
        let topics = [
            bench.create_topic("bench-raw").await,
            bench.create_topic("bench-adapter").await,
            bench.create_topic("bench-wrapped").await,
        ];
        // Each side goes first, second and third in turn.
        for i in 0..sides.len() {
            let side = (i + rep) % sides.len();
            let topic = &topics[side];
            produced[side].push(match sides[side] {
                Side::Raw => bench.produce_raw(topic).await,
                Side::Adapter => bench.produce_adapter(topic).await,
                Side::Wrapped => bench.produce_wrapped(topic).await,
            });
        }
        // Everyone consumes the wrapped topic: the same messages, trace headers included.
        for i in 0..sides.len() {
            let side = (i + rep) % sides.len();
            let topic = &topics[2];
            consumed[side].push(match sides[side] {
                Side::Raw => bench.consume_raw(topic).await,
                Side::Adapter => bench.consume_adapter(topic).await,
                Side::Wrapped => bench.consume_wrapped(topic).await,
            });
        }
        bench.delete_topics(&topics).await;
    }
    let [raw, adapter, wrapped] = produced;
    report("produce", raw, adapter, wrapped);
    let [raw, adapter, wrapped] = consumed;
    report("consume", raw, adapter, wrapped);
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let n = env_usize("BENCH_MESSAGES", 50_000);
    let reps = env_usize("BENCH_REPS", 5).max(1);
    let setups = std::env::var("BENCH_SETUPS").unwrap_or_else(|_| "none,unsampled,sampled".into());
    if std::net::TcpStream::connect_timeout(&BOOTSTRAP.parse().unwrap(), Duration::from_secs(2))
        .is_err()
    {
        eprintln!("no broker on {BOOTSTRAP}: run `scripts/kafka.sh start` first");
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
            producer: producer_config(BOOTSTRAP).create().expect("producer"),
            admin: producer_config(BOOTSTRAP).create().expect("admin"),
            metrics: Metrics::new(),
            tracer: RefCell::new(None),
        };
        println!("{n} messages of {PAYLOAD} B, {PARTITIONS} partitions, median of {reps} runs");
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
