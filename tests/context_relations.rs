//! While a handler runs, the process span's OpenTelemetry context is the current one (SPEC §3):
//! the handler's own `tracing` spans nest under `process {destination}`, its log lines carry the
//! trace id (also when the message is not sampled), a publish from inside it is a child of the
//! process span, and a publish from inside a user's own `tracing` span is a child of that span.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::*;
use eventscope::message::{HeaderList, Headers, HeadersMut, IncomingMessage, OutgoingMessage};
use eventscope::metrics::Metrics;
use eventscope::process::ProcessLayer;
use eventscope::publish::PublishLayer;
use eventscope::telemetry::{OtlpExport, TelemetryBuilder};
use opentelemetry::trace::{SpanId, TraceContextExt};
use opentelemetry_sdk::trace::InMemorySpanExporter;
use tower::{service_fn, Layer, Service, ServiceExt};
use tracing::Instrument;

/// A message that is published and then handed to a handler, as a broker would.
#[derive(Clone, Debug, Default)]
struct Msg {
    topic: &'static str,
    headers: HeaderList,
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
}

impl OutgoingMessage for Msg {
    fn system(&self) -> &'static str {
        "memory"
    }
    fn destination(&self) -> &str {
        self.topic
    }
    fn payload(&self) -> &[u8] {
        &[]
    }
}

impl IncomingMessage for Msg {
    fn system(&self) -> &'static str {
        "memory"
    }
    fn destination(&self) -> &str {
        self.topic
    }
}

type Sent = Arc<Mutex<Vec<Msg>>>;

/// A broker that keeps what it was given.
fn broker(sent: Sent) -> impl Service<Msg, Response = (), Error = std::io::Error> + Clone {
    service_fn(move |m: Msg| {
        sent.lock().unwrap().push(m);
        std::future::ready(Ok(()))
    })
}

fn parent_of<'a>(
    spans: &'a [opentelemetry_sdk::trace::SpanData],
    child: &str,
) -> &'a opentelemetry_sdk::trace::SpanData {
    let child = one(spans, child);
    spans
        .iter()
        .find(|s| s.span_context.span_id() == child.parent_span_id)
        .unwrap_or_else(|| panic!("the parent of {:?} was not exported", child.name))
}

#[tokio::test(flavor = "current_thread")]
async fn handler_spans_and_publishes_nest_under_the_process_span() {
    let capture = capture();
    let metrics = Metrics::new();
    let sent = Sent::default();
    let publisher = PublishLayer::new(metrics.clone())
        .tracer_provider(&capture.provider)
        .layer(broker(sent.clone()));

    // A user's own span around a publish: the send span is its child.
    let place = tracing::info_span!("place order");
    publisher
        .clone()
        .oneshot(Msg {
            topic: "orders",
            ..Msg::default()
        })
        .instrument(place)
        .await
        .unwrap();
    let order = sent.lock().unwrap().pop().unwrap();

    let follow_ups = publisher.clone();
    let handler = ProcessLayer::new(metrics.clone())
        .tracer_provider(&capture.provider)
        .layer(service_fn(move |_m: Msg| {
            let publisher = follow_ups.clone();
            async move {
                // Directly in the handler: a child of the process span.
                publisher
                    .clone()
                    .oneshot(Msg {
                        topic: "payments",
                        ..Msg::default()
                    })
                    .await?;
                // Inside the handler's own span: that span is the parent of both.
                let charge = tracing::info_span!("charge card");
                async move {
                    tokio::task::yield_now().await;
                    publisher
                        .oneshot(Msg {
                            topic: "receipts",
                            ..Msg::default()
                        })
                        .await
                }
                .instrument(charge)
                .await
            }
        }));
    handler.oneshot(order).await.unwrap();

    let spans = capture.spans();
    let process = one(&spans, "process orders");
    assert_eq!(parent_of(&spans, "send orders").name, "place order");
    assert_eq!(
        parent_of(&spans, "process orders").name,
        "send orders",
        "Auto policy: the creation context is the parent"
    );
    assert_eq!(parent_of(&spans, "send payments").name, "process orders");
    assert_eq!(parent_of(&spans, "charge card").name, "process orders");
    assert_eq!(parent_of(&spans, "send receipts").name, "charge card");
    let trace = process.span_context.trace_id();
    assert!(spans.iter().all(|s| s.span_context.trace_id() == trace));
}

/// A writer the log layer prints into.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn log_lines_in_the_handler_carry_the_trace_id_of_an_unsampled_message() {
    let lines = Lines::default();
    let exporter = InMemorySpanExporter::default();
    let writer = lines.clone();
    let telemetry = TelemetryBuilder::default()
        .service_name("billing")
        .otlp(OtlpExport::Never)
        .with_simple_exporter(exporter.clone())
        .default_filter("info")
        .log_writer(move || writer.clone())
        .build()
        .unwrap();
    let provider = telemetry.tracer_provider().unwrap().clone();
    let metrics = Metrics::new();

    // Published upstream with sampling off: the default parent-based sampler follows it.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut message = Msg {
        topic: "orders",
        ..Msg::default()
    };
    message.set_header("traceparent", &format!("00-{trace_id}-00f067aa0ba902b7-00"));
    let handler = ProcessLayer::new(metrics)
        .tracer_provider(&provider)
        .layer(service_fn(|_m: Msg| async {
            let current = opentelemetry::Context::current();
            assert!(!current.span().span_context().is_sampled());
            assert_ne!(current.span().span_context().span_id(), SpanId::INVALID);
            tracing::info!("charging card");
            Ok::<_, std::io::Error>(())
        }));
    let _guard = tracing::dispatcher::set_default(telemetry.dispatch());
    handler.oneshot(message).await.unwrap();

    let printed = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    let line = printed
        .lines()
        .find(|l| l.contains("charging card"))
        .unwrap_or_else(|| panic!("no log line in {printed:?}"));
    assert!(line.contains(&format!("trace_id={trace_id}")), "{line}");
    assert!(
        !line.contains('\u{1b}'),
        "no colours when not printing to a terminal: {line}"
    );
    let _ = provider.force_flush();
    assert!(
        exporter.get_finished_spans().unwrap().is_empty(),
        "nothing was sampled"
    );
}
