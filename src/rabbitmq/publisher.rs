use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{Channel, Confirmation, ConnectionProperties};
use tower_service::Service;

use super::carrier;
use super::config::ServerAddress;
use super::error::{PublishError, RabbitErrorClassifier};
use super::future::ResponseFuture;
use super::link::{Link, Owned};
use super::record::{RabbitReceipt, RabbitRecord};
use crate::metrics::Metrics;
use crate::publish::PublishLayer;

/// The [`PublishLayer`] for a [`RabbitPublisher`]: records into `metrics`, and a failed
/// publish's `error.type` names what went wrong (`NO_ROUTE`, `nack`, `timeout`,
/// `NOT_FOUND`, ..., see [`PublishError::error_type`]) instead of the error's type name.
///
/// Shorthand for `PublishLayer::new(metrics).classify_errors(RabbitErrorClassifier)`.
pub fn publish_layer(metrics: Metrics) -> PublishLayer<RabbitErrorClassifier> {
    PublishLayer::new(metrics).classify_errors(RabbitErrorClassifier)
}

/// How long a publish may take, by default, until the broker confirmed it.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// How often one publish waits for its channel to recover before it fails.
const MAX_RECOVERIES: u32 = 3;
/// RabbitMQ's default `frame_max`, which lapin accepts unless the broker offers less.
pub(crate) const DEFAULT_FRAME_MAX: u32 = 131_072;
/// Type, channel and size before a frame's payload, and its end octet.
const FRAME_OVERHEAD: usize = 8;

/// Publishes [`RabbitRecord`]s on your lapin [`Channel`] with publisher confirms; resolves with a
/// [`RabbitReceipt`] once the broker confirmed.
///
/// Wrap it in [`publish_layer`] to trace and measure: the `send` span then ends at the confirm.
/// A publish fails when the broker nacks it (`nack`), returns it unrouted (`NO_ROUTE`, for a
/// mandatory record, the default), closes the channel over it (`NOT_FOUND` for a missing
/// exchange, ...), when the channel or connection is down (`channel_closed`, `connection`), or
/// when no confirm came within the [timeout](Self::timeout) (default 30 s): never a hang.
///
/// After a broker restart or a lost connection:
/// - a publisher made with [`connect`](Self::connect) owns its connection and replaces it: a
///   publish that finds it broken waits (within the timeout) for a new one, made by one
///   background task that tries again with a doubling delay. This is the reliable way to
///   resume by itself.
/// - on your channel ([`new`](Self::new)), of a connection made with lapin's
///   `enable_auto_recover()`, a publish that meets the channel recovering waits for it (within
///   the timeout) and is sent then. lapin 4.12 resumes most outages so, but not all: its I/O
///   loop can stall after a connection reset when a publish is queued in the same instant,
///   and then publishes fail with `timeout` until you give the publisher a new channel.
///   Without auto-recover every publish fails at once with `connection` or `channel_closed`
///   until then.
///
/// Each message is handed to lapin in [`call`](Service::call), so messages go out in the order
/// of the calls. lapin has no window of unconfirmed publishes: [`poll_ready`](Service::poll_ready)
/// is always ready. Bound how many are in flight with `tower::limit::ConcurrencyLimitLayer` if
/// callers may outpace the broker.
///
/// The AMQP properties and headers of a message travel in one frame: a record whose headers
/// do not fit the connection's `frame_max` (128 KiB on RabbitMQ by default) is refused with
/// `invalid_record` before anything is sent, instead of making the broker close the whole
/// connection (`FRAME_ERROR`), every channel on it with it.
#[derive(Clone)]
pub struct RabbitPublisher {
    link: Link,
    timeout: Duration,
    frame_max: u32,
    server: Option<Arc<ServerAddress>>,
}

impl fmt::Debug for RabbitPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitPublisher")
            .field("channel", &self.link.current_channel().id())
            .field("own_connection", &matches!(self.link, Link::Owned(_)))
            .field("timeout", &self.timeout)
            .field("frame_max", &self.frame_max)
            .field("server", &self.server)
            .finish()
    }
}

impl RabbitPublisher {
    /// Publishes on `channel`, which this puts in confirm mode (`confirm.select`) if it is not
    /// yet.
    ///
    /// # Errors
    ///
    /// When the broker refuses confirm mode or the channel is closed.
    pub async fn new(channel: Channel) -> Result<Self, PublishError> {
        if !channel.status().confirm() {
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(PublishError::client)?;
        }
        Ok(Self {
            link: Link::Given(channel),
            timeout: DEFAULT_TIMEOUT,
            frame_max: DEFAULT_FRAME_MAX,
            server: None,
        })
    }

    /// Connects to `uri` and publishes on a channel of a connection of its own, which it
    /// replaces when it breaks (see the type's documentation). The `send` spans name the
    /// broker (`server.address`, `server.port`) from `uri`.
    ///
    /// lapin's `enable_auto_recover` is not needed and would only compete with the
    /// publisher's own reconnection. A `heartbeat` in the URI (`?heartbeat=10`) bounds how long
    /// a broker that stops answering goes unnoticed.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use eventscope::rabbitmq::{self, RabbitPublisher, RabbitRecord};
    /// use eventscope::metrics::Metrics;
    /// use tower::{Layer, Service, ServiceExt};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let publisher = RabbitPublisher::connect("amqp://guest:guest@127.0.0.1:5672/%2f").await?;
    /// let mut publisher = rabbitmq::publish_layer(Metrics::new()).layer(publisher);
    /// publisher
    ///     .ready()
    ///     .await?
    ///     .call(RabbitRecord::to_queue("orders", b"{}".to_vec()))
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// When the first connection, its channel or confirm mode fails.
    pub async fn connect(uri: &str) -> Result<Self, PublishError> {
        Self::connect_with(uri, ConnectionProperties::default()).await
    }

    /// [`connect`](Self::connect) with lapin connection properties: a connection name, a TLS
    /// configuration, ...
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect).
    pub async fn connect_with(
        uri: &str,
        properties: ConnectionProperties,
    ) -> Result<Self, PublishError> {
        let owned = Owned::connect(uri, properties)
            .await
            .map_err(PublishError::client)?;
        Ok(Self {
            link: Link::Owned(Arc::new(owned)),
            timeout: DEFAULT_TIMEOUT,
            frame_max: DEFAULT_FRAME_MAX,
            server: ServerAddress::from_uri(uri).map(Arc::new),
        })
    }

    /// For a publisher that owns its connection ([`connect`](Self::connect)): the most time
    /// between two attempts to connect again (default 5 s; the first comes after 100 ms, and
    /// the delay doubles). Does nothing for a publisher on your channel.
    pub fn max_reconnect_delay(self, delay: Duration) -> Self {
        if let Link::Owned(owned) = &self.link {
            owned.set_max_delay(delay);
        }
        self
    }

    /// How long a publish may take until the broker confirmed it (default 30 s); after it the
    /// publish fails with `timeout` (the message may still reach the broker).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The connection's `frame_max` (`Connection::configuration().frame_max()`), when the
    /// broker is configured with another than RabbitMQ's default of 131 072 bytes: records
    /// whose headers do not fit one frame are refused before they are sent.
    pub fn frame_max(mut self, bytes: u32) -> Self {
        self.frame_max = bytes;
        self
    }

    /// Names the broker in the `send` spans (`server.address`, `server.port`), from the URI
    /// the channel's connection was made with. Only host and port are kept, never the
    /// password; a URI that is not `amqp://` or `amqps://` is ignored.
    pub fn server_uri(mut self, uri: &str) -> Self {
        self.server = ServerAddress::from_uri(uri).map(Arc::new);
        self
    }

    /// The channel publishes go out on now (for a publisher that owns its connection, the
    /// current connection's).
    pub fn channel(&self) -> Channel {
        self.link.current_channel()
    }
}

impl Service<RabbitRecord> for RabbitPublisher {
    type Response = RabbitReceipt;
    type Error = PublishError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, record: RabbitRecord) -> Self::Future {
        ResponseFuture::start(publish(
            self.link.clone(),
            record,
            self.timeout,
            self.frame_max,
            self.server.clone(),
        ))
    }
}

/// Publishes `record` and waits for the broker's confirm, all within `timeout`.
async fn publish(
    link: Link,
    record: RabbitRecord,
    timeout: Duration,
    frame_max: u32,
    server: Option<Arc<ServerAddress>>,
) -> Result<RabbitReceipt, PublishError> {
    let now = SystemTime::now();
    let confirmed = async {
        let (mut exchange, mut routing_key) =
            record.names().map_err(PublishError::invalid_record)?;
        let options = BasicPublishOptions {
            mandatory: record.mandatory,
            immediate: false,
        };
        let mut recoveries = 0;
        let (mut channel, mut generation) = link.channel().await.map_err(PublishError::client)?;
        let confirm = loop {
            let properties = record.amqp_properties(now);
            if carrier::content_header_len(&properties) + FRAME_OVERHEAD > frame_max as usize {
                return Err(PublishError::invalid_record(
                    "its properties and headers do not fit one AMQP frame (frame_max)",
                ));
            }
            match channel
                .basic_publish(exchange, routing_key, options, &record.payload, properties)
                .await
            {
                Ok(confirm) => break confirm,
                Err(error) => {
                    // Not written: when the channel recovers (lapin's auto-recover) or the
                    // publisher's own connection is replaced, send it then; otherwise this is
                    // the error.
                    recoveries += 1;
                    if recoveries > MAX_RECOVERIES {
                        return Err(PublishError::client(error));
                    }
                    (channel, generation) = link
                        .after_failure(&channel, generation, error)
                        .await
                        .map_err(PublishError::client)?;
                    (exchange, routing_key) =
                        record.names().map_err(PublishError::invalid_record)?;
                }
            }
        };
        match confirm.await.map_err(PublishError::client)? {
            Confirmation::Ack(None) => Ok(RabbitReceipt { server }),
            Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => Err(
                PublishError::returned(returned.reply_code, returned.reply_text.as_str()),
            ),
            Confirmation::Nack(None) => Err(PublishError::nack()),
            Confirmation::NotRequested => Err(PublishError::not_confirmed()),
        }
    };
    match tokio::time::timeout(timeout, confirmed).await {
        Ok(outcome) => outcome,
        Err(_elapsed) => Err(PublishError::timeout(timeout)),
    }
}
