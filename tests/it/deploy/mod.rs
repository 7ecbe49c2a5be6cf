//! Running where users run it: `regcache doctor` on node configurations, and driving a
//! real containerd.

mod containerd;
mod doctor;

use std::path::Path;

/// Writes `text` to `path` under `root`, making its directories.
fn put(root: &Path, path: &str, text: &str) {
    let path = root.join(path);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A file shipped in the repository, as users copy it.
fn shipped(path: &str) -> String {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(repo.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}
