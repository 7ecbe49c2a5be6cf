//! Replays a trace against regcache's real tiers: the memory tier (`cache::memory`, moka
//! TinyLFU weighted by bytes, with its per-object limit) and the disk index with its real
//! LRU victim selection (`Index::take_victims`), applied between the watermarks the way
//! `Disk::evict` applies it. No bytes are stored: the disk tier is its index (the part that
//! decides what stays), and the memory tier holds zero-filled slices of one shared buffer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use regcache::store::memory::{Entry, Memory};
use regcache::store::{Index, Limits};

use crate::trace::Trace;

/// Hits and requests of one tier, by objects and by bytes.
#[derive(Clone, Copy, Default)]
pub struct Tally {
    pub requests: u64,
    pub request_bytes: u64,
    pub hits: u64,
    pub hit_bytes: u64,
}

impl Tally {
    fn ask(&mut self, size: u64, hit: bool) {
        self.requests += 1;
        self.request_bytes += size;
        if hit {
            self.hits += 1;
            self.hit_bytes += size;
        }
    }

    pub fn by_objects(&self) -> f64 {
        ratio(self.hits, self.requests)
    }

    pub fn by_bytes(&self) -> f64 {
        ratio(self.hit_bytes, self.request_bytes)
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

pub struct Outcome {
    /// Every request, as the memory tier sees it.
    pub memory: Tally,
    /// The requests memory missed, as the disk tier sees them.
    pub disk: Tally,
    /// Both tiers together: a hit in either.
    pub overall: Tally,
    /// How often the watermark eviction ran.
    pub evictions: u64,
    pub took: Duration,
}

/// Tier sizes for one replay.
pub struct Budgets {
    pub memory: u64,
    pub memory_max_object: u64,
    pub disk: u64,
}

/// The defaults of `cache.high_watermark` and `cache.low_watermark`.
const HIGH: f64 = 0.90;
const LOW: f64 = 0.80;

pub fn replay(trace: &Trace, budgets: &Budgets) -> Outcome {
    let memory = Memory::new(budgets.memory, budgets.memory_max_object);
    let index = Arc::new(Index::default());
    let limits = Limits {
        budget: budgets.disk,
        high: (budgets.disk as f64 * HIGH) as u64,
        low: (budgets.disk as f64 * LOW) as u64,
    };
    let zeros = Bytes::from(vec![0u8; budgets.memory_max_object as usize]);
    let (mut mem, mut disk, mut overall) = (Tally::default(), Tally::default(), Tally::default());
    let mut evictions = 0;
    // Recency is a logical clock: one tick per request keeps the LRU order exact, where
    // wall-clock milliseconds would tie.
    let mut now = 0u64;
    let started = Instant::now();
    for &image in &trace.pulls {
        for &id in &trace.images[image as usize] {
            let object = &trace.objects[id as usize];
            now += 1;
            // As `Cache::stored_blob`: memory first, whose hit also refreshes disk recency.
            let in_memory = memory.get(&object.memory).is_some();
            mem.ask(object.size, in_memory);
            if in_memory {
                index.touch(&object.disk, now);
                overall.ask(object.size, true);
                continue;
            }
            let on_disk = index.get(&object.disk).is_some();
            disk.ask(object.size, on_disk);
            overall.ask(object.size, on_disk);
            if on_disk {
                index.touch(&object.disk, now);
            } else {
                // A fill publishes the object, and the daemon evicts past the high mark.
                index.insert(object.disk.clone(), object.size, now, None);
                if index.usage().1 > limits.high {
                    index.take_victims(limits.low);
                    evictions += 1;
                }
            }
            // Both a disk hit and a fill put a small object in memory.
            if memory.admits(object.size) {
                let entry = Entry {
                    bytes: zeros.slice(..object.size as usize),
                    media_type: None,
                };
                memory.insert(object.memory.clone(), entry);
            }
        }
    }
    Outcome {
        memory: mem,
        disk,
        overall,
        evictions,
        took: started.elapsed(),
    }
}
