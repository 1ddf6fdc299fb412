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

use opentelemetry::propagation::{
    Extractor, Injector, TextMapCompositePropagator, TextMapPropagator,
};
use opentelemetry::trace::{TraceContextExt, TraceState};
use opentelemetry::Context;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};

use crate::message::{Headers, HeadersMut};

/// Header names written and read by eventscope (SPEC §2).
pub mod header {
    /// W3C Trace Context `traceparent`.
    pub const TRACEPARENT: &str = "traceparent";
    /// W3C Trace Context `tracestate`.
    pub const TRACESTATE: &str = "tracestate";
    /// W3C Baggage.
    pub const BAGGAGE: &str = "baggage";
    /// The business flow id.
    pub const CORRELATION_ID: &str = "correlation-id";
    /// The id of the message whose processing caused this one.
    pub const CAUSATION_ID: &str = "causation-id";
    /// A unique message id, for protocols without a native id field.
    pub const MESSAGE_ID: &str = "message-id";
}

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
        self.0.set_header(key, value);
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
/// The default is W3C Trace Context + W3C Baggage. Any [`TextMapPropagator`] can be plugged in.
#[derive(Clone)]
pub struct Propagation {
    propagator: Arc<dyn TextMapPropagator + Send + Sync>,
}

impl fmt::Debug for Propagation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Propagation")
            .field("fields", &self.propagator.fields().collect::<Vec<_>>())
            .finish()
    }
}

impl Default for Propagation {
    fn default() -> Self {
        Self::new(TextMapCompositePropagator::new(vec![
            Box::new(TraceContextPropagator::new()),
            Box::new(BaggagePropagator::new()),
        ]))
    }
}

impl Propagation {
    /// Uses `propagator` instead of W3C Trace Context + Baggage.
    pub fn new(propagator: impl TextMapPropagator + Send + Sync + 'static) -> Self {
        Self {
            propagator: Arc::new(propagator),
        }
    }

    /// Writes `cx` into `headers`, replacing existing headers of the same names.
    pub fn inject<H: HeadersMut + ?Sized>(&self, cx: &Context, headers: &mut H) {
        self.propagator
            .inject_context(cx, &mut HeaderInjector(headers));
    }

    /// Reads the creation context from `headers`. Never fails and never panics.
    pub fn extract<H: Headers + ?Sized>(&self, headers: &H) -> Extracted {
        let mut scan = Scan::default();
        for (name, value) in headers.headers() {
            scan.observe(name, value);
        }
        if scan.invalid {
            return Extracted::rejected();
        }
        let context = self
            .propagator
            .extract_with_context(&Context::new(), &HeaderExtractor(headers));
        if scan.traceparent && !context.span().span_context().is_valid() {
            return Extracted::rejected();
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

/// One pass over the headers that decides whether the trace headers are acceptable at all,
/// before a propagator (which would silently drop what it cannot parse) sees them.
#[derive(Default)]
struct Scan {
    traceparent: bool,
    tracestate: bool,
    baggage_bytes: usize,
    baggage_members: usize,
    invalid: bool,
}

impl Scan {
    fn observe(&mut self, name: &str, value: &[u8]) {
        if name.eq_ignore_ascii_case(header::TRACEPARENT) {
            let duplicate = std::mem::replace(&mut self.traceparent, true);
            self.invalid |= duplicate || value.len() > TRACEPARENT_MAX_BYTES || !value.is_ascii();
        } else if name.eq_ignore_ascii_case(header::TRACESTATE) {
            let duplicate = std::mem::replace(&mut self.tracestate, true);
            self.invalid |= duplicate || !tracestate_ok(value);
        } else if name.eq_ignore_ascii_case(header::BAGGAGE) {
            self.baggage_bytes += value.len();
            self.baggage_members += value.split(|b| *b == b',').count();
            self.invalid |= std::str::from_utf8(value).is_err()
                || self.baggage_bytes > BAGGAGE_MAX_BYTES
                || self.baggage_members > BAGGAGE_MAX_MEMBERS;
        }
    }
}

fn tracestate_ok(value: &[u8]) -> bool {
    if value.len() > TRACESTATE_MAX_BYTES {
        return false;
    }
    let Ok(text) = std::str::from_utf8(value) else {
        return false;
    };
    text.split(',').count() <= TRACESTATE_MAX_MEMBERS && text.parse::<TraceState>().is_ok()
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
