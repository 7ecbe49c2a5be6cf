//! The one door into the store. Fills, manifests and imports alike publish through here,
//! and only what hashes to the digest it is named by gets in: after an fsync, by rename,
//! then recorded in the index (pinned for the caller) so the budget counts it at once.
//! A failed landing leaves nothing behind.

use std::fs::File;
use std::io;
use std::path::Path;

use super::disk::Disk;
use super::files::{ObjectKey, ObjectKind};
use super::index::Pin;
use crate::oci::Digest;

/// Why an object did not land.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("the bytes have the digest {0}")]
    Mismatch(Digest),
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl Disk {
    /// Publishes the blob written to `temp` (through `file`, when still open) as `digest`,
    /// if `actual`, what its bytes hashed to as they were written, is that digest. Blocks.
    pub fn land(
        &self,
        file: Option<&File>,
        temp: &Path,
        digest: &Digest,
        actual: &Digest,
        size: u64,
        origin: &str,
    ) -> Result<Pin, Refused> {
        let landed = if actual != digest {
            Err(Refused::Mismatch(actual.clone()))
        } else {
            let store = &self.store;
            file.map_or(Ok(()), File::sync_all)
                .and_then(|_| store.publish(temp, &store.blob_path(digest)))
                .map_err(Refused::from)
        };
        if let Err(e) = landed {
            let _ = std::fs::remove_file(temp);
            if let Refused::Io(e) = &e {
                self.note_write_error("publishing a verified blob", e, size);
            }
            return Err(e);
        }
        Ok(self.published(ObjectKey::blob(digest), size, origin))
    }

    /// Publishes an object whole in memory (a manifest with its media type, or a small
    /// blob), checked against `key`'s digest here. Blocks.
    pub fn land_bytes(
        &self,
        key: &ObjectKey,
        media_type: Option<&str>,
        body: &[u8],
        origin: &str,
    ) -> Result<Pin, Refused> {
        let actual = Digest::of(key.digest.algorithm(), body);
        if actual != key.digest {
            return Err(Refused::Mismatch(actual));
        }
        let store = &self.store;
        let (written, size) = match (key.kind, media_type) {
            (ObjectKind::Manifest, Some(media_type)) => (
                store.write_manifest(&key.digest, media_type, body),
                (media_type.len() + 1 + body.len()) as u64,
            ),
            _ => (
                store.write_atomic(&store.path_of(key), &[body]),
                body.len() as u64,
            ),
        };
        if let Err(e) = written {
            self.note_write_error("writing a verified object", &e, size);
            return Err(e.into());
        }
        Ok(self.published(key.clone(), size, origin))
    }
}
