//! Operator commands on a store: `gc` and `verify` on the [`Disk`] of the process that
//! owns the store (the daemon, through its admin API, or the command itself when no daemon
//! runs: see `owner`), so the index and the budget see every removal at once; `stats`
//! only reads, and runs whoever owns the store. Everything here blocks.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::catalog::reach;
use super::disk::{Disk, Swept};
use super::files::{parse_manifest, ObjectKey, ObjectKind, Store};
use super::lifecycle::tag_records;
use super::persist::{read_snapshot, walk};
use crate::oci::Digest;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct GcReport {
    pub budget: u64,
    pub objects_before: u64,
    pub bytes_before: u64,
    pub removed: u64,
    pub freed: u64,
    /// What the lifecycle rules removed (before the budget was applied).
    pub swept: Swept,
    /// Membership records of content no longer cached, and files of repositories left
    /// with none (after the rules and the budget).
    pub members_pruned: u64,
    pub member_files_removed: u64,
}

/// Applies the lifecycle rules and then the disk budget now: over the high watermark,
/// least recently used objects go until the store is under the low one. Then prunes the
/// membership records of what is no longer cached.
pub fn gc(disk: &Disk) -> GcReport {
    let (objects_before, bytes_before) = disk.index.usage();
    let swept = disk.sweep();
    let (removed, freed) = disk.evict(false);
    let pruned = disk.prune_members();
    GcReport {
        members_pruned: pruned.records,
        member_files_removed: pruned.files,
        budget: disk.limits.budget,
        objects_before,
        bytes_before,
        removed,
        freed,
        swept,
    }
}

#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub checked: u64,
    pub bytes: u64,
    /// Objects that did not hash to their name; removed.
    pub removed: Vec<ObjectKey>,
}

/// Re-hashes every object and removes those that do not match their digest.
pub fn verify(disk: &Disk) -> io::Result<VerifyReport> {
    let store = &disk.store;
    let mut report = VerifyReport::default();
    for found in walk(store)? {
        let path = store.path_of(&found.key);
        let good = match found.key.kind {
            ObjectKind::Blob => hash_file(&path, &found.key.digest)?,
            ObjectKind::Manifest => match read_if_present(&path)? {
                Some(data) => Some(parse_manifest(&found.key.digest, data).is_some()),
                None => None,
            },
        };
        match good {
            None => continue, // evicted meanwhile
            Some(true) => {}
            Some(false) => {
                disk.discard_corrupt(&found.key);
                report.removed.push(found.key);
            }
        }
        report.checked += 1;
        report.bytes += found.len;
    }
    Ok(report)
}

/// `None` when the file is gone; else whether it hashes to `digest`.
fn hash_file(path: &Path, digest: &Digest) -> io::Result<Option<bool>> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut hasher = digest.hasher();
    let mut buf = vec![0; 1 << 20];
    loop {
        match file.read(&mut buf)? {
            0 => break,
            n => hasher.update(&buf[..n]),
        }
    }
    Ok(Some(hasher.finish() == *digest))
}

fn read_if_present(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(data) => Ok(Some(data)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[derive(Debug, Default)]
pub struct Stats {
    /// (objects, bytes) by kind.
    pub blobs: (u64, u64),
    pub manifests: (u64, u64),
    /// Unix milliseconds of the least and most recent access known.
    pub oldest_access: Option<u64>,
    pub newest_access: Option<u64>,
    /// Tag records by upstream.
    pub tags: Vec<(String, u64)>,
    /// Repositories by the bytes of the cached objects their tags reach, largest first.
    pub top_repositories: Vec<(String, u64)>,
}

/// Sizes, counts and recency of a cache, and which repositories take its space.
pub fn stats(dir: &Path, top: usize) -> io::Result<Stats> {
    let store = Store::reader(dir)?;
    let recorded = read_snapshot(&store);
    let mut stats = Stats::default();
    let mut sizes = HashMap::new();
    for found in walk(&store)? {
        let access = recorded
            .get(&found.key)
            .map_or(found.modified, |r| r.last_access);
        stats.oldest_access = Some(stats.oldest_access.map_or(access, |a| a.min(access)));
        stats.newest_access = Some(stats.newest_access.map_or(access, |a| a.max(access)));
        let slot = match found.key.kind {
            ObjectKind::Blob => &mut stats.blobs,
            ObjectKind::Manifest => &mut stats.manifests,
        };
        slot.0 += 1;
        slot.1 += found.len;
        *sizes.entry(found.key.digest.clone()).or_insert(0) += found.len;
    }
    let mut by_repo: HashMap<String, HashSet<Digest>> = HashMap::new();
    let mut tags: HashMap<String, u64> = HashMap::new();
    for (upstream, repo, _, record) in tag_records(&store)? {
        *tags.entry(upstream.clone()).or_default() += 1;
        let reached = by_repo.entry(format!("{upstream}/{repo}")).or_default();
        reach(&store, &record.digest, reached, 2);
    }
    stats.tags = tags.into_iter().collect();
    stats.tags.sort();
    let mut repos: Vec<(String, u64)> = by_repo
        .into_iter()
        .map(|(repo, keys)| {
            let bytes = keys.iter().filter_map(|k| sizes.get(k)).sum();
            (repo, bytes)
        })
        .collect();
    repos.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    repos.truncate(top);
    stats.top_repositories = repos;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Overrides};
    use crate::metrics::Metrics;
    use crate::store::lifecycle::Rules;

    use crate::store::files::put_test_blob as publish;

    #[test]
    fn verify_removes_what_does_not_hash_and_gc_applies_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let text = "[cache]\ndisk_bytes = \"2500B\"\n[[upstream]]\nurl = \"http://127.0.0.1:1\"\n";
        let ov = Overrides {
            cache_dir: Some(dir.path().to_path_buf()),
            ..Overrides::default()
        };
        let config = Config::parse(text, "test", &ov).unwrap();
        let rules = Rules::new(&config.upstreams);
        let disk = Disk::open(&config.cache, rules, Metrics::new()).unwrap();
        let store = disk.store.clone();
        let keys: Vec<ObjectKey> = (0..4u8).map(|n| publish(&store, &[n; 1000])).collect();
        fs::write(store.path_of(&keys[3]), [9u8; 1000]).unwrap();
        disk.load();
        // A live fill's temp file must survive every command.
        let (_, temp) = store.temp_file().unwrap();

        let report = verify(&disk).unwrap();
        assert_eq!((report.checked, report.bytes), (4, 4000));
        assert_eq!(report.removed, std::slice::from_ref(&keys[3]));
        assert!(!store.path_of(&keys[3]).exists());
        assert_eq!(disk.index.usage(), (3, 3000), "the index saw the removal");

        // Membership records of every blob in one repository, of the damaged one in another.
        let (a, b) = ("team/a".parse().unwrap(), "team/b".parse().unwrap());
        for key in &keys {
            crate::store::record_image(&store, "up", "up", &a, &key.digest).unwrap();
        }
        crate::store::record_image(&store, "up", "up", &b, &keys[3].digest).unwrap();
        let report = gc(&disk);
        // 3000 bytes > 0.9 x 2500: down to 0.8 x 2500 = 2000.
        assert_eq!((report.removed, report.freed), (1, 1000));
        assert!(temp.exists());
        // The damaged blob's two records and the evicted one's, and the same two digests'
        // delivered records; team/b is left with none, and so are those two digests' shards
        // of the delivered records.
        assert_eq!((report.members_pruned, report.member_files_removed), (5, 3));
        assert!(!store.root().join("members/up/team/b").exists());

        let stats = stats(dir.path(), 5).unwrap();
        assert_eq!(stats.blobs, (2, 2000));
        assert!(stats.oldest_access <= stats.newest_access);
    }
}
