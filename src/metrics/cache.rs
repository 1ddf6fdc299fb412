//! Resolved metric children keyed by label values, so the hot path does one hash lookup and
//! no allocation instead of one `with_label_values` per family.

use crate::sync::RecoverRw;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, RwLock};

type Entries<T> = Vec<(Box<[Box<str>]>, i64, Arc<T>)>;

pub(crate) struct LabelCache<T> {
    /// Keyed by an already computed hash, so the map itself need not hash again.
    map: RwLock<HashMap<u64, Entries<T>, BuildHasherDefault<Identity>>>,
}

impl<T> Default for LabelCache<T> {
    fn default() -> Self {
        Self {
            map: RwLock::default(),
        }
    }
}

/// A multiply-rotate hash over label values. The keys are label values the cardinality bound
/// already limits, and colliding keys only share a bucket, so speed wins over DoS resistance.
fn label_hash(parts: &[&str], slot: i64) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mix = |h: u64, word: u64| (h.rotate_left(5) ^ word).wrapping_mul(K);
    let mut hash = mix(0, slot as u64);
    for part in parts {
        let mut chunks = part.as_bytes().chunks_exact(8);
        for chunk in &mut chunks {
            hash = mix(hash, u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8])));
        }
        let mut tail = [0u8; 8];
        tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
        // The length separates ("ab", "c") from ("a", "bc").
        hash = mix(mix(hash, u64::from_le_bytes(tail)), part.len() as u64);
    }
    hash
}

/// Passes a precomputed `u64` through.
#[derive(Default)]
struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 << 8) | u64::from(*byte);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

fn matches(stored: &[Box<str>], parts: &[&str]) -> bool {
    stored.len() == parts.len() && stored.iter().zip(parts).all(|(a, b)| **a == **b)
}

impl<T> LabelCache<T> {
    fn hash(&self, parts: &[&str], slot: i64) -> u64 {
        label_hash(parts, slot)
    }

    pub(crate) fn get(&self, parts: &[&str], slot: i64) -> Option<Arc<T>> {
        let hash = self.hash(parts, slot);
        let map = self.map.read_locked();
        map.get(&hash)?
            .iter()
            .find(|(stored, s, _)| *s == slot && matches(stored, parts))
            .map(|(_, _, value)| Arc::clone(value))
    }

    pub(crate) fn get_or_insert_with(
        &self,
        parts: &[&str],
        slot: i64,
        make: impl FnOnce() -> T,
    ) -> Arc<T> {
        if let Some(hit) = self.get(parts, slot) {
            return hit;
        }
        let hash = self.hash(parts, slot);
        let mut map = self.map.write_locked();
        let bucket = map.entry(hash).or_default();
        if let Some((_, _, value)) = bucket
            .iter()
            .find(|(stored, s, _)| *s == slot && matches(stored, parts))
        {
            return Arc::clone(value);
        }
        let value = Arc::new(make());
        let key = parts.iter().map(|p| Box::<str>::from(*p)).collect();
        bucket.push((key, slot, Arc::clone(&value)));
        value
    }

    pub(crate) fn remove(&self, parts: &[&str], slot: i64) -> Option<Arc<T>> {
        let hash = self.hash(parts, slot);
        let mut map = self.map.write_locked();
        let bucket = map.get_mut(&hash)?;
        let index = bucket
            .iter()
            .position(|(stored, s, _)| *s == slot && matches(stored, parts))?;
        let (_, _, value) = bucket.swap_remove(index);
        if bucket.is_empty() {
            map.remove(&hash);
        }
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinguishes_parts_and_slots() {
        let cache = LabelCache::default();
        let a = cache.get_or_insert_with(&["x", "y"], 1, || 1);
        let b = cache.get_or_insert_with(&["x", "y"], 2, || 2);
        let c = cache.get_or_insert_with(&["xy", ""], 1, || 3);
        assert_eq!((*a, *b, *c), (1, 2, 3));
        assert_eq!(*cache.get_or_insert_with(&["x", "y"], 1, || 9), 1);
        assert_eq!(cache.remove(&["x", "y"], 1).map(|v| *v), Some(1));
        assert_ne!(label_hash(&["ab", "c"], 0), label_hash(&["a", "bc"], 0));
        assert!(cache.get(&["x", "y"], 1).is_none());
    }
}
