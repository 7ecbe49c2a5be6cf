//! Regression tests for the holes a hostile tenant or upstream could use: each test makes
//! the attack as it was reproduced and checks it now fails, while honest pulls still work.

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::fake::{sha256, FakeRegistry, Fault};
use crate::support::images;
use crate::support::proxy::Proxy;
use crate::support::regcache::Regcache;
use crate::support::registry::{run_bounded, Registry};
use crate::support::scripted::{self, Scripted};
use serde_json::json;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn get(url: &str) -> reqwest::Response {
    client().get(url).send().await.unwrap()
}

/// The status and body of a GET; a body cut short reads as an error, never as complete.
async fn fetch(url: &str) -> (u16, Result<Vec<u8>, reqwest::Error>) {
    let response = get(url).await;
    let status = response.status().as_u16();
    (status, response.bytes().await.map(|b| b.to_vec()))
}

/// Issue 1: a pusher adds a top-level `manifests` list to a schema2 manifest (the real
/// registry checks only `config` and `layers`), naming a victim's private layer and
/// manifest. Before the fix the proxy made them members of the attacker's repository and
/// served the victim's bytes from its cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "e2e"),
    ignore = "needs Debian's docker-registry: run with --features e2e"
)]
async fn a_smuggled_manifests_list_discloses_no_private_content() {
    let registry = Registry::start();
    let url = registry.url();
    let victim = images::push_docker_image(&url, "victim/private", "v1", &[300 << 10], 11).await;
    let own = images::push_docker_image(&url, "attacker/leak", "base", &[2000], 12).await;
    let (victim_layer, victim_len) = victim.blobs[1].clone();

    // The attacker's own image, plus the smuggled list of the victim's digests.
    let descriptor = |(digest, size): &(String, u64), media: &str| json!({"mediaType": media, "digest": digest, "size": size});
    let evil = json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": descriptor(&own.blobs[0], "application/vnd.docker.container.image.v1+json"),
        "layers": [descriptor(&own.blobs[1], "application/vnd.docker.image.rootfs.diff.tar")],
        "manifests": [
            descriptor(&(victim_layer.clone(), victim_len), DOCKER_MANIFEST),
            descriptor(&(victim.manifest_digest.clone(), 0), DOCKER_MANIFEST),
        ],
    });
    let evil = serde_json::to_vec(&evil).unwrap();
    images::put_manifest(&url, None, "attacker/leak", "evil", DOCKER_MANIFEST, evil).await;
    // Upstream itself keeps the repositories apart.
    let direct = get(&format!("{url}/v2/attacker/leak/blobs/{victim_layer}")).await;
    assert_eq!(direct.status(), 404);

    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start_with(&url, "", Some(dir.path())).await;
    // The victim pulls through the mirror: its layer is now cached.
    let (status, _) = fetch(&proxy.url("/v2/victim/private/manifests/v1")).await;
    assert_eq!(status, 200);
    let (status, body) =
        fetch(&proxy.url(&format!("/v2/victim/private/blobs/{victim_layer}"))).await;
    assert_eq!((status, body.unwrap().len() as u64), (200, victim_len));

    let attack = |proxy: &Proxy| {
        [
            proxy.url("/v2/attacker/leak/manifests/evil"),
            proxy.url(&format!("/v2/attacker/leak/blobs/{victim_layer}")),
            proxy.url(&format!(
                "/v2/attacker/leak/manifests/{}",
                victim.manifest_digest
            )),
        ]
    };
    let [manifest, blob, victim_manifest] = attack(&proxy);
    let response = get(&manifest).await;
    assert_eq!(response.status(), 502, "the ambiguous manifest is refused");
    let body: serde_json::Value = response.json().await.unwrap();
    let message = body["errors"][0]["message"].as_str().unwrap().to_string();
    assert!(message.contains("\"manifests\""), "{message}");
    for url in [&blob, &victim_manifest] {
        let (status, _) = fetch(url).await;
        assert_eq!(status, 404, "{url}");
    }
    // The attacker's own image still pulls.
    let (status, _) = fetch(&proxy.url("/v2/attacker/leak/manifests/base")).await;
    assert_eq!(status, 200);

    // Nothing was recorded that a restart could bring back (a stop waits for the
    // background writes).
    proxy.stop().await;
    let proxy = Proxy::start_with(&url, "", Some(dir.path())).await;
    let [_, blob, victim_manifest] = attack(&proxy);
    for url in [&blob, &victim_manifest] {
        let (status, _) = fetch(url).await;
        assert_eq!(status, 404, "after a restart: {url}");
    }
}

/// Issue 1, the index variant: OCI 1.1 lets a registry accept an index whose children are
/// not in the repository (a sparse index; the fake, like such a registry, checks nothing).
/// Listing a victim's manifest in one's own index must not make it one's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sparse_index_does_not_claim_another_repositorys_manifest() {
    const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    let fake = FakeRegistry::start().await;
    let config = fake.add_blob(b"{\"private\":1}".to_vec());
    let image = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"digest":"{config}","size":13}},"layers":[]}}"#
    );
    let victim = fake.add_manifest("victim/private", "v1", OCI_MANIFEST, image);
    for digest in [&victim, &config] {
        fake.only_in(digest, &["victim/private"]);
    }
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{victim}","size":1}}]}}"#
    );
    fake.add_manifest("attacker/leak", "v1", OCI_INDEX, index);
    let proxy = Proxy::start(&fake.url()).await;
    let (status, _) = fetch(&proxy.url("/v2/victim/private/manifests/v1")).await;
    assert_eq!(status, 200);
    let (status, _) = fetch(&proxy.url("/v2/attacker/leak/manifests/v1")).await;
    assert_eq!(status, 200, "the attacker's own index");
    let child = proxy.url(&format!("/v2/attacker/leak/manifests/{victim}"));
    let (status, body) = fetch(&child).await;
    assert_eq!(status, 404, "{:?}", body.map(String::from_utf8));
    assert_eq!(
        fake.count("HEAD", &format!("/v2/attacker/leak/manifests/{victim}")),
        1
    );
}

/// A hostile upstream `y`: says yes to every HEAD (naming `tag_digest` for manifests),
/// serves `lure` as `manifests/lure`, and has no other content.
async fn hostile(lure: Vec<u8>, tag_digest: String) -> Scripted {
    Scripted::start(move |method, path| {
        if path == "/v2/" {
            return scripted::answer(200, &[], "{}");
        }
        if method == "HEAD" {
            let digest = tag_digest.as_str();
            return scripted::answer(
                200,
                &[
                    ("content-type", OCI_MANIFEST),
                    ("docker-content-digest", digest),
                    ("content-length", "5"),
                ],
                "",
            );
        }
        if path.ends_with("/manifests/lure") {
            return scripted::answer(200, &[("content-type", OCI_MANIFEST)], lure.clone());
        }
        scripted::not_found()
    })
    .await
}

/// Issue 2: content fetched from upstream `x` is served for upstream `y` only once `y`
/// delivered the same bytes itself (unless both are one trust domain).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_cannot_read_what_another_upstream_delivered() {
    let x = FakeRegistry::start().await;
    let secret = vec![5u8; 150 << 10];
    let layer = x.add_blob(secret.clone());
    let config = x.add_blob(b"{\"secret\":true}".to_vec());
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"digest":"{config}","size":15}},"layers":[{{"digest":"{layer}","size":{}}}]}}"#,
        secret.len()
    );
    let secret_manifest = x.add_manifest("team/secret", "v1", OCI_MANIFEST, manifest.clone());
    for digest in [&layer, &config, &secret_manifest] {
        x.only_in(digest, &["team/secret"]);
    }
    // `y` lists x's digests in a manifest of its own and claims them on HEAD.
    let lure = manifest.replace(
        "\"schemaVersion\":2",
        "\"schemaVersion\":2,\"annotations\":{}",
    );
    let y = hostile(lure.into_bytes(), secret_manifest.clone()).await;

    let config_text = |shared: &str| {
        format!(
            "[[upstream]]\nname = \"x\"\nurl = \"{}\"\ndefault = true\n{shared}\n\
             [[upstream]]\nname = \"y\"\nurl = \"{}\"\n{shared}\n",
            x.url(),
            y.url()
        )
    };
    let proxy = Proxy::start_config_in(&config_text(""), None).await;
    for path in [
        "/v2/team/secret/manifests/v1".to_string(),
        format!("/v2/team/secret/blobs/{layer}"),
        format!("/v2/team/secret/blobs/{config}"),
    ] {
        let (status, _) = fetch(&proxy.url(&path)).await;
        assert_eq!(status, 200, "{path}");
    }

    // Through y's own manifest, through a HEAD that says yes, by digest, by tag.
    let (status, _) = fetch(&proxy.url("/v2/y/evil/app/manifests/lure")).await;
    assert_eq!(status, 200, "y's own manifest is y's to serve");
    for path in [
        format!("/v2/y/evil/app/blobs/{layer}"),
        format!("/v2/y/any/repo/blobs/{config}"),
        format!("/v2/y/any/repo/manifests/{secret_manifest}"),
    ] {
        let (status, body) = fetch(&proxy.url(&path)).await;
        assert_eq!(status, 404, "{path}");
        assert!(body.unwrap() != secret, "{path}");
    }
    let tag_head = client()
        .head(proxy.url("/v2/y/any/repo/manifests/latest"))
        .send()
        .await
        .unwrap();
    assert_eq!(tag_head.status(), 200, "y's own answer, passed on");
    let (status, _) = fetch(&proxy.url("/v2/y/any/repo/manifests/latest")).await;
    assert_eq!(
        status, 404,
        "a tag y points at x's manifest does not serve it"
    );
    // y was asked for the bytes and could not deliver them.
    assert_eq!(y.count("GET", &format!("/blobs/{layer}")), 1);
    proxy.stop().await;

    // Declared one trust domain, the upstreams share what either delivered.
    let proxy = Proxy::start_config_in(&config_text("trust_domain = \"corp\""), None).await;
    let (status, _) = fetch(&proxy.url(&format!("/v2/team/secret/blobs/{layer}"))).await;
    assert_eq!(status, 200);
    let (status, body) = fetch(&proxy.url(&format!("/v2/y/any/repo/blobs/{layer}"))).await;
    assert_eq!((status, body.unwrap()), (200, secret));
}

/// Issue 7: an endless chunked body stops at `cache.max_blob_bytes`; a length past it is
/// refused before any byte; a length that differs from the manifest's declared size is
/// refused; the client never gets a short body as a complete one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_stops_at_the_size_it_may_have() {
    let digest = sha256(b"never the same bytes");
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    let endless = Scripted::start(move |method, path| match (method, path) {
        (_, "/v2/") => scripted::answer(200, &[], "{}"),
        ("GET", p) if p.contains("/blobs/") => scripted::endless(counter.clone(), 1 << 30),
        _ => scripted::not_found(),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cache = "max_blob_bytes = \"4MiB\"";
    let proxy = Proxy::to(&endless.url())
        .cache(cache)
        .dir(dir.path())
        .start()
        .await;
    let started = Instant::now();
    let (status, body) = fetch(&proxy.url(&format!("/v2/a/b/blobs/{digest}"))).await;
    assert!(
        status != 200 || body.is_err(),
        "status {status}, a complete body"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = sent.load(Ordering::Relaxed);
    assert!(sent < 64 << 20, "upstream kept streaming: {sent} bytes");
    let tmp = dir.path().join("v1/tmp");
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "temp file left"
    );
    proxy.stop().await;

    // A length past the maximum, and one that contradicts the manifest.
    let fake = FakeRegistry::start().await;
    let big = fake.add_blob(vec![1u8; 5 << 20]);
    let small = fake.add_blob(vec![2u8; 100 << 10]);
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"digest":"{small}","size":1000}},"layers":[]}}"#
    );
    fake.add_manifest("a/b", "v1", OCI_MANIFEST, manifest);
    let proxy = Proxy::to(&fake.url()).cache(cache).start().await;
    let response = get(&proxy.url(&format!("/v2/a/b/blobs/{big}"))).await;
    assert_eq!(response.status(), 502);
    let text = response.text().await.unwrap();
    assert!(text.contains("max_blob_bytes"), "{text}");
    let (status, _) = fetch(&proxy.url("/v2/a/b/manifests/v1")).await;
    assert_eq!(status, 200);
    let response = get(&proxy.url(&format!("/v2/a/b/blobs/{small}"))).await;
    assert_eq!(response.status(), 502);
    let text = response.text().await.unwrap();
    assert!(text.contains("declared 1000"), "{text}");
    // Another repository's manifest declared nothing: the same blob is served there.
    fake.add_manifest("c/d", "v1", OCI_MANIFEST, format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"digest":"{small}","size":102400}},"layers":[]}}"#));
    let (status, _) = fetch(&proxy.url("/v2/c/d/manifests/v1")).await;
    assert_eq!(status, 200);
    let (status, body) = fetch(&proxy.url(&format!("/v2/c/d/blobs/{small}"))).await;
    assert_eq!((status, body.unwrap().len()), (200, 100 << 10));
}

/// Issue 7, the budget: a fill counts before it is published (its announced length at
/// once, or what it wrote so far), so a large fill makes room while it runs, not after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_in_progress_counts_toward_the_disk_budget() {
    let fake = FakeRegistry::start().await;
    let old = fake.add_blob(vec![3u8; 1 << 20]);
    let large = fake.add_blob(vec![4u8; 2 << 20]);
    fake.set_fault(&large, Fault::Held);
    let cache = "disk_bytes = \"2MiB\"\nmemory_bytes = \"0\"";
    let proxy = Proxy::to(&fake.url()).cache(cache).start().await;
    let (status, _) = fetch(&proxy.url(&format!("/v2/a/b/blobs/{old}"))).await;
    assert_eq!(status, 200);
    let evictions = r#"regcache_evictions_total{reason="budget"}"#;
    assert_eq!(proxy.metric(evictions).await, 0.0);

    // Upstream announces 2 MiB, sends half, then holds the rest.
    let url = proxy.url(&format!("/v2/a/b/blobs/{large}"));
    let pull = tokio::spawn(async move { fetch(&url).await });
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.metric(evictions).await == 0.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        proxy.metric(evictions).await,
        1.0,
        "1 MiB stored + 2 MiB filling passed the high mark before the fill ended"
    );
    assert!(!pull.is_finished());
    fake.release();
    let (status, body) = pull.await.unwrap();
    assert_eq!((status, body.unwrap().len()), (200, 2 << 20));
}

/// Issue 9: a second daemon on the same cache directory refuses to start, names the
/// directory and the first one's PID, and removes nothing (the first one's downloads in
/// progress live in `v1/tmp`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_one_cache_dir_is_refused() {
    let fake = FakeRegistry::start().await;
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let first = Regcache::start(&fake.url(), &cache);
    let in_flight = cache.join("v1/tmp/fill-in-progress");
    std::fs::write(&in_flight, b"half a layer").unwrap();

    let log = work.path().join("second.log");
    let mut second = Command::new(env!("CARGO_BIN_EXE_regcache"));
    second
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args(["--upstream", &fake.url(), "--cache-dir"])
        .arg(&cache);
    let status = run_bounded(&mut second, &log, Duration::from_secs(20)).expect("it exits");
    assert!(!status.success());
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains(&cache.display().to_string()), "{said}");
    let pid = first.pid().unwrap().to_string();
    assert!(said.contains(&pid), "names the holder's PID {pid}: {said}");
    assert!(
        in_flight.exists(),
        "the first daemon's temp file was removed"
    );
    assert_eq!(
        crate::support::registry::http_status(&first.addr(), "/v2/"),
        Some(200)
    );
}
