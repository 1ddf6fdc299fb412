//! The core NATS consumer: a subscription (with a queue group as the consumer group) on the
//! core's unordered mode.

use std::fmt;
use std::sync::Arc;

use futures_util::{FutureExt, StreamExt};

use super::consumer::{server_address, Stop};
use super::events::{sid_of, ClientEvents, Registration};
use super::lag::Monitor;
use super::record::{NatsMessage, Origin};
use crate::classify::{Classifier, Decision};
use crate::consume::{
    Adapter, ConsumeError, Consumer, Opening, Options, Reporter, Unordered, UnorderedSettler,
    UnorderedSource,
};
use crate::message::system::NATS;
use crate::BoxError;

/// Drives a handler with the messages of a core NATS subscription, run by the
/// [consumer core](crate::consume); see the [module docs](super).
///
/// Core NATS cannot deliver a message again, so settling is a no-op: a `Retry { after }`
/// decision calls the handler again after `after`, in this process, and only the final
/// decision counts; `Reject` drops the message (it counts as a failure, as every failure
/// does, in `messaging_process_duration_seconds{error_type}`, and is logged); `Stop`
/// unsubscribes and the consumer returns [`ConsumeError::Stopped`]. Messages the subscription
/// received but no handler got (shutdown, a stop) are lost and count in
/// `messaging_consumer_dropped_messages_total`, as do the client's slow-consumer drops given
/// [`client_events`](Self::client_events).
pub type NatsConsumer<Classify = Classifier> = Consumer<NatsSubscription, Classify>;

/// The NATS part of a [`NatsConsumer`]: a client and what to subscribe to.
pub struct NatsSubscription {
    client: async_nats::Client,
    subject: String,
    queue_group: Option<String>,
    events: Option<ClientEvents>,
}

impl fmt::Debug for NatsSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsSubscription")
            .field("subject", &self.subject)
            .field("queue_group", &self.queue_group)
            .finish_non_exhaustive()
    }
}

impl NatsConsumer {
    /// Subscribes `client` to `subject` (wildcards allowed) when it runs: every consumer of
    /// the subject gets every message.
    pub fn subscribe(client: async_nats::Client, subject: impl Into<String>) -> Self {
        Self::with_subscription(client, subject.into(), None)
    }

    /// Subscribes `client` to `subject` in `queue_group` when it runs: each message goes to
    /// one consumer of the group. The queue group is the `messaging.consumer.group.name`.
    pub fn queue_subscribe(
        client: async_nats::Client,
        subject: impl Into<String>,
        queue_group: impl Into<String>,
    ) -> Self {
        Self::with_subscription(client, subject.into(), Some(queue_group.into()))
    }

    fn with_subscription(
        client: async_nats::Client,
        subject: String,
        queue_group: Option<String>,
    ) -> Self {
        Consumer::with(
            NatsSubscription {
                client,
                subject,
                queue_group,
                events: None,
            },
            Options::DEFAULT,
        )
    }
}

impl<C, D> Consumer<NatsSubscription, C, D> {
    /// Counts the client's slow-consumer drops of this subscription in
    /// `messaging_consumer_dropped_messages_total`: `events` must be the client's event
    /// callback (see [`ClientEvents`]).
    pub fn client_events(mut self, events: &ClientEvents) -> Self {
        self.adapter.events = Some(events.clone());
        self
    }

    /// The client.
    pub fn client(&self) -> &async_nats::Client {
        &self.adapter.client
    }
}

impl Adapter for NatsSubscription {
    type Message = NatsMessage;
    type Mode = Unordered<NatsSource, NatsSettler>;

    fn system(&self) -> &'static str {
        NATS
    }

    fn group(&self) -> &str {
        self.queue_group.as_deref().unwrap_or_default()
    }

    async fn open(self, opening: Opening) -> Result<Self::Mode, ConsumeError> {
        let subscribed = match &self.queue_group {
            Some(group) => {
                self.client
                    .queue_subscribe(self.subject.clone(), group.clone())
                    .await
            }
            None => self.client.subscribe(self.subject.clone()).await,
        };
        let subscriber = subscribed.map_err(|e| ConsumeError::Broker(Box::new(e)))?;
        let reporter = opening.reporter().clone();
        let registration = self.events.as_ref().and_then(|events| {
            let sid = sid_of(&subscriber);
            if sid.is_none() {
                tracing::warn!("cannot tell this client's subscription ids: slow-consumer drops are not counted");
            }
            sid.map(|sid| events.register(sid, reporter.clone(), &self.subject))
        });
        let origin = Arc::new(Origin::new(self.group(), "", server_address(&self.client)));
        let stop = Arc::new(Stop::default());
        let monitor = Monitor::start(self.client.clone(), reporter.clone(), "nats", None);
        Ok(Unordered {
            source: NatsSource {
                subscriber: Some(subscriber),
                subject: self.subject,
                origin,
                stop: Arc::clone(&stop),
                reporter,
                _registration: registration,
                _monitor: monitor,
            },
            settler: NatsSettler { stop },
        })
    }
}

/// A core subscription's messages.
pub struct NatsSource {
    subscriber: Option<async_nats::Subscriber>,
    subject: String,
    origin: Arc<Origin>,
    stop: Arc<Stop>,
    reporter: Reporter,
    _registration: Option<Registration>,
    _monitor: Monitor,
}

impl fmt::Debug for NatsSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsSource")
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

impl NatsSource {
    /// Unsubscribes; what the subscription held and no handler got is lost, and counted.
    fn close(&mut self) {
        let Some(mut subscriber) = self.subscriber.take() else {
            return;
        };
        let mut lost = 0u64;
        while let Some(Some(_)) = subscriber.next().now_or_never() {
            lost += 1;
        }
        if lost > 0 {
            tracing::info!(
                subject = self.subject, lost,
                "messages received but not handled when the consumer stopped: core NATS cannot deliver them again"
            );
            self.reporter.dropped(&self.subject, None, lost);
        }
        // Dropping the subscriber unsubscribes.
    }
}

impl UnorderedSource for NatsSource {
    type Message = NatsMessage;

    async fn next(&mut self) -> Option<Result<NatsMessage, BoxError>> {
        let subscriber = self.subscriber.as_mut()?;
        match self.stop.or(subscriber.next()).await {
            None => {
                self.close();
                None
            }
            Some(Some(message)) => Some(Ok(NatsMessage::new(message, Arc::clone(&self.origin)))),
            Some(None) => {
                self.subscriber = None;
                Some(Err(
                    "the NATS subscription ended: the client was closed or gave up reconnecting"
                        .into(),
                ))
            }
        }
    }
}

impl Drop for NatsSource {
    fn drop(&mut self) {
        self.close();
    }
}

/// Carries out decisions on core NATS, where nothing is settled with the server.
#[derive(Debug)]
pub struct NatsSettler {
    stop: Arc<Stop>,
}

impl UnorderedSettler<NatsMessage> for NatsSettler {
    async fn settle(&self, message: &NatsMessage, decision: Decision) -> Result<(), BoxError> {
        match decision {
            // Done, or (a dead letter) published elsewhere by the core first; a retry never
            // comes here, the core retried in process.
            Decision::Ack | Decision::DeadLetter | Decision::Retry { .. } => {}
            Decision::Reject => {
                tracing::warn!(
                    subject = message.subject(),
                    "message rejected: dropped (core NATS keeps no copy)"
                );
            }
            Decision::Stop => self.stop.raise(),
        }
        Ok(())
    }

    fn redelivers(&self) -> bool {
        false
    }
}
