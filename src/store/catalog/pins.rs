//! Operator pins: scopes whose content the budget and the lifecycle rules never remove.
//!
//! The scopes live in `v1/pins.json` (rewritten whole on every change), so they survive
//! restarts. What they keep is resolved into a set of digests in the index (see
//! `Index::set_kept`) at startup before the first eviction, on every pin change, and at
//! each lifecycle sweep: a pinned tag that moved keeps its new image from then on. Not to
//! be confused with the index's read pins, which hold an object only while it is read.
//! Everything here blocks.

use std::collections::HashSet;
use std::io;
use std::path::PathBuf;
use std::sync::Mutex;

use serde::Serialize;

use super::{Catalog, RepoId, Scope};
use crate::oci::Digest;
use crate::store::files::Store;
use crate::store::Disk;

const FILE_NAME: &str = "pins.json";

pub struct Pins {
    scopes: Mutex<Vec<Scope>>,
    path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("{0} is not cached: pull or prefetch it first, then pin it")]
    NotCached(Scope),
    #[error("reading or writing the pins: {0}")]
    Io(#[from] io::Error),
}

/// What a pin keeps.
#[derive(Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct PinReport {
    pub scope: Scope,
    /// False when the scope was pinned already.
    pub added: bool,
    /// Objects held now that every pin keeps, and their bytes.
    pub objects: u64,
    pub bytes: u64,
}

impl Pins {
    /// The pins recorded in `store`. A damaged file is moved aside (and logged), so the
    /// next change does not silently drop what it held.
    pub fn load(store: &Store) -> Pins {
        let path = store.root().join(FILE_NAME);
        let scopes = match std::fs::read(&path) {
            Ok(data) => match serde_json::from_slice(&data) {
                Ok(scopes) => scopes,
                Err(e) => {
                    let aside =
                        path.with_extension(format!("json.bad-{}", crate::store::unix_now()));
                    let _ = std::fs::rename(&path, &aside);
                    tracing::error!(error = %e, moved_to = %aside.display(), "the pins file is damaged; starting with no pins: pin again what must stay");
                    Vec::new()
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                tracing::error!(error = %e, path = %path.display(), "reading the pins failed; starting with no pins");
                Vec::new()
            }
        };
        Pins {
            scopes: Mutex::new(scopes),
            path,
        }
    }

    pub fn list(&self) -> Vec<Scope> {
        self.scopes.lock().expect("pins lock").clone()
    }

    /// Whether a pin keeps all or part of repository `id`.
    pub fn touches_repo(&self, id: &RepoId) -> bool {
        self.list().iter().any(|s| s.covers_repo(id))
    }

    /// Whether a pin keeps tag `tag` of repository `id` (a tag pin, or a whole-repository
    /// one): the lifecycle's tag limit leaves such records alone.
    pub fn covers_tag(&self, id: &RepoId, tag: &str) -> bool {
        self.list().iter().any(|s| match s {
            Scope::Tag(_, _, t) => t.as_str() == tag && s.covers_repo(id),
            _ => s.whole() && s.covers_repo(id),
        })
    }

    /// Changes the scopes with `edit` and writes them; false when nothing changed.
    fn change(
        &self,
        store: &Store,
        edit: impl FnOnce(&mut Vec<Scope>) -> bool,
    ) -> io::Result<bool> {
        let mut scopes = self.scopes.lock().expect("pins lock");
        let mut next = scopes.clone();
        if !edit(&mut next) {
            return Ok(false);
        }
        let json = serde_json::to_vec_pretty(&next).expect("scopes serialize");
        store.write_atomic(&self.path, &[&json])?;
        *scopes = next;
        Ok(true)
    }
}

/// Resolves every pin and hands the kept digests to the index. Blocks.
pub fn refresh(disk: &Disk) -> io::Result<()> {
    let scopes = disk.pins.list();
    if scopes.is_empty() {
        disk.index.set_kept(HashSet::new());
        return Ok(());
    }
    let catalog = Catalog::read(&disk.store)?;
    let kept: HashSet<Digest> = scopes
        .iter()
        .flat_map(|scope| catalog.content(&disk.store, scope))
        .collect();
    disk.index.set_kept(kept);
    Ok(())
}

/// Pins `scope`, which must name something cached. Blocks.
pub fn pin(disk: &Disk, scope: Scope) -> Result<PinReport, PinError> {
    let catalog = Catalog::read(&disk.store)?;
    if !catalog.has(&disk.store, &scope) {
        return Err(PinError::NotCached(scope));
    }
    let added = disk.pins.change(&disk.store, |scopes| {
        let new = !scopes.contains(&scope);
        if new {
            scopes.push(scope.clone());
        }
        new
    })?;
    refresh(disk)?;
    Ok(report(disk, scope, added))
}

/// Unpins `scope`; its content is again the budget's to evict. Blocks.
pub fn unpin(disk: &Disk, scope: Scope) -> Result<PinReport, PinError> {
    let removed = disk.pins.change(&disk.store, |scopes| {
        let before = scopes.len();
        scopes.retain(|s| *s != scope);
        scopes.len() != before
    })?;
    refresh(disk)?;
    Ok(report(disk, scope, removed))
}

fn report(disk: &Disk, scope: Scope, added: bool) -> PinReport {
    let (objects, bytes) = disk.index.kept_usage();
    PinReport {
        scope,
        added,
        objects,
        bytes,
    }
}
