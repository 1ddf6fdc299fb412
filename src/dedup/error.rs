//! The failures the idempotency layer adds to a handler's own.
//!
//! Both ask for the same thing: try this message again later. A consumer's classifier names
//! them by [`DedupError::error_type`] and maps them to a retry, so the message is settled only
//! once the store answers (SPEC §7, §8).

use std::fmt;

use crate::BoxError;

/// `error.type` of a message whose dedup store could not be reached.
pub const UNAVAILABLE: &str = "dedup_unavailable";

/// `error.type` of a message whose id is being processed by another delivery right now.
pub const IN_FLIGHT: &str = "dedup_in_flight";

/// Why the idempotency layer did not run the handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DedupErrorKind {
    /// The store failed or timed out; the layer fails closed (the default), so the message was
    /// not processed and is to be retried.
    Unavailable,
    /// Another delivery of the same id holds the claim (a concurrent duplicate, as after a
    /// rebalance or on two partitions); retried later, it finds the id done or free.
    InFlight,
}

impl DedupErrorKind {
    /// The `error.type` value: [`UNAVAILABLE`] or [`IN_FLIGHT`].
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Unavailable => UNAVAILABLE,
            Self::InFlight => IN_FLIGHT,
        }
    }
}

/// A failure of the idempotency layer itself (a handler's own errors pass through unchanged).
#[derive(Debug)]
pub struct DedupError {
    kind: DedupErrorKind,
    id: Box<str>,
    source: Option<StoreError>,
}

impl DedupError {
    pub(crate) fn unavailable(id: &str, source: StoreError) -> Self {
        Self {
            kind: DedupErrorKind::Unavailable,
            id: id.into(),
            source: Some(source),
        }
    }

    pub(crate) fn in_flight(id: &str) -> Self {
        Self {
            kind: DedupErrorKind::InFlight,
            id: id.into(),
            source: None,
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> DedupErrorKind {
        self.kind
    }

    /// The `error.type` of this failure (SPEC §3): `dedup_unavailable` or `dedup_in_flight`.
    /// Both are transient: map them to a retry.
    pub fn error_type(&self) -> &'static str {
        self.kind.as_str()
    }

    /// The message id the layer deduplicates on.
    pub fn message_id(&self) -> &str {
        &self.id
    }
}

impl fmt::Display for DedupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.kind, &self.source) {
            (DedupErrorKind::Unavailable, Some(source)) => write!(
                f,
                "dedup store unavailable for message {}: {source}",
                self.id
            ),
            (DedupErrorKind::Unavailable, None) => {
                write!(f, "dedup store unavailable for message {}", self.id)
            }
            (DedupErrorKind::InFlight, _) => write!(
                f,
                "message {} is being processed by another delivery",
                self.id
            ),
        }
    }
}

impl std::error::Error for DedupError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// A dedup store could not answer: a connection error, a timeout, an unexpected reply.
#[derive(Debug)]
pub struct StoreError {
    source: BoxError,
}

impl StoreError {
    /// Wraps the store client's error.
    pub fn new(source: impl Into<BoxError>) -> Self {
        Self {
            source: source.into(),
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.source, f)
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}
