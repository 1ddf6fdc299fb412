//! The sealed link between a [`Mode`](super::Mode) and the loop that runs it, implemented by
//! this crate only, for [`Ordered`](super::Ordered) and [`Unordered`](super::Unordered).
//!
//! The trait is `pub` inside a private module: the public `Mode` trait names it, and nothing
//! outside the crate can.

use std::future::Future;

use super::handle::Handle;
use super::report::Core;
use super::ConsumeError;

/// Runs an opened adapter until shutdown; see `ordered.rs` and `unordered.rs`.
pub trait Run<M> {
    /// Hands `handler` up to `max_batch` messages at a time until `shutdown` resolves or the
    /// source fails for good, then drains, settles what finished, and returns.
    fn run<H>(
        self,
        handler: H,
        max_batch: usize,
        core: Core,
        shutdown: impl Future<Output = ()> + Send,
    ) -> impl Future<Output = Result<(), ConsumeError>> + Send
    where
        H: Handle<M> + Clone;
}
