//! Replaying dead letters (SPEC §8): each dead-letter record goes back to its
//! `dlq-original-destination`, as a new message caused by the record.
//!
//! A [`Replay`] is a handler: run it with a consumer of the dead-letter destination, in a
//! consumer group of the replay's own, and every record it is handed is
//!
//! - published through your publisher (wrapped in a [`PublishLayer`]) to
//!   the destination it came from, with its payload, key and headers, but without its
//!   `dlq-*` headers and its ids: it gets a fresh `message-id`, keeps its `correlation-id`, and
//!   its `causation-id` is the dead-letter record's id (the consumer's process layer makes the
//!   record the current message);
//! - `send`-spanned with a link to the dead-lettered message (the record's trace context);
//! - reported to your progress callback: [`Replayed::Sent`], or [`Replayed::Skipped`] when a
//!   filter ([`error_type`](Replay::error_type), [`id`](Replay::id)) leaves it alone, or
//!   [`Replayed::Listed`] in a [dry run](Replay::dry_run), which publishes nothing.
//!
//! **Progress is the consumer's**: the group commits what was replayed as it goes, so a replay
//! stopped and started again with the same group goes on where it stopped. The window that
//! remains is at-least-once: a record republished but not yet committed when the replay is
//! killed (not shut down) is replayed again by the next run, so the original destination may
//! see it twice; a graceful shutdown commits everything replayed. A filtered replay commits
//! past the records it skipped too: replay other error types with another group. A dry run
//! should read with a group that is never used again.
//!
//! # Example
//!
//! ```
//! use eventscope::memory::{MemoryBroker, MemoryRecord};
//! use eventscope::replay::{Replay, Replayed};
//! use eventscope::header;
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), eventscope::BoxError> {
//! let broker = MemoryBroker::new();
//! // A dead-letter record, as a consumer with a dead-letter destination writes it.
//! let record = MemoryRecord::new("orders.dlq", b"{}".to_vec())
//!     .header(header::DLQ_ORIGINAL_DESTINATION, "orders")
//!     .header(header::DLQ_ERROR_TYPE, "PaymentDeclined");
//! broker.publisher().oneshot(record).await?;
//!
//! let replay = Replay::new(broker.publisher()).on_progress(|event: &Replayed| {
//!     if let Replayed::Sent(record) = event {
//!         println!("{} back to {}", record.id, record.original_destination);
//!     }
//! });
//! let done = async { tokio::time::sleep(std::time::Duration::from_millis(100)).await };
//! broker.consumer("replay").subscribe(["orders.dlq"]).run(replay, done).await?;
//! assert_eq!(broker.high_watermark("orders", 0).unwrap_or(0)
//!     + broker.high_watermark("orders", 1).unwrap_or(0)
//!     + broker.high_watermark("orders", 2).unwrap_or(0), 1);
//! # Ok(())
//! # }
//! ```

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use opentelemetry::trace::TraceContextExt;
use tower::util::BoxCloneSyncService;
use tower::ServiceExt;
use tower_layer::Layer;
use tower_service::Service;

use crate::header;
use crate::message::{HeadersMut, IncomingMessage, Receipt, Republish};
use crate::metrics::Metrics;
use crate::propagation::Propagation;
use crate::publish::PublishLayer;
use crate::BoxError;

/// The dead-letter headers a replayed copy leaves behind.
const DEAD_LETTER_HEADERS: [&str; 8] = [
    header::DLQ_ORIGINAL_DESTINATION,
    header::DLQ_ORIGINAL_PARTITION,
    header::DLQ_ORIGINAL_OFFSET,
    header::DLQ_CONSUMER_GROUP,
    header::DLQ_ERROR_TYPE,
    header::DLQ_ERROR_MESSAGE,
    header::DLQ_ATTEMPTS,
    header::DLQ_FAILED_AT,
];

/// A dead-letter record as read from its headers (SPEC §8).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The record's own message id.
    pub id: String,
    /// `dlq-original-destination`: where it came from, and where a replay sends it.
    pub original_destination: String,
    /// `dlq-original-partition`, `dlq-original-offset` (Kafka, the embedded broker).
    pub original_position: Option<(i32, i64)>,
    /// `dlq-consumer-group`.
    pub consumer_group: String,
    /// `dlq-error-type`.
    pub error_type: String,
    /// `dlq-error-message`.
    pub error_message: String,
    /// `dlq-attempts`.
    pub attempts: Option<u32>,
    /// `dlq-failed-at` (RFC 3339).
    pub failed_at: String,
}

impl DeadLetter {
    /// The dead-letter view of `message`, or `None` when it is not a dead-letter record (it has
    /// no `dlq-original-destination`).
    pub fn of<M: IncomingMessage + ?Sized>(message: &M) -> Option<Self> {
        let text = |name: &str| message.header_str(name).unwrap_or_default().to_owned();
        let original_destination = message.header_str(header::DLQ_ORIGINAL_DESTINATION)?;
        let number = |name: &str| message.header_str(name).and_then(|v| v.parse::<i64>().ok());
        Some(Self {
            id: message
                .message_id()
                .map(Cow::into_owned)
                .unwrap_or_default(),
            original_destination: original_destination.to_owned(),
            original_position: number(header::DLQ_ORIGINAL_PARTITION)
                .and_then(|p| i32::try_from(p).ok())
                .zip(number(header::DLQ_ORIGINAL_OFFSET)),
            consumer_group: text(header::DLQ_CONSUMER_GROUP),
            error_type: text(header::DLQ_ERROR_TYPE),
            error_message: text(header::DLQ_ERROR_MESSAGE),
            attempts: number(header::DLQ_ATTEMPTS).and_then(|n| u32::try_from(n).ok()),
            failed_at: text(header::DLQ_FAILED_AT),
        })
    }
}

/// What a replay did with one record, as told to [`Replay::on_progress`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Replayed {
    /// Published back to its original destination.
    Sent(DeadLetter),
    /// Left alone by a filter.
    Skipped(DeadLetter),
    /// Seen in a dry run: it would have been sent.
    Listed(DeadLetter),
    /// Not a dead-letter record (no `dlq-original-destination`): left alone.
    NotADeadLetter,
}

type Progress = Arc<dyn Fn(&Replayed) + Send + Sync>;

/// Replays the dead letters it is handed; see the [module docs](self).
pub struct Replay<R> {
    publisher: BoxCloneSyncService<R, (), BoxError>,
    error_type: Option<Arc<str>>,
    id: Option<Arc<str>>,
    dry_run: bool,
    progress: Option<Progress>,
}

impl<R> Clone for Replay<R> {
    fn clone(&self) -> Self {
        Self {
            publisher: self.publisher.clone(),
            error_type: self.error_type.clone(),
            id: self.id.clone(),
            dry_run: self.dry_run,
            progress: self.progress.clone(),
        }
    }
}

impl<R> fmt::Debug for Replay<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replay")
            .field("error_type", &self.error_type)
            .field("id", &self.id)
            .field("dry_run", &self.dry_run)
            .finish_non_exhaustive()
    }
}

impl<R: crate::message::OutgoingMessage + Send + 'static> Replay<R> {
    /// Replays through `publisher`, wrapped in a publish layer recording into metrics of its
    /// own (use [`with_layer`](Self::with_layer) for yours).
    pub fn new<P>(publisher: P) -> Self
    where
        P: Service<R> + Clone + Send + Sync + 'static,
        P::Response: Receipt + Send + 'static,
        P::Error: Into<BoxError> + 'static,
        P::Future: Send + 'static,
    {
        Self::with_layer(PublishLayer::new(Metrics::new()), publisher)
    }

    /// Replays through `publisher` wrapped in `layer` (your metrics, tracer, propagator).
    pub fn with_layer<P>(layer: PublishLayer, publisher: P) -> Self
    where
        P: Service<R> + Clone + Send + Sync + 'static,
        P::Response: Receipt + Send + 'static,
        P::Error: Into<BoxError> + 'static,
        P::Future: Send + 'static,
    {
        Self {
            publisher: BoxCloneSyncService::new(
                layer
                    .layer(publisher)
                    .map_response(|_| ())
                    .map_err(Into::into),
            ),
            error_type: None,
            id: None,
            dry_run: false,
            progress: None,
        }
    }
}

impl<R> Replay<R> {
    /// Replays only records whose `dlq-error-type` is `error_type`.
    pub fn error_type(mut self, error_type: impl Into<Arc<str>>) -> Self {
        self.error_type = Some(error_type.into());
        self
    }

    /// Replays only the record whose message id is `id`.
    pub fn id(mut self, id: impl Into<Arc<str>>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Publishes nothing; every record that would be sent is reported as
    /// [`Replayed::Listed`].
    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }

    /// Calls `progress` for every record handed to the replay.
    pub fn on_progress(mut self, progress: impl Fn(&Replayed) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(progress));
        self
    }

    fn report(&self, event: Replayed) {
        if let Some(progress) = &self.progress {
            progress(&event);
        }
    }
}

impl<M> Service<M> for Replay<M::Record>
where
    M: Republish + Send + 'static,
    M::Record: Send + 'static,
{
    type Response = ();
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.publisher.poll_ready(cx)
    }

    fn call(&mut self, message: M) -> Self::Future {
        let Some(dead_letter) = DeadLetter::of(&message) else {
            self.report(Replayed::NotADeadLetter);
            return Box::pin(std::future::ready(Ok(())));
        };
        let wanted = self
            .error_type
            .as_deref()
            .is_none_or(|t| t == dead_letter.error_type)
            && self.id.as_deref().is_none_or(|id| id == dead_letter.id);
        if !wanted {
            self.report(Replayed::Skipped(dead_letter));
            return Box::pin(std::future::ready(Ok(())));
        }
        if self.dry_run {
            self.report(Replayed::Listed(dead_letter));
            return Box::pin(std::future::ready(Ok(())));
        }
        let mut record = message.republish(&dead_letter.original_destination);
        for name in DEAD_LETTER_HEADERS {
            record.remove_header(name);
        }
        // The record's trace context is the dead-letter send, in the failed message's trace.
        let dead_lettered = Propagation::default()
            .extract(&message)
            .context
            .span()
            .span_context()
            .clone();
        let sent = crate::publish::with_link(dead_lettered, || self.publisher.call(record));
        let (progress, this) = (self.progress.clone(), dead_letter);
        Box::pin(async move {
            sent.await?;
            if let Some(progress) = progress {
                progress(&Replayed::Sent(this));
            }
            Ok(())
        })
    }
}

/// Whether `name` is one of the dead-letter headers a replay removes.
pub fn is_dead_letter_header(name: &str) -> bool {
    name.len() > header::DLQ_PREFIX.len()
        && name[..header::DLQ_PREFIX.len()].eq_ignore_ascii_case(header::DLQ_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_headers_share_the_prefix() {
        for name in DEAD_LETTER_HEADERS {
            assert!(is_dead_letter_header(name), "{name}");
            assert!(is_dead_letter_header(&name.to_ascii_uppercase()), "{name}");
        }
        assert!(!is_dead_letter_header("dlq-"));
        assert!(!is_dead_letter_header("message-id"));
    }
}
