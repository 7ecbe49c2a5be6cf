//! Crash safety with the real binary: SIGKILL during fills, again and again, then a
//! restart. The cache must hold only verified content and no leftovers, and the operator
//! commands must agree.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::fake::{FakeRegistry, Fault};
use support::regcache::Regcache;
use support::store::{files, verified_blobs};

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
    assert_eq!(verified_blobs(&cache), blobs.len());

    // The operator commands work beside the running daemon.
    let verified = cli(&["verify"], &cache);
    assert!(verified.contains("checked 6 objects"), "{verified}");
    assert!(verified.contains("removed 0"), "{verified}");
    let stats = cli(&["stats"], &cache);
    assert!(stats.contains("blobs: 6"), "{stats}");
    let gc = cli(&["gc"], &cache);
    assert!(gc.contains("removed 0 objects"), "{gc}");
    assert_eq!(verified_blobs(&cache), blobs.len());
}
