//! Looking into a cache directory from a test: its files, and whether every stored object
//! still holds exactly the bytes its name promises.

use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

/// Every file below `dir` (none if it does not exist).
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .flat_map(|e| {
            if e.path().is_dir() {
                files(&e.path())
            } else {
                vec![e.path()]
            }
        })
        .collect()
}

/// Re-hashes every blob under `v1/blobs`, asserting each matches its name; returns the count.
pub fn verified_blobs(cache: &Path) -> usize {
    verified(cache, "blobs", false)
}

/// Like [`verified_blobs`], for blobs and manifests (whose files start with a media type
/// line) together.
pub fn verified_objects(cache: &Path) -> usize {
    verified(cache, "blobs", false) + verified(cache, "manifests", true)
}

fn verified(cache: &Path, kind: &str, skip_header: bool) -> usize {
    let paths = files(&cache.join("v1").join(kind));
    for path in &paths {
        let bytes = std::fs::read(path).unwrap();
        let content = match skip_header {
            true => {
                let newline = bytes.iter().position(|b| *b == b'\n').unwrap();
                &bytes[newline + 1..]
            }
            false => &bytes[..],
        };
        let name = path.file_name().unwrap().to_str().unwrap();
        assert_eq!(
            hex::encode(Sha256::digest(content)),
            name,
            "{} holds other bytes than its name says",
            path.display()
        );
    }
    paths.len()
}

/// (files, bytes) of the published objects (blobs and manifests) of a cache.
pub fn usage(cache: &Path) -> (u64, u64) {
    let mut paths = files(&cache.join("v1/blobs"));
    paths.extend(files(&cache.join("v1/manifests")));
    let bytes = paths
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    (paths.len() as u64, bytes)
}

/// Moves every last access recorded in the index snapshot `by_ms` into the past, as if
/// the cache had sat unused that long (records are `kind digest size access [origin]`).
pub fn age_snapshot(cache: &Path, by_ms: u64) {
    let path = cache.join("v1/index");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return;
    };
    let aged: Vec<String> = text
        .lines()
        .map(|line| {
            let mut fields: Vec<String> = line.split(' ').map(str::to_string).collect();
            if let Some(access) = fields.get(3).and_then(|a| a.parse::<u64>().ok()) {
                fields[3] = access.saturating_sub(by_ms).to_string();
            }
            fields.join(" ")
        })
        .collect();
    std::fs::write(&path, aged.join("\n") + "\n").unwrap();
}

/// Whether `digest` is stored, as a blob or a manifest.
pub fn cached(cache: &Path, digest: &str) -> bool {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    ["blobs", "manifests"].iter().any(|kind| {
        let dir = cache.join("v1").join(kind).join("sha256");
        hex.len() > 2 && dir.join(&hex[..2]).join(hex).exists()
    })
}

/// Every membership file (`v1/members/<upstream>/<repo>/_members`) and its lines.
pub fn member_records(cache: &Path) -> Vec<(PathBuf, Vec<String>)> {
    files(&cache.join("v1/members"))
        .into_iter()
        .filter(|p| p.ends_with("_members"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let lines = text.lines().map(str::to_string).collect();
            (p, lines)
        })
        .collect()
}

/// Membership records of digests that are not stored, as `file: digest`.
pub fn stale_members(cache: &Path) -> Vec<String> {
    let mut stale = Vec::new();
    for (path, digests) in member_records(cache) {
        let gone = digests.into_iter().filter(|d| !cached(cache, d));
        stale.extend(gone.map(|d| format!("{}: {d}", path.display())));
    }
    stale
}
