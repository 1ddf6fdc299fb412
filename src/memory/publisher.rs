use std::future::{ready, Ready};
use std::task::{Context, Poll};

use tower_service::Service;

use super::broker::{MemoryBroker, MemoryError};
use super::record::{Delivery, MemoryRecord};

/// Publishes [`MemoryRecord`]s to a [`MemoryBroker`]; resolves once the record is stored.
///
/// Records for a topic that does not exist create it with the broker's default partitions.
#[derive(Clone, Debug)]
pub struct MemoryPublisher {
    pub(crate) broker: MemoryBroker,
}

impl Service<MemoryRecord> for MemoryPublisher {
    type Response = Delivery;
    type Error = MemoryError;
    type Future = Ready<Result<Delivery, MemoryError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, record: MemoryRecord) -> Self::Future {
        ready(
            self.broker
                .append(record)
                .map(|(partition, offset)| Delivery { partition, offset }),
        )
    }
}
