//! Pruning membership records, so that `v1/members/` does not grow for as long as the cache
//! runs: records of digests the cache no longer holds go, and so do the files and
//! directories of repositories and upstreams left with none. The daemon prunes after its
//! lifecycle sweeps; `regcache gc` prunes too.
//!
//! Only records of content not held are dropped, and membership matters only for content
//! held: content fetched again is recorded again for the repository that fetched it (and
//! other repositories are confirmed upstream first, as for any unknown membership). A
//! record of a fill still in flight may be dropped; it costs one confirmation upstream.
//! Only the store's owner prunes (see `store::owner`), and it forgets the dropped
//! records in memory too, so they are written again when their content returns.

use std::fs;
use std::io;
use std::path::Path;

use super::file::{self, FILE_NAME};
use crate::oci::Digest;
use crate::store::files::{list_dir, Store};

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Records dropped.
    pub records: u64,
    /// Repository files removed because none of their records was left.
    pub files: u64,
    /// The in-memory keys (`upstream dir`, repository, digest) of the dropped records.
    pub keys: Vec<(String, String, Digest)>,
}

/// Prunes every membership file, keeping the records of `present` digests. Blocks.
pub fn prune(store: &Store, present: &dyn Fn(&Digest) -> bool) -> io::Result<Pruned> {
    let mut pruned = Pruned::default();
    let root = store.root().join("members");
    for upstream in list_dir(&root)? {
        let name = upstream.file_name().to_string_lossy().into_owned();
        let dir = upstream.path();
        if dir.is_dir() {
            visit(store, &name, &dir, &dir, present, &mut pruned)?;
        }
    }
    Ok(pruned)
}

/// Prunes the files below `dir`, then removes `dir` if that left it empty.
fn visit(
    store: &Store,
    upstream: &str,
    base: &Path,
    dir: &Path,
    present: &dyn Fn(&Digest) -> bool,
    pruned: &mut Pruned,
) -> io::Result<()> {
    for entry in list_dir(dir)? {
        let path = entry.path();
        if path.is_dir() {
            visit(store, upstream, base, &path, present, pruned)?;
        } else if entry.file_name() == FILE_NAME {
            let repo = dir.strip_prefix(base).unwrap_or(dir).to_string_lossy();
            let dropped = file::prune(store, &path, present)?;
            pruned.records += dropped.len() as u64;
            pruned.files += u64::from(!dropped.is_empty() && !path.exists());
            let keys = dropped
                .into_iter()
                .map(|d| (upstream.to_string(), repo.to_string(), d));
            pruned.keys.extend(keys);
        }
    }
    // Fails (and is meant to) unless nothing is left, or an appender just recreated it.
    let _ = fs::remove_dir(dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::{Algorithm, RepoName};

    #[test]
    fn records_of_absent_digests_and_emptied_repositories_go() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (held, gone) = (
            Digest::of(Algorithm::Sha256, b"held"),
            Digest::of(Algorithm::Sha256, b"gone"),
        );
        let write = |upstream: &str, repo: &str, digests: &[&Digest]| {
            let repo: RepoName = repo.parse().unwrap();
            let lines: String = digests.iter().map(|d| format!("{d}\n")).collect();
            file::append(&file::path(&store, upstream, &repo), lines.as_bytes()).unwrap();
        };
        write("hub", "team/a", &[&held, &gone]);
        write("hub", "team/a/b", &[&gone]);
        write("old:5000", "x", &[&gone, &gone]);

        let pruned = prune(&store, &|d| *d == held).unwrap();
        assert_eq!((pruned.records, pruned.files), (3, 2));
        let mut keys: Vec<(String, String)> = pruned
            .keys
            .iter()
            .map(|k| (k.0.clone(), k.1.clone()))
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                ("hub".into(), "team/a".into()),
                ("hub".into(), "team/a/b".into()),
                ("old_5000".into(), "x".into())
            ]
        );
        let members = store.root().join("members");
        let a: RepoName = "team/a".parse().unwrap();
        assert_eq!(
            file::read(&file::path(&store, "hub", &a)).unwrap(),
            std::slice::from_ref(&held)
        );
        assert!(!members.join("hub/team/a/b").exists());
        assert!(
            !members.join("old_5000").exists(),
            "an upstream with nothing left"
        );

        // Nothing more to drop: no change.
        assert_eq!(prune(&store, &|d| *d == held).unwrap(), Pruned::default());
    }
}
