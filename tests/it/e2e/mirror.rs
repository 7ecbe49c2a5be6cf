//! End to end, the way podman, CRI-O and skopeo use a mirror: a `registries.conf` whose
//! `[[registry.mirror]]` is regcache with a path prefix naming the upstream
//! (`127.0.0.1:PORT/reg-a`), in front of two Debian `docker-registry` upstreams served by
//! one regcache, declared one trust domain so they share what either delivered.
//!
//! skopeo falls back to a registry's own `location` when the mirror fails, so a pull that
//! succeeds is not proof enough: the test checks regcache's metrics per upstream, and pulls
//! once more with both registries stopped, which only regcache can answer.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::images::{self, sha256_digest, PushedImage};
use crate::support::regcache::{metric_sum, Regcache};
use crate::support::registry::{run_bounded, Registry};

const SKOPEO_TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread")]
async fn skopeo_pulls_two_upstreams_through_a_registries_conf_mirror() {
    let mut reg_a = Registry::start();
    let mut reg_b = Registry::start();
    let sizes = [1024 * 1024, 4096];
    // The same image on both registries (shared blobs), and one only `reg-b` has.
    let app = images::push_docker_image(&reg_a.url(), "e2e/app", "v1", &sizes, 7).await;
    let app_on_b = images::push_docker_image(&reg_b.url(), "mirror/app", "v1", &sizes, 7).await;
    assert_eq!(app.manifest_digest, app_on_b.manifest_digest);
    let tool = images::push_docker_image(&reg_b.url(), "team/tool", "v1", &[8192], 8).await;

    let work = tempfile::tempdir().expect("work tempdir");
    let config = format!(
        r#"
[[upstream]]
name = "reg-a"
url = "{}"
aliases = ["registry-a.test"]
default = true
trust_domain = "e2e"

[[upstream]]
name = "reg-b"
url = "{}"
aliases = ["registry-b.test"]
trust_domain = "e2e"
"#,
        reg_a.url(),
        reg_b.url()
    );
    let proxy = Regcache::start_with_config(&config, &work.path().join("cache"));
    let conf = work.path().join("registries.conf");
    std::fs::write(&conf, registries_conf(&proxy, &reg_a, &reg_b)).expect("registries.conf");

    let pulled = skopeo_pull(
        &proxy,
        &conf,
        "registry-a.test/e2e/app:v1",
        work.path(),
        "a",
    );
    check_pulled(&pulled, &app);
    let a_blob_gets = reg_a.blob_gets();
    assert_eq!(a_blob_gets, app.blobs.len(), "every blob once, from reg-a");

    let pulled = skopeo_pull(
        &proxy,
        &conf,
        "registry-b.test/mirror/app:v1",
        work.path(),
        "b",
    );
    check_pulled(&pulled, &app_on_b);
    assert_eq!(
        reg_b.blob_gets(),
        0,
        "blobs regcache holds by digest are not fetched again from an upstream of the same trust domain"
    );

    let pulled = skopeo_pull(
        &proxy,
        &conf,
        "registry-b.test/team/tool:v1",
        work.path(),
        "c",
    );
    check_pulled(&pulled, &tool);
    assert_eq!(reg_b.blob_gets(), tool.blobs.len());

    let metrics = proxy.metrics().await;
    for upstream in ["reg-a", "reg-b"] {
        let sample = format!("regcache_upstream_requests_total{{kind=\"manifest\",status=\"2xx\",upstream=\"{upstream}\"}}");
        assert!(metrics.contains(&sample), "no {sample} in:\n{metrics}");
    }
    let from_upstream = metric_sum(&metrics, "regcache_upstream_bytes_total").unwrap_or(0.0);
    let pushed: u64 = app.blobs.iter().chain(&tool.blobs).map(|(_, n)| n).sum();
    assert!(from_upstream >= pushed as f64, "{metrics}");

    // With both registries gone only regcache can answer (the tags are fresh).
    reg_a.stop();
    reg_b.stop();
    let pulled = skopeo_pull(
        &proxy,
        &conf,
        "registry-a.test/e2e/app:v1",
        work.path(),
        "d",
    );
    check_pulled(&pulled, &app);
    let pulled = skopeo_pull(
        &proxy,
        &conf,
        "registry-b.test/team/tool:v1",
        work.path(),
        "e",
    );
    check_pulled(&pulled, &tool);
}

/// A registries.conf in the shape of `config/clients/registries.conf`: each registry's
/// own location, with regcache as its mirror under a path prefix naming the upstream.
fn registries_conf(proxy: &Regcache, reg_a: &Registry, reg_b: &Registry) -> String {
    let block = |prefix: &str, location: String, upstream: &str| {
        format!(
            r#"
[[registry]]
prefix = "{prefix}"
location = "{location}"
insecure = true

[[registry.mirror]]
location = "{mirror}/{upstream}"
insecure = true
"#,
            mirror = proxy.addr()
        )
    };
    [
        block("registry-a.test", reg_a.addr(), "reg-a"),
        block("registry-b.test", reg_b.addr(), "reg-b"),
    ]
    .concat()
}

/// Runs `skopeo copy docker://<reference> dir:<work>/<name>` with `conf` as the
/// registries.conf; panics with skopeo's and regcache's output if it fails.
fn skopeo_pull(proxy: &Regcache, conf: &Path, reference: &str, work: &Path, name: &str) -> PathBuf {
    let out = work.join(name);
    let mut cmd = Command::new("skopeo");
    cmd.arg("--registries-conf")
        .arg(conf)
        .args(["--insecure-policy", "--debug", "copy", "--src-no-creds"])
        .arg(format!("docker://{reference}"))
        .arg(format!("dir:{}", out.display()));
    let log = work.join(format!("skopeo-{name}.log"));
    let status = run_bounded(&mut cmd, &log, SKOPEO_TIMEOUT);
    let skopeo = std::fs::read_to_string(&log).unwrap_or_default();
    if status.is_none_or(|s| !s.success()) {
        panic!(
            "skopeo pull of {reference} failed ({status:?}):\n{skopeo}\n--- regcache log:\n{}",
            proxy.log()
        );
    }
    // The debug log names every URL skopeo fetched: all of them on regcache's port.
    let mirror = format!("http://{}/v2/", proxy.addr());
    assert!(
        skopeo.contains(&mirror),
        "skopeo never asked {mirror}:\n{skopeo}"
    );
    out
}

/// The pulled `dir:` holds the pushed manifest and every blob, byte for byte.
fn check_pulled(dir: &Path, image: &PushedImage) {
    let manifest = std::fs::read(dir.join("manifest.json")).expect("manifest.json");
    assert_eq!(sha256_digest(&manifest), image.manifest_digest);
    for (digest, size) in &image.blobs {
        let hex = digest.strip_prefix("sha256:").expect("sha256");
        let bytes = std::fs::read(dir.join(hex)).expect("pulled blob");
        assert_eq!(bytes.len() as u64, *size);
        assert_eq!(&sha256_digest(&bytes), digest);
    }
    std::fs::remove_dir_all(dir).expect("clean up the pulled copy");
}
