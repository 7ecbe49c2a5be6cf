//! Membership records (`v1/members/`) do not outgrow the cache, with the real binary: the
//! daemon's sweeps and `regcache gc` drop the records of content no longer cached and the
//! files of repositories left with none, and content pulled again is recorded again.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::fake::FakeRegistry;
use crate::support::fake_images::{add_image, pull_checked, FakeImage};
use crate::support::regcache::Regcache;
use crate::support::store::{cached, member_records, stale_members, usage};

const KIB: usize = 1 << 10;

/// A 1 MiB budget (evicting past 900 KiB down to 500 KiB), sweeps every `sweep_secs`.
fn config(upstream: &str, sweep_secs: u64) -> String {
    format!(
        "[cache]\ndisk_bytes = \"1MiB\"\nhigh_watermark = 0.9\nlow_watermark = 0.5\n\
         memory_bytes = \"0\"\nindex_flush_secs = 1\nlifecycle_sweep_secs = {sweep_secs}\n\
         [[upstream]]\nname = \"origin\"\nurl = \"{upstream}\"\n"
    )
}

fn repo_file(cache: &Path, repo: &str) -> PathBuf {
    cache.join("v1/members/origin").join(repo).join("_members")
}

/// Waits (bounded) until `check` holds.
async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `team/b:v0` first, then enough of `team/a` to push all of `team/b` out of the budget.
fn images(fake: &FakeRegistry) -> (FakeImage, Vec<FakeImage>) {
    let b = add_image(fake, "team/b", "v0", &[200 * KIB], 100);
    let a = (0..4u64)
        .map(|n| add_image(fake, "team/a", &format!("v{n}"), &[200 * KIB], n))
        .collect();
    (b, a)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_daemon_prunes_records_of_evicted_content_after_its_sweeps() {
    let fake = FakeRegistry::start().await;
    let (b, a) = images(&fake);
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("cache");
    let daemon = Regcache::start_with_config(&config(&fake.url(), 1), &cache);
    let client = reqwest::Client::new();
    pull_checked(&client, &daemon.url(), &b).await;
    eventually("team/b is recorded", || {
        repo_file(&cache, "team/b").exists()
    })
    .await;
    for image in &a {
        pull_checked(&client, &daemon.url(), image).await;
    }
    eventually("team/b is evicted", || !cached(&cache, &b.blobs[1].0)).await;
    eventually("no record of content no longer cached is left", || {
        stale_members(&cache).is_empty() && !repo_file(&cache, "team/b").exists()
    })
    .await;
    assert!(!cache.join("v1/members/origin/team/b").exists());
    let (_, kept) = &member_records(&cache)[0];
    assert!(!kept.is_empty(), "what is cached keeps its records");
    // Pulled again, it is recorded again.
    pull_checked(&client, &daemon.url(), &b).await;
    eventually("team/b is recorded again", || {
        let text = std::fs::read_to_string(repo_file(&cache, "team/b")).unwrap_or_default();
        b.blobs.iter().all(|(d, _)| text.contains(d.as_str()))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_through_the_daemon_prunes_and_the_daemon_records_again() {
    let fake = FakeRegistry::start().await;
    let (b, a) = images(&fake);
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("cache");
    // Sweeps hourly: only the startup one, on an empty cache; gc does the pruning.
    let daemon = Regcache::start_with_config(&config(&fake.url(), 3600), &cache);
    let client = reqwest::Client::new();
    pull_checked(&client, &daemon.url(), &b).await;
    for image in &a {
        pull_checked(&client, &daemon.url(), image).await;
    }
    // Evicted down to the low mark: the store no longer changes.
    eventually("evictions left records of content not cached", || {
        repo_file(&cache, "team/b").exists() && usage(&cache).1 <= 512 * KIB as u64
    })
    .await;
    assert!(!stale_members(&cache).is_empty());

    let output = Command::new(env!("CARGO_BIN_EXE_regcache"))
        .arg("gc")
        .arg("--config")
        .arg(cache.with_extension("toml"))
        .arg("--cache-dir")
        .arg(&cache)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(out.contains("repository files emptied"), "{out}");
    assert!(!out.contains("pruned 0 "), "{out}");
    assert!(
        stale_members(&cache).is_empty(),
        "{:?}",
        stale_members(&cache)
    );
    assert!(!repo_file(&cache, "team/b").exists());

    // The daemon pruned (gc ran in it), so it forgot the records in memory too: team/b
    // pulled again is recorded again although it had been recorded before.
    pull_checked(&client, &daemon.url(), &b).await;
    eventually("team/b is recorded again", || {
        let text = std::fs::read_to_string(repo_file(&cache, "team/b")).unwrap_or_default();
        text.contains(b.manifest_digest.as_str())
            && b.blobs.iter().all(|(d, _)| text.contains(d.as_str()))
    })
    .await;
}
