//! The disk tier's bookkeeping: the budget with its watermarks, LRU eviction (also right
//! away when the filesystem is full), lifecycle sweeps, corruption handling, the one door
//! verified objects enter by (`land`), and the background task that loads the index, saves
//! recency and runs the sweeps. The process that owns the store (see `owner`) is its only
//! writer, so the index sees every change as it happens.
//!
//! Eviction removes only published objects that nobody has pinned; a fill's temp file is
//! not in the index until it is published, so it is never a candidate. Functions that
//! touch files block and say so; the async callers wrap them in `spawn_blocking`.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Notify;

use super::catalog::{self, pins::Pins};
use super::files::{unix_millis, Lookup, ObjectKey, Store};
use super::index::{Index, Meta, Pin};
use super::lifecycle::{self, Rules};
use super::members::{upstream_dir, Membership, Pruned};
use super::persist;
use super::space::{self, Requests};
use crate::config::{CacheConfig, DiskBudget};
use crate::metrics::Metrics;
use crate::oci::Digest;

/// How many (upstream, repository, digest) memberships are kept in memory (about 200
/// bytes each); the rest are read back from disk when asked.
const MEMBER_ENTRIES: u64 = 250_000;

/// The budget in bytes and the two marks derived from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub budget: u64,
    pub high: u64,
    pub low: u64,
}

impl Limits {
    /// Resolves a percentage budget against the filesystem holding `dir` (blocks).
    pub fn new(config: &CacheConfig, dir: &Path) -> io::Result<Limits> {
        let budget = match config.disk_budget {
            DiskBudget::Bytes(bytes) => bytes,
            DiskBudget::Percent(pct) => {
                let fs = rustix::fs::statvfs(dir).map_err(io::Error::from)?;
                let total = fs.f_blocks.saturating_mul(fs.f_frsize);
                (total as f64 * pct / 100.0) as u64
            }
        };
        Ok(Limits {
            budget,
            high: (budget as f64 * config.high_watermark) as u64,
            low: (budget as f64 * config.low_watermark) as u64,
        })
    }
}

/// Why objects left the store: the `reason` label of the evictions metric.
#[derive(Clone, Copy, Debug)]
pub enum Reason {
    Budget,
    /// The filesystem ran out of space (or quota) before the budget was reached.
    DiskFull,
    Lifecycle,
    Corruption,
    /// An operator purged it (admin API or `regcache purge`).
    Purge,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Budget => "budget",
            Reason::DiskFull => "disk_full",
            Reason::Lifecycle => "lifecycle",
            Reason::Corruption => "corruption",
            Reason::Purge => "purge",
        }
    }
}

/// At most one emergency eviction per this long: a burst of failing fills is one eviction,
/// and a disk that something else keeps filling cannot drain the cache in a loop.
const FULL_EVICTION_GAP: Duration = Duration::from_secs(5);

/// What one lifecycle sweep removed.
#[derive(Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Swept {
    pub objects: u64,
    pub bytes: u64,
    pub tags: u64,
}

pub struct Disk {
    pub store: Arc<Store>,
    pub index: Arc<Index>,
    pub limits: Limits,
    rules: Rules,
    /// Which repository holds which digest; pruned after each sweep.
    pub members: Membership,
    /// What operators pinned: never evicted by the budget or the lifecycle rules.
    pub pins: Pins,
    metrics: Metrics,
    wake: Arc<Notify>,
    /// False until the startup walk has filled the index: eviction waits for it.
    ready: AtomicBool,
    /// Set while disk writes fail, so the failure is logged once, not per fill.
    failing: AtomicBool,
    /// Room asked for by writes that found the filesystem full, for the background task.
    full: Arc<Requests>,
    /// Bytes in fills' temp files: they count toward the budget before they are published.
    filling: AtomicU64,
    /// Records older than this generation came from the snapshot: the walk may drop them.
    snapshot_cutoff: AtomicU64,
}

impl Disk {
    /// Opens the store under `config.dir` as its one writer (see `owner`). The index is
    /// empty until [`Disk::load`] or [`Disk::start`]. Blocks.
    pub fn open(config: &CacheConfig, rules: Rules, metrics: Metrics) -> io::Result<Disk> {
        let store = Arc::new(Store::open(&config.dir)?);
        let limits = Limits::new(config, store.root())?;
        Ok(Disk::new(store, limits, rules, metrics))
    }

    pub fn new(store: Arc<Store>, limits: Limits, rules: Rules, metrics: Metrics) -> Disk {
        for (limit, bytes) in [
            ("budget", limits.budget),
            ("high", limits.high),
            ("low", limits.low),
        ] {
            let gauge = metrics.disk_limits.with_label_values(&[limit]);
            gauge.set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
        Disk {
            members: Membership::new(store.clone(), MEMBER_ENTRIES),
            pins: Pins::load(&store),
            store,
            index: Arc::default(),
            limits,
            rules,
            metrics,
            wake: Arc::default(),
            ready: AtomicBool::new(false),
            failing: AtomicBool::new(false),
            full: Arc::default(),
            filling: AtomicU64::new(0),
            snapshot_cutoff: AtomicU64::new(0),
        }
    }

    /// Records an object published from `origin` (an upstream name), pinned for the
    /// caller; wakes eviction when the store passed the high mark.
    pub fn published(&self, key: ObjectKey, size: u64, origin: &str) -> Pin {
        let pin = self
            .index
            .insert_pinned(key, size, unix_millis(), Some(origin));
        self.note_write_ok();
        if self.over_high() {
            self.wake.notify_one();
        }
        pin
    }

    fn over_high(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && self.used() > self.limits.high
    }

    /// Published bytes plus what fills have written to their temp files so far.
    fn used(&self) -> u64 {
        self.index.usage().1 + self.filling.load(Ordering::Relaxed)
    }

    /// A fill wrote `bytes` more to its temp file; wakes eviction when that crossed the
    /// high mark (only then: an eviction pass sorts the whole index).
    pub fn fill_grew(&self, bytes: u64) {
        let before = self.filling.fetch_add(bytes, Ordering::Relaxed) + self.index.usage().1;
        let high = self.limits.high;
        if self.ready.load(Ordering::Relaxed) && before <= high && before + bytes > high {
            self.wake.notify_one();
        }
    }

    /// A fill's temp file of `bytes` is gone (published, so now in the index, or removed).
    pub fn fill_ended(&self, bytes: u64) {
        self.filling.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Opens a stored blob for reading, pinned, after checking its length against the
    /// published size. Blocks.
    pub fn open_blob(&self, digest: &Digest) -> io::Result<Lookup<(File, u64, Pin)>> {
        let key = ObjectKey::blob(digest);
        let Some((file, len)) = self.store.open_blob(digest)? else {
            self.index.remove(&key);
            return Ok(Lookup::Missing);
        };
        match self.index.pin(&key, len, unix_millis()) {
            Ok(pin) => Ok(Lookup::Found((file, len, pin))),
            Err(recorded) => {
                tracing::warn!(%digest, recorded, on_disk = len, "cached blob has the wrong size; removed");
                self.discard_corrupt(&key);
                Ok(Lookup::Corrupt)
            }
        }
    }

    /// Reads a whole stored blob and checks its digest; a damaged one is removed. Blocks.
    pub fn read_verified_blob(&self, digest: &Digest) -> io::Result<Lookup<Bytes>> {
        let Some(bytes) = self.store.read_blob(digest)? else {
            self.index.remove(&ObjectKey::blob(digest));
            return Ok(Lookup::Missing);
        };
        if Digest::of(digest.algorithm(), &bytes) != *digest {
            tracing::warn!(%digest, "cached blob does not match its digest; removed");
            self.discard_corrupt(&ObjectKey::blob(digest));
            return Ok(Lookup::Corrupt);
        }
        Ok(Lookup::Found(bytes))
    }

    /// Reads a stored manifest (checked against its digest by the store). Blocks.
    pub fn read_manifest(&self, digest: &Digest) -> io::Result<Option<(String, Bytes)>> {
        let key = ObjectKey::manifest(digest);
        match self.store.read_manifest(digest)? {
            Lookup::Found((media_type, body)) => {
                let size = (media_type.len() + 1 + body.len()) as u64;
                if self.index.pin(&key, size, unix_millis()).is_err() {
                    // The bytes hashed right; the record was stale. Trust the file.
                    self.index.insert(key, size, unix_millis(), None);
                }
                Ok(Some((media_type, body)))
            }
            Lookup::Missing => {
                self.index.remove(&key);
                Ok(None)
            }
            Lookup::Corrupt => {
                self.discard_corrupt(&key);
                Ok(None)
            }
        }
    }

    /// Removes a damaged object and counts it. Blocks.
    pub fn discard_corrupt(&self, key: &ObjectKey) {
        self.index.remove(key);
        if let Err(e) = self.store.remove(key) {
            tracing::warn!(digest = %key.digest, error = %e, "removing a damaged object failed");
        }
        self.count(Reason::Corruption, 1);
    }

    pub fn count(&self, reason: Reason, n: u64) {
        self.metrics
            .evictions
            .with_label_values(&[reason.as_str()])
            .inc_by(n);
    }

    /// Removes least-recently-used objects until the store is under the low watermark,
    /// if it is over the high one (or `force`). Returns (objects, bytes) removed. Blocks.
    pub fn evict(&self, force: bool) -> (u64, u64) {
        if self.used() <= self.limits.high && !force {
            return (0, 0);
        }
        let filling = self.filling.load(Ordering::Relaxed);
        let victims = self
            .index
            .take_victims(self.limits.low.saturating_sub(filling));
        // Counted as they leave the index (and the gauges), before their files go, so no
        // one sees a file gone and its eviction not yet counted.
        if !victims.is_empty() {
            self.count(Reason::Budget, victims.len() as u64);
        }
        let freed = self.remove_all(&victims);
        if !victims.is_empty() {
            tracing::info!(
                objects = victims.len(),
                bytes = freed,
                budget = self.limits.budget,
                "evicted least recently used objects"
            );
        }
        (victims.len() as u64, freed)
    }

    /// Removes least-recently-used objects to make room for `failed` bytes that a full
    /// filesystem refused (see `space::to_free`), whatever the budget says. Returns
    /// (objects, bytes) removed. Blocks.
    pub fn evict_for_space(&self, failed: u64) -> (u64, u64) {
        let (_, stored) = self.index.usage();
        let free = rustix::fs::statvfs(self.store.root())
            .map(|fs| fs.f_bavail.saturating_mul(fs.f_frsize))
            .unwrap_or(0);
        self.free_bytes(space::to_free(failed, stored, free))
    }

    /// Removes least-recently-used, unpinned objects of at least `wanted` bytes in all (or
    /// all there are), counted as `disk_full`. Blocks.
    fn free_bytes(&self, wanted: u64) -> (u64, u64) {
        if wanted == 0 {
            return (0, 0);
        }
        let (_, stored) = self.index.usage();
        let victims = self.index.take_victims(stored.saturating_sub(wanted));
        if victims.is_empty() {
            tracing::debug!(wanted, "filesystem full and nothing left to evict");
            return (0, 0);
        }
        let freed = self.remove_all(&victims);
        self.count(Reason::DiskFull, victims.len() as u64);
        tracing::warn!(
            objects = victims.len(),
            bytes = freed,
            wanted,
            budget = self.limits.budget,
            "filesystem full: evicted least recently used objects to make room; \
             the disk budget may be larger than the filesystem's room for the cache"
        );
        (victims.len() as u64, freed)
    }

    fn remove_all(&self, taken: &[(ObjectKey, Meta)]) -> u64 {
        let mut freed = 0;
        for (key, meta) in taken {
            if let Err(e) = self.store.remove(key) {
                tracing::warn!(digest = %key.digest, error = %e, "removing an object failed");
            }
            freed += meta.size;
        }
        freed
    }

    /// Applies the lifecycle rules: expired objects and surplus tag records go. Blocks.
    pub fn sweep(&self) -> Swept {
        let mut swept = Swept::default();
        if self.rules.is_empty() {
            return swept;
        }
        let max_age = |origin: &str| self.rules.max_age_ms(origin);
        let expired = self.index.take_expired(unix_millis(), &max_age);
        swept.objects = expired.len() as u64;
        self.count(Reason::Lifecycle, swept.objects);
        swept.bytes = self.remove_all(&expired);
        for (upstream, max) in self.rules.tag_limits() {
            let pinned = |repo: &str, tag: &str, record: &crate::store::TagRecord| {
                let id = (upstream_dir(upstream), repo.to_string());
                self.pins.covers_tag(&id, tag) || self.index.is_kept(&record.digest)
            };
            match lifecycle::trim_tags(&self.store, upstream, max, &pinned) {
                Ok(n) => swept.tags += n,
                Err(e) => tracing::warn!(upstream, error = %e, "trimming tag records failed"),
            }
        }
        if swept != Swept::default() {
            tracing::info!(
                objects = swept.objects,
                bytes = swept.bytes,
                tags = swept.tags,
                "lifecycle rules applied"
            );
        }
        swept
    }

    /// Whether the store holds `digest`, as a blob or a manifest: the index first, then
    /// the files (for what the index has not loaded yet). Blocks.
    pub fn holds(&self, digest: &Digest) -> bool {
        self.index.holds(digest) || self.store.holds(digest)
    }

    /// Resolves the pins again (tags move; pinned repositories gain content). Blocks.
    pub fn refresh_pins(&self) {
        if let Err(e) = catalog::pins::refresh(self) {
            tracing::warn!(error = %e, "resolving the pins failed; the last resolution stays");
        }
    }

    /// Prunes the membership records of content no longer held. Blocks.
    pub fn prune_members(&self) -> Pruned {
        match self.members.prune(&|digest| self.holds(digest)) {
            Ok(pruned) => {
                if pruned.records > 0 {
                    tracing::info!(
                        records = pruned.records,
                        files = pruned.files,
                        "membership records of content no longer cached pruned"
                    );
                }
                pruned
            }
            Err(e) => {
                tracing::warn!(error = %e, "pruning membership records failed");
                Pruned::default()
            }
        }
    }

    /// Writes the recency snapshot if anything changed (or `force`). Blocks.
    pub fn flush(&self, force: bool) {
        let Some(records) = self.index.snapshot(force) else {
            return;
        };
        if let Err(e) = persist::write_snapshot(&self.store, &records) {
            self.index.mark_dirty();
            tracing::warn!(error = %e, "writing the cache index failed; recency stays in memory");
        }
    }

    /// A disk write of an object of `size` bytes (0 if unknown) failed: count it, and log
    /// only the first of a run of failures. A full filesystem also asks the background task
    /// for an emergency eviction, so the next writes find room.
    pub fn note_write_error(&self, what: &str, error: &io::Error, size: u64) {
        self.metrics.cache_write_errors.inc();
        if space::is_out_of_space(error) {
            self.full.add(size);
            self.wake.notify_one();
        }
        if !self.failing.swap(true, Ordering::Relaxed) {
            tracing::warn!(%error, what, "disk write failed; serving from upstream without caching until writes succeed");
        } else {
            tracing::debug!(%error, what, "disk write failed");
        }
    }

    fn note_write_ok(&self) {
        if self.failing.swap(false, Ordering::Relaxed) {
            tracing::info!("disk writes succeed again; caching resumed");
        }
    }

    /// Loads the index from the store, then evicts when asked (at once, and at most every
    /// `FULL_EVICTION_GAP`, when the filesystem is full); every `flush_every` it saves
    /// recency and, every `sweep_every`, applies the lifecycle rules and prunes membership
    /// records. The task ends once the store is dropped.
    pub fn start(self: &Arc<Self>, flush_every: Duration, sweep_every: Duration) {
        let weak: Weak<Disk> = Arc::downgrade(self);
        let (wake, full) = (self.wake.clone(), self.full.clone());
        tokio::spawn(async move {
            if let Some(disk) = weak.upgrade() {
                let _ = tokio::task::spawn_blocking(move || {
                    // Ready (eviction allowed) from the snapshot; the walk then corrects.
                    disk.load_snapshot();
                    disk.reconcile();
                    disk.sweep();
                    disk.prune_members();
                })
                .await;
            }
            let mut tick = tokio::time::interval(flush_every);
            tick.tick().await;
            let mut swept = Instant::now();
            let mut last_full: Option<tokio::time::Instant> = None;
            loop {
                let woken = tokio::select! {
                    _ = wake.notified() => true,
                    _ = tick.tick() => false,
                };
                // An emergency eviction asked for within the gap of the last one waits for
                // the gap; failures meanwhile merge into it.
                if let Some(last) = last_full.filter(|_| full.pending()) {
                    tokio::time::sleep_until(last + FULL_EVICTION_GAP).await;
                }
                let Some(disk) = weak.upgrade() else { return };
                let sweep = !woken && swept.elapsed() >= sweep_every;
                if sweep {
                    swept = Instant::now();
                }
                let failed = full.take();
                if failed.is_some() {
                    last_full = Some(tokio::time::Instant::now());
                }
                let _ = tokio::task::spawn_blocking(move || {
                    if let Some(failed) = failed {
                        disk.evict_for_space(failed);
                    }
                    if sweep {
                        disk.refresh_pins();
                        disk.sweep();
                    }
                    disk.evict(false);
                    if sweep {
                        disk.prune_members();
                    }
                    if !woken {
                        disk.flush(false);
                    }
                })
                .await;
            }
        });
    }

    /// Fills the index from the snapshot and then a walk of the store, for a command
    /// that needs it whole before it starts. Blocks.
    pub fn load(&self) {
        self.load_snapshot();
        self.reconcile();
    }

    /// Fills the index from the last snapshot and lets eviction run: at a few hundred
    /// thousand objects this takes a fraction of the walk. Blocks.
    pub fn load_snapshot(&self) {
        let cutoff_before = self.index.generation_mark();
        let n = persist::load_snapshot(&self.store, &self.index);
        tracing::debug!(records = n, "disk index read from its snapshot");
        self.snapshot_cutoff.store(
            self.index.generation_mark().max(cutoff_before),
            Ordering::Relaxed,
        );
        self.became_ready();
    }

    /// Walks the store and corrects the index (see `persist::reconcile`). Blocks.
    pub fn reconcile(&self) {
        let cutoff = self.snapshot_cutoff.load(Ordering::Relaxed);
        match persist::reconcile(&self.store, &self.index, cutoff) {
            Ok(loaded) => {
                self.count(Reason::Corruption, loaded.corrupt.len() as u64);
                let (objects, bytes) = self.index.usage();
                tracing::info!(
                    objects,
                    bytes = %bytesize::ByteSize(bytes),
                    budget = %bytesize::ByteSize(self.limits.budget),
                    "disk index loaded"
                );
            }
            Err(e) => tracing::warn!(error = %e, "walking the store failed; the index is partial"),
        }
        self.became_ready();
    }

    fn became_ready(&self) {
        // Before eviction may run: pinned content must not go in the first pass.
        self.refresh_pins();
        self.ready.store(true, Ordering::Relaxed);
        if self.over_high() {
            self.wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Algorithm;

    /// A daemon's disk with a 1 GiB budget (marks at 900 and 800 MiB) in `dir`.
    fn gigabyte_disk(dir: &std::path::Path) -> Disk {
        let limits = Limits {
            budget: 1 << 30,
            high: 900 << 20,
            low: 800 << 20,
        };
        let store = Arc::new(Store::open(dir).unwrap());
        Disk::new(store, limits, Rules::default(), Metrics::new())
    }

    #[test]
    fn a_full_disk_evicts_the_least_recent_unpinned_objects_it_needs() {
        let dir = tempfile::tempdir().unwrap();
        let disk = gigabyte_disk(dir.path());
        let store = disk.store.clone();
        let keys: Vec<ObjectKey> = (0..4u8)
            .map(|n| {
                let data = [n; 100];
                let key = ObjectKey::blob(&Digest::of(Algorithm::Sha256, &data));
                store.write_atomic(&store.path_of(&key), &[&data]).unwrap();
                disk.index.insert(key.clone(), 100, 10 + u64::from(n), None);
                key
            })
            .collect();
        disk.index.touch(&keys[0], 99);
        let pin = disk.index.pin(&keys[1], 100, 20).unwrap();

        // Far under the budget, yet 150 bytes are wanted: the two least recent (2 and 3) go;
        // 0 was used since and 1 is being read.
        assert_eq!(disk.free_bytes(150), (2, 200));
        let gone = |k: &ObjectKey| !store.path_of(k).exists() && disk.index.get(k).is_none();
        assert!(gone(&keys[2]) && gone(&keys[3]));
        assert!(store.path_of(&keys[0]).exists() && store.path_of(&keys[1]).exists());
        let counted = |reason: &str| disk.metrics.evictions.with_label_values(&[reason]).get();
        assert_eq!((counted("disk_full"), counted("budget")), (2, 0));

        // Asked for more than is left: everything unpinned goes, the pinned one stays.
        assert_eq!(disk.free_bytes(1 << 20), (1, 100));
        assert_eq!(disk.index.usage(), (1, 100));
        assert_eq!(disk.free_bytes(0), (0, 0));
        drop(pin);
    }

    /// Waits (bounded) until `check` holds. Time is paused: each step lets blocking threads
    /// run for a real millisecond and moves the clock on by one.
    async fn until(check: impl Fn() -> bool) {
        for _ in 0..5000 {
            if check() {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("condition never held");
    }

    #[tokio::test(start_paused = true)]
    async fn emergency_evictions_are_rate_limited_and_merged() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Arc::new(gigabyte_disk(dir.path()));
        disk.start(Duration::from_secs(3600), Duration::from_secs(3600));
        until(|| disk.ready.load(Ordering::Relaxed)).await;
        let full = io::Error::from_raw_os_error(28);

        disk.note_write_error("test", &full, 10);
        until(|| !disk.full.pending()).await;
        // Within the gap of that eviction: these wait, and become one eviction.
        let asked = tokio::time::Instant::now();
        disk.note_write_error("test", &full, 10);
        disk.note_write_error("test", &full, 20);
        tokio::time::sleep(FULL_EVICTION_GAP - Duration::from_secs(1)).await;
        assert!(disk.full.pending(), "not before the gap has passed");
        until(|| !disk.full.pending()).await;
        assert!(asked.elapsed() >= FULL_EVICTION_GAP - Duration::from_millis(100));
        // Other write errors ask for nothing.
        disk.note_write_error("test", &io::Error::from_raw_os_error(5), 10);
        assert!(!disk.full.pending());
    }
}
