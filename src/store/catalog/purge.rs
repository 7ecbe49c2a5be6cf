//! Purging a scope: its tag records go, a whole repository's membership records go, and
//! its content leaves the disk unless a pin keeps it or another repository (or, for a tag
//! or digest, another tag of the same repository) still references it. The report says
//! what was freed and what was kept and why. The caller drops the removed objects from
//! the memory tier and the tag answers held in memory. Blocks.

use std::collections::HashMap;
use std::io;

use serde::{Deserialize, Serialize};

use super::{reach, read_manifest, Catalog, RepoId, Scope};
use crate::oci::{Digest, RepoName, Tag};
use crate::store::disk::Reason;
use crate::store::files::{ObjectKey, ObjectKind};
use crate::store::Disk;

/// How many kept objects a report lists one by one (the totals count them all).
const KEPT_LISTED: usize = 100;

#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PurgeReport {
    pub tags_removed: u64,
    /// Tag records left because a pin keeps them.
    pub tags_kept: u64,
    /// Repositories whose membership records went with them.
    pub repositories_forgotten: u64,
    pub objects_removed: u64,
    /// Content bytes removed: what upstream sends again when it is pulled again.
    pub bytes_freed: u64,
    /// Bytes of the removed files (a manifest's file also holds its media type).
    pub disk_bytes_freed: u64,
    pub objects_kept: u64,
    pub bytes_kept: u64,
    /// The first kept objects, each with its reason.
    pub kept: Vec<Kept>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Kept {
    pub digest: Digest,
    pub bytes: u64,
    /// `pinned`, or the repository (`upstream/repo`, or `tag v2` of the same one) that
    /// still references it.
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PurgeError {
    #[error("{0} is not cached: nothing to purge")]
    NotCached(Scope),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Purges `scope`; returns the report and the objects removed. Blocks.
pub fn purge(disk: &Disk, scope: &Scope) -> Result<(PurgeReport, Vec<ObjectKey>), PurgeError> {
    let store = &disk.store;
    let catalog = Catalog::read(store)?;
    if !catalog.has(store, scope) {
        return Err(PurgeError::NotCached(scope.clone()));
    }
    let targets = catalog.content(store, scope);
    let mut report = PurgeReport::default();
    // Why each target stays, if it does: first a pin, then whatever else references it.
    let mut keep: HashMap<Digest, String> = HashMap::new();
    for digest in &targets {
        if disk.index.is_kept(digest) {
            keep.insert(digest.clone(), "pinned".into());
        }
    }
    for (id, repo) in &catalog.repos {
        let mut still = std::collections::HashSet::new();
        let reason = if scope.covers_repo(id) {
            if scope.whole() {
                continue;
            }
            for (tag, record) in &repo.tags {
                if !goes(scope, tag, &record.digest) {
                    reach(store, &record.digest, &mut still, 2);
                }
            }
            "another tag of the same repository".to_string()
        } else {
            still.extend(repo.members.iter().cloned());
            for record in repo.tags.values() {
                reach(store, &record.digest, &mut still, 2);
            }
            format!("{}/{}", id.0, id.1)
        };
        for digest in still.into_iter().filter(|d| targets.contains(d)) {
            keep.entry(digest).or_insert_with(|| reason.clone());
        }
    }

    // A pinned tag's record stays with its content, or the pin would lose its image.
    let pinned_tag = |id: &RepoId, tag: &str, digest: &Digest| {
        disk.pins.covers_tag(id, tag) || disk.index.is_kept(digest)
    };
    for id in catalog.selected(scope) {
        let repo = &catalog.repos[id];
        for (tag, record) in &repo.tags {
            if !goes(scope, tag, &record.digest) {
                continue;
            }
            if pinned_tag(id, tag, &record.digest) {
                report.tags_kept += 1;
            } else if remove_tag(disk, id, tag)? {
                report.tags_removed += 1;
            }
        }
        if scope.whole() && !disk.pins.touches_repo(id) && disk.members.forget(&id.0, &id.1)? {
            report.repositories_forgotten += 1;
            // Its tag list and referrers name what is gone: asked again next time.
            if let Ok(repo) = id.1.parse::<RepoName>() {
                disk.store.remove_lists(&id.0, &repo)?;
            }
        }
    }

    let mut removed = Vec::new();
    let mut sorted: Vec<&Digest> = targets.iter().collect();
    sorted.sort();
    for digest in sorted {
        for kind in ObjectKind::ALL {
            let key = ObjectKey {
                kind,
                digest: digest.clone(),
            };
            let Some(meta) = disk.index.get(&key) else {
                continue;
            };
            let content = match kind {
                ObjectKind::Blob => meta.size,
                ObjectKind::Manifest => {
                    read_manifest(store, digest).map_or(meta.size, |(_, body)| body.len() as u64)
                }
            };
            if let Some(reason) = keep.get(digest) {
                report.objects_kept += 1;
                report.bytes_kept += content;
                if report.kept.len() < KEPT_LISTED {
                    report.kept.push(Kept {
                        digest: digest.clone(),
                        bytes: content,
                        reason: reason.clone(),
                    });
                }
                continue;
            }
            if disk.index.remove(&key).is_none() {
                continue;
            }
            if let Err(e) = store.remove(&key) {
                tracing::warn!(%digest, error = %e, "removing a purged object failed");
            }
            report.objects_removed += 1;
            report.bytes_freed += content;
            report.disk_bytes_freed += meta.size;
            removed.push(key);
        }
    }
    disk.count(Reason::Purge, report.objects_removed);
    super::pins::refresh(disk)?;
    tracing::info!(
        %scope,
        tags = report.tags_removed,
        objects = report.objects_removed,
        bytes = report.bytes_freed,
        kept = report.objects_kept,
        "purged"
    );
    Ok((report, removed))
}

/// Whether the tag record `tag` (pointing at `digest`) goes with `scope`.
fn goes(scope: &Scope, tag: &str, digest: &Digest) -> bool {
    match scope {
        Scope::Upstream(_) | Scope::Repository(..) => true,
        Scope::Tag(_, _, t) => t.as_str() == tag,
        Scope::Digest(_, _, d) => d == digest,
    }
}

fn remove_tag(disk: &Disk, id: &RepoId, tag: &str) -> io::Result<bool> {
    let (Ok(repo), Ok(tag)) = (id.1.parse::<RepoName>(), tag.parse::<Tag>()) else {
        return Ok(false);
    };
    disk.store.remove_tag(&id.0, &repo, &tag)
}

#[cfg(test)]
mod tests;
