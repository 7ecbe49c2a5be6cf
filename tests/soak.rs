//! A bounded soak: the real binary in front of the in-process fake upstream, many
//! clients pulling a mix of hot content (manifests by tag and digest, blobs of many
//! sizes from memory and disk) and cold blobs (new upstream content, fetched once),
//! while the daemon's resident memory and open file descriptors are sampled each second.
//!
//! Passes when every body was correct and both series are flat after warm-up: the last
//! third's peak within 10% + 8 MiB (RSS) or 8 descriptors of the first third's. Ignored by default (it runs
//! for SOAK_SECONDS, default 60); tests/run.sh runs it:
//!
//!     SOAK_SECONDS=60 cargo test --test soak -- --ignored --nocapture

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use support::fake::FakeRegistry;
use support::images::OCI_MANIFEST;
use support::regcache::Regcache;
use support::store::verified_blobs;

const CLIENTS: usize = 16;
/// Hot blob sizes: small ones live in the memory tier, the rest are served from disk.
const HOT_SIZES: [usize; 8] = [
    300,
    4 << 10,
    64 << 10,
    256 << 10,
    1 << 20,
    3 << 20,
    5 << 20,
    8 << 20,
];
/// Share of requests, in percent, that pull a blob upstream has never served before.
const COLD_PERCENT: u64 = 25;

fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// One resource sample of the daemon.
#[derive(Clone, Copy, Debug)]
struct Sample {
    rss_kib: u64,
    fds: usize,
}

fn sample(pid: u32) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some(Sample { rss_kib, fds })
}

/// What the hot set holds: (repository, tag, manifest digest, manifest bytes) and blobs.
struct Hot {
    manifests: Vec<(String, String, String, Vec<u8>)>,
    blobs: Vec<(String, usize)>,
}

fn publish_hot(fake: &FakeRegistry) -> Hot {
    let mut blobs = Vec::new();
    let mut manifests = Vec::new();
    for (i, size) in HOT_SIZES.iter().enumerate() {
        let bytes = data(*size, i as u64 + 1);
        blobs.push((fake.add_blob(bytes), *size));
    }
    for image in 0..4 {
        let layers: Vec<String> = blobs
            .iter()
            .skip(image)
            .step_by(2)
            .map(|(digest, size)| {
                format!(
                    r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{digest}","size":{size}}}"#
                )
            })
            .collect();
        let (config, config_size) = &blobs[image];
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":{config_size}}},"layers":[{}]}}"#,
            layers.join(",")
        );
        let repo = format!("soak/app{image}");
        let tag = format!("v{image}");
        let digest = fake.add_manifest(&repo, &tag, OCI_MANIFEST, body.clone());
        manifests.push((repo, tag, digest, body.into_bytes()));
    }
    Hot { manifests, blobs }
}

#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    cold: AtomicU64,
    bytes: AtomicU64,
}

/// Pulls until `stop`, checking every body; panics on the first wrong one.
async fn client(
    id: u64,
    base: String,
    fake: FakeRegistry,
    hot: Arc<Hot>,
    next_cold: Arc<AtomicU64>,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
) {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut rng = id.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1;
    let mut roll = |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    while !stop.load(Ordering::Relaxed) {
        let pick = roll(100);
        let (url, expected): (String, String) = if pick < COLD_PERCENT {
            // New upstream content: 1 KiB .. 1 MiB, pulled for the first time.
            let n = next_cold.fetch_add(1, Ordering::Relaxed);
            let bytes = data(1024 + (n as usize * 7919) % (1 << 20), 1_000_000 + n);
            let digest = fake.add_blob(bytes);
            tally.cold.fetch_add(1, Ordering::Relaxed);
            (format!("{base}/v2/soak/cold/blobs/{digest}"), digest)
        } else if pick < 60 {
            let (repo, tag, digest, _) = &hot.manifests[roll(4) as usize];
            let reference = if roll(2) == 0 { tag } else { digest };
            (
                format!("{base}/v2/{repo}/manifests/{reference}"),
                digest.clone(),
            )
        } else {
            let (digest, _) = &hot.blobs[roll(hot.blobs.len() as u64) as usize];
            (
                format!("{base}/v2/soak/app0/blobs/{digest}"),
                digest.clone(),
            )
        };
        let response = http
            .get(&url)
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert_eq!(response.status().as_u16(), 200, "GET {url}");
        let body = response
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: body cut: {e}"));
        assert_eq!(sha256(&body), expected, "GET {url}: wrong bytes");
        tally.requests.fetch_add(1, Ordering::Relaxed);
        tally.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
    }
}

fn peak(samples: &[Sample], f: impl Fn(&Sample) -> u64) -> u64 {
    samples.iter().map(f).max().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a soak of SOAK_SECONDS (default 60); tests/run.sh runs it"]
async fn memory_and_descriptors_stay_flat_under_mixed_pulls() {
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60)
        .max(15);
    let fake = FakeRegistry::start().await;
    let hot = Arc::new(publish_hot(&fake));
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("cache");
    // A small memory tier, so it fills during warm-up instead of growing all along.
    let config = root.path().join("regcache.toml");
    let text = format!(
        "[cache]\nmemory_bytes = \"16MiB\"\nmemory_max_object_bytes = \"1MiB\"\n\
         [[upstream]]\nurl = \"{}\"\n",
        fake.url()
    );
    std::fs::write(&config, text).unwrap();
    let regcache = tokio::task::block_in_place(|| {
        Regcache::start_with_config_file(&fake.url(), &cache, Some(&config))
    });
    let pid = regcache.pid().unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(Mutex::new(Vec::new()));
    let sampler = {
        let (stop, samples) = (stop.clone(), samples.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(s) = sample(pid) {
                    samples.lock().unwrap().push(s);
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    };
    let tally = Arc::new(Tally::default());
    let next_cold = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..CLIENTS as u64)
        .map(|id| {
            tokio::spawn(client(
                id,
                regcache.url(),
                fake.clone(),
                hot.clone(),
                next_cold.clone(),
                tally.clone(),
                stop.clone(),
            ))
        })
        .collect();
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("a client found a wrong or failed response");
    }
    sampler.join().unwrap();
    let elapsed = started.elapsed().as_secs_f64();

    let samples = samples.lock().unwrap().clone();
    let requests = tally.requests.load(Ordering::Relaxed);
    let mib = tally.bytes.load(Ordering::Relaxed) as f64 / (1 << 20) as f64;
    eprintln!(
        "soak: {elapsed:.0}s, {CLIENTS} clients, {requests} requests ({:.0}/s), {} cold, \
         {mib:.0} MiB served",
        requests as f64 / elapsed,
        tally.cold.load(Ordering::Relaxed)
    );
    let rss: Vec<u64> = samples.iter().map(|s| s.rss_kib / 1024).collect();
    let fds: Vec<usize> = samples.iter().map(|s| s.fds).collect();
    eprintln!("soak: RSS MiB per second: {rss:?}");
    eprintln!("soak: open fds per second: {fds:?}");
    assert!(samples.len() >= 12, "too few samples: {}", samples.len());
    assert!(requests > CLIENTS as u64 * 10, "the load was too light");

    // The first 40% is warm-up: the memory tier, the connection pools and the
    // allocator's arenas fill (about 25 s on 2 busy cores with a debug build).
    let measured = &samples[samples.len() * 2 / 5..];
    let third = measured.len() / 3;
    let (first, last) = (&measured[..third], &measured[measured.len() - third..]);
    let (rss_first, rss_last) = (peak(first, |s| s.rss_kib), peak(last, |s| s.rss_kib));
    let (fds_first, fds_last) = (peak(first, |s| s.fds as u64), peak(last, |s| s.fds as u64));
    eprintln!(
        "soak: peak RSS {} -> {} MiB, peak fds {fds_first} -> {fds_last}",
        rss_first / 1024,
        rss_last / 1024
    );
    assert!(
        rss_last <= rss_first + rss_first / 10 + 8 * 1024,
        "resident memory grew: {} -> {} MiB",
        rss_first / 1024,
        rss_last / 1024
    );
    assert!(
        fds_last <= fds_first + 8,
        "open file descriptors grew: {fds_first} -> {fds_last}"
    );
    assert!(verified_blobs(&cache) > 0);
}
