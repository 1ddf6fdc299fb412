//! Per-message cost of publish + process through eventscope's layers, against the same bare
//! services in the same run.
//!
//! ```text
//! cargo bench --bench layers
//! ```
//!
//! The inner publisher and handler complete immediately, so what is measured is the layers
//! alone: span creation, header injection and extraction, ids, metrics.

use std::future::ready;

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkGroup, Criterion};
use eventscope::message::{
    HeaderList, Headers, HeadersMut, IncomingMessage, OutgoingMessage, Receipt,
};
use eventscope::metrics::Metrics;
use eventscope::process::ProcessLayer;
use eventscope::publish::PublishLayer;
use futures_util::FutureExt;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter};
use tower::{service_fn, Layer, Service};
use tracing_subscriber::layer::SubscriberExt;

/// A message that is both what is published and what is consumed.
#[derive(Clone, Debug)]
struct Msg {
    headers: HeaderList,
    payload: Vec<u8>,
}

impl Msg {
    fn new() -> Self {
        Self {
            headers: HeaderList::new(),
            payload: vec![0u8; 256],
        }
    }
}

impl Headers for Msg {
    fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.headers.iter()
    }
}

impl HeadersMut for Msg {
    fn set_header(&mut self, name: &str, value: String) {
        self.headers.set_header(name, value);
    }
}

impl OutgoingMessage for Msg {
    fn system(&self) -> &'static str {
        "kafka"
    }
    fn destination(&self) -> &str {
        "orders"
    }
    fn body_size(&self) -> Option<usize> {
        Some(self.payload.len())
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
        Some(std::time::SystemTime::now())
    }
    fn body_size(&self) -> Option<usize> {
        Some(self.payload.len())
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

fn subscriber(sampler: Sampler) -> (impl tracing::Subscriber + Send + Sync, SdkTracerProvider) {
    let provider = SdkTracerProvider::builder()
        .with_sampler(sampler)
        .with_simple_exporter(Discard)
        .build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("bench"));
    (tracing_subscriber::registry().with(layer), provider)
}

/// Publish + process through both layers, in whatever subscriber is set.
fn layered(group: &mut BenchmarkGroup<'_, WallTime>, metrics: &Metrics, name: &str) {
    let mut p = PublishLayer::new(metrics.clone()).layer(broker());
    let mut h = ProcessLayer::new(metrics.clone()).layer(handler());
    group.bench_function(name, |b| {
        b.iter_batched(
            Msg::new,
            |m| round_trip(&mut p, &mut h, m),
            BatchSize::SmallInput,
        )
    });
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish+process");
    let metrics = Metrics::new();

    group.bench_function("bare", |b| {
        let (mut p, mut h) = (broker(), handler());
        b.iter_batched(
            Msg::new,
            |m| round_trip(&mut p, &mut h, m),
            BatchSize::SmallInput,
        )
    });

    layered(&mut group, &metrics, "layers, no subscriber");
    for (sampler, label) in [
        (Sampler::AlwaysOff, "unsampled"),
        (Sampler::AlwaysOn, "sampled"),
    ] {
        let (subscriber, _provider) = subscriber(sampler);
        let _guard = tracing::subscriber::set_default(subscriber);
        layered(&mut group, &metrics, &format!("layers, {label}"));
        // The floor any tracing-based instrumentation pays: two spans without attributes,
        // each entered and closed, around the bare round trip.
        group.bench_function(format!("two empty tracing spans, {label}"), |b| {
            let (mut p, mut h) = (broker(), handler());
            b.iter_batched(
                Msg::new,
                |m| {
                    let Sent(delivered) = {
                        let span = tracing::info_span!("send");
                        let _entered = span.enter();
                        p.call(m).now_or_never().unwrap().unwrap()
                    };
                    let span = tracing::info_span!("process");
                    let _entered = span.enter();
                    h.call(delivered).now_or_never().unwrap().unwrap()
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
