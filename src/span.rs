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

use opentelemetry::baggage::BaggageExt;
use opentelemetry::global::BoxedTracer;
use opentelemetry::trace::{
    Span as _, SpanBuilder, SpanContext, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider,
};
use opentelemetry::{Context, InstrumentationScope, KeyValue, StringValue};
use opentelemetry_semantic_conventions::attribute as semconv;

// `messaging.operation.name` values, defined once with the metrics' label values. Each is also
// the operation's `messaging.operation.type`.
pub(crate) use crate::metrics::{
    OPERATION_PROCESS as OP_PROCESS, OPERATION_SEND as OP_SEND, OPERATION_SETTLE as OP_SETTLE,
};

/// The attempt number on every process span (SPEC §8; semconv 1.44 has only broker-specific
/// attributes for it).
pub(crate) const DELIVERY_ATTEMPT: &str = "eventscope.delivery_attempt";

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
    pub(crate) fn from_provider<P: crate::SharedTracerProvider>(provider: &P) -> Self {
        Self {
            source: Arc::new(Source::Provider(Box::new(
                provider.tracer_with_scope(instrumentation_scope()),
            ))),
        }
    }

    /// No span will be started: no provider was given and the global one is the no-op
    /// provider. The layers then pass the parent context on without building anything.
    #[inline]
    pub(crate) fn is_off(&self) -> bool {
        match &*self.source {
            Source::Global(cell) => cell.get_or_init(resolve_global).is_none(),
            Source::Provider(_) => false,
        }
    }

    /// Starts a span under `parent`: the sampler sees `start` and nothing else.
    pub(crate) fn start(&self, start: &SpanStart<'_>, parent: &Context) -> ActiveSpan {
        self.start_with(start, parent, None)
    }

    /// [`start`](Self::start) for an operation that began at `at` (a settle, timed first).
    pub(crate) fn start_at(
        &self,
        start: &SpanStart<'_>,
        parent: &Context,
        at: SystemTime,
    ) -> ActiveSpan {
        self.start_with(start, parent, Some(at))
    }

    fn start_with(
        &self,
        start: &SpanStart<'_>,
        parent: &Context,
        at: Option<SystemTime>,
    ) -> ActiveSpan {
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
            start_time: at,
            attributes: Some(start.sampler_attributes()),
            events: None,
            links: None,
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
    if noop {
        // Said once per process: spans were asked for (a layer or consumer uses the global
        // provider) and none will be made.
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| {
            tracing::info!(
                "no OpenTelemetry tracer provider is installed, so eventscope records no spans \
                 (trace context and ids still travel in the headers): call \
                 eventscope::telemetry::init() at startup, or give the layers and consumers a \
                 provider with tracer_provider(&provider)"
            );
        });
    }
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

/// A started span: its span context, and the OpenTelemetry [`Context`] it makes current.
///
/// A span that does not record is only its span context; the `Context` around it is built only
/// when something needs it current (the process layer), not for a publish.
pub(crate) struct ActiveSpan {
    span_context: SpanContext,
    parent: Context,
    cx: Option<Context>,
    kind: Kind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// No span of our own: the parent context is the one made current.
    Passthrough,
    /// A span the sampler dropped: only its span context is kept.
    Unrecorded,
    Recording,
}

impl fmt::Debug for ActiveSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ActiveSpan")
            .field("span_context", &self.span_context)
            .field("kind", &self.kind)
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
                span_context: span.span_context().clone(),
                parent: parent.clone(),
                cx: Some(parent.with_span(span)),
                kind: Kind::Recording,
            };
        }
        let sc = span.span_context();
        if !sc.is_valid() || sc == parent.span().span_context() {
            return Self::passthrough(parent);
        }
        Self {
            span_context: sc.clone(),
            parent: parent.clone(),
            cx: None,
            kind: Kind::Unrecorded,
        }
    }

    /// No span of our own (no provider): the parent context is passed on.
    pub(crate) fn passthrough(parent: &Context) -> Self {
        let span_context = if parent.has_active_span() {
            parent.span().span_context().clone()
        } else {
            SpanContext::NONE
        };
        Self {
            span_context,
            parent: parent.clone(),
            cx: None,
            kind: Kind::Passthrough,
        }
    }

    /// The span's own span context (the parent's when there is no span of our own).
    pub(crate) fn span_context(&self) -> &SpanContext {
        &self.span_context
    }

    /// The context the span was started in (its baggage travels on).
    pub(crate) fn parent(&self) -> &Context {
        &self.parent
    }

    /// The current context if it was built.
    pub(crate) fn built_context(&self) -> Option<&Context> {
        match self.kind {
            Kind::Passthrough => Some(&self.parent),
            Kind::Unrecorded | Kind::Recording => self.cx.as_ref(),
        }
    }

    pub(crate) fn is_recording(&self) -> bool {
        self.kind == Kind::Recording
    }

    fn recording_span(&self) -> Option<opentelemetry::trace::SpanRef<'_>> {
        match (&self.cx, self.kind) {
            (Some(cx), Kind::Recording) => Some(cx.span()),
            _ => None,
        }
    }

    /// Names, attributes and links a recording span gets after the sampler said yes.
    pub(crate) fn describe(&self, start: &SpanStart<'_>, extra: impl FnOnce(&mut SpanAttributes)) {
        let Some(span) = self.recording_span() else {
            return;
        };
        span.update_name(start.name());
        let mut attributes = SpanAttributes::new();
        start.recording_attributes(&mut attributes);
        extra(&mut attributes);
        span.set_attributes(attributes.drain());
    }

    /// Adds a link (a recording span only).
    pub(crate) fn link(&self, to: &SpanContext, attributes: Vec<KeyValue>) {
        if let Some(span) = self.recording_span().filter(|_| to.is_valid()) {
            span.add_link(to.clone(), attributes);
        }
    }

    /// What the operation's future keeps once it is under way, for an operation that runs
    /// with the span current (the process layers): the context to attach, built now.
    pub(crate) fn into_running(self) -> RunningSpan {
        let attach = self.attaches();
        let recording = self.is_recording();
        let cx = match (attach, self.kind, self.cx) {
            (false, _, _) => None,
            (true, Kind::Passthrough, _) => Some(self.parent),
            (true, _, Some(cx)) => Some(cx),
            (true, _, None) => Some(self.parent.with_remote_span_context(self.span_context)),
        };
        RunningSpan { cx, recording }
    }

    /// Whether there is anything to make current while the operation runs: not for no span of
    /// our own and an empty parent, which saves an attach on every poll.
    fn attaches(&self) -> bool {
        self.kind == Kind::Recording || attaches(&self.span_context, &self.parent)
    }

    /// What the operation's future keeps, for an operation that only ends its span (a
    /// publish, a settle): a recording span, or nothing.
    pub(crate) fn into_ending(self) -> RunningSpan {
        match (self.kind, self.cx) {
            (Kind::Recording, cx @ Some(_)) => RunningSpan {
                cx,
                recording: true,
            },
            _ => RunningSpan::default(),
        }
    }
}

/// A span whose operation is under way, as its future keeps it: only the context it makes
/// current and whether that holds a recording span. Small, so the futures that carry it stay
/// cheap to move (an [`ActiveSpan`] is five times its size).
#[derive(Default)]
pub(crate) struct RunningSpan {
    /// The context to make current on each poll; `None` when there is nothing to make current.
    cx: Option<Context>,
    recording: bool,
}

impl fmt::Debug for RunningSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunningSpan")
            .field("attaches", &self.cx.is_some())
            .field("recording", &self.recording)
            .finish()
    }
}

/// A context worth making current: it holds a valid span context or baggage.
fn attaches(span_context: &SpanContext, cx: &Context) -> bool {
    span_context.is_valid() || !cx.baggage().is_empty()
}

impl RunningSpan {
    /// No span of our own (no provider): `parent` is made current if it carries anything.
    /// `may_have_baggage`: false when the caller knows `parent` has none, which saves looking.
    #[inline]
    pub(crate) fn passthrough(parent: Context, may_have_baggage: bool) -> Self {
        let attach = parent.span().span_context().is_valid()
            || (may_have_baggage && !parent.baggage().is_empty());
        let cx = attach.then_some(parent);
        Self {
            cx,
            recording: false,
        }
    }

    /// The context to attach while the operation runs, if there is anything to make current.
    pub(crate) fn attachable(&self) -> Option<&Context> {
        self.cx.as_ref()
    }

    /// The operation's context, for what follows a failure (a retry, a dead letter).
    pub(crate) fn context(&self) -> Context {
        self.cx.clone().unwrap_or_default()
    }

    fn recording_span(&self) -> Option<opentelemetry::trace::SpanRef<'_>> {
        match (&self.cx, self.recording) {
            (Some(cx), true) => Some(cx.span()),
            _ => None,
        }
    }

    /// Adds attributes known only later (the broker's acknowledgement).
    pub(crate) fn annotate(&self, extra: impl FnOnce(&mut SpanAttributes)) {
        let Some(span) = self.recording_span() else {
            return;
        };
        let mut attributes = SpanAttributes::new();
        extra(&mut attributes);
        span.set_attributes(attributes.drain());
    }

    /// Marks the span failed with `error.type`.
    pub(crate) fn fail(&self, error_type: &str) {
        let Some(span) = self.recording_span() else {
            return;
        };
        span.set_attribute(KeyValue::new(semconv::ERROR_TYPE, error_type.to_owned()));
        span.set_status(Status::error(error_type.to_owned()));
    }

    /// Ends the span (once; later calls do nothing).
    pub(crate) fn end(&self) {
        // The clock is read only for a span that records.
        if let Some(span) = self.recording_span() {
            span.end_with_timestamp(SystemTime::now());
        }
    }

    /// Ends the span at `at`.
    pub(crate) fn end_at(&self, at: SystemTime) {
        if let Some(span) = self.recording_span() {
            span.end_with_timestamp(at);
        }
    }
}

/// Broker-specific span attributes, written by adapters without naming OpenTelemetry types.
///
/// Keys are attribute names of the semantic conventions (`messaging.kafka.offset`, …). The
/// layers call the adapters' `extra_attributes` only for spans that are recorded.
///
/// # Example
///
/// ```
/// use eventscope::message::SpanAttributes;
///
/// let mut attributes = SpanAttributes::new();
/// attributes.int("messaging.kafka.offset", 42).string("messaging.kafka.message.key", "k-1");
/// assert_eq!(attributes.len(), 2);
/// ```
#[derive(Default)]
pub struct SpanAttributes {
    /// The first few on the stack: a recording span's attributes move into the span, and a
    /// temporary vector for them would be one more allocation per span.
    values: arrayvec::ArrayVec<KeyValue, 8>,
    more: Vec<KeyValue>,
}

impl fmt::Debug for SpanAttributes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(
                self.values
                    .iter()
                    .chain(&self.more)
                    .map(|kv| (kv.key.as_str(), kv.value.as_str())),
            )
            .finish()
    }
}

impl SpanAttributes {
    /// No attributes yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A text attribute.
    pub fn string(&mut self, key: &'static str, value: impl Into<String>) -> &mut Self {
        self.push(KeyValue::new(key, value.into()))
    }

    /// An integer attribute.
    pub fn int(&mut self, key: &'static str, value: i64) -> &mut Self {
        self.push(KeyValue::new(key, value))
    }

    /// A boolean attribute.
    pub fn bool(&mut self, key: &'static str, value: bool) -> &mut Self {
        self.push(KeyValue::new(key, value))
    }

    /// A text attribute whose value is already an OpenTelemetry string (shared, or static).
    pub(crate) fn value(&mut self, key: &'static str, value: StringValue) -> &mut Self {
        self.push(KeyValue::new(key, value))
    }

    fn push(&mut self, attribute: KeyValue) -> &mut Self {
        if let Err(full) = self.values.try_push(attribute) {
            self.more.push(full.element());
        }
        self
    }

    /// Number of attributes.
    pub fn len(&self) -> usize {
        self.values.len() + self.more.len()
    }

    /// `true` when there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes the attributes out in place (moving the whole list would copy its stack room).
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = KeyValue> + '_ {
        self.values.drain(..).chain(self.more.drain(..))
    }
}

/// `partition` as the text `messaging.destination.partition.id` wants; the first partitions'
/// texts are made once, so a recording span does not allocate one per message.
pub(crate) fn partition_id(partition: i32) -> StringValue {
    static SMALL: std::sync::LazyLock<Vec<String>> =
        std::sync::LazyLock::new(|| (0..256).map(|p: i32| p.to_string()).collect());
    match usize::try_from(partition).ok().and_then(|p| SMALL.get(p)) {
        Some(text) => StringValue::from(text.as_str()),
        None => StringValue::from(itoa::Buffer::new().format(partition).to_owned()),
    }
}

/// Span names (`send orders`) made once and kept for the life of the process, so a recording
/// span's name is not an allocation of its own. Bounded: past [`MAX_KEPT_NAMES`] names (far
/// more than the destination labels the metrics admit) each span formats its own again.
static NAMES: std::sync::Mutex<Option<std::collections::HashSet<&'static str>>> =
    std::sync::Mutex::new(None);
const MAX_KEPT_NAMES: usize = 4096;

/// `{operation} {destination}`, kept (see `NAMES`); `None` once the bound is reached.
fn kept_name(operation: &str, destination: &str) -> Option<&'static str> {
    use crate::sync::Recover;
    let name = format!("{operation} {destination}");
    let mut names = NAMES.locked();
    let names = names.get_or_insert_with(Default::default);
    if let Some(kept) = names.get(name.as_str()) {
        return Some(kept);
    }
    if names.len() >= MAX_KEPT_NAMES {
        return None;
    }
    let kept: &'static str = Box::leak(name.into_boxed_str());
    names.insert(kept);
    Some(kept)
}

/// Where a layer keeps the name of its spans for one destination (in its memoised metric
/// handles): filled on the first recording span.
pub(crate) type NameSlot = std::sync::OnceLock<Option<&'static str>>;

/// What a messaging span starts with.
pub(crate) struct SpanStart<'a> {
    pub(crate) operation: &'static str,
    pub(crate) kind: SpanKind,
    pub(crate) system: &'static str,
    pub(crate) destination: &'a str,
    /// The metric handles' destination label: shared as the attribute value when it is the
    /// destination (not the cardinality bound's `_other`), so no copy is made.
    pub(crate) label: Option<&'a Arc<str>>,
    pub(crate) message_id: Option<&'a str>,
    pub(crate) conversation_id: Option<&'a str>,
    pub(crate) body_size: Option<usize>,
    pub(crate) partition: Option<i32>,
    pub(crate) group: Option<&'a str>,
    /// The metric handles' group label, shared as the attribute value when it is the group.
    pub(crate) group_label: Option<&'a Arc<str>>,
    pub(crate) batch_size: Option<usize>,
    /// The kept name of `{operation} {destination}`, shared by the spans of one destination
    /// label (used only when the label is the destination, not the bound's `_other`).
    pub(crate) name_slot: Option<&'a NameSlot>,
}

impl SpanStart<'_> {
    /// The span's name, `{operation} {destination}`: the kept one when there is one.
    fn name(&self) -> Cow<'static, str> {
        let kept = match (self.name_slot, self.label) {
            (Some(slot), Some(label))
                if crate::text::same(label.as_bytes(), self.destination.as_bytes()) =>
            {
                *slot.get_or_init(|| kept_name(self.operation, self.destination))
            }
            _ => None,
        };
        match kept {
            Some(name) => Cow::Borrowed(name),
            None => Cow::Owned(format!("{} {}", self.operation, self.destination)),
        }
    }

    /// What samplers may look at (SPEC §3).
    fn sampler_attributes(&self) -> Vec<KeyValue> {
        // The SDK keeps this vector as the span's attributes: room for the ones `describe` adds
        // spares a recording span its reallocations, and costs a non-recording one nothing more.
        let mut attributes = Vec::with_capacity(12);
        attributes.push(KeyValue::new(semconv::MESSAGING_SYSTEM, self.system));
        attributes.push(KeyValue::new(
            semconv::MESSAGING_OPERATION_NAME,
            self.operation,
        ));
        attributes.push(KeyValue::new(
            semconv::MESSAGING_OPERATION_TYPE,
            self.operation,
        ));
        attributes.push(KeyValue::new(
            semconv::MESSAGING_DESTINATION_NAME,
            self.destination_value(),
        ));
        attributes
    }

    fn destination_value(&self) -> StringValue {
        label_or_copy(self.label, self.destination)
    }

    fn recording_attributes(&self, attributes: &mut SpanAttributes) {
        if let Some(partition) = self.partition {
            attributes.value(
                semconv::MESSAGING_DESTINATION_PARTITION_ID,
                partition_id(partition),
            );
        }
        if let Some(group) = self.group.filter(|g| !g.is_empty()) {
            attributes.value(
                semconv::MESSAGING_CONSUMER_GROUP_NAME,
                label_or_copy(self.group_label, group),
            );
        }
        match (self.message_id, self.conversation_id) {
            // The first message of a flow: its id is the flow's, one shared copy for both.
            (Some(id), Some(flow)) if crate::text::same(id.as_bytes(), flow.as_bytes()) => {
                let shared = StringValue::from(Arc::<str>::from(id));
                attributes.value(semconv::MESSAGING_MESSAGE_ID, shared.clone());
                attributes.value(semconv::MESSAGING_MESSAGE_CONVERSATION_ID, shared);
            }
            (id, flow) => {
                if let Some(id) = id {
                    attributes.string(semconv::MESSAGING_MESSAGE_ID, id);
                }
                if let Some(flow) = flow {
                    attributes.string(semconv::MESSAGING_MESSAGE_CONVERSATION_ID, flow);
                }
            }
        }
        if let Some(size) = self.body_size {
            attributes.int(semconv::MESSAGING_MESSAGE_BODY_SIZE, size as i64);
        }
        if let Some(count) = self.batch_size {
            attributes.int(semconv::MESSAGING_BATCH_MESSAGE_COUNT, count as i64);
        }
    }
}

/// `text` as an attribute value: the metric label's shared string when the label is `text`
/// (not the cardinality bound's `_other`), else a copy.
fn label_or_copy(label: Option<&Arc<str>>, text: &str) -> StringValue {
    match label {
        Some(label) if crate::text::same(label.as_bytes(), text.as_bytes()) => {
            StringValue::from(Arc::clone(label))
        }
        _ => StringValue::from(text.to_owned()),
    }
}
