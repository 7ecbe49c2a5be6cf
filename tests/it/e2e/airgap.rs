//! The air-gapped round trip with the real binary, Debian's `docker-registry` and skopeo:
//! instance A prefetches images (through its API), `regcache export` writes them from A's
//! cache directory as an OCI layout archive, `regcache import` loads that into a second
//! directory, and instance B, whose upstream is unreachable, serves skopeo the same
//! digests. skopeo also reads the archive itself, which shows other tools accept it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::images::{self, PushedImage};
use crate::support::regcache::Regcache;
use crate::support::registry::Registry;

/// Upper bound for one command (prefetch, export, import, or a skopeo copy).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(180);

fn config(upstream_url: &str) -> String {
    format!("[[upstream]]\nname = \"origin\"\nurl = \"{upstream_url}\"\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn prefetch_export_import_then_serve_with_upstream_unreachable() {
    let mut registry = Registry::start();
    let sizes = [6 * 1024 * 1024, 10 * 1024]; // one blob past the in-memory limit of import
    let single = images::push_oci_image(&registry.url(), "e2e/airgap", "v1", &sizes, 41).await;
    let multi = images::push_index(&registry.url(), "e2e/airgap-multi", "v2", 42).await;
    let work = tempfile::tempdir().expect("work tempdir");
    let (cache_a, cache_b) = (work.path().join("a"), work.path().join("b"));

    let mut a = Regcache::start_with_config(&config(&registry.url()), &cache_a);
    let list = work.path().join("images.txt");
    std::fs::write(&list, "# the air-gapped set\ne2e/airgap-multi:v2\n").unwrap();
    let out = regcache(
        &[
            "prefetch",
            "--via",
            &a.url(),
            "--jobs",
            "3",
            "e2e/airgap:v1",
            "--file",
        ],
        &[&list],
        work.path(),
    );
    assert!(out.contains("prefetched 2 image(s)"), "{out}");
    assert!(registry.blob_gets() >= 6, "prefetch fetched too few blobs");
    a.stop();
    registry.stop();

    let archive = work.path().join("images.tar");
    let a_config = cache_a.with_extension("toml");
    let cache_args = |config: &Path, dir: &Path| {
        vec![
            "--config".to_string(),
            config.display().to_string(),
            "--cache-dir".to_string(),
            dir.display().to_string(),
        ]
    };
    let mut args = vec!["export", "e2e/airgap:v1", "e2e/airgap-multi:v2", "--output"];
    let archive_arg = archive.display().to_string();
    args.push(&archive_arg);
    let a_args = cache_args(&a_config, &cache_a);
    args.extend(a_args.iter().map(String::as_str));
    regcache(&args, &[], work.path());

    // What is not cached fails clearly, and leaves no archive.
    let missing = work.path().join("missing.tar");
    let mut args = vec!["export", "e2e/airgap:v9", "--output"];
    let missing_arg = missing.display().to_string();
    args.push(&missing_arg);
    args.extend(a_args.iter().map(String::as_str));
    let err = regcache_fails(&args, work.path());
    assert!(err.contains("not cached"), "{err}");
    assert!(!missing.exists());

    // B: a new cache directory, an upstream nobody listens on.
    let b_config = cache_b.with_extension("toml");
    std::fs::write(&b_config, config("http://127.0.0.1:9")).unwrap();
    let mut args = vec!["import", &archive_arg];
    let b_args = cache_args(&b_config, &cache_b);
    args.extend(b_args.iter().map(String::as_str));
    let out = regcache(&args, &[], work.path());
    assert!(out.contains("tagged origin/e2e/airgap:v1"), "{out}");
    let b = Regcache::start_with_config(&config("http://127.0.0.1:9"), &cache_b);

    let pulled = skopeo(
        &[&format!("docker://{}/e2e/airgap:v1", b.addr())],
        &work.path().join("single"),
        false,
        work.path(),
    );
    check_pulled(&pulled, &single);
    let pulled = skopeo(
        &[&format!("docker://{}/e2e/airgap-multi:v2", b.addr())],
        &work.path().join("multi"),
        true,
        work.path(),
    );
    check_pulled(&pulled, &multi);

    // Other tools read the archive itself.
    let read = skopeo(
        &[&format!("oci-archive:{}:e2e/airgap:v1", archive.display())],
        &work.path().join("from-archive"),
        false,
        work.path(),
    );
    check_pulled(&read, &single);
    drop(b);
}

/// Runs `regcache ARGS PATHS...`; returns stdout and stderr; panics if it fails or hangs.
fn regcache(args: &[&str], paths: &[&Path], work: &Path) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_regcache"));
    cmd.args(args).args(paths);
    let (ok, out) = run(cmd, work, "regcache");
    assert!(ok, "regcache {args:?} failed:\n{out}");
    out
}

fn regcache_fails(args: &[&str], work: &Path) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_regcache"));
    cmd.args(args);
    let (ok, out) = run(cmd, work, "regcache");
    assert!(!ok, "regcache {args:?} succeeded:\n{out}");
    out
}

/// `skopeo copy SRC oci:DEST:pulled`, keeping digests; returns DEST.
fn skopeo(src: &[&str], dest: &Path, all: bool, work: &Path) -> PathBuf {
    let mut cmd = crate::support::skopeo::copy_command();
    cmd.arg("--preserve-digests")
        .arg("--dest-oci-accept-uncompressed-layers");
    if all {
        cmd.arg("--all");
    }
    cmd.args(src).arg(format!("oci:{}:pulled", dest.display()));
    let (ok, out) = run(cmd, work, "skopeo");
    assert!(ok, "skopeo copy {src:?} failed:\n{out}");
    dest.to_path_buf()
}

/// Runs a command with its output in a file, killing it after [`COMMAND_TIMEOUT`].
fn run(mut cmd: Command, work: &Path, name: &str) -> (bool, String) {
    let log = work.join(format!("{name}.log"));
    let status = crate::support::registry::run_bounded(&mut cmd, &log, COMMAND_TIMEOUT);
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    (status.is_some_and(|s| s.success()), out)
}

/// The OCI layout skopeo wrote names the pushed manifest, and holds every blob intact.
fn check_pulled(dir: &Path, image: &PushedImage) {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let digest = index["manifests"][0]["digest"].as_str().unwrap();
    assert_eq!(digest, image.manifest_digest, "{index}");
    for (blob, size) in &image.blobs {
        let path = dir.join("blobs/sha256").join(&blob["sha256:".len()..]);
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(data.len() as u64, *size);
        assert_eq!(images::sha256_digest(&data), *blob);
    }
}

fn blob_path(cache: &Path, digest: &str) -> PathBuf {
    let hex = &digest["sha256:".len()..];
    cache.join("v1/blobs/sha256").join(&hex[..2]).join(hex)
}

/// In-process prefetch of one platform; its export leaves the other platform out; an
/// archive with a damaged blob is refused and publishes nothing of that blob.
#[tokio::test(flavor = "multi_thread")]
async fn prefetch_into_a_directory_by_platform_and_refuse_a_damaged_archive() {
    let registry = Registry::start();
    let multi = images::push_index(&registry.url(), "e2e/platforms", "v1", 43).await;
    let work = tempfile::tempdir().expect("work tempdir");
    let cache = work.path().join("c");
    let config_path = work.path().join("c.toml");
    std::fs::write(&config_path, config(&registry.url())).unwrap();
    let config_arg = config_path.display().to_string();
    let cache_arg = cache.display().to_string();
    let dirs = ["--config", &config_arg, "--cache-dir", &cache_arg];

    let mut args = vec!["prefetch", "--platform", "linux/arm64", "e2e/platforms:v1"];
    args.extend(dirs);
    let out = regcache(&args, &[], work.path());
    assert!(out.contains("2 manifest(s)"), "{out}");
    let [amd64, arm64] = &multi.children[..] else {
        panic!("two children")
    };
    for (blob, _) in &arm64.blobs {
        assert!(blob_path(&cache, blob).is_file(), "{blob} not cached");
    }
    for (blob, _) in &amd64.blobs {
        assert!(!blob_path(&cache, blob).exists(), "{blob} fetched");
    }

    let archive = work.path().join("one.tar");
    let archive_arg = archive.display().to_string();
    let mut args = vec!["export", "e2e/platforms:v1", "-o", &archive_arg];
    args.extend(dirs);
    let out = regcache(&args, &[], work.path());
    assert!(out.contains("left out"), "{out}");

    // Flip one byte of the arm64 image's largest blob inside the archive.
    let (largest, size) = arm64.blobs.iter().max_by_key(|(_, s)| *s).unwrap();
    let mut bytes = std::fs::read(&archive).unwrap();
    let original = std::fs::read(blob_path(&cache, largest)).unwrap();
    let at = bytes
        .windows(original.len().min(4096))
        .position(|w| w == &original[..original.len().min(4096)])
        .expect("the blob is in the archive");
    bytes[at + (*size as usize) / 2] ^= 1;
    let damaged = work.path().join("damaged.tar");
    std::fs::write(&damaged, bytes).unwrap();
    let other = work.path().join("other");
    let other_arg = other.display().to_string();
    let err = regcache_fails(
        &[
            "import",
            &damaged.display().to_string(),
            "--config",
            &config_arg,
            "--cache-dir",
            &other_arg,
        ],
        work.path(),
    );
    assert!(err.contains("damaged"), "{err}");
    assert!(!blob_path(&other, largest).exists());
    let leftovers: Vec<_> = std::fs::read_dir(other.join("v1/tmp")).unwrap().collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
