//! Which digests regcache has seen belong to which repository of which upstream.
//!
//! The store is content-addressed and shared, so without this record anyone who knows a
//! digest could read a private layer through any repository. A digest belongs to
//! `(upstream, repository)` once a manifest served for that repository referenced it, or
//! once upstream answered for it under that repository's name. Lookups are in memory
//! (bounded); every new record is also appended to
//! `v1/members/<upstream>/<repo>/_members` (one digest a line), read back on a memory
//! miss, so a restart keeps what was learned. Appends are not synced: a record lost in a
//! crash only costs a confirmation upstream later.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;

use moka::sync::Cache;

use super::store::Store;
use crate::oci::{Digest, RepoName};

#[derive(Clone)]
pub struct Membership {
    memory: Cache<String, ()>,
    store: Arc<Store>,
}

fn key(upstream: &str, repo: &RepoName, digest: &Digest) -> String {
    format!("{upstream}\n{repo}\n{digest}")
}

impl Membership {
    pub fn new(store: Arc<Store>, max_entries: u64) -> Membership {
        Membership {
            memory: Cache::new(max_entries),
            store,
        }
    }

    /// True when memory holds the record: the hot path, no I/O.
    pub fn known(&self, upstream: &str, repo: &RepoName, digest: &Digest) -> bool {
        self.memory.contains_key(&key(upstream, repo, digest))
    }

    /// Memory first, then the repository's file on disk (whose records return to memory).
    pub async fn contains(&self, upstream: &str, repo: &RepoName, digest: &Digest) -> bool {
        if self.known(upstream, repo, digest) {
            return true;
        }
        let path = self.path(upstream, repo);
        let read = tokio::task::spawn_blocking(move || read_records(&path)).await;
        let records = match read {
            Ok(Ok(records)) => records,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "reading a membership record failed; asking upstream");
                return false;
            }
            Err(_) => return false,
        };
        let mut found = false;
        for d in records {
            found |= d == *digest;
            self.memory.insert(key(upstream, repo, &d), ());
        }
        found
    }

    /// Records that `digests` belong to `repo` on `upstream`: in memory now, appended to
    /// disk in the background (only the ones memory did not hold).
    pub fn record(&self, upstream: &str, repo: &RepoName, digests: &[Digest]) {
        let mut new = String::new();
        for d in digests {
            let k = key(upstream, repo, d);
            if !self.memory.contains_key(&k) {
                self.memory.insert(k, ());
                new.push_str(&d.to_string());
                new.push('\n');
            }
        }
        if new.is_empty() {
            return;
        }
        let path = self.path(upstream, repo);
        tokio::task::spawn_blocking(move || {
            if let Err(e) = append(&path, new.as_bytes()) {
                tracing::warn!(error = %e, path = %path.display(), "writing a membership record failed; it stays in memory only");
            }
        });
    }

    fn path(&self, upstream: &str, repo: &RepoName) -> PathBuf {
        members_path(&self.store, upstream, repo)
    }
}

fn members_path(store: &Store, upstream: &str, repo: &RepoName) -> PathBuf {
    store
        .root()
        .join("members")
        .join(upstream.replace(':', "_"))
        .join(repo.as_str())
        .join("_members")
}

/// Records, straight in the store, that an image and everything it references belong to
/// `repo` on `upstream`: for `regcache import`, which fills a cache outside the daemon.
/// Blocks.
pub fn record_image(
    store: &Store,
    upstream: &str,
    repo: &RepoName,
    top: &Digest,
) -> io::Result<()> {
    let (mut todo, mut lines) = (vec![top.clone()], String::new());
    let mut seen = std::collections::HashSet::new();
    while let Some(digest) = todo.pop() {
        if !seen.insert(digest.clone()) {
            continue;
        }
        lines.push_str(&format!("{digest}\n"));
        if let Some((_, body)) = store.read_manifest(&digest)?.found() {
            todo.extend(references(&body));
        }
    }
    append(&members_path(store, upstream, repo), lines.as_bytes())
}

fn read_records(path: &std::path::Path) -> io::Result<Vec<Digest>> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    // A line cut short by a crash does not parse and is skipped.
    Ok(text.lines().filter_map(|l| l.parse().ok()).collect())
}

fn append(path: &std::path::Path, lines: &[u8]) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    // One write per batch with O_APPEND: concurrent appenders do not interleave lines.
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?
        .write_all(lines)
}

/// What a manifest makes part of its repository: an image's config and layers, an
/// index's child manifests. Anything unparsable references nothing.
pub fn references(body: &[u8]) -> Vec<Digest> {
    let found = crate::oci::manifest_references(body);
    found.blobs.into_iter().chain(found.manifests).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Algorithm;

    #[tokio::test]
    async fn records_are_per_upstream_and_repository_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let (a, b): (RepoName, RepoName) = ("team/a".parse().unwrap(), "team/b".parse().unwrap());
        let d = Digest::of(Algorithm::Sha256, b"layer");
        let members = Membership::new(store.clone(), 100);
        members.record("up:5000", &a, std::slice::from_ref(&d));
        assert!(members.known("up:5000", &a, &d));
        assert!(!members.known("up:5000", &b, &d));
        assert!(!members.known("other", &a, &d));
        // Let the background append finish, then start afresh.
        for _ in 0..100 {
            if members.path("up:5000", &a).exists() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let restarted = Membership::new(store, 100);
        assert!(!restarted.known("up:5000", &a, &d));
        assert!(restarted.contains("up:5000", &a, &d).await);
        assert!(restarted.known("up:5000", &a, &d));
        assert!(!restarted.contains("up:5000", &b, &d).await);
    }

    #[test]
    fn references_are_config_layers_and_child_manifests() {
        let (c, l, m) = (
            Digest::of(Algorithm::Sha256, b"c"),
            Digest::of(Algorithm::Sha256, b"l"),
            Digest::of(Algorithm::Sha256, b"m"),
        );
        let image = format!(
            r#"{{"config":{{"digest":"{c}"}},"layers":[{{"digest":"{l}"}},{{"digest":"bad"}}]}}"#
        );
        assert_eq!(references(image.as_bytes()), [c, l]);
        let index = format!(r#"{{"manifests":[{{"digest":"{m}"}}]}}"#);
        assert_eq!(references(index.as_bytes()), [m]);
        assert!(references(b"not json").is_empty());
    }
}
