//! OCI image layout archives: `export` writes cached images as a tar holding `oci-layout`,
//! `index.json` (one entry per image, named by `org.opencontainers.image.ref.name`) and
//! `blobs/<alg>/<hex>`; `import` loads such an archive into a cache.
//!
//! Export streams each blob from the store into the tar (hashing it on the way, so damaged
//! cache content never leaves); it only reads, so it runs while a daemon owns the store. Import reads
//! the tar as a stream (a file, or a request body to the daemon's admin API) and writes
//! through the store's owner ([`Disk`], see `store::owner`): each large blob goes to a
//! temp file while hashing and enters through `Disk::land`, as a fill does; manifests
//! (small JSON) are held in memory until `index.json` says what they are. Everything here
//! blocks.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use bytes::Bytes;
use serde_json::json;

use super::image::{contents, Contents, ContentsError, Descriptor, ImageRef};
use crate::config::{Config, UpstreamConfig};
use crate::oci::{media, Digest, Reference, RepoName, Tag};
use crate::store::{unix_millis, Disk, Lookup, ObjectKey, Refused, Store};
use crate::upstream::router::{Router, UnknownNamespace};
use crate::upstream::MAX_MANIFEST_BYTES;

/// The annotation naming an image in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
const OCI_LAYOUT: &str = r#"{"imageLayoutVersion":"1.0.0"}"#;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    #[error(transparent)]
    Route(#[from] UnknownNamespace),
    #[error("{image}: {what} is not cached; prefetch it first")]
    NotCached { image: String, what: String },
    #[error("manifest {digest}: {source}")]
    Manifest {
        digest: Digest,
        source: ContentsError,
    },
    #[error("{what} {expected} has the digest {actual}: damaged; nothing was written for it")]
    Mismatch {
        what: &'static str,
        expected: Digest,
        actual: Digest,
    },
    #[error("not an OCI image layout archive: {0}")]
    Format(String),
    #[error("no upstream is named {0:?}; the config has: {1}")]
    NoUpstream(String, String),
}

fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> ArchiveError {
    let context = context.into();
    move |source| ArchiveError::Io { context, source }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct ExportReport {
    pub images: usize,
    pub manifests: usize,
    pub blobs: usize,
    pub bytes: u64,
    /// Children of an index that are not cached (left out; the layout allows it).
    pub skipped: Vec<String>,
}

/// Writes `images` from the cache of `config` to `output` (through `<output>.partial`, so
/// a failed export leaves no archive behind).
pub fn export(
    config: &Config,
    images: &[ImageRef],
    output: &Path,
) -> Result<ExportReport, ArchiveError> {
    let store = Store::reader(&config.cache.dir).map_err(io_error("opening the cache"))?;
    let router = Router::new(&config.upstreams);
    let mut report = ExportReport::default();
    let mut manifests: Vec<(Digest, Bytes)> = Vec::new();
    let mut blobs: Vec<(Digest, u64)> = Vec::new();
    let mut seen = HashSet::new();
    let mut index = Vec::new();
    for image in images {
        let routed = image.route(&router)?;
        let upstream = &config.upstreams[routed.upstream].name;
        let digest = match &image.reference {
            Reference::Digest(d) => d.clone(),
            Reference::Tag(tag) => tagged(&store, upstream, &routed.name, tag)
                .map_err(io_error("reading a tag record"))?
                .ok_or_else(|| ArchiveError::NotCached {
                    image: image.text.clone(),
                    what: format!("tag {tag} of {upstream}/{}", routed.name),
                })?,
        };
        let (media_type, body) = cached_manifest(&store, image, &digest)?;
        index.push(json!({
            "mediaType": media_type,
            "digest": digest.to_string(),
            "size": body.len(),
            "annotations": { REF_NAME: image.text },
        }));
        let mut walk = Walk {
            store: &store,
            image,
            manifests: &mut manifests,
            blobs: &mut blobs,
            seen: &mut seen,
            skipped: &mut report.skipped,
        };
        walk.manifest(&digest, body, true)?;
        report.images += 1;
    }
    report.manifests = manifests.len();
    report.blobs = blobs.len();
    let index = json!({ "schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": index });
    let partial = partial_path(output);
    let written = write_archive(&store, &partial, &index, &manifests, &blobs).and_then(|bytes| {
        fs::rename(&partial, output)
            .map_err(io_error(format!("renaming to {}", output.display())))?;
        Ok(bytes)
    });
    match written {
        Ok(bytes) => {
            report.bytes = bytes;
            Ok(report)
        }
        Err(e) => {
            let _ = fs::remove_file(&partial);
            Err(e)
        }
    }
}

fn partial_path(output: &Path) -> PathBuf {
    let mut name = output.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    output.with_file_name(name)
}

fn tagged(store: &Store, upstream: &str, repo: &RepoName, tag: &Tag) -> io::Result<Option<Digest>> {
    Ok(store
        .read_tag(upstream, repo, tag)?
        .map(|record| record.digest))
}

fn cached_manifest(
    store: &Store,
    image: &ImageRef,
    digest: &Digest,
) -> Result<(String, Bytes), ArchiveError> {
    match store
        .read_manifest(digest)
        .map_err(io_error(format!("reading manifest {digest}")))?
    {
        Lookup::Found(found) => Ok(found),
        Lookup::Missing | Lookup::Corrupt => Err(ArchiveError::NotCached {
            image: image.text.clone(),
            what: format!("manifest {digest}"),
        }),
    }
}

/// Collects what an image needs: its manifests and every blob they reference.
struct Walk<'a> {
    store: &'a Store,
    image: &'a ImageRef,
    manifests: &'a mut Vec<(Digest, Bytes)>,
    blobs: &'a mut Vec<(Digest, u64)>,
    seen: &'a mut HashSet<Digest>,
    skipped: &'a mut Vec<String>,
}

impl Walk<'_> {
    fn manifest(&mut self, digest: &Digest, body: Bytes, root: bool) -> Result<(), ArchiveError> {
        if !self.seen.insert(digest.clone()) {
            return Ok(());
        }
        let parsed = contents(&body).map_err(|source| ArchiveError::Manifest {
            digest: digest.clone(),
            source,
        })?;
        self.manifests.push((digest.clone(), body));
        match parsed {
            Contents::Index(children) => {
                for child in children {
                    match self.store.read_manifest(&child.digest) {
                        Ok(Lookup::Found((_, body))) if root => {
                            self.manifest(&child.digest, body, false)?
                        }
                        _ => self
                            .skipped
                            .push(format!("{}: {}", self.image, child.digest)),
                    }
                }
            }
            Contents::Image(descriptors) => {
                for d in descriptors {
                    self.blob(&d)?;
                }
            }
        }
        Ok(())
    }

    fn blob(&mut self, d: &Descriptor) -> Result<(), ArchiveError> {
        if !self.seen.insert(d.digest.clone()) {
            return Ok(());
        }
        let len = match self.store.open_blob(&d.digest) {
            Ok(Some((_, len))) if d.size == 0 || len == d.size => len,
            _ => {
                return Err(ArchiveError::NotCached {
                    image: self.image.text.clone(),
                    what: format!("blob {}", d.digest),
                })
            }
        };
        self.blobs.push((d.digest.clone(), len));
        Ok(())
    }
}

fn write_archive(
    store: &Store,
    path: &Path,
    index: &serde_json::Value,
    manifests: &[(Digest, Bytes)],
    blobs: &[(Digest, u64)],
) -> Result<u64, ArchiveError> {
    let file = File::create(path).map_err(io_error(format!("creating {}", path.display())))?;
    let mut tar = tar::Builder::new(io::BufWriter::with_capacity(1 << 20, file));
    let failed = io_error(format!("writing {}", path.display()));
    let index = serde_json::to_vec_pretty(index).expect("JSON serializes");
    let result = (|| -> Result<u64, ArchiveError> {
        append(
            &mut tar,
            "oci-layout",
            OCI_LAYOUT.len() as u64,
            OCI_LAYOUT.as_bytes(),
        )?;
        append(&mut tar, "index.json", index.len() as u64, &index[..])?;
        let mut dirs = HashSet::new();
        let mut bytes = 0;
        for (digest, body) in manifests {
            dir(&mut tar, &mut dirs, digest)?;
            append(&mut tar, &blob_name(digest), body.len() as u64, &body[..])?;
            bytes += body.len() as u64;
        }
        for (digest, len) in blobs {
            dir(&mut tar, &mut dirs, digest)?;
            let (file, _) = store.open_blob(digest)?.ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("blob {digest} was evicted meanwhile"),
                )
            })?;
            let mut hashing = HashingReader {
                inner: file.take(*len),
                hasher: Some(digest.hasher()),
            };
            append(&mut tar, &blob_name(digest), *len, &mut hashing)?;
            let actual = hashing.hasher.take().expect("once").finish();
            if actual != *digest {
                return Err(ArchiveError::Mismatch {
                    what: "cached blob",
                    expected: digest.clone(),
                    actual,
                });
            }
            bytes += len;
        }
        let mut out = tar.into_inner()?;
        out.flush()?;
        out.get_ref().sync_all()?;
        Ok(bytes)
    })();
    result.map_err(|e| match e {
        ArchiveError::Io { source, .. } => failed(source),
        other => other,
    })
}

impl From<io::Error> for ArchiveError {
    fn from(source: io::Error) -> ArchiveError {
        ArchiveError::Io {
            context: "archive".into(),
            source,
        }
    }
}

fn blob_name(digest: &Digest) -> String {
    format!("blobs/{}/{}", digest.algorithm().as_str(), digest.hex())
}

fn dir<W: Write>(
    tar: &mut tar::Builder<W>,
    dirs: &mut HashSet<&'static str>,
    digest: &Digest,
) -> io::Result<()> {
    let by_algorithm = match digest.algorithm().as_str() {
        "sha256" => "blobs/sha256/",
        _ => "blobs/sha512/",
    };
    for name in ["blobs/", by_algorithm] {
        if dirs.insert(name) {
            let mut header = tar::Header::new_ustar();
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            header.set_mtime(0);
            tar.append_data(&mut header, name, io::empty())?;
        }
    }
    Ok(())
}

fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    len: u64,
    data: impl Read,
) -> io::Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o644);
    header.set_size(len);
    header.set_mtime(0);
    tar.append_data(&mut header, name, data)
}

struct HashingReader<R> {
    inner: R,
    hasher: Option<crate::oci::Hasher>,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        Ok(n)
    }
}

#[derive(Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImportReport {
    pub manifests: usize,
    /// Blobs written now, and those the cache already held.
    pub blobs: usize,
    pub already: usize,
    pub bytes: u64,
    /// Tag records written, as `upstream/repo:tag`.
    pub tags: Vec<String>,
    /// Ref names that name no `repo:tag` (their content is imported, reachable by digest).
    pub untagged: Vec<String>,
}

/// Loads an OCI image layout archive (`archive`, read once, front to back) into the store
/// `disk` owns. Tags go under the upstream named `upstream`, or else the one each ref name
/// routes to among `upstreams` (the default upstream when it names no registry).
pub fn import(
    disk: &Disk,
    upstreams: &[UpstreamConfig],
    archive: impl Read,
    upstream: Option<&str>,
) -> Result<ImportReport, ArchiveError> {
    let chosen = match upstream {
        Some(name) => Some(upstreams.iter().find(|u| u.name == name).ok_or_else(|| {
            let names: Vec<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
            ArchiveError::NoUpstream(name.to_string(), names.join(", "))
        })?),
        None => None,
    };
    // The index's origin of what is imported, for the lifecycle rules.
    let origin = chosen.unwrap_or(&upstreams[0]).name.as_str();
    let store = &disk.store;
    let mut report = ImportReport::default();
    let mut held: HashMap<Digest, Bytes> = HashMap::new();
    let mut index: Option<Vec<u8>> = None;
    let mut stored: HashSet<Digest> = HashSet::new();
    let mut tar = tar::Archive::new(io::BufReader::with_capacity(1 << 20, archive));
    let reading = || io_error("reading the archive");
    for entry in tar.entries().map_err(reading())? {
        let mut entry = entry.map_err(reading())?;
        let path = entry.path().map_err(reading())?.into_owned();
        let parts: Vec<String> = path
            .components()
            .filter_map(|c| match c {
                Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect();
        let len = entry.size();
        match parts.iter().map(String::as_str).collect::<Vec<_>>()[..] {
            ["index.json"] => index = Some(read_small(&mut entry, len, "index.json")?),
            ["blobs", alg, hex] if entry.header().entry_type().is_file() => {
                let digest: Digest = format!("{alg}:{hex}").parse().map_err(|_| {
                    ArchiveError::Format(format!("{} is not a blob name", path.display()))
                })?;
                if len <= MAX_MANIFEST_BYTES {
                    let body = read_small(&mut entry, len, "a blob")?;
                    let actual = Digest::of(digest.algorithm(), &body);
                    if actual != digest {
                        return Err(ArchiveError::Mismatch {
                            what: "archived blob",
                            expected: digest,
                            actual,
                        });
                    }
                    held.insert(digest, body.into());
                } else if store.has_blob(&digest) {
                    io::copy(&mut entry, &mut io::sink()).map_err(reading())?;
                    report.already += 1;
                    stored.insert(digest);
                } else {
                    copy_into_store(disk, &mut entry, &digest, origin)?;
                    report.blobs += 1;
                    report.bytes += len;
                    stored.insert(digest);
                }
            }
            _ => {}
        }
    }
    let index = index.ok_or_else(|| ArchiveError::Format("it has no index.json".into()))?;
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(flatten)]
        descriptor: Descriptor,
        #[serde(default)]
        annotations: HashMap<String, String>,
    }
    #[derive(serde::Deserialize)]
    struct Index {
        manifests: Vec<Entry>,
    }
    let index: Index = serde_json::from_slice(&index)
        .map_err(|e| ArchiveError::Format(format!("index.json: {e}")))?;
    let mut manifests = HashSet::new();
    let mut needed = Vec::new();
    for entry in &index.manifests {
        collect(&entry.descriptor, &held, &mut manifests, &mut needed, true)?;
    }
    // Blobs first, manifests after, tags last: nothing points at what is not there yet.
    for digest in needed {
        if stored.contains(&digest) || manifests.contains(&digest) {
            continue;
        }
        match held.get(&digest) {
            Some(body) if store.has_blob(&digest) => {
                report.already += 1;
                let _ = body;
            }
            Some(body) => {
                land_bytes(disk, &ObjectKey::blob(&digest), None, body, origin)?;
                report.blobs += 1;
                report.bytes += body.len() as u64;
            }
            None if store.has_blob(&digest) => report.already += 1,
            None => {
                return Err(ArchiveError::Format(format!("it lacks blob {digest}")));
            }
        }
        stored.insert(digest);
    }
    let mut types: HashMap<Digest, String> = HashMap::new();
    for entry in &index.manifests {
        remember_types(&entry.descriptor, &held, &mut types);
    }
    for digest in &manifests {
        let body = &held[digest];
        let media_type = types
            .get(digest)
            .cloned()
            .unwrap_or_else(|| media::OCI_MANIFEST.to_string());
        let key = ObjectKey::manifest(digest);
        land_bytes(disk, &key, Some(&media_type), body, origin)?;
        report.manifests += 1;
    }
    let router = Router::new(upstreams);
    for entry in &index.manifests {
        let Some(name) = entry.annotations.get(REF_NAME) else {
            continue;
        };
        let image = match name.parse::<ImageRef>() {
            Ok(image) if name.contains(':') || name.contains('@') => image,
            _ => {
                report.untagged.push(name.clone());
                continue;
            }
        };
        let Some(tag) = image.tag() else {
            report.untagged.push(name.clone());
            continue;
        };
        let (upstream, repo) = match chosen {
            Some(u) => (u, prefixed(u, &image.name)),
            None => {
                let routed = image.route(&router)?;
                (&upstreams[routed.upstream], routed.name)
            }
        };
        let digest = &entry.descriptor.digest;
        let record = crate::store::TagRecord {
            digest: digest.clone(),
            media_type: types
                .get(digest)
                .cloned()
                .unwrap_or_else(|| media::OCI_MANIFEST.to_string()),
            checked_at: unix_millis() / 1000,
        };
        store
            .write_tag(&upstream.name, &repo, tag, &record)
            .map_err(io_error(format!("writing the tag record of {name}")))?;
        // Without this the daemon would not hand the imported content out for `repo`.
        crate::store::record_image(store, &upstream.name, &upstream.trust_domain, &repo, digest)
            .map_err(io_error(format!("recording what {name} contains")))?;
        report.tags.push(format!("{}/{repo}:{tag}", upstream.name));
    }
    Ok(report)
}

fn prefixed(upstream: &UpstreamConfig, name: &RepoName) -> RepoName {
    if upstream.library_prefix {
        name.with_library_prefix()
    } else {
        name.clone()
    }
}

/// Finds the manifests an index.json entry reaches (all must be in `held`, except children
/// of an index, which may be missing) and the blobs they need.
fn collect(
    d: &Descriptor,
    held: &HashMap<Digest, Bytes>,
    manifests: &mut HashSet<Digest>,
    needed: &mut Vec<Digest>,
    root: bool,
) -> Result<(), ArchiveError> {
    let Some(body) = held.get(&d.digest) else {
        if root {
            return Err(ArchiveError::Format(format!(
                "it lacks manifest {}",
                d.digest
            )));
        }
        return Ok(());
    };
    if !manifests.insert(d.digest.clone()) {
        return Ok(());
    }
    match contents(body).map_err(|source| ArchiveError::Manifest {
        digest: d.digest.clone(),
        source,
    })? {
        Contents::Index(children) => {
            for child in &children {
                collect(child, held, manifests, needed, false)?;
            }
        }
        Contents::Image(blobs) => needed.extend(blobs.into_iter().map(|b| b.digest)),
    }
    Ok(())
}

/// Media types of the manifests, from the descriptors that point at them, else their body.
fn remember_types(
    d: &Descriptor,
    held: &HashMap<Digest, Bytes>,
    types: &mut HashMap<Digest, String>,
) {
    let Some(body) = held.get(&d.digest) else {
        return;
    };
    if types.contains_key(&d.digest) {
        return;
    }
    let media_type = d
        .media_type
        .clone()
        .or_else(|| crate::oci::media_type_of_manifest(body))
        .unwrap_or_else(|| media::OCI_MANIFEST.to_string());
    types.insert(d.digest.clone(), media_type);
    if let Ok(Contents::Index(children)) = contents(body) {
        for child in &children {
            remember_types(child, held, types);
        }
    }
}

fn read_small(entry: &mut impl Read, len: u64, what: &str) -> Result<Vec<u8>, ArchiveError> {
    if len > MAX_MANIFEST_BYTES {
        return Err(ArchiveError::Format(format!(
            "{what} is too large ({len} bytes)"
        )));
    }
    let mut body = Vec::with_capacity(len as usize);
    entry
        .read_to_end(&mut body)
        .map_err(io_error(format!("reading {what}")))?;
    Ok(body)
}

/// Streams a blob into a temp file while hashing it; it enters the store through
/// `Disk::land`, which publishes it only if it matched.
fn copy_into_store(
    disk: &Disk,
    entry: &mut impl Read,
    digest: &Digest,
    origin: &str,
) -> Result<(), ArchiveError> {
    let (mut file, temp) = disk
        .store
        .temp_file()
        .map_err(io_error("creating a temp file"))?;
    let mut hasher = digest.hasher();
    let mut buf = vec![0; 1 << 20];
    let mut written = 0u64;
    let copied = loop {
        let n = match entry.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) => break Err(io_error(format!("reading blob {digest}"))(e)),
        };
        hasher.update(&buf[..n]);
        written += n as u64;
        if let Err(e) = file.write_all(&buf[..n]) {
            break Err(io_error(format!("writing blob {digest}"))(e));
        }
    };
    if let Err(e) = copied {
        let _ = fs::remove_file(&temp);
        return Err(e);
    }
    let actual = hasher.finish();
    match disk.land(Some(&file), &temp, digest, &actual, written, origin) {
        Ok(_pin) => Ok(()),
        Err(refused) => Err(refused_error(digest, refused)),
    }
}

/// Writes a verified small object through `Disk::land_bytes`.
fn land_bytes(
    disk: &Disk,
    key: &ObjectKey,
    media_type: Option<&str>,
    body: &[u8],
    origin: &str,
) -> Result<(), ArchiveError> {
    match disk.land_bytes(key, media_type, body, origin) {
        Ok(_pin) => Ok(()),
        Err(refused) => Err(refused_error(&key.digest, refused)),
    }
}

fn refused_error(digest: &Digest, refused: Refused) -> ArchiveError {
    match refused {
        Refused::Mismatch(actual) => ArchiveError::Mismatch {
            what: "archived object",
            expected: digest.clone(),
            actual,
        },
        Refused::Io(e) => io_error(format!("storing {digest}"))(e),
    }
}
