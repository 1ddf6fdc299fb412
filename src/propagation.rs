//! Trace context in message headers: carriers, bounded extraction, injection.
//!
//! Injection is infallible and replaces headers of the same name. Extraction never fails: a
//! missing header gives an empty context, and a malformed, oversized or duplicated one gives an
//! empty context *and* is reported as invalid so the caller can count it.
//!
//! # Example
//!
//! ```
//! use eventscope::message::HeaderList;
//! use eventscope::propagation::Propagation;
//! use opentelemetry::trace::TraceContextExt;
//!
//! let mut headers = HeaderList::new();
//! headers.push("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
//! let extracted = Propagation::default().extract(&headers);
//! assert!(!extracted.invalid);
//! assert!(extracted.context.span().span_context().is_remote());
//!
//! headers.push("traceparent", "garbage");
//! let extracted = Propagation::default().extract(&headers);
//! assert!(extracted.invalid, "duplicate traceparent headers are rejected");
//! ```

use std::fmt;
use std::sync::Arc;

use opentelemetry::baggage::BaggageExt;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::Context;
use opentelemetry_sdk::propagation::BaggagePropagator;

use crate::header::{self, Known};
use crate::hex;
use crate::message::{Headers, HeadersMut};
use crate::span::ActiveSpan;

/// Most `tracestate` list members kept (W3C limit).
pub const TRACESTATE_MAX_MEMBERS: usize = 32;
/// Most `tracestate` bytes kept.
pub const TRACESTATE_MAX_BYTES: usize = 512;
/// Most `baggage` list members accepted.
pub const BAGGAGE_MAX_MEMBERS: usize = 64;
/// Most `baggage` bytes accepted, all `baggage` headers together.
pub const BAGGAGE_MAX_BYTES: usize = 8192;
/// A `traceparent` longer than this is not parsed at all.
const TRACEPARENT_MAX_BYTES: usize = 256;

/// Reads a message's [`Headers`] as an OpenTelemetry [`Extractor`].
///
/// Names match ASCII case-insensitively; values that are not UTF-8 are invisible.
#[derive(Debug)]
pub struct HeaderExtractor<'a, H: ?Sized>(pub &'a H);

impl<H: Headers + ?Sized> Extractor for HeaderExtractor<'_, H> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.header_str(key)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.headers().map(|(name, _)| name).collect()
    }

    fn get_all(&self, key: &str) -> Option<Vec<&str>> {
        let values: Vec<&str> = self
            .0
            .headers()
            .filter(|(name, _)| name.eq_ignore_ascii_case(key))
            .filter_map(|(_, value)| std::str::from_utf8(value).ok())
            .collect();
        (!values.is_empty()).then_some(values)
    }
}

/// Writes into a message's [`HeadersMut`] as an OpenTelemetry [`Injector`], replacing any
/// header of the same name.
#[derive(Debug)]
pub struct HeaderInjector<'a, H: ?Sized>(pub &'a mut H);

impl<H: HeadersMut + ?Sized> Injector for HeaderInjector<'_, H> {
    fn set(&mut self, key: &str, value: String) {
        // The W3C names are the common case: keep them without copying.
        match [header::TRACEPARENT, header::TRACESTATE, header::BAGGAGE]
            .into_iter()
            .find(|known| known.eq_ignore_ascii_case(key))
        {
            Some(known) => self.0.set_static_header(known, &value),
            None => self.0.set_header(key, &value),
        }
    }
}

/// The outcome of [`Propagation::extract`].
#[derive(Debug)]
pub struct Extracted {
    /// The creation context carried by the message, or an empty context.
    pub context: Context,
    /// `true` when trace headers were present but unusable; the context is then empty.
    pub invalid: bool,
}

/// The propagator the layers inject and extract with, plus the header bounds of SPEC §2.
///
/// The default is W3C Trace Context + W3C Baggage, read and written by eventscope's own fast
/// path (no formatting machinery, no allocation beyond the header values). Any
/// [`TextMapPropagator`] can be plugged in instead with [`Propagation::new`].
#[derive(Clone, Default)]
pub struct Propagation {
    custom: Option<Arc<dyn TextMapPropagator + Send + Sync>>,
}

impl fmt::Debug for Propagation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.custom {
            None => f.write_str("Propagation(W3C Trace Context + Baggage)"),
            Some(propagator) => f
                .debug_struct("Propagation")
                .field("fields", &propagator.fields().collect::<Vec<_>>())
                .finish(),
        }
    }
}

impl Propagation {
    /// Uses `propagator` instead of W3C Trace Context + Baggage.
    pub fn new(propagator: impl TextMapPropagator + Send + Sync + 'static) -> Self {
        Self {
            custom: Some(Arc::new(propagator)),
        }
    }

    /// Writes `cx` into `headers`, replacing existing headers of the same names.
    pub fn inject<H: HeadersMut + ?Sized>(&self, cx: &Context, headers: &mut H) {
        if let Some(propagator) = &self.custom {
            propagator.inject_context(cx, &mut HeaderInjector(headers));
            return;
        }
        self.inject_w3c(cx.span().span_context(), cx, headers, false);
    }

    /// [`inject`](Self::inject) for a publish with no span of its own; `fresh` as for
    /// [`inject_span`](Self::inject_span).
    pub(crate) fn inject_current<H: HeadersMut + ?Sized>(
        &self,
        cx: &Context,
        headers: &mut H,
        fresh: bool,
    ) {
        match &self.custom {
            Some(_) => self.inject(cx, headers),
            None => self.inject_w3c(cx.span().span_context(), cx, headers, fresh),
        }
    }

    /// Writes a started span's context, without building an OpenTelemetry `Context` for a span
    /// that does not record. `fresh`: the caller knows there is no `traceparent` or
    /// `tracestate` header yet, so the W3C ones are appended without looking.
    pub(crate) fn inject_span<H: HeadersMut + ?Sized>(
        &self,
        span: &ActiveSpan,
        headers: &mut H,
        fresh: bool,
    ) {
        match (&self.custom, span.built_context()) {
            (Some(_), Some(cx)) => self.inject(cx, headers),
            (Some(_), None) => self.inject(
                &span
                    .parent()
                    .with_remote_span_context(span.span_context().clone()),
                headers,
            ),
            (None, _) => self.inject_w3c(span.span_context(), span.parent(), headers, fresh),
        }
    }

    /// W3C Trace Context from `sc`, W3C Baggage from `baggage`.
    fn inject_w3c<H: HeadersMut + ?Sized>(
        &self,
        sc: &SpanContext,
        baggage: &Context,
        headers: &mut H,
        fresh: bool,
    ) {
        let cx = baggage;
        if sc.is_valid() {
            let parent = traceparent(sc);
            if fresh {
                headers.append_static_header(header::TRACEPARENT, crate::text::ascii(&parent));
            } else {
                headers.set_static_header(header::TRACEPARENT, crate::text::ascii(&parent));
            }
            let state = match sc.trace_state() {
                // The usual case, without building an empty string.
                state if *state == TraceState::NONE => String::new(),
                state => state.header(),
            };
            if state.is_empty() {
                // A stale `tracestate` must not outlive the `traceparent` it belonged to.
                if !fresh {
                    headers.remove_header(header::TRACESTATE);
                }
            } else if fresh {
                headers.append_static_header(header::TRACESTATE, &state);
            } else {
                headers.set_static_header(header::TRACESTATE, &state);
            }
        }
        if !cx.baggage().is_empty() {
            BaggagePropagator::new().inject_context(cx, &mut HeaderInjector(headers));
        }
    }

    /// Whether what [`extract_scanned`](Self::extract_scanned) makes of `scan` can hold
    /// baggage: W3C Baggage only from a `baggage` header; a custom propagator's may always.
    pub(crate) fn may_extract_baggage(&self, scan: &Scan<'_>) -> bool {
        self.custom.is_some() || scan.baggage_members > 0
    }

    /// Reads the creation context from `headers`. Never fails and never panics.
    pub fn extract<H: Headers + ?Sized>(&self, headers: &H) -> Extracted {
        let mut scan = Scan::default();
        for (name, value) in headers.headers() {
            if let Some(known) = Known::of(name) {
                scan.observe(known, value);
            }
        }
        self.extract_scanned(&scan, headers)
    }

    /// [`extract`](Self::extract) from a scan the caller made (with the id headers, in the
    /// same pass).
    #[inline]
    pub(crate) fn extract_scanned<H: Headers + ?Sized>(
        &self,
        scan: &Scan<'_>,
        headers: &H,
    ) -> Extracted {
        if scan.invalid {
            return Extracted::rejected();
        }
        if let Some(propagator) = &self.custom {
            let context =
                propagator.extract_with_context(&Context::new(), &HeaderExtractor(headers));
            if scan.traceparent.is_some() && !context.span().span_context().is_valid() {
                return Extracted::rejected();
            }
            return Extracted {
                context,
                invalid: false,
            };
        }
        let mut context = Context::new();
        if let Some(value) = scan.traceparent {
            let Some(mut sc) = parse_traceparent(value) else {
                return Extracted::rejected();
            };
            if let Some(state) = scan.tracestate {
                // Checked to be UTF-8 and within bounds by the scan.
                match std::str::from_utf8(state)
                    .ok()
                    .and_then(|s| s.parse::<TraceState>().ok())
                {
                    Some(state) => {
                        sc = SpanContext::new(
                            sc.trace_id(),
                            sc.span_id(),
                            sc.trace_flags(),
                            true,
                            state,
                        )
                    }
                    None => return Extracted::rejected(),
                }
            }
            context = context.with_remote_span_context(sc);
        }
        if scan.baggage_members > 0 {
            context =
                BaggagePropagator::new().extract_with_context(&context, &HeaderExtractor(headers));
        }
        Extracted {
            context,
            invalid: false,
        }
    }
}

impl Extracted {
    fn rejected() -> Self {
        Self {
            context: Context::new(),
            invalid: true,
        }
    }
}

/// `00-{trace id}-{span id}-{flags}`, written without the formatting machinery (and without an
/// allocation: the carrier copies it).
fn traceparent(sc: &SpanContext) -> [u8; 55] {
    let mut out = [b'-'; 55];
    out[..2].copy_from_slice(b"00");
    out[3..35].copy_from_slice(&hex::encode_16(sc.trace_id().to_bytes()));
    out[36..52].copy_from_slice(&hex::encode_8(sc.span_id().to_bytes()));
    out[53..55].copy_from_slice(&hex::encode_u8(
        (sc.trace_flags() & TraceFlags::SAMPLED).to_u8(),
    ));
    out
}

/// W3C Trace Context `traceparent`: exactly the version-00 layout, or a later version's with
/// its extra fields ignored. Ids must be lower-case hex and not all zero.
fn parse_traceparent(value: &[u8]) -> Option<SpanContext> {
    // Producers write exactly 55 bytes; only other lengths are trimmed and looked at further.
    let value = match value.len() {
        55 => value,
        _ => value.trim_ascii(),
    };
    let head: &[u8; 55] = value.get(..55)?.try_into().ok()?;
    if head[2] != b'-' || head[35] != b'-' || head[52] != b'-' {
        return None;
    }
    let version = hex::decode_u8([head[0], head[1]])?;
    if version == 0xff || (version == 0 && value.len() != 55) {
        return None;
    }
    if value.len() > 55 && (value[55] != b'-' || !value[55..].is_ascii()) {
        return None;
    }
    // The 48 digits of the ids, sixteen at a time where the target allows (see `hex`).
    let trace = hex::decode_32(head[3..35].try_into().ok()?)?;
    let span = hex::decode_16(head[36..52].try_into().ok()?)?;
    let flags = hex::decode_u8([head[53], head[54]])?;
    let sc = SpanContext::new(
        TraceId::from_bytes(trace),
        SpanId::from_bytes(span),
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
        true,
        TraceState::NONE,
    );
    sc.is_valid().then_some(sc)
}

/// One pass over the headers that finds the trace headers and decides whether they are
/// acceptable at all (SPEC §2 bounds), before anything parses them.
#[derive(Default)]
pub(crate) struct Scan<'a> {
    traceparent: Option<&'a [u8]>,
    tracestate: Option<&'a [u8]>,
    baggage_bytes: usize,
    baggage_members: usize,
    invalid: bool,
}

impl<'a> Scan<'a> {
    /// Takes in one header; id headers are not its business and are ignored.
    pub(crate) fn observe(&mut self, known: Known, value: &'a [u8]) {
        match known {
            Known::Traceparent => {
                // Parsing rejects anything but hex digits and dashes, so no UTF-8 check here.
                let duplicate = self.traceparent.replace(value).is_some();
                self.invalid |= duplicate || value.len() > TRACEPARENT_MAX_BYTES;
            }
            Known::Tracestate => {
                let duplicate = self.tracestate.replace(value).is_some();
                self.invalid |= duplicate || !tracestate_ok(value);
            }
            Known::Baggage => {
                self.baggage_bytes = self.baggage_bytes.saturating_add(value.len());
                // The byte bound first: an oversized header costs nothing beyond its length.
                if self.baggage_bytes > BAGGAGE_MAX_BYTES {
                    self.invalid = true;
                    return;
                }
                self.baggage_members += value.iter().filter(|b| **b == b',').count() + 1;
                self.invalid |= self.baggage_members > BAGGAGE_MAX_MEMBERS
                    || std::str::from_utf8(value).is_err();
            }
            Known::CorrelationId | Known::CausationId | Known::MessageId => {}
        }
    }
}

fn tracestate_ok(value: &[u8]) -> bool {
    value.len() <= TRACESTATE_MAX_BYTES
        && std::str::from_utf8(value).is_ok()
        && value.iter().filter(|b| **b == b',').count() < TRACESTATE_MAX_MEMBERS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::HeaderList;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn extract(pairs: &[(&str, &[u8])]) -> Extracted {
        let mut headers = HeaderList::new();
        for (name, value) in pairs {
            headers.push_bytes(*name, value.to_vec());
        }
        Propagation::default().extract(&headers)
    }

    #[test]
    fn traceparent_round_trips_through_the_fast_path() {
        let sc = parse_traceparent(PARENT.as_bytes()).expect("valid");
        assert_eq!(crate::text::ascii(&traceparent(&sc)), PARENT);
        let unsampled = PARENT.replace("-01", "-00");
        let sc = parse_traceparent(unsampled.as_bytes()).expect("valid");
        assert!(!sc.is_sampled());
        assert_eq!(crate::text::ascii(&traceparent(&sc)), unsampled);
        // A later version's extra fields are ignored, but must be ASCII.
        assert!(parse_traceparent(format!("01{}-x", &PARENT[2..]).as_bytes()).is_some());
        assert!(parse_traceparent(format!("01{}-\u{e9}", &PARENT[2..]).as_bytes()).is_none());
    }

    #[test]
    fn valid_parent_is_remote_and_sampled() {
        let out = extract(&[("TraceParent", PARENT.as_bytes())]);
        assert!(!out.invalid);
        let span = out.context.span();
        let sc = span.span_context();
        assert!(sc.is_remote() && sc.is_sampled());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }

    #[test]
    fn missing_headers_are_not_invalid() {
        let out = extract(&[("content-type", b"json")]);
        assert!(!out.invalid);
        assert!(!out.context.span().span_context().is_valid());
    }

    #[test]
    fn rejects_bad_version_zero_ids_non_utf8_and_duplicates() {
        for bad in [
            &b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"[..],
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"\xff\xfe",
            b"",
        ] {
            let out = extract(&[("traceparent", bad)]);
            assert!(out.invalid, "{:?}", String::from_utf8_lossy(bad));
            assert!(!out.context.span().span_context().is_valid());
        }
        let dup = extract(&[
            ("traceparent", PARENT.as_bytes()),
            ("traceparent", PARENT.as_bytes()),
        ]);
        assert!(dup.invalid);
    }

    #[test]
    fn enforces_tracestate_and_baggage_bounds() {
        let members: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        let state = members.join(",");
        assert!(
            extract(&[
                ("traceparent", PARENT.as_bytes()),
                ("tracestate", state.as_bytes())
            ])
            .invalid
        );
        let ok_state = members[..32].join(",");
        assert!(
            !extract(&[
                ("traceparent", PARENT.as_bytes()),
                ("tracestate", ok_state.as_bytes())
            ])
            .invalid
        );

        let big = format!("k={}", "v".repeat(BAGGAGE_MAX_BYTES));
        assert!(extract(&[("baggage", big.as_bytes())]).invalid);
        // Several baggage headers count together.
        let half = format!("k={}", "v".repeat(BAGGAGE_MAX_BYTES / 2));
        assert!(extract(&[("baggage", half.as_bytes()), ("baggage", half.as_bytes())]).invalid);
        assert!(!extract(&[("baggage", b"a=1"), ("baggage", b"b=2")]).invalid);
    }

    #[test]
    fn inject_replaces_instead_of_appending() {
        let incoming = extract(&[("traceparent", PARENT.as_bytes())]).context;
        let mut headers = HeaderList::new();
        headers.push(
            "TRACEPARENT",
            "00-11111111111111111111111111111111-2222222222222222-01",
        );
        Propagation::default().inject(&incoming, &mut headers);
        let values: Vec<_> = headers
            .headers()
            .filter(|(n, _)| n.eq_ignore_ascii_case("traceparent"))
            .collect();
        assert_eq!(values.len(), 1);
        assert_eq!(values[0].1, PARENT.as_bytes());
    }
}
