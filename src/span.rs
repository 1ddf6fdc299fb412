//! The native OpenTelemetry spans of SPEC §3 (`send`, `process`, `settle`), started in one place
//! so every layer names and attributes them alike.
//!
//! The sampler decides first: a span starts with only what samplers need (`messaging.system`,
//! `messaging.operation.*`, `messaging.destination.name`, the kind and a static name). Its
//! formatted name, the other attributes and the links are built only when the span records.
//! With no tracer provider installed no span is built at all: the parent context is passed on
//! as it is, so logs and follow-up messages still carry the trace.

use std::borrow::Cow;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use opentelemetry::global::BoxedTracer;
use opentelemetry::trace::{
    Span as _, SpanBuilder, SpanContext, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider,
};
use opentelemetry::{Context, InstrumentationScope, KeyValue, StringValue};
use opentelemetry_semantic_conventions::attribute as semconv;

use crate::message::SpanAttributes;

pub(crate) const OP_SEND: &str = "send";
pub(crate) const OP_PROCESS: &str = "process";
pub(crate) const OP_SETTLE: &str = "settle";

/// The semantic-conventions version the spans follow (SPEC §3).
pub(crate) const SCHEMA_URL: &str = "https://opentelemetry.io/schemas/1.44.0";

fn instrumentation_scope() -> InstrumentationScope {
    InstrumentationScope::builder("eventscope")
        .with_version(env!("CARGO_PKG_VERSION"))
        .with_schema_url(SCHEMA_URL)
        .build()
}

/// Where the layers' spans come from: a tracer of the user's provider, or the global one.
#[derive(Clone)]
pub(crate) struct Tracer {
    source: Arc<Source>,
}

enum Source {
    /// Resolved from the global provider on first use; `None` when it is the no-op provider.
    Global(OnceLock<Option<BoxedTracer>>),
    Provider(Box<dyn StartSpan + Send + Sync>),
}

impl fmt::Debug for Tracer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.source {
            Source::Global(_) => f.write_str("Tracer(global)"),
            Source::Provider(_) => f.write_str("Tracer(provider)"),
        }
    }
}

impl Default for Tracer {
    fn default() -> Self {
        Self {
            source: Arc::new(Source::Global(OnceLock::new())),
        }
    }
}

impl Tracer {
    /// A tracer of `provider`, with eventscope's instrumentation scope.
    pub(crate) fn from_provider<P>(provider: &P) -> Self
    where
        P: TracerProvider,
        P::Tracer: Send + Sync + 'static,
        <P::Tracer as opentelemetry::trace::Tracer>::Span: Send + Sync + 'static,
    {
        Self {
            source: Arc::new(Source::Provider(Box::new(
                provider.tracer_with_scope(instrumentation_scope()),
            ))),
        }
    }

    /// Starts a span under `parent`: the sampler sees `start` and nothing else.
    pub(crate) fn start(&self, start: &SpanStart<'_>, parent: &Context) -> ActiveSpan {
        let tracer: &dyn StartSpan = match &*self.source {
            Source::Provider(tracer) => &**tracer,
            Source::Global(cell) => match cell.get_or_init(resolve_global) {
                Some(tracer) => tracer,
                None => return ActiveSpan::passthrough(parent),
            },
        };
        let builder = SpanBuilder {
            name: Cow::Borrowed(start.operation),
            span_kind: Some(start.kind.clone()),
            attributes: Some(start.sampler_attributes()),
            ..SpanBuilder::from_name(start.operation)
        };
        tracer.start(builder, parent)
    }
}

/// The global tracer, or `None` when the global provider is the no-op one.
///
/// Telling them apart without starting a span anyone could export: under a context that
/// suppresses telemetry, an SDK tracer returns an empty span context, while the no-op tracer
/// hands back the (valid) parent's.
fn resolve_global() -> Option<BoxedTracer> {
    let tracer =
        opentelemetry::global::tracer_provider().tracer_with_scope(instrumentation_scope());
    let probe = SpanContext::new(
        TraceId::from(1u128),
        opentelemetry::trace::SpanId::from(1u64),
        TraceFlags::default(),
        true,
        TraceState::NONE,
    );
    let cx = Context::new()
        .with_remote_span_context(probe.clone())
        .with_telemetry_suppressed();
    let span = tracer.build_with_context(SpanBuilder::from_name("eventscope.probe"), &cx);
    let noop = *span.span_context() == probe;
    (!noop).then_some(tracer)
}

/// Object-safe span start, so the layers hold one tracer type whatever the provider.
trait StartSpan {
    fn start(&self, builder: SpanBuilder, parent: &Context) -> ActiveSpan;
}

impl<T> StartSpan for T
where
    T: opentelemetry::trace::Tracer,
    T::Span: Send + Sync + 'static,
{
    fn start(&self, builder: SpanBuilder, parent: &Context) -> ActiveSpan {
        ActiveSpan::new(self.build_with_context(builder, parent), parent)
    }
}

/// A started span, held as the OpenTelemetry [`Context`] it makes current.
pub(crate) struct ActiveSpan {
    cx: Context,
    recording: bool,
}

impl fmt::Debug for ActiveSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ActiveSpan")
            .field("span_context", self.cx.span().span_context())
            .field("recording", &self.recording)
            .finish()
    }
}

impl ActiveSpan {
    fn new<S: opentelemetry::trace::Span + Send + Sync + 'static>(
        span: S,
        parent: &Context,
    ) -> Self {
        if span.is_recording() {
            return Self {
                cx: parent.with_span(span),
                recording: true,
            };
        }
        // A span that does not record is only its span context: keep that, drop the rest.
        let sc = span.span_context();
        let cx = if !sc.is_valid() || sc == parent.span().span_context() {
            parent.clone()
        } else {
            parent.with_remote_span_context(sc.clone())
        };
        Self {
            cx,
            recording: false,
        }
    }

    /// No span of our own (no provider): the parent context is passed on.
    pub(crate) fn passthrough(parent: &Context) -> Self {
        Self {
            cx: parent.clone(),
            recording: false,
        }
    }

    /// The context to make current while the operation runs, and to inject.
    pub(crate) fn context(&self) -> &Context {
        &self.cx
    }

    pub(crate) fn is_recording(&self) -> bool {
        self.recording
    }

    /// Names, attributes and links a recording span gets after the sampler said yes.
    pub(crate) fn describe(&self, start: &SpanStart<'_>, extra: impl FnOnce(&mut SpanAttributes)) {
        if !self.recording {
            return;
        }
        let span = self.cx.span();
        span.update_name(format!("{} {}", start.operation, start.destination));
        let mut attributes = SpanAttributes::new();
        start.recording_attributes(&mut attributes);
        extra(&mut attributes);
        span.set_attributes(attributes.into_key_values());
    }

    /// Adds a link (a recording span only).
    pub(crate) fn link(&self, to: &SpanContext, attributes: Vec<KeyValue>) {
        if self.recording && to.is_valid() {
            self.cx.span().add_link(to.clone(), attributes);
        }
    }

    /// Adds attributes known only later (the broker's acknowledgement).
    pub(crate) fn annotate(&self, extra: impl FnOnce(&mut SpanAttributes)) {
        if !self.recording {
            return;
        }
        let mut attributes = SpanAttributes::new();
        extra(&mut attributes);
        self.cx.span().set_attributes(attributes.into_key_values());
    }

    /// Marks the span failed with `error.type`.
    pub(crate) fn fail(&self, error_type: &str) {
        if !self.recording {
            return;
        }
        let span = self.cx.span();
        span.set_attribute(KeyValue::new(semconv::ERROR_TYPE, error_type.to_owned()));
        span.set_status(Status::error(error_type.to_owned()));
    }

    /// Ends the span (once; later calls do nothing).
    pub(crate) fn end(&self) {
        if self.recording {
            self.cx.span().end_with_timestamp(SystemTime::now());
        }
    }
}

/// What a messaging span starts with.
pub(crate) struct SpanStart<'a> {
    pub(crate) operation: &'static str,
    pub(crate) kind: SpanKind,
    pub(crate) system: &'static str,
    /// The destination label value, shared with the metric handles so no copy is made.
    pub(crate) destination: &'a Arc<str>,
    pub(crate) message_id: Option<&'a str>,
    pub(crate) conversation_id: Option<&'a str>,
    pub(crate) body_size: Option<usize>,
    pub(crate) partition: Option<i32>,
    pub(crate) group: Option<&'a str>,
    pub(crate) batch_size: Option<usize>,
}

impl SpanStart<'_> {
    fn operation_type(&self) -> &'static str {
        match self.operation {
            OP_SEND => "send",
            OP_PROCESS => "process",
            _ => "settle",
        }
    }

    /// What samplers may look at (SPEC §3).
    fn sampler_attributes(&self) -> Vec<KeyValue> {
        vec![
            KeyValue::new(semconv::MESSAGING_SYSTEM, self.system),
            KeyValue::new(semconv::MESSAGING_OPERATION_NAME, self.operation),
            KeyValue::new(semconv::MESSAGING_OPERATION_TYPE, self.operation_type()),
            KeyValue::new(
                semconv::MESSAGING_DESTINATION_NAME,
                StringValue::from(Arc::clone(self.destination)),
            ),
        ]
    }

    fn recording_attributes(&self, attributes: &mut SpanAttributes) {
        if let Some(partition) = self.partition {
            attributes.string(
                semconv::MESSAGING_DESTINATION_PARTITION_ID,
                partition.to_string(),
            );
        }
        if let Some(group) = self.group.filter(|g| !g.is_empty()) {
            attributes.string(semconv::MESSAGING_CONSUMER_GROUP_NAME, group);
        }
        if let Some(id) = self.message_id {
            attributes.string(semconv::MESSAGING_MESSAGE_ID, id);
        }
        if let Some(id) = self.conversation_id {
            attributes.string(semconv::MESSAGING_MESSAGE_CONVERSATION_ID, id);
        }
        if let Some(size) = self.body_size {
            attributes.int(semconv::MESSAGING_MESSAGE_BODY_SIZE, size as i64);
        }
        if let Some(count) = self.batch_size {
            attributes.int(semconv::MESSAGING_BATCH_MESSAGE_COUNT, count as i64);
        }
    }
}
