//! Throughput of publishing with confirms and consuming through the RabbitMQ on 127.0.0.1:5672,
//! raw `lapin` against eventscope's adapter and against the adapter wrapped in the layers,
//! measured in the same run with the same messages and settings.
//!
//! ```text
//! cargo bench --features rabbitmq --bench rabbitmq_throughput
//! ```
//!
//! Environment: `BENCH_MESSAGES` (default 20 000), `BENCH_REPS` (default 5), `BENCH_SETUPS`
//! (comma-separated subset of `none,unsampled,sampled`; default `none,unsampled`),
//! `BENCH_PREFETCH` (default 64: the consumers' prefetch, and the adapter's `max_concurrency`).
//! Messages are 256 bytes. Each repetition runs every side once, the order of the sides
//! rotating between repetitions; every run of every side is printed with its ratio to the raw
//! run of the same repetition, then the medians of the rates and their ratio to raw, and the
//! median of the per-run ratios.
//!
//! - raw publish: `Channel::basic_publish` on a channel in confirm mode, each message handed to
//!   lapin as it is made (its publish future polled once, as the adapter does), then every
//!   confirm awaited;
//! - adapter publish: `RabbitPublisher` alone (`ready` + `call`, then every future awaited), no
//!   layer, no headers but the timestamp it always writes;
//! - wrapped publish: `publish_layer` over `RabbitPublisher`: ids, trace context, metrics.
//!
//! Every side publishes to a fanout exchange of its own with three queues bound, so the broker
//! does the same work for each; the wrapped side's three queues are consumed, one by each
//! consuming side, so every side consumes the same messages, trace headers included:
//!
//! - raw consume: `basic_consume` with the prefetch, each delivery acknowledged on its own, the
//!   acks in flight while the next deliveries are read;
//! - adapter consume: `RabbitConsumer::run` with the bare handler (the same prefetch as
//!   `max_concurrency`);
//! - wrapped consume: `RabbitConsumer::run` with the consumer's process layer. Consumer times run
//!   from opening the consumer's connection (every side opens one) to the last message handled.
//!
//! Tracer setups: `none` (no tracer provider), `unsampled` (an SDK provider with
//! `Sampler::AlwaysOff`) and `sampled` (`Sampler::AlwaysOn`, spans batched to an exporter that
//! discards them), given to the layers and the consumer with `tracer_provider`.

#[path = "support/mod.rs"]
mod support;

use support::{env_usize, median, Discard};

use std::cell::RefCell;
use std::future::{ready, Future};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use eventscope::metrics::Metrics;
use eventscope::rabbitmq::lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use eventscope::rabbitmq::lapin::types::{AMQPValue, FieldTable};
use eventscope::rabbitmq::lapin::{
    Acker, BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind,
};
use eventscope::rabbitmq::{self, RabbitConsumer, RabbitMessage, RabbitPublisher, RabbitRecord};
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tokio::sync::Notify;
use tower::{service_fn, Layer, Service, ServiceExt};

const URI: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const PAYLOAD: usize = 256;
fn unique(prefix: &str) -> String {
    format!(
        "eventscope-bench-{prefix}-{}",
        uuid::Uuid::now_v7().simple()
    )
}
/// The queues and exchanges of one repetition: each publishing side has a fanout exchange
/// of its own with three queues bound (the broker does the same work for every side); the
/// wrapped side's queues are the ones consumed, one per consuming side.
struct Round {
    /// Per publishing side: its exchange and its three queues.
    sides: [(String, [String; 3]); 3],
}

struct Bench {
    n: usize,
    prefetch: u16,
    payload: Vec<u8>,
    connection: Connection,
    admin: Channel,
    metrics: Metrics,
    tracer: RefCell<Option<SdkTracerProvider>>,
}

impl Bench {
    fn arguments() -> FieldTable {
        let mut arguments = FieldTable::default();
        arguments.insert("x-expires".into(), AMQPValue::LongInt(600_000));
        arguments
    }

    async fn declare(&self, queue: &str) {
        self.admin
            .queue_declare(
                queue.into(),
                QueueDeclareOptions::default(),
                Self::arguments(),
            )
            .await
            .expect("declare");
    }

    async fn round(&self) -> Round {
        let side = |name: &str| (unique(name), [unique(name), unique(name), unique(name)]);
        let round = Round {
            sides: [side("raw"), side("adapter"), side("wrapped")],
        };
        for (exchange, queues) in &round.sides {
            self.admin
                .exchange_declare(
                    exchange.as_str().into(),
                    ExchangeKind::Fanout,
                    ExchangeDeclareOptions {
                        auto_delete: true,
                        ..ExchangeDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .expect("exchange");
            for queue in queues {
                self.declare(queue).await;
                self.admin
                    .queue_bind(
                        queue.as_str().into(),
                        exchange.as_str().into(),
                        "".into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .expect("bind");
            }
        }
        round
    }

    async fn drop_round(&self, round: Round) {
        for (exchange, queues) in &round.sides {
            for queue in queues {
                let _ = self
                    .admin
                    .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                    .await;
            }
            let _ = self
                .admin
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
    }

    async fn confirming_channel(&self) -> Channel {
        let channel = self.connection.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm mode");
        channel
    }

    async fn publish_raw(&self, exchange: &str) -> f64 {
        let properties = BasicProperties::default;
        self.publish_raw_with(exchange, BasicPublishOptions::default(), properties)
            .await
    }

    /// Each message handed to lapin as it is made (a publish future's first poll queues its
    /// frames), every confirm awaited after: lapin used the way the adapter uses it.
    async fn publish_raw_with(
        &self,
        exchange: &str,
        options: BasicPublishOptions,
        properties: impl Fn() -> BasicProperties,
    ) -> f64 {
        let channel = self.confirming_channel().await;
        let start = Instant::now();
        let mut publishes = Vec::with_capacity(self.n);
        for _ in 0..self.n {
            let mut publish = Box::pin(channel.basic_publish(
                exchange.into(),
                "".into(),
                options,
                &self.payload,
                properties(),
            ));
            let first = publish
                .as_mut()
                .poll(&mut Context::from_waker(std::task::Waker::noop()));
            publishes.push((first, publish));
        }
        for (first, publish) in publishes {
            let confirm = match first {
                Poll::Ready(written) => written,
                Poll::Pending => publish.await,
            };
            assert!(confirm.expect("written").await.expect("confirm").is_ack());
        }
        let rate = self.n as f64 / start.elapsed().as_secs_f64();
        let _ = channel.close(200, "OK".into()).await;
        rate
    }

    /// Raw lapin with the properties a wrapped publish sends in this setup (ids, timestamp,
    /// `timestamp_in_ms`, and `traceparent` under a tracer provider), built once, and mandatory.
    async fn publish_raw_like_wrapped(&self, exchange: &str) -> f64 {
        let id = eventscope::message::new_id();
        let mut headers = FieldTable::default();
        headers.insert(
            "timestamp_in_ms".into(),
            AMQPValue::LongLongInt(1_700_000_000_000),
        );
        if self.tracer.borrow().is_some() {
            headers.insert(
                "traceparent".into(),
                AMQPValue::LongString(
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00".into(),
                ),
            );
        }
        let properties = BasicProperties::default()
            .with_message_id(id.as_str().into())
            .with_correlation_id(id.as_str().into())
            .with_timestamp(1_700_000_000)
            .with_headers(headers);
        let mandatory = BasicPublishOptions {
            mandatory: true,
            immediate: false,
        };
        self.publish_raw_with(exchange, mandatory, || properties.clone())
            .await
    }

    async fn publisher(&self) -> RabbitPublisher {
        RabbitPublisher::new(self.confirming_channel().await)
            .await
            .expect("publisher")
            .server_uri(URI)
    }

    async fn publish_adapter(&self, exchange: &str) -> f64 {
        let publisher = self.publisher().await;
        let channel = publisher.channel().clone();
        let records = (0..self.n).map(|_| RabbitRecord::new(exchange, "", self.payload.clone()));
        let rate = self.publish_with(publisher, records).await;
        let _ = channel.close(200, "OK".into()).await;
        rate
    }

    async fn publish_wrapped(&self, exchange: &str) -> f64 {
        let mut layer = rabbitmq::publish_layer(self.metrics.clone());
        if let Some(provider) = &*self.tracer.borrow() {
            layer = layer.tracer_provider(provider);
        }
        let publisher = self.publisher().await;
        let channel = publisher.channel().clone();
        let records = (0..self.n).map(|_| RabbitRecord::new(exchange, "", self.payload.clone()));
        let rate = self.publish_with(layer.layer(publisher), records).await;
        let _ = channel.close(200, "OK".into()).await;
        rate
    }

    async fn publish_with<S>(
        &self,
        mut publisher: S,
        records: impl Iterator<Item = RabbitRecord>,
    ) -> f64
    where
        S: Service<RabbitRecord>,
        S::Error: std::fmt::Debug,
    {
        let start = Instant::now();
        let mut confirms = Vec::with_capacity(self.n);
        for record in records {
            confirms.push(publisher.ready().await.expect("ready").call(record));
        }
        for confirm in confirms {
            confirm.await.expect("confirmed");
        }
        self.n as f64 / start.elapsed().as_secs_f64()
    }

    async fn consume_raw(&self, queue: &str) -> f64 {
        // A connection of its own, as the adapter's consumer opens one: both are timed from it.
        let start = Instant::now();
        let connection = Connection::connect(URI, ConnectionProperties::default())
            .await
            .expect("connect");
        let channel = connection.create_channel().await.expect("channel");
        channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await
            .expect("qos");
        let mut consumer = channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");
        // Each delivery acknowledged on its own, the acks in flight while the next deliveries
        // are read (awaiting each ack's write in turn would measure lapin's thread hand-off).
        let (mut seen, mut acked) = (0, 0);
        let mut acks = acks_of(ack);
        while acked < self.n {
            tokio::select! {
                Some(sent) = acks.next(), if !acks.is_empty() => {
                    assert!(sent, "acked");
                    acked += 1;
                }
                delivery = consumer.next(), if seen < self.n => {
                    let delivery = delivery.expect("open").expect("delivery");
                    black_box(delivery.data.len());
                    acks.push(ack(delivery.acker));
                    seen += 1;
                }
            }
        }
        let rate = self.n as f64 / start.elapsed().as_secs_f64();
        let _ = channel.close(200, "OK".into()).await;
        let _ = connection.close(200, "OK".into()).await;
        rate
    }

    async fn consume_adapter(&self, queue: &str) -> f64 {
        self.consume_with(queue, false).await
    }

    async fn consume_wrapped(&self, queue: &str) -> f64 {
        self.consume_with(queue, true).await
    }

    async fn consume_with(&self, queue: &str, layered: bool) -> f64 {
        let seen = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(Notify::new());
        let n = self.n;
        let handler = service_fn({
            let (seen, done) = (seen.clone(), done.clone());
            move |message: RabbitMessage| {
                black_box(message.payload().len());
                if seen.fetch_add(1, Ordering::Relaxed) + 1 == n {
                    done.notify_one();
                }
                ready(Ok::<_, std::io::Error>(()))
            }
        });
        let mut consumer = RabbitConsumer::new(URI, queue)
            .expect("consumer")
            .max_concurrency(usize::from(self.prefetch))
            .metrics(self.metrics.clone());
        if let Some(provider) = &*self.tracer.borrow() {
            consumer = consumer.tracer_provider(provider);
        }
        if !layered {
            consumer = consumer.without_process_layer_for_benchmarks();
        }
        let start = Instant::now();
        let finished = Arc::new(Notify::new());
        let shutdown = {
            let (done, finished) = (done.clone(), finished.clone());
            async move {
                done.notified().await;
                finished.notify_one();
            }
        };
        let run = consumer.run(handler, shutdown);
        tokio::pin!(run);
        // Timed to the last message handled; the shutdown (cancel, drain, close) is not.
        let elapsed = tokio::select! {
            outcome = &mut run => panic!("the consumer ended early: {outcome:?}"),
            () = finished.notified() => start.elapsed(),
        };
        run.await.expect("consumer");
        n as f64 / elapsed.as_secs_f64()
    }
}

/// Acknowledges one delivery; `true` when lapin sent the ack.
async fn ack(acker: Acker) -> bool {
    acker.ack(BasicAckOptions::default()).await.expect("ack")
}

/// An empty set of `make`'s futures (naming their type without boxing them).
fn acks_of<F: Future>(_make: fn(Acker) -> F) -> FuturesUnordered<F> {
    FuturesUnordered::new()
}

fn provider(sampler: Sampler) -> SdkTracerProvider {
    SdkTracerProvider::builder()
        .with_sampler(sampler)
        .with_batch_exporter(Discard)
        .build()
}

fn report(what: &str, raw: Vec<f64>, adapter: Vec<f64>, wrapped: Vec<f64>) {
    let runs = |rates: &[f64]| {
        rates
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!("    {what} runs (msg/s): raw [{}]", runs(&raw));
    println!("    {what} runs (msg/s): adapter [{}]", runs(&adapter));
    println!("    {what} runs (msg/s): wrapped [{}]", runs(&wrapped));
    let ratios = |side: &[f64]| {
        side.iter()
            .zip(&raw)
            .map(|(s, r)| format!("{:.2}", s / r))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "    {what} ratio per run: adapter [{}] wrapped [{}]",
        ratios(&adapter),
        ratios(&wrapped)
    );
    // Sides of one repetition run back to back: the median of their ratios is the steadier
    // figure on a machine whose load changes between repetitions.
    let median_ratio = |side: &[f64]| median(side.iter().zip(&raw).map(|(s, r)| s / r));
    println!(
        "    {what} median of the per-run ratios: adapter {:.3} wrapped {:.3}",
        median_ratio(&adapter),
        median_ratio(&wrapped)
    );
    let (raw, adapter, wrapped) = (median(raw), median(adapter), median(wrapped));
    println!(
        "  {what:<8} raw {raw:>8.0}/s   adapter {adapter:>8.0}/s ({:.3})   wrapped {wrapped:>8.0}/s ({:.3})",
        adapter / raw,
        wrapped / raw
    );
}

#[derive(Clone, Copy)]
enum Side {
    Raw,
    Adapter,
    Wrapped,
}

async fn run_setup(bench: &Bench, reps: usize) {
    let mut published = [vec![], vec![], vec![]];
    let mut consumed = [vec![], vec![], vec![]];
    let mut raw_like_wrapped = vec![];
    let sides = [Side::Raw, Side::Adapter, Side::Wrapped];
    // With BENCH_RAW_PROPERTIES=1, a fourth publishing side: raw lapin sending the properties
    // and headers the wrapped side sends (built once), which tells the broker's and the wire's
    // share of the wrapped side's cost from eventscope's.
    let extra = std::env::var("BENCH_RAW_PROPERTIES").is_ok_and(|v| v == "1");
    let publishing = if extra { 4 } else { 3 };
    for rep in 0..reps {
        let round = bench.round().await;
        // Each side goes first, second, ... in turn.
        for i in 0..publishing {
            let side = (i + rep) % publishing;
            if side == 3 {
                let exchange = &round.sides[0].0;
                raw_like_wrapped.push(bench.publish_raw_like_wrapped(exchange).await);
                continue;
            }
            let exchange = &round.sides[side].0;
            published[side].push(match sides[side] {
                Side::Raw => bench.publish_raw(exchange).await,
                Side::Adapter => bench.publish_adapter(exchange).await,
                Side::Wrapped => bench.publish_wrapped(exchange).await,
            });
        }
        // Everyone consumes the wrapped messages: the same messages, trace headers included.
        for i in 0..sides.len() {
            let side = (i + rep) % sides.len();
            let queue = &round.sides[2].1[side];
            consumed[side].push(match sides[side] {
                Side::Raw => bench.consume_raw(queue).await,
                Side::Adapter => bench.consume_adapter(queue).await,
                Side::Wrapped => bench.consume_wrapped(queue).await,
            });
        }
        bench.drop_round(round).await;
    }
    if extra {
        let raw = median(published[0].clone());
        println!(
            "    raw with the wrapped side's properties: [{}] median {:.0}/s ({:.3} of raw)",
            raw_like_wrapped
                .iter()
                .map(|r| format!("{r:.0}"))
                .collect::<Vec<_>>()
                .join(" "),
            median(raw_like_wrapped.clone()),
            median(raw_like_wrapped) / raw
        );
    }
    let [raw, adapter, wrapped] = published;
    report("publish", raw, adapter, wrapped);
    let [raw, adapter, wrapped] = consumed;
    report("consume", raw, adapter, wrapped);
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let n = env_usize("BENCH_MESSAGES", 20_000);
    let reps = env_usize("BENCH_REPS", 5).max(1);
    let prefetch = u16::try_from(env_usize("BENCH_PREFETCH", 64)).unwrap_or(u16::MAX);
    let setups = std::env::var("BENCH_SETUPS").unwrap_or_else(|_| "none,unsampled".into());
    if std::net::TcpStream::connect_timeout(
        &"127.0.0.1:5672".parse().unwrap(),
        Duration::from_secs(2),
    )
    .is_err()
    {
        eprintln!("no RabbitMQ on 127.0.0.1:5672: run `scripts/rabbitmq.sh start` first");
        std::process::exit(1);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let connection = Connection::connect(
            URI,
            ConnectionProperties::default().with_connection_name("eventscope-bench".into()),
        )
        .await
        .expect("connect");
        let admin = connection.create_channel().await.expect("channel");
        let bench = Bench {
            n,
            prefetch,
            payload: vec![b'p'; PAYLOAD],
            connection,
            admin,
            metrics: Metrics::new(),
            tracer: RefCell::new(None),
        };
        println!(
            "{n} messages of {PAYLOAD} B, prefetch {prefetch}, median of {reps} runs, sides alternating"
        );
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
        let _ = bench.connection.close(200, "OK".into()).await;
    });
}
