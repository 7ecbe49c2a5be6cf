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
