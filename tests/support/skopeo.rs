//! Runs `skopeo copy docker://<regcache>/<reference> dir:<out>` against a regcache on
//! 127.0.0.1, without TLS, credentials or outgoing proxies, bounded in time.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sha2::{Digest as _, Sha256};

use super::images::PushedImage;
use super::registry::run_bounded;

const SKOPEO_TIMEOUT: Duration = Duration::from_secs(120);

/// `skopeo copy` from a source on 127.0.0.1 without TLS or credentials, for any policy;
/// callers add options, the source and the destination.
pub fn copy_command() -> Command {
    let mut cmd = Command::new("skopeo");
    cmd.args([
        "--insecure-policy",
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        "--src-no-creds",
    ]);
    cmd
}

/// Pulls `reference` from the registry API at `addr` into `<work>/<name>`; on failure
/// returns skopeo's output.
pub fn pull(addr: &str, reference: &str, work: &Path, name: &str) -> Result<PathBuf, String> {
    let out = work.join(name);
    let mut cmd = copy_command();
    cmd.arg("--retry-times=0")
        .arg(format!("docker://{addr}/{reference}"))
        .arg(format!("dir:{}", out.display()));
    let log = work.join(format!("skopeo-{name}.log"));
    let status = run_bounded(&mut cmd, &log, SKOPEO_TIMEOUT);
    match status {
        Some(s) if s.success() => Ok(out),
        _ => Err(format!(
            "skopeo ({status:?}): {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )),
    }
}

/// Checks that a `dir:` pull holds the pushed manifest and every blob, by sha256.
pub fn check_pulled(dir: &Path, image: &PushedImage) {
    let sha = |path: PathBuf| {
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("read {path:?}: {e}"));
        format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
    };
    assert_eq!(sha(dir.join("manifest.json")), image.manifest_digest);
    for (digest, _) in &image.blobs {
        let hex = digest.trim_start_matches("sha256:");
        assert_eq!(&sha(dir.join(hex)), digest, "blob in {dir:?}");
    }
}
