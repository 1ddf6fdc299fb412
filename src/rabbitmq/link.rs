//! The channel a [`RabbitPublisher`](super::RabbitPublisher) publishes on: the caller's, or
//! one on a connection of the publisher's own, which it replaces when it breaks.
//!
//! lapin's own auto-recover resumes most outages, but not all: with lapin 4.12 its I/O loop
//! can stall after a connection reset when a publish is queued in the same instant, and then
//! never reconnects. A connection the publisher made itself is instead replaced by a new one,
//! made by one background task with a doubling delay, as the consumer replaces its own.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::sync::watch;

/// The first delay between attempts to connect again; it doubles up to the maximum.
const FIRST_RECONNECT_DELAY: Duration = Duration::from_millis(100);
/// The maximum delay between attempts to connect again, unless set.
const DEFAULT_MAX_RECONNECT_DELAY: Duration = Duration::from_secs(5);
/// How long one attempt to connect may take (a broker that accepts TCP but does not answer).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a publish gets its channel.
#[derive(Clone)]
pub(crate) enum Link {
    /// The caller's channel; with lapin's auto-recover a publish waits for it to recover.
    Given(Channel),
    /// A channel on a connection of the publisher's own.
    Owned(Arc<Owned>),
}

impl Link {
    /// The channel to publish on now, and its generation (always 0 for a given channel).
    ///
    /// An owned channel that is no longer connected is replaced first: this waits for the
    /// new connection (the caller bounds the wait with its timeout).
    pub(crate) async fn channel(&self) -> lapin::Result<(Channel, u64)> {
        match self {
            Self::Given(channel) => Ok((channel.clone(), 0)),
            Self::Owned(owned) => owned.usable().await,
        }
    }

    /// After a publish on `channel` of `generation` failed with `error`: the channel to try
    /// again on, or the error when there is none.
    pub(crate) async fn after_failure(
        &self,
        channel: &Channel,
        generation: u64,
        error: lapin::Error,
    ) -> lapin::Result<(Channel, u64)> {
        match self {
            Self::Given(_) => {
                channel.wait_for_recovery(error).await?;
                Ok((channel.clone(), 0))
            }
            Self::Owned(owned) => {
                if owned.is_healthy(&owned.current()) && !is_connection_error(&error) {
                    // The channel works: the broker refused this message.
                    return Err(error);
                }
                owned.replaced(generation).await
            }
        }
    }

    /// The channel, as it is now.
    pub(crate) fn current_channel(&self) -> Channel {
        match self {
            Self::Given(channel) => channel.clone(),
            Self::Owned(owned) => owned.current().channel,
        }
    }
}

/// Errors that say the connection or channel is gone, not that the broker refused something.
fn is_connection_error(error: &lapin::Error) -> bool {
    use lapin::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::IOError(_)
            | ErrorKind::MissingHeartbeatError
            | ErrorKind::InvalidConnectionState(_)
            | ErrorKind::InvalidChannelState(..)
            | ErrorKind::InvalidChannel(_)
    )
}

/// A connection and confirm-mode channel of the publisher's own.
pub(crate) struct Owned {
    uri: String,
    properties: ConnectionProperties,
    /// In milliseconds.
    max_delay: AtomicU64,
    current: watch::Sender<Current>,
    /// Whether the background task that connects again runs.
    reconnecting: AtomicBool,
}

#[derive(Clone)]
struct Current {
    channel: Channel,
    /// Kept for the channel's sake; dropping the last handle closes it.
    connection: Arc<Connection>,
    /// How many times the connection was replaced.
    generation: u64,
}

impl Owned {
    /// Connects to `uri` and opens a channel in confirm mode.
    pub(crate) async fn connect(
        uri: &str,
        properties: ConnectionProperties,
    ) -> lapin::Result<Self> {
        let (connection, channel) = open(uri, properties.clone()).await?;
        Ok(Self {
            uri: uri.to_owned(),
            properties,
            max_delay: AtomicU64::new(DEFAULT_MAX_RECONNECT_DELAY.as_millis() as u64),
            current: watch::Sender::new(Current {
                channel,
                connection: Arc::new(connection),
                generation: 0,
            }),
            reconnecting: AtomicBool::new(false),
        })
    }

    pub(crate) fn set_max_delay(&self, delay: Duration) {
        let millis = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX).max(10);
        self.max_delay.store(millis, Ordering::Relaxed);
    }

    fn max_delay(&self) -> Duration {
        Duration::from_millis(self.max_delay.load(Ordering::Relaxed))
    }

    fn current(&self) -> Current {
        self.current.borrow().clone()
    }

    fn is_healthy(&self, current: &Current) -> bool {
        current.connection.status().connected() && current.channel.status().connected()
    }

    async fn usable(self: &Arc<Self>) -> lapin::Result<(Channel, u64)> {
        let current = self.current();
        if self.is_healthy(&current) {
            return Ok((current.channel, current.generation));
        }
        self.replaced(current.generation).await
    }

    /// Waits until the connection of `broken` has been replaced (starting the task that
    /// replaces it if it does not run) and returns the new channel.
    async fn replaced(self: &Arc<Self>, broken: u64) -> lapin::Result<(Channel, u64)> {
        let mut changes = self.current.subscribe();
        if changes.borrow().generation == broken && !self.reconnecting.swap(true, Ordering::AcqRel)
        {
            tracing::warn!(
                uri = %redacted(&self.uri),
                "the RabbitMQ publisher's channel or connection is closed; opening a new one"
            );
            tokio::spawn(reconnect(Arc::downgrade(self)));
        }
        // The sender lives in `self`: waiting cannot fail while it is borrowed here.
        let current = changes
            .wait_for(|current| current.generation != broken)
            .await
            .map(|current| current.clone())
            .map_err(|_| lapin::Error::from(lapin::ErrorKind::FutureCompleted))?;
        Ok((current.channel, current.generation))
    }
}

/// Connects until it succeeds, with a doubling delay between attempts, then hands the new
/// channel to the publisher. Ends early when the publisher is dropped.
async fn reconnect(owned: Weak<Owned>) {
    let mut delay = FIRST_RECONNECT_DELAY;
    let mut attempts = 0u32;
    loop {
        // Not kept alive while connecting: a dropped publisher ends this task.
        let Some((uri, properties, max_delay, connection)) = owned.upgrade().map(|o| {
            let connection = o.current().connection;
            (
                o.uri.clone(),
                o.properties.clone(),
                o.max_delay(),
                connection,
            )
        }) else {
            return;
        };
        attempts += 1;
        // Only the channel was closed (the broker closes it over a missing exchange, say): a
        // new one on the same connection will do.
        let reopened = async {
            if connection.status().connected() {
                if let Ok(channel) = confirm_channel(&connection).await {
                    return Ok((connection, channel));
                }
            }
            drop(connection);
            open(&uri, properties)
                .await
                .map(|(c, ch)| (Arc::new(c), ch))
        };
        let error = match tokio::time::timeout(CONNECT_TIMEOUT, reopened).await {
            Ok(Ok((connection, channel))) => {
                let Some(owned) = owned.upgrade() else {
                    return;
                };
                owned.current.send_modify(|current| {
                    *current = Current {
                        channel,
                        connection,
                        generation: current.generation + 1,
                    }
                });
                owned.reconnecting.store(false, Ordering::Release);
                tracing::info!(
                    uri = %redacted(&uri),
                    attempts,
                    "the RabbitMQ publisher has a channel again"
                );
                return;
            }
            Ok(Err(error)) => error.to_string(),
            Err(_elapsed) => format!("no answer within {CONNECT_TIMEOUT:?}"),
        };
        tracing::debug!(uri = %redacted(&uri), attempts, %error, ?delay, "connecting again failed");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(max_delay);
    }
}

/// A connection and a channel in confirm mode.
async fn open(uri: &str, properties: ConnectionProperties) -> lapin::Result<(Connection, Channel)> {
    let connection = Connection::connect(uri, properties).await?;
    let channel = confirm_channel(&connection).await?;
    Ok((connection, channel))
}

/// A new channel of `connection`, in confirm mode.
async fn confirm_channel(connection: &Connection) -> lapin::Result<Channel> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// `uri` without its password, for logs.
fn redacted(uri: &str) -> String {
    match super::config::ServerAddress::from_uri(uri) {
        Some(server) => format!("{}:{}", server.host, server.port),
        None => "(not an amqp URI)".to_owned(),
    }
}
