//! The memory tier: manifests and small blobs, so their hits touch no disk.
//!
//! A moka cache weighted by bytes; TinyLFU admission keeps one-off objects from pushing
//! out the hot ones. Everything here is also on disk: losing an entry costs a disk read.

use std::sync::Arc;

use bytes::Bytes;
use moka::sync::Cache;

use crate::oci::Digest;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    Blob(Digest),
    Manifest(Digest),
}

#[derive(Clone, Debug)]
pub struct Entry {
    pub bytes: Bytes,
    /// Set for manifests.
    pub media_type: Option<Arc<str>>,
}

/// Per-entry bookkeeping that moka, the key and the Bytes handle cost beyond the data.
const ENTRY_OVERHEAD: u64 = 256;

#[derive(Clone)]
pub struct Memory {
    cache: Option<Cache<Key, Entry>>,
    max_object: u64,
}

impl Memory {
    /// A tier of `budget` bytes; objects over `max_object` bytes are never admitted.
    pub fn new(budget: u64, max_object: u64) -> Memory {
        let cache = (budget > 0).then(|| {
            Cache::builder()
                .max_capacity(budget)
                .weigher(|_: &Key, e: &Entry| {
                    u32::try_from(e.bytes.len() as u64 + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
                })
                .build()
        });
        Memory { cache, max_object }
    }

    pub fn admits(&self, len: u64) -> bool {
        self.cache.is_some() && len <= self.max_object
    }

    pub fn get(&self, key: &Key) -> Option<Entry> {
        self.cache.as_ref()?.get(key)
    }

    pub fn insert(&self, key: Key, entry: Entry) {
        if let Some(cache) = &self.cache {
            if self.admits(entry.bytes.len() as u64) {
                cache.insert(key, entry);
            }
        }
    }

    /// Forgets an object (purged from the store).
    pub fn remove(&self, key: &Key) {
        if let Some(cache) = &self.cache {
            cache.invalidate(key);
        }
    }

    /// (objects, bytes) held, for the metrics.
    pub fn usage(&self) -> (u64, u64) {
        match &self.cache {
            Some(cache) => {
                cache.run_pending_tasks();
                (cache.entry_count(), cache.weighted_size())
            }
            None => (0, 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Algorithm;

    fn key(n: u8) -> Key {
        Key::Blob(Digest::of(Algorithm::Sha256, &[n]))
    }

    #[test]
    fn large_objects_are_not_admitted() {
        let memory = Memory::new(1 << 20, 1024);
        let entry = |n: usize| Entry {
            bytes: Bytes::from(vec![0; n]),
            media_type: None,
        };
        memory.insert(key(1), entry(1024));
        memory.insert(key(2), entry(1025));
        assert!(memory.get(&key(1)).is_some());
        assert!(memory.get(&key(2)).is_none());
    }

    #[test]
    fn a_zero_budget_disables_the_tier() {
        let memory = Memory::new(0, 1024);
        memory.insert(
            key(1),
            Entry {
                bytes: Bytes::from_static(b"x"),
                media_type: None,
            },
        );
        assert!(memory.get(&key(1)).is_none());
        assert!(!memory.admits(1));
    }
}
