//! Errors of the NATS adapter: a publish that failed, a pull consumer that cannot be driven.
//!
//! # Example
//!
//! ```
//! use eventscope::nats::error::{PublishError, PublishErrorKind};
//!
//! // `error.type` of a failed publish is its kind (`TimedOut`, `StreamNotFound`, ...).
//! let layer = eventscope::nats::publish_layer(eventscope::Metrics::new());
//! # let _ = layer;
//! assert_eq!(PublishErrorKind::TimedOut.as_str(), "TimedOut");
//! ```

use std::borrow::Cow;
use std::fmt;

use crate::classify::ClassifyError;
use crate::BoxError;

/// What kind of failure a [`PublishError`] is: its `error.type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PublishErrorKind {
    /// Headers and payload together are larger than the server's `max_payload`.
    MaxPayloadExceeded,
    /// The subject is not a valid NATS subject.
    InvalidSubject,
    /// A header name is not visible ASCII without `:`, or a value holds CR, LF or bytes that
    /// are not UTF-8: NATS cannot carry it. Nothing was sent.
    InvalidHeader,
    /// The client could not take the message: its connection is closed for good (it gave up
    /// reconnecting, or was drained).
    Send,
    /// Core NATS: the client could not write its buffer to the server.
    Flush,
    /// JetStream: no stream captures the subject (the server answered "no responders").
    StreamNotFound,
    /// JetStream: no acknowledgement within the context's timeout. **The message may still be
    /// stored**: a publish made while the connection is down is buffered and sent once the
    /// client reconnects. Publish it again with the same `Nats-Msg-Id` (see
    /// [`NatsRecord::id`](super::NatsRecord::id)) and the server keeps one copy.
    TimedOut,
    /// JetStream: `Nats-Expected-Last-Sequence` did not hold.
    WrongLastSequence,
    /// JetStream: `Nats-Expected-Last-Msg-Id` did not hold.
    WrongLastMessageId,
    /// JetStream: the context's limit of acknowledgements in flight was reached and it does not
    /// wait for room (`backpressure_on_inflight(false)`).
    MaxAckPending,
    /// JetStream: the connection broke while the acknowledgement was awaited.
    BrokenPipe,
    /// Anything else the server or client reported (e.g. `Nats-Expected-Stream` did not hold).
    Other,
}

impl PublishErrorKind {
    /// The kind's name, used as `error.type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MaxPayloadExceeded => "MaxPayloadExceeded",
            Self::InvalidSubject => "InvalidSubject",
            Self::InvalidHeader => "InvalidHeader",
            Self::Send => "Send",
            Self::Flush => "Flush",
            Self::StreamNotFound => "StreamNotFound",
            Self::TimedOut => "TimedOut",
            Self::WrongLastSequence => "WrongLastSequence",
            Self::WrongLastMessageId => "WrongLastMessageId",
            Self::MaxAckPending => "MaxAckPending",
            Self::BrokenPipe => "BrokenPipe",
            Self::Other => crate::classify::OTHER,
        }
    }
}

impl fmt::Display for PublishErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a NATS or JetStream publish failed; its [`kind`](Self::kind) is a short,
/// low-cardinality name, the `error.type` under [`NatsErrorClassifier`] (which
/// [`publish_layer`](super::publish_layer) uses).
#[derive(Debug)]
pub struct PublishError {
    kind: PublishErrorKind,
    source: Option<BoxError>,
}

impl PublishError {
    pub(crate) fn new(kind: PublishErrorKind, source: impl Into<BoxError>) -> Self {
        Self {
            kind,
            source: Some(source.into()),
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> PublishErrorKind {
        self.kind
    }

    /// The kind's name, as `error.type`.
    pub fn error_type(&self) -> &'static str {
        self.kind.as_str()
    }

    /// A core publish that failed.
    pub(crate) fn core(error: async_nats::PublishError) -> Self {
        use async_nats::client::PublishErrorKind as Core;
        let kind = match error.kind() {
            Core::MaxPayloadExceeded => PublishErrorKind::MaxPayloadExceeded,
            Core::InvalidSubject => PublishErrorKind::InvalidSubject,
            Core::Send => PublishErrorKind::Send,
        };
        Self::new(kind, error)
    }

    /// A JetStream publish that failed.
    pub(crate) fn jetstream(error: async_nats::jetstream::context::PublishError) -> Self {
        use async_nats::jetstream::context::PublishErrorKind as Js;
        let kind = match error.kind() {
            Js::StreamNotFound => PublishErrorKind::StreamNotFound,
            Js::WrongLastMessageId => PublishErrorKind::WrongLastMessageId,
            Js::WrongLastSequence => PublishErrorKind::WrongLastSequence,
            Js::TimedOut => PublishErrorKind::TimedOut,
            Js::BrokenPipe => PublishErrorKind::BrokenPipe,
            Js::MaxAckPending => PublishErrorKind::MaxAckPending,
            Js::MaxPayloadExceeded => PublishErrorKind::MaxPayloadExceeded,
            // The server's error, e.g. an expected stream that did not match.
            Js::Other => PublishErrorKind::Other,
        };
        Self::new(kind, error)
    }
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(source) => write!(f, "nats publish failed ({}): {source}", self.kind),
            None => write!(f, "nats publish failed ({})", self.kind),
        }
    }
}

impl std::error::Error for PublishError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Names [`PublishError`]s by their [`kind`](PublishError::kind).
#[derive(Clone, Copy, Debug, Default)]
pub struct NatsErrorClassifier;

impl ClassifyError<PublishError> for NatsErrorClassifier {
    fn classify(&self, error: &PublishError) -> Cow<'static, str> {
        Cow::Borrowed(error.error_type())
    }
}

/// Why `JetStreamConsumer::new` refused a pull consumer (see [`JetStreamConsumer`](crate::nats::JetStreamConsumer)).
#[derive(Debug)]
#[non_exhaustive]
pub enum ConfigError {
    /// The consumer's ack policy is not `explicit`: with `none` the server forgets a message as
    /// soon as it is delivered, with `all` an ack settles every earlier message too, so a
    /// message still being processed (or failed) would count as done.
    AckPolicy(String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AckPolicy(policy) => write!(
                f,
                "the pull consumer must use AckPolicy::Explicit (it has {policy}): otherwise \
                 messages count as done before they are processed"
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_type_is_the_kind() {
        let e = PublishError::new(PublishErrorKind::TimedOut, "no ack");
        assert_eq!(NatsErrorClassifier.classify(&e), "TimedOut");
        assert_eq!(
            PublishErrorKind::Other.as_str(),
            crate::classify::OTHER,
            "semconv's fallback"
        );
        assert!(e.to_string().contains("TimedOut"));
    }
}
