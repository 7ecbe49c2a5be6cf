//! Loading and saving the disk index: a walk of the store at startup, and a compact
//! snapshot of each object's published size and last access at `<dir>/v1/index`.
//!
//! The snapshot is rewritten whole (temp file, fsync, rename) every `index_flush_secs` when
//! something changed, and at shutdown: one sequential write per interval, however many hits,
//! where touching file times would cost a metadata write per object (and atime is often
//! off). A crash loses at most one interval of recency, never an object. All functions
//! here block: call them from `spawn_blocking`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::time::UNIX_EPOCH;

use super::files::{list_dir, ObjectKey, ObjectKind, Store};
use super::index::{Index, Meta};
use crate::oci::Digest;

const HEADER: &str = "regcache-index 1";
const SNAPSHOT: &str = "index";

/// An object file found by a walk of the store.
#[derive(Debug)]
pub struct Found {
    pub key: ObjectKey,
    pub len: u64,
    /// Unix milliseconds of the file's last modification (its publish).
    pub modified: u64,
}

/// What the last snapshot recorded about one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub size: u64,
    pub last_access: u64,
    pub origin: Option<String>,
}

/// Records by object, from the last snapshot.
pub type Recorded = HashMap<ObjectKey, Record>;

/// Every object file in the store (temp files are not objects and are not listed).
pub fn walk(store: &Store) -> io::Result<Vec<Found>> {
    let mut found = Vec::new();
    visit(store, &mut |key, file| {
        let Ok(meta) = file.metadata() else { return };
        if meta.is_file() {
            found.push(Found {
                key,
                len: meta.len(),
                modified: modified_millis(&meta),
            });
        }
    })?;
    Ok(found)
}

/// Calls `each` for every entry of the object directories whose name is a digest.
fn visit(store: &Store, each: &mut dyn FnMut(ObjectKey, &fs::DirEntry)) -> io::Result<()> {
    for kind in ObjectKind::ALL {
        let dir = store.root().join(kind.dir_name());
        for algorithm in list_dir(&dir)? {
            let algorithm_name = algorithm.file_name().to_string_lossy().into_owned();
            for prefix in list_dir(&algorithm.path())? {
                for file in list_dir(&prefix.path())? {
                    let name = file.file_name().to_string_lossy().into_owned();
                    let Ok(digest) = format!("{algorithm_name}:{name}").parse::<Digest>() else {
                        continue;
                    };
                    each(ObjectKey { kind, digest }, &file);
                }
            }
        }
    }
    Ok(())
}

/// Unix milliseconds of a file's last modification (for an object, its publish).
fn modified_millis(meta: &fs::Metadata) -> u64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64)
}

/// The last snapshot's records; empty when there is none or it is unreadable.
pub fn read_snapshot(store: &Store) -> Recorded {
    let Ok(text) = fs::read_to_string(store.root().join(SNAPSHOT)) else {
        return Recorded::new();
    };
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        return Recorded::new();
    }
    // A damaged line loses one object's recency, nothing more.
    lines.filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<(ObjectKey, Record)> {
    let mut fields = line.split(' ');
    let kind = match fields.next()? {
        "b" => ObjectKind::Blob,
        "m" => ObjectKind::Manifest,
        _ => return None,
    };
    let digest = fields.next()?.parse().ok()?;
    let record = Record {
        size: fields.next()?.parse().ok()?,
        last_access: fields.next()?.parse().ok()?,
        origin: fields.next().filter(|o| !o.is_empty()).map(str::to_string),
    };
    Some((ObjectKey { kind, digest }, record))
}

pub fn write_snapshot(store: &Store, records: &[(ObjectKey, Meta)]) -> io::Result<()> {
    let records = records
        .iter()
        .map(|(key, meta)| (key, meta.size, meta.last_access, meta.origin.as_deref()));
    write_records(store, records)
}

/// Writes (key, size, last access, origin) records as the snapshot.
fn write_records<'a>(
    store: &Store,
    records: impl ExactSizeIterator<Item = (&'a ObjectKey, u64, u64, Option<&'a str>)>,
) -> io::Result<()> {
    let mut text = String::with_capacity(32 + records.len() * 96);
    text.push_str(HEADER);
    text.push('\n');
    for (key, size, last_access, origin) in records {
        let kind = match key.kind {
            ObjectKind::Blob => 'b',
            ObjectKind::Manifest => 'm',
        };
        let _ = write!(text, "{kind} {} {size} {last_access}", key.digest);
        // Upstream names are validated to hold no spaces.
        if let Some(origin) = origin {
            let _ = write!(text, " {origin}");
        }
        text.push('\n');
    }
    store.write_atomic(&store.root().join(SNAPSHOT), &[text.as_bytes()])
}

/// What loading the index found.
#[derive(Debug, Default)]
pub struct Loaded {
    pub objects: u64,
    /// Objects whose file length differed from their recorded size; removed.
    pub corrupt: Vec<ObjectKey>,
}

/// Fills `index` from the snapshot alone: sizes, recency and origins as last saved, no
/// file looked at. Returns how many records it read. The store may differ from it
/// (a crash after a publish, files removed by hand): [`reconcile`] then makes the index
/// match the files, and a read checks its file's length meanwhile.
pub fn load_snapshot(store: &Store, index: &Index) -> u64 {
    let Ok(text) = fs::read_to_string(store.root().join(SNAPSHOT)) else {
        return 0;
    };
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        return 0;
    }
    // Straight into the index: no map of records in between. A line is about 100 bytes.
    index.reserve(text.len() / 100);
    let mut n = 0;
    for (key, record) in lines.filter_map(parse_line) {
        let origin = record.origin.as_deref();
        index.insert_if_absent(key, record.size, record.last_access, origin);
        n += 1;
    }
    n
}

/// Walks the store and makes `index` match it: files it does not record are adopted,
/// files whose length differs from the recorded size are removed as corrupt, and records
/// made before `cutoff` (a generation from [`Index::generation_mark`]) of files that are
/// gone are dropped. Records published during the walk are left alone.
pub fn reconcile(store: &Store, index: &Index, cutoff: u64) -> io::Result<Loaded> {
    let mut loaded = Loaded::default();
    let mut listed = std::collections::HashSet::new();
    for found in walk(store)? {
        match index.get(&found.key) {
            Some(meta) if meta.size != found.len => {
                tracing::warn!(digest = %found.key.digest, recorded = meta.size,
                    on_disk = found.len, "cached object changed size on disk; removed");
                store.remove(&found.key)?;
                index.remove(&found.key);
                loaded.corrupt.push(found.key);
                continue;
            }
            Some(_) => {}
            None => {
                index.insert_if_absent(found.key.clone(), found.len, found.modified, None);
            }
        }
        loaded.objects += 1;
        listed.insert(found.key);
    }
    let (_, unlisted) = index.compare(&listed);
    for (key, generation) in unlisted.into_iter().filter(|(_, g)| *g < cutoff) {
        index.remove_generation(&key, generation);
    }
    Ok(loaded)
}

/// Fills `index` from the snapshot, then from a walk of the store (as `Disk::load` does).
#[cfg(test)]
fn load(store: &Store, index: &Index) -> io::Result<Loaded> {
    load_snapshot(store, index);
    reconcile(store, index, index.generation_mark())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use crate::store::files::put_test_blob as publish;

    #[test]
    fn recency_survives_a_restart_and_truncation_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (a, b) = (publish(&store, b"aaaa"), publish(&store, b"bbbbbbbb"));
        let index = Arc::new(Index::default());
        load(&store, &index).unwrap();
        assert_eq!(index.usage(), (2, 12));
        index.touch(&a, 42);
        write_snapshot(&store, &index.snapshot(false).unwrap()).unwrap();
        assert!(index.snapshot(false).is_none(), "nothing changed since");

        // Damage b behind the index's back, then "restart".
        fs::write(store.path_of(&b), b"bb").unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let index = Index::default();
        let loaded = load(&store, &index).unwrap();
        assert_eq!(loaded.corrupt, std::slice::from_ref(&b));
        assert!(!store.path_of(&b).exists());
        assert_eq!(index.get(&a).unwrap().last_access, 42);
        assert_eq!(index.usage(), (1, 4));
    }

    #[test]
    fn the_walk_corrects_what_the_snapshot_said() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (gone, kept) = (publish(&store, b"gone"), publish(&store, b"kept"));
        let index = Index::default();
        load(&store, &index).unwrap();
        write_snapshot(&store, &index.snapshot(true).unwrap()).unwrap();
        fs::remove_file(store.path_of(&gone)).unwrap();
        let unrecorded = publish(&store, b"unrecorded");

        let index = Arc::new(Index::default());
        assert_eq!(load_snapshot(&store, &index), 2);
        let cutoff = index.generation_mark();
        // Published while the walk has not reached it yet: not the snapshot's to drop.
        let new = ObjectKey::blob(&crate::oci::Digest::of(
            crate::oci::Algorithm::Sha256,
            b"new",
        ));
        index.insert(new.clone(), 3, 1, None);
        let loaded = reconcile(&store, &index, cutoff).unwrap();
        assert_eq!(loaded.objects, 2);
        assert!(index.get(&gone).is_none(), "its file is gone");
        assert!(index.get(&kept).is_some() && index.get(&unrecorded).is_some());
        assert!(index.get(&new).is_some());
    }

    #[test]
    fn a_damaged_snapshot_is_ignored_line_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = publish(&store, b"a");
        let line = format!("{HEADER}\nb {} 1 7 hub\nx y\nb sha256:zz 1 2\n", a.digest);
        fs::write(store.root().join(SNAPSHOT), line).unwrap();
        let record = Record {
            size: 1,
            last_access: 7,
            origin: Some("hub".into()),
        };
        assert_eq!(read_snapshot(&store).get(&a), Some(&record));
        assert_eq!(read_snapshot(&store).len(), 1);
    }
}
