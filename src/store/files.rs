//! The disk tier: a content-addressed store under `<dir>/v1/`.
//!
//! ```text
//! v1/blobs/sha256/ab/<hex>          blob bytes, exactly as upstream sent them
//! v1/manifests/sha256/ab/<hex>      "<media type>\n" then the manifest bytes
//! v1/tags/<upstream>/<repo>/_tags/<tag>   JSON tag record (`_tags` cannot be a repo component)
//! v1/lists/<upstream>/<repo>/<list>  a tag list or a digest's referrers, as last fetched
//! v1/tmp/                           fills and writes in progress; emptied at startup
//! v1/index                          sizes and last access of the objects (see `persist`)
//! v1/lock                           held (flock) by the one process that writes the store
//! ```
//!
//! Everything enters by rename from `tmp/` after an fsync, so a crash leaves either the old
//! state or the new one. All functions block: call them from `spawn_blocking`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::oci::{Digest, RepoName, Tag};

/// Bump when the layout changes; a new version lives beside the old, never on top of it.
pub const LAYOUT_VERSION: &str = "v1";

pub struct Store {
    root: PathBuf,
    next_temp: AtomicU64,
    /// The writer's exclusive lock (see `owner`), released when the store is dropped or
    /// the process dies. `None` for a reader.
    lock: Option<File>,
    /// Writes nobody waits for (manifests, tag and membership records), so shutdown and
    /// tests can wait for them.
    writes: tokio_util::task::TaskTracker,
}

/// The two kinds of content-addressed objects, each under its own directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectKind {
    Blob,
    Manifest,
}

impl ObjectKind {
    pub const ALL: [ObjectKind; 2] = [ObjectKind::Blob, ObjectKind::Manifest];

    pub fn dir_name(self) -> &'static str {
        match self {
            ObjectKind::Blob => "blobs",
            ObjectKind::Manifest => "manifests",
        }
    }
}

/// One object of the store: what the disk index and eviction work on.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ObjectKey {
    pub kind: ObjectKind,
    pub digest: Digest,
}

impl ObjectKey {
    pub fn blob(digest: &Digest) -> ObjectKey {
        ObjectKey {
            kind: ObjectKind::Blob,
            digest: digest.clone(),
        }
    }

    pub fn manifest(digest: &Digest) -> ObjectKey {
        ObjectKey {
            kind: ObjectKind::Manifest,
            digest: digest.clone(),
        }
    }
}

/// What looking up a stored object found.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<T> {
    Found(T),
    Missing,
    /// The file did not match its digest (or was malformed) and has been removed.
    Corrupt,
}

impl<T> Lookup<T> {
    pub fn found(self) -> Option<T> {
        match self {
            Lookup::Found(t) => Some(t),
            Lookup::Missing | Lookup::Corrupt => None,
        }
    }
}

/// A listing (`tags/list`, `referrers`) as upstream last gave it, whole.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ListRecord {
    /// The JSON answer, every page of it merged.
    pub body: String,
    /// Unix seconds of the last answer from upstream.
    pub checked_at: u64,
}

/// What a tag pointed at when regcache last asked upstream.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TagRecord {
    pub digest: Digest,
    pub media_type: String,
    /// Unix seconds of the last confirmation from upstream.
    pub checked_at: u64,
}

impl Store {
    /// Opens (creating) the store under `dir` as its one writer: takes the store's lock
    /// (see `owner`; another writer would delete this one's fills in progress) and removes
    /// what interrupted writes left. Fails at once, with [`super::owner::Taken`] inside
    /// the error, when another process holds it.
    pub fn open(dir: &Path) -> io::Result<Store> {
        let root = dir.join(LAYOUT_VERSION);
        for sub in ["blobs", "manifests", "tags"] {
            fs::create_dir_all(root.join(sub))?;
        }
        let lock = super::owner::lock(&root, dir)?;
        let tmp = root.join("tmp");
        if tmp.exists() {
            fs::remove_dir_all(&tmp)?;
        }
        fs::create_dir_all(&tmp)?;
        Ok(Store {
            root,
            next_temp: AtomicU64::new(0),
            lock: Some(lock),
            writes: Default::default(),
        })
    }

    /// Opens the store for a command that only reads it (export, stats), whoever writes
    /// it meanwhile: no lock, nothing created or removed. An object evicted while it is
    /// read stays readable through the open file.
    pub fn reader(dir: &Path) -> io::Result<Store> {
        let root = dir.join(LAYOUT_VERSION);
        if !root.join("blobs").is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} holds no regcache store", dir.display()),
            ));
        }
        Ok(Store {
            root,
            next_temp: AtomicU64::new(0),
            lock: None,
            writes: Default::default(),
        })
    }

    /// Writes the admin listener's address into the lock, so an operator command that
    /// finds the store taken can send its work to this process.
    pub fn announce_admin(&self, addr: std::net::SocketAddr) -> io::Result<()> {
        match &self.lock {
            Some(lock) => super::owner::announce(lock, addr),
            None => Ok(()),
        }
    }

    /// Runs `write` on the blocking pool without waiting for it, tracked for
    /// [`Store::settled`]. Needs a tokio runtime.
    pub fn write_behind(&self, write: impl FnOnce() + Send + 'static) {
        self.writes.spawn_blocking(write);
    }

    /// Waits until the writes started with [`Store::write_behind`] so far have ended (at
    /// shutdown, and in tests instead of a sleep).
    pub async fn settled(&self) {
        self.writes.close();
        self.writes.wait().await;
        self.writes.reopen();
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.object_path(ObjectKind::Blob, digest)
    }

    pub fn manifest_path(&self, digest: &Digest) -> PathBuf {
        self.object_path(ObjectKind::Manifest, digest)
    }

    pub fn path_of(&self, key: &ObjectKey) -> PathBuf {
        self.object_path(key.kind, &key.digest)
    }

    fn object_path(&self, kind: ObjectKind, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.root
            .join(kind.dir_name())
            .join(digest.algorithm().as_str())
            .join(&hex[..2])
            .join(hex)
    }

    /// Where the tag records of one upstream live.
    pub fn tags_dir(&self, upstream: &str) -> PathBuf {
        self.root.join("tags").join(upstream.replace(':', "_"))
    }

    fn tag_path(&self, upstream: &str, repo: &RepoName, tag: &Tag) -> PathBuf {
        self.tags_dir(upstream)
            .join(repo.as_str())
            .join("_tags")
            .join(tag.as_str())
    }

    /// A new, empty file in `tmp/`, open for reading and writing.
    pub fn temp_file(&self) -> io::Result<(File, PathBuf)> {
        let n = self.next_temp.fetch_add(1, Ordering::Relaxed);
        let path = self
            .root
            .join("tmp")
            .join(format!("{}-{n}", std::process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok((file, path))
    }

    /// Moves a synced temp file to its final path and makes the rename durable.
    pub fn publish(&self, temp: &Path, dest: &Path) -> io::Result<()> {
        let dir = dest.parent().expect("object paths have a parent");
        fs::create_dir_all(dir)?;
        fs::rename(temp, dest)?;
        File::open(dir)?.sync_all()
    }

    /// Removes a published object. Readers holding it open keep their bytes (unlink semantics).
    pub fn remove(&self, key: &ObjectKey) -> io::Result<()> {
        match fs::remove_file(self.path_of(key)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Writes `parts` to a temp file, syncs it and publishes it at `dest`.
    pub fn write_atomic(&self, dest: &Path, parts: &[&[u8]]) -> io::Result<()> {
        let (mut file, temp) = self.temp_file()?;
        let result = parts
            .iter()
            .try_for_each(|p| file.write_all(p))
            .and_then(|_| file.sync_all())
            .and_then(|_| self.publish(&temp, dest));
        if result.is_err() {
            let _ = fs::remove_file(&temp);
        }
        result
    }

    /// Opens a cached blob, with its length.
    pub fn open_blob(&self, digest: &Digest) -> io::Result<Option<(File, u64)>> {
        match File::open(self.blob_path(digest)) {
            Ok(file) => {
                let len = file.metadata()?.len();
                Ok(Some((file, len)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Whether `digest` is stored, as a blob or a manifest.
    pub fn holds(&self, digest: &Digest) -> bool {
        self.has_blob(digest) || self.manifest_path(digest).is_file()
    }

    /// Reads a whole cached blob (for small ones, on their way into the memory tier).
    pub fn read_blob(&self, digest: &Digest) -> io::Result<Option<Bytes>> {
        read_optional(&self.blob_path(digest)).map(|o| o.map(Bytes::from))
    }

    pub fn write_manifest(
        &self,
        digest: &Digest,
        media_type: &str,
        bytes: &[u8],
    ) -> io::Result<()> {
        let header = format!("{media_type}\n");
        self.write_atomic(&self.manifest_path(digest), &[header.as_bytes(), bytes])
    }

    /// A cached manifest and its media type. A record that does not hash to its digest
    /// (a damaged disk) is removed and reported as corrupt.
    pub fn read_manifest(&self, digest: &Digest) -> io::Result<Lookup<(String, Bytes)>> {
        let path = self.manifest_path(digest);
        let Some(data) = read_optional(&path)? else {
            return Ok(Lookup::Missing);
        };
        match parse_manifest(digest, data) {
            Some(found) => Ok(Lookup::Found(found)),
            None => {
                tracing::warn!(%digest, "cached manifest does not match its digest; removed");
                let _ = fs::remove_file(&path);
                Ok(Lookup::Corrupt)
            }
        }
    }

    pub fn read_tag(
        &self,
        upstream: &str,
        repo: &RepoName,
        tag: &Tag,
    ) -> io::Result<Option<TagRecord>> {
        let Some(data) = read_optional(&self.tag_path(upstream, repo, tag))? else {
            return Ok(None);
        };
        // A damaged record is a miss: upstream will be asked again.
        Ok(serde_json::from_slice(&data).ok())
    }

    /// Removes a tag record; false when there was none.
    pub fn remove_tag(&self, upstream: &str, repo: &RepoName, tag: &Tag) -> io::Result<bool> {
        match fs::remove_file(self.tag_path(upstream, repo, tag)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `list` is `tags` or `referrers-<alg>-<hex>`: never a path of its own.
    fn list_path(&self, upstream: &str, repo: &RepoName, list: &str) -> PathBuf {
        self.root
            .join("lists")
            .join(upstream.replace(':', "_"))
            .join(repo.as_str())
            .join(list)
    }

    /// A listing record; none when missing or damaged (upstream is asked again).
    pub fn read_list(
        &self,
        upstream: &str,
        repo: &RepoName,
        list: &str,
    ) -> io::Result<Option<ListRecord>> {
        let data = read_optional(&self.list_path(upstream, repo, list))?;
        Ok(data.and_then(|d| serde_json::from_slice(&d).ok()))
    }

    /// Removes a repository's listing records (not those of repositories below it).
    pub fn remove_lists(&self, upstream: &str, repo: &RepoName) -> io::Result<()> {
        let dir = self.list_path(upstream, repo, "");
        for entry in list_dir(&dir)? {
            if entry.file_type().is_ok_and(|t| t.is_file()) {
                fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }

    pub fn write_list(
        &self,
        upstream: &str,
        repo: &RepoName,
        list: &str,
        record: &ListRecord,
    ) -> io::Result<()> {
        let json = serde_json::to_vec(record).expect("a list record serializes");
        self.write_atomic(&self.list_path(upstream, repo, list), &[&json])
    }

    pub fn write_tag(
        &self,
        upstream: &str,
        repo: &RepoName,
        tag: &Tag,
        record: &TagRecord,
    ) -> io::Result<()> {
        let json = serde_json::to_vec(record).expect("a tag record serializes");
        self.write_atomic(&self.tag_path(upstream, repo, tag), &[&json])
    }
}

/// The entries of a directory; none when it does not exist (yet). Blocks.
pub(super) fn list_dir(dir: &Path) -> io::Result<Vec<fs::DirEntry>> {
    match fs::read_dir(dir) {
        Ok(entries) => Ok(entries.flatten().collect()),
        Err(e)
            if e.kind() == io::ErrorKind::NotFound || e.kind() == io::ErrorKind::NotADirectory =>
        {
            Ok(Vec::new())
        }
        Err(e) => Err(e),
    }
}

/// Splits a manifest record into media type and body, if the body hashes to `digest`.
pub fn parse_manifest(digest: &Digest, mut data: Vec<u8>) -> Option<(String, Bytes)> {
    let newline = data.iter().position(|&b| b == b'\n')?;
    let body = Bytes::from(data.split_off(newline + 1));
    let media_type = String::from_utf8_lossy(&data[..newline]).into_owned();
    (Digest::of(digest.algorithm(), &body) == *digest).then_some((media_type, body))
}

fn read_optional(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(data) => Ok(Some(data)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Unix milliseconds: the clock of the disk index (seconds would tie too often).
pub fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Stores `data` as a blob under its sha256, for unit tests of what reads the store.
#[cfg(test)]
pub fn put_test_blob(store: &Store, data: &[u8]) -> ObjectKey {
    let key = ObjectKey::blob(&Digest::of(crate::oci::Algorithm::Sha256, data));
    store.write_atomic(&store.path_of(&key), &[data]).unwrap();
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Algorithm;

    #[test]
    fn manifests_round_trip_and_damage_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let body = br#"{"schemaVersion":2}"#;
        let digest = Digest::of(Algorithm::Sha256, body);
        store
            .write_manifest(&digest, "application/x", body)
            .unwrap();
        let (media_type, read) = store.read_manifest(&digest).unwrap().found().unwrap();
        assert_eq!(
            (media_type.as_str(), &read[..]),
            ("application/x", &body[..])
        );

        let path = store.manifest_path(&digest);
        assert!(path.starts_with(dir.path().join("v1/manifests/sha256")));
        fs::write(&path, b"application/x\n{}").unwrap();
        assert_eq!(store.read_manifest(&digest).unwrap(), Lookup::Corrupt);
        assert!(!path.exists());
    }

    #[test]
    fn startup_removes_leftovers_but_keeps_objects() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (_, temp) = store.temp_file().unwrap();
        let digest = Digest::of(Algorithm::Sha256, b"x");
        let (mut f, t2) = store.temp_file().unwrap();
        f.write_all(b"x").unwrap();
        store.publish(&t2, &store.blob_path(&digest)).unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert!(!temp.exists());
        assert_eq!(store.open_blob(&digest).unwrap().unwrap().1, 1);
    }

    #[test]
    fn a_second_daemon_is_refused_and_removes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (_, temp) = store.temp_file().unwrap();
        let e = Store::open(dir.path()).err().expect("the store is locked");
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        let message = e.to_string();
        assert!(
            message.contains(&dir.path().display().to_string()),
            "{message}"
        );
        assert!(
            message.contains(&std::process::id().to_string()),
            "{message}"
        );
        assert!(temp.exists(), "the first daemon's fill is left alone");
        let taken = super::super::owner::taken(&e).expect("the owner is named");
        assert_eq!(taken.owner.pid, std::process::id());
        assert_eq!(taken.owner.admin, None);
        let admin = "127.0.0.1:9091".parse().unwrap();
        store.announce_admin(admin).unwrap();
        let e = Store::open(dir.path()).err().expect("still locked");
        let taken = super::super::owner::taken(&e).unwrap();
        assert_eq!(taken.owner.admin, Some(admin));
        // A reader takes no lock.
        Store::reader(dir.path()).unwrap();
        drop(store);
        Store::open(dir.path()).expect("free once the first daemon is gone");
    }

    #[test]
    fn tags_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let repo: RepoName = "library/nginx".parse().unwrap();
        let tag: Tag = "1.27".parse().unwrap();
        let record = TagRecord {
            digest: Digest::of(Algorithm::Sha256, b"m"),
            media_type: "m".into(),
            checked_at: 7,
        };
        store
            .write_tag("127.0.0.1:5000", &repo, &tag, &record)
            .unwrap();
        assert_eq!(
            store.read_tag("127.0.0.1:5000", &repo, &tag).unwrap(),
            Some(record)
        );
        let other: Tag = "latest".parse().unwrap();
        assert_eq!(
            store.read_tag("127.0.0.1:5000", &repo, &other).unwrap(),
            None
        );
    }
}
