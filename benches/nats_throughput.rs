//! Throughput of JetStream publishing and pull consuming through the NATS server on
//! 127.0.0.1:4222, raw `async-nats` against eventscope's adapter alone and wrapped in its
//! layers, in one run with the same messages and settings.
//!
//! ```text
//! cargo bench --features nats --bench nats_throughput
//! ```
//!
//! Environment: `BENCH_MESSAGES` (default 20 000), `BENCH_REPS` (default 5), `BENCH_WINDOW`
//! (acknowledgements in flight while publishing, default 256), `BENCH_CONCURRENCY` (handlers,
//! default 16), `BENCH_PULL_BATCH` (default: the consumer's own), `BENCH_RUNTIME=current` (a
//! current-thread runtime instead of the multi-thread one), `EVENTSCOPE_NATS_URL`. Messages
//! are 256 bytes, in memory streams (the disk of a shared machine only adds noise). Each
//! repetition publishes into a fresh stream per side, the order of the sides rotating, then
//! consumes the wrapped side's stream (which carries the headers the layer writes) with a fresh
//! durable consumer per side, rotating too. Every run is printed, then the medians and their
//! ratio to raw.
//!
//! - raw publish: `Context::publish`, its acknowledgement future kept in a window of
//!   `BENCH_WINDOW`;
//! - adapter publish: `JetStreamPublisher` (`ready` + `call`, the future polled once so the
//!   record is sent before the next, as the raw side awaits its send), the same window;
//! - wrapped publish: `publish_layer` over it, with an SDK tracer provider that samples nothing
//!   (ids, trace context and metrics are written, no span is recorded);
//! - adapter+headers publish: the adapter sending the three headers the layer writes (a
//!   `Nats-Msg-Id`, a `correlation-id`, a `traceparent`), without the layer: what carrying them
//!   costs the client and the server;
//! - raw consume: `PullConsumer::messages()` (200 per pull), `ack()` after each message;
//! - adapter consume: `JetStreamConsumer::run` without the process layer (16 handlers, its
//!   default pull of twice that);
//! - wrapped consume: `JetStreamConsumer::run` with the process layer, the same unsampled
//!   provider. Consumer times include the start (first pull) and the shutdown.

#[path = "support/mod.rs"]
mod support;

use support::{env_usize, median};

use std::future::IntoFuture;
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use eventscope::metrics::Metrics;
use eventscope::nats::async_nats::jetstream::{self, stream};
use eventscope::nats::{
    self as es_nats, async_nats, JetStreamConsumer, JetStreamMessage, JetStreamPublisher,
    NatsRecord,
};
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tokio::sync::Notify;
use tower::{service_fn, Layer, Service, ServiceExt};

const PAYLOAD: usize = 256;
fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

/// Polls a publish once, as the raw side awaits its send before keeping the acknowledgement in
/// the window: the record goes out now, in order, not when the window is next polled. The
/// future, unless that already finished it.
fn sent<F, T, E>(mut publish: F) -> Option<F>
where
    F: std::future::Future<Output = Result<T, E>> + Unpin,
    E: std::fmt::Debug,
{
    match futures_util::FutureExt::now_or_never(&mut publish) {
        Some(done) => {
            black_box(done.expect("acknowledged"));
            None
        }
        None => Some(publish),
    }
}
struct Bench {
    n: usize,
    concurrency: usize,
    pull_batch: Option<usize>,
    window: usize,
    payload: Bytes,
    js: jetstream::Context,
    metrics: Metrics,
    unsampled: SdkTracerProvider,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Side {
    Raw,
    Adapter,
    Wrapped,
    /// Publishing only: the adapter sending the three headers the layer writes (two ids and
    /// `traceparent`), without the layer.
    AdapterHeaders,
}

const SIDES: [Side; 4] = [
    Side::Raw,
    Side::Adapter,
    Side::Wrapped,
    Side::AdapterHeaders,
];

impl Bench {
    async fn stream(&self) -> (String, String) {
        let name = unique("BENCH");
        let subject = format!("bench.{}", name.to_ascii_lowercase());
        self.js
            .create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![subject.clone()],
                storage: stream::StorageType::Memory,
                ..Default::default()
            })
            .await
            .expect("create stream");
        (name, subject)
    }

    async fn publish(&self, side: Side, subject: &str) -> f64 {
        let start = Instant::now();
        match side {
            Side::Raw => {
                let mut acks: FuturesUnordered<
                    <jetstream::context::PublishAckFuture as IntoFuture>::IntoFuture,
                > = FuturesUnordered::new();
                for _ in 0..self.n {
                    if acks.len() >= self.window {
                        acks.next().await.unwrap().expect("acknowledged");
                    }
                    let ack = self
                        .js
                        .publish(subject.to_owned(), self.payload.clone())
                        .await
                        .expect("sent");
                    acks.push(ack.into_future());
                }
                while let Some(ack) = acks.next().await {
                    ack.expect("acknowledged");
                }
            }
            Side::Adapter => {
                let publisher = JetStreamPublisher::new(self.js.clone());
                self.publish_through(publisher, subject).await;
            }
            Side::Wrapped => {
                let publisher = es_nats::publish_layer(self.metrics.clone())
                    .tracer_provider(&self.unsampled)
                    .layer(JetStreamPublisher::new(self.js.clone()));
                self.publish_through(publisher, subject).await;
            }
            Side::AdapterHeaders => {
                let publisher = JetStreamPublisher::new(self.js.clone());
                self.publish_through_with_headers(publisher, subject).await;
            }
        }
        self.n as f64 / start.elapsed().as_secs_f64()
    }

    async fn publish_through<S>(&self, mut publisher: S, subject: &str)
    where
        S: Service<NatsRecord>,
        S::Future: Unpin,
        S::Error: std::fmt::Debug,
    {
        let mut acks: FuturesUnordered<S::Future> = FuturesUnordered::new();
        for _ in 0..self.n {
            if acks.len() >= self.window {
                acks.next().await.unwrap().expect("acknowledged");
            }
            let record = NatsRecord::new(subject.to_owned(), self.payload.clone());
            let ack = publisher.ready().await.expect("ready").call(record);
            acks.extend(sent(ack));
        }
        while let Some(ack) = acks.next().await {
            ack.expect("acknowledged");
        }
    }

    async fn publish_through_with_headers(&self, mut publisher: JetStreamPublisher, subject: &str) {
        let mut acks = FuturesUnordered::new();
        for i in 0..self.n {
            if acks.len() >= self.window {
                let ack: Result<_, es_nats::PublishError> = acks.next().await.unwrap();
                ack.expect("acknowledged");
            }
            let id = uuid::Uuid::now_v7().hyphenated().to_string();
            let record = NatsRecord::new(subject.to_owned(), self.payload.clone())
                .id(id.clone())
                .header("correlation-id", id)
                .header(
                    "traceparent",
                    format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{i:016x}-00"),
                );
            let ack = publisher.ready().await.expect("ready").call(record);
            acks.extend(sent(ack));
        }
        while let Some(ack) = acks.next().await {
            ack.expect("acknowledged");
        }
    }

    async fn consume(&self, side: Side, stream: &str) -> f64 {
        let durable = unique("bench");
        let pull = self
            .js
            .get_stream(stream)
            .await
            .expect("stream")
            .create_consumer(es_nats::consumer_config(&durable))
            .await
            .expect("consumer");
        let start = Instant::now();
        match side {
            Side::Raw => {
                let mut messages = pull.messages().await.expect("pull");
                for _ in 0..self.n {
                    let message = messages.next().await.unwrap().expect("message");
                    black_box(message.payload.len());
                    message.ack().await.expect("ack");
                }
            }
            Side::Adapter | Side::Wrapped | Side::AdapterHeaders => {
                let handled = Arc::new(AtomicUsize::new(0));
                let all = Arc::new(Notify::new());
                let n = self.n;
                let handler = service_fn({
                    let (handled, all) = (handled.clone(), all.clone());
                    move |m: JetStreamMessage| {
                        black_box(m.payload().len());
                        if handled.fetch_add(1, Ordering::Relaxed) + 1 == n {
                            all.notify_one();
                        }
                        std::future::ready(Ok::<_, std::io::Error>(()))
                    }
                });
                let mut consumer = JetStreamConsumer::new(self.js.clone(), pull)
                    .expect("explicit acks")
                    .max_concurrency(self.concurrency)
                    .metrics(self.metrics.clone())
                    .drain_deadline(Duration::from_secs(10));
                if let Some(batch) = self.pull_batch {
                    consumer = consumer.pull_batch(batch);
                }
                consumer = if side == Side::Adapter {
                    consumer.without_process_layer_for_benchmarks()
                } else {
                    consumer.tracer_provider(&self.unsampled)
                };
                let done = async move { all.notified().await };
                consumer.run(handler, done).await.expect("consumed");
            }
        }
        let rate = self.n as f64 / start.elapsed().as_secs_f64();
        let _ = self
            .js
            .get_stream(stream)
            .await
            .expect("stream")
            .delete_consumer(&durable)
            .await;
        rate
    }
}

fn report(what: &str, columns: &[&str], runs: &[Vec<f64>]) {
    println!("\n{what} (messages/s; ratios to raw in parentheses)");
    println!(
        "run  {}",
        columns
            .iter()
            .map(|c| format!("{c:<20}"))
            .collect::<String>()
    );
    let row = |label: String, values: &[f64], ratios: &[f64]| {
        let cells: String = values
            .iter()
            .zip(ratios)
            .enumerate()
            .map(|(i, (v, r))| {
                if i == 0 {
                    format!("{:<20}", format!("{v:.0}"))
                } else {
                    format!("{:<20}", format!("{v:.0} ({r:.2})"))
                }
            })
            .collect();
        println!("{label:<4} {cells}");
    };
    for (i, run) in runs.iter().enumerate() {
        let ratios: Vec<f64> = run.iter().map(|v| v / run[0]).collect();
        row((i + 1).to_string(), run, &ratios);
    }
    let medians: Vec<f64> = (0..columns.len())
        .map(|c| median(runs.iter().map(|r| r[c])))
        .collect();
    let ratios: Vec<f64> = (0..columns.len())
        .map(|c| median(runs.iter().map(|r| r[c] / r[0])))
        .collect();
    row("med".into(), &medians, &ratios);
    println!("(median ratios are the medians of the per-run ratios)");
}

fn main() {
    // `BENCH_RUNTIME=current`: one thread, no wake-ups across threads.
    let runtime = match std::env::var("BENCH_RUNTIME").as_deref() {
        Ok("current") => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    }
    .enable_all()
    .build()
    .expect("runtime");
    runtime.block_on(async {
        let url = std::env::var("EVENTSCOPE_NATS_URL").unwrap_or_else(|_| "127.0.0.1:4222".into());
        let client = async_nats::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("no NATS server on {url}: {e}"));
        let bench = Bench {
            n: env_usize("BENCH_MESSAGES", 20_000),
            concurrency: env_usize("BENCH_CONCURRENCY", 16),
            pull_batch: std::env::var("BENCH_PULL_BATCH")
                .ok()
                .and_then(|v| v.parse().ok()),
            window: env_usize("BENCH_WINDOW", 256),
            payload: Bytes::from(vec![b'x'; PAYLOAD]),
            js: jetstream::new(client),
            metrics: Metrics::new(),
            unsampled: SdkTracerProvider::builder()
                .with_sampler(Sampler::AlwaysOff)
                .build(),
        };
        let reps = env_usize("BENCH_REPS", 5);
        println!(
            "nats_throughput: {} messages of {PAYLOAD} B per side, {reps} runs, window {}",
            bench.n, bench.window
        );
        let mut publishes = Vec::new();
        let mut consumes = Vec::new();
        for rep in 0..reps {
            let mut publish = vec![0.0; 4];
            let mut streams = Vec::new();
            for k in 0..4 {
                let i = (rep + k) % 4;
                let (name, subject) = bench.stream().await;
                publish[i] = bench.publish(SIDES[i], &subject).await;
                streams.push((i, name));
            }
            let wrapped = streams
                .iter()
                .find(|(i, _)| SIDES[*i] == Side::Wrapped)
                .map(|(_, name)| name.clone())
                .unwrap();
            let mut consume = vec![0.0; 3];
            for k in 0..3 {
                let i = (rep + k) % 3;
                consume[i] = bench.consume(SIDES[i], &wrapped).await;
            }
            for (_, name) in streams {
                let _ = bench.js.delete_stream(&name).await;
            }
            eprintln!(
                "run {}: publish {publish:.0?} consume {consume:.0?}",
                rep + 1
            );
            publishes.push(publish);
            consumes.push(consume);
        }
        report(
            "publish, acknowledged",
            &["raw", "adapter", "wrapped", "adapter+headers"],
            &publishes,
        );
        report("consume, acked", &["raw", "adapter", "wrapped"], &consumes);
    });
}
