use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use tokio::time::Sleep;
use tower_service::Service;

use super::carrier::to_owned_headers;
use super::config::Endpoint;
use super::error::{KafkaErrorClassifier, PublishError};
use super::future::ResponseFuture;
use super::record::KafkaRecord;
use crate::metrics::Metrics;
use crate::publish::PublishLayer;
use crate::sync::Recover;

/// The [`PublishLayer`] for a [`KafkaPublisher`]: records into `metrics`, and a failed
/// publish's `error.type` is its librdkafka error code (`MessageTimedOut`, …, see
/// [`KafkaErrorClassifier`]) instead of the error's type name.
///
/// Shorthand for `PublishLayer::new(metrics).classify_errors(KafkaErrorClassifier)`; the
/// layer's other settings (propagator, injection) are set on the result as usual.
pub fn publish_layer(metrics: Metrics) -> PublishLayer<KafkaErrorClassifier> {
    PublishLayer::new(metrics).classify_errors(KafkaErrorClassifier)
}

/// How long to wait before offering a record to a full producer queue again. The producer's
/// own thread serves delivery reports meanwhile, which is what frees the queue.
pub(crate) const QUEUE_FULL_RETRY: Duration = Duration::from_millis(1);

/// Publishes [`KafkaRecord`]s through your `rdkafka` [`FutureProducer`]; resolves with a
/// [`KafkaReceipt`](super::KafkaReceipt) when the delivery report arrives.
///
/// Wrap it in [`publish_layer`] (a [`PublishLayer`] that names failures by their librdkafka
/// code) to trace and measure: the `send` span then ends with the delivery report, carrying
/// partition and offset.
///
/// Records are handed to librdkafka in [`call`](Service::call), so they are queued in the order
/// of the calls. When librdkafka's queue is full (`queue.buffering.max.messages` /
/// `…max.kbytes`), the record that did not fit is parked, [`poll_ready`](Service::poll_ready)
/// stays pending until it has been queued, and its future keeps offering it too: callers are
/// slowed down instead of getting `QueueFull` errors or buffering without bound, and the order
/// of records is kept. Each clone has its own parked slot.
pub struct KafkaPublisher<C: ClientContext + 'static = DefaultClientContext> {
    producer: FutureProducer<C>,
    parked: Option<Arc<Mutex<Parked>>>,
    retry: Option<Pin<Box<Sleep>>>,
    /// `server.address`, `server.port` and `messaging.client.id` of the `send` spans, read from
    /// the producer's configuration.
    endpoint: Arc<Endpoint>,
}

impl<C: ClientContext + 'static> KafkaPublisher<C> {
    /// Publishes through `producer` (a clone of it: the producer stays yours).
    pub fn new(producer: FutureProducer<C>) -> Self {
        let endpoint = Arc::new(Endpoint::of(rdkafka::producer::Producer::client(&producer)));
        Self {
            producer,
            parked: None,
            retry: None,
            endpoint,
        }
    }

    /// The producer.
    pub fn producer(&self) -> &FutureProducer<C> {
        &self.producer
    }
}

impl<C: ClientContext + 'static> Clone for KafkaPublisher<C> {
    fn clone(&self) -> Self {
        Self {
            producer: self.producer.clone(),
            parked: None,
            retry: None,
            endpoint: Arc::clone(&self.endpoint),
        }
    }
}

impl<C: ClientContext + 'static> fmt::Debug for KafkaPublisher<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaPublisher")
            .field("parked", &self.parked.is_some())
            .finish_non_exhaustive()
    }
}

impl<C: ClientContext + 'static> Service<KafkaRecord> for KafkaPublisher<C> {
    type Response = super::KafkaReceipt;
    type Error = PublishError;
    type Future = ResponseFuture<C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        loop {
            let Some(slot) = &self.parked else {
                return Poll::Ready(Ok(()));
            };
            if offer_parked(&self.producer, slot) {
                self.parked = None;
                self.retry = None;
                return Poll::Ready(Ok(()));
            }
            let retry = self
                .retry
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(QUEUE_FULL_RETRY)));
            std::task::ready!(retry.as_mut().poll(cx));
            retry
                .as_mut()
                .reset(tokio::time::Instant::now() + QUEUE_FULL_RETRY);
        }
    }

    fn call(&mut self, record: KafkaRecord) -> Self::Future {
        match enqueue(&self.producer, &record) {
            Ok(delivery) => ResponseFuture::delivering(delivery, Arc::clone(&self.endpoint)),
            Err(Enqueue::Full) => {
                let slot = Arc::new(Mutex::new(Parked::Waiting(record)));
                self.parked = Some(Arc::clone(&slot));
                ResponseFuture::parked(slot, self.producer.clone(), Arc::clone(&self.endpoint))
            }
            Err(Enqueue::Failed(error)) => {
                ResponseFuture::failed(error, Arc::clone(&self.endpoint))
            }
        }
    }
}

/// A record that met a full queue, shared by the service (whose `poll_ready` waits for it) and
/// the record's future (which may be polled first).
pub(crate) enum Parked {
    Waiting(KafkaRecord),
    Queued(DeliveryFuture),
    Failed(PublishError),
    Taken,
}

pub(crate) enum Enqueue {
    Full,
    Failed(PublishError),
}

/// Offers a parked record to the producer again; `true` once it is no longer waiting.
pub(crate) fn offer_parked<C: ClientContext + 'static>(
    producer: &FutureProducer<C>,
    slot: &Mutex<Parked>,
) -> bool {
    let mut parked = slot.locked();
    let Parked::Waiting(record) = &*parked else {
        return true;
    };
    match enqueue(producer, record) {
        Ok(delivery) => *parked = Parked::Queued(delivery),
        Err(Enqueue::Failed(error)) => *parked = Parked::Failed(error),
        Err(Enqueue::Full) => return false,
    }
    true
}

/// Hands `record` to librdkafka, which copies it.
pub(crate) fn enqueue<C: ClientContext + 'static>(
    producer: &FutureProducer<C>,
    record: &KafkaRecord,
) -> Result<DeliveryFuture, Enqueue> {
    let mut future_record = FutureRecord::<[u8], [u8]>::to(&record.topic);
    if let Some(payload) = &record.payload {
        future_record = future_record.payload(payload.as_slice());
    }
    if let Some(key) = &record.key {
        future_record = future_record.key(key.as_slice());
    }
    if let Some(partition) = record.partition {
        future_record = future_record.partition(partition);
    }
    if let Some(millis) = record.timestamp_millis() {
        future_record = future_record.timestamp(millis);
    }
    if let Some(headers) = to_owned_headers(&record.headers) {
        future_record = future_record.headers(headers);
    }
    match producer.send_result(future_record) {
        Ok(delivery) => Ok(delivery),
        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => Err(Enqueue::Full),
        Err((error, _)) => Err(Enqueue::Failed(PublishError::kafka(error))),
    }
}
