//! One repository's membership file, `v1/members/<upstream>/<repo>/_members`: one digest a
//! line, appended by the daemon, `import` and `prefetch`, rewritten whole by pruning.
//!
//! Appends and rewrites may come from different processes at once. An appender holds a
//! shared `flock` while it writes and a pruner an exclusive one while it reads and replaces
//! the file, so no line lands in a file that is being replaced: an appender that opened
//! the old file sees, once it holds the lock, that the path now names another file (or
//! none) and opens it again. Readers take no lock: a rename shows them the old file or
//! the new one. Everything here blocks.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

use crate::oci::{Digest, RepoName};
use crate::store::files::Store;

/// The file name that holds a repository's records (`_` cannot start a repo component).
pub const FILE_NAME: &str = "_members";

/// How many times an append follows a file that a pruner replaced or removed.
const APPEND_ATTEMPTS: usize = 4;

/// The directory name of an upstream under `members/` (`host:port` is not portable).
pub fn upstream_dir(upstream: &str) -> String {
    upstream.replace(':', "_")
}

pub fn path(store: &Store, upstream: &str, repo: &RepoName) -> PathBuf {
    store
        .root()
        .join("members")
        .join(upstream_dir(upstream))
        .join(repo.as_str())
        .join(FILE_NAME)
}

/// Beside the upstreams' directories: which trust domain delivered which digests. `@`
/// cannot start an upstream name, so no upstream's records can land here.
pub const DELIVERED_DIR: &str = "@delivered";

/// Sharded by the digest's first two hex digits, so a lookup that misses memory reads a
/// small file, not every digest the domain ever delivered.
pub fn delivered_path(store: &Store, domain: &str, digest: &Digest) -> PathBuf {
    store
        .root()
        .join("members")
        .join(DELIVERED_DIR)
        .join(delivered_shard(domain, digest))
        .join(FILE_NAME)
}

/// `<domain>/<xx>`: the "repository" part of a delivered record's key.
pub fn delivered_shard(domain: &str, digest: &Digest) -> String {
    let hex = digest.hex();
    format!("{domain}/{}", &hex[..2.min(hex.len())])
}

pub fn read(path: &Path) -> io::Result<Vec<Digest>> {
    let text = match fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    // A line cut short by a crash does not parse and is skipped.
    Ok(text.lines().filter_map(|l| l.parse().ok()).collect())
}

pub fn append(path: &Path, lines: &[u8]) -> io::Result<()> {
    let mut last = None;
    for _ in 0..APPEND_ATTEMPTS {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let file = match OpenOptions::new().create(true).append(true).open(path) {
            Ok(file) => file,
            // A pruner removed the emptied directory between the two calls.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                last = Some(e);
                continue;
            }
            Err(e) => return Err(e),
        };
        flock(&file, FlockOperation::LockShared)?;
        if !still_at(&file, path)? {
            continue;
        }
        // One write per batch with O_APPEND: concurrent appenders do not interleave lines.
        return (&file).write_all(lines);
    }
    Err(last.unwrap_or_else(|| io::Error::other("the membership file kept being replaced")))
}

/// Whether `path` still names the file `file` has open.
fn still_at(file: &File, path: &Path) -> io::Result<bool> {
    let held = file.metadata()?;
    match fs::metadata(path) {
        Ok(now) => Ok(now.ino() == held.ino() && now.dev() == held.dev()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Rewrites the file with only the records of `present` digests, each once (and without
/// lines a crash cut short); removes it when none is left. Returns the digests dropped.
pub fn prune(
    store: &Store,
    path: &Path,
    present: &dyn Fn(&Digest) -> bool,
) -> io::Result<Vec<Digest>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    flock(&file, FlockOperation::LockExclusive)?;
    if !still_at(&file, path)? {
        return Ok(Vec::new()); // another pruner replaced it meanwhile
    }
    let mut bytes = Vec::new();
    (&file).read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let (mut kept, mut dropped, mut seen) = (String::new(), Vec::new(), HashSet::new());
    let mut changed = false;
    for line in text.lines() {
        let Ok(digest) = line.parse::<Digest>() else {
            changed = true;
            continue;
        };
        if !seen.insert(digest.clone()) {
            changed = true;
        } else if present(&digest) {
            kept.push_str(line);
            kept.push('\n');
        } else {
            dropped.push(digest);
            changed = true;
        }
    }
    if !changed {
        return Ok(dropped);
    }
    if kept.is_empty() {
        match fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    } else {
        store.write_atomic(path, &[kept.as_bytes()])?;
    }
    // The lock is released with `file`, after the replacement is in place.
    drop(file);
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Algorithm;

    #[test]
    fn an_append_to_a_replaced_file_lands_in_the_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let repo: RepoName = "team/app".parse().unwrap();
        let path = path(&store, "up:5000", &repo);
        assert!(path.ends_with("members/up_5000/team/app/_members"));
        let (a, b, c) = (
            Digest::of(Algorithm::Sha256, b"a"),
            Digest::of(Algorithm::Sha256, b"b"),
            Digest::of(Algorithm::Sha256, b"c"),
        );
        append(&path, format!("{a}\n{b}\n{a}\nsha256:cut").as_bytes()).unwrap();
        append(&path, format!("\n{c}\n").as_bytes()).unwrap();

        // An appender opened the file; a pruner replaces it before the append.
        let stale = OpenOptions::new().append(true).open(&path).unwrap();
        let dropped = prune(&store, &path, &|d| *d != b).unwrap();
        assert_eq!(dropped, std::slice::from_ref(&b));
        assert_eq!(read(&path).unwrap(), [a.clone(), c.clone()]);
        assert!(!still_at(&stale, &path).unwrap());
        append(&path, format!("{b}\n").as_bytes()).unwrap();
        assert_eq!(read(&path).unwrap(), [a.clone(), c.clone(), b.clone()]);

        // Nothing present: the file goes; an append creates it again.
        assert_eq!(prune(&store, &path, &|_| false).unwrap().len(), 3);
        assert!(!path.exists());
        append(&path, format!("{c}\n").as_bytes()).unwrap();
        assert_eq!(read(&path).unwrap(), [c]);
    }
}
