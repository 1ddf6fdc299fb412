//! The future returned by [`MemoryPublisher`](super::MemoryPublisher).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use super::broker::{MemoryBroker, MemoryError};
use super::publisher::{offer_parked, Parked};
use super::record::MemoryReceipt;
use crate::sync::Recover;

/// Resolves with where the record was stored.
///
/// Most resolve at once; one that met a full partition under
/// [`Overflow::Block`](super::Overflow::Block) waits for room. Dropping it while it waits
/// withdraws the record: it is never stored.
#[must_use = "futures do nothing unless polled"]
pub struct ResponseFuture {
    state: State,
}

enum State {
    Ready(Option<Result<MemoryReceipt, MemoryError>>),
    Parked {
        slot: Arc<Mutex<Parked>>,
        broker: MemoryBroker,
    },
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Ready(_) => "ready",
            State::Parked { .. } => "waiting for room in the partition",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl ResponseFuture {
    pub(crate) fn ready(result: Result<MemoryReceipt, MemoryError>) -> Self {
        Self {
            state: State::Ready(Some(result)),
        }
    }

    pub(crate) fn parked(slot: Arc<Mutex<Parked>>, broker: MemoryBroker) -> Self {
        Self {
            state: State::Parked { slot, broker },
        }
    }
}

impl Future for ResponseFuture {
    type Output = Result<MemoryReceipt, MemoryError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match &mut this.state {
            State::Ready(result) => Poll::Ready(
                result
                    .take()
                    .expect("ResponseFuture polled after completion"),
            ),
            State::Parked { slot, broker } => {
                if !offer_parked(broker, slot, cx) {
                    return Poll::Pending;
                }
                let taken = std::mem::replace(&mut *slot.locked(), Parked::Taken);
                let Parked::Done(result) = taken else {
                    panic!("ResponseFuture polled after completion");
                };
                this.state = State::Ready(None);
                Poll::Ready(result)
            }
        }
    }
}

impl Drop for ResponseFuture {
    fn drop(&mut self) {
        if let State::Parked { slot, .. } = &self.state {
            let mut parked = slot.locked();
            if matches!(*parked, Parked::Waiting(_)) {
                *parked = Parked::Taken;
            }
        }
    }
}
