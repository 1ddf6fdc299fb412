//! A NATS client's connection events, for eventscope: logged, and a core subscription's
//! slow-consumer drops counted.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::{ConnectOptions, Event};

use crate::consume::Reporter;
use crate::sync::Recover;

/// Hooks eventscope into the events of a NATS client: install it when you connect
/// ([`connect_options`](Self::connect_options), or call [`record`](Self::record) from a
/// callback of your own) and give it to the core consumers of that client
/// ([`NatsConsumer::client_events`](super::NatsConsumer::client_events)).
///
/// Each event is logged (a lost connection and server errors as warnings). When a core
/// subscription's buffer is full (`ConnectOptions::subscription_capacity`), the client drops
/// the message and reports a slow consumer; such drops count in
/// `messaging_consumer_dropped_messages_total` of the consumer that suffered them, under its
/// subscription subject. That count is a **lower bound**: the client reports each drop
/// through an event queue of 128 that itself drops events during a burst, and no client
/// counter records them.
///
/// ```no_run
/// use eventscope::nats::{async_nats, ClientEvents, NatsConsumer};
///
/// # async fn run() -> Result<(), eventscope::BoxError> {
/// let events = ClientEvents::new();
/// let client = events
///     .connect_options(async_nats::ConnectOptions::new())
///     .connect("127.0.0.1:4222")
///     .await?;
/// let consumer = NatsConsumer::subscribe(client, "prices.>").client_events(&events);
/// # let _ = consumer;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Default)]
pub struct ClientEvents {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Core subscriptions by sid.
    subscriptions: Mutex<HashMap<u64, Subscription>>,
    /// Drops not reported in the log yet, and when the log last said so.
    unlogged: AtomicU64,
    logged: Mutex<Option<Instant>>,
}

struct Subscription {
    reporter: Reporter,
    subject: Arc<str>,
}

/// How often slow-consumer drops are logged at most.
const LOG_DROPS_EVERY: Duration = Duration::from_secs(10);

impl fmt::Debug for ClientEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientEvents")
            .field("subscriptions", &self.inner.subscriptions.locked().len())
            .finish()
    }
}

impl ClientEvents {
    /// Events of no client yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// `options` with this as its event callback (replacing any other: call
    /// [`record`](Self::record) from your own instead to keep it).
    pub fn connect_options(&self, options: ConnectOptions) -> ConnectOptions {
        let events = self.clone();
        options.event_callback(move |event| {
            events.record(&event);
            async {}
        })
    }

    /// Logs `event` and counts a slow consumer's drop.
    pub fn record(&self, event: &Event) {
        match event {
            Event::Connected => tracing::info!("nats: connected"),
            Event::Disconnected => tracing::warn!("nats: disconnected; the client reconnects"),
            Event::LameDuckMode => {
                tracing::warn!("nats: the server is shutting down (lame duck mode)");
            }
            Event::Draining | Event::Closed => tracing::info!(%event, "nats"),
            Event::SlowConsumer(sid) => self.dropped(*sid),
            Event::ServerError(error) => tracing::warn!(%error, "nats: server error"),
            Event::ClientError(error) => tracing::debug!(%error, "nats: client error"),
        }
    }

    fn dropped(&self, sid: u64) {
        let subject = {
            let subscriptions = self.inner.subscriptions.locked();
            subscriptions.get(&sid).map(|s| {
                s.reporter.dropped(&s.subject, None, 1);
                Arc::clone(&s.subject)
            })
        };
        let unlogged = self.inner.unlogged.fetch_add(1, Ordering::Relaxed) + 1;
        let mut logged = self.inner.logged.locked();
        if logged.is_none_or(|at| at.elapsed() >= LOG_DROPS_EVERY) {
            *logged = Some(Instant::now());
            self.inner.unlogged.fetch_sub(unlogged, Ordering::Relaxed);
            tracing::warn!(
                subject = subject.as_deref().unwrap_or("?"),
                dropped = unlogged,
                "nats: slow consumer, the client dropped messages its subscription had no room for (subscription_capacity)"
            );
        }
    }

    /// Attributes the drops of the subscription `sid` to `reporter` under `subject` until the
    /// returned registration is dropped.
    pub(crate) fn register(&self, sid: u64, reporter: Reporter, subject: &str) -> Registration {
        self.inner.subscriptions.locked().insert(
            sid,
            Subscription {
                reporter,
                subject: Arc::from(subject),
            },
        );
        Registration {
            events: self.clone(),
            sid,
        }
    }
}

/// A subscription's place in [`ClientEvents`]; removed when dropped.
#[derive(Debug)]
pub(crate) struct Registration {
    events: ClientEvents,
    sid: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.events.inner.subscriptions.locked().remove(&self.sid);
    }
}

/// The subscription id of `subscriber`, which the client reports slow consumers by but does
/// not expose: read from its `Debug` form (`Subscriber { sid: 3, .. }`, a derive), checked by
/// a test against the client version in use. `None` if that form changed.
pub(crate) fn sid_of(subscriber: &async_nats::Subscriber) -> Option<u64> {
    let text = format!("{subscriber:?}");
    let rest = text.split_once("sid: ")?.1;
    let digits = rest.split(|c: char| !c.is_ascii_digit()).next()?;
    digits.parse().ok()
}
