//! The disk index: every published object's size and last access, held in memory.
//!
//! It answers "how much does the store hold" without a walk, checks a file's length against
//! what was published (truncation), picks least-recently-used victims for eviction, and
//! keeps objects that are being read out of reach of eviction (pins). It does no I/O:
//! `persist` loads and saves it, `disk` applies the budget.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::files::{ObjectKey, ObjectKind};
use crate::oci::Digest;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    /// Bytes of the published file.
    pub size: u64,
    /// Unix milliseconds of the last hit (or of the publish).
    pub last_access: u64,
    /// The upstream the object was fetched from, whose lifecycle rules apply to it.
    pub origin: Option<Arc<str>>,
    pins: u32,
    /// Tells a pin on a removed and re-published object from one on the current entry.
    generation: u64,
}

#[derive(Default)]
pub struct Index {
    inner: Mutex<Inner>,
    next_generation: AtomicU64,
    /// Set when anything changed since the last snapshot was taken.
    dirty: AtomicBool,
}

#[derive(Default)]
struct Inner {
    objects: HashMap<ObjectKey, Meta>,
    bytes: u64,
    /// Digests operators pinned (see `catalog::pins`): never victims.
    kept: HashSet<Digest>,
    /// Upstream names, shared by every object of that origin.
    origins: HashMap<String, Arc<str>>,
}

impl Inner {
    fn intern(&mut self, origin: Option<&str>) -> Option<Arc<str>> {
        let name = origin?;
        if let Some(shared) = self.origins.get(name) {
            return Some(shared.clone());
        }
        let shared: Arc<str> = name.into();
        self.origins.insert(name.to_string(), shared.clone());
        Some(shared)
    }
}

/// Holds an object out of eviction's reach while a response reads it.
pub struct Pin {
    index: Arc<Index>,
    key: ObjectKey,
    generation: u64,
    /// When the object was used before this pin (ms since the epoch; 0: never).
    previous_access: u64,
}

impl Pin {
    /// True when the object was read or written within `window_ms` of `now`: its pages
    /// are then very likely still in the page cache.
    pub fn used_within(&self, now: u64, window_ms: u64) -> bool {
        self.previous_access != 0 && now.saturating_sub(self.previous_access) <= window_ms
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut inner = self.index.lock();
        if let Some(meta) = inner.objects.get_mut(&self.key) {
            if meta.generation == self.generation {
                meta.pins = meta.pins.saturating_sub(1);
            }
        }
    }
}

impl std::fmt::Debug for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pin({:?} {})", self.key.kind, self.key.digest)
    }
}

impl Index {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().expect("index lock")
    }

    fn meta(&self, size: u64, last_access: u64, origin: Option<Arc<str>>) -> Meta {
        Meta {
            size,
            last_access,
            origin,
            pins: 0,
            generation: self.next_generation.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Records a newly published object (replacing any older record of it).
    pub fn insert(&self, key: ObjectKey, size: u64, last_access: u64, origin: Option<&str>) {
        let mut inner = self.lock();
        let meta = self.meta(size, last_access, inner.intern(origin));
        if let Some(old) = inner.objects.insert(key, meta) {
            inner.bytes -= old.size;
        }
        inner.bytes += size;
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// Records a newly published object already pinned, so that eviction cannot take it
    /// between its publish and its readers' pin.
    pub fn insert_pinned(
        self: &Arc<Self>,
        key: ObjectKey,
        size: u64,
        last_access: u64,
        origin: Option<&str>,
    ) -> Pin {
        let mut inner = self.lock();
        let mut meta = self.meta(size, last_access, inner.intern(origin));
        meta.pins = 1;
        let generation = meta.generation;
        if let Some(old) = inner.objects.insert(key.clone(), meta) {
            inner.bytes -= old.size;
        }
        inner.bytes += size;
        self.dirty.store(true, Ordering::Relaxed);
        Pin {
            index: self.clone(),
            key,
            generation,
            previous_access: last_access,
        }
    }

    /// Records an object found on disk (by the startup walk). When a
    /// lookup recorded it first (it adopts files it meets, origin unknown), only the origin
    /// is filled in, so the upstream's lifecycle rules still apply to it. Returns whether
    /// the object was new to the index.
    pub fn insert_if_absent(
        &self,
        key: ObjectKey,
        size: u64,
        last_access: u64,
        origin: Option<&str>,
    ) -> bool {
        let mut inner = self.lock();
        let interned = inner.intern(origin);
        if let Some(meta) = inner.objects.get_mut(&key) {
            if meta.origin.is_none() && interned.is_some() {
                meta.origin = interned;
                self.dirty.store(true, Ordering::Relaxed);
            }
            return false;
        }
        let meta = self.meta(size, last_access, interned);
        inner.objects.insert(key, meta);
        inner.bytes += size;
        self.dirty.store(true, Ordering::Relaxed);
        true
    }

    /// Marks a hit. No I/O: recency reaches the disk with the next snapshot.
    pub fn touch(&self, key: &ObjectKey, now: u64) {
        if let Some(meta) = self.lock().objects.get_mut(key) {
            meta.last_access = now;
            self.dirty.store(true, Ordering::Relaxed);
        }
    }

    /// Pins an object for a read and marks the hit. With `size` (the file's length) an
    /// unknown object is adopted; `Err` carries the recorded size when the file's differs.
    pub fn pin(self: &Arc<Self>, key: &ObjectKey, size: u64, now: u64) -> Result<Pin, u64> {
        let mut inner = self.lock();
        let (generation, previous_access) = match inner.objects.get_mut(key) {
            Some(meta) if meta.size != size => return Err(meta.size),
            Some(meta) => {
                meta.pins += 1;
                let previous = std::mem::replace(&mut meta.last_access, now);
                (meta.generation, previous)
            }
            None => {
                let mut meta = self.meta(size, now, None);
                meta.pins = 1;
                let generation = meta.generation;
                inner.objects.insert(key.clone(), meta);
                inner.bytes += size;
                (generation, 0)
            }
        };
        self.dirty.store(true, Ordering::Relaxed);
        Ok(Pin {
            index: self.clone(),
            key: key.clone(),
            generation,
            previous_access,
        })
    }

    /// Whether `digest` is recorded, as a blob or a manifest.
    pub fn holds(&self, digest: &Digest) -> bool {
        let inner = self.lock();
        ObjectKind::ALL.into_iter().any(|kind| {
            let key = ObjectKey {
                kind,
                digest: digest.clone(),
            };
            inner.objects.contains_key(&key)
        })
    }

    pub fn get(&self, key: &ObjectKey) -> Option<Meta> {
        self.lock().objects.get(key).cloned()
    }

    pub fn remove(&self, key: &ObjectKey) -> Option<Meta> {
        let mut inner = self.lock();
        let meta = inner.objects.remove(key)?;
        inner.bytes -= meta.size;
        self.dirty.store(true, Ordering::Relaxed);
        Some(meta)
    }

    /// Removes a record unless it was replaced (the object published again) since
    /// `generation` was read from it.
    pub fn remove_generation(&self, key: &ObjectKey, generation: u64) -> Option<Meta> {
        let mut inner = self.lock();
        if inner.objects.get(key)?.generation != generation {
            return None;
        }
        let meta = inner.objects.remove(key)?;
        inner.bytes -= meta.size;
        self.dirty.store(true, Ordering::Relaxed);
        Some(meta)
    }

    /// Compares the records with the objects `listed` on disk: those listed but not
    /// recorded, and those recorded but not listed (each with its generation, for
    /// [`Index::remove_generation`]).
    pub fn compare(&self, listed: &HashSet<ObjectKey>) -> (Vec<ObjectKey>, Vec<(ObjectKey, u64)>) {
        let inner = self.lock();
        let unknown = listed
            .iter()
            .filter(|key| !inner.objects.contains_key(*key))
            .cloned()
            .collect();
        let unlisted = inner
            .objects
            .iter()
            .filter(|(key, _)| !listed.contains(*key))
            .map(|(key, meta)| (key.clone(), meta.generation))
            .collect();
        (unknown, unlisted)
    }

    /// (objects, bytes) recorded.
    pub fn usage(&self) -> (u64, u64) {
        let inner = self.lock();
        (inner.objects.len() as u64, inner.bytes)
    }

    /// Takes least-recently-used, unpinned objects out of the index until it records at
    /// most `target` bytes, and returns them for the caller to delete.
    pub fn take_victims(&self, target: u64) -> Vec<(ObjectKey, Meta)> {
        let mut inner = self.lock();
        if inner.bytes <= target {
            return Vec::new();
        }
        let kept = &inner.kept;
        let mut candidates: Vec<(u64, ObjectKey)> = inner
            .objects
            .iter()
            .filter(|(k, m)| m.pins == 0 && !kept.contains(&k.digest))
            .map(|(k, m)| (m.last_access, k.clone()))
            .collect();
        // Sorting under the lock is fine: eviction runs rarely, between the watermarks.
        candidates.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(a.1.kind.cmp(&b.1.kind)));
        let mut victims = Vec::new();
        for (_, key) in candidates {
            if inner.bytes <= target {
                break;
            }
            if let Some(meta) = inner.objects.remove(&key) {
                inner.bytes -= meta.size;
                victims.push((key, meta));
            }
        }
        self.dirty.store(true, Ordering::Relaxed);
        victims
    }

    /// Takes unpinned objects whose origin's `max_age` (milliseconds) has passed since
    /// their last access, and returns them for the caller to delete.
    pub fn take_expired(
        &self,
        now: u64,
        max_age: &dyn Fn(&str) -> Option<u64>,
    ) -> Vec<(ObjectKey, Meta)> {
        let mut inner = self.lock();
        let expired: Vec<ObjectKey> = inner
            .objects
            .iter()
            .filter(|(k, m)| m.pins == 0 && !inner.kept.contains(&k.digest))
            .filter(|(_, m)| {
                let limit = m.origin.as_deref().and_then(max_age);
                limit.is_some_and(|limit| now.saturating_sub(m.last_access) > limit)
            })
            .map(|(k, _)| k.clone())
            .collect();
        let mut taken = Vec::with_capacity(expired.len());
        for key in expired {
            if let Some(meta) = inner.objects.remove(&key) {
                inner.bytes -= meta.size;
                taken.push((key, meta));
            }
        }
        if !taken.is_empty() {
            self.dirty.store(true, Ordering::Relaxed);
        }
        taken
    }

    /// Replaces the digests operators pinned.
    pub fn set_kept(&self, kept: HashSet<Digest>) {
        self.lock().kept = kept;
    }

    pub fn is_kept(&self, digest: &Digest) -> bool {
        self.lock().kept.contains(digest)
    }

    /// (objects, bytes) held of the pinned digests.
    pub fn kept_usage(&self) -> (u64, u64) {
        let inner = self.lock();
        inner
            .objects
            .iter()
            .filter(|(k, _)| inner.kept.contains(&k.digest))
            .fold((0, 0), |(n, b), (_, m)| (n + 1, b + m.size))
    }

    /// Every record, if anything changed since the last call (or `force`).
    pub fn snapshot(&self, force: bool) -> Option<Vec<(ObjectKey, Meta)>> {
        if !self.dirty.swap(false, Ordering::Relaxed) && !force {
            return None;
        }
        let inner = self.lock();
        Some(
            inner
                .objects
                .iter()
                .map(|(k, m)| (k.clone(), m.clone()))
                .collect(),
        )
    }

    /// Marks the index as changed again (a snapshot could not be written).
    pub fn mark_dirty(&self) {
        self.dirty.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Algorithm;

    fn key(n: u8) -> ObjectKey {
        ObjectKey::blob(&Digest::of(Algorithm::Sha256, &[n]))
    }

    #[test]
    fn victims_are_the_least_recent_unpinned_objects() {
        let index = Arc::new(Index::default());
        for n in 0..5u8 {
            index.insert(key(n), 10, 100 + u64::from(n), None);
        }
        index.touch(&key(0), 200);
        let pin = index.pin(&key(1), 10, 201).unwrap();
        // 50 bytes recorded; down to 25 takes three: 2, 3, 4 (0 and 1 were used since).
        let taken: Vec<ObjectKey> = index.take_victims(25).into_iter().map(|v| v.0).collect();
        assert_eq!(taken, [key(2), key(3), key(4)]);
        assert_eq!(index.usage(), (2, 20));
        // A pinned object stays even when nothing else is left.
        let taken = index.take_victims(0);
        assert_eq!(taken.len(), 1);
        assert_eq!(index.usage(), (1, 10));
        drop(pin);
        assert_eq!(index.take_victims(0).len(), 1);
        assert_eq!(index.usage(), (0, 0));
    }

    #[test]
    fn a_published_object_is_pinned_from_its_first_moment() {
        let index = Arc::new(Index::default());
        let pin = index.insert_pinned(key(1), 10, 1, Some("hub"));
        assert!(index.take_victims(0).is_empty());
        drop(pin);
        assert_eq!(index.take_victims(0).len(), 1);
    }

    #[test]
    fn objects_expire_by_their_origins_rule() {
        let index = Arc::new(Index::default());
        index.insert(key(1), 10, 1_000, Some("hub"));
        index.insert(key(2), 10, 1_000, Some("ghcr"));
        index.insert(key(3), 10, 9_000, Some("hub"));
        index.insert(key(4), 10, 1_000, None);
        let pin = index.pin(&key(1), 10, 1_000).unwrap();
        let rule = |origin: &str| (origin == "hub").then_some(5_000);
        assert!(index.take_expired(10_000, &rule).is_empty(), "1 is pinned");
        drop(pin);
        let taken: Vec<ObjectKey> = index
            .take_expired(10_000, &rule)
            .into_iter()
            .map(|t| t.0)
            .collect();
        assert_eq!(taken, [key(1)]);
        assert_eq!(index.usage(), (3, 30));
    }

    #[test]
    fn an_object_read_during_the_startup_walk_keeps_its_origin() {
        let index = Arc::new(Index::default());
        // A request met the file before the walk reached it: adopted, origin unknown.
        drop(index.pin(&key(1), 10, 500).unwrap());
        assert!(!index.insert_if_absent(key(1), 10, 100, Some("hub")));
        let meta = index.get(&key(1)).unwrap();
        assert_eq!(
            (meta.origin.as_deref(), meta.last_access),
            (Some("hub"), 500)
        );
        assert!(index.insert_if_absent(key(2), 10, 100, None));
        assert_eq!(index.usage(), (2, 20));
    }

    #[test]
    fn a_length_that_differs_from_the_published_size_is_refused() {
        let index = Arc::new(Index::default());
        index.insert(key(1), 10, 1, None);
        assert_eq!(index.pin(&key(1), 9, 2).unwrap_err(), 10);
        // Unknown objects are adopted at their length.
        drop(index.pin(&key(2), 7, 2).unwrap());
        assert_eq!(index.get(&key(2)).unwrap().size, 7);
    }

    #[test]
    fn an_old_pin_does_not_release_a_republished_object() {
        let index = Arc::new(Index::default());
        index.insert(key(1), 10, 1, None);
        let old = index.pin(&key(1), 10, 1).unwrap();
        index.remove(&key(1));
        index.insert(key(1), 10, 2, None);
        let new = index.pin(&key(1), 10, 3).unwrap();
        drop(old);
        assert!(index.take_victims(0).is_empty(), "still pinned by `new`");
        drop(new);
    }
}
