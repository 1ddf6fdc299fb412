//! Locks that carry on after a panic.
//!
//! A `std` lock is poisoned when a thread panics while holding it, and every later `lock()`
//! returns an error. eventscope's locks guard small maps, queues and counters, and no critical
//! section runs user code or leaves its data half-changed: each one makes a single insert,
//! remove, swap or read. So the data behind a poisoned lock is as sound as before the panic,
//! and refusing it would turn one panic elsewhere into a consumer, publisher or metric that
//! fails for good. These methods take the guard either way; every lock in the crate goes
//! through them.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Locking that recovers a poisoned lock; see the [module docs](self).
pub(crate) trait Recover<T: ?Sized> {
    type Guard<'a>
    where
        Self: 'a;
    /// The guard, poisoned or not.
    fn locked(&self) -> Self::Guard<'_>;
}

impl<T: ?Sized> Recover<T> for Mutex<T> {
    type Guard<'a>
        = MutexGuard<'a, T>
    where
        T: 'a;

    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// [`Recover`] for both sides of a `RwLock`.
pub(crate) trait RecoverRw<T: ?Sized> {
    /// The read guard, poisoned or not.
    fn read_locked(&self) -> RwLockReadGuard<'_, T>;
    /// The write guard, poisoned or not.
    fn write_locked(&self) -> RwLockWriteGuard<'_, T>;
}

impl<T: ?Sized> RecoverRw<T> for RwLock<T> {
    fn read_locked(&self) -> RwLockReadGuard<'_, T> {
        self.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write_locked(&self) -> RwLockWriteGuard<'_, T> {
        self.write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
