//! Crash safety with the real binary: SIGKILL during fills, budget eviction and lifecycle
//! sweeps, again and again, then a restart. The cache must hold only verified content and
//! no leftovers, the daemon's index must agree with the files, and the operator commands
//! must agree with both.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::fake::{FakeRegistry, Fault};
use crate::support::fake_images::{add_image, pull_checked, FakeImage, OCI_MANIFEST};
use crate::support::regcache::{metric_sum, Regcache};
use crate::support::store::{
    age_snapshot, files, member_records, stale_members, usage, verified_blobs, verified_objects,
};

fn cli(args: &[&str], cache: &Path) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_regcache"))
        .args(args)
        .arg("--cache-dir")
        .arg(cache)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_during_fills_leaves_only_verified_content() {
    let fake = FakeRegistry::start().await;
    let blobs: Vec<(String, Vec<u8>)> = (0..6u32)
        .map(|n| {
            let bytes: Vec<u8> = (0..(2u32 << 20)).map(|i| (i * 7 + n) as u8).collect();
            let digest = fake.add_blob(bytes.clone());
            // 64 KiB every 4 ms: about 130 ms per blob, so kills land mid-fill.
            fake.set_fault(&digest, Fault::Slow(Duration::from_millis(4)));
            (digest, bytes)
        })
        .collect();
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("cache");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    let mut interrupted = 0;
    for round in 0..5u64 {
        let mut regcache = Regcache::start(&fake.url(), &cache);
        let pulls: Vec<_> = blobs
            .iter()
            .map(|(digest, _)| {
                let url = format!("{}/v2/a/blobs/{digest}", regcache.url());
                let client = client.clone();
                tokio::spawn(async move {
                    let _ = client.get(url).send().await?.bytes().await;
                    Ok::<_, reqwest::Error>(())
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(40 + 45 * round)).await;
        regcache.stop(); // SIGKILL
        for pull in pulls {
            pull.abort();
        }
        interrupted += files(&cache.join("v1/tmp")).len();
        verified_blobs(&cache);
    }
    assert!(interrupted > 0, "the kills landed while fills were writing");

    let regcache = Regcache::start(&fake.url(), &cache);
    assert!(
        files(&cache.join("v1/tmp")).is_empty(),
        "no leftovers after a restart"
    );
    for (digest, bytes) in &blobs {
        let url = format!("{}/v2/a/blobs/{digest}", regcache.url());
        let body = client.get(url).send().await.unwrap().bytes().await.unwrap();
        assert!(body[..] == bytes[..], "{digest}");
    }
    regcache.settled().await;
    assert_eq!(verified_blobs(&cache), blobs.len());

    // The operator commands work while the daemon runs (through its admin API).
    let verified = cli(&["verify"], &cache);
    assert!(verified.contains("checked 6 objects"), "{verified}");
    assert!(verified.contains("removed 0"), "{verified}");
    let stats = cli(&["stats"], &cache);
    assert!(stats.contains("blobs: 6"), "{stats}");
    let gc = cli(&["gc"], &cache);
    assert!(gc.contains("removed 0 objects"), "{gc}");
    assert_eq!(verified_blobs(&cache), blobs.len());
}

/// A tiny budget (every few pulls pass it), tag records trimmed to 2 per repository and
/// objects expiring after a day, with recency saved and rules applied every second.
fn churn_config(upstream: &str) -> String {
    format!(
        "[cache]\ndisk_bytes = \"1536KiB\"\nhigh_watermark = 0.9\nlow_watermark = 0.5\n\
         memory_bytes = \"0\"\nindex_flush_secs = 1\nlifecycle_sweep_secs = 1\n\
         [[upstream]]\nname = \"origin\"\nurl = \"{upstream}\"\ntag_ttl_secs = 0\n\
         max_tags_per_repo = 2\nexpire_after_days = 1\n"
    )
}

/// Pulls every image (manifest by tag, then its blobs) over and over until aborted.
async fn pull_forever(client: reqwest::Client, base: String, images: Vec<(String, Vec<String>)>) {
    for n in 0..100_000usize {
        let (manifest, blobs) = &images[n % images.len()];
        let got = client
            .get(format!("{base}{manifest}"))
            .header("accept", OCI_MANIFEST);
        if let Ok(response) = got.send().await {
            let _ = response.bytes().await;
        }
        for blob in blobs {
            if let Ok(response) = client.get(format!("{base}{blob}")).send().await {
                let _ = response.bytes().await;
            }
        }
    }
}

/// Waits (bounded) until the daemon's index counts exactly what is on disk.
async fn index_matches_files(regcache: &Regcache, cache: &Path) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let metrics = regcache.metrics().await;
        let objects = metric_sum(&metrics, "regcache_disk_objects").unwrap_or(-1.0);
        let bytes = metric_sum(&metrics, "regcache_disk_bytes").unwrap_or(-1.0);
        let on_disk = usage(cache);
        if (objects as u64, bytes as u64) == on_disk {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "index: {objects} objects, {bytes} bytes; files: {on_disk:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_during_eviction_and_lifecycle_sweeps_keeps_index_and_files_in_line() {
    let fake = FakeRegistry::start().await;
    // 8 tags of 2 layers of 192 KiB: 3 MiB in all, twice the budget.
    let images: Vec<FakeImage> = (0..8u64)
        .map(|n| {
            add_image(
                &fake,
                "team/app",
                &format!("v{n}"),
                &[192 << 10, 192 << 10],
                n,
            )
        })
        .collect();
    for image in &images {
        for (digest, _) in &image.blobs[1..] {
            fake.set_fault(digest, Fault::Slow(Duration::from_millis(3)));
        }
    }
    let paths: Vec<(String, Vec<String>)> = images
        .iter()
        .map(|i| {
            let blobs = i
                .blobs
                .iter()
                .map(|(d, _)| format!("/v2/{}/blobs/{d}", i.repo));
            (
                format!("/v2/{}/manifests/{}", i.repo, i.tag),
                blobs.collect(),
            )
        })
        .collect();
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("cache");
    let config = churn_config(&fake.url());
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    // From right after startup (load, first sweep) to well into the churn; recency is
    // saved from 1 s on, so the later kills leave a snapshot for the next round to age.
    for delay_ms in [30, 1300, 450, 2100, 1150, 2600, 800, 1700] {
        // As if the cache had sat unused for days: the startup sweep expires what it recorded.
        age_snapshot(&cache, 3 * 86_400_000);
        let mut regcache = Regcache::start_with_config(&config, &cache);
        let streams: Vec<_> = (0..2)
            .map(|s| {
                let mut mine = paths.clone();
                mine.rotate_left(s * 3);
                tokio::spawn(pull_forever(client.clone(), regcache.url(), mine))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        regcache.stop(); // SIGKILL
        for stream in streams {
            stream.abort();
        }
        verified_objects(&cache);
    }
    // The kills landed among evictions and sweeps that removed tags and objects.
    let log = std::fs::read_to_string(cache.with_extension("log")).unwrap();
    let log = regex::Regex::new("\x1b\\[[0-9;]*m")
        .unwrap()
        .replace_all(&log, "");
    let evictions = log.matches("evicted least recently used objects").count();
    let swept =
        regex::Regex::new("lifecycle rules applied objects=([0-9]+) bytes=[0-9]+ tags=([0-9]+)")
            .unwrap();
    let (mut expired, mut trimmed) = (0, 0);
    for found in swept.captures_iter(&log) {
        expired += found[1].parse::<u64>().unwrap();
        trimmed += found[2].parse::<u64>().unwrap();
    }
    assert!(
        evictions >= 5 && expired > 0 && trimmed > 0,
        "evictions {evictions}, expired {expired}, tags trimmed {trimmed}"
    );

    let regcache = Regcache::start_with_config(&config, &cache);
    assert!(
        files(&cache.join("v1/tmp")).is_empty(),
        "no leftovers after a restart"
    );
    index_matches_files(&regcache, &cache).await;
    // The operator commands and the files agree.
    let (objects, bytes) = usage(&cache);
    let verified = cli(&["verify"], &cache);
    assert!(
        verified.contains(&format!("checked {objects} objects")),
        "{verified}"
    );
    assert!(verified.contains("removed 0"), "{verified}");
    let stats = cli(&["stats"], &cache);
    let counted: u64 = stats
        .lines()
        .filter(|l| l.starts_with("blobs: ") || l.starts_with("manifests: "))
        .map(|l| l.split(' ').nth(1).unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(counted, objects, "{stats}");
    assert!(bytes <= 1536 << 10, "within the budget: {bytes}");
    // Trimmed tags and evicted manifests are misses, fetched again: every byte is right.
    for image in &images {
        pull_checked(&client, &regcache.url(), image).await;
    }
    index_matches_files(&regcache, &cache).await;
    verified_objects(&cache);
    // Membership records outlive neither evictions nor kills: a sweep prunes the stale.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !stale_members(&cache).is_empty() {
        assert!(Instant::now() < deadline, "{:?}", stale_members(&cache));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!member_records(&cache).is_empty());
}
