//! The admin API and the operator commands against a daemon that served real pulls
//! (skopeo through the `regcache` binary from Debian's `docker-registry`): listings,
//! purge (a pull after it costs exactly what it freed), pins (they survive a restart with
//! a budget that evicts everything else), prefetch jobs, gc and verify, and the token.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::images::{self, PushedImage};
use crate::support::regcache::{metric_sum, Regcache};
use crate::support::registry::Registry;
use crate::support::skopeo;

/// The daemon's config: the registry as its one upstream, a token file, `extra` appended.
fn config(registry: &Registry, token_file: &Path, extra: &str) -> String {
    format!(
        "[admin]\ntoken_file = \"{}\"\n{extra}\n[[upstream]]\nurl = \"{}\"\n",
        token_file.display(),
        registry.url()
    )
}

struct Admin {
    base: String,
    token: String,
    client: reqwest::Client,
}

impl Admin {
    fn new(proxy: &Regcache, token_file: &Path) -> Admin {
        let token = std::fs::read_to_string(token_file).expect("the daemon wrote its token");
        Admin {
            base: format!("http://{}/api/v1", proxy.admin_addr()),
            token: token.trim().to_string(),
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self
            .client
            .request(method, format!("{}/{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("admin API answers");
        let status = response.status().as_u16();
        (status, response.json().await.expect("JSON"))
    }

    async fn get(&self, path: &str) -> Value {
        let (status, body) = self.call(reqwest::Method::GET, path, None).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let (status, answer) = self.call(reqwest::Method::POST, path, Some(body)).await;
        assert!(
            (200..300).contains(&status),
            "POST {path}: {status} {answer}"
        );
        answer
    }
}

fn pull(proxy: &Regcache, image: &PushedImage, work: &Path, name: &str) {
    let reference = format!("{}:{}", image.repo, image.tag);
    match skopeo::pull(&proxy.addr(), &reference, work, name) {
        Ok(dir) => skopeo::check_pulled(&dir, image),
        Err(e) => panic!("pull {reference}: {e}\n--- regcache:\n{}", proxy.log()),
    }
}

async fn upstream_bytes(proxy: &Regcache) -> u64 {
    metric_sum(&proxy.metrics().await, "regcache_upstream_bytes_total").unwrap_or(0.0) as u64
}

/// `regcache <args> --config <cache>.toml --cache-dir <cache>`: exit status and output.
fn cli(cache: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_regcache"))
        .args(args)
        .arg("--config")
        .arg(cache.with_extension("toml"))
        .arg("--cache-dir")
        .arg(cache)
        .output()
        .expect("run regcache");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread")]
async fn purge_pin_prefetch_and_listings_through_the_api_and_the_cli() {
    let mut registry = Registry::start();
    let url = registry.url();
    let solo = images::push_oci_image(&url, "team/solo", "v1", &[3 << 20, 200 << 10], 21).await;
    let app = images::push_oci_image(&url, "team/app", "v1", &[1 << 20], 22).await;
    // The same content under another name: a purge of team/app keeps it for team/copy.
    let copy = images::push_oci_image(&url, "team/copy", "v1", &[1 << 20], 22).await;
    let work = tempfile::tempdir().unwrap();
    let (cache, token_file) = (work.path().join("cache"), work.path().join("admin-token"));
    let mut proxy = Regcache::start_with_config(&config(&registry, &token_file, ""), &cache);
    for (image, name) in [(&solo, "solo"), (&app, "app"), (&copy, "copy")] {
        pull(&proxy, image, work.path(), name);
    }
    proxy.settled().await;
    let admin = Admin::new(&proxy, &token_file);
    let upstream = registry.addr();

    // Without the token: refused, even on loopback, while /metrics stays open.
    let anonymous = admin
        .client
        .get(format!("{}/repositories", admin.base))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    assert!(!proxy.metrics().await.is_empty());

    let repos = admin.get("repositories?sort=bytes").await;
    assert_eq!(repos["total"], 3, "{repos}");
    let first = &repos["items"][0];
    assert_eq!(first["repository"], "team/solo");
    assert_eq!(first["upstream"], upstream.as_str());
    let solo_bytes: u64 = solo.blobs.iter().map(|b| b.1).sum();
    assert!(first["bytes"].as_u64().unwrap() > solo_bytes, "{first}");
    assert!(first["last_pull"].as_u64().is_some());
    let paged = admin.get("repositories?limit=1&offset=2").await;
    assert_eq!(paged["items"].as_array().unwrap().len(), 1);
    let tags = admin
        .get(&format!("tags?upstream={upstream}&repository=team/solo"))
        .await;
    assert_eq!(tags["items"][0]["tag"], "v1");
    assert_eq!(tags["items"][0]["digest"], solo.manifest_digest.as_str());
    let manifests = admin
        .get(&format!(
            "manifests?upstream={upstream}&repository=team/solo"
        ))
        .await;
    assert_eq!(manifests["items"][0]["tags"], json!(["v1"]));
    let upstreams = admin.get("upstreams").await;
    assert_eq!(upstreams[0]["repositories"], 3);

    // Purge, then pull again: upstream sends exactly what the purge freed.
    let scope = json!({"upstream": upstream, "repository": "team/solo"});
    let report = admin.post("purge", scope.clone()).await;
    assert_eq!(
        report["objects_removed"], 4,
        "manifest, config, two layers: {report}"
    );
    assert_eq!(report["tags_removed"], 1);
    let freed = report["bytes_freed"].as_u64().unwrap();
    assert!(freed > solo_bytes);
    let (status, _) = admin
        .call(reqwest::Method::POST, "purge", Some(scope))
        .await;
    assert_eq!(status, 404, "nothing left to purge");
    let before = upstream_bytes(&proxy).await;
    pull(&proxy, &solo, work.path(), "solo-again");
    assert_eq!(upstream_bytes(&proxy).await - before, freed);
    proxy.settled().await;

    // Shared content stays, and the report says who holds it.
    let report = admin
        .post(
            "purge",
            json!({"upstream": upstream, "repository": "team/app"}),
        )
        .await;
    assert_eq!(report["objects_removed"], 0, "{report}");
    assert_eq!(report["objects_kept"], 3);
    let reason = report["kept"][0]["reason"].as_str().unwrap();
    assert!(reason.ends_with("/team/copy"), "{reason}");

    // The CLI goes through the daemon that owns the cache: the same purge.
    let (ok, out) = cli(&cache, &["purge", &format!("{upstream}/team/copy:v1")]);
    assert!(ok, "{out}");
    assert!(out.contains("ran this through its admin API"), "{out}");
    assert!(out.contains("removed 1 tag(s) and 3 object(s)"), "{out}");
    let (ok, out) = cli(&cache, &["pin", &format!("{upstream}/team/solo:v1")]);
    assert!(ok && out.contains("pinned"), "{out}");
    let (ok, out) = cli(&cache, &["ls"]);
    assert!(
        ok && out.contains("team/solo") && out.contains("pinned"),
        "{out}"
    );

    // A prefetch job through the API, followed to its end.
    let job = admin
        .post("prefetch", json!({"images": ["team/copy:v1"]}))
        .await;
    let id = job["id"].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let view = admin.get(&format!("prefetch/{id}")).await;
        if view["state"] != "running" {
            break view;
        }
        assert!(Instant::now() < deadline, "prefetch never ended: {view}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["progress"]["blobs"], done["progress"]["of_blobs"]);
    let copy_bytes: u64 = copy.blobs.iter().map(|b| b.1).sum();
    assert_eq!(done["progress"]["bytes"], copy_bytes);

    // The CLI's prefetch runs in the daemon too, and follows the job.
    let (ok, out) = cli(&cache, &["prefetch", "team/app:v1"]);
    assert!(ok && out.contains("as job 2"), "{out}");
    assert!(out.contains("prefetched 1 image(s) in the daemon"), "{out}");

    let gc = admin.post("gc", json!({})).await;
    assert!(gc["objects_before"].as_u64().unwrap() > 0, "{gc}");
    let verify = admin.post("verify", json!({})).await;
    assert_eq!(verify["removed"], json!([]), "{verify}");

    // Restarted with a budget far under the cache: only the pinned image stays, and it is
    // served with the registry gone.
    proxy.terminate();
    assert!(proxy.wait_exit(Duration::from_secs(20)).is_some());
    let small = config(&registry, &token_file, "[cache]\ndisk_bytes = \"1MiB\"\n");
    let proxy = Regcache::start_with_config(&small, &cache);
    let admin = Admin::new(&proxy, &token_file);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let repos = admin.get("repositories").await;
        let bytes = |name: &str| {
            repos["items"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["repository"] == name)
                .map_or(0, |r| r["bytes"].as_u64().unwrap())
        };
        if bytes("team/copy") == 0 {
            assert!(
                bytes("team/solo") > solo_bytes,
                "the pinned image was evicted: {repos}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "nothing was evicted: {repos}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pins = admin.get("pins").await;
    assert_eq!(
        pins,
        json!([{"upstream": upstream, "repository": "team/solo", "tag": "v1"}])
    );
    registry.stop();
    let digest_ref = format!("{}@{}", solo.repo, solo.manifest_digest);
    let offline = skopeo::pull(&proxy.addr(), &digest_ref, work.path(), "offline");
    assert!(offline.is_ok(), "{offline:?}\n{}", proxy.log());
}

#[test]
fn an_admin_listener_other_hosts_reach_needs_a_token() {
    let work = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_regcache"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "0.0.0.0:0",
        ])
        .args(["--upstream", "http://127.0.0.1:9"])
        .arg("--cache-dir")
        .arg(work.path())
        .output()
        .expect("run regcache");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(text.contains("admin.token_file: required"), "{text}");
}
