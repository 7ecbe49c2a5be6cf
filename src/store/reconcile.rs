//! Bringing the daemon's disk index in line with the store when another process changed
//! it: `regcache import` and an in-process `prefetch` publish objects beside a running
//! daemon, `gc` and `verify` remove some. Without this, imported bytes would count against
//! the budget only after a restart, and removed ones would stay counted (and listed in the
//! snapshot) until a lookup tripped over them.
//!
//! One run lists the store's directories (names only, no per-file stat), compares the
//! names with the index in one pass under its lock (milliseconds for 10^5 objects), stats
//! just the files the index does not know, and checks again just the records whose file
//! was not listed. The disk task runs it every `index_flush_secs`, in turn with eviction,
//! so the two never race. Blocks.
//!
//! Races with the daemon's own work are settled so that nothing is lost: a file published
//! while the listing ran is in the index before it is compared, or adopted (its publisher
//! then replaces the record); a record is dropped only if its file is still absent when
//! checked again and the record was not replaced meanwhile (`Index::remove_generation`).
//! A file removed right after it was adopted (a corruption found by a read) leaves a
//! record that the next run drops.

use std::fs;
use std::io;

use super::files::Store;
use super::index::Index;
use super::persist::{modified_millis, read_snapshot, walk_keys, Recorded};

/// What one reconciliation changed in the index.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Objects found on disk that the index did not record.
    pub adopted: u64,
    pub adopted_bytes: u64,
    /// Records whose file is gone.
    pub dropped: u64,
    pub dropped_bytes: u64,
}

pub fn reconcile(store: &Store, index: &Index) -> io::Result<Reconciled> {
    let listed = walk_keys(store)?;
    let (unknown, unlisted) = index.compare(&listed);
    drop(listed);
    let mut done = Reconciled::default();
    // An in-process prefetch adds what it fetched to the snapshot: recency and origin.
    let recorded = match unknown.is_empty() {
        true => Recorded::new(),
        false => read_snapshot(store),
    };
    for key in unknown {
        let Ok(meta) = fs::metadata(store.path_of(&key)) else {
            continue; // removed again meanwhile
        };
        if !meta.is_file() {
            continue;
        }
        let record = recorded.get(&key).filter(|r| r.size == meta.len());
        let access = record.map_or_else(|| modified_millis(&meta), |r| r.last_access);
        let origin = record.and_then(|r| r.origin.as_deref());
        if index.insert_if_absent(key, meta.len(), access, origin) {
            done.adopted += 1;
            done.adopted_bytes += meta.len();
        }
    }
    for (key, generation) in unlisted {
        match fs::symlink_metadata(store.path_of(&key)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            _ => continue, // published after the listing: still there
        }
        if let Some(meta) = index.remove_generation(&key, generation) {
            done.dropped += 1;
            done.dropped_bytes += meta.size;
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::{Algorithm, Digest};
    use crate::store::files::ObjectKey;
    use crate::store::persist::merge_snapshot;
    use std::sync::Arc;

    use crate::store::files::put_test_blob as publish;

    #[test]
    fn objects_added_and_removed_by_others_are_adopted_and_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let index = Arc::new(Index::default());
        let ours = publish(&store, b"ours");
        index.insert(ours.clone(), 4, 1, Some("hub"));
        let gone = publish(&store, b"gone");
        index.insert(gone.clone(), 4, 1, Some("hub"));
        assert_eq!(reconcile(&store, &index).unwrap(), Reconciled::default());

        // Another process imports one object, prefetches another (saving its record in
        // the snapshot), and `gc` removes one.
        let imported = publish(&store, b"imported");
        let prefetched = publish(&store, b"prefetched!");
        let mut meta = index.get(&ours).unwrap();
        (meta.size, meta.last_access) = (11, 7);
        merge_snapshot(&store, &[(prefetched.clone(), meta)]).unwrap();
        store.remove(&gone).unwrap();
        let done = reconcile(&store, &index).unwrap();
        let expected = Reconciled {
            adopted: 2,
            adopted_bytes: 19,
            dropped: 1,
            dropped_bytes: 4,
        };
        assert_eq!(done, expected);
        assert_eq!(index.usage(), (3, 23));
        assert_eq!(index.get(&imported).unwrap().origin, None);
        let adopted = index.get(&prefetched).unwrap();
        assert_eq!(
            (adopted.origin.as_deref(), adopted.last_access),
            (Some("hub"), 7)
        );
        assert!(index.get(&gone).is_none());
        assert_eq!(reconcile(&store, &index).unwrap(), Reconciled::default());
    }

    #[test]
    fn a_record_replaced_since_the_comparison_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let index = Arc::new(Index::default());
        let key = ObjectKey::blob(&Digest::of(Algorithm::Sha256, b"x"));
        index.insert(key.clone(), 1, 1, None);
        let listed = walk_keys(&store).unwrap();
        let (_, unlisted) = index.compare(&listed);
        // Published again between the comparison and the removal.
        index.insert(key.clone(), 1, 2, None);
        assert!(index.remove_generation(&key, unlisted[0].1).is_none());
        assert_eq!(index.usage(), (1, 1));
    }
}
