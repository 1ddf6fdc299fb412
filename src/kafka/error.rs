//! Errors of the Kafka adapter: a publish that failed, a consumer configuration that cannot
//! work.
//!
//! # Example
//!
//! ```
//! use eventscope::kafka::{self, error::ConfigError, KafkaConsumer};
//! use eventscope::metrics::Metrics;
//!
//! // `error.type` of failed publishes is the librdkafka code (`MessageTimedOut`, …).
//! let layer = kafka::publish_layer(Metrics::new());
//! # let _ = layer;
//!
//! // A consumer that would commit unprocessed messages is refused when it is built.
//! let mut config = kafka::consumer_config("127.0.0.1:9092", "billing");
//! config.set("enable.auto.offset.store", "true");
//! let refused = KafkaConsumer::from_config(&config);
//! assert!(matches!(refused, Err(ConfigError::AutoOffsetStore)));
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
            Kind::Cancelled => Cow::Borrowed(crate::classify::CANCELLED),
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

/// Why [`KafkaConsumer::from_config`](super::KafkaConsumer::from_config) could not build a
/// consumer.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConfigError {
    /// `group.id` is missing or empty: offsets are committed for a consumer group.
    MissingGroupId,
    /// `enable.auto.offset.store` is not `false`: librdkafka would store (and so commit) the
    /// offset of every message it hands out, processed or not.
    AutoOffsetStore,
    /// `statistics.interval.ms` is not set: consumer lag comes from librdkafka statistics.
    /// Set it (e.g. `1000`), or to `0` to do without lag.
    MissingStatisticsInterval,
    /// A setting eventscope reads has a value it cannot use.
    InvalidValue {
        /// The setting.
        key: &'static str,
        /// Its value.
        value: String,
    },
    /// librdkafka refused the configuration, or subscribing failed.
    Client(KafkaError),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingGroupId => f.write_str("the consumer configuration needs a group.id"),
            Self::AutoOffsetStore => f.write_str(
                "the consumer must be configured with enable.auto.offset.store=false, so only \
                 processed messages are committed",
            ),
            Self::MissingStatisticsInterval => f.write_str(
                "set statistics.interval.ms (e.g. 1000) for consumer lag, or 0 to go without",
            ),
            Self::InvalidValue { key, value } => write!(f, "invalid value {value:?} for {key}"),
            Self::Client(error) => write!(f, "kafka client: {error}"),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Client(error) => Some(error),
            _ => None,
        }
    }
}

impl From<KafkaError> for ConfigError {
    fn from(error: KafkaError) -> Self {
        Self::Client(error)
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
        assert_eq!(
            PublishError::cancelled().error_type(),
            crate::classify::CANCELLED
        );
        let full = PublishError::kafka(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull));
        assert!(full.is_queue_full());
    }
}
