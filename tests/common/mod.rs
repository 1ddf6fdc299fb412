//! Test harness: spans captured by the SDK's in-memory exporter through the real
//! `tracing-opentelemetry` layer, and small helpers to read them.
#![allow(dead_code)]

use opentelemetry::trace::{SpanId, TracerProvider as _};
use opentelemetry::Value;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing_subscriber::layer::SubscriberExt;

pub struct Capture {
    pub exporter: InMemorySpanExporter,
    pub provider: SdkTracerProvider,
    _guard: tracing::subscriber::DefaultGuard,
}

/// Installs a thread-local subscriber exporting every span to memory. Use with a
/// current-thread runtime so spawned tasks see it.
pub fn capture() -> Capture {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let guard = tracing::subscriber::set_default(subscriber);
    Capture {
        exporter,
        provider,
        _guard: guard,
    }
}

impl Capture {
    pub fn spans(&self) -> Vec<SpanData> {
        let _ = self.provider.force_flush();
        self.exporter.get_finished_spans().expect("finished spans")
    }
}

pub fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

pub fn attr_str(span: &SpanData, key: &str) -> Option<String> {
    attr(span, key).map(|v| v.as_str().into_owned())
}

pub fn named<'a>(spans: &'a [SpanData], name: &str) -> Vec<&'a SpanData> {
    spans.iter().filter(|s| s.name == name).collect()
}

pub fn one<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    let found = named(spans, name);
    assert_eq!(
        found.len(),
        1,
        "expected one {name:?} span, got {}: {:?}",
        found.len(),
        spans.iter().map(|s| s.name.to_string()).collect::<Vec<_>>()
    );
    found[0]
}

pub fn is_root(span: &SpanData) -> bool {
    span.parent_span_id == SpanId::INVALID
}

/// The value of a sample line in a Prometheus text exposition, matched by name and label
/// fragments.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.starts_with(name)
                && l[name.len()..].starts_with(['{', ' '])
                && labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .reduce(|a, b| a + b)
}

/// The compiled demo (`cargo test` builds examples next to the test binaries).
pub fn demo_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let debug = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let demo = debug.join("examples").join("order_pipeline");
    assert!(
        demo.exists(),
        "{} is missing: build it with `cargo build --features dedup,schema --example order_pipeline` (cargo test does)",
        demo.display()
    );
    demo
}

/// A child process killed when dropped, so a failing test leaves nothing running.
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The demo's topics (`examples/order_pipeline/main.rs`): a stream each on JetStream, an exchange
/// each on RabbitMQ.
pub const DEMO_TOPICS: [&str; 7] = [
    "orders",
    "orders.dlq",
    "ledger",
    "ledger.dlq",
    "payments",
    "inventory",
    "notifications",
];

/// Removes the streams of the demo on JetStream (`order_pipeline --nats`, `bus::Nats`).
#[cfg(feature = "nats")]
pub async fn remove_nats_demo_streams() {
    use eventscope::nats::async_nats;
    let Ok(client) = async_nats::connect("127.0.0.1:4222").await else {
        return;
    };
    let js = async_nats::jetstream::new(client);
    for topic in DEMO_TOPICS {
        let name = format!(
            "EVENTSCOPE_DEMO_{}",
            topic.to_ascii_uppercase().replace('.', "_")
        );
        let _ = js.delete_stream(&name).await;
    }
}

/// The first message of `topic` on the embedded broker, read by a plain consumer of its own
/// group (`reader-{topic}`) that stops as soon as it has one.
pub async fn first_message(
    broker: &eventscope::memory::MemoryBroker,
    topic: &str,
) -> eventscope::memory::MemoryMessage {
    use eventscope::memory::MemoryMessage;
    use std::sync::{Arc, Mutex};

    let seen = Arc::new(Mutex::new(Vec::<MemoryMessage>::new()));
    let handler = {
        let seen = seen.clone();
        tower::service_fn(move |m: MemoryMessage| {
            seen.lock().unwrap().push(m);
            std::future::ready(Ok::<_, eventscope::BoxError>(()))
        })
    };
    let wait = seen.clone();
    broker
        .consumer(format!("reader-{topic}"))
        .subscribe([topic])
        .run(handler, async move {
            while wait.lock().unwrap().is_empty() {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap();
    let first = seen.lock().unwrap()[0].clone();
    first
}
