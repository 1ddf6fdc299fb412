use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    BasicRejectOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::task::JoinHandle;

use super::carrier;
use super::config::{ServerAddress, Settings, DEFAULT_LAG_INTERVAL, DEFAULT_MAX_RECONNECT_DELAY};
use super::error::ConfigError;
use super::lag::Lag;
use super::record::{receive_destination, Origin, RabbitMessage, Received};
use crate::classify::{Classifier, Decision};
use crate::consume::{
    Adapter, ConsumeError, Consumer, Opening, Options, Reporter, Unordered, UnorderedSettler,
    UnorderedSource,
};
use crate::header;
use crate::message::system::RABBITMQ;
use crate::BoxError;

/// Consumes a RabbitMQ queue, run by the [consumer core](crate::consume); see the
/// [module docs](super).
///
/// Built with `RabbitConsumer::new` from the URI to connect to and the queue: the consumer
/// opens a connection of its own when it runs (RabbitMQ advises against consuming and
/// publishing on one connection) and, after a loss, opens a new one by itself, however long
/// the broker is away. Up to [`max_concurrency`](Consumer::max_concurrency) messages are
/// handled at once, and the broker hands out no more than that (`basic.qos` prefetch); each is
/// settled on its own as SPEC §7 says: `Ack` is `basic.ack`; `Retry { after }` is `basic.nack`
/// with requeue after `after`; `Reject` is `basic.reject` without requeue (to the queue's
/// dead-letter exchange, if it has one); `Stop` is `basic.nack` with requeue, and the consumer
/// cancels its subscription and returns [`ConsumeError::Stopped`]; `DeadLetter` (the copy is
/// published by then) is `basic.ack`.
pub type RabbitConsumer<C = Classifier> = Consumer<RabbitSubscription, C>;

/// The RabbitMQ part of a [`RabbitConsumer`]: where to connect, and the queue.
pub struct RabbitSubscription {
    settings: Settings,
}

impl fmt::Debug for RabbitSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitSubscription")
            .field("settings", &self.settings)
            .finish()
    }
}

impl RabbitConsumer {
    /// A consumer of `queue` on the broker at `uri` (`amqp://user:password@host:port/vhost`,
    /// as lapin reads it, with its query parameters). Without a `heartbeat` parameter the
    /// consumer asks for a heartbeat every 10 s, so a broker that stops answering is noticed
    /// within 20 s (RabbitMQ offers 60 s, two minutes to notice). The queue must exist:
    /// declare it as your application does.
    ///
    /// ```
    /// use std::time::Duration;
    /// use eventscope::rabbitmq::RabbitConsumer;
    ///
    /// # fn main() -> Result<(), eventscope::rabbitmq::error::ConfigError> {
    /// let consumer = RabbitConsumer::new("amqp://guest:guest@127.0.0.1:5672/%2f", "billing")?
    ///     .max_concurrency(32)
    ///     .lag_interval(Duration::from_secs(10));
    /// assert_eq!(consumer.queue(), "billing");
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`ConfigError::InvalidUri`] when lapin cannot read `uri`;
    /// [`ConfigError::QueueNameTooLong`] for a queue name over 255 bytes.
    pub fn new(uri: &str, queue: &str) -> Result<Self, ConfigError> {
        let mut parsed: AMQPUri = uri.parse().map_err(|error: String| {
            // lapin's message may quote the URI, password and all.
            ConfigError::InvalidUri(if error.contains(uri) {
                "lapin cannot parse it".to_owned()
            } else {
                error
            })
        })?;
        parsed.query.heartbeat = parsed.query.heartbeat.or(Some(DEFAULT_HEARTBEAT));
        let server = ServerAddress::from_uri(uri);
        if server.is_none() {
            return Err(ConfigError::InvalidUri(
                "the scheme must be amqp or amqps".to_owned(),
            ));
        }
        let queue_name =
            ShortString::try_new(queue).map_err(|_| ConfigError::QueueNameTooLong(queue.len()))?;
        Ok(Consumer::with(
            RabbitSubscription {
                settings: Settings {
                    uri: parsed,
                    properties: ConnectionProperties::default(),
                    queue: Arc::from(queue),
                    queue_name,
                    server: server.map(Arc::new),
                    lag_interval: DEFAULT_LAG_INTERVAL,
                    max_reconnect_delay: DEFAULT_MAX_RECONNECT_DELAY,
                },
            },
            Options::DEFAULT,
        ))
    }
}

impl<C> Consumer<RabbitSubscription, C> {
    /// The queue consumed.
    pub fn queue(&self) -> &str {
        &self.adapter.settings.queue
    }

    /// Connects with these properties (a connection name, client properties, an auth
    /// provider). Leave lapin's `enable_auto_recover` off: the consumer reconnects itself.
    pub fn connection_properties(mut self, properties: ConnectionProperties) -> Self {
        self.adapter.settings.properties = properties;
        self
    }

    /// How often the queue's ready count is read for `messaging_consumer_lag_messages`
    /// (default 5 s).
    pub fn lag_interval(mut self, interval: Duration) -> Self {
        self.adapter.settings.lag_interval = interval.max(Duration::from_millis(10));
        self
    }

    /// The longest wait between two attempts to reconnect after the connection was lost
    /// (default 5 s); the first attempt comes after 100 ms and the waits double up to this.
    pub fn max_reconnect_delay(mut self, delay: Duration) -> Self {
        self.adapter.settings.max_reconnect_delay = delay.max(Duration::from_millis(10));
        self
    }
}

/// How long one connection attempt may take (connect, channel, qos, consume).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// The heartbeat asked for when the URI names none, in seconds.
const DEFAULT_HEARTBEAT: u16 = 10;
/// How long cancelling the subscription and closing may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// The first wait before reconnecting.
const FIRST_RECONNECT_DELAY: Duration = Duration::from_millis(100);
/// Destinations whose messages came without ids, logged once each, at most.
const MAX_ANONYMOUS_LOGGED: usize = 1000;
/// Distinct (exchange, routing key) origins kept for reuse.
const MAX_ORIGINS: usize = 256;

impl Adapter for RabbitSubscription {
    type Message = RabbitMessage;
    type Mode = Unordered<RabbitSource, RabbitSettler>;

    fn system(&self) -> &'static str {
        RABBITMQ
    }

    fn group(&self) -> &str {
        &self.settings.queue
    }

    /// Connects, sets the prefetch to `max_concurrency` and subscribes to the queue.
    async fn open(self, opening: Opening) -> Result<Self::Mode, ConsumeError> {
        let settings = Arc::new(self.settings);
        let prefetch = u16::try_from(opening.max_concurrency()).unwrap_or(u16::MAX);
        let live = match tokio::time::timeout(CONNECT_TIMEOUT, connect(&settings, prefetch)).await {
            Ok(Ok(live)) => live,
            Ok(Err(error)) => return Err(ConsumeError::Broker(Box::new(error))),
            Err(_) => {
                return Err(ConsumeError::Broker(
                    format!("connecting to RabbitMQ took over {CONNECT_TIMEOUT:?}").into(),
                ))
            }
        };
        tracing::debug!(queue = %settings.queue, prefetch, "rabbitmq consumer subscribed");
        let lag = Arc::new(Lag::new(
            settings.queue_name.clone(),
            settings.lag_interval,
            opening.reporter().clone(),
        ));
        lag.connected(Some(Arc::clone(&live.connection)));
        opening.reporter().connected(true);
        let lag_task = tokio::spawn(Arc::clone(&lag).run());
        let source = RabbitSource {
            settings,
            prefetch,
            state: State::Live(live),
            reporter: opening.reporter().clone(),
            lag,
            lag_task,
            origins: Vec::new(),
            last_index: None,
            last_origin: None,
            anonymous: HashSet::new(),
        };
        Ok(Unordered {
            source,
            settler: RabbitSettler { _private: () },
        })
    }
}

/// A subscription that delivers.
struct Live {
    connection: Arc<Connection>,
    channel: Channel,
    consumer: lapin::Consumer,
    alive: Arc<Alive>,
}

/// Whether a subscription's connection still stands, as its deliveries' settles see it.
///
/// lapin answers the acknowledgement of a delivery whose channel closed at once (`Ok(false)`),
/// but nothing promises that one already on its way when the connection fails, or written into
/// a connection that stopped answering, resolves. A settle holds a permit of the core, and a
/// consumer whose permits all wait is silent: so a settle also ends when the source marks the
/// connection lost, which it does as soon as it sees the loss (a broker that stops answering
/// within two heartbeats, 20 s by default).
#[derive(Debug, Default)]
pub(crate) struct Alive {
    lost: std::sync::atomic::AtomicBool,
    changed: tokio::sync::Notify,
}

impl Alive {
    fn lose(&self) {
        self.lost.store(true, std::sync::atomic::Ordering::Release);
        self.changed.notify_waiters();
    }

    fn is_lost(&self) -> bool {
        self.lost.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Resolves once the connection is lost.
    async fn lost(&self) {
        let changed = self.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if !self.is_lost() {
            changed.await;
        }
    }
}

/// Opens a connection, a channel with the prefetch, and the subscription.
async fn connect(settings: &Settings, prefetch: u16) -> lapin::Result<Live> {
    let connection =
        Connection::connect_uri(settings.uri.clone(), settings.properties.clone()).await?;
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let consumer = channel
        .basic_consume(
            settings.queue_name.clone(),
            ShortString::default(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(Live {
        connection: Arc::new(connection),
        channel,
        consumer,
        alive: Arc::default(),
    })
}

enum State {
    Live(Live),
    /// The connection was lost at `since`; `task` opens a new one.
    Reconnecting {
        since: Instant,
        task: JoinHandle<(Live, u32)>,
    },
    /// The core stopped pulling; the subscription is cancelled and closes on drop.
    Stopped(Option<Live>),
}

/// The deliveries of a [`RabbitConsumer`], reconnecting when the connection is lost.
pub struct RabbitSource {
    settings: Arc<Settings>,
    prefetch: u16,
    state: State,
    reporter: Reporter,
    lag: Arc<Lag>,
    lag_task: JoinHandle<()>,
    /// What the deliveries of each exchange and routing key share.
    origins: Vec<(ShortString, ShortString, Arc<Origin>)>,
    /// The origin of the previous delivery, in `origins`.
    last_index: Option<usize>,
    /// The origin the lag was last told of.
    last_origin: Option<Arc<Origin>>,
    /// Destinations whose messages came without an id, logged once.
    anonymous: HashSet<Arc<str>>,
}

impl fmt::Debug for RabbitSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Live(_) => "consuming",
            State::Reconnecting { .. } => "reconnecting",
            State::Stopped(_) => "stopped",
        };
        f.debug_struct("RabbitSource")
            .field("queue", &self.settings.queue)
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl RabbitSource {
    /// The origin of deliveries from `exchange` with `routing_key`: most deliveries come
    /// the way the one before came, which is looked at first.
    fn origin(&mut self, exchange: &ShortString, routing_key: &ShortString) -> Arc<Origin> {
        let same =
            |(e, k, _): &(ShortString, ShortString, Arc<Origin>)| e == exchange && k == routing_key;
        let found = match self.last_index {
            Some(last) if self.origins.get(last).is_some_and(same) => Some(last),
            _ => self.origins.iter().position(same),
        };
        if let Some(index) = found {
            self.last_index = Some(index);
            return Arc::clone(&self.origins[index].2);
        }
        let origin = Arc::new(Origin {
            destination: Arc::from(receive_destination(
                exchange.as_str(),
                routing_key.as_str(),
                &self.settings.queue,
            )),
            queue: Arc::from(&*self.settings.queue),
            server: self.settings.server.clone(),
        });
        if self.origins.len() < MAX_ORIGINS {
            self.origins
                .push((exchange.clone(), routing_key.clone(), Arc::clone(&origin)));
            self.last_index = Some(self.origins.len() - 1);
        }
        origin
    }

    /// A delivery of the subscription `alive` tells about, as the handler gets it.
    fn received(&mut self, delivery: Delivery, alive: Arc<Alive>) -> RabbitMessage {
        let origin = self.origin(&delivery.exchange, &delivery.routing_key);
        if !self
            .last_origin
            .as_ref()
            .is_some_and(|last| Arc::ptr_eq(last, &origin))
        {
            self.lag.delivered_from(&origin.destination);
            self.last_origin = Some(Arc::clone(&origin));
        }
        let properties = &delivery.properties;
        let mut scanned = carrier::scan(properties.headers().as_ref());
        let property_id = properties.message_id().as_ref().map(ShortString::as_str);
        let usable_property = property_id.is_some_and(header::id_ok);
        if !scanned.message_id && property_id.is_some() && !usable_property {
            // An unusable native id is an unreadable id (SPEC §2): counted, replaced below.
            scanned.unreadable += 1;
        }
        self.reporter.unreadable_headers(scanned.unreadable);
        let fresh_id = (!scanned.message_id && !usable_property).then(|| {
            if self.anonymous.len() < MAX_ANONYMOUS_LOGGED
                && self.anonymous.insert(Arc::clone(&origin.destination))
            {
                tracing::info!(
                    destination = %origin.destination,
                    "messages without a message id: each gets a fresh one on receipt, so its follow-ups name their cause"
                );
            }
            crate::message::new_id().into_boxed_str()
        });
        let created = carrier::created_at(scanned.timestamp_ms, *properties.timestamp());
        let attempt = match scanned.delivery_count {
            Some(count) => u32::try_from(count.max(0))
                .unwrap_or(u32::MAX)
                .saturating_add(1),
            None if delivery.redelivered => 2,
            None => 1,
        };
        RabbitMessage {
            origin,
            attempt,
            received: Arc::new(Received {
                delivery,
                alive,
                fresh_id,
                correlation_header: scanned.correlation_header,
                created,
            }),
        }
    }

    /// The connection or the subscription ended: reconnect in the background.
    fn lost(&mut self, error: Option<lapin::Error>) {
        match &error {
            Some(error) if matches!(error.kind(), lapin::ErrorKind::ParsingError(_)) => {
                tracing::error!(
                    queue = %self.settings.queue, %error,
                    "lapin could not read a delivery and closed the connection: most likely a \
                     header name or a short-string property (message_id, correlation_id, type, \
                     ...) that is not UTF-8, which RabbitMQ passes on but lapin cannot read. \
                     The message goes back to the queue and will fail again on every consumer \
                     built on lapin: move it away with another client (or purge the queue)"
                );
            }
            Some(error) => tracing::warn!(
                queue = %self.settings.queue, %error,
                "rabbitmq consumer lost its connection; reconnecting"
            ),
            None => tracing::warn!(
                queue = %self.settings.queue,
                "rabbitmq consumer's subscription ended (queue deleted, channel or connection closed); reconnecting"
            ),
        }
        self.lag.connected(None);
        self.reporter.connected(false);
        let old = std::mem::replace(
            &mut self.state,
            State::Reconnecting {
                since: Instant::now(),
                task: tokio::spawn(reconnect(
                    Arc::clone(&self.settings),
                    self.prefetch,
                    Arc::clone(&self.lag),
                )),
            },
        );
        if let State::Live(live) = old {
            live.alive.lose();
            close_in_background(live);
        }
    }
}

/// Reconnects until it succeeds, waiting longer after each failed attempt; returns the new
/// subscription and the attempts it took.
async fn reconnect(settings: Arc<Settings>, prefetch: u16, lag: Arc<Lag>) -> (Live, u32) {
    let mut delay = FIRST_RECONNECT_DELAY;
    let mut attempts = 0u32;
    loop {
        // Full jitter: consumers of a restarted broker do not all come back at once.
        tokio::time::sleep(delay.mul_f64(0.5 + fastrand::f64() / 2.0)).await;
        attempts = attempts.saturating_add(1);
        let failure =
            match tokio::time::timeout(CONNECT_TIMEOUT, connect(&settings, prefetch)).await {
                Ok(Ok(live)) => return (live, attempts),
                Ok(Err(error)) => {
                    if super::lag::not_found(&error) {
                        lag.queue_missing(&error);
                    }
                    error.to_string()
                }
                Err(_) => format!("no answer within {CONNECT_TIMEOUT:?}"),
            };
        // The first failure and then one in ten: a long outage does not flood the log.
        if attempts == 1 || attempts % 10 == 0 {
            tracing::warn!(
                queue = %settings.queue, attempts, error = %failure,
                "rabbitmq consumer cannot reconnect yet; trying again"
            );
        } else {
            tracing::debug!(queue = %settings.queue, attempts, error = %failure, "reconnect attempt failed");
        }
        delay = (delay * 2).min(settings.max_reconnect_delay);
    }
}

/// Closes a subscription's channel, then its connection, without waiting for either.
fn close_in_background(live: Live) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        // Dropped outside a runtime: dropping the handles closes them.
        return;
    };
    runtime.spawn(async move {
        let close = async {
            if live.channel.status().connected() {
                let _ = live.channel.close(200, "OK".into()).await;
            }
            let _ = live.connection.close(200, "OK".into()).await;
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, close).await;
    });
}

impl UnorderedSource for RabbitSource {
    type Message = RabbitMessage;

    async fn next(&mut self) -> Option<Result<RabbitMessage, BoxError>> {
        loop {
            match &mut self.state {
                State::Live(live) => match live.consumer.next().await {
                    Some(Ok(delivery)) => {
                        if delivery.acker.poisoned() {
                            // From a channel that is gone: it cannot be settled, and the broker
                            // delivers it again. Handling it now would only do it twice.
                            tracing::debug!(queue = %self.settings.queue, "skipping a delivery of a closed channel");
                            continue;
                        }
                        let alive = Arc::clone(&live.alive);
                        return Some(Ok(self.received(delivery, alive)));
                    }
                    Some(Err(error)) => self.lost(Some(error)),
                    None => self.lost(None),
                },
                State::Reconnecting { since, task } => {
                    let since = *since;
                    match (&mut *task).await {
                        Ok((live, attempts)) => {
                            tracing::info!(
                                queue = %self.settings.queue, attempts, down_for = ?since.elapsed(),
                                "rabbitmq consumer reconnected and consumes again"
                            );
                            self.reporter.reconnected(1);
                            self.reporter.connected(true);
                            self.lag.connected(Some(Arc::clone(&live.connection)));
                            // The lag hears of the next delivery's destination again.
                            self.last_origin = None;
                            self.state = State::Live(live);
                        }
                        Err(error) => {
                            // The reconnect task panicked: start another.
                            tracing::error!(queue = %self.settings.queue, %error, "reconnecting failed; trying again");
                            *task = tokio::spawn(reconnect(
                                Arc::clone(&self.settings),
                                self.prefetch,
                                Arc::clone(&self.lag),
                            ));
                        }
                    }
                }
                State::Stopped(_) => return None,
            }
        }
    }

    /// Cancels the subscription, so nothing more is delivered while running handlers drain,
    /// and hands back what lapin had buffered (requeued at once, for other consumers).
    async fn stop(&mut self) {
        let live = match std::mem::replace(&mut self.state, State::Stopped(None)) {
            State::Live(live) => live,
            State::Reconnecting { task, .. } => {
                task.abort();
                return;
            }
            State::Stopped(live) => {
                self.state = State::Stopped(live);
                return;
            }
        };
        let mut live = live;
        let cancel = live
            .channel
            .basic_cancel(live.consumer.tag(), BasicCancelOptions::default());
        if let Ok(Ok(())) = tokio::time::timeout(CLOSE_TIMEOUT, cancel).await {
            let mut requeued = 0;
            while let Some(Some(Ok(delivery))) = live.consumer.next().now_or_never() {
                let _ = delivery
                    .acker
                    .nack(BasicNackOptions {
                        multiple: false,
                        requeue: true,
                    })
                    .await;
                requeued += 1;
            }
            tracing::debug!(queue = %self.settings.queue, requeued, "rabbitmq subscription cancelled");
        }
        self.state = State::Stopped(Some(live));
    }
}

impl Drop for RabbitSource {
    fn drop(&mut self) {
        self.lag_task.abort();
        self.lag.connected(None);
        match std::mem::replace(&mut self.state, State::Stopped(None)) {
            State::Live(live) | State::Stopped(Some(live)) => {
                live.alive.lose();
                close_in_background(live);
            }
            State::Reconnecting { task, .. } => task.abort(),
            State::Stopped(None) => {}
        }
    }
}

/// Settles each delivery with its decision (SPEC §7).
pub struct RabbitSettler {
    _private: (),
}

impl fmt::Debug for RabbitSettler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RabbitSettler")
    }
}

impl UnorderedSettler<RabbitMessage> for RabbitSettler {
    async fn settle(&self, message: &RabbitMessage, decision: Decision) -> Result<(), BoxError> {
        if let Decision::Retry { after } = decision {
            tokio::time::sleep(after).await;
        }
        let alive = &message.received.alive;
        if alive.is_lost() {
            return Err(GONE.into());
        }
        tokio::select! {
            settled = send(message, decision) => settled,
            () = alive.lost() => Err(GONE.into()),
        }
    }
}

/// Why a delivery of a lost connection cannot be settled.
const GONE: &str = "not settled: the delivery's connection is gone (the broker delivers it again)";

/// Sends the acknowledgement `decision` asks for.
async fn send(message: &RabbitMessage, decision: Decision) -> Result<(), BoxError> {
    let acker = &message.received.delivery.acker;
    let requeue = BasicNackOptions {
        multiple: false,
        requeue: true,
    };
    let sent = match decision {
        // A dead-lettered message was published to its dead-letter queue first: it is done.
        Decision::Ack | Decision::DeadLetter => acker.ack(BasicAckOptions::default()).await,
        Decision::Retry { .. } => acker.nack(requeue).await,
        Decision::Reject => acker.reject(BasicRejectOptions { requeue: false }).await,
        // `Stop`, and whatever a later decision may be: back to the queue.
        _ => acker.nack(requeue).await,
    };
    match sent {
        Ok(true) => Ok(()),
        // lapin sends nothing for a channel that closed since the delivery.
        Ok(false) => Err(
            "not settled: the delivery's channel is closed (the broker delivers it again)".into(),
        ),
        Err(error) => Err(Box::new(error)),
    }
}
