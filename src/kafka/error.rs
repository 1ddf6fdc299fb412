//! Errors of the Kafka publisher.
//!
//! # Example
//!
//! ```
//! use eventscope::kafka::KafkaErrorClassifier;
//! use eventscope::metrics::Metrics;
//! use eventscope::publish::PublishLayer;
//!
//! // `error.type` becomes `MessageTimedOut`, `MessageSizeTooLarge`, … instead of the type name.
//! let layer = PublishLayer::new(Metrics::new()).classify_errors(KafkaErrorClassifier);
//! # let _ = layer;
//! ```

use std::borrow::Cow;
use std::fmt;

use rdkafka::error::KafkaError;

use crate::classify::ClassifyError;

/// Why a record was not delivered.
///
/// Its [`error_type`](Self::error_type) is the librdkafka error code (`MessageTimedOut`,
/// `MessageSizeTooLarge`, …), a short, low-cardinality name; pass [`KafkaErrorClassifier`] to
/// [`PublishLayer::classify_errors`](crate::publish::PublishLayer::classify_errors) to use it as
/// `error.type`.
#[derive(Debug)]
pub struct PublishError {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Kafka(KafkaError),
    /// The producer went away before it reported the delivery.
    Cancelled,
}

impl PublishError {
    pub(crate) fn kafka(error: KafkaError) -> Self {
        Self {
            kind: Kind::Kafka(error),
        }
    }

    pub(crate) fn cancelled() -> Self {
        Self {
            kind: Kind::Cancelled,
        }
    }

    /// The librdkafka error code's name, `cancelled` when the producer was dropped before it
    /// reported the delivery, else `_OTHER`.
    pub fn error_type(&self) -> Cow<'static, str> {
        match &self.kind {
            Kind::Kafka(error) => error
                .rdkafka_error_code()
                .map_or(Cow::Borrowed(crate::classify::OTHER), |code| {
                    Cow::Owned(format!("{code:?}"))
                }),
            Kind::Cancelled => Cow::Borrowed("cancelled"),
        }
    }

    /// `true` when the producer's queue stayed full; the publisher normally waits instead.
    pub fn is_queue_full(&self) -> bool {
        matches!(
            &self.kind,
            Kind::Kafka(e)
                if e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
        )
    }
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Kafka(error) => write!(f, "kafka publish failed: {error}"),
            Kind::Cancelled => f.write_str("kafka producer dropped before the delivery report"),
        }
    }
}

impl std::error::Error for PublishError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            Kind::Kafka(error) => Some(error),
            Kind::Cancelled => None,
        }
    }
}

/// Classifies [`PublishError`]s by their librdkafka error code; see
/// [`PublishError::error_type`].
#[derive(Clone, Copy, Debug, Default)]
pub struct KafkaErrorClassifier;

impl ClassifyError<PublishError> for KafkaErrorClassifier {
    fn classify(&self, error: &PublishError) -> Cow<'static, str> {
        error.error_type()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::types::RDKafkaErrorCode;

    #[test]
    fn error_type_is_the_code_name() {
        let e = PublishError::kafka(KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageTimedOut,
        ));
        assert_eq!(KafkaErrorClassifier.classify(&e), "MessageTimedOut");
        assert!(!e.is_queue_full());
        assert_eq!(PublishError::cancelled().error_type(), "cancelled");
        let full = PublishError::kafka(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull));
        assert!(full.is_queue_full());
    }
}
