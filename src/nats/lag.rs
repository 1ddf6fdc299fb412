//! What a NATS consumer reports besides its messages, from one task per consumer: the
//! JetStream consumer's lag (`num_pending`, SPEC §5) and unacked count (`num_ack_pending`),
//! polled from the server, whether the client is connected (`messaging_consumer_connected`),
//! and its reconnects, read from its statistics.
//!
//! Reconnects come from `Client::statistics().connects`, an exact count the client keeps,
//! rather than from its connection events, which are dropped when the client's event queue is
//! full and which only the code that connected can subscribe to.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::consumer::PullConsumer;

use crate::consume::Reporter;
use crate::sync::Recover;

/// How often the connection is looked at.
const CONNECTION_EVERY: Duration = Duration::from_secs(1);

/// The lag of a JetStream consumer, reported under `destination`.
pub(crate) struct LagSource {
    pub(crate) consumer: PullConsumer,
    pub(crate) destination: String,
    pub(crate) interval: Duration,
}

/// The monitor task; stopped (and reporting nothing more) when dropped.
#[derive(Debug)]
pub(crate) struct Monitor {
    /// `true` while reports may be made: cleared under the lock before the core removes the
    /// consumer's series, so none comes back after.
    open: Arc<Mutex<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl Monitor {
    pub(crate) fn start(
        client: async_nats::Client,
        reporter: Reporter,
        what: &'static str,
        lag: Option<LagSource>,
    ) -> Self {
        let open = Arc::new(Mutex::new(true));
        // The series exist from the start: a dashboard shows "no reconnects", not "no data".
        reporter.reconnected(0);
        reporter.connected(client.connection_state() == State::Connected);
        let task = tokio::spawn(watch(client, reporter, what, lag, Arc::clone(&open)));
        Self { open, task }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        *self.open.locked() = false;
        self.task.abort();
    }
}

async fn watch(
    client: async_nats::Client,
    reporter: Reporter,
    what: &'static str,
    lag: Option<LagSource>,
    open: Arc<Mutex<bool>>,
) {
    let statistics = client.statistics();
    let mut connects = statistics.connects.load(Ordering::Relaxed);
    let mut connected = client.connection_state() == State::Connected;
    let mut ticks = tokio::time::interval(CONNECTION_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let lag_every = lag.as_ref().map_or(Duration::from_secs(86_400), |l| {
        l.interval.max(Duration::from_millis(10))
    });
    let mut lags = tokio::time::interval(lag_every);
    lags.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The last pending count read: re-reported while the server cannot be asked, so
    // `lag_seconds` keeps growing (SPEC §5).
    let mut last_pending: Option<u64> = None;
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                let now = statistics.connects.load(Ordering::Relaxed);
                let state = client.connection_state();
                if now > connects {
                    let reconnects = now - connects;
                    connects = now;
                    tracing::warn!(
                        consumer = what, group = reporter.group(), reconnects,
                        "reconnected to the NATS server: consuming again"
                    );
                    if !report(&open, || reporter.reconnected(reconnects)) {
                        return;
                    }
                } else if connected && state != State::Connected {
                    tracing::warn!(
                        consumer = what, group = reporter.group(),
                        "lost the connection to the NATS server: the client reconnects by itself, the consumer resumes then"
                    );
                }
                connected = state == State::Connected;
                if !report(&open, || reporter.connected(connected)) {
                    return;
                }
            }
            _ = lags.tick(), if lag.is_some() => {
                let Some(lag) = &lag else { continue };
                let info = tokio::time::timeout(
                    lag.interval.max(Duration::from_secs(1)),
                    lag.consumer.get_info(),
                )
                .await;
                let reported = match info {
                    Ok(Ok(info)) => {
                        last_pending = Some(info.num_pending);
                        report(&open, || {
                            reporter.lag(&lag.destination, None, saturating(info.num_pending));
                            reporter.unacked(&lag.destination, saturating(info.num_ack_pending as u64));
                        })
                    }
                    failed => {
                        let error = match failed {
                            Ok(Err(error)) => error.to_string(),
                            _ => "timed out".to_owned(),
                        };
                        tracing::debug!(%error, group = reporter.group(), "consumer info unavailable; lag keeps its last value");
                        match last_pending {
                            Some(pending) => report(&open, || {
                                reporter.lag(&lag.destination, None, saturating(pending));
                            }),
                            None => true,
                        }
                    }
                };
                if !reported {
                    return;
                }
            }
        }
    }
}

/// Runs `report` unless the consumer is gone; `false` when it is.
fn report(open: &Mutex<bool>, report: impl FnOnce()) -> bool {
    let open = open.locked();
    if *open {
        report();
    }
    *open
}

fn saturating(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
