//! `max_bytes_per_second` against the real registry: a 256 MiB fill takes the capped
//! rate (within 10%), and eight followers of a fill are served in the same time as one
//! client, because only the read from upstream is paced.

use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::support::images;
use crate::support::proxy::Proxy;
use crate::support::registry::Registry;

const SIZE: usize = 256 << 20;
const CAP: f64 = (32 << 20) as f64;

/// GETs a blob, hashing it as it streams; its digest and the seconds to the last byte.
async fn pull(client: reqwest::Client, url: String) -> (String, f64) {
    let began = Instant::now();
    let mut response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let (mut hasher, mut len) = (Sha256::new(), 0);
    while let Some(chunk) = response.chunk().await.unwrap() {
        len += chunk.len();
        hasher.update(&chunk);
    }
    assert_eq!(len, SIZE);
    let digest = format!("sha256:{:x}", hasher.finalize());
    (digest, began.elapsed().as_secs_f64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capped_fill_takes_the_capped_rate_and_followers_add_no_time() {
    let registry = Registry::start();
    let blob = |seed: u8| {
        (0..SIZE)
            .map(|i| (i as u8).wrapping_mul(seed) ^ (i >> 12) as u8)
            .collect::<Vec<u8>>()
    };
    let one = images::push_blob(&registry.url(), "team/app", blob(3)).await;
    let nine = images::push_blob(&registry.url(), "team/app", blob(5)).await;
    let proxy = Proxy::start_with(
        &registry.url(),
        "name = \"up\"\nmax_bytes_per_second = \"32 MiB\"",
        None,
    )
    .await;
    let client = reqwest::Client::new();
    let url = |digest: &str| proxy.url(&format!("/v2/team/app/blobs/{digest}"));

    let (digest, alone) = pull(client.clone(), url(&one)).await;
    assert_eq!(digest, one);
    let rate = SIZE as f64 / alone / CAP;
    assert!(
        (0.9..=1.1).contains(&rate),
        "{:.1} MiB/s against a cap of 32 MiB/s",
        SIZE as f64 / alone / (1 << 20) as f64
    );

    // A leader and eight followers of another cold blob, at once.
    let pulls: Vec<_> = (0..9)
        .map(|_| tokio::spawn(pull(client.clone(), url(&nine))))
        .collect();
    let mut slowest: f64 = 0.0;
    for p in pulls {
        let (digest, took) = p.await.unwrap();
        assert_eq!(digest, nine);
        slowest = slowest.max(took);
    }
    assert!(
        slowest <= alone * 1.1,
        "nine clients took {slowest:.2} s, one alone {alone:.2} s"
    );
    eprintln!(
        "capped fill: {:.1} MiB/s alone ({alone:.2} s); leader and 8 followers {slowest:.2} s",
        SIZE as f64 / alone / (1 << 20) as f64
    );
    let fetched = proxy
        .metric("regcache_upstream_bytes_total{upstream=\"up\"}")
        .await;
    assert_eq!(fetched, 2.0 * SIZE as f64, "one upstream fetch per blob");
    assert!(
        proxy
            .metric("regcache_upstream_paced_seconds_total{priority=\"client\",upstream=\"up\"}")
            .await
            > 5.0
    );
}
