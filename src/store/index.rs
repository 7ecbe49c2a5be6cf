//! The disk index: every published object's size and last access, held in memory.
//!
//! It answers "how much does the store hold" without a walk, checks a file's length against
//! what was published (truncation), picks least-recently-used victims for eviction, and
//! keeps objects that are being read out of reach of eviction (pins). It does no I/O:
//! `persist` loads and saves it, `disk` applies the budget.
//!
//! A record is 32 bytes in a 64-byte slot (sha256 keys are kept as raw bytes, the origin
//! as a number): 65 bytes a slot, and between 1.14 and 2.3 slots an object as the maps
//! fill and double.
//!
//! The records are split over `SHARDS` maps, each behind its own lock, because every hit
//! touches its object's record from an async worker: no operation holds a lock for more
//! than one shard's worth of work. Eviction gathers candidates shard by shard, sorts them
//! with no lock held, and takes each victim only if nobody used or pinned it meanwhile.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use super::files::{ObjectKey, ObjectKind};
use crate::oci::{Algorithm, Digest};

/// Enough that a shard of a million-object index is walked in well under a millisecond.
const SHARDS: usize = 256;

/// An object's record as the index's callers see it.
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

/// What the index holds per object: 32 bytes, nothing on the heap (the origin is a number
/// in `Index::origins`, 0 for none).
#[derive(Clone, Copy, Debug)]
struct Record {
    size: u64,
    last_access: u64,
    generation: u64,
    pins: u32,
    origin: u16,
}

/// One shard's records. A sha256 object (nearly every one) is keyed by its 32 raw digest
/// bytes in the map of its kind, so a record costs one 64-byte slot; other digests keep
/// their whole key.
#[derive(Default)]
struct Shard {
    blobs: HashMap<[u8; 32], Record>,
    manifests: HashMap<[u8; 32], Record>,
    other: HashMap<ObjectKey, Record>,
}

/// The raw bytes of a sha256 key (its hex is validated lowercase, so this round-trips).
fn raw(key: &ObjectKey) -> Option<[u8; 32]> {
    if key.digest.algorithm() != Algorithm::Sha256 {
        return None;
    }
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(key.digest.hex(), &mut bytes).ok()?;
    Some(bytes)
}

impl Shard {
    fn map(&mut self, kind: ObjectKind) -> &mut HashMap<[u8; 32], Record> {
        match kind {
            ObjectKind::Blob => &mut self.blobs,
            ObjectKind::Manifest => &mut self.manifests,
        }
    }

    fn get(&self, key: &ObjectKey) -> Option<&Record> {
        match raw(key) {
            Some(bytes) => match key.kind {
                ObjectKind::Blob => self.blobs.get(&bytes),
                ObjectKind::Manifest => self.manifests.get(&bytes),
            },
            None => self.other.get(key),
        }
    }

    fn get_mut(&mut self, key: &ObjectKey) -> Option<&mut Record> {
        match raw(key) {
            Some(bytes) => self.map(key.kind).get_mut(&bytes),
            None => self.other.get_mut(key),
        }
    }

    fn insert(&mut self, key: &ObjectKey, record: Record) -> Option<Record> {
        match raw(key) {
            Some(bytes) => self.map(key.kind).insert(bytes, record),
            None => self.other.insert(key.clone(), record),
        }
    }

    /// Inserts `make()` unless `key` is recorded; then only an unknown origin is filled
    /// in. `None` when inserted, else whether the origin was filled in. One lookup: a
    /// snapshot load does this for every record.
    fn insert_or_adopt(
        &mut self,
        key: &ObjectKey,
        origin: u16,
        make: impl FnOnce() -> Record,
    ) -> Option<bool> {
        use std::collections::hash_map::Entry;
        let adopt = |record: &mut Record| {
            let unknown = record.origin == 0 && origin != 0;
            if unknown {
                record.origin = origin;
            }
            Some(unknown)
        };
        match raw(key) {
            Some(bytes) => match self.map(key.kind).entry(bytes) {
                Entry::Occupied(mut e) => adopt(e.get_mut()),
                Entry::Vacant(e) => {
                    e.insert(make());
                    None
                }
            },
            None => match self.other.get_mut(key) {
                Some(record) => adopt(record),
                None => {
                    self.other.insert(key.clone(), make());
                    None
                }
            },
        }
    }

    fn remove(&mut self, key: &ObjectKey) -> Option<Record> {
        match raw(key) {
            Some(bytes) => self.map(key.kind).remove(&bytes),
            None => self.other.remove(key),
        }
    }

    /// Every record with its key (made again from the raw bytes).
    fn each(&self, mut each: impl FnMut(ObjectKey, &Record)) {
        let kinds = [
            (ObjectKind::Blob, &self.blobs),
            (ObjectKind::Manifest, &self.manifests),
        ];
        for (kind, map) in kinds {
            for (bytes, record) in map {
                let digest = Digest::from_raw(Algorithm::Sha256, bytes);
                each(ObjectKey { kind, digest }, record);
            }
        }
        for (key, record) in &self.other {
            each(key.clone(), record);
        }
    }
}

pub struct Index {
    shards: Box<[Mutex<Shard>]>,
    objects: AtomicU64,
    bytes: AtomicU64,
    /// Upstream names; a record's `origin` is one's position plus one.
    origins: Mutex<Vec<Arc<str>>>,
    /// Digests operators pinned (see `catalog::pins`): never victims.
    kept: RwLock<Arc<HashSet<Digest>>>,
    next_generation: AtomicU64,
    /// Set when anything changed since the last snapshot was taken.
    dirty: AtomicBool,
}

impl Default for Index {
    fn default() -> Index {
        Index {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            objects: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            origins: Mutex::default(),
            kept: RwLock::default(),
            next_generation: AtomicU64::new(0),
            dirty: AtomicBool::new(false),
        }
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
        let mut shard = self.index.shard(&self.key);
        if let Some(record) = shard.get_mut(&self.key) {
            if record.generation == self.generation {
                record.pins = record.pins.saturating_sub(1);
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
    /// The shard of `key`: digests are uniformly random, so their first hex digits spread
    /// the keys evenly.
    fn shard(&self, key: &ObjectKey) -> MutexGuard<'_, Shard> {
        let hex = key.digest.hex().as_bytes();
        let n = hex.first().map_or(0, |&b| b as usize) * 16 + hex.get(1).map_or(0, |&b| b as usize);
        self.shards[n % SHARDS].lock().expect("index shard lock")
    }

    /// The number `origin` is recorded as (0: none; past 65,535 names, none).
    fn intern(&self, origin: Option<&str>) -> u16 {
        let Some(name) = origin else { return 0 };
        let mut origins = self.origins.lock().expect("origins lock");
        if let Some(at) = origins.iter().position(|o| &**o == name) {
            return u16::try_from(at + 1).unwrap_or(0);
        }
        origins.push(name.into());
        u16::try_from(origins.len()).unwrap_or(0)
    }

    /// The origin names by number, to read records with.
    fn origin_names(&self) -> Vec<Arc<str>> {
        self.origins.lock().expect("origins lock").clone()
    }

    fn record(&self, size: u64, last_access: u64, origin: u16) -> Record {
        Record {
            size,
            last_access,
            origin,
            pins: 0,
            generation: self.next_generation.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// A record as callers see it.
    fn meta(record: &Record, names: &[Arc<str>]) -> Meta {
        let origin = usize::from(record.origin).checked_sub(1);
        Meta {
            size: record.size,
            last_access: record.last_access,
            origin: origin.and_then(|at| names.get(at).cloned()),
            pins: record.pins,
            generation: record.generation,
        }
    }

    fn meta_of(&self, record: &Record) -> Meta {
        if record.origin == 0 {
            return Index::meta(record, &[]);
        }
        Index::meta(record, &self.origin_names())
    }

    /// Counts a record that entered (`old` is the one it replaced, if any).
    fn added(&self, size: u64, old: Option<&Record>) {
        match old {
            Some(old) => {
                self.bytes.fetch_sub(old.size, Ordering::Relaxed);
            }
            None => {
                self.objects.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.bytes.fetch_add(size, Ordering::Relaxed);
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// Counts a record that left.
    fn removed(&self, record: &Record) {
        self.objects.fetch_sub(1, Ordering::Relaxed);
        self.bytes.fetch_sub(record.size, Ordering::Relaxed);
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// Makes room for about `objects` records at once (a snapshot load), so the maps do
    /// not grow and move their records over and over meanwhile.
    pub fn reserve(&self, objects: usize) {
        let each = objects / SHARDS + objects / SHARDS / 8;
        for shard in self.shards.iter() {
            shard.lock().expect("index shard lock").blobs.reserve(each);
        }
    }

    /// Records a newly published object (replacing any older record of it).
    pub fn insert(&self, key: ObjectKey, size: u64, last_access: u64, origin: Option<&str>) {
        let record = self.record(size, last_access, self.intern(origin));
        let old = self.shard(&key).insert(&key, record);
        self.added(size, old.as_ref());
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
        let mut record = self.record(size, last_access, self.intern(origin));
        record.pins = 1;
        let old = self.shard(&key).insert(&key, record);
        self.added(size, old.as_ref());
        Pin {
            index: self.clone(),
            key,
            generation: record.generation,
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
        let interned = self.intern(origin);
        let mut shard = self.shard(&key);
        let added =
            shard.insert_or_adopt(&key, interned, || self.record(size, last_access, interned));
        drop(shard);
        match added {
            None => self.added(size, None),
            Some(true) => self.dirty.store(true, Ordering::Relaxed),
            Some(false) => {}
        }
        added.is_none()
    }

    /// Marks a hit. No I/O: recency reaches the disk with the next snapshot.
    pub fn touch(&self, key: &ObjectKey, now: u64) {
        if let Some(record) = self.shard(key).get_mut(key) {
            record.last_access = now;
            self.dirty.store(true, Ordering::Relaxed);
        }
    }

    /// Pins an object for a read and marks the hit. With `size` (the file's length) an
    /// unknown object is adopted; `Err` carries the recorded size when the file's differs.
    pub fn pin(self: &Arc<Self>, key: &ObjectKey, size: u64, now: u64) -> Result<Pin, u64> {
        let mut shard = self.shard(key);
        let (generation, previous_access) = match shard.get_mut(key) {
            Some(record) if record.size != size => return Err(record.size),
            Some(record) => {
                record.pins += 1;
                let previous = std::mem::replace(&mut record.last_access, now);
                self.dirty.store(true, Ordering::Relaxed);
                (record.generation, previous)
            }
            None => {
                let mut record = self.record(size, now, 0);
                record.pins = 1;
                shard.insert(key, record);
                drop(shard);
                self.added(size, None);
                (record.generation, 0)
            }
        };
        Ok(Pin {
            index: self.clone(),
            key: key.clone(),
            generation,
            previous_access,
        })
    }

    /// Whether `digest` is recorded, as a blob or a manifest.
    pub fn holds(&self, digest: &Digest) -> bool {
        ObjectKind::ALL.into_iter().any(|kind| {
            let key = ObjectKey {
                kind,
                digest: digest.clone(),
            };
            self.shard(&key).get(&key).is_some()
        })
    }

    pub fn get(&self, key: &ObjectKey) -> Option<Meta> {
        let record = *self.shard(key).get(key)?;
        Some(self.meta_of(&record))
    }

    pub fn remove(&self, key: &ObjectKey) -> Option<Meta> {
        let record = self.shard(key).remove(key)?;
        self.removed(&record);
        Some(self.meta_of(&record))
    }

    /// Removes a record unless it was replaced (the object published again) since
    /// `generation` was read from it.
    pub fn remove_generation(&self, key: &ObjectKey, generation: u64) -> Option<Meta> {
        let mut shard = self.shard(key);
        if shard.get(key)?.generation != generation {
            return None;
        }
        let record = shard.remove(key)?;
        drop(shard);
        self.removed(&record);
        Some(self.meta_of(&record))
    }

    /// Compares the records with the objects `listed` on disk: those listed but not
    /// recorded, and those recorded but not listed (each with its generation, for
    /// [`Index::remove_generation`]).
    pub fn compare(&self, listed: &HashSet<ObjectKey>) -> (Vec<ObjectKey>, Vec<(ObjectKey, u64)>) {
        let unknown = listed
            .iter()
            .filter(|key| self.shard(key).get(key).is_none())
            .cloned()
            .collect();
        let mut unlisted = Vec::new();
        self.scan(|key, record| {
            if !listed.contains(&key) {
                unlisted.push((key, record.generation));
            }
        });
        (unknown, unlisted)
    }

    /// (objects, bytes) recorded.
    pub fn usage(&self) -> (u64, u64) {
        (
            self.objects.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }

    /// Calls `each` on every record, one shard locked at a time.
    fn scan(&self, mut each: impl FnMut(ObjectKey, &Record)) {
        for shard in self.shards.iter() {
            shard.lock().expect("index shard lock").each(&mut each);
        }
    }

    /// Takes the record of `key` for eviction if it is still the one `seen` (same
    /// generation, not used since, not pinned).
    fn take_if_unchanged(&self, key: &ObjectKey, seen: (u64, u64)) -> Option<Meta> {
        let mut shard = self.shard(key);
        let record = shard.get(key)?;
        if record.pins > 0 || (record.generation, record.last_access) != seen {
            return None;
        }
        let record = shard.remove(key)?;
        drop(shard);
        self.removed(&record);
        Some(self.meta_of(&record))
    }

    /// Takes least-recently-used, unpinned objects out of the index until it records at
    /// most `target` bytes, and returns them for the caller to delete. Blocks for as long
    /// as the sort takes, but holds no lock meanwhile.
    pub fn take_victims(&self, target: u64) -> Vec<(ObjectKey, Meta)> {
        if self.usage().1 <= target {
            return Vec::new();
        }
        let kept = self.kept();
        let mut candidates: Vec<(u64, u64, ObjectKey)> = Vec::new();
        self.scan(|key, record| {
            if record.pins == 0 && !kept.contains(&key.digest) {
                candidates.push((record.last_access, record.generation, key));
            }
        });
        candidates.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(a.2.kind.cmp(&b.2.kind)));
        let mut victims = Vec::new();
        for (last_access, generation, key) in candidates {
            if self.usage().1 <= target {
                break;
            }
            if let Some(meta) = self.take_if_unchanged(&key, (generation, last_access)) {
                victims.push((key, meta));
            }
        }
        victims
    }

    /// Takes unpinned objects whose origin's `max_age` (milliseconds) has passed since
    /// their last access, and returns them for the caller to delete.
    pub fn take_expired(
        &self,
        now: u64,
        max_age: &dyn Fn(&str) -> Option<u64>,
    ) -> Vec<(ObjectKey, Meta)> {
        let kept = self.kept();
        let limits: Vec<Option<u64>> = self.origin_names().iter().map(|o| max_age(o)).collect();
        let mut expired = Vec::new();
        self.scan(|key, record| {
            let at = usize::from(record.origin).checked_sub(1);
            let limit = at.and_then(|at| limits.get(at).copied().flatten());
            let old = limit.is_some_and(|limit| now.saturating_sub(record.last_access) > limit);
            if old && record.pins == 0 && !kept.contains(&key.digest) {
                expired.push((key, (record.generation, record.last_access)));
            }
        });
        expired
            .into_iter()
            .filter_map(|(key, seen)| Some((key.clone(), self.take_if_unchanged(&key, seen)?)))
            .collect()
    }

    /// Replaces the digests operators pinned.
    pub fn set_kept(&self, kept: HashSet<Digest>) {
        *self.kept.write().expect("kept lock") = Arc::new(kept);
    }

    fn kept(&self) -> Arc<HashSet<Digest>> {
        self.kept.read().expect("kept lock").clone()
    }

    pub fn is_kept(&self, digest: &Digest) -> bool {
        self.kept().contains(digest)
    }

    /// (objects, bytes) held of the pinned digests.
    pub fn kept_usage(&self) -> (u64, u64) {
        let kept = self.kept();
        let mut usage = (0, 0);
        if kept.is_empty() {
            return usage;
        }
        self.scan(|key, record| {
            if kept.contains(&key.digest) {
                usage = (usage.0 + 1, usage.1 + record.size);
            }
        });
        usage
    }

    /// Every record, if anything changed since the last call (or `force`).
    pub fn snapshot(&self, force: bool) -> Option<Vec<(ObjectKey, Meta)>> {
        if !self.dirty.swap(false, Ordering::Relaxed) && !force {
            return None;
        }
        let names = self.origin_names();
        let mut records = Vec::with_capacity(self.usage().0 as usize);
        self.scan(|key, record| records.push((key, Index::meta(record, &names))));
        Some(records)
    }

    /// A generation no record has yet: records made from now on have this one or later.
    pub fn generation_mark(&self) -> u64 {
        self.next_generation.load(Ordering::Relaxed)
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
    fn keys_of_every_algorithm_and_origins_come_back_as_recorded() {
        let index = Arc::new(Index::default());
        let long = ObjectKey::manifest(&Digest::of(Algorithm::Sha512, b"x"));
        index.insert(long.clone(), 5, 10, Some("ghcr"));
        index.insert(key(1), 7, 20, Some("hub"));
        // The same digest as a blob and as a manifest: two records.
        let as_manifest = ObjectKey::manifest(&key(1).digest);
        index.insert(as_manifest.clone(), 9, 30, None);
        assert_eq!(index.usage(), (3, 21));
        let mut all = index.snapshot(true).unwrap();
        all.sort_by_key(|(_, meta)| meta.last_access);
        let seen: Vec<(ObjectKey, u64, Option<&str>)> = all
            .iter()
            .map(|(k, m)| (k.clone(), m.size, m.origin.as_deref()))
            .collect();
        assert_eq!(
            seen,
            [
                (long.clone(), 5, Some("ghcr")),
                (key(1), 7, Some("hub")),
                (as_manifest.clone(), 9, None)
            ]
        );
        assert!(index.remove(&long).is_some());
        assert_eq!(index.get(&as_manifest).unwrap().size, 9);
        assert_eq!(index.get(&key(1)).unwrap().origin.as_deref(), Some("hub"));
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
