use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::{Dedup, DedupStore};
use crate::metrics::Metrics;

/// How long a done marker is kept by default: a redelivery within a day is caught.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// How long a claim holds an id by default.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);

/// Applies [`Dedup`] to a handler; see the [module docs](crate::dedup).
pub struct DedupLayer<St> {
    shared: Arc<Shared<St>>,
}

/// What every service and future of one layer shares.
pub(crate) struct Shared<St> {
    pub(crate) store: St,
    pub(crate) metrics: Metrics,
    pub(crate) retention: Duration,
    pub(crate) lease: Duration,
    pub(crate) fail_open: bool,
    /// Store failures are logged at most once a second, with the count of those not logged.
    pub(crate) store_warnings: super::Throttle,
    /// So are messages without an id.
    pub(crate) no_id_warnings: super::Throttle,
}

impl<St> Clone for DedupLayer<St> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<St: fmt::Debug> fmt::Debug for DedupLayer<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.shared.fmt(f)
    }
}

impl<St: fmt::Debug> fmt::Debug for Shared<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DedupLayer")
            .field("store", &self.store)
            .field("retention", &self.retention)
            .field("lease", &self.lease)
            .field("fail_open", &self.fail_open)
            .finish_non_exhaustive()
    }
}

impl<St: DedupStore> DedupLayer<St> {
    /// Deduplicates through `store`, counting duplicates in `metrics` (give it the consumer's
    /// metrics); done markers kept [`DEFAULT_RETENTION`], claims held [`DEFAULT_LEASE`], fails
    /// closed.
    pub fn new(store: St, metrics: Metrics) -> Self {
        Self {
            shared: Arc::new(Shared {
                store,
                metrics,
                retention: DEFAULT_RETENTION,
                lease: DEFAULT_LEASE,
                fail_open: false,
                store_warnings: super::Throttle::default(),
                no_id_warnings: super::Throttle::default(),
            }),
        }
    }

    /// How long a processed id is remembered (default 24 h): a redelivery later than this runs
    /// the handler again. Cover the longest redelivery you expect: a consumer down for a
    /// weekend, a replay from the dead-letter destination.
    pub fn retention(self, retention: Duration) -> Self {
        self.edit(|shared| shared.retention = retention)
    }

    /// How long a claim holds an id while its handler runs (default 60 s). Keep it above your
    /// longest handler run: a claim that expires while its handler still runs lets a
    /// concurrent duplicate in. A consumer that dies holds its ids until their lease ends;
    /// until then, their redeliveries fail as [`InFlight`](super::error::DedupErrorKind) and
    /// are retried.
    pub fn lease(self, lease: Duration) -> Self {
        self.edit(|shared| shared.lease = lease)
    }

    /// When the store fails, run the handler anyway (`true`) instead of failing the message
    /// with [`Unavailable`](super::error::DedupErrorKind) for a retry (`false`, the default).
    ///
    /// Failing open keeps messages flowing while the store is down, at the price of running
    /// the handler for duplicates that arrive meanwhile; nothing is recorded for the messages
    /// processed so. Choose it only for handlers that are idempotent on their own, or where a
    /// stalled consumer costs more than a duplicate.
    pub fn fail_open(self, fail_open: bool) -> Self {
        self.edit(|shared| shared.fail_open = fail_open)
    }

    fn edit(mut self, f: impl FnOnce(&mut Shared<St>)) -> Self {
        match Arc::get_mut(&mut self.shared) {
            Some(shared) => f(shared),
            None => {
                let mut shared = Shared {
                    store: self.shared.store.clone(),
                    metrics: self.shared.metrics.clone(),
                    retention: self.shared.retention,
                    lease: self.shared.lease,
                    fail_open: self.shared.fail_open,
                    store_warnings: super::Throttle::default(),
                    no_id_warnings: super::Throttle::default(),
                };
                f(&mut shared);
                self.shared = Arc::new(shared);
            }
        }
        self
    }
}

impl<S, St> Layer<S> for DedupLayer<St> {
    type Service = Dedup<S, St>;

    fn layer(&self, inner: S) -> Self::Service {
        Dedup {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}
