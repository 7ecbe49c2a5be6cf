//! Blob fills: one upstream download per digest, however many clients ask at once.
//!
//! A fill writes upstream bytes to a temp file while hashing them and publishes how far it
//! got on a watch channel. Every client of the blob (the first one included) reads that file
//! up to the published offset, so no client waits for the whole download, a slow client
//! holds back nobody, and memory stays flat. The file is renamed into the store only after
//! the digest matched; the fill runs to the end even if every client has left.
//!
//! When the disk refuses a write (full, failing), the temp file is removed at once and the
//! rest of the body goes through a bounded in-memory relay: the attached clients still get
//! the verified blob, it is just not cached. A full disk also has `disk` evict at once, so
//! the next fill finds room.

mod copy;
mod source;
mod state;

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt, TryStreamExt};
use http::header::CONTENT_RANGE;
use http::StatusCode;
use tokio::sync::mpsc;

pub use state::{At, Fill, Phase, Progress};

use crate::cluster::Cluster;
use crate::error::{Error, UpstreamError};
use crate::metrics::Metrics;
use crate::mirror::declared::Declared;
use crate::mirror::BlobReader;
use crate::oci::{self, Digest};
use crate::store::bucket::io_error as bucket_io;
use crate::store::memory::{Entry, Key};
use crate::store::Membership;
use crate::store::{Disk, Tiers};
use crate::store::{ObjectKey, Store};
use crate::upstream::{classify, Answer, Resource, Target};
use copy::{copy, CopyError};
use source::{BodyError, Picked, Source};

/// The fills in progress, by trust domain and digest: a client joins only a fill from an
/// upstream its own upstream trusts.
#[derive(Default)]
pub struct Fills {
    active: Mutex<HashMap<FillKey, Arc<Fill>>>,
}

type FillKey = (String, Digest);

/// A fill in progress as the status page shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct InProgress {
    pub digest: Digest,
    /// The trust domain it fills for (by default, the upstream's name).
    pub upstream: String,
    pub written: u64,
    /// Upstream's Content-Length, once known.
    pub total: Option<u64>,
    pub from_bucket: bool,
}

/// What [`Fills::join_or_start`] found.
pub enum Joined {
    /// The blob reached the store meanwhile; look it up there.
    Stored,
    Fill {
        fill: Arc<Fill>,
        started: bool,
    },
}

/// Everything a fill task needs besides the fill itself.
#[derive(Clone)]
pub struct FillContext {
    pub store: Arc<Store>,
    /// Memory and disk: where held content is looked up and a verified fill lands.
    pub tiers: Tiers,
    pub metrics: Metrics,
    /// Blob sizes the repositories' manifests declared: a fill stops there.
    pub declared: Declared,
    /// Where a verified fill records that its trust domain delivered the blob.
    pub members: Membership,
    /// `cache.max_blob_bytes`.
    pub max_blob_bytes: u64,
    /// The other replicas, which own some digests' fills.
    pub cluster: Option<Arc<Cluster>>,
}

impl Fills {
    /// Joins the fill of `digest` from `target`'s trust domain, or starts one from `target`.
    /// With `force` it never answers [`Joined::Stored`]: the blob is held, but this domain
    /// must deliver it itself.
    pub async fn join_or_start(
        self: &Arc<Self>,
        ctx: &FillContext,
        digest: &Digest,
        target: &Target,
        force: bool,
    ) -> Result<Joined, Error> {
        let key = (
            target.upstream.config().trust_domain.clone(),
            digest.clone(),
        );
        if let Some(fill) = self.joined(&key) {
            return Ok(fill);
        }
        // File system calls go to the blocking pool, and outside the lock every fill's
        // start and end take: whether the blob reached the store meanwhile (a fill
        // publishes before it leaves `active`), and the new fill's temp file.
        let store = ctx.store.clone();
        let d = digest.clone();
        let prepared = tokio::task::spawn_blocking(move || {
            if !force && store.has_blob(&d) {
                return None;
            }
            Some(store.temp_file())
        })
        .await
        .map_err(|e| Error::local("fill task", std::io::Error::other(e)))?;
        let (file, temp) = match prepared {
            None => return Ok(Joined::Stored),
            Some(Ok((file, temp))) => (Some(file), Some(temp)),
            // No temp file (a full or read-only disk) still serves the blob, through the
            // relay. Upstream has not said how big the blob is yet.
            Some(Err(e)) => {
                ctx.tiers
                    .disk
                    .note_write_error("creating a temp file for a fill", &e, 0);
                (None, None)
            }
        };
        let mut active = self.active.lock().expect("fills lock");
        if let Some(fill) = active.get(&key) {
            // Another request started it meanwhile: join that one.
            let fill = fill.clone();
            drop(active);
            if let Some(temp) = temp {
                let _ = std::fs::remove_file(temp);
            }
            return Ok(Joined::Fill {
                fill,
                started: false,
            });
        }
        let fill = Arc::new(Fill::new(digest.clone(), file));
        active.insert(key.clone(), fill.clone());
        drop(active);
        ctx.metrics.fills_in_flight.inc();
        tokio::spawn(run(
            ctx.clone(),
            self.clone(),
            key,
            fill.clone(),
            temp,
            target.clone(),
            // A forced fill's domain has not delivered the blob: not from the bucket either.
            !force,
        ));
        Ok(Joined::Fill {
            fill,
            started: true,
        })
    }

    /// The fill in progress for `key`, if any.
    fn joined(&self, key: &FillKey) -> Option<Joined> {
        let active = self.active.lock().expect("fills lock");
        let fill = active.get(key)?.clone();
        Some(Joined::Fill {
            fill,
            started: false,
        })
    }

    pub fn in_flight(&self) -> usize {
        self.active.lock().expect("fills lock").len()
    }

    /// Waits until no fill is between its digest check and its end (their clients have
    /// every byte already; the store must not lose the blob at shutdown).
    pub async fn published(&self) {
        loop {
            let finishing = {
                let active = self.active.lock().expect("fills lock");
                active.values().any(|fill| {
                    matches!(
                        fill.subscribe().borrow().phase,
                        Phase::Verified | Phase::Done
                    )
                })
            };
            if !finishing {
                return;
            }
            // An fsync and a rename: polling costs nothing next to them.
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }

    /// The fills in progress, largest first, for the status page.
    pub fn in_progress(&self) -> Vec<InProgress> {
        let active = self.active.lock().expect("fills lock");
        let mut out: Vec<InProgress> = active
            .iter()
            .map(|((domain, digest), fill)| {
                let progress = fill.subscribe().borrow().clone();
                InProgress {
                    digest: digest.clone(),
                    upstream: domain.clone(),
                    written: progress.written,
                    total: progress.total,
                    from_bucket: progress.from_bucket,
                }
            })
            .collect();
        out.sort_by(|a, b| b.total.cmp(&a.total).then(a.digest.cmp(&b.digest)));
        out
    }
}

/// Drives one fill to its end and tells every reader how it ended.
async fn run(
    ctx: FillContext,
    fills: Arc<Fills>,
    key: FillKey,
    fill: Arc<Fill>,
    temp: Option<PathBuf>,
    target: Target,
    bucket_allowed: bool,
) {
    let result = download(&ctx, &fill, temp.as_deref(), &target, bucket_allowed).await;
    let label = match &result {
        Ok(true) => "cached",
        Ok(false) => "uncached",
        Err(Error::Upstream {
            cause: UpstreamError::DigestMismatch { .. } | UpstreamError::Truncated { .. },
            ..
        }) => "mismatch",
        Err(_) => "failed",
    };
    ctx.metrics.fills.with_label_values(&[label]).inc();
    match result {
        Ok(_) => {
            ctx.members.record_delivered(&key.0, &fill.digest);
            fill.update(|p| p.phase = Phase::Done)
        }
        Err(e) => {
            if label == "mismatch" {
                ctx.metrics
                    .digest_mismatches
                    .with_label_values(&["blob"])
                    .inc();
                tracing::warn!(digest = %fill.digest, error = %e, "blob not cached");
            } else if !e.is_not_found() {
                tracing::warn!(digest = %fill.digest, error = %e, "blob fill failed");
            }
            if let Some(temp) = &temp {
                let _ = tokio::fs::remove_file(temp).await;
            }
            fill.update(|p| p.phase = Phase::Failed(Arc::new(e)));
        }
    }
    // Only now: a request that misses this map must find the blob in the store.
    fills.active.lock().expect("fills lock").remove(&key);
    ctx.metrics.fills_in_flight.dec();
}

/// Downloads, verifies and (when the disk allowed it) publishes the blob.
/// `Ok(false)`: verified and served, but not cached.
async fn download(
    ctx: &FillContext,
    fill: &Arc<Fill>,
    temp: Option<&Path>,
    target: &Target,
    bucket_allowed: bool,
) -> Result<bool, Error> {
    let upstream = target.upstream.clone();
    let bucket = ctx.tiers.bucket.as_ref();
    let Picked {
        source,
        total,
        lease,
    } = source::pick(ctx, fill, target, bucket_allowed).await?;
    let from_bucket = matches!(source, Source::Bucket(_));
    let from_upstream = matches!(source, Source::Upstream(_));
    let declared = ctx
        .declared
        .get(upstream.name(), &target.name, &fill.digest);
    let (limit, bound) =
        size_bound(ctx.max_blob_bytes, declared, total).map_err(|cause| upstream.error(cause))?;
    // The network side stays async and hands over batches of chunks, so the blocking side
    // (hash, disk write) wakes once per batch rather than once per small chunk.
    let (batches, mut received) = mpsc::channel(PUMP_DEPTH);
    match source {
        Source::Upstream(response) => tokio::spawn(pump(
            response,
            batches,
            target.clone(),
            fill.digest.clone(),
            total,
        )),
        Source::Bucket(stream) => {
            let stream = stream.map_err(BodyError::Bucket).boxed();
            tokio::spawn(pump_stream(stream, batches))
        }
        Source::Peer(stream) => tokio::spawn(pump_stream(stream, batches)),
    };
    // Only now: the clients this wakes then run before the pump, which would otherwise
    // keep their worker busy reading and hold back their response heads (about 1 ms).
    fill.update(|p| {
        p.total = total;
        p.from_bucket = from_bucket;
        p.phase = Phase::Streaming;
    });
    // What upstream sends goes on to the bucket as it arrives; the upload completes only
    // if the fill verifies it (the reader ends cleanly only then).
    if let (Some(bucket), true, true) = (bucket, from_upstream, fill.file.is_some()) {
        let reader = BlobReader::filling(fill.clone(), fill.subscribe(), 0, u64::MAX);
        let (bucket, digest) = (bucket.clone(), fill.digest.clone());
        let domain = target.upstream.config().trust_domain.clone();
        tokio::spawn(async move {
            let bytes = Box::pin(reader.into_stream(crate::mirror::CHUNK));
            if bucket.upload_blob(&digest, bytes).await {
                bucket.mark_delivered(&domain, &digest).await;
            }
            // Only now may another replica's claim win: the blob is in the bucket.
            drop(lease);
        });
    }
    let (writer, disk, temp_path) = (
        fill.clone(),
        ctx.tiers.disk.clone(),
        temp.map(Path::to_path_buf),
    );
    let filling = Arc::new(Filling {
        disk: ctx.tiers.disk.clone(),
        bytes: AtomicU64::new(0),
        reserved: total.is_some(),
    });
    // A known length is counted whole at once, so eviction makes room before the bytes
    // arrive (and evicts the same whatever the moment it runs).
    if let Some(total) = total {
        filling.count(total);
    }
    let grew = filling.clone();
    // Hashing and file writes block; keep them off the async workers.
    let copied = tokio::task::spawn_blocking(move || {
        let mut pending = VecDeque::new();
        let mut next = || loop {
            if let Some(chunk) = pending.pop_front() {
                let more_ready = !pending.is_empty() || !received.is_empty();
                return Ok(Some((chunk, more_ready)));
            }
            match received.blocking_recv() {
                Some(Ok(batch)) => pending.extend(batch),
                Some(Err(e)) => return Err(e),
                None => return Ok(None),
            }
        };
        let mut on_error = |e: &std::io::Error| {
            disk.note_write_error("writing a fill to disk", e, writer.size_hint());
            // Nothing half-written stays: readers keep the open file, the name goes now.
            if let Some(temp) = &temp_path {
                let _ = std::fs::remove_file(temp);
            }
        };
        let file = writer.file.clone();
        let mut file_ref: Option<&File> = file.as_deref();
        let sink = file_ref.as_mut().map(|f| f as &mut dyn Write);
        let mut on_progress = |n: u64| grew.grew(n);
        copy(
            &mut next,
            &writer,
            limit,
            sink,
            &mut on_error,
            &mut on_progress,
        )
    })
    .await
    .map_err(|e| Error::local("fill task", std::io::Error::other(e)))?;
    let (written, actual) = match copied {
        Ok(done) => done,
        Err(CopyError::Body(BodyError::Bucket(e))) => {
            return Err(Error::local("reading the bucket", bucket_io(e)));
        }
        Err(CopyError::Body(BodyError::Peer(e))) => {
            let cause = std::io::Error::other(format!("the owner replica's body failed: {e}"));
            return Err(Error::local("reading from the owner replica", cause));
        }
        Err(CopyError::Body(BodyError::Upstream(e))) => {
            return Err(upstream.error(match total {
                Some(expected) if e.is_body() || e.is_decode() => UpstreamError::Truncated {
                    got: fill.subscribe().borrow().written,
                    expected,
                },
                _ => classify(&e),
            }))
        }
        Err(CopyError::TooLarge) => {
            return Err(upstream.error(UpstreamError::TooLarge { limit, bound }))
        }
    };
    if from_upstream {
        target.upstream.count_bytes(written);
    }
    if let Some(expected) = total.filter(|&t| t != written) {
        return Err(upstream.error(UpstreamError::Truncated {
            got: written,
            expected,
        }));
    }
    if actual != fill.digest && from_bucket {
        // Damaged in the bucket: removed, so the next request fetches it again.
        if let Some(bucket) = bucket {
            bucket.remove(&ObjectKey::blob(&fill.digest)).await;
        }
        return Err(Error::local(
            "reading the bucket",
            std::io::Error::other(format!("the bucket's copy hashes to {actual}; removed")),
        ));
    }
    if actual != fill.digest {
        return Err(target.upstream.error(UpstreamError::DigestMismatch {
            expected: fill.digest.clone(),
            actual,
        }));
    }
    fill.update(|p| p.phase = Phase::Verified);
    let (Some(temp), false) = (temp, fill.relaying()) else {
        return Ok(false);
    };
    // Uncounted first: counted twice (as filling and as published) for a moment, the store
    // would look over its budget and evict for nothing.
    drop(filling);
    publish(ctx, fill, temp, written, actual, target.upstream.name()).await
}

/// The most bytes a fill may take, and what set that bound. Upstream's `Content-Length`
/// must agree with the size the manifest declared, and neither may pass the maximum.
fn size_bound(
    max: u64,
    declared: Option<u64>,
    total: Option<u64>,
) -> Result<(u64, &'static str), UpstreamError> {
    if let (Some(declared), Some(total)) = (declared, total) {
        if declared != total {
            return Err(UpstreamError::Invalid(format!(
                "announced a blob of {total} bytes where the repository's manifest declared {declared}"
            )));
        }
    }
    let (limit, bound) = [
        (Some(max), "cache.max_blob_bytes limit"),
        (declared, "size its manifest declared"),
        (total, "length upstream announced"),
    ]
    .into_iter()
    .filter_map(|(n, bound)| Some((n?, bound)))
    .min_by_key(|(n, _)| *n)
    .expect("the maximum is always there");
    if total.is_some_and(|t| t > max) {
        return Err(UpstreamError::TooLarge { limit, bound });
    }
    Ok((limit, bound))
}

/// What a fill's temp file holds (or will, when upstream announced its length), counted
/// toward the disk budget until the fill ends.
struct Filling {
    disk: Arc<Disk>,
    bytes: AtomicU64,
    /// The announced length was counted up front; progress adds nothing.
    reserved: bool,
}

impl Filling {
    fn count(&self, bytes: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.disk.fill_grew(bytes);
    }

    /// The copy wrote `bytes` more.
    fn grew(&self, bytes: u64) {
        if !self.reserved {
            self.count(bytes);
        }
    }
}

impl Drop for Filling {
    fn drop(&mut self) {
        self.disk.fill_ended(self.bytes.load(Ordering::Relaxed));
    }
}

/// Moves a verified fill into the store. A failure here still serves the readers (they
/// hold the file open) and only costs the cache entry.
async fn publish(
    ctx: &FillContext,
    fill: &Arc<Fill>,
    temp: &Path,
    written: u64,
    actual: Digest,
    origin: &str,
) -> Result<bool, Error> {
    let origin = origin.to_string();
    let (disk, file, temp, digest) = (
        ctx.tiers.disk.clone(),
        fill.file.clone(),
        temp.to_path_buf(),
        fill.digest.clone(),
    );
    let small = ctx.tiers.memory.admits(written);
    let published = tokio::task::spawn_blocking(move || {
        // The fill checked the digest already, for its clients' sake; `land` checks it
        // again for the store's.
        let pin = disk
            .land(file.as_deref(), &temp, &digest, &actual, written, &origin)
            .ok()?;
        let bytes = if small {
            disk.store.read_blob(&digest).ok().flatten()
        } else {
            None
        };
        Some((Some(pin), bytes))
    })
    .await
    .map_err(|e| Error::local("fill task", std::io::Error::other(e)))?;
    let Some((pin, cached)) = published else {
        return Ok(false);
    };
    *fill.held.lock().expect("held lock") = pin;
    if let Some(bytes) = cached {
        let entry = Entry {
            bytes,
            media_type: None,
        };
        ctx.tiers
            .memory
            .insert(Key::Blob(fill.digest.clone()), entry);
    }
    Ok(true)
}

/// Batches handed from the network side to the writer: at most this many wait.
const PUMP_DEPTH: usize = 8;
/// A batch goes out once it holds this much, or as soon as upstream has nothing ready.
const PUMP_BATCH: usize = 256 << 10;

type Batch = Result<Vec<Bytes>, BodyError>;

/// Reads a body from the bucket or the owner replica and sends it on in batches, as
/// [`pump`] does upstream's.
async fn pump_stream(
    mut stream: BoxStream<'static, Result<Bytes, BodyError>>,
    out: mpsc::Sender<Batch>,
) {
    let mut batch = Batcher::new(out);
    loop {
        let polled = if batch.is_empty() {
            Some(stream.next().await)
        } else {
            stream.next().now_or_never()
        };
        let flush = match polled {
            Some(Some(Ok(chunk))) => batch.push(chunk),
            Some(Some(Err(e))) => return batch.fail(e).await,
            Some(None) => {
                batch.flush().await;
                return;
            }
            None => true,
        };
        if flush && !batch.flush().await {
            return;
        }
    }
}

/// Chunks gathered into batches for the writer (see [`PUMP_BATCH`]).
struct Batcher {
    chunks: Vec<Bytes>,
    bytes: usize,
    out: mpsc::Sender<Batch>,
}

impl Batcher {
    fn new(out: mpsc::Sender<Batch>) -> Batcher {
        Batcher {
            chunks: Vec::new(),
            bytes: 0,
            out,
        }
    }

    fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Adds a chunk; true once the batch should go.
    fn push(&mut self, chunk: Bytes) -> bool {
        self.bytes += chunk.len();
        self.chunks.push(chunk);
        self.bytes >= PUMP_BATCH
    }

    /// Sends what was gathered; false once the writer is gone.
    async fn flush(&mut self) -> bool {
        self.bytes = 0;
        if self.chunks.is_empty() {
            return true;
        }
        let batch = std::mem::take(&mut self.chunks);
        self.out.send(Ok(batch)).await.is_ok()
    }

    /// Sends what was gathered, then the error that ended the body.
    async fn fail(mut self, e: BodyError) {
        if self.flush().await {
            let _ = self.out.send(Err(e)).await;
        }
    }
}

/// Reads upstream's body and sends it on in batches. A body cut mid-way is resumed with
/// `Range: bytes=N-` from where it stopped, when upstream answers 206 from exactly there;
/// the writer's hash goes on across the seam.
async fn pump(
    mut response: Answer,
    out: mpsc::Sender<Batch>,
    target: Target,
    digest: Digest,
    total: Option<u64>,
) {
    let (mut received, mut resumes) = (0u64, 0);
    let mut batch = Batcher::new(out);
    // Only this read is paced by the upstream's cap; the fill's readers are not.
    let upstream = target.upstream.clone();
    let lane = upstream.lane(target.priority);
    loop {
        // Wait for the first chunk of a batch; take the rest only while it is ready.
        let polled = if batch.is_empty() {
            Some(response.chunk().await)
        } else {
            response.chunk().now_or_never()
        };
        let flush = match polled {
            Some(Ok(Some(chunk))) => {
                received += chunk.len() as u64;
                upstream.pace(lane.as_ref(), chunk.len()).await;
                batch.push(chunk)
            }
            Some(Ok(None)) => {
                batch.flush().await;
                return;
            }
            None => true,
            Some(Err(e)) => {
                if !batch.flush().await {
                    return;
                }
                let retries = target.upstream.config().retries;
                let rest = match resumes < retries {
                    true => resume(&target, &digest, received, total).await,
                    false => None,
                };
                resumes += 1;
                match rest {
                    Some(rest) => {
                        response = rest;
                        continue;
                    }
                    None => return batch.fail(BodyError::Upstream(e)).await,
                }
            }
        };
        if flush && !batch.flush().await {
            return;
        }
    }
}

/// Asks upstream for the rest of a blob from byte `from`. `None` unless it answered 206
/// with a `Content-Range` starting exactly there (and of the same total, when known).
async fn resume(target: &Target, digest: &Digest, from: u64, total: Option<u64>) -> Option<Answer> {
    let upstream = &target.upstream;
    let answer = upstream
        .resume(&target.name, Resource::Blob(digest), from)
        .await;
    let fits = |a: &Answer| {
        let range = a
            .headers()
            .get(CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(oci::parse_content_range);
        a.status() == StatusCode::PARTIAL_CONTENT
            && range.is_some_and(|(r, len)| {
                r.start == from && (total.is_none() || len.is_none() || len == total)
            })
    };
    let result = match &answer {
        Ok(a) if fits(a) => "resumed",
        _ => "refused",
    };
    upstream
        .metrics()
        .upstream_resumes
        .with_label_values(&[upstream.name(), result])
        .inc();
    match answer {
        Ok(a) if result == "resumed" => {
            tracing::info!(upstream = upstream.name(), %digest, from, "resumed a cut blob download");
            Some(a)
        }
        Ok(a) => {
            tracing::warn!(upstream = upstream.name(), %digest, from, status = %a.status(), "upstream did not resume the cut download with the range asked");
            None
        }
        Err(e) => {
            tracing::warn!(upstream = upstream.name(), %digest, from, error = %e, "resuming a cut blob download failed");
            None
        }
    }
}
