//! What the cache holds as an operator sees it: upstreams, repositories, tags and images,
//! with their sizes, last pull and pin state. Read from the tag records, the membership
//! records and the disk index; `purge` removes by the same scopes, `pins` keeps them out
//! of eviction's reach.
//!
//! A repository's content is what its membership records name plus what its tags reach
//! (a manifest, its config and layers, an index's manifests). Content shared by several
//! repositories belongs to each. Everything here blocks.

pub mod pins;
pub mod purge;
mod scope;

use std::collections::{BTreeMap, HashSet};
use std::io;

use serde::{Deserialize, Serialize};

use super::files::{list_dir, parse_manifest, ObjectKey, ObjectKind, Store, TagRecord};
use super::index::Index;
use super::lifecycle::tag_records;
use super::members::{members_of, MemberFile};
use crate::oci::Digest;
pub use scope::{Scope, ScopeError};

/// A repository as the store names it: the upstream's directory name and the repository.
pub type RepoId = (String, String);

/// Every repository with tag or membership records.
#[derive(Default)]
pub struct Catalog {
    repos: BTreeMap<RepoId, Repo>,
}

#[derive(Default)]
struct Repo {
    tags: BTreeMap<String, TagRecord>,
    members: Vec<Digest>,
}

impl Catalog {
    /// Reads every tag and membership record. Blocks.
    pub fn read(store: &Store) -> io::Result<Catalog> {
        let mut catalog = Catalog::default();
        for (upstream, repo, tag, record) in tag_records(store)? {
            let entry = catalog.repos.entry((upstream, repo)).or_default();
            entry.tags.insert(tag, record);
        }
        for MemberFile {
            upstream,
            repo,
            digests,
        } in members_of(store)?
        {
            catalog.repos.entry((upstream, repo)).or_default().members = digests;
        }
        Ok(catalog)
    }

    /// The repositories `scope` names (all of an upstream's, or one).
    fn selected<'a>(&'a self, scope: &'a Scope) -> impl Iterator<Item = &'a RepoId> + 'a {
        self.repos.keys().filter(move |id| scope.covers_repo(id))
    }

    /// The digests `scope` names, with everything they reference.
    pub fn content(&self, store: &Store, scope: &Scope) -> HashSet<Digest> {
        let mut out = HashSet::new();
        for id in self.selected(scope) {
            let repo = &self.repos[id];
            match scope {
                Scope::Upstream(_) | Scope::Repository(..) => {
                    out.extend(repo.members.iter().cloned());
                    for record in repo.tags.values() {
                        reach(store, &record.digest, &mut out, 2);
                    }
                }
                Scope::Tag(_, _, tag) => {
                    if let Some(record) = repo.tags.get(tag.as_str()) {
                        reach(store, &record.digest, &mut out, 2);
                    }
                }
                Scope::Digest(_, _, digest) => reach(store, digest, &mut out, 2),
            }
        }
        out
    }

    /// Whether `scope` names anything recorded (a tag record, or a held manifest).
    pub fn has(&self, store: &Store, scope: &Scope) -> bool {
        self.selected(scope).any(|id| match scope {
            Scope::Upstream(_) | Scope::Repository(..) => true,
            Scope::Tag(_, _, tag) => self.repos[id].tags.contains_key(tag.as_str()),
            Scope::Digest(_, _, digest) => store.manifest_path(digest).exists(),
        })
    }

    /// The repositories with a tag or held content, with their sizes from `index` and
    /// their pin state.
    pub fn repositories(&self, store: &Store, index: &Index, pins: &pins::Pins) -> Vec<RepoInfo> {
        self.repos
            .iter()
            .map(|(id, repo)| {
                let mut content: HashSet<Digest> = repo.members.iter().cloned().collect();
                for record in repo.tags.values() {
                    reach(store, &record.digest, &mut content, 2);
                }
                let held = Held::of(index, content.iter());
                RepoInfo {
                    upstream: id.0.clone(),
                    repository: id.1.clone(),
                    tags: repo.tags.len(),
                    manifests: held.manifests,
                    bytes: held.bytes,
                    last_pull: held.last_pull,
                    pinned: pins.touches_repo(id),
                }
            })
            .filter(|r| r.tags > 0 || r.bytes > 0)
            .collect()
    }

    /// One repository's tags, newest confirmation first.
    pub fn tags(
        &self,
        store: &Store,
        index: &Index,
        pins: &pins::Pins,
        id: &RepoId,
    ) -> Vec<TagInfo> {
        let Some(repo) = self.repos.get(id) else {
            return Vec::new();
        };
        let mut tags: Vec<TagInfo> = repo
            .tags
            .iter()
            .map(|(tag, record)| {
                let mut content = HashSet::new();
                reach(store, &record.digest, &mut content, 2);
                let held = Held::of(index, content.iter());
                TagInfo {
                    tag: tag.clone(),
                    digest: record.digest.clone(),
                    media_type: record.media_type.clone(),
                    checked_at: record.checked_at,
                    bytes: held.bytes,
                    last_pull: held.last_pull,
                    pinned: pins.covers_tag(id, tag) || index.is_kept(&record.digest),
                }
            })
            .collect();
        tags.sort_by(|a, b| b.checked_at.cmp(&a.checked_at).then(a.tag.cmp(&b.tag)));
        tags
    }

    /// One repository's held manifests (tagged or pulled by digest), last pulled first.
    pub fn manifests(&self, store: &Store, index: &Index, id: &RepoId) -> Vec<ManifestInfo> {
        let Some(repo) = self.repos.get(id) else {
            return Vec::new();
        };
        let mut digests: Vec<&Digest> = repo.members.iter().collect();
        digests.extend(repo.tags.values().map(|r| &r.digest));
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for digest in digests {
            let key = ObjectKey::manifest(digest);
            if !seen.insert(digest.clone()) || index.get(&key).is_none() {
                continue;
            }
            let mut content = HashSet::new();
            reach(store, digest, &mut content, 2);
            let held = Held::of(index, content.iter());
            out.push(ManifestInfo {
                digest: digest.clone(),
                media_type: media_type(store, digest).unwrap_or_default(),
                tags: repo
                    .tags
                    .iter()
                    .filter(|(_, r)| r.digest == *digest)
                    .map(|(t, _)| t.clone())
                    .collect(),
                bytes: held.bytes,
                last_pull: held.last_pull,
                pinned: index.is_kept(digest),
            });
        }
        out.sort_by(|a, b| b.last_pull.cmp(&a.last_pull).then(a.digest.cmp(&b.digest)));
        out
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RepoInfo {
    pub upstream: String,
    pub repository: String,
    pub tags: usize,
    /// Manifests held (images and indexes).
    pub manifests: usize,
    /// Bytes held of its content (shared content counts in each repository).
    pub bytes: u64,
    /// Unix milliseconds of the last pull of one of its manifests.
    pub last_pull: Option<u64>,
    /// A pin keeps all of it or part of it (a tag, a digest).
    pub pinned: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TagInfo {
    pub tag: String,
    pub digest: Digest,
    pub media_type: String,
    /// Unix seconds of upstream's last confirmation.
    pub checked_at: u64,
    pub bytes: u64,
    pub last_pull: Option<u64>,
    pub pinned: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ManifestInfo {
    pub digest: Digest,
    pub media_type: String,
    pub tags: Vec<String>,
    pub bytes: u64,
    pub last_pull: Option<u64>,
    pub pinned: bool,
}

/// What the index holds of some content.
#[derive(Default)]
struct Held {
    bytes: u64,
    manifests: usize,
    last_pull: Option<u64>,
}

impl Held {
    fn of<'a>(index: &Index, digests: impl Iterator<Item = &'a Digest>) -> Held {
        let mut held = Held::default();
        for digest in digests {
            for kind in ObjectKind::ALL {
                let key = ObjectKey {
                    kind,
                    digest: digest.clone(),
                };
                let Some(meta) = index.get(&key) else {
                    continue;
                };
                held.bytes += meta.size;
                if kind == ObjectKind::Manifest {
                    held.manifests += 1;
                    held.last_pull = held.last_pull.max(Some(meta.last_access));
                }
            }
        }
        held
    }
}

/// Adds a manifest and what it references (config, layers, and for an index its
/// manifests, `depth` levels down) to `reached`; a digest not held as a manifest is added
/// alone (a blob).
pub fn reach(store: &Store, digest: &Digest, reached: &mut HashSet<Digest>, depth: u8) {
    reached.insert(digest.clone());
    let Some((media_type, body)) = read_manifest(store, digest) else {
        return;
    };
    let found = crate::oci::manifest::references(&media_type, &body);
    reached.extend(found.blobs.iter().cloned());
    if depth > 0 {
        for child in &found.manifests {
            reach(store, child, reached, depth - 1);
        }
    }
}

fn read_manifest(store: &Store, digest: &Digest) -> Option<(String, bytes::Bytes)> {
    let data = std::fs::read(store.manifest_path(digest)).ok()?;
    parse_manifest(digest, data)
}

fn media_type(store: &Store, digest: &Digest) -> Option<String> {
    read_manifest(store, digest).map(|(media_type, _)| media_type)
}

/// The upstream directory names under `v1/tags` and `v1/members`.
pub fn upstream_dirs(store: &Store) -> io::Result<Vec<String>> {
    let mut names = HashSet::new();
    for sub in ["tags", "members"] {
        for entry in list_dir(&store.root().join(sub))? {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with('@') && entry.path().is_dir() {
                names.insert(name);
            }
        }
    }
    let mut names: Vec<String> = names.into_iter().collect();
    names.sort();
    Ok(names)
}
