//! Errors of the RabbitMQ adapter: a publish the broker did not confirm, a consumer that
//! cannot be built.
//!
//! # Example
//!
//! ```
//! use eventscope::metrics::Metrics;
//! use eventscope::rabbitmq::{self, error::ConfigError, RabbitConsumer};
//!
//! // `error.type` of a failed publish names what went wrong: `NO_ROUTE`, `nack`, `timeout`, ...
//! let layer = rabbitmq::publish_layer(Metrics::new());
//! # let _ = layer;
//!
//! // A consumer is refused when it is built, not when it first connects.
//! assert!(matches!(
//!     RabbitConsumer::new("http://127.0.0.1:5672", "billing"),
//!     Err(ConfigError::InvalidUri(_))
//! ));
//! ```

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use lapin::ErrorKind;

use crate::classify::ClassifyError;

/// Why a publish was not confirmed.
///
/// Its [`error_type`](Self::error_type) is a short, low-cardinality name; pass
/// [`RabbitErrorClassifier`] to
/// [`PublishLayer::classify_errors`](crate::publish::PublishLayer::classify_errors) (or use
/// [`publish_layer`](super::publish_layer)) to make it the span's and the metrics' `error.type`.
#[derive(Debug)]
pub struct PublishError {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    /// The broker nacked the message (it could not take it, e.g. a full queue with
    /// `x-overflow=reject-publish`).
    Nack,
    /// A mandatory message the broker could not route, returned with this reply.
    Returned { reply_code: u16, reply_text: String },
    /// No confirm within the publisher's timeout.
    Timeout(Duration),
    /// The channel does not confirm publishes.
    NotConfirmed,
    /// The record cannot be sent as it is.
    InvalidRecord(&'static str),
    /// lapin failed: the channel or connection is closed, lost or refused the publish.
    Client(lapin::Error),
}

impl PublishError {
    pub(crate) fn nack() -> Self {
        Self { kind: Kind::Nack }
    }

    pub(crate) fn returned(reply_code: u16, reply_text: &str) -> Self {
        Self {
            kind: Kind::Returned {
                reply_code,
                reply_text: reply_text.to_owned(),
            },
        }
    }

    pub(crate) fn timeout(after: Duration) -> Self {
        Self {
            kind: Kind::Timeout(after),
        }
    }

    pub(crate) fn not_confirmed() -> Self {
        Self {
            kind: Kind::NotConfirmed,
        }
    }

    pub(crate) fn invalid_record(why: &'static str) -> Self {
        Self {
            kind: Kind::InvalidRecord(why),
        }
    }

    pub(crate) fn client(error: lapin::Error) -> Self {
        Self {
            kind: Kind::Client(error),
        }
    }

    /// A short name for what went wrong:
    ///
    /// - `NO_ROUTE` (312): a mandatory message no queue is bound to receive, returned;
    /// - `nack`: the broker refused the message;
    /// - `timeout`: no confirm within the publisher's timeout (the outcome is unknown);
    /// - the AMQP reply name of a broker error: `NOT_FOUND` (no such exchange),
    ///   `ACCESS_REFUSED`, `PRECONDITION_FAILED`, `CONNECTION_FORCED`, ...;
    /// - `channel_closed`: the channel is closed or recovering (after a channel error, or
    ///   while its connection reconnects);
    /// - `connection`: the connection failed (an IO error, a missed heartbeat) or is closed;
    /// - `not_confirmed`: the channel does not confirm publishes;
    /// - `invalid_record`: an exchange name or routing key over 255 bytes, or headers that do
    ///   not fit one AMQP frame;
    /// - `_OTHER` for anything else.
    pub fn error_type(&self) -> Cow<'static, str> {
        Cow::Borrowed(match &self.kind {
            Kind::Nack => "nack",
            Kind::Returned { reply_code, .. } => reply_name(*reply_code).unwrap_or("returned"),
            Kind::Timeout(_) => "timeout",
            Kind::NotConfirmed => "not_confirmed",
            Kind::InvalidRecord(_) => "invalid_record",
            Kind::Client(error) => match error.kind() {
                ErrorKind::ProtocolError(amqp) => {
                    reply_name(amqp.get_id()).unwrap_or(crate::classify::OTHER)
                }
                ErrorKind::InvalidChannelState(..) | ErrorKind::InvalidChannel(_) => {
                    "channel_closed"
                }
                ErrorKind::IOError(_)
                | ErrorKind::MissingHeartbeatError
                | ErrorKind::InvalidConnectionState(_)
                | ErrorKind::RuntimeShutdownError(_) => "connection",
                _ => crate::classify::OTHER,
            },
        })
    }

    /// The AMQP reply code, for a returned message or a broker error.
    pub fn reply_code(&self) -> Option<u16> {
        match &self.kind {
            Kind::Returned { reply_code, .. } => Some(*reply_code),
            Kind::Client(error) => match error.kind() {
                ErrorKind::ProtocolError(amqp) => Some(amqp.get_id()),
                _ => None,
            },
            _ => None,
        }
    }

    /// `true` for a mandatory message the broker returned unrouted.
    pub fn is_returned(&self) -> bool {
        matches!(self.kind, Kind::Returned { .. })
    }

    /// `true` when the broker nacked the message.
    pub fn is_nack(&self) -> bool {
        matches!(self.kind, Kind::Nack)
    }

    /// `true` when no confirm came in time: the message may or may not be with the broker.
    pub fn is_timeout(&self) -> bool {
        matches!(self.kind, Kind::Timeout(_))
    }

    /// `true` when the channel or its connection was not usable (closed, lost, recovering):
    /// publishing again later, on a recovered or a new channel, may succeed.
    pub fn is_connection(&self) -> bool {
        matches!(
            self.error_type().as_ref(),
            "channel_closed" | "connection" | "CONNECTION_FORCED"
        )
    }

    /// The lapin error, when lapin failed.
    pub fn lapin(&self) -> Option<&lapin::Error> {
        match &self.kind {
            Kind::Client(error) => Some(error),
            _ => None,
        }
    }
}

/// The name AMQP 0-9-1 gives a reply code.
pub(crate) fn reply_name(code: u16) -> Option<&'static str> {
    Some(match code {
        311 => "CONTENT_TOO_LARGE",
        312 => "NO_ROUTE",
        313 => "NO_CONSUMERS",
        320 => "CONNECTION_FORCED",
        402 => "INVALID_PATH",
        403 => "ACCESS_REFUSED",
        404 => "NOT_FOUND",
        405 => "RESOURCE_LOCKED",
        406 => "PRECONDITION_FAILED",
        501 => "FRAME_ERROR",
        502 => "SYNTAX_ERROR",
        503 => "COMMAND_INVALID",
        504 => "CHANNEL_ERROR",
        505 => "UNEXPECTED_FRAME",
        506 => "RESOURCE_ERROR",
        530 => "NOT_ALLOWED",
        540 => "NOT_IMPLEMENTED",
        541 => "INTERNAL_ERROR",
        _ => return None,
    })
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Nack => f.write_str("rabbitmq publish nacked by the broker"),
            Kind::Returned {
                reply_code,
                reply_text,
            } => write!(
                f,
                "rabbitmq publish returned unrouted ({reply_code} {reply_text}): no queue is bound to receive it"
            ),
            Kind::Timeout(after) => {
                write!(f, "rabbitmq publish not confirmed within {after:?}")
            }
            Kind::NotConfirmed => {
                f.write_str("rabbitmq publish not confirmed: the channel is not in confirm mode")
            }
            Kind::InvalidRecord(why) => write!(f, "rabbitmq record cannot be sent: {why}"),
            Kind::Client(error) => write!(f, "rabbitmq publish failed: {error}"),
        }
    }
}

impl std::error::Error for PublishError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            Kind::Client(error) => Some(error),
            _ => None,
        }
    }
}

/// Classifies [`PublishError`]s by [`PublishError::error_type`].
#[derive(Clone, Copy, Debug, Default)]
pub struct RabbitErrorClassifier;

impl ClassifyError<PublishError> for RabbitErrorClassifier {
    fn classify(&self, error: &PublishError) -> Cow<'static, str> {
        error.error_type()
    }
}

/// Why `RabbitConsumer::new` could not build a consumer.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConfigError {
    /// Not an `amqp://` or `amqps://` URI lapin can use (the text says why; it never holds the
    /// URI, which may hold a password).
    InvalidUri(String),
    /// A queue name is at most 255 bytes.
    QueueNameTooLong(usize),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidUri(why) => write!(f, "invalid AMQP URI: {why}"),
            Self::QueueNameTooLong(len) => {
                write!(f, "queue name of {len} bytes; AMQP allows 255")
            }
        }
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use lapin::protocol::{AMQPError, AMQPSoftError};

    use super::*;

    #[test]
    fn error_types_name_the_failure() {
        assert_eq!(
            PublishError::returned(312, "NO_ROUTE").error_type(),
            "NO_ROUTE"
        );
        assert!(PublishError::returned(312, "NO_ROUTE").is_returned());
        assert_eq!(PublishError::nack().error_type(), "nack");
        assert_eq!(
            PublishError::timeout(Duration::from_secs(1)).error_type(),
            "timeout"
        );
        let not_found = lapin::Error::from(ErrorKind::ProtocolError(AMQPError::new(
            AMQPSoftError::NOTFOUND.into(),
            "NOT_FOUND - no exchange".into(),
        )));
        let e = PublishError::client(not_found);
        assert_eq!(RabbitErrorClassifier.classify(&e), "NOT_FOUND");
        assert_eq!(e.reply_code(), Some(404));
        let closed = PublishError::client(lapin::Error::from(ErrorKind::MissingHeartbeatError));
        assert_eq!(closed.error_type(), "connection");
        assert!(closed.is_connection());
        assert_eq!(reply_name(999), None);
    }
}
