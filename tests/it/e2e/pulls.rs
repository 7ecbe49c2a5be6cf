//! Docker Hub's pull limit, played by `HubLimiter` in front of the real registry: pulls are
//! spent once per tag however many nodes ask, a budget goes to clients before prefetch,
//! and what cannot be pulled gets a clear 429 that says when to come back.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::hub_limiter::HubLimiter;
use crate::support::images::{self, PushedImage, OCI_MANIFEST};
use crate::support::proxy::Proxy;
use crate::support::registry::Registry;

async fn push_tags(registry: &Registry, prefix: &str, count: usize, seed: u64) -> Vec<PushedImage> {
    let mut pushed = Vec::new();
    for i in 0..count {
        let tag = format!("{prefix}{i}");
        let seed = seed + i as u64;
        pushed.push(
            images::push_oci_image(&registry.url(), "team/app", &tag, &[4 << 10], seed).await,
        );
    }
    pushed
}

/// GETs a manifest by tag as a node's runtime would: status, headers and body.
async fn pull_manifest(client: &reqwest::Client, proxy: &Proxy, tag: &str) -> reqwest::Response {
    client
        .get(proxy.url(&format!("/v2/team/app/manifests/{tag}")))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_nodes_pulling_five_tags_spend_five_pulls() {
    let registry = Registry::start();
    let pushed = push_tags(&registry, "t", 5, 100).await;
    let hub = HubLimiter::start(&registry.url(), 100).await;
    // Fifty nodes are fifty addresses; here they all come from 127.0.0.1.
    let proxy = Proxy::to(&hub.url())
        .upstream_toml("name = \"hub\"")
        .server("max_connections_per_ip = 1024")
        .start()
        .await;
    let client = reqwest::Client::new();
    let mut nodes = Vec::new();
    for _ in 0..50 {
        let (client, pushed, url) = (client.clone(), pushed.clone(), proxy.url(""));
        nodes.push(tokio::spawn(async move {
            for image in &pushed {
                let manifest = client
                    .get(format!("{url}/v2/team/app/manifests/{}", image.tag))
                    .header("accept", OCI_MANIFEST)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(manifest.status().as_u16(), 200);
                let digest = manifest.headers()["docker-content-digest"]
                    .to_str()
                    .unwrap()
                    .to_string();
                assert_eq!(digest, image.manifest_digest);
                for (blob, size) in &image.blobs {
                    let body = client
                        .get(format!("{url}/v2/team/app/blobs/{blob}"))
                        .send()
                        .await
                        .unwrap()
                        .bytes()
                        .await
                        .unwrap();
                    assert_eq!(body.len() as u64, *size);
                }
            }
        }));
    }
    for node in nodes {
        node.await.unwrap();
    }
    assert_eq!(hub.pulls(), 5, "pulls spent: {:?}", hub.pulled());
    assert_eq!(
        proxy
            .metric("regcache_upstream_pulls_total{upstream=\"hub\"}")
            .await,
        5.0
    );
    assert_eq!(
        proxy
            .metric("regcache_pulls_avoided_total{upstream=\"hub\"}")
            .await,
        245.0
    );
    // The admin view counts the same.
    let upstreams: Value = client
        .get(format!("http://{}/api/v1/upstreams", proxy.admin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let hub_view = &upstreams.as_array().unwrap()[0];
    assert_eq!(hub_view["name"], "hub");
    assert_eq!(
        (
            &hub_view["pulls_spent"],
            &hub_view["pulls_avoided"],
            &hub_view["pull_budget_left"]
        ),
        (&json!(5), &json!(245), &json!(95)),
        "{hub_view}"
    );
    // The limiter's report became the budget's view: 95 of 100 left.
    assert_eq!(
        proxy
            .metric("regcache_pull_budget_remaining{upstream=\"hub\"}")
            .await,
        95.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_of_ten_goes_to_waiting_clients_before_a_prefetch_and_the_rest_get_a_clear_429() {
    let registry = Registry::start();
    let clients_tags = push_tags(&registry, "c", 30, 200).await;
    let prefetch_tags = push_tags(&registry, "p", 20, 300).await;
    let hub = HubLimiter::start(&registry.url(), 1000).await;
    let proxy = Proxy::start_with(&hub.url(), "name = \"hub\"\npulls_per_hour = 10", None).await;
    let client = reqwest::Client::new();

    // Five pods are waiting for their images.
    for image in &clients_tags[..5] {
        assert_eq!(
            pull_manifest(&client, &proxy, &image.tag)
                .await
                .status()
                .as_u16(),
            200
        );
    }
    // A prefetch of twenty tags starts meanwhile: clients needed pulls a moment ago, so it
    // holds instead of spending the five pulls left.
    let admin = format!("http://{}/api/v1", proxy.admin);
    let images: Vec<String> = prefetch_tags
        .iter()
        .map(|i| format!("team/app:{}", i.tag))
        .collect();
    let job: Value = client
        .post(format!("{admin}/prefetch"))
        .json(&json!({ "images": images }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = job["id"].as_u64().expect("a job id");

    // Twenty-five more tags asked at once: five are pulled, twenty get the clear 429.
    let mut asked = Vec::new();
    for image in &clients_tags[5..] {
        let (client, url, tag) = (client.clone(), proxy.url(""), image.tag.clone());
        asked.push(tokio::spawn(async move {
            let response = client
                .get(format!("{url}/v2/team/app/manifests/{tag}"))
                .header("accept", OCI_MANIFEST)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            (status, retry_after, response.text().await.unwrap())
        }));
    }
    let (mut served, mut refused) = (0, 0);
    for answer in asked {
        let (status, retry_after, body) = answer.await.unwrap();
        match status {
            200 => served += 1,
            429 => {
                refused += 1;
                assert!(body.contains("TOOMANYREQUESTS"), "{body}");
                assert!(
                    body.contains("pull budget spent (10 manifest pulls per 3600 s)"),
                    "{body}"
                );
                let wait: u64 = retry_after.expect("Retry-After").parse().unwrap();
                assert!((3000..=3600).contains(&wait), "refills in {wait} s");
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!((served, refused), (5, 20));

    // The prefetch ends held, having spent nothing; every pull went to a client's tag.
    let deadline = Instant::now() + Duration::from_secs(60);
    let job = loop {
        let job: Value = client
            .get(format!("{admin}/prefetch/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if job["state"] != "running" {
            break job;
        }
        assert!(
            Instant::now() < deadline,
            "the prefetch job did not end: {job}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(job["state"], "failed", "{job}");
    assert!(
        job["error"].as_str().unwrap().contains("kept for clients"),
        "{job}"
    );
    let pulled = hub.pulled();
    assert_eq!(pulled.len(), 10, "{pulled:?}");
    let theirs: Vec<&str> = clients_tags
        .iter()
        .map(|i| i.manifest_digest.as_str())
        .collect();
    assert!(
        pulled.iter().all(|p| theirs.iter().any(|d| p.ends_with(d))),
        "a pull went to the prefetch: {pulled:?}"
    );
    assert_eq!(hub.refused(), 0, "nothing was sent past the budget");
    let refusals = |priority: &str| {
        format!("regcache_pull_budget_refusals_total{{priority=\"{priority}\",upstream=\"hub\"}}")
    };
    assert_eq!(proxy.metric(&refusals("client")).await, 20.0);
    assert!(proxy.metric(&refusals("background")).await >= 1.0);
    // What is cached is still served with the budget spent.
    assert_eq!(
        pull_manifest(&client, &proxy, &clients_tags[0].tag)
            .await
            .status()
            .as_u16(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_spent_by_another_node_behind_the_same_address_end_in_a_clear_429_not_a_storm() {
    let registry = Registry::start();
    let pushed = push_tags(&registry, "t", 4, 400).await;
    // Hub allows 3 pulls to this address; two mirrors share it.
    let hub = HubLimiter::start(&registry.url(), 3).await;
    let first = Proxy::start_with(&hub.url(), "name = \"hub\"", None).await;
    let second = Proxy::start_with(&hub.url(), "name = \"hub\"", None).await;
    let client = reqwest::Client::new();
    assert_eq!(
        pull_manifest(&client, &second, &pushed[0].tag)
            .await
            .status()
            .as_u16(),
        200
    );
    // The first mirror spends the rest; the second's report (2 left) is now wrong.
    for image in &pushed[1..3] {
        assert_eq!(
            pull_manifest(&client, &first, &image.tag)
                .await
                .status()
                .as_u16(),
            200
        );
    }
    // By digest, the second mirror sends a GET on its stale report and Hub refuses it.
    let by_digest = &pushed[3].manifest_digest;
    let response = pull_manifest(&client, &second, by_digest).await;
    assert_eq!(response.status().as_u16(), 429);
    assert!(response.headers().contains_key("retry-after"));
    let body = response.text().await.unwrap();
    assert!(
        body.contains("TOOMANYREQUESTS") && body.contains("refused with 429"),
        "{body}"
    );
    assert_eq!(hub.refused(), 1);
    // Asked again (by digest or by tag): answered here, not sent to be refused again.
    for reference in [by_digest, &pushed[3].tag] {
        let response = pull_manifest(&client, &second, reference).await;
        assert_eq!(response.status().as_u16(), 429);
        assert!(response.text().await.unwrap().contains("refused with 429"));
    }
    assert_eq!(hub.refused(), 1);
    // The first mirror knows from its last answer that none are left (a tag's HEAD, which
    // Hub does not count, also reports it).
    let response = pull_manifest(&client, &first, &pushed[3].tag).await;
    assert_eq!(response.status().as_u16(), 429);
    assert!(response.text().await.unwrap().contains("pull budget spent"));
    assert_eq!(hub.refused(), 1);
}
