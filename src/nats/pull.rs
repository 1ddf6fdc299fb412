//! The JetStream consumer: a durable pull consumer on the core's unordered mode.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::pull::Stream as PullStream;
use async_nats::jetstream::consumer::{AckPolicy, PullConsumer};
use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};

use super::consumer::{server_address, Stop};
use super::error::ConfigError;
use super::lag::{LagSource, Monitor};
use super::progress::Progress;
use super::record::{JetStreamMessage, Origin};
use crate::classify::{Classifier, Decision};
use crate::consume::{
    Adapter, ConsumeError, Consumer, Opening, Options, Unordered, UnorderedSettler, UnorderedSource,
};
use crate::message::system::NATS;
use crate::BoxError;

/// Drives a handler with the messages of a JetStream pull consumer, run by the
/// [consumer core](crate::consume); see the [module docs](super).
///
/// Settles per SPEC §7: `Ack` acks, `Retry { after }` naks with a delay of `after` (the
/// server delivers it again then), `Reject` terms, `Stop` naks and the consumer pulls no more
/// and returns [`ConsumeError::Stopped`], and `DeadLetter` (the core published the copy
/// first) terms. A handler that runs longer than half the consumer's `ack_wait` keeps its
/// message in progress (`+WPI`) so the server does not deliver it again meanwhile; see
/// [`max_in_progress`](Self::max_in_progress).
pub type JetStreamConsumer<Classify = Classifier> = Consumer<JetStreamSubscription, Classify>;

/// The JetStream part of a [`JetStreamConsumer`]: your pull consumer and how it is pulled.
pub struct JetStreamSubscription {
    context: jetstream::Context,
    consumer: PullConsumer,
    lag_interval: Duration,
    pull_batch: Option<usize>,
    /// `None`: kept for as long as the handler runs; zero: never.
    max_in_progress: Option<Duration>,
    heartbeat: Duration,
}

impl fmt::Debug for JetStreamSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let info = self.consumer.cached_info();
        f.debug_struct("JetStreamSubscription")
            .field("stream", &info.stream_name)
            .field("consumer", &info.name)
            .field("lag_interval", &self.lag_interval)
            .field("pull_batch", &self.pull_batch)
            .field("max_in_progress", &self.max_in_progress)
            .finish_non_exhaustive()
    }
}

/// The consumer's `ack_wait` when the server reports none (its default).
const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);

impl JetStreamConsumer {
    /// Drives `consumer`, a pull consumer (durable, or ephemeral) created through `context`;
    /// its name is the `messaging.consumer.group.name`. Start from
    /// [`consumer_config`](super::consumer_config).
    ///
    /// ```no_run
    /// use eventscope::nats::{self, async_nats, JetStreamConsumer};
    ///
    /// # async fn run() -> Result<(), eventscope::BoxError> {
    /// let client = async_nats::connect("127.0.0.1:4222").await?;
    /// let js = async_nats::jetstream::new(client);
    /// let pull = js
    ///     .get_stream("ORDERS")
    ///     .await?
    ///     .get_or_create_consumer("billing", nats::consumer_config("billing"))
    ///     .await?;
    /// let consumer = JetStreamConsumer::new(js, pull)?.max_concurrency(32);
    /// # let _ = consumer;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`ConfigError::AckPolicy`] unless the consumer acks explicitly (SPEC §7 settles each
    /// message on its own).
    pub fn new(context: jetstream::Context, consumer: PullConsumer) -> Result<Self, ConfigError> {
        let policy = consumer.cached_info().config.ack_policy;
        if policy != AckPolicy::Explicit {
            return Err(ConfigError::AckPolicy(format!("{policy:?}")));
        }
        Ok(Consumer::with(
            JetStreamSubscription {
                context,
                consumer,
                lag_interval: Duration::from_secs(5),
                pull_batch: None,
                max_in_progress: None,
                heartbeat: Duration::from_secs(5),
            },
            Options::DEFAULT,
        ))
    }
}

impl<C, D> Consumer<JetStreamSubscription, C, D> {
    /// How often the consumer's `num_pending` and `num_ack_pending` are read from the server
    /// for `messaging_consumer_lag_messages` and `messaging_consumer_unacked_messages` (default
    /// 5 s; each read is one request of about half a millisecond).
    pub fn lag_interval(mut self, interval: Duration) -> Self {
        self.adapter.lag_interval = interval;
        self
    }

    /// Messages asked for per pull request (default: twice
    /// [`max_concurrency`](Consumer::max_concurrency)). Pulled messages wait in the client
    /// until a handler is free, and their `ack_wait` runs meanwhile: keep this small when
    /// handlers are slow, larger for throughput with fast ones.
    pub fn pull_batch(mut self, messages: usize) -> Self {
        self.adapter.pull_batch = Some(messages.max(1));
        self
    }

    /// How long a running handler keeps its message in progress at most (default: for as
    /// long as it runs). After that the message is left to expire, and the server delivers it
    /// again after `ack_wait`, to this or another consumer, while the first handler may still
    /// run: put a timeout layer around a handler that can hang instead, where you can.
    /// `Duration::ZERO` never sends `+WPI`.
    pub fn max_in_progress(mut self, max: Duration) -> Self {
        self.adapter.max_in_progress = Some(max);
        self
    }

    /// How often the server confirms an idle pull request is alive (default 5 s); twice that
    /// without one and the client reports a missed heartbeat (logged; pulling goes on).
    pub fn heartbeat(mut self, heartbeat: Duration) -> Self {
        self.adapter.heartbeat = heartbeat;
        self
    }

    /// The pull consumer.
    pub fn pull_consumer(&self) -> &PullConsumer {
        &self.adapter.consumer
    }
}

impl Adapter for JetStreamSubscription {
    type Message = JetStreamMessage;
    type Mode = Unordered<JetStreamSource, JetStreamSettler>;

    fn system(&self) -> &'static str {
        NATS
    }

    fn group(&self) -> &str {
        &self.consumer.cached_info().name
    }

    async fn open(self, opening: Opening) -> Result<Self::Mode, ConsumeError> {
        let broker = |e: BoxError| ConsumeError::Broker(e);
        let info = self.consumer.cached_info();
        let config = &info.config;
        if config.max_deliver <= 0 {
            tracing::warn!(
                consumer = info.name,
                "max_deliver is unlimited: a message the client cannot read (see the nats module docs) is delivered again for ever"
            );
        }
        let ack_wait = if config.ack_wait.is_zero() {
            DEFAULT_ACK_WAIT
        } else {
            config.ack_wait
        };
        let batch = self
            .pull_batch
            .unwrap_or_else(|| opening.max_concurrency().saturating_mul(2));
        let messages = self
            .consumer
            .stream()
            .max_messages_per_batch(batch)
            .heartbeat(self.heartbeat)
            .messages()
            .await
            .map_err(|e| broker(Box::new(e)))?;
        let destination = lag_destination(&self.context, info).await;
        let client = self.context.client();
        let origin = Arc::new(Origin::new(
            &info.name,
            &info.stream_name,
            server_address(&client),
        ));
        let monitor = Monitor::start(
            client.clone(),
            opening.reporter().clone(),
            "jetstream",
            Some(LagSource {
                consumer: self.consumer.clone(),
                destination,
                interval: self.lag_interval,
            }),
        );
        let progress = Arc::new(Progress::start(
            client.clone(),
            ack_wait,
            self.max_in_progress,
        ));
        let stop = Arc::new(Stop::default());
        Ok(Unordered {
            source: JetStreamSource {
                messages: Some(messages),
                origin,
                stop: Arc::clone(&stop),
                progress: progress.clone(),
                client: client.clone(),
                _monitor: monitor,
            },
            settler: JetStreamSettler {
                client,
                progress,
                stop,
            },
        })
    }
}

/// The destination lag is reported under: the consumer's filter subject, else the stream's
/// subject when it has one, else the stream's name.
async fn lag_destination(context: &jetstream::Context, info: &jetstream::consumer::Info) -> String {
    if !info.config.filter_subject.is_empty() {
        return info.config.filter_subject.clone();
    }
    match context.get_stream(&info.stream_name).await {
        Ok(stream) => match stream.cached_info().config.subjects.as_slice() {
            [only] => only.clone(),
            _ => info.stream_name.clone(),
        },
        Err(_) => info.stream_name.clone(),
    }
}

/// A pull consumer's messages.
pub struct JetStreamSource {
    messages: Option<PullStream>,
    origin: Arc<Origin>,
    stop: Arc<Stop>,
    progress: Arc<Progress>,
    client: async_nats::Client,
    _monitor: Monitor,
}

impl fmt::Debug for JetStreamSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JetStreamSource")
            .field("stream", &self.origin.stream)
            .field("consumer", &self.origin.group)
            .finish_non_exhaustive()
    }
}

impl UnorderedSource for JetStreamSource {
    type Message = JetStreamMessage;

    async fn next(&mut self) -> Option<Result<JetStreamMessage, BoxError>> {
        loop {
            let messages = self.messages.as_mut()?;
            let Some(next) = self.stop.or(messages.next()).await else {
                self.close();
                return None;
            };
            let error = match next {
                Some(Ok(message)) => {
                    let message = JetStreamMessage::new(message.message, Arc::clone(&self.origin));
                    // Keyed by the delivery's consumer sequence, which the ack subject carries.
                    if let (Some(subject), delivery @ 1..) =
                        (message.ack_subject(), message.consumer_sequence())
                    {
                        self.progress.arm(delivery, subject);
                    }
                    return Some(Ok(message));
                }
                Some(Err(error)) => error,
                None => {
                    self.messages = None;
                    return Some(Err("the JetStream pull ended: the client was closed".into()));
                }
            };
            use async_nats::jetstream::consumer::pull::MessagesErrorKind as Kind;
            match error.kind() {
                // The client pulls again by itself (after a reconnect, on the next request).
                Kind::MissingHeartbeat | Kind::Pull | Kind::NoResponders | Kind::Other => {
                    tracing::warn!(
                        %error, stream = %self.origin.stream, consumer = %self.origin.group,
                        "JetStream pull interrupted; pulling goes on"
                    );
                }
                Kind::ConsumerDeleted | Kind::PushBasedConsumer | Kind::RequestLimitExceeded => {
                    self.messages = None;
                    return Some(Err(Box::new(error)));
                }
            }
        }
    }
}

impl JetStreamSource {
    /// Stops pulling. Messages pulled that no handler got are handed back at once (`-NAK`)
    /// instead of after their `ack_wait`.
    fn close(&mut self) {
        let Some(mut messages) = self.messages.take() else {
            return;
        };
        let mut back = Vec::new();
        while let Some(Some(next)) = messages.next().now_or_never() {
            if let Ok(message) = next {
                if let Some(reply) = message.message.reply {
                    back.push(reply);
                }
            }
        }
        // Dropping the stream ends its pull requests.
        drop(messages);
        if back.is_empty() {
            return;
        }
        let client = self.client.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                for reply in back {
                    let _ = client.publish(reply, Bytes::from(AckKind::Nak(None))).await;
                }
            });
        }
    }
}

impl Drop for JetStreamSource {
    fn drop(&mut self) {
        self.close();
    }
}

/// Acks, naks and terms JetStream messages.
pub struct JetStreamSettler {
    client: async_nats::Client,
    progress: Arc<Progress>,
    stop: Arc<Stop>,
}

impl fmt::Debug for JetStreamSettler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JetStreamSettler").finish_non_exhaustive()
    }
}

/// The reply that carries out `decision` (SPEC §7).
pub(crate) fn ack_kind(decision: Decision) -> AckKind {
    match decision {
        Decision::Ack => AckKind::Ack,
        Decision::Retry { after } => AckKind::Nak(Some(after)),
        // A dead letter was published (and acknowledged) by the core before it settles.
        Decision::Reject | Decision::DeadLetter => AckKind::Term,
        Decision::Stop => AckKind::Nak(None),
    }
}

impl UnorderedSettler<JetStreamMessage> for JetStreamSettler {
    async fn settle(&self, message: &JetStreamMessage, decision: Decision) -> Result<(), BoxError> {
        self.progress.disarm(message.consumer_sequence());
        if decision == Decision::Stop {
            self.stop.raise();
        }
        let Some(subject) = message.ack_subject() else {
            return Err("the message has no ack subject".into());
        };
        self.client
            .publish(subject.clone(), Bytes::from(ack_kind(decision)))
            .await
            .map_err(|e| Box::new(e) as BoxError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_map_to_spec_section_7() {
        let wire = |d| Bytes::from(ack_kind(d));
        assert_eq!(wire(Decision::Ack), "+ACK");
        assert_eq!(
            wire(Decision::retry(Duration::from_millis(1500))),
            "-NAK {\"delay\":1500000000}"
        );
        assert_eq!(wire(Decision::Reject), "+TERM");
        assert_eq!(wire(Decision::DeadLetter), "+TERM");
        assert_eq!(wire(Decision::Stop), "-NAK");
    }
}
