//! Keeps messages whose handler is still running from being redelivered: JetStream redelivers
//! a message that was not acked within the consumer's `ack_wait`, and an "in progress" reply
//! (`+WPI`) restarts that clock.
//!
//! One task per consumer, beside the handlers: the source arms a message when it hands it to
//! the core, the settler disarms it when it settles it, and every quarter of `ack_wait` the
//! task sends `+WPI` for each message armed (or last kept) at least half an `ack_wait` ago. So
//! a message is kept between 1/2 and 3/4 of `ack_wait` after the last time, well before it
//! expires. The task only touches the messages in flight (at most `max_concurrency` of them);
//! a handler that never returns would be kept for ever, which
//! [`max_in_progress`](super::JetStreamConsumer::max_in_progress) bounds.
//!
//! When the consumer is gone (shut down past its drain deadline, or dropped), the messages
//! still armed are handed back at once (`-NAK`) rather than after their `ack_wait`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::AckKind;
use async_nats::Subject;
use bytes::Bytes;
use tokio::time::Instant;

use crate::sync::Recover;

/// The messages in flight and the task that keeps them in progress; the task stops when this
/// is dropped, and what is still in flight is handed back.
#[derive(Debug)]
pub(crate) struct Progress {
    armed: Arc<Mutex<HashMap<u64, Armed>>>,
    /// `None` when in-progress replies are off.
    task: Option<tokio::task::JoinHandle<()>>,
    client: async_nats::Client,
}

#[derive(Debug)]
struct Armed {
    subject: Subject,
    since: Instant,
    last: Instant,
}

impl Progress {
    /// Keeps messages of a consumer with `ack_wait`, each for at most `limit` (`None`: for as
    /// long as its handler runs; zero: never).
    pub(crate) fn start(
        client: async_nats::Client,
        ack_wait: Duration,
        limit: Option<Duration>,
    ) -> Self {
        let armed: Arc<Mutex<HashMap<u64, Armed>>> = Arc::default();
        let task = (limit != Some(Duration::ZERO))
            .then(|| tokio::spawn(keep(client.clone(), Arc::clone(&armed), ack_wait, limit)));
        Self {
            armed,
            task,
            client,
        }
    }

    /// A handler is about to get the delivery `key` whose ack subject is `subject`.
    pub(crate) fn arm(&self, key: u64, subject: &Subject) {
        let now = Instant::now();
        self.armed.locked().insert(
            key,
            Armed {
                subject: subject.clone(),
                since: now,
                last: now,
            },
        );
    }

    /// The delivery `key` is settled.
    pub(crate) fn disarm(&self, key: u64) {
        self.armed.locked().remove(&key);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
        let back: Vec<Subject> = self
            .armed
            .locked()
            .drain()
            .map(|(_, armed)| armed.subject)
            .collect();
        if back.is_empty() {
            return;
        }
        let client = self.client.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                for subject in back {
                    let _ = client
                        .publish(subject, Bytes::from(AckKind::Nak(None)))
                        .await;
                }
            });
        }
    }
}

async fn keep(
    client: async_nats::Client,
    armed: Arc<Mutex<HashMap<u64, Armed>>>,
    ack_wait: Duration,
    limit: Option<Duration>,
) {
    let half = ack_wait / 2;
    let mut ticks = tokio::time::interval((ack_wait / 4).max(Duration::from_millis(5)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut due = Vec::new();
    loop {
        ticks.tick().await;
        let now = Instant::now();
        {
            let mut armed = armed.locked();
            armed.retain(|key, message| {
                if limit.is_some_and(|limit| now.duration_since(message.since) >= limit) {
                    tracing::warn!(
                        delivery = key, ?limit,
                        "a handler outlived max_in_progress: its message is no longer kept and will be redelivered"
                    );
                    return false;
                }
                if now.duration_since(message.last) >= half {
                    message.last = now;
                    due.push(message.subject.clone());
                }
                true
            });
        }
        for subject in due.drain(..) {
            if let Err(error) = client
                .publish(subject, Bytes::from(AckKind::Progress))
                .await
            {
                tracing::warn!(%error, "sending in-progress failed: the message may be redelivered while its handler runs");
            }
        }
    }
}
