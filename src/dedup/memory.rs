//! A dedup store in this process's memory.

use std::fmt;
use std::future::{ready, Ready};
use std::time::{Duration, Instant};

use moka::ops::compute::Op;
use moka::policy::EvictionPolicy;

use super::error::StoreError;
use super::store::{Claim, ClaimToken, DedupKey, DedupStore};

/// Default bound on the keys a [`MemoryStore`] holds.
pub const DEFAULT_MAX_ENTRIES: u64 = 100_000;

/// A dedup store in this process's memory: bounded, every key expiring on its own time.
///
/// It deduplicates the deliveries that reach this process: redeliveries after a rebalance or
/// a failed commit while the process lives. It forgets everything on restart and knows nothing
/// of other processes; for that, use a shared store such as [`RedisStore`](super::RedisStore).
///
/// Built on [`moka`]'s concurrent cache. When it holds `max_entries` keys, the least recently
/// used are evicted first (LRU rather than moka's default admission policy, which may refuse
/// to store a new key at all — a claim or done marker that silently is not stored would let a
/// duplicate through). An evicted key is forgotten: size `max_entries` for the number of
/// messages you consume within the layer's retention time.
#[derive(Clone)]
pub struct MemoryStore {
    cache: moka::sync::Cache<DedupKey, Entry>,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.cache.entry_count())
            .field("max_entries", &self.cache.policy().max_capacity())
            .finish()
    }
}

/// A claim (with its token) or a done marker, and how long it lives.
#[derive(Clone, Debug)]
struct Entry {
    claim: Option<ClaimToken>,
    ttl: Duration,
}

/// Each entry lives as long as it says, counted from when it was written.
struct PerEntry;

impl moka::Expiry<DedupKey, Entry> for PerEntry {
    fn expire_after_create(&self, _: &DedupKey, entry: &Entry, _: Instant) -> Option<Duration> {
        Some(entry.ttl)
    }

    fn expire_after_update(
        &self,
        _: &DedupKey,
        entry: &Entry,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_ENTRIES)
    }
}

impl MemoryStore {
    /// A store of at most `max_entries` keys (claims and done markers together).
    pub fn new(max_entries: u64) -> Self {
        Self {
            cache: moka::sync::Cache::builder()
                .max_capacity(max_entries)
                .eviction_policy(EvictionPolicy::lru())
                .expire_after(PerEntry)
                .build(),
        }
    }

    /// Keys held now (claims and done markers), as the cache counts them: an approximation
    /// that catches up with recent writes lazily.
    pub fn len(&self) -> u64 {
        self.cache.entry_count()
    }

    /// `true` when [`len`](Self::len) is 0.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl DedupStore for MemoryStore {
    type ClaimFuture = Ready<Result<Claim, StoreError>>;
    type CompleteFuture = Ready<Result<(), StoreError>>;
    type ReleaseFuture = Ready<Result<(), StoreError>>;

    fn claim(&self, key: &DedupKey, token: ClaimToken, lease: Duration) -> Self::ClaimFuture {
        // Atomic per key: of two concurrent first claims, one inserts and the other sees it.
        let entry = self.cache.entry_by_ref(key).or_insert_with(|| Entry {
            claim: Some(token),
            ttl: lease,
        });
        ready(Ok(if entry.is_fresh() {
            Claim::Claimed
        } else if entry.value().claim.is_none() {
            Claim::Duplicate
        } else {
            Claim::InFlight
        }))
    }

    fn complete(&self, key: &DedupKey, ttl: Duration) -> Self::CompleteFuture {
        self.cache.insert(key.clone(), Entry { claim: None, ttl });
        ready(Ok(()))
    }

    fn release(&self, key: &DedupKey, token: ClaimToken) -> Self::ReleaseFuture {
        self.cache
            .entry_by_ref(key)
            .and_compute_with(|entry| match entry {
                Some(entry) if entry.value().claim == Some(token) => Op::Remove,
                _ => Op::Nop,
            });
        ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    fn now<T>(f: Ready<T>) -> T {
        f.now_or_never().expect("ready")
    }

    #[test]
    fn claim_complete_release() {
        let store = MemoryStore::new(100);
        let key = DedupKey::new("g", "m-1");
        let (mine, other) = (ClaimToken::new(), ClaimToken::new());
        let lease = Duration::from_secs(60);
        assert_eq!(now(store.claim(&key, mine, lease)).unwrap(), Claim::Claimed);
        assert_eq!(now(store.claim(&key, other, lease)).unwrap(), Claim::InFlight);
        // Another delivery's release leaves our claim alone.
        now(store.release(&key, other)).unwrap();
        assert_eq!(now(store.claim(&key, other, lease)).unwrap(), Claim::InFlight);
        now(store.release(&key, mine)).unwrap();
        assert_eq!(now(store.claim(&key, other, lease)).unwrap(), Claim::Claimed);
        now(store.complete(&key, Duration::from_secs(60))).unwrap();
        assert_eq!(now(store.claim(&key, mine, lease)).unwrap(), Claim::Duplicate);
        // A release after completion does not forget the done marker.
        now(store.release(&key, other)).unwrap();
        assert_eq!(now(store.claim(&key, mine, lease)).unwrap(), Claim::Duplicate);
        // Groups are apart.
        let elsewhere = DedupKey::new("h", "m-1");
        assert_eq!(
            now(store.claim(&elsewhere, mine, lease)).unwrap(),
            Claim::Claimed
        );
    }

    #[test]
    fn claims_and_done_markers_expire() {
        let store = MemoryStore::new(100);
        let key = DedupKey::new("g", "m-2");
        let short = Duration::from_millis(30);
        assert_eq!(
            now(store.claim(&key, ClaimToken::new(), short)).unwrap(),
            Claim::Claimed
        );
        std::thread::sleep(Duration::from_millis(60));
        // The lease ran out: a crashed holder does not block the id for ever.
        assert_eq!(
            now(store.claim(&key, ClaimToken::new(), short)).unwrap(),
            Claim::Claimed
        );
        now(store.complete(&key, short)).unwrap();
        assert_eq!(
            now(store.claim(&key, ClaimToken::new(), short)).unwrap(),
            Claim::Duplicate
        );
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(
            now(store.claim(&key, ClaimToken::new(), short)).unwrap(),
            Claim::Claimed
        );
    }

    #[test]
    fn bounded() {
        let store = MemoryStore::new(50);
        for i in 0..1_000 {
            let key = DedupKey::new("g", &i.to_string());
            now(store.complete(&key, Duration::from_secs(60))).unwrap();
        }
        store.cache.run_pending_tasks();
        assert!(store.len() <= 50, "{}", store.len());
    }
}
