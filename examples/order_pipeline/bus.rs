//! The broker the pipeline runs on, behind one small trait so the services don't care.

use std::future::Future;
use std::pin::Pin;

use eventscope::driver::{BoxError, ConsumeError, FailurePolicy};
use eventscope::memory::{MemoryBroker, MemoryMessage, MemoryRecord};
use eventscope::message::{IncomingMessage, OutgoingMessage};
use eventscope::metrics::Metrics;
use eventscope::publish::PublishLayer;
use tower::util::BoxCloneSyncService;
use tower::{Layer, ServiceExt};

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
pub type Publisher<R> = BoxCloneSyncService<R, (), BoxError>;
pub type Handler<M> = BoxCloneSyncService<M, (), BoxError>;

/// Classifies handler errors for metrics and spans.
pub type Classify = fn(&BoxError) -> std::borrow::Cow<'static, str>;

pub trait Bus: Clone + Send + Sync + 'static {
    type Record: OutgoingMessage + Send + 'static;
    type Message: IncomingMessage + Clone + Send + Sync + 'static;

    fn describe(&self) -> String;
    fn record(
        &self,
        topic: &str,
        key: &str,
        payload: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> Self::Record;
    /// A publisher wrapped in eventscope's publish layer.
    fn publisher(&self, metrics: &Metrics) -> Publisher<Self::Record>;
    /// A plain publisher: a legacy client that knows nothing of tracing.
    fn raw_publisher(&self) -> Publisher<Self::Record>;
    fn payload(message: &Self::Message) -> &[u8];
    fn consume(
        &self,
        group: &str,
        topic: &str,
        handler: Handler<Self::Message>,
        metrics: &Metrics,
        classify: Classify,
        stop: BoxFuture<()>,
    ) -> BoxFuture<Result<(), ConsumeError>>;
}

#[derive(Clone, Debug)]
pub struct Memory(pub MemoryBroker);

impl Bus for Memory {
    type Record = MemoryRecord;
    type Message = MemoryMessage;

    fn describe(&self) -> String {
        "the embedded in-memory broker".into()
    }

    fn record(
        &self,
        topic: &str,
        key: &str,
        payload: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> MemoryRecord {
        headers
            .iter()
            .fold(MemoryRecord::new(topic, payload).key(key), |r, (n, v)| {
                r.header(*n, *v)
            })
    }

    fn publisher(&self, metrics: &Metrics) -> Publisher<MemoryRecord> {
        BoxCloneSyncService::new(
            PublishLayer::new(metrics.clone())
                .layer(self.0.publisher())
                .map_response(|_| ())
                .map_err(BoxError::from),
        )
    }

    fn raw_publisher(&self) -> Publisher<MemoryRecord> {
        BoxCloneSyncService::new(
            self.0
                .publisher()
                .map_response(|_| ())
                .map_err(BoxError::from),
        )
    }

    fn payload(message: &MemoryMessage) -> &[u8] {
        message.payload()
    }

    fn consume(
        &self,
        group: &str,
        topic: &str,
        handler: Handler<MemoryMessage>,
        metrics: &Metrics,
        classify: Classify,
        stop: BoxFuture<()>,
    ) -> BoxFuture<Result<(), ConsumeError>> {
        let consumer = self
            .0
            .consumer(group)
            .subscribe([topic])
            .metrics(metrics.clone())
            .classify_errors(classify)
            .failure_policy(FailurePolicy::Redeliver {
                backoff: std::time::Duration::from_millis(100),
            });
        Box::pin(consumer.run(handler, stop))
    }
}
