//! Dead letters (SPEC §8): a message that failed for good is copied, with the error headers,
//! to its dead-letter destination through the publish layer, and only then settled.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use tower::util::BoxCloneSyncService;
use tower::ServiceExt;
use tower_layer::Layer;
use tower_service::Service;

use super::handle::{DeadLetter, Failure, NoDeadLetters};
use crate::header;
use crate::message::{OutgoingMessage, Receipt, Republish};
use crate::publish::PublishLayer;
use crate::scope::MessageScope;
use crate::BoxError;

use super::source::DeadLetterRule as Rule;

/// A consumer's dead-letter publisher and destination rule, set with
/// [`Consumer::dead_letter`](super::Consumer::dead_letter). `R` is the adapter's outgoing
/// record.
pub struct DeadLetters<R> {
    /// Wraps the publisher in the consumer's publish layer (its metrics and tracer, known only
    /// when the consumer runs).
    make: Arc<dyn Fn(PublishLayer) -> BoxCloneSyncService<R, (), BoxError> + Send + Sync>,
    rule: Option<Rule>,
    check: bool,
}

impl<R> Clone for DeadLetters<R> {
    fn clone(&self) -> Self {
        Self {
            make: Arc::clone(&self.make),
            rule: self.rule.clone(),
            check: self.check,
        }
    }
}

impl<R> fmt::Debug for DeadLetters<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetters")
            .field("custom_destination", &self.rule.is_some())
            .finish_non_exhaustive()
    }
}

impl<R: OutgoingMessage + Send + 'static> DeadLetters<R> {
    pub(crate) fn new<P>(publisher: P) -> Self
    where
        P: Service<R> + Clone + Send + Sync + 'static,
        P::Response: Receipt + Send + 'static,
        P::Error: Into<BoxError> + 'static,
        P::Future: Send + 'static,
    {
        Self {
            make: Arc::new(move |layer: PublishLayer| {
                BoxCloneSyncService::new(
                    layer
                        .layer(publisher.clone())
                        .map_response(|_| ())
                        .map_err(Into::into),
                )
            }),
            rule: None,
            check: true,
        }
    }

    pub(crate) fn checked(mut self, check: bool) -> Self {
        self.check = check;
        self
    }

    pub(crate) fn destination(
        mut self,
        rule: impl Fn(&str) -> String + Send + Sync + 'static,
    ) -> Self {
        self.rule = Some(Arc::new(rule));
        self
    }

    /// The sink the core publishes through, with the consumer's publish layer.
    pub(crate) fn sink(&self, layer: PublishLayer) -> Sink<R> {
        Sink {
            publisher: Some((self.make)(layer)),
            rule: self.rule.clone(),
        }
    }
}

/// Where the core sends dead letters: a publisher wrapped in the consumer's publish layer, or
/// nothing (a consumer without a dead-letter destination).
pub struct Sink<R> {
    publisher: Option<BoxCloneSyncService<R, (), BoxError>>,
    rule: Option<Rule>,
}

impl<R> Clone for Sink<R> {
    fn clone(&self) -> Self {
        Self {
            publisher: self.publisher.clone(),
            rule: self.rule.clone(),
        }
    }
}

impl<R> fmt::Debug for Sink<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sink")
            .field("configured", &self.publisher.is_some())
            .finish_non_exhaustive()
    }
}

/// A consumer's dead-letter setting, turned into the sink its core publishes through.
pub trait Configured<M> {
    /// The sink.
    type Sink: DeadLetter<M>;
    /// The sink, publishing through `layer` (the consumer's metrics and tracer).
    fn sink(&self, layer: PublishLayer) -> Self::Sink;

    /// Whether the dead-letter destinations are checked at startup, with the consumer's own
    /// naming rule.
    fn destination(&self) -> Option<Option<Rule>>;
}

impl<M: Send + Sync + 'static> Configured<M> for () {
    type Sink = NoDeadLetters;

    fn sink(&self, _layer: PublishLayer) -> NoDeadLetters {
        NoDeadLetters
    }

    fn destination(&self) -> Option<Option<Rule>> {
        None
    }
}

impl<M> Configured<M> for DeadLetters<M::Record>
where
    M: Republish + Send + Sync + 'static,
    M::Record: Send + 'static,
{
    type Sink = Sink<M::Record>;

    fn sink(&self, layer: PublishLayer) -> Sink<M::Record> {
        DeadLetters::sink(self, layer)
    }

    fn destination(&self) -> Option<Option<Rule>> {
        self.check.then(|| self.rule.clone())
    }
}

impl<M> DeadLetter<M> for Sink<M::Record>
where
    M: Republish + Send + Sync + 'static,
    M::Record: Send + 'static,
{
    fn configured(&self) -> bool {
        self.publisher.is_some()
    }

    async fn send<'a>(
        &'a self,
        message: &'a M,
        failure: &'a Failure,
        attempts: u32,
        group: &'a str,
        failed: Option<&'a (opentelemetry::Context, MessageScope)>,
    ) -> Result<(), BoxError> {
        let Some(publisher) = &self.publisher else {
            return Err("no dead-letter destination".into());
        };
        let destination = match &self.rule {
            Some(rule) => rule(message.destination()),
            None => message.dead_letter_destination(),
        };
        let record = record(message, &destination, failure, attempts, group);
        let mut publisher = publisher.clone();
        publisher.ready().await?;
        // The `send` span is a child of the failed attempt's process span, and the copy names
        // the failed message as its cause (SPEC §8).
        let published = {
            let _cx = failed.map(|(cx, _)| cx.clone().attach());
            let scope = match failed {
                Some((_, scope)) => scope.clone(),
                None => MessageScope::of(message),
            };
            let _scope = scope.enter();
            publisher.call(record)
        };
        published.await
    }
}

/// The dead-letter copy of `message`: its key, payload and headers without its ids (a new
/// message), and the SPEC §8 error headers.
fn record<M: Republish>(
    message: &M,
    destination: &str,
    failure: &Failure,
    attempts: u32,
    group: &str,
) -> M::Record {
    use crate::message::HeadersMut;
    let mut record = message.republish(destination);
    let mut set = |name: &'static str, value: String| record.set_static_header(name, value);
    set(
        header::DLQ_ORIGINAL_DESTINATION,
        message.origin().into_owned(),
    );
    if let Some(partition) = message.partition() {
        set(header::DLQ_ORIGINAL_PARTITION, partition.to_string());
    }
    if let Some(offset) = message.offset() {
        set(header::DLQ_ORIGINAL_OFFSET, offset.to_string());
    }
    set(header::DLQ_CONSUMER_GROUP, group.to_owned());
    set(header::DLQ_ERROR_TYPE, failure.error_type.to_string());
    set(
        header::DLQ_ERROR_MESSAGE,
        error_text(&failure.error.to_string()),
    );
    set(header::DLQ_ATTEMPTS, attempts.to_string());
    set(
        header::DLQ_FAILED_AT,
        humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
    );
    record
}

/// An error's text as a header value: control characters (a CR/LF would forge headers on
/// text-header brokers) become spaces, at most [`header::DLQ_ERROR_MESSAGE_MAX_BYTES`], cut on
/// a character boundary.
pub(crate) fn error_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(header::DLQ_ERROR_MESSAGE_MAX_BYTES));
    for c in text.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > header::DLQ_ERROR_MESSAGE_MAX_BYTES {
            break;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_text_is_one_line_and_bounded_on_a_character_boundary() {
        assert_eq!(error_text("bad\r\nX-Injected: 1"), "bad  X-Injected: 1");
        let long = "é".repeat(1000);
        let cut = error_text(&long);
        assert!(cut.len() <= header::DLQ_ERROR_MESSAGE_MAX_BYTES);
        assert_eq!(cut.len(), header::DLQ_ERROR_MESSAGE_MAX_BYTES);
        assert!(cut.chars().all(|c| c == 'é'));
        let odd = format!("x{}", "é".repeat(1000));
        assert_eq!(
            error_text(&odd).len(),
            header::DLQ_ERROR_MESSAGE_MAX_BYTES - 1
        );
    }
}
