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
use std::cell::Cell;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

use crate::header::{id_ok, usable_id, IdBuffer, Known};
use crate::message::IncomingMessage;

thread_local! {
    /// The scope entered last on this thread, or null. Entering keeps the one before in the
    /// guard, so a handler polled inside another's poll nests; no scope is copied, and the
    /// access is a plain thread-local read (no lazy initialisation, nothing to drop).
    static CURRENT: Cell<*const MessageScope> = const { Cell::new(std::ptr::null()) };
}

/// Correlation id and message id of the message whose processing is under way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageScope {
    /// The correlation id followed by the message id.
    ids: Ids,
    correlation_len: u32,
    has_message_id: bool,
}

/// Room for two UUIDs: the ids of nearly every message are kept in place, so a scope costs no
/// allocation; longer ids share one.
const INLINE_IDS: usize = 72;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Ids {
    Inline(arrayvec::ArrayString<INLINE_IDS>),
    Shared(Arc<str>),
}

impl Ids {
    fn new(first: &str, second: &str) -> Self {
        let mut inline = arrayvec::ArrayString::new();
        match inline
            .try_push_str(first)
            .and_then(|()| inline.try_push_str(second))
        {
            Ok(()) => Self::Inline(inline),
            Err(_) => Self::Shared(Arc::from([first, second].concat())),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            Self::Inline(ids) => ids,
            Self::Shared(ids) => ids,
        }
    }
}

impl MessageScope {
    /// A scope with the given ids.
    pub fn new(correlation_id: impl Into<String>, message_id: Option<String>) -> Self {
        let correlation_id = correlation_id.into();
        Self::from_parts(&correlation_id, message_id.as_deref())
    }

    fn from_parts(correlation_id: &str, message_id: Option<&str>) -> Self {
        Self {
            ids: Ids::new(correlation_id, message_id.unwrap_or("")),
            correlation_len: correlation_id.len() as u32,
            has_message_id: message_id.is_some(),
        }
    }

    /// The scope of an incoming message: its `correlation-id` (a new id when it has none, so
    /// that the flow it starts is still correlated) and its message id. Ids over
    /// [`MAX_ID_BYTES`](crate::header::MAX_ID_BYTES), not UTF-8 or holding a control character
    /// are replaced by fresh ones.
    pub fn of<M: IncomingMessage + ?Sized>(message: &M) -> Self {
        Self::checked(message).0
    }

    /// [`of`](Self::of), and whether an incoming id was unusable (for the invalid count).
    pub(crate) fn checked<M: IncomingMessage + ?Sized>(message: &M) -> (Self, bool) {
        let mut ids = IdScan::default();
        for (name, value) in message.headers() {
            if let Some(known) = Known::of(name) {
                ids.observe(known, value);
            }
        }
        ids.scope(message)
    }

    /// The scope set on this thread by the innermost handler being polled.
    pub fn current() -> Option<Self> {
        Self::with_current(|scope| scope.cloned())
    }

    /// Runs `f` with the current scope, without cloning it.
    #[allow(unsafe_code)]
    pub(crate) fn with_current<T>(f: impl FnOnce(Option<&MessageScope>) -> T) -> T {
        // SAFETY: a non-null pointer was set by a `ScopeGuard` that is still alive: the guard
        // borrows the scope for its whole life (so the scope is neither moved, changed nor
        // dropped), it cannot leave this thread, and guards are dropped innermost first, each
        // restoring the pointer it found. Guards are crate-private and never forgotten.
        f(unsafe { CURRENT.get().as_ref() })
    }

    /// The business flow id.
    pub fn correlation_id(&self) -> &str {
        self.ids
            .as_str()
            .get(..self.correlation_len as usize)
            .unwrap_or_default()
    }

    /// The id of the message being processed.
    pub fn message_id(&self) -> Option<&str> {
        self.has_message_id.then(|| {
            self.ids
                .as_str()
                .get(self.correlation_len as usize..)
                .unwrap_or_default()
        })
    }

    /// Runs `future` with this scope set on every poll.
    pub fn scope<F: Future>(self, future: F) -> Scoped<F> {
        Scoped {
            inner: future,
            scope: self,
        }
    }

    /// Sets this scope until the guard drops.
    #[inline]
    pub(crate) fn enter(&self) -> ScopeGuard<'_> {
        ScopeGuard {
            previous: CURRENT.replace(self),
            _scope: PhantomData,
        }
    }
}

/// The id headers of an incoming message, gathered in the pass over its headers that also
/// finds its trace context (the process layers make one pass for both).
#[derive(Default)]
pub(crate) struct IdScan<'a> {
    correlation: Option<&'a [u8]>,
    message: Option<&'a [u8]>,
    invalid: bool,
}

impl<'a> IdScan<'a> {
    /// Takes in one header; trace headers are not its business and are ignored.
    pub(crate) fn observe(&mut self, known: Known, value: &'a [u8]) {
        // An empty id is a missing one, not a malformed one.
        if value.is_empty() {
            return;
        }
        let first = match known {
            Known::CorrelationId => &mut self.correlation,
            Known::MessageId => &mut self.message,
            Known::CausationId => {
                // Not propagated, but a bad one is counted like the others (SPEC §2).
                self.invalid |= usable_id(value).is_none();
                return;
            }
            Known::Traceparent | Known::Tracestate | Known::Baggage => return,
        };
        match first {
            None => *first = Some(value),
            // A repeated header is checked for the count; the first one is the one used.
            Some(_) => self.invalid |= usable_id(value).is_none(),
        }
    }

    /// The usable correlation id and message id (the header's, else the adapter's native id),
    /// and whether any id was unusable. A usable `message-id` header is the message id (SPEC
    /// §2: it comes before the broker's native id), so the message is asked for its
    /// [`message_id`](IncomingMessage::message_id) only when it has none.
    fn resolve<'m, M: IncomingMessage + ?Sized>(
        &self,
        message: &'m M,
    ) -> (Option<&'a str>, Option<Cow<'a, str>>, bool)
    where
        'm: 'a,
    {
        let mut invalid = self.invalid;
        let mut check = |value: Option<&'a [u8]>| {
            let id = value.and_then(usable_id);
            invalid |= value.is_some() && id.is_none();
            id
        };
        let correlation = check(self.correlation);
        // The first message of a flow carries its own id as correlation id: checked once.
        let same = match (self.correlation, self.message) {
            (Some(c), Some(m)) => crate::text::same(c, m),
            _ => false,
        };
        let header_id = if same {
            correlation
        } else {
            check(self.message)
        };
        let message_id = match header_id {
            Some(id) => Some(Cow::Borrowed(id)),
            None => match message.message_id() {
                Some(id) if id_ok(&id) => Some(id),
                Some(id) => {
                    invalid |= !id.is_empty();
                    None
                }
                None => None,
            },
        };
        (correlation, message_id, invalid)
    }

    /// Whether an id is unusable, as [`scope`](Self::scope) would say, without building the
    /// scope or generating ids.
    pub(crate) fn is_invalid<M: IncomingMessage + ?Sized>(&self, message: &'a M) -> bool {
        self.resolve(message).2
    }

    /// The scope these ids give `message` (fresh ids for missing or unusable ones, so that the
    /// flow is still correlated and follow-ups still name their cause), and whether one of the
    /// message's ids was unusable.
    pub(crate) fn scope<M: IncomingMessage + ?Sized>(self, message: &'a M) -> (MessageScope, bool) {
        let (correlation, message_id, invalid) = self.resolve(message);
        // Buffers only for the ids that are generated.
        let (mut fresh, mut fresh_message);
        let correlation_id = match correlation {
            Some(id) => id,
            None => {
                fresh = IdBuffer::new();
                fresh.new_id()
            }
        };
        let message_id = match message_id.as_deref() {
            Some(id) => id,
            None => {
                fresh_message = IdBuffer::new();
                fresh_message.new_id()
            }
        };
        (
            MessageScope::from_parts(correlation_id, Some(message_id)),
            invalid,
        )
    }
}

/// Leaves the scope on drop, making the previous one current again. Not `Send` (it holds a
/// raw pointer): it must be dropped on the thread whose current scope it set.
pub(crate) struct ScopeGuard<'a> {
    previous: *const MessageScope,
    _scope: PhantomData<&'a MessageScope>,
}

impl Drop for ScopeGuard<'_> {
    fn drop(&mut self) {
        CURRENT.set(self.previous);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_ids_read_back() {
        let short = MessageScope::new("order-42", Some("evt-1".into()));
        assert_eq!(short.correlation_id(), "order-42");
        assert_eq!(short.message_id(), Some("evt-1"));
        let long = "x".repeat(200);
        let scope = MessageScope::new(long.clone(), Some("é".repeat(100)));
        assert_eq!(scope.correlation_id(), long);
        assert_eq!(scope.message_id(), Some(&*"é".repeat(100)));
        let none = MessageScope::new("c", None);
        assert_eq!(none.message_id(), None);
        assert_eq!(none, MessageScope::new("c", None));
        assert_ne!(none, MessageScope::new("c", Some(String::new())));
    }

    /// Headers, and a native id the adapter would fall back to.
    struct Incoming(crate::message::HeaderList, Option<String>);

    impl crate::message::Headers for Incoming {
        fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
            self.0.iter()
        }
    }

    impl IncomingMessage for Incoming {
        fn system(&self) -> &'static str {
            "test"
        }
        fn destination(&self) -> &str {
            "t"
        }
        fn message_id(&self) -> Option<std::borrow::Cow<'_, str>> {
            crate::message::header_id(self)
                .map(std::borrow::Cow::Borrowed)
                .or_else(|| self.1.as_deref().map(std::borrow::Cow::Borrowed))
        }
    }

    #[test]
    fn checking_ids_agrees_with_building_the_scope() {
        let long = "x".repeat(crate::header::MAX_ID_BYTES + 1);
        let values: [&[u8]; 5] = [b"ok-1", b"", b"\xff\xfe", long.as_bytes(), b"ok-2"];
        let natives = [None, Some("t/0/1".to_owned()), Some(long.clone())];
        for correlation in [None, Some(0), Some(2), Some(3)] {
            for message in [None, Some(0), Some(1), Some(2), Some(3)] {
                for causation in [None, Some(2)] {
                    for native in &natives {
                        let mut headers = crate::message::HeaderList::new();
                        for (name, value) in [
                            ("correlation-id", correlation),
                            ("Message-Id", message),
                            ("causation-id", causation),
                        ] {
                            if let Some(value) = value {
                                headers.push_bytes(name, values[value].to_vec());
                            }
                        }
                        let incoming = Incoming(headers, native.clone());
                        let (_, built) = MessageScope::checked(&incoming);
                        let mut ids = IdScan::default();
                        for (name, value) in incoming.0.iter() {
                            if let Some(known) = Known::of(name) {
                                ids.observe(known, value);
                            }
                        }
                        assert_eq!(
                            ids.is_invalid(&incoming),
                            built,
                            "{correlation:?} {message:?} {causation:?} {native:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn entered_scopes_nest_and_unwind() {
        let outer = MessageScope::new("outer", None);
        let inner = MessageScope::new("inner", None);
        assert!(MessageScope::current().is_none());
        {
            let _outer = outer.enter();
            {
                let _inner = inner.enter();
                assert_eq!(MessageScope::current(), Some(inner.clone()));
            }
            assert_eq!(MessageScope::current(), Some(outer.clone()));
        }
        assert!(MessageScope::current().is_none());
    }
}
