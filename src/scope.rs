//! The message being processed, as seen by code that runs inside a handler.
//!
//! While the process layer runs a handler, it sets a [`MessageScope`] with the correlation id and
//! message id of the message at hand. The publish layer reads it so that every follow-up event
//! carries the same `correlation-id` and a `causation-id` naming the message that caused it.
//! The scope is per task poll, like a `tracing` span; work moved to another task keeps it with
//! [`MessageScope::scope`].
//!
//! # Example
//!
//! ```
//! use eventscope::scope::MessageScope;
//!
//! let scope = MessageScope::new("order-42", Some("evt-1".into()));
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let seen = scope.scope(async { MessageScope::current() }).await;
//! assert_eq!(seen.unwrap().correlation_id(), "order-42");
//! # });
//! assert!(MessageScope::current().is_none());
//! ```

use std::borrow::Cow;
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

use crate::message::IncomingMessage;
use crate::propagation::header;

thread_local! {
    static CURRENT: RefCell<Option<MessageScope>> = const { RefCell::new(None) };
}

/// Correlation id and message id of the message whose processing is under way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageScope {
    inner: Arc<ScopeIds>,
}

#[derive(Debug, PartialEq, Eq)]
struct ScopeIds {
    correlation_id: String,
    message_id: Option<String>,
}

impl MessageScope {
    /// A scope with the given ids.
    pub fn new(correlation_id: impl Into<String>, message_id: Option<String>) -> Self {
        Self {
            inner: Arc::new(ScopeIds {
                correlation_id: correlation_id.into(),
                message_id,
            }),
        }
    }

    /// The scope of an incoming message: its `correlation-id` (a new id when it has none, so
    /// that the flow it starts is still correlated) and its message id.
    pub fn of<M: IncomingMessage + ?Sized>(message: &M) -> Self {
        let correlation_id = message
            .header_str(header::CORRELATION_ID)
            .filter(|id| !id.is_empty())
            .map_or_else(crate::message::new_id, str::to_owned);
        let message_id = message.message_id().map(Cow::into_owned);
        Self::new(correlation_id, message_id)
    }

    /// The scope set on this thread by the innermost handler being polled.
    pub fn current() -> Option<Self> {
        CURRENT.with(|current| current.borrow().clone())
    }

    /// The business flow id.
    pub fn correlation_id(&self) -> &str {
        &self.inner.correlation_id
    }

    /// The id of the message being processed.
    pub fn message_id(&self) -> Option<&str> {
        self.inner.message_id.as_deref()
    }

    /// Runs `future` with this scope set on every poll.
    pub fn scope<F: Future>(self, future: F) -> Scoped<F> {
        Scoped {
            inner: future,
            scope: self,
        }
    }

    /// Sets this scope until the guard drops.
    pub(crate) fn enter(&self) -> ScopeGuard {
        let previous = CURRENT.with(|current| current.replace(Some(self.clone())));
        ScopeGuard { previous }
    }
}

/// Restores the previous scope on drop.
pub(crate) struct ScopeGuard {
    previous: Option<MessageScope>,
}

impl Drop for ScopeGuard {
    fn drop(&mut self) {
        CURRENT.with(|current| *current.borrow_mut() = self.previous.take());
    }
}

pin_project! {
    /// A future that runs with a [`MessageScope`] set; see [`MessageScope::scope`].
    #[derive(Debug)]
    #[must_use = "futures do nothing unless polled"]
    pub struct Scoped<F> {
        #[pin]
        inner: F,
        scope: MessageScope,
    }
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _guard = this.scope.enter();
        this.inner.poll(cx)
    }
}
