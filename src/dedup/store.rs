//! The one small trait every dedup store implements, and the key it stores under.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::error::StoreError;

/// Where the idempotency layer remembers which messages are being processed and which are
/// done.
///
/// A key goes through three states: absent, *claimed* (a delivery is processing it; the claim
/// carries that delivery's [`ClaimToken`] and expires after a lease, so a crashed consumer
/// does not hold it forever), and *done* (expires after the layer's retention time).
///
/// The futures are `'static`: a store is a cheap handle (clone it into the future), and the
/// key is shared ([`DedupKey`] clones are a reference count). A store whose answers are
/// immediate (like [`MemoryStore`](super::MemoryStore)) returns [`std::future::Ready`] and
/// costs no allocation; a networked one boxes.
pub trait DedupStore: Clone + Send + Sync + 'static {
    /// What [`claim`](Self::claim) returns.
    type ClaimFuture: Future<Output = Result<Claim, StoreError>> + Send + 'static;
    /// What [`complete`](Self::complete) returns.
    type CompleteFuture: Future<Output = Result<(), StoreError>> + Send + 'static;
    /// What [`release`](Self::release) returns.
    type ReleaseFuture: Future<Output = Result<(), StoreError>> + Send + 'static;

    /// Atomically: when `key` is absent (or expired), claims it for `lease` with `token` and
    /// answers [`Claim::Claimed`]; when it is done, [`Claim::Duplicate`]; when another claim
    /// holds it, [`Claim::InFlight`].
    fn claim(&self, key: &DedupKey, token: ClaimToken, lease: Duration) -> Self::ClaimFuture;

    /// Marks `key` done for `ttl`, whoever holds it (the handler succeeded).
    fn complete(&self, key: &DedupKey, ttl: Duration) -> Self::CompleteFuture;

    /// Removes the claim on `key` if it is still the one made with `token` (the handler
    /// failed, so the next delivery may run it); a done marker or another delivery's claim is
    /// left alone.
    fn release(&self, key: &DedupKey, token: ClaimToken) -> Self::ReleaseFuture;
}

/// The answer to [`DedupStore::claim`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The key is ours until the lease ends: run the handler.
    Claimed,
    /// The key is done: this delivery is a duplicate.
    Duplicate,
    /// Another delivery holds the key now.
    InFlight,
}

/// Tells one delivery's claim from another's, so that a delivery releases only its own claim
/// (not one made by another consumer after its lease ran out).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClaimToken(u64);

impl ClaimToken {
    /// A random token.
    pub fn new() -> Self {
        // Never 0, so a store may use 0 for "no token".
        Self(fastrand::u64(1..))
    }

    /// No token (a call that claimed nothing).
    pub(crate) const NONE: Self = Self(0);

    /// The token as a number, for stores that write it down.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl Default for ClaimToken {
    fn default() -> Self {
        Self::new()
    }
}

/// The text every key starts with (SPEC §8).
pub const KEY_PREFIX: &str = "eventscope:dedup:";

/// What a message is deduplicated on: its consumer group and its id (SPEC §2), written as
/// `eventscope:dedup:{group}:{id}` (SPEC §8), which is also the Redis key.
///
/// Cloning shares the text. The key's hash is computed once, when it is made: hashing a key
/// (as a store's map does on every look-up) hashes that number, not the text again.
#[derive(Clone, Debug)]
pub struct DedupKey {
    key: Arc<str>,
    /// Where the group ends in `key`.
    group_end: u32,
    /// `key` hashed with [`KEY_HASHER`].
    hash: u64,
}

/// How a key's text is hashed, once per key: foldhash, seeded with a constant so equal keys
/// hash alike in every process.
const KEY_HASHER: foldhash::fast::FixedState = foldhash::fast::FixedState::with_seed(0x6576_656e);

impl PartialEq for DedupKey {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.group_end == other.group_end && self.key == other.key
    }
}

impl Eq for DedupKey {}

impl std::hash::Hash for DedupKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// Room for the prefix, a group name and the longest id, so building a key allocates once.
const INLINE_KEY: usize = 384;

impl DedupKey {
    /// The key of message `id` in consumer group `group` (empty for none).
    pub fn new(group: &str, id: &str) -> Self {
        let parts = [KEY_PREFIX, group, ":", id];
        let mut inline = arrayvec::ArrayString::<INLINE_KEY>::new();
        let key = if parts.iter().all(|part| inline.try_push_str(part).is_ok()) {
            Arc::from(inline.as_str())
        } else {
            Arc::from(parts.concat())
        };
        Self {
            hash: std::hash::BuildHasher::hash_one(&KEY_HASHER, &*key),
            key,
            group_end: (KEY_PREFIX.len() + group.len()) as u32,
        }
    }

    /// The key's hash, computed when it was made (a store picks its shard by it).
    pub(crate) fn hash_value(&self) -> u64 {
        self.hash
    }

    /// `eventscope:dedup:{group}:{id}`.
    pub fn as_str(&self) -> &str {
        &self.key
    }

    /// The consumer group.
    pub fn group(&self) -> &str {
        self.key
            .get(KEY_PREFIX.len()..self.group_end as usize)
            .unwrap_or_default()
    }

    /// The message id.
    pub fn id(&self) -> &str {
        self.key
            .get(self.group_end as usize + 1..)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_keys_hash_alike_and_groups_stay_apart() {
        use std::hash::BuildHasher;
        let hasher = std::collections::hash_map::RandomState::new();
        let (a, b) = (DedupKey::new("g", "m-1"), DedupKey::new("g", "m-1"));
        assert_eq!(a, b);
        assert_eq!(hasher.hash_one(&a), hasher.hash_one(&b));
        assert_ne!(a, DedupKey::new("g", "m-2"));
        assert_ne!(
            DedupKey::new("g", "m-1").hash_value(),
            DedupKey::new("g", "m-2").hash_value()
        );
        // The same text, split into group and id differently, is another key.
        let (left, right) = (DedupKey::new("a", "b:c"), DedupKey::new("a:b", "c"));
        assert_eq!(left.as_str(), right.as_str());
        assert_ne!(left, right);
    }

    #[test]
    fn keys_read_back() {
        let key = DedupKey::new("billing", "orders/0/42");
        assert_eq!(key.as_str(), "eventscope:dedup:billing:orders/0/42");
        assert_eq!(key.group(), "billing");
        assert_eq!(key.id(), "orders/0/42");
        let empty = DedupKey::new("", "m-1");
        assert_eq!(empty.as_str(), "eventscope:dedup::m-1");
        assert_eq!((empty.group(), empty.id()), ("", "m-1"));
        let long = "g".repeat(1000);
        let key = DedupKey::new(&long, "é");
        assert_eq!((key.group(), key.id()), (&*long, "é"));
        assert_ne!(ClaimToken::new(), ClaimToken::new());
    }
}
