//! Lifecycle rules per upstream, in the spirit of registry lifecycle policies: objects
//! fetched from an upstream and not pulled for `expire_after_days` are removed, and each
//! repository keeps its `max_tags_per_repo` most recently confirmed tag records.
//!
//! An object's upstream is the one it was fetched from (recorded in the index and its
//! snapshot); objects of unknown origin (found on disk without a record) are left to the
//! budget. The tag walk here is also what `ops::stats` reads. Everything here blocks.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::Path;
use std::time::Duration;

use super::files::{list_dir, Store, TagRecord};
use crate::config::UpstreamConfig;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    pub expire_after: Option<Duration>,
    pub max_tags_per_repo: Option<usize>,
}

/// The rules of every upstream that has one, by upstream name.
#[derive(Clone, Debug, Default)]
pub struct Rules(HashMap<String, Rule>);

impl Rules {
    pub fn new(upstreams: &[UpstreamConfig]) -> Rules {
        let rules = upstreams
            .iter()
            .map(|u| {
                let rule = Rule {
                    expire_after: u.expire_after,
                    max_tags_per_repo: u.max_tags_per_repo,
                };
                (u.name.clone(), rule)
            })
            .filter(|(_, rule)| *rule != Rule::default())
            .collect();
        Rules(rules)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How long (milliseconds) an object of this origin may go unpulled.
    pub fn max_age_ms(&self, origin: &str) -> Option<u64> {
        let age = self.0.get(origin)?.expire_after?;
        Some(u64::try_from(age.as_millis()).unwrap_or(u64::MAX))
    }

    /// (upstream, max tags) for every upstream that limits its tags.
    pub fn tag_limits(&self) -> impl Iterator<Item = (&str, usize)> {
        self.0
            .iter()
            .filter_map(|(name, rule)| Some((name.as_str(), rule.max_tags_per_repo?)))
    }
}

/// Keeps the `max` most recently confirmed tag records of each repository of `upstream`
/// and removes the others, except those `pinned(repo, tag, record)`. Returns how many
/// were removed.
pub fn trim_tags(
    store: &Store,
    upstream: &str,
    max: usize,
    pinned: &dyn Fn(&str, &str, &TagRecord) -> bool,
) -> io::Result<u64> {
    let mut removed = 0;
    let mut by_repo: HashMap<String, Vec<(u64, std::path::PathBuf)>> = HashMap::new();
    let dir = store.tags_dir(upstream);
    visit_tags(&dir, &dir, &mut |repo, path, record| {
        let tag = path.file_name().unwrap_or_default().to_string_lossy();
        if pinned(repo, &tag, &record) {
            return;
        }
        by_repo
            .entry(repo.to_string())
            .or_default()
            .push((record.checked_at, path.to_path_buf()));
    })?;
    for mut tags in by_repo.into_values() {
        if tags.len() <= max {
            continue;
        }
        tags.sort_by_key(|t| std::cmp::Reverse(t.0));
        for (_, path) in &tags[max..] {
            match fs::remove_file(path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(removed)
}

/// Every tag record: (upstream directory name, repository, tag, record).
pub fn tag_records(store: &Store) -> io::Result<Vec<(String, String, String, TagRecord)>> {
    let mut out = Vec::new();
    let Ok(upstreams) = fs::read_dir(store.root().join("tags")) else {
        return Ok(out);
    };
    for upstream in upstreams.flatten() {
        let name = upstream.file_name().to_string_lossy().into_owned();
        let dir = upstream.path();
        visit_tags(&dir, &dir, &mut |repo, path, record| {
            let tag = path.file_name().unwrap_or_default().to_string_lossy();
            out.push((name.clone(), repo.to_string(), tag.into_owned(), record));
        })?;
    }
    Ok(out)
}

/// Calls `each(repo, path, record)` for every readable tag record under `dir`.
fn visit_tags(
    base: &Path,
    dir: &Path,
    each: &mut dyn FnMut(&str, &Path, TagRecord),
) -> io::Result<()> {
    for entry in list_dir(dir)? {
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        if entry.file_name() != "_tags" {
            visit_tags(base, &path, each)?;
            continue;
        }
        let repo = dir.strip_prefix(base).unwrap_or(dir).to_string_lossy();
        for tag in fs::read_dir(&path)?.flatten() {
            let record = fs::read(tag.path())
                .ok()
                .and_then(|d| serde_json::from_slice(&d).ok());
            if let Some(record) = record {
                each(&repo, &tag.path(), record);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Overrides};
    use crate::metrics::Metrics;
    use crate::oci::{RepoName, Tag};
    use crate::store::files::unix_millis;
    use crate::store::ops;

    #[test]
    fn old_objects_of_a_ruled_upstream_expire_and_surplus_tags_go() {
        let dir = tempfile::tempdir().unwrap();
        let text = "[[upstream]]\nname = \"hub\"\nurl = \"http://127.0.0.1:1\"\nexpire_after_days = 1\nmax_tags_per_repo = 2\n";
        let ov = Overrides {
            cache_dir: Some(dir.path().to_path_buf()),
            ..Overrides::default()
        };
        let config = Config::parse(text, "test", &ov).unwrap();
        let rules = Rules::new(&config.upstreams);
        let disk = crate::store::Disk::open(&config.cache, rules, Metrics::new()).unwrap();
        let store = disk.store.clone();
        let publish = |data: &[u8]| crate::store::files::put_test_blob(&store, data);
        let (old, recent, unknown) = (publish(b"old"), publish(b"recent"), publish(b"?"));
        let now = unix_millis();
        let two_days = 2 * 86_400_000;
        let snapshot = format!(
            "regcache-index 1\nb {} 3 {} hub\nb {} 6 {now} hub\nb {} 1 {} \n",
            old.digest,
            now - two_days,
            recent.digest,
            unknown.digest,
            now - two_days,
        );
        fs::write(store.root().join("index"), snapshot).unwrap();
        let repo: RepoName = "a/b".parse().unwrap();
        for (n, tag) in ["v1", "v2", "v3"].iter().enumerate() {
            let record = TagRecord {
                digest: old.digest.clone(),
                media_type: "m".into(),
                checked_at: n as u64,
            };
            let tag: Tag = tag.parse().unwrap();
            store.write_tag("hub", &repo, &tag, &record).unwrap();
        }

        disk.load();
        let report = ops::gc(&disk);
        assert_eq!((report.swept.objects, report.swept.tags), (1, 1));
        assert!(!store.path_of(&old).exists());
        assert!(store.path_of(&recent).exists(), "pulled recently");
        assert!(
            store.path_of(&unknown).exists(),
            "no origin: left to the budget"
        );
        let v1: Tag = "v1".parse().unwrap();
        assert_eq!(
            store.read_tag("hub", &repo, &v1).unwrap(),
            None,
            "the oldest tag"
        );
        assert_eq!(tag_records(&store).unwrap().len(), 2);
    }

    #[test]
    fn zero_limits_are_refused() {
        let text = "[cache]\nlifecycle_sweep_secs = 0\n[[upstream]]\nurl = \"http://127.0.0.1:1\"\nexpire_after_days = 0\nmax_tags_per_repo = 0\n";
        let err = Config::parse(text, "test", &Overrides::default()).unwrap_err();
        let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "cache.lifecycle_sweep_secs",
                "upstream[0].expire_after_days",
                "upstream[0].max_tags_per_repo"
            ]
        );
    }
}
