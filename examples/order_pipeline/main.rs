//! The order pipeline: an order service publishes `OrderCreated`; payment, inventory and
//! notification services consume it and publish their follow-ups. Every hop is traced and
//! measured by eventscope, and the failure path is eventscope's too: each consumer validates
//! the events against their JSON Schemas (`examples/schemas/`), skips redeliveries through the
//! idempotency layer, retries declined payments with backoff and dead-letters what cannot be
//! processed to `orders.dlq`.
//!
//! ```text
//! F=dedup,schema
//! cargo run --features $F --example order_pipeline                   # 5 orders on the embedded broker, then exit
//! cargo run --features $F --example order_pipeline -- --orders 20
//! cargo run --features $F --example order_pipeline -- --forever      # steady stream, /metrics on 127.0.0.1:9464
//! cargo run --features $F,redis --example order_pipeline -- --forever --redis redis://127.0.0.1:6379
//! cargo run --features $F,kafka --example order_pipeline -- --kafka 127.0.0.1:9092 --forever
//! cargo run --features $F,rabbitmq --example order_pipeline -- --rabbitmq amqp://127.0.0.1:5672
//! cargo run --features $F,nats --example order_pipeline -- --nats nats://127.0.0.1:4222
//! OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 cargo run --features $F --example order_pipeline
//! ```

mod bus;
mod envelope;
mod tree;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus::{Bus, Handler, Publisher};
use envelope::{Envelope, FollowUp, Item, OrderCreated};
use eventscope::classify::{Classifier, Decision, RetryPolicy};
use eventscope::dedup::{DedupError, DedupLayer, DedupStore, MemoryStore, Processed};
use eventscope::memory::MemoryBroker;
use eventscope::message::{new_id, IncomingMessage};
use eventscope::metrics::Metrics;
use eventscope::publish::PublishLayer;
use eventscope::schema::error::{DECODE, SCHEMA, UNKNOWN_SCHEMA};
use eventscope::schema::{SchemaError, Schemas, ValidateIncomingLayer, ValidateOutgoingLayer};
use eventscope::scope::MessageScope;
use eventscope::server::{MetricsServer, DEFAULT_ADDR};
use eventscope::telemetry::{otlp_configured, OtlpExport, TelemetryBuilder, TelemetryGuard};
use eventscope::BoxError;
use opentelemetry::trace::{TraceContextExt, TraceId};
use tokio::sync::watch;
use tower::util::BoxCloneSyncService;
use tower::{service_fn, Layer, ServiceExt};
use tracing::instrument::WithSubscriber;
use tracing::{Dispatch, Instrument};
use tracing_opentelemetry::OpenTelemetrySpanExt;

const ORDERS: &str = "orders";
/// Where the consumers of `orders` dead-letter: the default, `{topic}.dlq`.
const DEAD_LETTERS: &str = "orders.dlq";
/// Chaos mode only: a ledger whose consumer meets an entry it cannot handle.
const LEDGER: &str = "ledger";
const FOLLOW_UPS: [&str; 3] = ["payments", "inventory", "notifications"];

/// `OrderCreated` v1 and v2 side by side: the services know both, the order service publishes
/// both.
const ORDER_CREATED_V1: &str = include_str!("../schemas/order-created.v1.json");
const ORDER_CREATED_V2: &str = include_str!("../schemas/order-created.v2.json");

/// How long the idempotency layer remembers a processed event: the demo's duplicates arrive
/// within seconds, and an hour bounds what a long run leaves in Redis.
const DEDUP_RETENTION: Duration = Duration::from_secs(60 * 60);

struct Args {
    orders: usize,
    forever: bool,
    metrics_addr: SocketAddr,
    rate: f64,
    kafka: Option<String>,
    redis: Option<String>,
    prefix: String,
    nats: Option<String>,
    rabbitmq: Option<String>,
}

impl Args {
    /// A topic or consumer-group name with the run's `--prefix`.
    fn name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }
}

fn usage() -> &'static str {
    "usage: order_pipeline [--orders N] [--forever] [--rate ORDERS_PER_SEC] [--metrics-addr ADDR] [--kafka BOOTSTRAP | --rabbitmq AMQP_URI | --nats URL] [--redis URL] [--prefix PREFIX]"
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        orders: 5,
        forever: false,
        metrics_addr: DEFAULT_ADDR,
        rate: 10.0,
        kafka: None,
        redis: None,
        prefix: String::new(),
        nats: None,
        rabbitmq: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .ok_or(format!("{name} needs a value\n{}", usage()))
        };
        match flag.as_str() {
            "--orders" => {
                args.orders = value("--orders")?
                    .parse()
                    .map_err(|e| format!("--orders: {e}"))?
            }
            "--forever" => args.forever = true,
            "--rate" => {
                args.rate = value("--rate")?
                    .parse()
                    .map_err(|e| format!("--rate: {e}"))?
            }
            "--metrics-addr" => {
                args.metrics_addr = value("--metrics-addr")?
                    .parse()
                    .map_err(|e| format!("--metrics-addr: {e}"))?
            }
            "--kafka" => args.kafka = Some(value("--kafka")?),
            "--redis" => args.redis = Some(value("--redis")?),
            "--prefix" => args.prefix = value("--prefix")?,
            "--nats" => args.nats = Some(value("--nats")?),
            "--rabbitmq" => args.rabbitmq = Some(value("--rabbitmq")?),
            "-h" | "--help" => return Err(usage().into()),
            other => return Err(format!("unknown argument {other}\n{}", usage())),
        }
    }
    let brokers = [&args.kafka, &args.rabbitmq, &args.nats];
    if brokers.iter().filter(|b| b.is_some()).count() > 1 {
        return Err("--kafka, --rabbitmq, --nats: one broker at a time".into());
    }
    if !(args.rate > 0.0 && args.rate.is_finite()) {
        return Err("--rate must be a positive number".into());
    }
    Ok(args)
}

#[derive(Debug)]
struct PaymentDeclined;

impl std::fmt::Display for PaymentDeclined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("payment declined by the gateway")
    }
}

impl std::error::Error for PaymentDeclined {}

/// What the services do with a failure (the consumer and its process layer share this one
/// classifier):
/// - a declined payment is tried 3 times in all, with backoff, then dead-lettered;
/// - an event the schema layer refuses (`schema`, `decode`, `unknown_schema`) will never
///   pass: dead-lettered at once;
/// - the idempotency layer's `dedup_in_flight` (another delivery of the event is running) and
///   `dedup_unavailable` (Redis is away) are retried until the store answers: fail closed;
/// - anything else (a follow-up that could not be published) is retried after a pause.
fn classifier() -> Classifier {
    let declined = RetryPolicy::exponential(Duration::from_millis(50))
        .max_delay(Duration::from_secs(1))
        .max_attempts(3);
    Classifier::new()
        .on::<PaymentDeclined>("PaymentDeclined")
        .on_with(SchemaError::error_type)
        .on_with(DedupError::error_type)
        .on::<serde_json::Error>(DECODE)
        .decision("PaymentDeclined", declined)
        .decision(SCHEMA, Decision::DeadLetter)
        .decision(DECODE, Decision::DeadLetter)
        .decision(UNKNOWN_SCHEMA, Decision::DeadLetter)
        .decision(
            eventscope::dedup::error::IN_FLIGHT,
            Decision::retry(Duration::from_millis(200)),
        )
        .decision(
            eventscope::dedup::error::UNAVAILABLE,
            Decision::retry(Duration::from_secs(1)),
        )
        .otherwise(Decision::retry(Duration::from_millis(100)))
}

/// The schemas every service validates against, compiled once.
fn schemas() -> Result<Schemas, BoxError> {
    Ok(Schemas::builder()
        .schema("OrderCreated", 1, ORDER_CREATED_V1)
        .schema("OrderCreated", 2, ORDER_CREATED_V2)
        .build()?)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Role {
    Payment,
    Inventory,
    Notification,
}

impl Role {
    const ALL: [Role; 3] = [Role::Payment, Role::Inventory, Role::Notification];

    fn service(self) -> &'static str {
        match self {
            Role::Payment => "payment-service",
            Role::Inventory => "inventory-service",
            Role::Notification => "notification-service",
        }
    }

    fn follow_up(self) -> (&'static str, &'static str) {
        match self {
            Role::Payment => ("payments", "PaymentProcessed"),
            Role::Inventory => ("inventory", "InventoryReserved"),
            Role::Notification => ("notifications", "NotificationSent"),
        }
    }
}

/// A small xorshift generator: the demo needs dice, not cryptography.
struct Dice(u64);

impl Dice {
    fn roll(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct Shared<B: Bus> {
    bus: B,
    args: Arc<Args>,
    chaos: bool,
    dice: Mutex<Dice>,
    /// Events each service processed to the end (duplicates and dead letters not counted).
    handled: HashMap<Role, AtomicUsize>,
}

impl<B: Bus> Shared<B> {
    fn roll(&self) -> f64 {
        self.dice.lock().unwrap().roll()
    }
}

/// The event is valid when it gets here: the schema layer refused the others, and the
/// idempotency layer skipped those already processed.
async fn handle<B: Bus>(
    role: Role,
    shared: Arc<Shared<B>>,
    publisher: Publisher<B::Record>,
    message: B::Message,
) -> Result<(), BoxError> {
    let order: Envelope<OrderCreated> = serde_json::from_slice(IncomingMessage::payload(&message))?;
    let work_ms = match role {
        Role::Payment => 2.0 + 8.0 * shared.roll(),
        Role::Inventory => 5.0 + 35.0 * shared.roll(),
        Role::Notification => 1.0 + 4.0 * shared.roll(),
    };
    tokio::time::sleep(Duration::from_secs_f64(work_ms / 1e3)).await;

    // Some cards are always declined; the gateway also has bad moments. The consumer retries
    // (RetryPolicy) and, when the attempts run out, dead-letters the event.
    if role == Role::Payment && shared.chaos {
        let poison = order.data.amount_cents % 37 == 0;
        if poison || shared.roll() < 0.08 {
            return Err(PaymentDeclined.into());
        }
    }

    // The follow-up event carries the flow's ids: the process layer sets the scope.
    let scope = MessageScope::current().unwrap_or_else(|| {
        MessageScope::new(order.correlation_id.clone(), Some(order.event_id.clone()))
    });
    let (follow_topic, event_type) = role.follow_up();
    let follow = Envelope::new(
        event_type,
        scope.correlation_id().to_owned(),
        scope.message_id().map(str::to_owned),
        FollowUp {
            order_id: order.data.order_id.clone(),
            detail: format!("{event_type} by {}", role.service()),
        },
    );
    let record = shared.bus.record(
        &shared.args.name(follow_topic),
        &order.data.order_id,
        follow.to_bytes(),
        &[("message-id", &follow.event_id)],
    );
    publisher.oneshot(record).await?;
    shared.handled[&role].fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// What every service stacks around its handler: the idempotency layer outside, the schema
/// layer inside it (a refused event is dead-lettered, never marked processed).
struct Reliability<St> {
    dedup: DedupLayer<St>,
    validate: ValidateIncomingLayer,
}

fn handler<B: Bus, St: DedupStore>(
    role: Role,
    shared: &Arc<Shared<B>>,
    publisher: Publisher<B::Record>,
    layers: &Reliability<St>,
) -> Handler<B::Message> {
    let shared = Arc::clone(shared);
    let inner = service_fn(move |message: B::Message| {
        handle(role, shared.clone(), publisher.clone(), message)
    });
    // The consumer wraps the stack in its own process layer (its metrics, its classifier),
    // so the layers run inside the `process orders` span.
    let stack = layers.dedup.layer(layers.validate.layer(inner));
    BoxCloneSyncService::new(stack.map_response(|_: Processed<()>| ()))
}

/// One service's telemetry: its subscriber, its tracer provider, and the guard that flushes.
struct ServiceTelemetry {
    dispatch: Dispatch,
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
    guard: TelemetryGuard,
}

impl ServiceTelemetry {
    /// A publish layer whose spans belong to this service.
    fn publish_layer(&self, metrics: &Metrics) -> PublishLayer {
        let layer = PublishLayer::new(metrics.clone());
        match &self.provider {
            Some(provider) => layer.tracer_provider(provider),
            None => layer,
        }
    }
}

/// Each service gets its own tracer provider, so traces show four services as four processes
/// would.
fn telemetry(service: &str, collected: &tree::Collected) -> Result<ServiceTelemetry, BoxError> {
    let mut builder = TelemetryBuilder::default()
        .service_name(service)
        .otlp(OtlpExport::IfConfigured)
        .default_filter("warn");
    if !otlp_configured() {
        builder = builder.with_simple_exporter(collected.exporter(service));
    }
    let telemetry = builder.build()?;
    let provider = telemetry.tracer_provider().cloned();
    let (dispatch, guard) = telemetry.into_parts();
    Ok(ServiceTelemetry {
        dispatch,
        provider,
        guard,
    })
}

/// The order service: one root trace per order.
async fn place_orders<B: Bus>(
    shared: Arc<Shared<B>>,
    publisher: Publisher<B::Record>,
    args: Arc<Args>,
    traces: Arc<Mutex<Vec<TraceId>>>,
    mut stop: watch::Receiver<bool>,
) -> usize {
    let raw = shared.bus.raw_publisher();
    let orders = shared.args.name(ORDERS);
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let mut placed = 0usize;
    let started = tokio::time::Instant::now();
    let mut bursts = 0;
    while args.forever || placed < args.orders {
        if *stop.borrow() {
            break;
        }
        placed += 1;
        let customer = format!("customer-{}", (shared.roll() * 50.0) as u32);
        let mut order = OrderCreated {
            order_id: format!("order-{placed}"),
            customer_id: customer.clone(),
            amount_cents: 500 + (shared.roll() * 20_000.0) as u64,
            // Every other order is an OrderCreated v2, with a currency.
            currency: (placed % 2 == 0).then(|| "EUR".to_owned()),
            items: vec![Item {
                sku: format!("sku-{}", (shared.roll() * 100.0) as u32),
                quantity: 1 + (shared.roll() * 3.0) as u32,
            }],
        };
        // A bug in the order form: an order without items, which the order service's own
        // schema check refuses to publish.
        if shared.chaos && shared.roll() < 0.02 {
            order.items.clear();
        }
        let version = if order.currency.is_some() { 2 } else { 1 };
        let envelope = Envelope::new("OrderCreated", new_id(), None, order).version(version);
        let record = || {
            shared.bus.record(
                &orders,
                &customer,
                envelope.to_bytes(),
                &[
                    ("message-id", &envelope.event_id),
                    ("correlation-id", &envelope.correlation_id),
                ],
            )
        };
        let span = tracing::info_span!("place order", order.id = %envelope.data.order_id);
        traces
            .lock()
            .unwrap()
            .push(span.context().span().span_context().trace_id());
        let sent = publisher
            .clone()
            .oneshot(record())
            .instrument(span.clone())
            .await;
        match sent {
            Ok(()) => {}
            Err(e) if e.is::<SchemaError>() => tracing::warn!(
                order.id = %envelope.data.order_id,
                error = %e,
                "the order service refused to publish an invalid order"
            ),
            Err(e) => tracing::error!(error = %e, "publishing an order failed"),
        }
        if shared.chaos {
            // An at-least-once producer sometimes sends the same event twice.
            if shared.roll() < 0.03 {
                let _ = publisher.clone().oneshot(record()).instrument(span).await;
            }
            // A legacy client without tracing, with a broken traceparent and payloads of its
            // own: one order in 50, by turns a line of text (refused as `decode`) and JSON of
            // another shape (`schema`). On a schedule, not a roll of the dice, so that both
            // show up on the dashboards within the first 75 orders of every run.
            if placed % 50 == 25 {
                let payload = if placed % 100 == 25 {
                    format!("ORDER|{placed}|{customer}")
                } else {
                    format!(
                        r#"{{"eventType":"OrderCreated","eventVersion":1,"order":"legacy-{placed}","customer":"{customer}"}}"#
                    )
                };
                let legacy = shared.bus.record(
                    &orders,
                    &customer,
                    payload.into_bytes(),
                    &[("traceparent", "00-legacy-client")],
                );
                let _ = raw.clone().oneshot(legacy).await;
            }
        }
        // A burst of 40 orders every 30 s lets lag show up on the dashboards.
        let window = started.elapsed().as_secs() / 30;
        let burst = args.forever && window > bursts;
        if burst && placed % 40 == 0 {
            bursts = window;
        }
        let pause = if burst {
            Duration::from_millis(2)
        } else {
            interval
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = stop.changed() => {}
        }
    }
    placed
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = match parse_args() {
        Ok(args) => Arc::new(args),
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    let topics: Vec<String> = [ORDERS, DEAD_LETTERS, LEDGER, "ledger.dlq"]
        .into_iter()
        .chain(FOLLOW_UPS)
        .map(|topic| args.name(topic))
        .collect();
    if let Some(url) = args.nats.clone() {
        return run_nats(args, url, &topics).await;
    }
    if let Some(uri) = args.rabbitmq.clone() {
        return run_rabbitmq(args, uri, &topics).await;
    }
    match args.kafka.clone() {
        Some(bootstrap) => run_kafka(args, bootstrap, &topics).await,
        None => {
            let metrics = Metrics::new();
            // The broker counts what a group never received (none, with the default Overflow).
            let broker = MemoryBroker::builder()
                .default_partitions(3)
                .metrics(metrics.clone())
                .build();
            for topic in &topics {
                broker.create_topic(topic, 3)?;
            }
            with_store(bus::Memory(broker), args, metrics).await
        }
    }
}

#[cfg(not(feature = "kafka"))]
async fn run_kafka(
    _args: Arc<Args>,
    _bootstrap: String,
    _topics: &[String],
) -> Result<(), BoxError> {
    Err("this build has no Kafka support: run with `--features kafka`".into())
}

#[cfg(feature = "kafka")]
async fn run_kafka(args: Arc<Args>, bootstrap: String, topics: &[String]) -> Result<(), BoxError> {
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    let bus = bus::Kafka::connect(&bootstrap, &topics).await?;
    with_store(bus, args, Metrics::new()).await
}

#[cfg(not(feature = "rabbitmq"))]
async fn run_rabbitmq(_args: Arc<Args>, _uri: String, _topics: &[String]) -> Result<(), BoxError> {
    Err("this build has no RabbitMQ support: run with `--features rabbitmq`".into())
}

/// The same flow on RabbitMQ (`--rabbitmq amqp://127.0.0.1:5672`): a fanout exchange per topic,
/// a queue per consuming service.
#[cfg(feature = "rabbitmq")]
async fn run_rabbitmq(args: Arc<Args>, uri: String, topics: &[String]) -> Result<(), BoxError> {
    // A queue per consuming service, named after it (its consumer group).
    let queues: Vec<(String, String)> = Role::ALL
        .iter()
        .map(|r| (args.name(r.service()), args.name(ORDERS)))
        .chain([(args.name("ledger-service"), args.name(LEDGER))])
        .collect();
    let consumers: Vec<(&str, &str)> = queues
        .iter()
        .map(|(queue, topic)| (queue.as_str(), topic.as_str()))
        .collect();
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    let bus = bus::Rabbit::connect(&uri, &topics, &consumers).await?;
    with_store(bus, args, Metrics::new()).await
}

#[cfg(not(feature = "nats"))]
async fn run_nats(_args: Arc<Args>, _url: String, _topics: &[String]) -> Result<(), BoxError> {
    Err("this build has no NATS support: run with `--features nats`".into())
}

/// The same flow on JetStream (`--nats nats://127.0.0.1:4222`): a stream per topic.
#[cfg(feature = "nats")]
async fn run_nats(args: Arc<Args>, url: String, topics: &[String]) -> Result<(), BoxError> {
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    let bus = bus::Nats::connect(&url, &topics).await?;
    with_store(bus, args, Metrics::new()).await
}

/// Runs the pipeline with the idempotency store `--redis` asks for, else in memory.
async fn with_store<B: Bus>(bus: B, args: Arc<Args>, metrics: Metrics) -> Result<(), BoxError> {
    match args.redis.clone() {
        None => {
            run(
                bus,
                args,
                metrics,
                MemoryStore::default(),
                "in memory".into(),
            )
            .await
        }
        Some(url) => run_redis(bus, args, metrics, url).await,
    }
}

#[cfg(not(feature = "redis"))]
async fn run_redis<B: Bus>(
    _bus: B,
    _args: Arc<Args>,
    _metrics: Metrics,
    _url: String,
) -> Result<(), BoxError> {
    Err("this build has no Redis support: run with `--features redis`".into())
}

#[cfg(feature = "redis")]
async fn run_redis<B: Bus>(
    bus: B,
    args: Arc<Args>,
    metrics: Metrics,
    url: String,
) -> Result<(), BoxError> {
    let store = eventscope::dedup::RedisStore::connect(&url)
        .await
        .map_err(|e| format!("cannot reach Redis at {url}: {e}"))?;
    run(bus, args, metrics, store, format!("in Redis at {url}")).await
}

async fn run<B: Bus, St: DedupStore>(
    bus: B,
    args: Arc<Args>,
    metrics: Metrics,
    store: St,
    store_name: String,
) -> Result<(), BoxError> {
    let collected = tree::Collected::default();
    let server = match MetricsServer::bind(metrics.registry().clone(), args.metrics_addr).await {
        Ok(server) => Some(server),
        Err(e) if !args.forever => {
            eprintln!(
                "note: /metrics not served ({}: {e}); the summary below still shows them",
                args.metrics_addr
            );
            None
        }
        Err(e) => {
            return Err(format!(
                "cannot serve /metrics on {}: {e} (use --metrics-addr)",
                args.metrics_addr
            )
            .into())
        }
    };

    let shared = Arc::new(Shared {
        bus: bus.clone(),
        args: Arc::clone(&args),
        chaos: args.forever,
        dice: Mutex::new(Dice(0x9E37_79B9_7F4A_7C15 ^ std::process::id() as u64)),
        handled: Role::ALL
            .iter()
            .map(|r| (*r, AtomicUsize::new(0)))
            .collect(),
    });
    println!("eventscope order pipeline on {}", bus.describe());
    println!(
        "processed events remembered {store_name}; dead letters go to {}",
        args.name(DEAD_LETTERS)
    );
    if let Some(server) = &server {
        println!("metrics:  http://{}/metrics", server.local_addr());
    }
    if otlp_configured() {
        println!("traces:   exported over OTLP (OTEL_EXPORTER_OTLP_ENDPOINT); open Jaeger at http://localhost:16686");
    }

    let schemas = schemas()?;
    let layers = Reliability {
        dedup: DedupLayer::new(store, metrics.clone()).retention(DEDUP_RETENTION),
        validate: ValidateIncomingLayer::new(schemas.clone(), metrics.clone()),
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut guards = Vec::new();
    let mut consumers = Vec::new();
    for role in Role::ALL {
        let service = telemetry(role.service(), &collected)?;
        let publisher = bus.publisher(service.publish_layer(&metrics));
        let handler = handler(role, &shared, publisher, &layers);
        let ServiceTelemetry {
            dispatch,
            guard,
            provider,
        } = service;
        guards.push(guard);
        let mut stop = stop_rx.clone();
        let stop = Box::pin(async move {
            let _ = stop.wait_for(|s| *s).await;
        });
        let run = bus.consume(
            &args.name(role.service()),
            &args.name(ORDERS),
            handler,
            &metrics,
            classifier(),
            provider.as_ref(),
            stop,
        );
        consumers.push((role, tokio::spawn(run.with_subscriber(dispatch))));
    }

    // Chaos: the ledger service cannot handle one entry. The error is not classified, so its
    // decision is `Stop`: that partition stops there (messaging_consumer_partition_stopped = 1,
    // alert ConsumerPartitionStopped) while the service goes on with the others.
    let mut ledger = None;
    if args.forever {
        let handler: Handler<B::Message> = BoxCloneSyncService::new(service_fn(|m: B::Message| {
            let balanced = IncomingMessage::payload(&m) != b"unbalanced";
            async move {
                if balanced {
                    Ok(())
                } else {
                    Err(BoxError::from("ledger entry does not balance"))
                }
            }
        }));
        let record = bus.record(&args.name(LEDGER), "entry-1", b"unbalanced".to_vec(), &[]);
        bus.raw_publisher().oneshot(record).await?;
        let mut stop = stop_rx.clone();
        let stop = Box::pin(async move {
            let _ = stop.wait_for(|s| *s).await;
        });
        let run = bus.consume(
            &args.name("ledger-service"),
            &args.name(LEDGER),
            handler,
            &metrics,
            Classifier::new(),
            None,
            stop,
        );
        ledger = Some(tokio::spawn(run));
    }

    let orders = telemetry("order-service", &collected)?;
    // The order service checks its own events against the schemas before they are sent.
    let order_publisher = BoxCloneSyncService::new(
        ValidateOutgoingLayer::new(schemas).layer(bus.publisher(orders.publish_layer(&metrics))),
    );
    let ServiceTelemetry {
        dispatch: order_dispatch,
        guard: order_guard,
        ..
    } = orders;
    guards.push(order_guard);
    let traces = Arc::new(Mutex::new(Vec::new()));
    let producer = tokio::spawn(
        place_orders(
            shared.clone(),
            order_publisher,
            args.clone(),
            traces.clone(),
            stop_rx.clone(),
        )
        .with_subscriber(order_dispatch),
    );

    if args.forever {
        println!(
            "placing ~{} orders/s until Ctrl-C: some payments are declined (retried, then \
             dead-lettered), some events are sent twice (skipped as duplicates), a legacy \
             client sends payloads the schemas refuse (dead-lettered)",
            args.rate
        );
        let every = tokio::time::interval(Duration::from_secs(10));
        tokio::pin!(every);
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        let printed = AtomicU64::new(0);
        loop {
            tokio::select! {
                _ = &mut ctrl_c => break,
                _ = every.tick() => {
                    let ids = traces.lock().unwrap();
                    if let Some(last) = ids.iter().rev().nth(20) {
                        let n = printed.fetch_add(1, Ordering::Relaxed);
                        println!("orders placed: {}; a recent trace: {last}", ids.len());
                        if n == 0 {
                            if let Some(tree) = collected.render(*last) {
                                println!("{tree}");
                            }
                        }
                    }
                }
            }
        }
    } else {
        let placed = producer.await.unwrap_or(0);
        // Done when every consumer handled every order (or after a generous deadline).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while Role::ALL
            .iter()
            .any(|r| shared.handled[r].load(Ordering::Relaxed) < placed)
        {
            if tokio::time::Instant::now() > deadline {
                eprintln!("warning: not every order was processed within 60 s");
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    let _ = stop_tx.send(true);
    for (role, consumer) in consumers {
        match consumer.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("{}: {e}", role.service()),
            Err(e) => eprintln!("{}: task failed: {e}", role.service()),
        }
    }
    if let Some(ledger) = ledger {
        if let Ok(Err(e)) = ledger.await {
            eprintln!("ledger-service: {e}");
        }
    }
    for guard in &guards {
        guard.flush();
    }

    let ids = traces.lock().unwrap().clone();
    if !args.forever {
        if otlp_configured() {
            println!("\nexported {} traces; look them up by id:", ids.len());
            for id in &ids {
                println!("  {id}");
            }
        } else {
            println!("\n{} orders, one trace each (no OTEL_EXPORTER_OTLP_ENDPOINT set, so shown here):\n", ids.len());
            for id in &ids {
                if let Some(tree) = collected.render(*id) {
                    println!("{tree}");
                }
            }
        }
        println!("metrics (excerpt):");
        for line in metrics.encode().lines().filter(|l| {
            l.starts_with("messaging_client_sent_messages_total")
                || l.starts_with("messaging_client_consumed_messages_total")
                || l.starts_with("messaging_consumer_dead_lettered_messages_total")
                || l.starts_with("messaging_consumer_duplicates_total")
                || l.starts_with("messaging_consumer_invalid_messages_total")
        }) {
            println!("  {line}");
        }
    }
    drop(guards);
    if let Some(server) = server {
        server.shutdown().await;
    }
    Ok(())
}
