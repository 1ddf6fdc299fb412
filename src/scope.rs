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

/// The longest `correlation-id`, `causation-id` or `message-id` that is propagated (SPEC §2).
/// A longer or non-UTF-8 incoming id is replaced by a fresh one and counted as invalid.
pub const MAX_ID_BYTES: usize = 256;

/// `true` when `id` may be propagated: non-empty and at most [`MAX_ID_BYTES`].
pub(crate) fn id_ok(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_BYTES
}

/// `value` as an id that may be propagated (SPEC §2): not empty, at most [`MAX_ID_BYTES`],
/// UTF-8. The length is checked first, so an oversized value is never scanned.
pub(crate) fn usable_id(value: &[u8]) -> Option<&str> {
    if value.is_empty() || value.len() > MAX_ID_BYTES {
        return None;
    }
    std::str::from_utf8(value).ok()
}

/// Correlation id and message id of the message whose processing is under way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageScope {
    /// The correlation id followed by the message id, in one allocation.
    ids: Arc<str>,
    correlation_len: u32,
    has_message_id: bool,
}

impl MessageScope {
    /// A scope with the given ids.
    pub fn new(correlation_id: impl Into<String>, message_id: Option<String>) -> Self {
        let correlation_id = correlation_id.into();
        Self::from_parts(&correlation_id, message_id.as_deref())
    }

    fn from_parts(correlation_id: &str, message_id: Option<&str>) -> Self {
        let message = message_id.unwrap_or("");
        // Bounded ids fit on the stack, so the scope costs one allocation.
        let mut buffer = [0u8; 2 * MAX_ID_BYTES];
        let ids: Arc<str> = match buffer.get_mut(..correlation_id.len() + message.len()) {
            Some(both) => {
                both[..correlation_id.len()].copy_from_slice(correlation_id.as_bytes());
                both[correlation_id.len()..].copy_from_slice(message.as_bytes());
                Arc::from(std::str::from_utf8(both).unwrap_or_default())
            }
            None => Arc::from([correlation_id, message].concat()),
        };
        Self {
            ids,
            correlation_len: correlation_id.len() as u32,
            has_message_id: message_id.is_some(),
        }
    }

    /// The scope of an incoming message: its `correlation-id` (a new id when it has none, so
    /// that the flow it starts is still correlated) and its message id. Ids over
    /// [`MAX_ID_BYTES`] or not UTF-8 are replaced by fresh ones.
    pub fn of<M: IncomingMessage + ?Sized>(message: &M) -> Self {
        Self::checked(message).0
    }

    /// [`of`](Self::of), and whether an incoming id was unusable (for the invalid count).
    pub(crate) fn checked<M: IncomingMessage + ?Sized>(message: &M) -> (Self, bool) {
        let mut correlation: Option<&str> = None;
        let mut message_header: Option<&str> = None;
        let mut invalid = false;
        for (name, value) in message.headers() {
            let is_correlation = name.eq_ignore_ascii_case(header::CORRELATION_ID);
            let is_message = !is_correlation && name.eq_ignore_ascii_case(header::MESSAGE_ID);
            if !(is_correlation || is_message || name.eq_ignore_ascii_case(header::CAUSATION_ID)) {
                continue;
            }
            if value.is_empty() {
                // An empty id is a missing one, not a malformed one.
                continue;
            }
            let text = usable_id(value);
            invalid |= text.is_none();
            if is_correlation && correlation.is_none() {
                correlation = Some(text.unwrap_or(""));
            } else if is_message && message_header.is_none() {
                message_header = text;
            }
        }
        let mut fresh = IdBuffer::new();
        let correlation_id = match correlation {
            Some(id) if !id.is_empty() => id,
            _ => fresh.new_id(),
        };
        let native = message.message_id();
        let mut fresh_message = IdBuffer::new();
        let message_id = match native.as_deref() {
            // The header already checked above.
            Some(id) if message_header.is_some_and(|h| std::ptr::eq(h, id)) => Some(id),
            Some(id) if !id.is_empty() && id.len() <= MAX_ID_BYTES => Some(id),
            Some(id) if !id.is_empty() => {
                invalid = true;
                Some(fresh_message.new_id())
            }
            // No id at all: a fresh one, so that follow-ups still name their cause.
            _ => Some(fresh_message.new_id()),
        };
        (Self::from_parts(correlation_id, message_id), invalid)
    }

    /// The scope set on this thread by the innermost handler being polled.
    pub fn current() -> Option<Self> {
        CURRENT.with(|current| current.borrow().clone())
    }

    /// Runs `f` with the current scope, without cloning it.
    pub(crate) fn with_current<T>(f: impl FnOnce(Option<&MessageScope>) -> T) -> T {
        CURRENT.with(|current| f(current.borrow().as_ref()))
    }

    /// The business flow id.
    pub fn correlation_id(&self) -> &str {
        &self.ids[..self.correlation_len as usize]
    }

    /// The id of the message being processed.
    pub fn message_id(&self) -> Option<&str> {
        self.has_message_id
            .then(|| &self.ids[self.correlation_len as usize..])
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

/// Room for one generated id (a hyphenated UUID), so generating one allocates nothing.
pub(crate) struct IdBuffer([u8; uuid::fmt::Hyphenated::LENGTH]);

impl IdBuffer {
    pub(crate) fn new() -> Self {
        Self([0; uuid::fmt::Hyphenated::LENGTH])
    }

    /// A new UUIDv7, written into this buffer.
    pub(crate) fn new_id(&mut self) -> &str {
        new_uuid_v7().hyphenated().encode_lower(&mut self.0)
    }
}

/// A UUIDv7: the Unix time in milliseconds and 74 random bits.
///
/// The random bits come from `fastrand`'s per-thread generator: ids need to be unique, not
/// unpredictable, and this is several times cheaper than `uuid`'s own v7 path (a shared clock
/// sequence and a cryptographic generator).
pub(crate) fn new_uuid_v7() -> uuid::Uuid {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut random = [0u8; 10];
    fastrand::fill(&mut random);
    uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid()
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
