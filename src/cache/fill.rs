//! Blob fills: one upstream download per digest, however many clients ask at once.
//!
//! A fill writes upstream bytes to a temp file while hashing them and publishes how far it
//! got on a watch channel. Every client of the blob (the first one included) reads that file
//! up to the published offset, so no client waits for the whole download, a slow client
//! holds back nobody, and memory stays flat. The file is renamed into the store only after
//! the digest matched; the fill runs to the end even if every client has left.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::header::CONTENT_RANGE;
use http::{Method, StatusCode};
use tokio::sync::watch;

use super::memory::{Entry, Key, Memory};
use super::store::Store;
use crate::error::{Error, UpstreamError};
use crate::metrics::Metrics;
use crate::oci::{self, Digest};
use crate::upstream::{classify, Answer, Kind, Target};

#[derive(Clone, Debug)]
pub enum Phase {
    /// Waiting for upstream's headers.
    Connecting,
    Streaming,
    /// Verified and published in the store.
    Done,
    Failed(Arc<Error>),
}

#[derive(Clone, Debug)]
pub struct Progress {
    /// Bytes in the temp file so far; readers may read up to here.
    pub written: u64,
    /// Upstream's Content-Length, once its headers arrived.
    pub total: Option<u64>,
    pub phase: Phase,
}

/// A fill in progress, shared by its task and every reader.
pub struct Fill {
    pub digest: Digest,
    pub file: Arc<File>,
    progress: watch::Sender<Progress>,
}

impl Fill {
    pub fn subscribe(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }
}

/// The fills in progress, by digest.
#[derive(Default)]
pub struct Fills {
    active: Mutex<HashMap<Digest, Arc<Fill>>>,
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
    pub memory: Memory,
    pub metrics: Metrics,
}

impl Fills {
    /// Joins the fill of `digest`, or starts one from `target`.
    pub fn join_or_start(
        self: &Arc<Self>,
        ctx: &FillContext,
        digest: &Digest,
        target: &Target,
    ) -> Result<Joined, Error> {
        let mut active = self.active.lock().expect("fills lock");
        if let Some(fill) = active.get(digest) {
            return Ok(Joined::Fill {
                fill: fill.clone(),
                started: false,
            });
        }
        // A fill may have finished between the caller's store lookup and this lock.
        if ctx.store.has_blob(digest) {
            return Ok(Joined::Stored);
        }
        let (file, temp) = ctx
            .store
            .temp_file()
            .map_err(|e| Error::local("creating a temp file for a fill", e))?;
        let (progress, _) = watch::channel(Progress {
            written: 0,
            total: None,
            phase: Phase::Connecting,
        });
        let fill = Arc::new(Fill {
            digest: digest.clone(),
            file: Arc::new(file),
            progress,
        });
        active.insert(digest.clone(), fill.clone());
        drop(active);
        ctx.metrics.fills_in_flight.inc();
        tokio::spawn(run(
            ctx.clone(),
            self.clone(),
            fill.clone(),
            temp,
            target.clone(),
        ));
        Ok(Joined::Fill {
            fill,
            started: true,
        })
    }

    pub fn in_flight(&self) -> usize {
        self.active.lock().expect("fills lock").len()
    }
}

/// Drives one fill to its end and tells every reader how it ended.
async fn run(ctx: FillContext, fills: Arc<Fills>, fill: Arc<Fill>, temp: PathBuf, target: Target) {
    let result = download(&ctx, &fill, &temp, &target).await;
    let label = match &result {
        Ok(()) => "cached",
        Err(Error::Upstream {
            cause: UpstreamError::DigestMismatch { .. } | UpstreamError::Truncated { .. },
            ..
        }) => "mismatch",
        Err(_) => "failed",
    };
    ctx.metrics.fills.with_label_values(&[label]).inc();
    match result {
        Ok(()) => fill.progress.send_modify(|p| p.phase = Phase::Done),
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
            let _ = tokio::fs::remove_file(&temp).await;
            fill.progress
                .send_modify(|p| p.phase = Phase::Failed(Arc::new(e)));
        }
    }
    // Only now: a request that misses this map must find the blob in the store.
    fills
        .active
        .lock()
        .expect("fills lock")
        .remove(&fill.digest);
    ctx.metrics.fills_in_flight.dec();
}

async fn download(
    ctx: &FillContext,
    fill: &Arc<Fill>,
    temp: &Path,
    target: &Target,
) -> Result<(), Error> {
    let path = format!("blobs/{}", fill.digest);
    let response = target
        .upstream
        .send(Method::GET, Kind::Blob, &target.name, &path, None)
        .await?;
    let total = response.content_length();
    fill.progress.send_modify(|p| {
        p.total = total;
        p.phase = Phase::Streaming;
    });
    let handle = tokio::runtime::Handle::current();
    let (writer, target_for_writer) = (fill.clone(), target.clone());
    // Hashing and file writes block; keep them off the async workers.
    let (written, actual) = tokio::task::spawn_blocking(move || {
        write_all(&handle, response, &writer, &target_for_writer, total)
    })
    .await
    .map_err(|e| Error::local("fill task", std::io::Error::other(e)))??;
    target.upstream.count_bytes(written);
    if actual != fill.digest {
        return Err(target.upstream.error(UpstreamError::DigestMismatch {
            expected: fill.digest.clone(),
            actual,
        }));
    }
    let (store, file, temp, digest) = (
        ctx.store.clone(),
        fill.file.clone(),
        temp.to_path_buf(),
        fill.digest.clone(),
    );
    let small = ctx.memory.admits(written);
    let cached = tokio::task::spawn_blocking(move || {
        file.sync_all()?;
        store.publish(&temp, &store.blob_path(&digest))?;
        if small {
            return store.read_blob(&digest);
        }
        Ok(None)
    })
    .await
    .map_err(|e| Error::local("fill task", std::io::Error::other(e)))?
    .map_err(|e| {
        ctx.metrics.cache_write_errors.inc();
        Error::local("publishing a verified blob", e)
    })?;
    if let Some(bytes) = cached {
        let entry = Entry {
            bytes,
            media_type: None,
        };
        ctx.memory.insert(Key::Blob(fill.digest.clone()), entry);
    }
    Ok(())
}

/// Readers are woken at least this often while bytes arrive, and for no less data,
/// so a fast upstream does not wake every reader for every small chunk.
const PUBLISH_BYTES: u64 = 256 << 10;
const PUBLISH_EVERY: Duration = Duration::from_millis(20);

/// Copies upstream's body into the fill's file, hashing as it goes. Runs on a blocking thread.
///
/// A body cut mid-way (or silent past the idle timeout) is resumed with `Range: bytes=N-`
/// from where it stopped, up to `retries` times, when upstream answers 206 from exactly
/// there; the hash simply goes on, so the digest check still covers every byte.
fn write_all(
    handle: &tokio::runtime::Handle,
    mut response: Answer,
    fill: &Fill,
    target: &Target,
    total: Option<u64>,
) -> Result<(u64, Digest), Error> {
    let upstream = &target.upstream;
    let mut hasher = fill.digest.hasher();
    let mut file: &File = &fill.file;
    let mut written = 0u64;
    let mut resumes = 0;
    let mut published = (0u64, Instant::now());
    loop {
        let chunk = match handle.block_on(response.chunk()) {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(e) => {
                let cut = match total {
                    Some(expected) if e.is_body() || e.is_decode() => UpstreamError::Truncated {
                        got: written,
                        expected,
                    },
                    _ => classify(&e),
                };
                if resumes >= upstream.config().retries {
                    return Err(upstream.error(cut));
                }
                resumes += 1;
                match handle.block_on(resume(target, &fill.digest, written, total)) {
                    Some(rest) => {
                        response = rest;
                        continue;
                    }
                    None => return Err(upstream.error(cut)),
                }
            }
        };
        hasher.update(&chunk);
        file.write_all(&chunk)
            .map_err(|e| Error::local("writing a fill to disk", e))?;
        written += chunk.len() as u64;
        if written - published.0 >= PUBLISH_BYTES || published.1.elapsed() >= PUBLISH_EVERY {
            fill.progress.send_modify(|p| p.written = written);
            published = (written, Instant::now());
        }
    }
    fill.progress.send_modify(|p| p.written = written);
    if let Some(expected) = total.filter(|&t| t != written) {
        return Err(upstream.error(UpstreamError::Truncated {
            got: written,
            expected,
        }));
    }
    Ok((written, hasher.finish()))
}

/// Asks upstream for the rest of a blob from byte `from`. `None` unless it answered 206
/// with a `Content-Range` starting exactly there (and of the same total, when known).
async fn resume(target: &Target, digest: &Digest, from: u64, total: Option<u64>) -> Option<Answer> {
    let upstream = &target.upstream;
    let path = format!("blobs/{digest}");
    let answer = upstream.resume(Kind::Blob, &target.name, &path, from).await;
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
