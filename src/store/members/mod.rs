//! Which digests regcache has seen belong to which repository of which upstream.
//!
//! The store is content-addressed and shared, so without this record anyone who knows a
//! digest could read a private layer through any repository. A digest belongs to
//! `(upstream, repository)` once a manifest served for that repository referenced it, or
//! once upstream answered for it under that repository's name. Lookups are in memory
//! (bounded); every new record is also appended to
//! `v1/members/<upstream>/<repo>/_members` (one digest a line, see `file`), read back on a
//! memory miss, so a restart keeps what was learned. Beside them, `v1/members/@delivered/
//! <trust domain>/_members` records which trust domain's upstreams delivered a digest's
//! bytes themselves: content one domain fetched is served for another only once that one
//! delivered it too (see `Cache::trusted`). Appends are not synced: a record lost
//! in a crash only costs a confirmation upstream later. `prune` keeps the files to the
//! content the cache holds.

mod file;
mod prune;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use moka::sync::Cache;

use super::files::{list_dir, Store};
use crate::oci::{Digest, RepoName};
pub use file::upstream_dir;
pub use prune::Pruned;

#[derive(Clone)]
pub struct Membership {
    memory: Cache<Key, ()>,
    store: Arc<Store>,
}

/// A membership in memory, by the upstream's directory name, as its file is: what a
/// prune reports.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    upstream: String,
    repo: String,
    digest: Digest,
}

fn key(upstream: &str, repo: &str, digest: &Digest) -> Key {
    Key {
        upstream: file::upstream_dir(upstream),
        repo: repo.to_string(),
        digest: digest.clone(),
    }
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
        self.memory
            .contains_key(&key(upstream, repo.as_str(), digest))
    }

    /// Memory first, then the repository's file on disk (whose records return to memory).
    pub async fn contains(&self, upstream: &str, repo: &RepoName, digest: &Digest) -> bool {
        self.lookup(upstream, repo.as_str(), self.path(upstream, repo), digest)
            .await
    }

    /// Whether upstreams of trust domain `domain` delivered `digest`'s bytes themselves.
    pub async fn delivered(&self, domain: &str, digest: &Digest) -> bool {
        let path = file::delivered_path(&self.store, domain, digest);
        let shard = file::delivered_shard(domain, digest);
        self.lookup(file::DELIVERED_DIR, &shard, path, digest).await
    }

    /// Records that an upstream of `domain` delivered `digest` (verified).
    pub fn record_delivered(&self, domain: &str, digest: &Digest) {
        let path = file::delivered_path(&self.store, domain, digest);
        let shard = file::delivered_shard(domain, digest);
        self.append(
            file::DELIVERED_DIR,
            &shard,
            path,
            std::slice::from_ref(digest),
        );
    }

    /// `contains` for any record file: `(upstream, repo)` as named in memory keys.
    async fn lookup(&self, upstream: &str, repo: &str, path: PathBuf, digest: &Digest) -> bool {
        if self.memory.contains_key(&key(upstream, repo, digest)) {
            return true;
        }
        let read = tokio::task::spawn_blocking(move || file::read(&path)).await;
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
        let path = self.path(upstream, repo);
        self.append(upstream, repo.as_str(), path, digests);
    }

    fn append(&self, upstream: &str, repo: &str, path: PathBuf, digests: &[Digest]) {
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
        self.store.write_behind(move || {
            if let Err(e) = file::append(&path, new.as_bytes()) {
                tracing::warn!(error = %e, path = %path.display(), "writing a membership record failed; it stays in memory only");
            }
        });
    }

    fn path(&self, upstream: &str, repo: &RepoName) -> PathBuf {
        file::path(&self.store, upstream, repo)
    }

    /// Removes every record of one repository (`upstream` as its directory is named), on
    /// disk and in memory; false when it had none. Blocks.
    pub fn forget(&self, upstream: &str, repo: &str) -> io::Result<bool> {
        let path = self
            .store
            .root()
            .join("members")
            .join(upstream)
            .join(repo)
            .join(file::FILE_NAME);
        let dropped = file::prune(&self.store, &path, &|_| false)?;
        for digest in &dropped {
            self.memory.invalidate(&key(upstream, repo, digest));
        }
        if let Some(dir) = path.parent() {
            let _ = std::fs::remove_dir(dir);
        }
        Ok(!dropped.is_empty())
    }

    /// Prunes the records of digests not `present` on disk and forgets them in memory too,
    /// so they are written again when their content returns. Blocks.
    pub fn prune(&self, present: &dyn Fn(&Digest) -> bool) -> io::Result<Pruned> {
        let pruned = prune::prune(&self.store, present)?;
        for (upstream, repo, digest) in &pruned.keys {
            self.memory.invalidate(&key(upstream, repo, digest));
        }
        Ok(pruned)
    }
}

/// One repository's membership records, as read from its file.
pub struct MemberFile {
    /// The upstream's directory name.
    pub upstream: String,
    pub repo: String,
    pub digests: Vec<Digest>,
}

/// Every repository's membership records (not the delivered ones). Blocks.
pub fn members_of(store: &Store) -> io::Result<Vec<MemberFile>> {
    fn visit(upstream: &str, base: &Path, dir: &Path, out: &mut Vec<MemberFile>) -> io::Result<()> {
        for entry in list_dir(dir)? {
            let path = entry.path();
            if path.is_dir() {
                visit(upstream, base, &path, out)?;
            } else if entry.file_name() == file::FILE_NAME {
                let repo = dir.strip_prefix(base).unwrap_or(dir).to_string_lossy();
                let mut digests = file::read(&path)?;
                digests.sort();
                digests.dedup();
                out.push(MemberFile {
                    upstream: upstream.to_string(),
                    repo: repo.into_owned(),
                    digests,
                });
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for upstream in list_dir(&store.root().join("members"))? {
        let name = upstream.file_name().to_string_lossy().into_owned();
        if name != file::DELIVERED_DIR && upstream.path().is_dir() {
            visit(&name, &upstream.path(), &upstream.path(), &mut out)?;
        }
    }
    Ok(out)
}

/// Records, straight in the store, that an image and everything it references belong to
/// `repo` on `upstream` and were delivered for trust domain `domain` (import verified every
/// byte): for `regcache import`. Only new records enter memory on a lookup, so a daemon's
/// memory never contradicts these. Blocks.
pub fn record_image(
    store: &Store,
    upstream: &str,
    domain: &str,
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
        let delivered = file::delivered_path(store, domain, &digest);
        file::append(&delivered, format!("{digest}\n").as_bytes())?;
        if let Some((media_type, body)) = store.read_manifest(&digest)?.found() {
            todo.extend(references(&media_type, &body));
        }
    }
    file::append(&file::path(store, upstream, repo), lines.as_bytes())
}

/// What a manifest makes part of its repository: only the fields its media type defines
/// (an image's config and layers, an index's child manifests). A document that does not
/// read cleanly as its type references nothing.
pub fn references(media_type: &str, body: &[u8]) -> Vec<Digest> {
    let found = crate::oci::manifest::references(media_type, body);
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

    /// Waits (bounded) for the background appends to reach the file.
    async fn on_disk(members: &Membership, repo: &RepoName, digest: &Digest) -> bool {
        for _ in 0..200 {
            if file::read(&members.path("up", repo))
                .unwrap()
                .contains(digest)
            {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        false
    }

    #[tokio::test]
    async fn pruned_records_are_written_again_when_their_content_returns() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let repo: RepoName = "team/a".parse().unwrap();
        let d = Digest::of(Algorithm::Sha256, b"layer");
        let members = Membership::new(store.clone(), 100);
        members.record("up", &repo, std::slice::from_ref(&d));
        assert!(on_disk(&members, &repo, &d).await);

        // The daemon's own prune forgets the record in memory too.
        assert_eq!(members.prune(&|_| false).unwrap().records, 1);
        assert!(!members.known("up", &repo, &d));
        members.record("up", &repo, std::slice::from_ref(&d));
        assert!(on_disk(&members, &repo, &d).await, "written again");
    }

    #[test]
    fn references_are_read_by_media_type() {
        use crate::oci::media::{DOCKER_MANIFEST_V2, OCI_INDEX};
        let (c, l, m) = (
            Digest::of(Algorithm::Sha256, b"c"),
            Digest::of(Algorithm::Sha256, b"l"),
            Digest::of(Algorithm::Sha256, b"m"),
        );
        let image = format!(r#"{{"config":{{"digest":"{c}"}},"layers":[{{"digest":"{l}"}}]}}"#);
        assert_eq!(
            references(DOCKER_MANIFEST_V2, image.as_bytes()),
            [c.clone(), l]
        );
        let index = format!(r#"{{"manifests":[{{"digest":"{m}"}}]}}"#);
        assert_eq!(
            references(OCI_INDEX, index.as_bytes()),
            std::slice::from_ref(&m)
        );
        // The same document under another type, or with fields of both, claims nothing.
        assert!(references(DOCKER_MANIFEST_V2, index.as_bytes()).is_empty());
        let smuggled = format!(
            r#"{{"config":{{"digest":"{c}"}},"layers":[],"manifests":[{{"digest":"{m}"}}]}}"#
        );
        assert!(references(DOCKER_MANIFEST_V2, smuggled.as_bytes()).is_empty());
        assert!(references(OCI_INDEX, b"not json").is_empty());
    }
}
