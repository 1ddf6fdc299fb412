use std::fmt;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tower_service::Service;

use super::broker::{MemoryBroker, MemoryError};
use super::future::ResponseFuture;
use super::log::Appended;
use super::record::{MemoryReceipt, MemoryRecord};
use crate::sync::Recover;

/// Publishes [`MemoryRecord`]s to a [`MemoryBroker`]; resolves once the record is stored.
///
/// Records for a topic that does not exist create it with the broker's default partitions.
///
/// Under the default [`Overflow::Block`](super::Overflow::Block), a record for a partition that
/// is at its retention limit is parked until every consumer group subscribed to the topic has
/// committed past the partition's oldest record: its future waits, and
/// [`poll_ready`](Service::poll_ready) stays pending until the parked record is stored, so a
/// caller that drives the service with `ready().await` (as every tower middleware does) slows
/// down to the pace of its slowest subscribed group, and records keep their order. A record
/// is never dropped by the publisher; a group that stays subscribed without consuming keeps it
/// waiting. Each clone has its own parked slot.
pub struct MemoryPublisher {
    broker: MemoryBroker,
    parked: Option<Arc<Mutex<Parked>>>,
}

impl MemoryPublisher {
    pub(crate) fn new(broker: MemoryBroker) -> Self {
        Self {
            broker,
            parked: None,
        }
    }

    /// The broker this publisher writes to.
    pub fn broker(&self) -> &MemoryBroker {
        &self.broker
    }
}

impl Clone for MemoryPublisher {
    fn clone(&self) -> Self {
        Self::new(self.broker.clone())
    }
}

impl fmt::Debug for MemoryPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryPublisher")
            .field("broker", &self.broker)
            .field("parked", &self.parked.is_some())
            .finish()
    }
}

impl Service<MemoryRecord> for MemoryPublisher {
    type Response = MemoryReceipt;
    type Error = MemoryError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let Some(slot) = &self.parked else {
            return Poll::Ready(Ok(()));
        };
        if offer_parked(&self.broker, slot, cx) {
            self.parked = None;
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    fn call(&mut self, record: MemoryRecord) -> Self::Future {
        match self.broker.try_append(record, None) {
            Ok(Appended::Stored(delivery)) => ResponseFuture::ready(Ok(delivery)),
            Ok(Appended::Full(record)) => {
                let slot = Arc::new(Mutex::new(Parked::Waiting(record)));
                self.parked = Some(Arc::clone(&slot));
                ResponseFuture::parked(slot, self.broker.clone())
            }
            Err(error) => ResponseFuture::ready(Err(error)),
        }
    }
}

/// A record that met a full partition, shared by the service (whose `poll_ready` waits for it)
/// and the record's future (which may be polled first, or dropped).
#[derive(Debug)]
pub(crate) enum Parked {
    Waiting(MemoryRecord),
    Done(Result<MemoryReceipt, MemoryError>),
    /// The future took the result, or was dropped before the record was stored.
    Taken,
}

/// Offers a parked record to its partition again; `true` once it no longer waits. While it
/// waits, `cx`'s waker is woken by the next commit or departure on the partition.
pub(crate) fn offer_parked(broker: &MemoryBroker, slot: &Mutex<Parked>, cx: &Context<'_>) -> bool {
    let mut parked = slot.locked();
    if !matches!(*parked, Parked::Waiting(_)) {
        return true;
    }
    let Parked::Waiting(record) = std::mem::replace(&mut *parked, Parked::Taken) else {
        unreachable!("checked above");
    };
    match broker.try_append(record, Some(cx.waker())) {
        Ok(Appended::Stored(delivery)) => *parked = Parked::Done(Ok(delivery)),
        Ok(Appended::Full(record)) => {
            *parked = Parked::Waiting(record);
            return false;
        }
        Err(error) => *parked = Parked::Done(Err(error)),
    }
    true
}
