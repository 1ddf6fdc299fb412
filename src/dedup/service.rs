use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use super::future::ResponseFuture;
use super::layer::Shared;
use super::{ClaimToken, DedupKey, DedupStore, Processed};
use crate::message::IncomingMessage;
use crate::BoxError;

/// A handler that runs at most once per message id and consumer group; built by
/// [`DedupLayer`](super::DedupLayer).
///
/// The handler must be `Clone`: the claim is awaited before the handler is called, so the
/// instance made ready by `poll_ready` goes into the future and a clone takes its place (as in
/// tower's `AsyncFilter`). Consumer handlers are `Clone` anyway.
pub struct Dedup<S, St> {
    pub(crate) inner: S,
    pub(crate) shared: Arc<Shared<St>>,
}

impl<S: Clone, St> Clone for Dedup<S, St> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug, St: fmt::Debug> fmt::Debug for Dedup<S, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dedup")
            .field("inner", &self.inner)
            .field("layer", &self.shared)
            .finish()
    }
}

impl<S, St> Dedup<S, St> {
    /// The wrapped handler.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped handler, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the handler.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, St, M> Service<M> for Dedup<S, St>
where
    S: Service<M> + Clone,
    S::Error: Into<BoxError>,
    St: DedupStore,
    M: IncomingMessage,
{
    type Response = Processed<S::Response>;
    type Error = BoxError;
    type Future = ResponseFuture<S, M, St>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, message: M) -> Self::Future {
        // The SPEC §2 id, without the fresh one the process layer's scope would make up for a
        // message that has none: a fresh id never repeats, so it cannot find a duplicate.
        let key = match message.message_id() {
            Some(id) if crate::header::id_ok(&id) => {
                DedupKey::new(message.consumer_group().unwrap_or(""), &id)
            }
            _ => {
                if let Some(skipped) = self.shared.no_id_warnings.allow() {
                    tracing::warn!(
                        messaging.system = message.system(),
                        messaging.destination.name = message.destination(),
                        skipped,
                        "a message without a usable id cannot be deduplicated: it is processed as is"
                    );
                }
                return ResponseFuture::pass(self.inner.call(message), &self.shared);
            }
        };
        let token = ClaimToken::new();
        let claim = self.shared.store.claim(&key, token, self.shared.lease);
        let ready = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, ready);
        ResponseFuture::claim(claim, service, message, key, token, &self.shared)
    }
}
