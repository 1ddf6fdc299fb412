//! What both NATS consumers share: the stop a `Stop` decision raises, the server address of
//! their spans, and how a source waits for its next message.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures_util::FutureExt;
use tokio::sync::Notify;

use super::record::ServerAddress;

/// Raised by the settler on a `Stop` decision; the source then ends.
#[derive(Debug, Default)]
pub(crate) struct Stop {
    raised: AtomicBool,
    notify: Notify,
}

impl Stop {
    pub(crate) fn raise(&self) {
        self.raised.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    pub(crate) fn raised(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }

    /// `next`'s output, or `None` once the stop is raised. A message that is ready is taken
    /// without registering for the stop (the hot path); only a wait does.
    pub(crate) async fn or<T>(self: &Arc<Self>, next: impl Future<Output = T>) -> Option<T> {
        if self.raised() {
            return None;
        }
        let mut next = std::pin::pin!(next);
        if let Some(ready) = next.as_mut().now_or_never() {
            return Some(ready);
        }
        let stopped = self.notify.notified();
        tokio::pin!(stopped);
        // Registered before the second look, so a stop raised in between is not missed.
        stopped.as_mut().enable();
        if self.raised() {
            return None;
        }
        tokio::select! {
            biased;
            () = stopped => None,
            ready = next => Some(ready),
        }
    }
}

/// The server `client` is connected to, for `server.address` / `server.port`.
pub(crate) fn server_address(client: &async_nats::Client) -> Option<ServerAddress> {
    client.try_server_info().map(|info| ServerAddress {
        host: Arc::from(info.host.as_str()),
        port: info.port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stop_ends_a_wait_but_not_a_ready_message() {
        let stop = Arc::new(Stop::default());
        assert_eq!(stop.or(async { 1 }).await, Some(1));
        let waiting = {
            let stop = Arc::clone(&stop);
            tokio::spawn(async move { stop.or(std::future::pending::<u8>()).await })
        };
        tokio::task::yield_now().await;
        stop.raise();
        assert_eq!(waiting.await.unwrap(), None);
        assert_eq!(stop.or(async { 2 }).await, None, "nothing after a stop");
    }
}
