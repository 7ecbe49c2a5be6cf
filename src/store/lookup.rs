//! The one lookup for held content, blobs and manifests alike: memory first (its hit
//! refreshes the object's disk recency), then disk, promoting what the memory tier admits.
//! A damaged or missing file is reported as a miss, so the caller fetches it again.

use std::fs::File;
use std::io;
use std::sync::Arc;

use super::bucket::Bucket;
use super::disk::Disk;
use super::files::{unix_millis, Lookup, ObjectKey, ObjectKind};
use super::index::Pin;
use super::memory::{Entry, Key, Memory};

/// The memory tier in front of the disk store, and the shared bucket behind it.
#[derive(Clone)]
pub struct Tiers {
    pub memory: Memory,
    pub disk: Arc<Disk>,
    pub bucket: Option<Bucket>,
}

/// Which tier answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    Memory,
    Disk,
    Bucket,
}

/// Held content: whole in memory (manifests, small blobs), or an open, pinned file.
pub enum Held {
    Bytes(Entry),
    File { file: Arc<File>, len: u64, pin: Pin },
}

impl Held {
    pub fn size(&self) -> u64 {
        match self {
            Held::Bytes(entry) => entry.bytes.len() as u64,
            Held::File { len, .. } => *len,
        }
    }
}

impl Tiers {
    /// The object if memory or disk holds it, and which tier did.
    pub async fn find(&self, key: &ObjectKey) -> Option<(Held, Tier)> {
        let memory_key = match key.kind {
            ObjectKind::Blob => Key::Blob(key.digest.clone()),
            ObjectKind::Manifest => Key::Manifest(key.digest.clone()),
        };
        if let Some(entry) = self.memory.get(&memory_key) {
            self.disk.index.touch(key, unix_millis());
            return Some((Held::Bytes(entry), Tier::Memory));
        }
        let (tiers, k) = (self.clone(), key.clone());
        let read = tokio::task::spawn_blocking(move || tiers.read(&k)).await;
        let held = match read {
            Ok(Ok(Some(held))) => held,
            // A blob from the bucket streams through a fill (verified as it arrives); a
            // manifest is small, checked whole, and lands on disk too.
            Ok(Ok(None)) if key.kind == ObjectKind::Manifest => {
                return self.bucket_manifest(key).await;
            }
            Ok(Ok(None)) => return None,
            Ok(Err(e)) => {
                tracing::warn!(digest = %key.digest, error = %e, "reading the disk store failed; treating as a miss");
                return None;
            }
            Err(_) => return None,
        };
        if let Held::Bytes(entry) = &held {
            self.memory.insert(memory_key, entry.clone());
        }
        Some((held, Tier::Disk))
    }

    /// A manifest from the bucket (checked against its digest there), landed on disk and
    /// in memory.
    async fn bucket_manifest(&self, key: &ObjectKey) -> Option<(Held, Tier)> {
        let (media_type, bytes) = self.bucket.as_ref()?.manifest(&key.digest).await?;
        let entry = Entry {
            bytes: bytes.clone(),
            media_type: Some(media_type.clone().into()),
        };
        let (disk, k) = (self.disk.clone(), key.clone());
        self.disk.store.write_behind(move || {
            let _ = disk.land_bytes(&k, Some(&media_type), &bytes, "bucket");
        });
        let memory_key = Key::Manifest(key.digest.clone());
        self.memory.insert(memory_key, entry.clone());
        Some((Held::Bytes(entry), Tier::Bucket))
    }

    /// Reads the object from disk: whole when memory admits it (checked against its
    /// digest, so memory never holds damaged bytes), else opened and pinned. Blocks.
    fn read(&self, key: &ObjectKey) -> io::Result<Option<Held>> {
        let digest = &key.digest;
        if key.kind == ObjectKind::Manifest {
            let found = self.disk.read_manifest(digest)?;
            return Ok(found.map(|(media_type, bytes)| {
                Held::Bytes(Entry {
                    bytes,
                    media_type: Some(media_type.into()),
                })
            }));
        }
        let Some((file, len, pin)) = self.disk.open_blob(digest)?.found() else {
            return Ok(None);
        };
        if !self.memory.admits(len) {
            let file = Arc::new(file);
            return Ok(Some(Held::File { file, len, pin }));
        }
        drop((file, pin));
        Ok(match self.disk.read_verified_blob(digest)? {
            Lookup::Found(bytes) => Some(Held::Bytes(Entry {
                bytes,
                media_type: None,
            })),
            Lookup::Missing | Lookup::Corrupt => None,
        })
    }
}
