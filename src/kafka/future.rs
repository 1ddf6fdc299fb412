//! The future returned by [`KafkaPublisher`](super::KafkaPublisher).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::producer::{DeliveryFuture, FutureProducer};
use tokio::time::Sleep;

use super::config::Endpoint;
use super::error::PublishError;
use super::publisher::{offer_parked, Parked, QUEUE_FULL_RETRY};
use super::record::KafkaReceipt;
use crate::sync::Recover;

/// Resolves with the delivery report of one record.
///
/// Dropping it does not withdraw the record: once queued, librdkafka delivers it anyway.
#[must_use = "futures do nothing unless polled"]
pub struct ResponseFuture<C: ClientContext + 'static = DefaultClientContext> {
    state: State<C>,
    endpoint: Arc<Endpoint>,
}

enum State<C: ClientContext + 'static> {
    Delivering(DeliveryFuture),
    Parked {
        slot: Arc<Mutex<Parked>>,
        producer: FutureProducer<C>,
        retry: Pin<Box<Sleep>>,
    },
    Failed(Option<PublishError>),
}

impl<C: ClientContext + 'static> fmt::Debug for ResponseFuture<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Delivering(_) => "delivering",
            State::Parked { .. } => "waiting for queue space",
            State::Failed(_) => "failed",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<C: ClientContext + 'static> ResponseFuture<C> {
    pub(crate) fn delivering(delivery: DeliveryFuture, endpoint: Arc<Endpoint>) -> Self {
        Self {
            state: State::Delivering(delivery),
            endpoint,
        }
    }

    pub(crate) fn parked(
        slot: Arc<Mutex<Parked>>,
        producer: FutureProducer<C>,
        endpoint: Arc<Endpoint>,
    ) -> Self {
        Self {
            state: State::Parked {
                slot,
                producer,
                retry: Box::pin(tokio::time::sleep(QUEUE_FULL_RETRY)),
            },
            endpoint,
        }
    }

    pub(crate) fn failed(error: PublishError, endpoint: Arc<Endpoint>) -> Self {
        Self {
            state: State::Failed(Some(error)),
            endpoint,
        }
    }
}

impl<C: ClientContext + 'static> Future for ResponseFuture<C> {
    type Output = Result<KafkaReceipt, PublishError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::Delivering(delivery) => {
                    let report = std::task::ready!(Pin::new(delivery).poll(cx));
                    return Poll::Ready(match report {
                        Ok(Ok(d)) => Ok(KafkaReceipt {
                            partition: d.partition,
                            offset: d.offset,
                            endpoint: Arc::clone(&this.endpoint),
                        }),
                        Ok(Err((error, _message))) => Err(PublishError::kafka(error)),
                        Err(_cancelled) => Err(PublishError::cancelled()),
                    });
                }
                State::Failed(error) => {
                    return Poll::Ready(Err(error.take().unwrap_or_else(PublishError::cancelled)))
                }
                State::Parked {
                    slot,
                    producer,
                    retry,
                } => {
                    if !offer_parked(producer, slot) {
                        std::task::ready!(retry.as_mut().poll(cx));
                        retry
                            .as_mut()
                            .reset(tokio::time::Instant::now() + QUEUE_FULL_RETRY);
                        continue;
                    }
                    let taken = std::mem::replace(&mut *slot.locked(), Parked::Taken);
                    this.state = match taken {
                        Parked::Queued(delivery) => State::Delivering(delivery),
                        Parked::Failed(error) => State::Failed(Some(error)),
                        Parked::Waiting(_) | Parked::Taken => State::Failed(None),
                    };
                }
            }
        }
    }
}
