//! The bucket tier with the real binary: two replicas with their own disks, one bucket.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::fake::{FakeRegistry, Fault};
use crate::support::fake_images::{add_image, pull_checked};
use crate::support::regcache::Regcache;
use crate::support::seaweed::{Seaweed, ACCESS_KEY, SECRET_KEY};
use crate::support::store::verified_blobs;
use crate::support::throttle::Throttle;

const MIB: usize = 1 << 20;

fn replica(fake: &FakeRegistry, seaweed: &Seaweed, cache: &Path) -> Regcache {
    replica_on(&seaweed.config(), fake, cache)
}

/// A replica with the `[bucket]` table `bucket`.
fn replica_on(bucket: &str, fake: &FakeRegistry, cache: &Path) -> Regcache {
    let config = format!(
        "{bucket}[[upstream]]\nname = \"origin\"\nurl = \"{}\"\n",
        fake.url()
    );
    let env = [
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
    ];
    Regcache::start_with_config_env(&config, cache, &env)
}

/// The value of the sample `series` (name and labels, as the exposition writes them).
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// `regcache_bucket_operations_total{op, result}` of a replica.
async fn bucket_ops(replica: &Regcache, op: &str, result: &str) -> f64 {
    let metrics = replica.metrics().await;
    let series = format!("regcache_bucket_operations_total{{op=\"{op}\",result=\"{result}\"}}");
    sample(&metrics, &series)
}

/// Waits (bounded) until the replica counted `n` operations `op` with `result`.
async fn until_ops(replica: &Regcache, op: &str, result: &str, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while bucket_ops(replica, op, result).await < n {
        if Instant::now() >= deadline {
            let metrics = replica.metrics().await;
            let bucket: Vec<&str> = metrics.lines().filter(|l| l.contains("bucket")).collect();
            panic!(
                "{op} {result} never reached {n}: {bucket:?}\n{}",
                replica.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_replica_serves_what_the_first_put_in_the_bucket_without_upstream_gets() {
    let Some(seaweed) = Seaweed::start("shared") else {
        return;
    };
    let fake = FakeRegistry::start().await;
    // A 20 MiB layer: three parts of a multipart upload.
    let image = add_image(&fake, "team/app", "v1", &[20 * MIB, 64 << 10], 7);
    let root = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();

    let a = replica(&fake, &seaweed, &root.path().join("a"));
    pull_checked(&client, &a.url(), &image).await;
    // Config and two layers uploaded, each with its delivery marker; and the manifest.
    until_ops(&a, "put_blob", "ok", 3.0).await;
    until_ops(&a, "put_manifest", "ok", 1.0).await;
    until_ops(&a, "put_marker", "ok", 4.0).await;
    let gets = |d: &str| fake.count("GET", d);
    assert!(image.blobs.iter().all(|(d, _)| gets(d) == 1));

    // Another replica with an empty disk: every blob comes from the bucket.
    let b = replica(&fake, &seaweed, &root.path().join("b"));
    pull_checked(&client, &b.url(), &image).await;
    for (digest, _) in &image.blobs {
        assert_eq!(gets(digest), 1, "{digest} was fetched upstream again");
    }
    assert_eq!(bucket_ops(&b, "get_blob", "hit").await, 3.0);
    // The 20 MiB layer came as its first 8 MiB part, then two ranged GETs for the rest.
    assert_eq!(bucket_ops(&b, "get_part", "ok").await, 2.0);
    let metrics = b.metrics().await;
    let from_bucket = sample(&metrics, "regcache_served_bytes_total{source=\"bucket\"}");
    assert!(from_bucket >= (20 * MIB) as f64, "{metrics}");
    // A third replica asked for the manifest by digest reads it from the bucket.
    let c = replica(&fake, &seaweed, &root.path().join("c"));
    let url = format!(
        "{}/v2/team/app/manifests/{}",
        c.url(),
        image.manifest_digest
    );
    let response = client
        .get(url)
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.bytes().await.unwrap()[..] == image.manifest[..]);
    assert_eq!(bucket_ops(&c, "get_manifest", "hit").await, 1.0);
    assert_eq!(
        gets(&image.manifest_digest),
        0,
        "never fetched by digest upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_that_fails_verification_never_enters_the_bucket() {
    let Some(seaweed) = Seaweed::start("verified") else {
        return;
    };
    let fake = FakeRegistry::start().await;
    let bad = fake.add_blob(vec![3u8; 12 * MIB]);
    fake.set_fault(&bad, Fault::Corrupt);
    let root = tempfile::tempdir().unwrap();
    let a = replica(&fake, &seaweed, &root.path().join("a"));
    let url = format!("{}/v2/team/app/blobs/{bad}", a.url());
    let response = reqwest::get(&url).await.unwrap();
    // The client never gets a clean, complete wrong body.
    assert!(
        response.bytes().await.is_err(),
        "a corrupt blob ended cleanly"
    );
    until_ops(&a, "put_blob", "aborted", 1.0).await;
    assert_eq!(bucket_ops(&a, "put_blob", "ok").await, 0.0);

    // Upstream repaired: a second replica finds nothing in the bucket and goes upstream.
    fake.set_fault(&bad, Fault::None);
    let b = replica(&fake, &seaweed, &root.path().join("b"));
    let body = reqwest::get(format!("{}/v2/team/app/blobs/{bad}", b.url()))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(body[..] == vec![3u8; 12 * MIB][..]);
    assert_eq!(bucket_ops(&b, "get_blob", "hit").await, 0.0);
    assert_eq!(fake.count("GET", &bad), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_that_dies_mid_read_cuts_the_body_and_lands_nothing() {
    let Some(mut seaweed) = Seaweed::start("dying") else {
        return;
    };
    let fake = FakeRegistry::start().await;
    // Three 8 MiB parts: the first streams while the other two are ranged GETs.
    let data: Vec<u8> = (0..24 * MIB).map(|i| (i % 251) as u8).collect();
    let digest = fake.add_blob(data.clone());
    let root = tempfile::tempdir().unwrap();
    let a = replica(&fake, &seaweed, &root.path().join("a"));
    let url = |r: &Regcache| format!("{}/v2/team/app/blobs/{digest}", r.url());
    let body = reqwest::get(url(&a)).await.unwrap().bytes().await.unwrap();
    assert!(body[..] == data[..]);
    until_ops(&a, "put_blob", "ok", 1.0).await;
    until_ops(&a, "put_marker", "ok", 1.0).await;

    // B reads the bucket through a link of 4 MiB/s per connection: 2 s or more for the
    // blob, and SeaweedFS is killed half a second in.
    let slow = Throttle::start(&seaweed.endpoint()["http://".len()..], 4 * MIB as u64).await;
    let through_slow = seaweed.config().replace(&seaweed.endpoint(), &slow.url());
    let b_cache = root.path().join("b");
    let b = replica_on(&through_slow, &fake, &b_cache);
    let response = reqwest::get(url(&b)).await.unwrap();
    assert_eq!(response.status(), 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    seaweed.stop();
    assert!(
        response.bytes().await.is_err(),
        "a body cut by the bucket ended cleanly"
    );
    b.settled().await;
    assert_eq!(verified_blobs(&b_cache), 0, "a partly read blob landed");

    // The bucket is gone: the next request fills from upstream.
    let body = reqwest::get(url(&b)).await.unwrap().bytes().await.unwrap();
    assert!(body[..] == data[..]);
    assert_eq!(fake.count("GET", &digest), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_keeps_serving_and_filling_when_the_bucket_stops() {
    let Some(mut seaweed) = Seaweed::start("stopping") else {
        return;
    };
    let fake = FakeRegistry::start().await;
    let first = add_image(&fake, "team/app", "v1", &[2 * MIB], 1);
    let second = add_image(&fake, "team/app", "v2", &[2 * MIB], 2);
    let root = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let a = replica(&fake, &seaweed, &root.path().join("a"));
    pull_checked(&client, &a.url(), &first).await;
    until_ops(&a, "put_blob", "ok", 2.0).await;

    seaweed.stop();
    // Held content from the disk, new content from upstream: no client sees the bucket.
    pull_checked(&client, &a.url(), &first).await;
    pull_checked(&client, &a.url(), &second).await;
    let mut failed = 0.0;
    let mut skipped = 0.0;
    for op in [
        "get_blob",
        "put_blob",
        "head_marker",
        "put_manifest",
        "put_marker",
    ] {
        failed += bucket_ops(&a, op, "error").await;
        skipped += bucket_ops(&a, op, "skipped").await;
    }
    assert!(failed > 0.0, "the stopped bucket was never noticed");
    // Once it failed, the bucket is left alone for a while instead of timing out again.
    assert!(skipped > 0.0, "failed {failed}, never skipped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_signs_with_the_keys_of_a_shared_profile() {
    let Some(seaweed) = Seaweed::start("profile") else {
        return;
    };
    let fake = FakeRegistry::start().await;
    let digest = fake.add_blob(vec![5u8; 6 * MIB]);
    let root = tempfile::tempdir().unwrap();
    // The keys live only in a profile of the shared credentials file, as `aws configure
    // --profile ci` writes them.
    let credentials = root.path().join("credentials");
    std::fs::write(
        &credentials,
        format!(
            "[default]\naws_access_key_id = wrong\naws_secret_access_key = wrong\n\n\
             [ci]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"
        ),
    )
    .unwrap();
    let config_file = root.path().join("config");
    std::fs::write(&config_file, "").unwrap();
    let config = format!(
        "{}[[upstream]]\nname = \"origin\"\nurl = \"{}\"\n",
        seaweed.config(),
        fake.url()
    );
    let credentials = credentials.display().to_string();
    let config_file = config_file.display().to_string();
    let env = [
        ("AWS_SHARED_CREDENTIALS_FILE", credentials.as_str()),
        ("AWS_CONFIG_FILE", config_file.as_str()),
        ("AWS_PROFILE", "ci"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    let a = Regcache::start_with_config_env(&config, &root.path().join("a"), &env);
    let url = format!("{}/v2/team/app/blobs/{digest}", a.url());
    assert_eq!(
        reqwest::get(url)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .len(),
        6 * MIB
    );
    until_ops(&a, "put_blob", "ok", 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redirects_on_a_large_blob_only_the_bucket_holds_is_a_presigned_307() {
    let Some(seaweed) = Seaweed::start("redirect") else {
        return;
    };
    let fake = FakeRegistry::start().await;
    let large = vec![6u8; 8 * MIB];
    let large_digest = fake.add_blob(large.clone());
    let small_digest = fake.add_blob(vec![7u8; 100 << 10]);
    let root = tempfile::tempdir().unwrap();
    let a = replica(&fake, &seaweed, &root.path().join("a"));
    for digest in [&large_digest, &small_digest] {
        let url = format!("{}/v2/team/app/blobs/{digest}", a.url());
        assert_eq!(reqwest::get(url).await.unwrap().status(), 200);
    }
    until_ops(&a, "put_blob", "ok", 2.0).await;

    // A replica that redirects blobs of 1 MiB and more; its disk holds neither blob.
    let config = format!(
        "{}redirect_min_bytes = \"1 MiB\"\n[[upstream]]\nname = \"origin\"\nurl = \"{}\"\n",
        seaweed.config(),
        fake.url()
    );
    let env = [
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
    ];
    let b = Regcache::start_with_config_env(&config, &root.path().join("b"), &env);
    let no_follow = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let url = format!("{}/v2/team/app/blobs/{large_digest}", b.url());
    let response = no_follow.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 307);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let location = response.headers()["location"].to_str().unwrap().to_string();
    assert!(location.starts_with(&seaweed.endpoint()), "{location}");
    assert!(location.contains("X-Amz-Signature="), "{location}");
    // The client follows it to the bucket and gets the blob.
    let body = reqwest::get(&url).await.unwrap().bytes().await.unwrap();
    assert!(body[..] == large[..]);
    // Small blobs are streamed as usual; nothing went upstream again.
    let url = format!("{}/v2/team/app/blobs/{small_digest}", b.url());
    assert_eq!(no_follow.get(url).send().await.unwrap().status(), 200);
    assert_eq!(fake.count("GET", &large_digest), 1);
    let metrics = b.metrics().await;
    assert!(metrics.contains("result=\"redirected\""), "{metrics}");
}
