//! Span capture: a tracer provider exporting to memory, and a snapshot of what it captured
//! that answers the questions a test asks of a trace.

use std::collections::{BTreeMap, HashSet};
use std::fmt::{self, Write as _};
use std::time::SystemTime;

use opentelemetry::trace::{self as otel, SpanId, TraceId, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use opentelemetry_semantic_conventions::attribute as semconv;

/// Captures the spans of the layers and consumers given its [`provider`](Self::provider), in
/// memory, for a test to assert on.
///
/// Pass `capture.provider()` to `tracer_provider(..)` of each publish layer and consumer under
/// test; take a snapshot with [`spans`](Self::spans). Nothing global is installed, so tests
/// running side by side do not see each other's spans. Clones share the capture.
#[derive(Clone, Debug)]
pub struct SpanCapture {
    provider: SdkTracerProvider,
    exporter: InMemorySpanExporter,
}

impl Default for SpanCapture {
    fn default() -> Self {
        Self::new()
    }
}

impl SpanCapture {
    /// An empty capture, with the SDK's default sampler (every span is recorded, unless its
    /// parent was not sampled: a `traceparent` with flags `00`). A span is exported the moment
    /// it ends.
    pub fn new() -> Self {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        Self { provider, exporter }
    }

    /// The tracer provider to give the layers and consumers under test:
    /// `.tracer_provider(capture.provider())`.
    pub fn provider(&self) -> &SdkTracerProvider {
        &self.provider
    }

    /// The spans that have ended so far (a span still open, such as the `process` span of a
    /// handler that is still running, is not in it yet).
    pub fn spans(&self) -> Spans {
        // The simple exporter exports as each span ends; flushing costs nothing and keeps this
        // right should the pipeline ever batch.
        let _ = self.provider.force_flush();
        let mut spans = self.exporter.get_finished_spans().unwrap_or_default();
        spans.sort_by_key(|s| (s.start_time, s.end_time));
        Spans { spans }
    }

    /// Forgets the spans captured so far.
    pub fn clear(&self) {
        self.exporter.reset();
    }

    /// Also captures the `tracing` spans of the current thread (your handler's `#[instrument]`
    /// spans, an ambient span around a call) until the guard is dropped: a
    /// `tracing-opentelemetry` layer over this capture becomes the thread's default subscriber.
    ///
    /// Tasks see it only while they run on this thread: use a current-thread runtime
    /// (`#[tokio::test]`'s default) when handlers have `tracing` spans of their own.
    #[must_use = "the `tracing` spans are captured only while the guard lives"]
    pub fn set_tracing_default(&self) -> TracingGuard {
        use tracing_subscriber::layer::SubscriberExt as _;
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(self.provider.tracer("tracing")));
        TracingGuard {
            _guard: tracing::subscriber::set_default(subscriber),
        }
    }
}

/// Keeps [`SpanCapture::set_tracing_default`] in force; dropping it restores the thread's
/// previous subscriber.
pub struct TracingGuard {
    _guard: tracing::subscriber::DefaultGuard,
}

impl fmt::Debug for TracingGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TracingGuard").finish_non_exhaustive()
    }
}

/// The spans a [`SpanCapture`] held at one moment, in the order they started.
///
/// Its `Display` is the captured traces as trees, as the README draws them; every assertion
/// here prints it when it fails.
#[derive(Clone, Debug)]
pub struct Spans {
    spans: Vec<SpanData>,
}

impl Spans {
    /// How many spans there are.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether no span was captured.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Every span, in the order they started.
    pub fn iter(&self) -> impl Iterator<Item = CapturedSpan<'_>> + '_ {
        self.spans
            .iter()
            .map(move |data| CapturedSpan { data, all: self })
    }

    /// The spans named `name` (`"process orders"`), in the order they started.
    pub fn named<'a>(&'a self, name: &str) -> Vec<CapturedSpan<'a>> {
        self.iter().filter(|s| s.name() == name).collect()
    }

    /// The one span named `name`.
    ///
    /// # Panics
    ///
    /// When there is none or more than one, printing the captured traces.
    #[track_caller]
    pub fn one(&self, name: &str) -> CapturedSpan<'_> {
        let found = self.named(name);
        match found.as_slice() {
            [one] => *one,
            _ => panic!(
                "expected one span `{name}`, found {}; captured:\n{self}",
                found.len()
            ),
        }
    }

    /// Asserts that one trace holds the chain `names[0]` → `names[1]` → …, each span the
    /// parent of the next (`["send orders", "process orders", "send payments"]`), and returns
    /// its spans. Other spans may sit beside the chain; when several chains match, the first
    /// to start is returned.
    ///
    /// # Panics
    ///
    /// When no such chain was captured, naming the longest part that was, and printing the
    /// captured traces.
    #[track_caller]
    pub fn assert_chain<const N: usize>(&self, names: [&str; N]) -> [CapturedSpan<'_>; N] {
        let mut longest: Vec<CapturedSpan<'_>> = Vec::new();
        for first in self.named(names.first().copied().unwrap_or_default()) {
            let mut chain = vec![first];
            if self.extend(&mut chain, &names, &mut longest) {
                return chain
                    .try_into()
                    .unwrap_or_else(|_| unreachable!("a full chain has N spans"));
            }
        }
        let found = if longest.is_empty() {
            format!("no span `{}`", names.first().copied().unwrap_or_default())
        } else {
            format!(
                "only {} (`{}` has no child `{}`)",
                arrows(longest.iter().map(CapturedSpan::name)),
                longest[longest.len() - 1].name(),
                names[longest.len()]
            )
        };
        panic!(
            "expected the chain {}, found {found}; captured:\n{self}",
            arrows(names.iter().copied())
        );
    }

    /// Depth-first: extends `chain` to the full `names`, remembering the longest partial one.
    fn extend<'a>(
        &'a self,
        chain: &mut Vec<CapturedSpan<'a>>,
        names: &[&str],
        longest: &mut Vec<CapturedSpan<'a>>,
    ) -> bool {
        if chain.len() > longest.len() {
            *longest = chain.clone();
        }
        let Some(next) = names.get(chain.len()) else {
            return true;
        };
        let last = chain[chain.len() - 1];
        for child in last.children() {
            if child.name() == *next {
                chain.push(child);
                if self.extend(chain, names, longest) {
                    return true;
                }
                chain.pop();
            }
        }
        false
    }

    fn by_id(&self, trace: TraceId, span: SpanId) -> Option<CapturedSpan<'_>> {
        self.iter().find(|s| {
            s.data.span_context.trace_id() == trace && s.data.span_context.span_id() == span
        })
    }
}

fn arrows<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(" → ")
}

/// The captured traces as trees: each trace's spans under their parents, in the order they
/// started, with their kind, `error.type`, error status and links.
impl fmt::Display for Spans {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.spans.is_empty() {
            return f.write_str("(no spans captured)\n");
        }
        // Traces in the order their first span started.
        let mut traces: BTreeMap<(SystemTime, usize), TraceId> = BTreeMap::new();
        let mut seen = HashSet::new();
        for (i, span) in self.spans.iter().enumerate() {
            let trace = span.span_context.trace_id();
            if seen.insert(trace) {
                traces.insert((span.start_time, i), trace);
            }
        }
        for trace in traces.into_values() {
            writeln!(f, "trace {trace}")?;
            // Roots, and spans whose parent was not captured (a remote or unended parent).
            let tops: Vec<_> = self
                .iter()
                .filter(|s| s.trace() == trace && s.parent().is_none())
                .collect();
            for (i, top) in tops.iter().enumerate() {
                top.write_tree(f, "", i + 1 == tops.len())?;
            }
        }
        Ok(())
    }
}

/// One captured span, borrowed from its [`Spans`] (which lets it find its parent, children and
/// link targets). Two are equal when they are the same span.
#[derive(Clone, Copy)]
pub struct CapturedSpan<'a> {
    data: &'a SpanData,
    all: &'a Spans,
}

impl PartialEq for CapturedSpan<'_> {
    fn eq(&self, other: &Self) -> bool {
        same_span(&self.data.span_context, &other.data.span_context)
    }
}

impl Eq for CapturedSpan<'_> {}

impl fmt::Debug for CapturedSpan<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CapturedSpan(`{}` {})", self.name(), self.span_id())
    }
}

impl<'a> CapturedSpan<'a> {
    /// The span's name (`"send orders"`).
    pub fn name(&self) -> &'a str {
        &self.data.name
    }

    /// The span's kind.
    pub fn kind(&self) -> SpanKind {
        match self.data.span_kind {
            otel::SpanKind::Producer => SpanKind::Producer,
            otel::SpanKind::Consumer => SpanKind::Consumer,
            otel::SpanKind::Client => SpanKind::Client,
            otel::SpanKind::Server => SpanKind::Server,
            otel::SpanKind::Internal => SpanKind::Internal,
        }
    }

    /// An attribute's value as text (numbers and booleans in their usual form), `None` when
    /// the span does not have it.
    pub fn attribute(&self, key: &str) -> Option<String> {
        attribute(&self.data.attributes, key)
    }

    /// Every attribute, as text, in the order they were set.
    pub fn attributes(&self) -> Vec<(&'a str, String)> {
        self.data
            .attributes
            .iter()
            .map(|kv| (kv.key.as_str(), kv.value.to_string()))
            .collect()
    }

    /// Asserts that the span has the attribute `key` with the value `expected` (compared as
    /// text: `assert_attribute("eventscope.delivery_attempt", 2)`).
    ///
    /// # Panics
    ///
    /// When it has another value or none, printing its attributes and the captured traces.
    #[track_caller]
    pub fn assert_attribute(&self, key: &str, expected: impl fmt::Display) {
        let expected = expected.to_string();
        let actual = self.attribute(key);
        if actual.as_deref() != Some(expected.as_str()) {
            let attributes: Vec<String> = self
                .attributes()
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            panic!(
                "span `{}` ({}): expected {key}={expected:?}, found {}; its attributes: {}; captured:\n{}",
                self.name(),
                self.span_id(),
                actual.map_or_else(|| "none".to_owned(), |v| format!("{v:?}")),
                attributes.join(", "),
                self.all
            );
        }
    }

    /// Whether the span ended with an error status (a failed handler or publish).
    pub fn is_error(&self) -> bool {
        matches!(self.data.status, otel::Status::Error { .. })
    }

    /// The span's id, as in `traceparent` (16 lowercase hex digits).
    pub fn span_id(&self) -> String {
        self.data.span_context.span_id().to_string()
    }

    /// The id of the span's trace, as in `traceparent` (32 lowercase hex digits).
    pub fn trace_id(&self) -> String {
        self.trace().to_string()
    }

    /// Whether the span has no parent at all: it began a trace.
    pub fn is_root(&self) -> bool {
        self.data.parent_span_id == SpanId::INVALID
    }

    /// The span's parent, when it was captured.
    pub fn parent(&self) -> Option<CapturedSpan<'a>> {
        if self.is_root() {
            return None;
        }
        self.all.by_id(self.trace(), self.data.parent_span_id)
    }

    /// The captured spans whose parent this span is, in the order they started.
    pub fn children(&self) -> Vec<CapturedSpan<'a>> {
        let (trace, id) = (self.trace(), self.data.span_context.span_id());
        self.all
            .iter()
            .filter(|s| s.trace() == trace && s.data.parent_span_id == id)
            .collect()
    }

    /// The span's links (a process span links to its message's creation context).
    pub fn links(&self) -> Vec<CapturedLink<'a>> {
        let all = self.all;
        self.data
            .links
            .iter()
            .map(|link| CapturedLink { link, all })
            .collect()
    }

    /// Whether one of the span's links points to `other`.
    pub fn links_to(&self, other: &CapturedSpan<'_>) -> bool {
        self.data
            .links
            .iter()
            .any(|l| same_span(&l.span_context, &other.data.span_context))
    }

    fn trace(&self) -> TraceId {
        self.data.span_context.trace_id()
    }

    fn write_tree(&self, f: &mut fmt::Formatter<'_>, indent: &str, last: bool) -> fmt::Result {
        let branch = if last { "└─ " } else { "├─ " };
        write!(f, "{indent}{branch}{}  {}", self.name(), self.kind())?;
        if let Some(error) = self.attribute(semconv::ERROR_TYPE) {
            write!(f, "  error.type={error}")?;
        }
        if self.is_error() {
            f.write_str("  (error)")?;
        }
        let links = self.links();
        if !links.is_empty() {
            let targets: Vec<String> = links
                .iter()
                .map(|l| match l.target() {
                    Some(t) if t.trace() == self.trace() => format!("`{}`", t.name()),
                    Some(t) => format!("`{}` in trace {}", t.name(), t.trace()),
                    None => format!("span {} (not captured)", l.span_id()),
                })
                .collect();
            write!(f, "  links: {}", targets.join(", "))?;
        }
        if !self.is_root() && self.parent().is_none() {
            write!(f, "  (parent {} not captured)", self.data.parent_span_id)?;
        }
        f.write_char('\n')?;
        let indent = format!("{indent}{}", if last { "   " } else { "│  " });
        let children = self.children();
        for (i, child) in children.iter().enumerate() {
            child.write_tree(f, &indent, i + 1 == children.len())?;
        }
        Ok(())
    }
}

/// A link of a [`CapturedSpan`]: the span it points to, and its own attributes (a batch's
/// process span has one per message, with that message's attributes).
#[derive(Clone, Copy)]
pub struct CapturedLink<'a> {
    link: &'a otel::Link,
    all: &'a Spans,
}

impl fmt::Debug for CapturedLink<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CapturedLink(to {})", self.span_id())
    }
}

impl<'a> CapturedLink<'a> {
    /// The span the link points to, when it was captured.
    pub fn target(&self) -> Option<CapturedSpan<'a>> {
        let context = &self.link.span_context;
        self.all.by_id(context.trace_id(), context.span_id())
    }

    /// The id of the span it points to.
    pub fn span_id(&self) -> String {
        self.link.span_context.span_id().to_string()
    }

    /// The trace of the span it points to.
    pub fn trace_id(&self) -> String {
        self.link.span_context.trace_id().to_string()
    }

    /// An attribute of the link, as text.
    pub fn attribute(&self, key: &str) -> Option<String> {
        attribute(&self.link.attributes, key)
    }
}

/// The same span, whether seen from inside (exported) or from a message (a remote context).
fn same_span(a: &otel::SpanContext, b: &otel::SpanContext) -> bool {
    a.trace_id() == b.trace_id() && a.span_id() == b.span_id()
}

fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

/// The kind of a captured span (SPEC §3: `send` is a producer, `process` a consumer, `settle`
/// a client).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SpanKind {
    /// Publishes a message.
    Producer,
    /// Processes a message.
    Consumer,
    /// A call to a remote service (a settle).
    Client,
    /// Serves a remote call.
    Server,
    /// In-process work (a `tracing` span).
    Internal,
}

impl fmt::Display for SpanKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Producer => "producer",
            Self::Consumer => "consumer",
            Self::Client => "client",
            Self::Server => "server",
            Self::Internal => "internal",
        })
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{Span as _, TraceContextExt as _, Tracer as _};
    use opentelemetry::{Context, KeyValue};

    use super::*;

    /// `send orders` → `process orders` (declined, linked to the send) → `send payments`, and
    /// a lone `send audit`.
    fn captured() -> SpanCapture {
        let capture = SpanCapture::new();
        let tracer = capture.provider().tracer("test");
        let send = tracer
            .span_builder("send orders")
            .with_kind(otel::SpanKind::Producer)
            .start(&tracer);
        let send_context = send.span_context().clone();
        let parent = Context::new().with_remote_span_context(send_context.clone());
        let mut process = tracer
            .span_builder("process orders")
            .with_kind(otel::SpanKind::Consumer)
            .with_links(vec![otel::Link::with_context(send_context)])
            .with_attributes([KeyValue::new(semconv::ERROR_TYPE, "Declined")])
            .start_with_context(&tracer, &parent);
        process.set_status(otel::Status::error("declined"));
        let inside = Context::new().with_span(process);
        tracer
            .span_builder("send payments")
            .with_kind(otel::SpanKind::Producer)
            .with_attributes([KeyValue::new("eventscope.delivery_attempt", 2_i64)])
            .start_with_context(&tracer, &inside)
            .end();
        inside.span().end();
        let mut send = send;
        send.end();
        tracer.start("send audit").end();
        capture
    }

    #[test]
    fn a_chain_is_found_across_a_remote_parent_and_its_spans_answer() {
        let spans = captured().spans();
        let [send, process, follow_up] =
            spans.assert_chain(["send orders", "process orders", "send payments"]);
        assert!(send.is_root());
        assert_eq!(process.parent(), Some(send));
        assert_eq!(send.children(), vec![process]);
        assert!(process.links_to(&send), "a link holds the remote context");
        assert_eq!(process.links()[0].target(), Some(send));
        assert_eq!(process.kind(), SpanKind::Consumer);
        assert!(process.is_error() && !send.is_error());
        process.assert_attribute(semconv::ERROR_TYPE, "Declined");
        follow_up.assert_attribute("eventscope.delivery_attempt", 2);
        assert_eq!(follow_up.trace_id(), send.trace_id());
        assert_ne!(spans.one("send audit").trace_id(), send.trace_id());
        assert_eq!(spans.len(), 4);
    }

    #[test]
    fn the_display_draws_each_trace_as_a_tree() {
        let tree = captured().spans().to_string();
        let lines: Vec<&str> = tree.lines().filter(|l| !l.starts_with("trace ")).collect();
        assert_eq!(
            lines,
            [
                "└─ send orders  producer",
                "   └─ process orders  consumer  error.type=Declined  (error)  links: `send orders`",
                "      └─ send payments  producer",
                "└─ send audit  internal",
            ],
            "{tree}"
        );
        assert_eq!(tree.lines().filter(|l| l.starts_with("trace ")).count(), 2);
    }

    #[test]
    #[should_panic(
        expected = "expected the chain `send orders` → `process orders` → `send refunds`, found only `send orders` → `process orders` (`process orders` has no child `send refunds`); captured:\ntrace "
    )]
    fn a_missing_link_of_a_chain_is_named() {
        captured()
            .spans()
            .assert_chain(["send orders", "process orders", "send refunds"]);
    }

    #[test]
    #[should_panic(expected = "expected one span `process refunds`, found 0; captured:\ntrace ")]
    fn one_prints_what_was_captured() {
        captured().spans().one("process refunds");
    }

    #[test]
    #[should_panic(
        expected = "expected error.type=\"Timeout\", found \"Declined\"; its attributes: error.type=Declined; captured:"
    )]
    fn a_wrong_attribute_prints_the_span_and_the_traces() {
        captured()
            .spans()
            .one("process orders")
            .assert_attribute(semconv::ERROR_TYPE, "Timeout");
    }

    #[test]
    fn clear_forgets_and_tracing_spans_are_captured_while_the_guard_lives() {
        let capture = captured();
        capture.clear();
        assert!(capture.spans().is_empty());
        assert_eq!(capture.spans().to_string(), "(no spans captured)\n");
        {
            let _guard = capture.set_tracing_default();
            tracing::info_span!("poll loop").in_scope(|| {
                tracing::info_span!("handle").in_scope(|| {});
            });
        }
        tracing::info_span!("not captured").in_scope(|| {});
        let spans = capture.spans();
        spans.assert_chain(["poll loop", "handle"]);
        assert_eq!(spans.len(), 2, "{spans}");
    }
}
