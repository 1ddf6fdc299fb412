//! One-call OpenTelemetry setup: OTLP export, W3C propagators, and a `tracing` subscriber whose
//! log lines carry the `trace_id`.
//!
//! [`init`] honours the standard environment variables:
//!
//! | variable | effect |
//! |---|---|
//! | `OTEL_SERVICE_NAME` | `service.name` (else the name given to the builder, else the SDK default) |
//! | `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` | where spans go |
//! | `OTEL_EXPORTER_OTLP_PROTOCOL` | `grpc` or `http/protobuf` (default, as the OpenTelemetry spec says) |
//! | `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG` | sampling (default `parentbased_always_on`) |
//! | `OTEL_SDK_DISABLED` | `true` turns tracing export off; logs still work |
//! | `OTEL_TRACES_EXPORTER` | `none` turns OTLP export off (spans are still created for other exporters) |
//! | `RUST_LOG` | the filter for log lines (default `info`, or the builder's) and for spans (default `info`) |
//!
//! Call it inside a Tokio runtime (the gRPC exporter needs one) and keep the returned
//! [`TelemetryGuard`]: dropping it flushes and shuts the exporter down.
//!
//! The global tracer provider it installs is the one eventscope's layers start their spans
//! with (unless a layer was given its own with `tracer_provider`). The `tracing` spans of your
//! own code are exported through `tracing-opentelemetry`, without code locations, thread ids or
//! busy/idle times (add them with your own layer if you want them). Log lines go to stderr,
//! coloured only when stderr is a terminal, each prefixed with the `trace_id` of the current
//! OpenTelemetry context, also for messages that are not sampled. When export fails, one
//! warning names the endpoint and how to turn export off; the next is printed only after
//! export worked again.
//!
//! # Example
//!
//! ```no_run
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let _telemetry = eventscope::telemetry::init()?;
//! tracing::info!("spans and logs now go where OTEL_* says");
//! # Ok(())
//! # }
//! ```

use std::fmt;

use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanExporter};
use opentelemetry_sdk::Resource;
use tracing::Dispatch;
use tracing_subscriber::fmt::format::{Format, Writer};
use tracing_subscriber::fmt::writer::{BoxMakeWriter, MakeWriter};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer as _;
use tracing_subscriber::{EnvFilter, Registry};

/// Sets up telemetry from the environment and installs it globally; see the
/// [module docs](self).
///
/// # Errors
///
/// When the exporter cannot be built or a global subscriber is already set.
pub fn init() -> Result<TelemetryGuard, TelemetryError> {
    TelemetryBuilder::default().install()
}

/// When spans are exported over OTLP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum OtlpExport {
    /// Always (to the SDK's default endpoint when no endpoint variable is set).
    #[default]
    Always,
    /// Only when `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set.
    IfConfigured,
    /// Never.
    Never,
}

/// Configures telemetry; [`init`] is `TelemetryBuilder::default().install()`.
#[derive(Default)]
pub struct TelemetryBuilder {
    service_name: Option<String>,
    otlp: OtlpExport,
    exporters: Vec<
        Box<
            dyn FnOnce(
                opentelemetry_sdk::trace::TracerProviderBuilder,
            ) -> opentelemetry_sdk::trace::TracerProviderBuilder,
        >,
    >,
    filter: Option<String>,
    logs: Option<bool>,
    writer: Option<BoxMakeWriter>,
}

impl fmt::Debug for TelemetryBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TelemetryBuilder")
            .field("service_name", &self.service_name)
            .field("otlp", &self.otlp)
            .field("extra_exporters", &self.exporters.len())
            .field("filter", &self.filter)
            .finish()
    }
}

impl TelemetryBuilder {
    /// `service.name` to use when `OTEL_SERVICE_NAME` is not set.
    pub fn service_name(mut self, name: impl Into<String>) -> Self {
        self.service_name = Some(name.into());
        self
    }

    /// When to export over OTLP (default [`OtlpExport::Always`]).
    pub fn otlp(mut self, mode: OtlpExport) -> Self {
        self.otlp = mode;
        self
    }

    /// Also sends every finished span to `exporter` (batched).
    pub fn with_exporter<E: SpanExporter + 'static>(mut self, exporter: E) -> Self {
        self.exporters.push(Box::new(move |builder| {
            builder.with_batch_exporter(exporter)
        }));
        self
    }

    /// Also sends every finished span to `exporter` as soon as it ends (for tests and demos).
    pub fn with_simple_exporter<E: SpanExporter + 'static>(mut self, exporter: E) -> Self {
        self.exporters.push(Box::new(move |builder| {
            builder.with_simple_exporter(exporter)
        }));
        self
    }

    /// The `EnvFilter` directives to use when `RUST_LOG` is not set (default `info`).
    pub fn default_filter(mut self, directives: impl Into<String>) -> Self {
        self.filter = Some(directives.into());
        self
    }

    /// Whether log lines are printed to stderr (default `true`).
    pub fn logs(mut self, on: bool) -> Self {
        self.logs = Some(on);
        self
    }

    /// Prints log lines to `writer` instead of stderr (never coloured).
    pub fn log_writer<W>(mut self, writer: W) -> Self
    where
        W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
    {
        self.writer = Some(BoxMakeWriter::new(writer));
        self
    }

    /// Builds the subscriber without installing it: for several services in one process, each
    /// with its own `service.name`, run with [`tracing::dispatcher::with_default`] or
    /// `tracing::instrument::WithSubscriber`.
    ///
    /// # Errors
    ///
    /// When the OTLP exporter cannot be built.
    pub fn build(self) -> Result<Telemetry, TelemetryError> {
        let disabled = env_true("OTEL_SDK_DISABLED");
        let provider = if disabled {
            None
        } else {
            let mut builder = SdkTracerProvider::builder().with_resource(self.resource());
            if self.wants_otlp() {
                let (exporter, endpoint) = otlp_exporter()?;
                builder = builder.with_batch_exporter(ReportFailures::new(exporter, endpoint));
            }
            for add in self.exporters {
                builder = add(builder);
            }
            Some(builder.build())
        };
        // Separate filters: quieting the logs must not silence the spans.
        let env_or = |default: &str| {
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default))
        };
        let writer = self.writer;
        let logs = self.logs.unwrap_or(true).then(|| {
            let ansi = writer.is_none() && std::io::IsTerminal::is_terminal(&std::io::stderr());
            tracing_subscriber::fmt::layer()
                .with_writer(writer.unwrap_or_else(|| BoxMakeWriter::new(std::io::stderr)))
                .with_ansi(ansi)
                .event_format(TraceIdFormat(Format::default()))
                .with_filter(env_or(self.filter.as_deref().unwrap_or("info")))
        });
        let otel = provider.as_ref().map(|provider| {
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("eventscope"))
                .with_location(false)
                .with_threads(false)
                .with_tracked_inactivity(false)
                .with_filter(env_or("info"))
        });
        let subscriber = Registry::default().with(otel).with(logs);
        Ok(Telemetry {
            dispatch: Dispatch::new(subscriber),
            guard: TelemetryGuard { provider },
        })
    }

    /// Builds and installs globally: the subscriber, and the W3C Trace Context + Baggage
    /// propagator as the global text-map propagator.
    ///
    /// # Errors
    ///
    /// When the exporter cannot be built or a global subscriber is already set.
    pub fn install(self) -> Result<TelemetryGuard, TelemetryError> {
        let Telemetry { dispatch, guard } = self.build()?;
        tracing::dispatcher::set_global_default(dispatch)
            .map_err(|e| TelemetryError(e.to_string()))?;
        opentelemetry::global::set_text_map_propagator(TextMapCompositePropagator::new(vec![
            Box::new(TraceContextPropagator::new()),
            Box::new(BaggagePropagator::new()),
        ]));
        if let Some(provider) = &guard.provider {
            opentelemetry::global::set_tracer_provider(provider.clone());
        }
        Ok(guard)
    }

    fn resource(&self) -> Resource {
        let builder = Resource::builder();
        match &self.service_name {
            Some(name) if std::env::var_os("OTEL_SERVICE_NAME").is_none() => {
                builder.with_service_name(name.clone()).build()
            }
            _ => builder.build(),
        }
    }

    fn wants_otlp(&self) -> bool {
        let none = std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.trim() == "none");
        if none {
            return false;
        }
        match self.otlp {
            OtlpExport::Always => true,
            OtlpExport::Never => false,
            OtlpExport::IfConfigured => otlp_configured(),
        }
    }
}

/// `true` when an OTLP endpoint variable is set.
pub fn otlp_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var(name).is_ok_and(|v| !v.trim().is_empty()))
}

fn env_true(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// The OTLP exporter the environment asks for, and the endpoint it sends to (for messages).
fn otlp_exporter() -> Result<(opentelemetry_otlp::SpanExporter, String), TelemetryError> {
    use opentelemetry_otlp::WithExportConfig;
    let protocol = std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_default();
    let grpc = protocol.trim() == "grpc";
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT"))
        .ok()
        .filter(|e| !e.trim().is_empty())
        .unwrap_or_else(|| {
            if grpc {
                "http://localhost:4317"
            } else {
                "http://localhost:4318"
            }
            .to_owned()
        });
    let built = match protocol.trim() {
        "grpc" => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build(),
        "" | "http/protobuf" => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .build(),
        other => {
            return Err(TelemetryError(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL={other} is not supported (use grpc or http/protobuf)"
            )))
        }
    };
    built
        .map(|exporter| (exporter, endpoint))
        .map_err(|e| TelemetryError(format!("building the OTLP exporter: {e}")))
}

/// Reports a failing export once (with the endpoint and how to turn export off) instead of on
/// every flush, and once more when it works again.
#[derive(Debug)]
struct ReportFailures<E> {
    inner: E,
    endpoint: String,
    failing: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl<E> ReportFailures<E> {
    fn new(inner: E, endpoint: String) -> Self {
        Self {
            inner,
            endpoint,
            failing: Default::default(),
        }
    }
}

impl<E: SpanExporter> SpanExporter for ReportFailures<E> {
    fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> impl std::future::Future<Output = opentelemetry_sdk::error::OTelSdkResult> + Send {
        use std::sync::atomic::Ordering;
        let export = self.inner.export(batch);
        let failing = std::sync::Arc::clone(&self.failing);
        let endpoint = self.endpoint.clone();
        async move {
            match export.await {
                Ok(()) => {
                    if failing.swap(false, Ordering::Relaxed) {
                        tracing::info!(target: "eventscope::telemetry", endpoint = %endpoint, "span export works again");
                    }
                }
                Err(error) => {
                    if !failing.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            target: "eventscope::telemetry",
                            endpoint = %endpoint,
                            error = %error,
                            "exporting spans failed; spans are dropped until the collector answers \
                             (further failures are not reported). Set OTEL_TRACES_EXPORTER=none or \
                             OTEL_SDK_DISABLED=true to turn export off"
                        );
                    }
                }
            }
            // Reported here, once: the SDK need not log it again on every flush.
            Ok(())
        }
    }

    fn shutdown_with_timeout(
        &self,
        timeout: std::time::Duration,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// A built, not yet installed, telemetry pipeline; see [`TelemetryBuilder::build`].
#[derive(Debug)]
pub struct Telemetry {
    dispatch: Dispatch,
    guard: TelemetryGuard,
}

impl Telemetry {
    /// The subscriber, to run code with.
    pub fn dispatch(&self) -> &Dispatch {
        &self.dispatch
    }

    /// The tracer provider spans are exported through (`None` when `OTEL_SDK_DISABLED=true`):
    /// pass it to the layers' `tracer_provider` when this pipeline is not installed globally.
    pub fn tracer_provider(&self) -> Option<&SdkTracerProvider> {
        self.guard.provider.as_ref()
    }

    /// Splits into the subscriber and the guard that flushes on drop.
    pub fn into_parts(self) -> (Dispatch, TelemetryGuard) {
        (self.dispatch, self.guard)
    }
}

/// Flushes and shuts the exporters down on drop.
#[must_use = "dropping the guard shuts telemetry down"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl fmt::Debug for TelemetryGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TelemetryGuard")
            .field("exporting", &self.provider.is_some())
            .finish()
    }
}

impl TelemetryGuard {
    /// Exports every finished span now.
    pub fn flush(&self) {
        if let Some(provider) = &self.provider {
            if let Err(e) = provider.force_flush() {
                eprintln!("eventscope: flushing spans failed: {e}");
            }
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(e) = provider.shutdown() {
                eprintln!("eventscope: shutting the tracer provider down failed: {e}");
            }
        }
    }
}

/// Telemetry could not be set up.
#[derive(Debug)]
pub struct TelemetryError(String);

impl fmt::Display for TelemetryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TelemetryError {}

/// Prefixes each log line with the `trace_id` of the active span, so logs and traces join.
struct TraceIdFormat<F>(F);

impl<S, N, F> FormatEvent<S, N> for TraceIdFormat<F>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        // Entering a span activates its OpenTelemetry context, so the current context is the
        // active span's.
        let cx = opentelemetry::Context::current();
        let span = cx.span();
        let span_context = span.span_context();
        if span_context.is_valid() {
            write!(writer, "trace_id={} ", span_context.trace_id())?;
        }
        self.0.format_event(ctx, writer, event)
    }
}
