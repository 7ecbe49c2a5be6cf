//! End to end with a real client and a real upstream: skopeo pulls through the
//! `regcache` binary from Debian's `docker-registry`.
//!
//! Each test owns its registry, proxy and tempdirs, so the tests run in parallel. Each
//! checks that what arrived is exactly what was pushed, that a second pull fetches no
//! blob from the upstream, and that cached content is still served by digest with the
//! upstream gone, before and after a restart of the proxy on the same cache.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::images::{self, sha256_digest, PushedImage};
use crate::support::regcache::Regcache;
use crate::support::registry::{run_bounded, Registry};

/// Upper bound for one skopeo run; the 100 MB pull takes a few seconds.
const SKOPEO_TIMEOUT: Duration = Duration::from_secs(180);

/// Where skopeo writes what it pulled.
#[derive(Clone, Copy, PartialEq)]
enum Dest {
    /// `oci:<dir>:pulled`, keeping digests and uncompressed layers.
    Oci,
    /// `dir:<dir>`, one file per blob plus `manifest.json`.
    Dir,
}

#[tokio::test(flavor = "multi_thread")]
async fn oci_image_with_a_100_mb_layer() {
    let registry = Registry::start();
    let sizes = [100 * 1024 * 1024, 1024 * 1024, 10 * 1024, 0];
    let image = images::push_oci_image(&registry.url(), "e2e/oci", "v1", &sizes, 1).await;
    pull_cache_and_serve_offline(registry, image, Dest::Oci, false);
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_schema2_image() {
    let registry = Registry::start();
    let sizes = [2 * 1024 * 1024, 4096];
    let image = images::push_docker_image(&registry.url(), "e2e/docker", "v1", &sizes, 2).await;
    pull_cache_and_serve_offline(registry, image, Dest::Dir, false);
}

#[tokio::test(flavor = "multi_thread")]
async fn multi_arch_index_with_all() {
    let registry = Registry::start();
    let image = images::push_index(&registry.url(), "e2e/multi", "v1", 3).await;
    pull_cache_and_serve_offline(registry, image, Dest::Oci, true);
}

/// The whole scenario for one pushed image; `all` pulls every image of an index.
fn pull_cache_and_serve_offline(mut registry: Registry, image: PushedImage, dest: Dest, all: bool) {
    let work = tempfile::tempdir().expect("work tempdir");
    let cache = work.path().join("cache");
    let mut proxy = Regcache::start(&registry.url(), &cache);
    let by_tag = format!("{}:{}", image.repo, image.tag);
    let by_digest = format!("{}@{}", image.repo, image.manifest_digest);

    let first = skopeo_pull(&proxy, &by_tag, dest, all, work.path(), "first");
    check_pulled(&first, &image, dest);
    let blob_gets = registry.blob_gets();
    assert!(blob_gets > 0, "the first pull fetched no blob upstream");

    let second = skopeo_pull(&proxy, &by_tag, dest, all, work.path(), "second");
    check_pulled(&second, &image, dest);
    let after = registry.blob_gets();
    let upstream_gets: Vec<String> = registry
        .access_log()
        .into_iter()
        .filter(|e| e.method == "GET" && e.path.contains("/blobs/"))
        .map(|e| e.path)
        .collect();
    let why = format!(
        "all blob GETs upstream: {upstream_gets:#?}\nregcache:\n{}",
        proxy.log()
    );
    assert_eq!(
        after, blob_gets,
        "the second pull fetched blobs upstream; {why}"
    );

    registry.stop();
    let offline = skopeo_pull(&proxy, &by_digest, dest, all, work.path(), "offline");
    check_pulled(&offline, &image, dest);

    proxy.stop();
    let proxy = Regcache::start(&registry.url(), &cache);
    let restarted = skopeo_pull(&proxy, &by_digest, dest, all, work.path(), "restarted");
    check_pulled(&restarted, &image, dest);
}

/// Runs `skopeo copy` from the proxy into `<work>/<name>` and returns that directory;
/// panics with skopeo's and the proxy's output if it fails or runs too long.
fn skopeo_pull(
    proxy: &Regcache,
    reference: &str,
    dest: Dest,
    all: bool,
    work: &Path,
    name: &str,
) -> PathBuf {
    let out = work.join(name);
    let target = match dest {
        Dest::Oci => format!("oci:{}:pulled", out.display()),
        Dest::Dir => format!("dir:{}", out.display()),
    };
    let mut cmd = crate::support::skopeo::copy_command();
    cmd.arg("--preserve-digests");
    if dest == Dest::Oci {
        cmd.arg("--dest-oci-accept-uncompressed-layers");
    }
    if all {
        cmd.arg("--all");
    }
    cmd.arg(format!("docker://{}/{reference}", proxy.addr()))
        .arg(&target);
    let log = work.join(format!("skopeo-{name}.log"));
    let status = run_bounded(&mut cmd, &log, SKOPEO_TIMEOUT);
    if status.is_none_or(|s| !s.success()) {
        let skopeo = std::fs::read_to_string(&log).unwrap_or_default();
        panic!(
            "skopeo {name} pull of {reference} failed ({status:?}):\n{skopeo}\n--- regcache log:\n{}",
            proxy.log()
        );
    }
    out
}

/// Checks that the pulled directory holds the pushed manifest and every pushed blob,
/// each byte for byte (size and sha256).
fn check_pulled(dir: &Path, image: &PushedImage, dest: Dest) {
    match dest {
        Dest::Dir => {
            let manifest = read(&dir.join("manifest.json"));
            assert_eq!(
                sha256_digest(&manifest),
                image.manifest_digest,
                "manifest in {dir:?}"
            );
            for (digest, size) in &image.blobs {
                check_blob(&dir.join(hex_of(digest)), digest, *size);
            }
        }
        Dest::Oci => {
            let index: serde_json::Value =
                serde_json::from_slice(&read(&dir.join("index.json"))).expect("index.json is JSON");
            let top = &index["manifests"][0];
            assert_eq!(
                top["annotations"]["org.opencontainers.image.ref.name"],
                "pulled"
            );
            assert_eq!(
                top["digest"],
                image.manifest_digest.as_str(),
                "top digest in {dir:?}"
            );
            let blobs = dir.join("blobs/sha256");
            let manifests = std::iter::once(image).chain(&image.children);
            for digest in manifests.map(|m| &m.manifest_digest) {
                let manifest = read(&blobs.join(hex_of(digest)));
                assert_eq!(&sha256_digest(&manifest), digest, "manifest in {dir:?}");
            }
            for (digest, size) in &image.blobs {
                check_blob(&blobs.join(hex_of(digest)), digest, *size);
            }
        }
    }
    std::fs::remove_dir_all(dir).expect("clean up the pulled copy");
}

fn check_blob(path: &Path, digest: &str, size: u64) {
    let bytes = read(path);
    assert_eq!(bytes.len() as u64, size, "size of {path:?}");
    assert_eq!(sha256_digest(&bytes), digest, "digest of {path:?}");
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {path:?}: {e}"))
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").expect("a sha256 digest")
}
