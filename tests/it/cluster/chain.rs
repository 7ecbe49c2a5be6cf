//! Chaining, with the real binary: node-local regcaches whose upstream lists a regional
//! regcache as its parent, asked before the registry itself.

use std::time::Duration;

use futures_util::future::join_all;
use sha2::{Digest as _, Sha256};

use crate::support::images::{push_blob, push_oci_image};
use crate::support::regcache::Regcache;
use crate::support::registry::Registry;
use crate::support::throttle::Throttle;

const MIB: usize = 1 << 20;

/// A node-local regcache: the registry at `upstream`, the regional one asked first.
fn node(upstream: &str, parent: &Regcache, dir: &std::path::Path) -> Regcache {
    let config = format!(
        "[[upstream]]\nname = \"origin\"\nurl = \"{upstream}\"\nparents = [\"{}\"]\n",
        parent.url()
    );
    Regcache::start_with_config(&config, dir)
}

/// `regcache_parent_requests_total{upstream="origin",result}` of a node.
async fn parent_requests(node: &Regcache, result: &str) -> f64 {
    let series =
        format!("regcache_parent_requests_total{{result=\"{result}\",upstream=\"origin\"}}");
    let metrics = node.metrics().await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_nodes_pulling_one_cold_image_through_a_regional_cost_one_get_per_blob() {
    let registry = Registry::start();
    let image = push_oci_image(
        &registry.url(),
        "team/app",
        "v1",
        &[6 * MIB, 3 * MIB, MIB],
        7,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let regional = Regcache::start(&registry.url(), &dir.path().join("regional"));
    let nodes: Vec<Regcache> = (0..8)
        .map(|n| {
            node(
                &registry.url(),
                &regional,
                &dir.path().join(format!("n{n}")),
            )
        })
        .collect();
    let client = reqwest::Client::new();
    let pulls = nodes.iter().map(|node| {
        let (client, base, image) = (client.clone(), node.url(), &image);
        async move {
            let url = format!("{base}/v2/team/app/manifests/v1");
            let manifest = client
                .get(url)
                .header("accept", image.media_type.as_str())
                .send()
                .await
                .unwrap();
            assert_eq!(manifest.status(), 200);
            let body = manifest.bytes().await.unwrap();
            assert_eq!(
                format!("sha256:{:x}", Sha256::digest(&body)),
                image.manifest_digest
            );
            let blobs = image.blobs.iter().map(|(digest, size)| {
                let url = format!("{base}/v2/team/app/blobs/{digest}");
                let client = client.clone();
                async move {
                    let body = client.get(url).send().await.unwrap().bytes().await.unwrap();
                    assert_eq!(body.len() as u64, *size, "{digest}");
                    assert_eq!(&format!("sha256:{:x}", Sha256::digest(&body)), digest);
                }
            });
            join_all(blobs).await;
        }
    });
    tokio::time::timeout(Duration::from_secs(120), join_all(pulls))
        .await
        .expect("eight pulls within 2 minutes");
    // Every blob crossed the registry link once, for all eight nodes.
    assert_eq!(
        registry.blob_gets(),
        image.blobs.len(),
        "{:?}",
        registry.access_log()
    );
    for node in &nodes {
        assert_eq!(parent_requests(node, "failed").await, 0.0);
        assert!(parent_requests(node, "ok").await >= image.blobs.len() as f64);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_parent_killed_mid_pull_is_left_for_the_registry_and_the_pull_completes() {
    let registry = Registry::start();
    let bytes = crate::support::data(48 * MIB, 3);
    let digest = push_blob(&registry.url(), "team/app", bytes.clone()).await;
    // The regional's link is slow (about three seconds for the blob): the kill lands
    // mid-pull. The node reaches the registry directly when it falls back.
    let link = Throttle::start(&registry.addr(), 16 << 20).await;
    let dir = tempfile::tempdir().unwrap();
    // Nodes name the registry by its address (`ns=`); the regional reaches it via the link.
    let config = format!(
        "[[upstream]]\nname = \"origin\"\nurl = \"{}\"\naliases = [\"{}\"]\n",
        link.url(),
        registry.addr()
    );
    let mut regional = Regcache::start_with_config(&config, &dir.path().join("regional"));
    let node = node(&registry.url(), &regional, &dir.path().join("node"));
    let url = format!("{}/v2/team/app/blobs/{digest}", node.url());
    let pull = tokio::spawn(async move {
        let response = reqwest::get(url).await?.error_for_status()?;
        response.bytes().await
    });
    // The parent answered and streams: kill it a second into the body.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while parent_requests(&node, "ok").await < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the parent never answered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    regional.stop();
    let body = tokio::time::timeout(Duration::from_secs(60), pull)
        .await
        .expect("the pull finished within a minute")
        .unwrap()
        .expect("the node resumed from the registry: the client saw no cut");
    assert!(body[..] == bytes[..], "the resumed body is the blob");
    // The node went to the registry once, for the rest (a Range resume), and knows the
    // parent failed.
    assert_eq!(registry.gets_of(&digest), 2);
    assert_eq!(parent_requests(&node, "failed").await, 1.0);
    // The parent stays left out for a while: the next miss goes straight to the registry.
    let other = push_blob(&registry.url(), "team/app", vec![9u8; 1000]).await;
    let url = format!("{}/v2/team/app/blobs/{other}", node.url());
    assert_eq!(reqwest::get(url).await.unwrap().status(), 200);
    assert!(parent_requests(&node, "skipped").await >= 1.0);
}
