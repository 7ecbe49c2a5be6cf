//! What replicas share besides content, with the real registry and SeaweedFS: a tag is
//! revalidated upstream by its owner replica only, and repository membership recorded
//! by one replica spares the others their upstream HEADs.

use std::time::Duration;

use sha2::{Digest as _, Sha256};

use super::fleet::{total, Fleet};
use crate::support::images::push_oci_image;
use crate::support::regcache::Regcache;
use crate::support::registry::Registry;
use crate::support::seaweed::Seaweed;

const MIB: usize = 1 << 20;
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// Requests with `method` on manifests the registry logged.
fn manifest_requests(registry: &Registry, method: &str) -> usize {
    let log = registry.access_log();
    let manifests = log.iter().filter(|e| e.path.contains("/manifests/"));
    manifests.filter(|e| e.method == method).count()
}

async fn get_tag(client: &reqwest::Client, replica: &Regcache, digest: &str) {
    let url = format!("{}/v2/team/app/manifests/v1", replica.url());
    let response = client
        .get(url)
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.bytes().await.unwrap();
    assert_eq!(format!("sha256:{:x}", Sha256::digest(&body)), digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_tag_owner_revalidates_and_one_replicas_records_spare_the_others_heads() {
    let Some(seaweed) = Seaweed::start("shared-records") else {
        return;
    };
    let registry = Registry::start();
    let image = push_oci_image(&registry.url(), "team/app", "v1", &[2 * MIB, MIB], 5).await;
    let mut fleet = Fleet::new(3, registry.url(), &seaweed);
    fleet.upstream_extra = "tag_ttl_secs = 1".into();
    let replicas = fleet.start_all();
    let client = reqwest::Client::new();

    // Every replica asked for the tag, several times: the owner fetched it once.
    for _ in 0..3 {
        for replica in &replicas {
            get_tag(&client, replica, &image.manifest_digest).await;
        }
    }
    let gets = manifest_requests(&registry, "GET");
    let heads = manifest_requests(&registry, "HEAD");
    assert_eq!((gets, heads), (1, 0), "{:?}", registry.access_log());
    // Once the TTL passed, every replica asks again: one revalidation in all.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for replica in &replicas {
        get_tag(&client, replica, &image.manifest_digest).await;
    }
    let heads = manifest_requests(&registry, "HEAD");
    assert_eq!(heads, 1, "revalidations: {:?}", registry.access_log());
    assert_eq!(manifest_requests(&registry, "GET"), 1);
    let refs: Vec<&Regcache> = replicas.iter().collect();
    let asked = total(&refs, "regcache_peer_forwards_total", "to=\"tag_owner\"").await;
    assert!(asked >= 8.0, "{asked} tag answers from the owner");

    // The blobs through the first two replicas, which saw the manifest.
    for (digest, size) in &image.blobs {
        for replica in &replicas[..2] {
            let url = format!("{}/v2/team/app/blobs/{digest}", replica.url());
            let body = client.get(url).send().await.unwrap().bytes().await.unwrap();
            assert_eq!(body.len() as u64, *size);
        }
    }
    let put = "op=\"put_blob\",result=\"ok\"";
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while total(&refs, "regcache_bucket_operations_total", put).await < image.blobs.len() as f64 {
        assert!(
            std::time::Instant::now() < deadline,
            "the blobs never reached the bucket"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The third replica, its disk wiped, is asked for the blobs alone (a load balancer
    // sent the manifest elsewhere): the bucket's membership records answer for upstream.
    let mut replicas = replicas;
    replicas[2].stop();
    std::fs::remove_dir_all(fleet.disk(2)).unwrap();
    replicas[2] = fleet.start(2, 3);
    for (digest, size) in &image.blobs {
        let url = format!("{}/v2/team/app/blobs/{digest}", replicas[2].url());
        let body = client.get(url).send().await.unwrap().bytes().await.unwrap();
        assert_eq!(body.len() as u64, *size);
    }
    let log = registry.access_log();
    let blob_heads = log
        .iter()
        .filter(|e| e.method == "HEAD" && e.path.contains("/blobs/"));
    assert_eq!(blob_heads.count(), 0, "membership asked upstream: {log:?}");
    assert_eq!(registry.blob_gets(), image.blobs.len(), "one GET per blob");
    let hits = "op=\"head_member\",result=\"hit\"";
    let third = [&replicas[2]];
    assert!(
        total(&third, "regcache_bucket_operations_total", hits).await >= image.blobs.len() as f64
    );
}
