//! The order pipeline: an order service publishes `OrderCreated`; payment, inventory and
//! notification services consume it and publish their follow-ups. Every hop is traced and
//! measured by eventscope.
//!
//! ```text
//! cargo run --example order_pipeline                   # 5 orders on the embedded broker, then exit
//! cargo run --example order_pipeline -- --orders 20
//! cargo run --example order_pipeline -- --forever      # steady stream, /metrics on 127.0.0.1:9464
//! OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 cargo run --example order_pipeline
//! ```

mod bus;
mod envelope;
mod tree;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus::{Bus, Handler, Publisher};
use envelope::{Envelope, FollowUp, Item, OrderCreated};
use eventscope::classify::{Classifier, Decision};
use eventscope::memory::MemoryBroker;
use eventscope::message::{new_id, IncomingMessage};
use eventscope::metrics::Metrics;
use eventscope::publish::PublishLayer;
use eventscope::scope::MessageScope;
use eventscope::server::{MetricsServer, DEFAULT_ADDR};
use eventscope::telemetry::{otlp_configured, OtlpExport, TelemetryBuilder, TelemetryGuard};
use eventscope::BoxError;
use opentelemetry::trace::{TraceContextExt, TraceId};
use tokio::sync::watch;
use tower::util::BoxCloneSyncService;
use tower::{service_fn, ServiceExt};
use tracing::instrument::WithSubscriber;
use tracing::{Dispatch, Instrument};
use tracing_opentelemetry::OpenTelemetrySpanExt;

const ORDERS: &str = "orders";
const DEAD_LETTERS: &str = "orders.dlq";
/// Chaos mode only: a ledger whose consumer meets an entry it cannot handle.
const LEDGER: &str = "ledger";

struct Args {
    orders: usize,
    forever: bool,
    metrics_addr: SocketAddr,
    rate: f64,
    kafka: Option<String>,
    nats: Option<String>,
}

fn usage() -> &'static str {
    "usage: order_pipeline [--orders N] [--forever] [--rate ORDERS_PER_SEC] [--metrics-addr ADDR] [--kafka BOOTSTRAP] [--nats URL]"
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        orders: 5,
        forever: false,
        metrics_addr: DEFAULT_ADDR,
        rate: 10.0,
        kafka: None,
        nats: None,
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
            "--nats" => args.nats = Some(value("--nats")?),
            "-h" | "--help" => return Err(usage().into()),
            other => return Err(format!("unknown argument {other}\n{}", usage())),
        }
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

/// Names a declined payment for metrics and spans, and retries every failure after a pause:
/// the consumer and its process layer share this one classifier.
fn classifier() -> Classifier {
    Classifier::new()
        .on::<PaymentDeclined>("PaymentDeclined")
        .otherwise(Decision::retry(std::time::Duration::from_millis(100)))
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

    /// Payment and notification must not act twice on one event.
    fn idempotent(self) -> bool {
        matches!(self, Role::Payment | Role::Notification)
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

/// Event ids a service already handled, bounded.
#[derive(Default)]
struct Seen {
    ids: HashSet<String>,
    order: VecDeque<String>,
}

impl Seen {
    const KEEP: usize = 100_000;

    fn insert(&mut self, id: &str) {
        if self.ids.insert(id.to_owned()) {
            self.order.push_back(id.to_owned());
            if self.order.len() > Self::KEEP {
                if let Some(old) = self.order.pop_front() {
                    self.ids.remove(&old);
                }
            }
        }
    }
}

struct Shared<B: Bus> {
    bus: B,
    metrics: Metrics,
    chaos: bool,
    seen: Mutex<HashMap<Role, Seen>>,
    attempts: Mutex<HashMap<String, u32>>,
    dice: Mutex<Dice>,
    handled: HashMap<Role, AtomicUsize>,
}

impl<B: Bus> Shared<B> {
    fn roll(&self) -> f64 {
        self.dice.lock().unwrap().roll()
    }

    /// Records that `role` is done with an event, whatever the outcome.
    fn finish(&self, role: Role, event_id: &str) {
        if role.idempotent() {
            let mut seen = self.seen.lock().unwrap();
            seen.entry(role).or_default().insert(event_id);
        }
        self.attempts.lock().unwrap().remove(event_id);
        self.handled[&role].fetch_add(1, Ordering::Relaxed);
    }
}

async fn handle<B: Bus>(
    role: Role,
    shared: Arc<Shared<B>>,
    publisher: Publisher<B::Record>,
    message: B::Message,
) -> Result<(), BoxError> {
    let (system, topic, group) = (
        message.system(),
        message.destination().to_owned(),
        role.service(),
    );

    let Ok(order) = serde_json::from_slice::<Envelope<OrderCreated>>(B::payload(&message)) else {
        shared
            .metrics
            .record_invalid(system, &topic, group, "decode");
        tracing::info!(%topic, "skipping a message that is not an OrderCreated envelope");
        shared.handled[&role].fetch_add(1, Ordering::Relaxed);
        return Ok(());
    };
    if order.data.items.is_empty() || order.data.items.iter().any(|i| i.quantity == 0) {
        shared
            .metrics
            .record_invalid(system, &topic, group, "schema");
        tracing::info!(order = %order.data.order_id, "skipping an order without items");
        shared.finish(role, &order.event_id);
        return Ok(());
    }
    if role.idempotent() {
        let seen = shared.seen.lock().unwrap();
        if seen
            .get(&role)
            .is_some_and(|s| s.ids.contains(&order.event_id))
        {
            drop(seen);
            shared.metrics.record_duplicate(system, &topic, group);
            tracing::info!(event = %order.event_id, "duplicate delivery skipped");
            return Ok(());
        }
    }

    let work_ms = match role {
        Role::Payment => 2.0 + 8.0 * shared.roll(),
        Role::Inventory => 5.0 + 35.0 * shared.roll(),
        Role::Notification => 1.0 + 4.0 * shared.roll(),
    };
    tokio::time::sleep(Duration::from_secs_f64(work_ms / 1e3)).await;

    if role == Role::Payment && shared.chaos {
        // Some cards are always declined; the gateway also has bad moments.
        let poison = order.data.amount_cents % 37 == 0;
        if poison || shared.roll() < 0.08 {
            let attempts = {
                let mut attempts = shared.attempts.lock().unwrap();
                let n = attempts.entry(order.event_id.clone()).or_default();
                *n += 1;
                *n
            };
            if attempts < 3 {
                return Err(PaymentDeclined.into());
            }
            let record = shared.bus.record(
                DEAD_LETTERS,
                &order.data.customer_id,
                B::payload(&message).to_vec(),
                &[("dead-letter-reason", "PaymentDeclined")],
            );
            publisher.oneshot(record).await?;
            shared
                .metrics
                .record_dead_letter(system, &topic, group, "PaymentDeclined");
            tracing::info!(order = %order.data.order_id, "payment declined 3 times, dead-lettered");
            shared.finish(role, &order.event_id);
            return Ok(());
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
        follow_topic,
        &order.data.order_id,
        follow.to_bytes(),
        &[("message-id", &follow.event_id)],
    );
    publisher.oneshot(record).await?;
    shared.finish(role, &order.event_id);
    Ok(())
}

fn handler<B: Bus>(
    role: Role,
    shared: &Arc<Shared<B>>,
    publisher: Publisher<B::Record>,
) -> Handler<B::Message> {
    let shared = Arc::clone(shared);
    let inner = service_fn(move |message: B::Message| {
        handle(role, shared.clone(), publisher.clone(), message)
    });
    // The consumer wraps it in its own process layer (its metrics, its classifier).
    BoxCloneSyncService::new(inner)
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
            items: vec![Item {
                sku: format!("sku-{}", (shared.roll() * 100.0) as u32),
                quantity: 1 + (shared.roll() * 3.0) as u32,
            }],
        };
        if shared.chaos && shared.roll() < 0.02 {
            order.items.clear();
        }
        let envelope = Envelope::new("OrderCreated", new_id(), None, order);
        let record = || {
            shared.bus.record(
                ORDERS,
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
        if let Err(e) = sent {
            tracing::error!(error = %e, "publishing an order failed");
        }
        if shared.chaos {
            // An at-least-once producer sometimes sends the same event twice.
            if shared.roll() < 0.03 {
                let _ = publisher.clone().oneshot(record()).instrument(span).await;
            }
            // A legacy client without tracing, with a broken traceparent and a payload of its own.
            if shared.roll() < 0.02 {
                let legacy = shared.bus.record(
                    ORDERS,
                    &customer,
                    format!("ORDER|{placed}|{customer}").into_bytes(),
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
    if let Some(url) = args.nats.clone() {
        return run_nats(args, url).await;
    }
    match args.kafka.clone() {
        Some(bootstrap) => run_kafka(args, bootstrap).await,
        None => {
            let metrics = Metrics::new();
            // The broker counts what a group never received (none, with the default Overflow).
            let broker = MemoryBroker::builder()
                .default_partitions(3)
                .metrics(metrics.clone())
                .build();
            for topic in [
                ORDERS,
                DEAD_LETTERS,
                "payments",
                "inventory",
                "notifications",
            ] {
                broker.create_topic(topic, 3)?;
            }
            run(bus::Memory(broker), args, metrics).await
        }
    }
}

#[cfg(not(feature = "kafka"))]
async fn run_kafka(_args: Arc<Args>, _bootstrap: String) -> Result<(), BoxError> {
    Err("this build has no Kafka support: run with `--features kafka`".into())
}

#[cfg(feature = "kafka")]
async fn run_kafka(args: Arc<Args>, bootstrap: String) -> Result<(), BoxError> {
    let bus = bus::Kafka::connect(
        &bootstrap,
        &[
            ORDERS,
            DEAD_LETTERS,
            LEDGER,
            "payments",
            "inventory",
            "notifications",
        ],
    )
    .await?;
    run(bus, args, Metrics::new()).await
}

#[cfg(not(feature = "nats"))]
async fn run_nats(_args: Arc<Args>, _url: String) -> Result<(), BoxError> {
    Err("this build has no NATS support: run with `--features nats`".into())
}

/// The same flow on JetStream (`--nats nats://127.0.0.1:4222`): a stream per topic.
#[cfg(feature = "nats")]
async fn run_nats(args: Arc<Args>, url: String) -> Result<(), BoxError> {
    let bus = bus::Nats::connect(
        &url,
        &[
            ORDERS,
            DEAD_LETTERS,
            LEDGER,
            "payments",
            "inventory",
            "notifications",
        ],
    )
    .await?;
    run(bus, args, Metrics::new()).await
}

async fn run<B: Bus>(bus: B, args: Arc<Args>, metrics: Metrics) -> Result<(), BoxError> {
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
        metrics: metrics.clone(),
        chaos: args.forever,
        seen: Mutex::default(),
        attempts: Mutex::default(),
        dice: Mutex::new(Dice(0x9E37_79B9_7F4A_7C15 ^ std::process::id() as u64)),
        handled: Role::ALL
            .iter()
            .map(|r| (*r, AtomicUsize::new(0)))
            .collect(),
    });
    println!("eventscope order pipeline on {}", bus.describe());
    if let Some(server) = &server {
        println!("metrics:  http://{}/metrics", server.local_addr());
    }
    if otlp_configured() {
        println!("traces:   exported over OTLP (OTEL_EXPORTER_OTLP_ENDPOINT); open Jaeger at http://localhost:16686");
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut guards = Vec::new();
    let mut consumers = Vec::new();
    for role in Role::ALL {
        let service = telemetry(role.service(), &collected)?;
        let publisher = bus.publisher(service.publish_layer(&metrics));
        let handler = handler(role, &shared, publisher);
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
            role.service(),
            ORDERS,
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
            let balanced = B::payload(&m) != b"unbalanced";
            async move {
                if balanced {
                    Ok(())
                } else {
                    Err(BoxError::from("ledger entry does not balance"))
                }
            }
        }));
        let record = bus.record(LEDGER, "entry-1", b"unbalanced".to_vec(), &[]);
        bus.raw_publisher().oneshot(record).await?;
        let mut stop = stop_rx.clone();
        let stop = Box::pin(async move {
            let _ = stop.wait_for(|s| *s).await;
        });
        let run = bus.consume(
            "ledger-service",
            LEDGER,
            handler,
            &metrics,
            Classifier::new(),
            None,
            stop,
        );
        ledger = Some(tokio::spawn(run));
    }

    let orders = telemetry("order-service", &collected)?;
    let order_publisher = bus.publisher(orders.publish_layer(&metrics));
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
        println!("placing ~{} orders/s until Ctrl-C (some payments fail, some events repeat, a legacy client sends junk)", args.rate);
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
