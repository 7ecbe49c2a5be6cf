//! Tag freshness: which digest a tag pointed at, and until when that answer is trusted.
//!
//! Tags are keyed by upstream and repository (digests are not). Hot tags live in memory;
//! every confirmation is also written to the store so a restart keeps them.

use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;
use tokio::time::Instant;

use crate::oci::{Digest, RepoName, Tag};
use crate::store::Disk;
use crate::store::{unix_now, Store, TagRecord};

#[derive(Clone, Debug)]
pub struct TagEntry {
    pub digest: Digest,
    pub media_type: Arc<str>,
    /// Until then the digest is served without asking upstream.
    pub fresh_until: Instant,
}

impl TagEntry {
    pub fn is_fresh(&self) -> bool {
        Instant::now() < self.fresh_until
    }

    /// True while the entry may still be served when upstream fails: up to `window` after
    /// it stopped being fresh.
    pub fn servable_stale(&self, window: Duration) -> bool {
        Instant::now() < self.fresh_until + window
    }
}

#[derive(Clone)]
pub struct Tags {
    memory: Cache<Key, TagEntry>,
}

/// A tag of a repository of an upstream.
type Key = (String, RepoName, Tag);

fn key(upstream: &str, repo: &RepoName, tag: &Tag) -> Key {
    (upstream.to_string(), repo.clone(), tag.clone())
}

impl Tags {
    pub fn new(max_entries: u64) -> Tags {
        Tags {
            memory: Cache::new(max_entries),
        }
    }

    /// The last known answer for a tag, from memory or else from the store.
    pub async fn get(
        &self,
        store: &Arc<Store>,
        upstream: &str,
        repo: &RepoName,
        tag: &Tag,
        ttl: Duration,
    ) -> Option<TagEntry> {
        let k = key(upstream, repo, tag);
        if let Some(entry) = self.memory.get(&k) {
            return Some(entry);
        }
        let (store, up, r, t) = (
            store.clone(),
            upstream.to_string(),
            repo.clone(),
            tag.clone(),
        );
        let record = tokio::task::spawn_blocking(move || store.read_tag(&up, &r, &t))
            .await
            .ok()?
            .inspect_err(|e| tracing::warn!(error = %e, "reading a tag record failed"))
            .ok()??;
        let digest = record.digest;
        let age = Duration::from_secs(unix_now().saturating_sub(record.checked_at));
        let entry = TagEntry {
            digest,
            media_type: record.media_type.into(),
            fresh_until: Instant::now() + ttl.saturating_sub(age),
        };
        self.memory.insert(k, entry.clone());
        Some(entry)
    }

    /// Forgets every tag answer held in memory (they are read again from disk): after an
    /// import wrote tag records.
    pub fn forget_all(&self) {
        self.memory.invalidate_all();
    }

    /// Records that upstream just confirmed `tag -> digest`, in memory now and on disk soon
    /// (the returned task; callers need not wait for it).
    #[allow(clippy::too_many_arguments)]
    pub fn confirm(
        &self,
        disk: &Arc<Disk>,
        upstream: &str,
        repo: &RepoName,
        tag: &Tag,
        digest: &Digest,
        media_type: &str,
        ttl: Duration,
    ) {
        let entry = TagEntry {
            digest: digest.clone(),
            media_type: media_type.into(),
            fresh_until: Instant::now() + ttl,
        };
        self.memory.insert(key(upstream, repo, tag), entry);
        let record = TagRecord {
            digest: digest.clone(),
            media_type: media_type.to_string(),
            checked_at: unix_now(),
        };
        let (writer, up, r, t) = (
            disk.clone(),
            upstream.to_string(),
            repo.clone(),
            tag.clone(),
        );
        disk.store.write_behind(move || {
            if let Err(e) = writer.store.write_tag(&up, &r, &t, &record) {
                // It stays in memory only. A record is a few hundred bytes: an emergency
                // eviction's slack covers it, so no size is given.
                writer.note_write_error("writing a tag record", &e, 0);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::oci::Algorithm;
    use crate::store::lifecycle::Rules;
    use crate::store::Limits;

    async fn entry_now(tags: &Tags, store: &Arc<Store>) -> TagEntry {
        let (repo, tag): (RepoName, Tag) = ("a/b".parse().unwrap(), "v1".parse().unwrap());
        tags.get(store, "up", &repo, &tag, Duration::from_secs(300))
            .await
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn entries_go_stale_after_the_ttl_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let limits = Limits {
            budget: 1 << 20,
            high: 1 << 19,
            low: 1 << 18,
        };
        let disk = Arc::new(Disk::new(
            store.clone(),
            limits,
            Rules::default(),
            Metrics::new(),
        ));
        let (repo, tag): (RepoName, Tag) = ("a/b".parse().unwrap(), "v1".parse().unwrap());
        let digest = Digest::of(Algorithm::Sha256, b"m");
        let ttl = Duration::from_secs(300);
        let tags = Tags::new(100);
        tags.confirm(&disk, "up", &repo, &tag, &digest, "application/x", ttl);
        store.settled().await;
        let entry = tags.get(&store, "up", &repo, &tag, ttl).await.unwrap();
        assert!(entry.is_fresh());
        tokio::time::advance(Duration::from_secs(301)).await;
        assert!(!tags
            .get(&store, "up", &repo, &tag, ttl)
            .await
            .unwrap()
            .is_fresh());

        // Fresh until 300 s; servable stale until 300 + 100 s.
        let window = Duration::from_secs(100);
        assert!(entry_now(&tags, &store).await.servable_stale(window));
        tokio::time::advance(Duration::from_secs(98)).await;
        assert!(entry_now(&tags, &store).await.servable_stale(window));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!entry_now(&tags, &store).await.servable_stale(window));
        assert!(!entry_now(&tags, &store)
            .await
            .servable_stale(Duration::ZERO));

        // A new process reads the record the first one wrote.
        let restarted = Tags::new(100);
        let entry = restarted.get(&store, "up", &repo, &tag, ttl).await.unwrap();
        assert_eq!(entry.digest, digest);
        assert_eq!(&*entry.media_type, "application/x");
    }
}
