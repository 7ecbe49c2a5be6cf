//! How the disk index scales with the number of objects a regional mirror holds.
//!
//! For each object count (arguments; default 10,000 100,000 300,000 1,000,000):
//! - **startup**: a store of that many sparse 10 MiB blob files, loaded by the walk (no
//!   snapshot), then ready again from the snapshot the first load wrote (the daemon then
//!   walks the store in the background to correct it);
//! - **memory**: RSS growth per object of an index of that many records;
//! - **eviction**: a budget cut that evicts 60% of the records while two threads keep
//!   hitting random objects (what memory hits do to the index), against the same hits with
//!   no eviction running: hit latency p50/p99/max and the eviction's own time.
//!
//!     cargo bench --bench index [-- 10000 300000]
//!
//! Without `--bench` (as `cargo test --all-targets` runs it) it checks 2,000 objects only.
//! `REGCACHE_BENCH_STARTUP_MAX` (default 1,000,000) skips the startup part above that
//! count (it creates that many files, about 20 s per 100,000 here). Not criterion: these
//! are one-shot figures and latency distributions, not a throughput.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use regcache::metrics::Metrics;
use regcache::oci::{Algorithm, Digest};
use regcache::store::lifecycle::Rules;
use regcache::store::{Disk, Index, Limits, ObjectKey, Store};

const BLOB: u64 = 10 << 20;

fn main() {
    // The RSS figure is taken in a fresh process of its own (see `rss_per_object`).
    if let Some(n) = std::env::var("REGCACHE_BENCH_RSS_OF")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        println!("{}", measure_rss(n));
        return;
    }
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this as a smoke test.
    let full = std::env::args().any(|a| a == "--bench");
    let counts: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.replace('_', "").parse().ok())
        .collect();
    let counts = match (counts.is_empty(), full) {
        (false, _) => counts,
        (true, true) => vec![10_000, 100_000, 300_000, 1_000_000],
        (true, false) => vec![2_000],
    };
    let startup_max: usize = std::env::var("REGCACHE_BENCH_STARTUP_MAX")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    println!("| objects | index complete by walk, no snapshot (s) | index ready from the snapshot (s) | RSS per object (B) | eviction of 60% (s) | hit p50 / p99 / max, no eviction (ms) | hit p50 / p99 / max, during eviction (ms) |");
    println!("|---|---|---|---|---|---|---|");
    for n in counts {
        let (walk, snapshot) = if n <= startup_max {
            let (w, s) = startup(n);
            (format!("{w:.2}"), format!("{s:.2}"))
        } else {
            ("-".into(), "-".into())
        };
        let per_object = rss_per_object(n);
        let (evict, mut quiet, mut busy) = eviction(n);
        println!(
            "| {n} | {walk} | {snapshot} | {per_object:.0} | {evict:.2} | {} | {} |",
            quiet.show(),
            busy.show()
        );
    }
}

fn digest(n: usize) -> Digest {
    Digest::of(Algorithm::Sha256, &(n as u64).to_le_bytes())
}

/// Seconds to load a store of `n` sparse blobs: by walking it, then from its snapshot.
fn startup(n: usize) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Store::open(dir.path()).expect("store"));
    for i in 0..n {
        let path = store.blob_path(&digest(i));
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        let file = std::fs::File::create(&path).expect("create");
        file.set_len(BLOB).expect("set_len");
    }
    drop(store);
    let open = || {
        let store = Arc::new(Store::open(dir.path()).expect("store"));
        let limits = Limits {
            budget: u64::MAX,
            high: u64::MAX,
            low: u64::MAX,
        };
        Disk::new(store, limits, Rules::default(), Metrics::new())
    };
    let disk = open();
    let started = Instant::now();
    disk.load();
    let walk = started.elapsed().as_secs_f64();
    assert_eq!(disk.index.usage().0, n as u64);
    disk.flush(true);
    drop(disk);
    let disk = open();
    let started = Instant::now();
    // What the daemon does: ready (serving, evicting) from the snapshot, then the walk.
    disk.load_snapshot();
    let snapshot = started.elapsed().as_secs_f64();
    assert_eq!(disk.index.usage().0, n as u64);
    disk.reconcile();
    assert_eq!(disk.index.usage().0, n as u64);
    (walk, snapshot)
}

fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// RSS growth per record of an index of `n` records, measured in a new process: in this
/// one, the allocator reuses what the other parts freed and RSS would not grow.
fn rss_per_object(n: usize) -> f64 {
    let out = std::process::Command::new(std::env::current_exe().expect("this bench"))
        .env("REGCACHE_BENCH_RSS_OF", n.to_string())
        .output()
        .expect("run the RSS measurement");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(f64::NAN)
}

/// RSS growth per record (keys made beforehand are counted out; the index keeps its own
/// copies).
fn measure_rss(n: usize) -> f64 {
    let keys: Vec<ObjectKey> = (0..n).map(|i| ObjectKey::blob(&digest(i))).collect();
    let before = rss();
    let index = Index::default();
    for (i, key) in keys.iter().enumerate() {
        index.insert(key.clone(), BLOB, i as u64, Some("docker.io"));
    }
    let after = rss();
    drop(index);
    after.saturating_sub(before) as f64 / n as f64
}

#[derive(Default)]
struct Latency(Vec<Duration>);

impl Latency {
    fn show(&mut self) -> String {
        self.0.sort_unstable();
        let at = |q: f64| {
            let i = ((self.0.len() as f64 * q) as usize).min(self.0.len().saturating_sub(1));
            self.0.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e3)
        };
        format!("{:.3} / {:.3} / {:.3}", at(0.5), at(0.99), at(1.0))
    }
}

/// Hits (`touch`) from two threads for `window`, or until `stop`; their latencies.
fn hits(
    index: &Arc<Index>,
    keys: &Arc<Vec<ObjectKey>>,
    stop: &Arc<AtomicBool>,
    window: Duration,
) -> Latency {
    let threads: Vec<_> = (0..2u64)
        .map(|t| {
            let (index, keys, stop) = (index.clone(), keys.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ t;
                let started = Instant::now();
                while !stop.load(Ordering::Relaxed) && started.elapsed() < window {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let key = &keys[(x % keys.len() as u64) as usize];
                    let at = Instant::now();
                    index.touch(key, u64::MAX / 2);
                    seen.push(at.elapsed());
                    // About 20,000 hits a second per thread, as a busy mirror's hot path.
                    std::thread::sleep(Duration::from_micros(50));
                }
                seen
            })
        })
        .collect();
    let mut all = Latency::default();
    for thread in threads {
        all.0.extend(thread.join().expect("hit thread"));
    }
    all
}

/// A budget cut evicting 60% of `n` records, with hits running: (its seconds, hit
/// latency with no eviction, hit latency during it).
fn eviction(n: usize) -> (f64, Latency, Latency) {
    let index = Arc::new(Index::default());
    let keys: Arc<Vec<ObjectKey>> = Arc::new((0..n).map(|i| ObjectKey::blob(&digest(i))).collect());
    for (i, key) in keys.iter().enumerate() {
        index.insert(key.clone(), BLOB, i as u64, Some("docker.io"));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let quiet = hits(&index, &keys, &stop, Duration::from_secs(2));
    let hitting = {
        let (index, keys, stop) = (index.clone(), keys.clone(), stop.clone());
        std::thread::spawn(move || hits(&index, &keys, &stop, Duration::from_secs(600)))
    };
    std::thread::sleep(Duration::from_millis(200));
    let target = index.usage().1 / 10 * 4;
    let started = Instant::now();
    let victims = index.take_victims(target);
    let evict = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let busy = hitting.join().expect("hits");
    assert!(victims.len() >= n / 2, "evicted {} of {n}", victims.len());
    (evict, quiet, busy)
}
