//! The shared tier: an S3-compatible bucket that replicas read before going upstream and
//! fill with what they verified. Keys are laid out like `v1/` under the configured prefix
//! (`v1/blobs/sha256/ab/<hex>`, `v1/manifests/...` holding `<media type>\n<body>` as on
//! disk), so objects never change and a duplicate write is harmless. Which trust domain
//! delivered a digest is a small marker object (`v1/delivered/<domain>/<alg>/<hex>`), so
//! one replica serves another's content only within the domain that fetched it.
//!
//! Nothing is judged by ETag: a blob read back is verified as it streams, like a fill.
//! A blob enters only through a multipart upload completed after its digest matched
//! (an incomplete upload is invisible); small objects are create-only puts. A failing
//! bucket is logged and counted, and regcache goes on with its disk and upstream.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{
    ClientOptions, GetOptions, ObjectStore, ObjectStoreExt, PutMode, PutPayload, RetryConfig,
    WriteMultipart,
};
use prometheus::IntCounterVec;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[cfg(feature = "ecr")]
mod credentials;
mod lease;
mod records;
mod redirect;

pub use lease::{Claim, Lease};

use super::files::{parse_manifest, unix_millis, ObjectKey, ObjectKind, LAYOUT_VERSION};
use crate::config::BucketConfig;
use crate::oci::Digest;

/// Parts of a blob upload: S3 wants at least 5 MiB for all but the last.
const PART_BYTES: usize = 8 << 20;
/// Parts in flight per upload: memory stays under `(PARTS_IN_FLIGHT + 1) x PART_BYTES`.
const PARTS_IN_FLIGHT: usize = 2;
/// Uploads at once: with the above, at most 96 MiB of upload buffers however many cold
/// blobs are filling. The others wait (reading their fill's file, which stays open).
const UPLOADS_AT_ONCE: usize = 4;
/// A blob is read as ranged GETs of this size, several at once: an object store serves
/// each connection at a limited rate, and parallel ranges are how it is read fast.
const READ_PART: u64 = 8 << 20;
/// Ranged GETs in flight per blob read; each part waits whole in memory for its turn.
const READS_IN_FLIGHT: usize = 4;
/// Blob reads that read ahead at once. Each holds at most six parts (four in flight, one
/// handed over, one being read): 96 MiB for both. The others stream the object over one
/// connection, holding nothing.
const PARALLEL_READS: usize = 2;
/// After a failure the bucket is left alone this long, so a dead bucket costs each
/// request nothing rather than a connect timeout.
const PAUSE_AFTER_FAILURE: Duration = Duration::from_secs(5);

pub type BlobStream = BoxStream<'static, Result<Bytes, object_store::Error>>;

#[derive(Clone)]
pub struct Bucket {
    store: Arc<AmazonS3>,
    prefix: String,
    name: String,
    /// `regcache_bucket_operations_total{op, result}`.
    counts: IntCounterVec,
    /// Unix milliseconds until which the bucket is skipped after a failure.
    paused_until: Arc<AtomicU64>,
    /// Bounds the memory of uploads in flight (see [`UPLOADS_AT_ONCE`]).
    uploads: Arc<Semaphore>,
    /// Bounds the memory of reads ahead (see [`PARALLEL_READS`]).
    parallel_reads: Arc<Semaphore>,
    /// `bucket.redirect_min_bytes` (see `redirect`).
    redirect_min_bytes: Option<u64>,
}

impl Bucket {
    /// A client for the configured bucket; credentials from the AWS SDK's chain (see
    /// `credentials`), or without the `ecr` feature from the environment (keys, session
    /// token, web identity, instance roles). Does no I/O.
    pub fn new(config: &BucketConfig, counts: IntCounterVec) -> object_store::Result<Bucket> {
        // No overall request timeout: a blob read streams for as long as the blob takes.
        // (Client options first: `with_allow_http` sets one of them.)
        let client = ClientOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout_disabled();
        let retry = RetryConfig {
            max_retries: 2,
            retry_timeout: Duration::from_secs(10),
            ..RetryConfig::default()
        };
        let mut builder = AmazonS3Builder::from_env()
            .with_client_options(client)
            .with_retry(retry)
            .with_bucket_name(&config.name)
            .with_region(&config.region)
            .with_virtual_hosted_style_request(!config.path_style);
        if let Some(endpoint) = &config.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        #[cfg(feature = "ecr")]
        {
            builder = builder.with_credentials(Arc::new(credentials::Chain::default()));
        }
        Ok(Bucket {
            store: Arc::new(builder.build()?),
            prefix: config.prefix.clone(),
            name: config.name.clone(),
            counts,
            paused_until: Arc::default(),
            uploads: Arc::new(Semaphore::new(UPLOADS_AT_ONCE)),
            parallel_reads: Arc::new(Semaphore::new(PARALLEL_READS)),
            redirect_min_bytes: config.redirect_min_bytes,
        })
    }

    fn count(&self, op: &str, result: &str) {
        self.counts.with_label_values(&[op, result]).inc();
    }

    /// Whether to try the bucket now (not within a pause after a failure); counts a skip.
    fn usable(&self, op: &str) -> bool {
        let usable = unix_millis() >= self.paused_until.load(Ordering::Relaxed);
        if !usable {
            self.count(op, "skipped");
        }
        usable
    }

    /// Counts a failure and pauses the bucket's use.
    fn failed(&self, op: &str) {
        self.count(op, "error");
        let until = unix_millis() + PAUSE_AFTER_FAILURE.as_millis() as u64;
        self.paused_until.store(until, Ordering::Relaxed);
    }

    fn object(&self, key: &ObjectKey) -> Path {
        let digest = &key.digest;
        let hex = digest.hex();
        Path::from(format!(
            "{}{LAYOUT_VERSION}/{}/{}/{}/{hex}",
            self.prefix,
            key.kind.dir_name(),
            digest.algorithm().as_str(),
            &hex[..2]
        ))
    }

    fn marker(&self, domain: &str, digest: &Digest) -> Path {
        Path::from(format!(
            "{}{LAYOUT_VERSION}/delivered/{domain}/{}/{}",
            self.prefix,
            digest.algorithm().as_str(),
            digest.hex()
        ))
    }

    /// A blob's length and bytes, if the bucket holds it. The caller verifies the bytes.
    /// When a read-ahead slot is free, the first request asks for the first part only and
    /// the rest follows in parallel ranged GETs (see [`READ_PART`]).
    pub async fn blob(&self, digest: &Digest) -> Option<(u64, BlobStream)> {
        if !self.usable("get_blob") {
            return None;
        }
        let path = self.object(&ObjectKey::blob(digest));
        let ahead = self.parallel_reads.clone().try_acquire_owned().ok();
        let first = match ahead {
            // A range past the end is cut to the object's length (an empty object has no
            // first part: it fails here and is read whole below).
            Some(_) => {
                let options = GetOptions::new().with_range(Some(0..READ_PART));
                match self.store.get_opts(&path, options).await {
                    Err(e) if !matches!(e, object_store::Error::NotFound { .. }) => {
                        self.store.get(&path).await
                    }
                    first => first,
                }
            }
            None => self.store.get(&path).await,
        };
        match first {
            Ok(found) => {
                self.count("get_blob", "hit");
                let len = found.meta.size;
                let whole = found.range == (0..len);
                let head = found.into_stream().boxed();
                let stream = match ahead {
                    Some(permit) if !whole => self.read_ahead(path, len, permit, head),
                    _ => head,
                };
                Some((len, stream))
            }
            Err(object_store::Error::NotFound { .. }) => {
                self.count("get_blob", "miss");
                None
            }
            Err(e) => {
                self.failed("get_blob");
                tracing::warn!(bucket = %self.name, %digest, error = %e, "reading the bucket failed; going upstream");
                None
            }
        }
    }

    /// `head` (the first part) followed by the rest of the object in ranged GETs,
    /// [`READS_IN_FLIGHT`] at a time, in order. A task starts them at once, while `head`
    /// still streams, and hands each part over as soon as it is whole. The slot is held
    /// until the read ends or is dropped; a dropped read stops the task at its next part.
    fn read_ahead(
        &self,
        path: Path,
        len: u64,
        slot: OwnedSemaphorePermit,
        head: BlobStream,
    ) -> BlobStream {
        let (store, counts) = (self.store.clone(), self.counts.clone());
        let parts =
            (1..len.div_ceil(READ_PART)).map(move |n| n * READ_PART..len.min((n + 1) * READ_PART));
        let mut rest = futures_util::stream::iter(parts)
            .map(move |range| {
                let (store, path, counts) = (store.clone(), path.clone(), counts.clone());
                async move {
                    let part = store.get_range(&path, range).await;
                    let result = if part.is_ok() { "ok" } else { "error" };
                    counts.with_label_values(&["get_part", result]).inc();
                    part
                }
            })
            .buffered(READS_IN_FLIGHT);
        let (parts, received) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            let _slot = slot;
            while let Some(part) = rest.next().await {
                let failed = part.is_err();
                if parts.send(part).await.is_err() || failed {
                    return;
                }
            }
        });
        let rest = futures_util::stream::unfold(received, |mut received| async move {
            let part = received.recv().await?;
            Some((part, received))
        });
        head.chain(rest).boxed()
    }

    /// A manifest and its media type, if the bucket holds one that hashes to `digest`.
    /// A damaged one is removed.
    pub async fn manifest(&self, digest: &Digest) -> Option<(String, Bytes)> {
        if !self.usable("get_manifest") {
            return None;
        }
        let key = ObjectKey::manifest(digest);
        let path = self.object(&key);
        let read = match self.store.get(&path).await {
            Ok(found) => found.bytes().await,
            Err(e) => Err(e),
        };
        match read {
            Ok(data) => match parse_manifest(digest, data.to_vec()) {
                Some(found) => {
                    self.count("get_manifest", "hit");
                    Some(found)
                }
                None => {
                    self.count("get_manifest", "corrupt");
                    tracing::warn!(bucket = %self.name, %digest, "a manifest in the bucket does not match its digest; removed");
                    self.remove(&key).await;
                    None
                }
            },
            Err(object_store::Error::NotFound { .. }) => {
                self.count("get_manifest", "miss");
                None
            }
            Err(e) => {
                self.failed("get_manifest");
                tracing::warn!(bucket = %self.name, %digest, error = %e, "reading the bucket failed; treating as a miss");
                None
            }
        }
    }

    /// Stores a verified manifest (create-only: one already there is left as it is).
    pub async fn put_manifest(&self, digest: &Digest, media_type: &str, body: &Bytes) {
        let mut record = Vec::with_capacity(media_type.len() + 1 + body.len());
        record.extend_from_slice(media_type.as_bytes());
        record.push(b'\n');
        record.extend_from_slice(body);
        let path = self.object(&ObjectKey::manifest(digest));
        self.create(&path, record.into(), "put_manifest").await;
    }

    /// Whether trust domain `domain` delivered `digest` (through any replica).
    pub async fn delivered(&self, domain: &str, digest: &Digest) -> bool {
        let path = self.marker(domain, digest);
        self.head("head_marker", &path).await.is_some()
    }

    /// The size of the object at `path`, counted under `op` as a hit or a miss; `None` when
    /// it is absent or the bucket failed (a failure pauses the bucket, as any other).
    async fn head(&self, op: &str, path: &Path) -> Option<u64> {
        if !self.usable(op) {
            return None;
        }
        match self.store.head(path).await {
            Ok(meta) => {
                self.count(op, "hit");
                Some(meta.size)
            }
            Err(object_store::Error::NotFound { .. }) => {
                self.count(op, "miss");
                None
            }
            Err(e) => {
                self.failed(op);
                tracing::warn!(bucket = %self.name, %path, error = %e, "reading the bucket failed; treating as a miss");
                None
            }
        }
    }

    /// Records that `domain` delivered `digest`, once its content is in the bucket.
    pub async fn mark_delivered(&self, domain: &str, digest: &Digest) {
        let path = self.marker(domain, digest);
        self.create(&path, PutPayload::new(), "put_marker").await;
    }

    /// A create-only put; whether the object is there now.
    async fn create(&self, path: &Path, payload: PutPayload, op: &str) -> bool {
        if !self.usable(op) {
            return false;
        }
        match self
            .store
            .put_opts(path, payload, PutMode::Create.into())
            .await
        {
            Ok(_) => self.count(op, "ok"),
            Err(object_store::Error::AlreadyExists { .. }) => self.count(op, "exists"),
            Err(e) => {
                self.failed(op);
                tracing::warn!(bucket = %self.name, %path, error = %e, "writing to the bucket failed");
                return false;
            }
        }
        true
    }

    /// Uploads a blob from `bytes`, which ends cleanly only once the fill verified the
    /// digest: then the upload completes; an error aborts it, and nothing appears.
    /// Returns whether the blob is in the bucket.
    pub async fn upload_blob<S, E>(&self, digest: &Digest, mut bytes: S) -> bool
    where
        S: futures_util::Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let Ok(_permit) = self.uploads.acquire().await else {
            return false;
        };
        if !self.usable("put_blob") {
            return false;
        }
        let path = self.object(&ObjectKey::blob(digest));
        let upload = match self.store.put_multipart(&path).await {
            Ok(upload) => upload,
            Err(e) => {
                self.failed("put_blob");
                tracing::warn!(bucket = %self.name, %digest, error = %e, "starting an upload failed");
                return false;
            }
        };
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        loop {
            if let Err(e) = writer.wait_for_capacity(PARTS_IN_FLIGHT).await {
                self.abort(writer, digest, &e.to_string()).await;
                return false;
            }
            match bytes.next().await {
                Some(Ok(chunk)) => writer.put(chunk),
                Some(Err(e)) => {
                    self.abort(writer, digest, &e.to_string()).await;
                    return false;
                }
                None => break,
            }
        }
        match writer.finish().await {
            Ok(_) => {
                self.count("put_blob", "ok");
                true
            }
            Err(e) => {
                self.failed("put_blob");
                tracing::warn!(bucket = %self.name, %digest, error = %e, "completing an upload failed");
                false
            }
        }
    }

    async fn abort(&self, writer: WriteMultipart, digest: &Digest, why: &str) {
        self.count("put_blob", "aborted");
        tracing::debug!(bucket = %self.name, %digest, why, "blob upload aborted");
        if let Err(e) = writer.abort().await {
            tracing::warn!(bucket = %self.name, %digest, error = %e, "aborting an upload failed; the bucket's lifecycle rule removes it");
        }
    }

    /// Removes an object that failed verification.
    pub async fn remove(&self, key: &ObjectKey) {
        let path = self.object(key);
        if let Err(e) = self.store.delete(&path).await {
            tracing::warn!(bucket = %self.name, %path, error = %e, "removing a damaged object from the bucket failed");
        }
        if key.kind == ObjectKind::Blob {
            self.count("remove_blob", "ok");
        }
    }
}

/// A bucket read's error as an I/O error, for the fill's reader.
pub fn io_error(e: object_store::Error) -> std::io::Error {
    std::io::Error::other(e)
}

/// `stream` with its errors as I/O errors.
pub fn io_stream(stream: BlobStream) -> BoxStream<'static, std::io::Result<Bytes>> {
    stream.map_err(io_error).boxed()
}
