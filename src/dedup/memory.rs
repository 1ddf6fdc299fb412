//! A dedup store in this process's memory.

use std::fmt;
use std::future::{ready, Ready};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use quick_cache::unsync::Cache;

use super::error::StoreError;
use super::store::{Claim, ClaimToken, DedupKey, DedupStore};

/// Default bound on the keys a [`MemoryStore`] holds.
pub const DEFAULT_MAX_ENTRIES: u64 = 100_000;

/// Independent parts of the store, each behind its own lock, so concurrent lanes rarely wait.
const SHARDS: usize = 16;

/// A dedup store in this process's memory: bounded, every key expiring on its own time.
///
/// It deduplicates the deliveries that reach this process: redeliveries after a rebalance or
/// a failed commit while the process lives. It forgets everything on restart and knows nothing
/// of other processes; for that, use a shared store such as `RedisStore` (feature `redis`).
///
/// Built on [`quick_cache`]: sixteen caches, each behind a lock, together holding at most
/// `max_entries` keys and evicting by recency and frequency (S3-FIFO) beyond that. Every
/// entry carries its deadline, and an entry past it counts as absent. An evicted key is
/// forgotten: size `max_entries` for the number of messages you consume within the layer's
/// retention time.
#[derive(Clone)]
pub struct MemoryStore {
    shards: Arc<[Mutex<Cache<DedupKey, Entry>>]>,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.len())
            .finish_non_exhaustive()
    }
}

/// A claim (with its token) or a done marker, and when it expires.
#[derive(Clone, Debug)]
struct Entry {
    claim: Option<ClaimToken>,
    until: Instant,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_ENTRIES)
    }
}

impl MemoryStore {
    /// A store of at most `max_entries` keys (claims and done markers together; rounded up to
    /// a multiple of 16).
    pub fn new(max_entries: u64) -> Self {
        let per_shard = usize::try_from(max_entries.div_ceil(SHARDS as u64))
            .unwrap_or(usize::MAX)
            .max(1);
        Self {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(Cache::new(per_shard)))
                .collect(),
        }
    }

    /// Keys held now (claims and done markers, expired ones until they are evicted or
    /// replaced).
    pub fn len(&self) -> u64 {
        (0..SHARDS).map(|i| self.lock_index(i).len() as u64).sum()
    }

    /// `true` when [`len`](Self::len) is 0.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock_index(&self, index: usize) -> MutexGuard<'_, Cache<DedupKey, Entry>> {
        // A panic under the lock cannot leave an entry half-written: every write is one
        // assignment or one call of the cache.
        self.shards[index % SHARDS]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The shard of `key`, chosen by the top bits of its hash.
    fn lock(&self, key: &DedupKey) -> MutexGuard<'_, Cache<DedupKey, Entry>> {
        self.lock_index((key.hash_value() >> 60) as usize)
    }
}

impl DedupStore for MemoryStore {
    type ClaimFuture = Ready<Result<Claim, StoreError>>;
    type CompleteFuture = Ready<Result<(), StoreError>>;
    type ReleaseFuture = Ready<Result<(), StoreError>>;

    fn claim(&self, key: &DedupKey, token: ClaimToken, lease: Duration) -> Self::ClaimFuture {
        let now = Instant::now();
        let claimed = Entry {
            claim: Some(token),
            until: now + lease,
        };
        // Atomic per key: the shard stays locked from the look-up to the write.
        let mut shard = self.lock(key);
        let found = shard.get_mut(key).map(|mut entry| {
            if entry.until <= now {
                *entry = claimed.clone();
                Claim::Claimed
            } else if entry.claim.is_none() {
                Claim::Duplicate
            } else {
                Claim::InFlight
            }
        });
        let claim = found.unwrap_or_else(|| {
            shard.insert(key.clone(), claimed);
            Claim::Claimed
        });
        ready(Ok(claim))
    }

    fn complete(&self, key: &DedupKey, ttl: Duration) -> Self::CompleteFuture {
        let done = Entry {
            claim: None,
            until: Instant::now() + ttl,
        };
        let mut shard = self.lock(key);
        let updated = shard.get_mut(key).map(|mut entry| *entry = done.clone());
        if updated.is_none() {
            shard.insert(key.clone(), done);
        }
        ready(Ok(()))
    }

    fn release(&self, key: &DedupKey, token: ClaimToken) -> Self::ReleaseFuture {
        self.lock(key)
            .remove_if(key, |entry: &Entry| entry.claim == Some(token));
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
        assert_eq!(
            now(store.claim(&key, other, lease)).unwrap(),
            Claim::InFlight
        );
        // Another delivery's release leaves our claim alone.
        now(store.release(&key, other)).unwrap();
        assert_eq!(
            now(store.claim(&key, other, lease)).unwrap(),
            Claim::InFlight
        );
        now(store.release(&key, mine)).unwrap();
        assert_eq!(
            now(store.claim(&key, other, lease)).unwrap(),
            Claim::Claimed
        );
        now(store.complete(&key, Duration::from_secs(60))).unwrap();
        assert_eq!(
            now(store.claim(&key, mine, lease)).unwrap(),
            Claim::Duplicate
        );
        // A release after completion does not forget the done marker.
        now(store.release(&key, other)).unwrap();
        assert_eq!(
            now(store.claim(&key, mine, lease)).unwrap(),
            Claim::Duplicate
        );
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
        // Rounded up to a multiple of the sixteen shards.
        assert!(store.len() <= 64, "{}", store.len());
    }
}
