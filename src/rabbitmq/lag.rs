//! The RabbitMQ lag source (SPEC §5): the queue's ready count, read with a passive
//! `queue.declare` on a channel of its own every lag interval.
//!
//! The channel is opened for each reading and closed after it: a passive declare of a queue
//! that is gone closes its channel, and a long-lived channel would also be replayed by lapin's
//! topology recovery, where a failing passive declare stops the recovery of the connection's
//! other channels.
//!
//! **Which destination the lag is reported under.** Lag belongs to the queue, while the
//! destination of a delivery names its exchange and routing key too (SPEC §3), and the lag
//! series must share the destination of the consumer's other series: `lag_seconds` counts from
//! the creation time of the last message processed *of that series*, and the alerts join lag
//! with `last_message_timestamp` on it. So the ready count goes to the destination of the most
//! recent delivery (before the first, to `{queue}`, the destination of a message sent straight
//! to the queue), and every other destination this consumer delivered from reads 0: a queue
//! fed through one exchange and key has one series carrying its depth; one fed through several
//! never counts its depth twice in a sum, and a destination that went quiet does not look
//! stalled while the queue drains through another.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{FieldTable, ShortString};
use lapin::{Connection, ErrorKind};

use crate::consume::Reporter;
use crate::sync::Recover;

/// Most destinations one consumer keeps lag series for.
const MAX_DESTINATIONS: usize = 64;
/// Longest a reading may take.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A consumer's lag: what the source tells it, read by the lag task.
#[derive(Debug)]
pub(crate) struct Lag {
    queue: ShortString,
    interval: Duration,
    reporter: Reporter,
    connection: Mutex<Option<Arc<Connection>>>,
    destinations: Mutex<Destinations>,
    /// The queue was found missing, and not found since.
    missing: AtomicBool,
    /// The series were removed (the queue was missing): the next delivery reports at once.
    stale: AtomicBool,
    /// The last ready count read (-1 when unknown).
    last_ready: AtomicI64,
}

#[derive(Debug)]
struct Destinations {
    /// The destination of the most recent delivery.
    current: Arc<str>,
    /// Every destination reported, `current` included.
    all: Vec<Arc<str>>,
}

impl Lag {
    pub(crate) fn new(queue: ShortString, interval: Duration, reporter: Reporter) -> Self {
        let first: Arc<str> = Arc::from(queue.as_str());
        Self {
            queue,
            interval,
            reporter,
            connection: Mutex::new(None),
            destinations: Mutex::new(Destinations {
                current: Arc::clone(&first),
                all: vec![first],
            }),
            missing: AtomicBool::new(false),
            stale: AtomicBool::new(false),
            last_ready: AtomicI64::new(-1),
        }
    }

    /// The consumer's connection now (`None` while it reconnects).
    pub(crate) fn connected(&self, connection: Option<Arc<Connection>>) {
        *self.connection.locked() = connection;
    }

    /// The consumer delivered a message of `destination` (it tells only when the destination
    /// differs from the previous delivery's, or after it reconnected).
    ///
    /// The process layer makes a destination's lag series (at 0) with its first message, and
    /// the consumer core removes, when the consumer returns, the series reported through the
    /// [`Reporter`]: a destination seen for the first time, or seen again after its series were
    /// removed, is reported at once, not at the next reading, so that no series outlives the
    /// consumer.
    pub(crate) fn delivered_from(&self, destination: &Arc<str>) {
        let mut destinations = self.destinations.locked();
        destinations.current = Arc::clone(destination);
        let new =
            destinations.all.len() < MAX_DESTINATIONS && !destinations.all.contains(destination);
        if new {
            destinations.all.push(Arc::clone(destination));
        }
        drop(destinations);
        let stale = self.stale.swap(false, Ordering::AcqRel);
        if new || stale {
            self.report(self.last_ready.load(Ordering::Acquire).max(0));
        }
    }

    /// Reads and reports the lag every interval, until aborted.
    pub(crate) async fn run(self: Arc<Self>) {
        let mut every = tokio::time::interval(self.interval);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let Some(connection) = self.connection.locked().clone() else {
                continue;
            };
            let read = tokio::time::timeout(READ_TIMEOUT, ready_count(&connection, &self.queue));
            match read.await {
                Ok(Ok(ready)) => self.report(i64::from(ready)),
                Ok(Err(error)) if not_found(&error) => self.queue_missing(&error),
                // The consumer logs a lost connection; the next reading will tell.
                Ok(Err(error)) => {
                    tracing::debug!(queue = %self.queue, %error, "reading the queue's lag failed");
                }
                Err(_) => {
                    tracing::debug!(queue = %self.queue, "reading the queue's lag timed out");
                }
            }
        }
    }

    /// The broker says the queue does not exist (a lag reading, or subscribing again): the
    /// lag series go, and the first time it is logged as an error.
    pub(crate) fn queue_missing(&self, error: &lapin::Error) {
        if !self.missing.swap(true, Ordering::AcqRel) {
            tracing::error!(
                queue = %self.queue, %error,
                "the consumer's queue does not exist (deleted?): no lag is reported, and the consumer subscribes again once it is back"
            );
        }
        self.stale.store(true, Ordering::Release);
        self.last_ready.store(-1, Ordering::Release);
        let destinations = self.destinations.locked().all.clone();
        for destination in destinations {
            self.reporter.remove_partition(&destination, None);
        }
    }

    fn report(&self, ready: i64) {
        self.last_ready.store(ready, Ordering::Release);
        if self.missing.swap(false, Ordering::AcqRel) {
            tracing::info!(queue = %self.queue, "the consumer's queue exists again: reporting its lag");
        }
        let destinations = self.destinations.locked();
        for destination in &destinations.all {
            let messages = if *destination == destinations.current {
                ready
            } else {
                0
            };
            self.reporter.lag(destination, None, messages);
        }
    }
}

/// The queue's ready messages (RabbitMQ does not count delivered, unacknowledged ones here).
async fn ready_count(connection: &Connection, queue: &ShortString) -> lapin::Result<u32> {
    let channel = connection.create_channel().await?;
    let declared = channel
        .queue_declare(
            queue.clone(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await;
    // A failed passive declare has closed the channel already.
    if channel.status().connected() {
        let _ = channel.close(200, "OK".into()).await;
    }
    declared.map(|queue| queue.message_count())
}

/// The broker says the queue does not exist.
pub(crate) fn not_found(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        ErrorKind::ProtocolError(amqp)
            if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{label, name, Metrics};

    fn lags(metrics: &Metrics) -> Vec<(String, f64)> {
        let mut lags: Vec<(String, f64)> = metrics
            .encode()
            .lines()
            .filter(|l| l.starts_with(name::LAG_MESSAGES))
            .map(|l| {
                let destination = l
                    .split(&format!("{}=\"", label::DESTINATION))
                    .nth(1)
                    .and_then(|rest| rest.split('"').next())
                    .unwrap_or_default()
                    .to_owned();
                let value = l.rsplit(' ').next().unwrap().parse().unwrap();
                (destination, value)
            })
            .collect();
        lags.sort_by(|a, b| a.0.cmp(&b.0));
        lags
    }

    #[test]
    fn the_depth_goes_to_the_latest_destination_and_the_others_read_zero() {
        let metrics = Metrics::new();
        let reporter = Reporter::new(metrics.clone(), "rabbitmq", Arc::from("billing"));
        let lag = Lag::new("billing".into(), Duration::from_secs(1), reporter);
        lag.report(7);
        assert_eq!(lags(&metrics), vec![("billing".into(), 7.0)]);
        lag.delivered_from(&Arc::from("orders:billing"));
        assert_eq!(
            lags(&metrics),
            vec![("billing".into(), 0.0), ("orders:billing".into(), 7.0)],
            "a new destination is reported at once, with the last depth read"
        );
        lag.report(5);
        assert_eq!(
            lags(&metrics),
            vec![("billing".into(), 0.0), ("orders:billing".into(), 5.0)]
        );
        lag.delivered_from(&Arc::from("billing"));
        lag.report(3);
        assert_eq!(
            lags(&metrics),
            vec![("billing".into(), 3.0), ("orders:billing".into(), 0.0)]
        );
        let text = metrics.encode();
        assert!(
            text.contains(&format!("{}=\"\"", label::PARTITION)),
            "empty partition label"
        );
    }
}
