//! `prefetch`: fills a cache with images, either through a running daemon (plain GETs of
//! its registry API, which caches what it serves) or in-process against a cache directory
//! (the library's `Cache` and `Upstreams`, as the daemon builds them).
//!
//! Manifests are fetched one image at a time (they are small); blobs, deduplicated across
//! every image, download `jobs` at a time. Progress goes to a [`Progress`].

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use http::header::ACCEPT;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::image::{contents, Contents, ContentsError, Descriptor, ImageRef, Platform};
use super::progress::Progress;
use crate::mirror::Mirror;
use crate::oci::media::MODERN_MANIFEST_TYPES;
use crate::oci::{Accept, Digest, Reference};
use crate::server::PRIORITY;
use crate::upstream::{Priority, RouteRequest, Target, Upstreams};

/// Where requests go.
pub enum Fetcher {
    /// A running regcache's registry API, e.g. `http://127.0.0.1:5000`.
    Daemon {
        client: reqwest::Client,
        base: String,
    },
    /// A mirror in this process: the daemon's own (a prefetch through its admin API), or
    /// one over a cache this process owns for the run (see [`crate::app::owned`]).
    Local {
        cache: Arc<Mirror>,
        upstreams: Arc<Upstreams>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum PrefetchError {
    #[error("{image}: {source}")]
    Request {
        image: String,
        source: reqwest::Error,
    },
    #[error("{image}: {what} answered {status}: {body}")]
    Status {
        image: String,
        what: String,
        status: http::StatusCode,
        body: String,
    },
    #[error("{image}: {source}")]
    Cache {
        image: String,
        source: Arc<crate::error::Error>,
    },
    #[error("{image}: manifest {digest}: {source}")]
    Manifest {
        image: String,
        digest: String,
        source: ContentsError,
    },
    #[error("{image}: no platform of its index matches --platform")]
    NoPlatform { image: String },
    #[error("{image}: blob {digest}: got {got} bytes, expected {expected}")]
    Short {
        image: String,
        digest: Digest,
        got: u64,
        expected: u64,
    },
}

#[derive(Clone, Debug)]
pub struct Options {
    /// Blob downloads at once (at least 1).
    pub jobs: usize,
    /// Platforms to take from an index; empty: all of them.
    pub platforms: Vec<Platform>,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub images: usize,
    pub manifests: usize,
    pub blobs: usize,
    /// Bytes of the blobs (downloaded now or already cached).
    pub bytes: u64,
}

/// Fetches every image's manifests (the platforms asked for) and all their blobs.
pub async fn prefetch(
    source: Arc<Fetcher>,
    images: &[ImageRef],
    options: &Options,
    progress: &Progress,
) -> Result<Report, PrefetchError> {
    let mut report = Report::default();
    let mut seen = HashSet::new();
    let mut blobs: Vec<(ImageRef, Descriptor)> = Vec::new();
    for image in images {
        let (digest, body) = source.manifest(image, &image.reference).await?;
        report.manifests += 1;
        let manifests = match parse(image, &digest, &body)? {
            Contents::Image(list) => vec![list],
            Contents::Index(children) => {
                let wanted: Vec<Descriptor> = children
                    .into_iter()
                    .filter(|c| wanted(&options.platforms, c))
                    .collect();
                if wanted.is_empty() {
                    return Err(PrefetchError::NoPlatform {
                        image: image.text.clone(),
                    });
                }
                let mut lists = Vec::new();
                for child in wanted {
                    let reference = Reference::Digest(child.digest.clone());
                    let (digest, body) = source.manifest(image, &reference).await?;
                    report.manifests += 1;
                    match parse(image, &digest, &body)? {
                        Contents::Image(list) => lists.push(list),
                        // Nested indexes are not followed (no registry serves them today).
                        Contents::Index(_) => {}
                    }
                }
                lists
            }
        };
        progress.line(&format!(
            "{image}: {} manifest(s) ({digest})",
            report.manifests
        ));
        for descriptor in manifests.into_iter().flatten() {
            if seen.insert(descriptor.digest.clone()) {
                blobs.push((image.clone(), descriptor));
            }
        }
        report.images += 1;
    }
    report.blobs = blobs.len();
    progress.start(blobs.iter().map(|(_, d)| d.size).sum(), blobs.len());
    let permits = Arc::new(Semaphore::new(options.jobs.max(1)));
    let mut tasks = JoinSet::new();
    for (image, descriptor) in blobs {
        let (source, permits, progress) = (source.clone(), permits.clone(), progress.clone());
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await.expect("never closed");
            let got = source.blob(&image, &descriptor, &progress).await?;
            progress.blob_done(&descriptor.digest, got);
            Ok::<u64, PrefetchError>(got)
        });
    }
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(bytes)) => report.bytes += bytes,
            Ok(Err(e)) => {
                progress.finish();
                return Err(e);
            }
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    progress.finish();
    if let Fetcher::Local { cache, .. } = &*source {
        cache.flush().await;
    }
    Ok(report)
}

fn wanted(platforms: &[Platform], child: &Descriptor) -> bool {
    platforms.is_empty()
        || child
            .platform
            .as_ref()
            .is_some_and(|p| platforms.iter().any(|want| want.matches(p)))
}

fn parse(image: &ImageRef, digest: &str, body: &[u8]) -> Result<Contents, PrefetchError> {
    contents(body).map_err(|source| PrefetchError::Manifest {
        image: image.text.clone(),
        digest: digest.to_string(),
        source,
    })
}

impl Fetcher {
    /// A manifest's digest (as the answer named it) and body.
    async fn manifest(
        &self,
        image: &ImageRef,
        reference: &Reference,
    ) -> Result<(String, Bytes), PrefetchError> {
        match self {
            Fetcher::Daemon { client, base } => {
                let url = daemon_url(base, image, &format!("manifests/{reference}"));
                let response = client
                    .get(&url)
                    .header(PRIORITY, "background")
                    .header(ACCEPT, MODERN_MANIFEST_TYPES.join(", "))
                    .send()
                    .await
                    .map_err(|source| request_error(image, source))?;
                let response = check(image, &format!("manifest {reference}"), response).await?;
                let digest = response
                    .headers()
                    .get("docker-content-digest")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let body = response
                    .bytes()
                    .await
                    .map_err(|source| request_error(image, source))?;
                Ok((digest, body))
            }
            Fetcher::Local { cache, upstreams } => {
                let target = local_target(upstreams, image)?;
                let accept = Accept::parse(MODERN_MANIFEST_TYPES);
                let found = cache
                    .manifest(&target, reference, &accept, true)
                    .await
                    .map_err(|e| cache_error(image, e))?;
                Ok((
                    found.digest.to_string(),
                    found.bytes.expect("a GET has a body"),
                ))
            }
        }
    }

    /// Downloads one blob into the cache (or finds it there); returns its length.
    async fn blob(
        &self,
        image: &ImageRef,
        descriptor: &Descriptor,
        progress: &Progress,
    ) -> Result<u64, PrefetchError> {
        let digest = &descriptor.digest;
        let got = match self {
            Fetcher::Daemon { client, base } => {
                let url = daemon_url(base, image, &format!("blobs/{digest}"));
                let response = client
                    .get(&url)
                    .header(PRIORITY, "background")
                    .send()
                    .await
                    .map_err(|source| request_error(image, source))?;
                let mut response = check(image, &format!("blob {digest}"), response).await?;
                let mut got = 0u64;
                while let Some(chunk) = response
                    .chunk()
                    .await
                    .map_err(|source| request_error(image, source))?
                {
                    got += chunk.len() as u64;
                    progress.advance(chunk.len() as u64);
                }
                got
            }
            Fetcher::Local { cache, upstreams } => {
                let target = local_target(upstreams, image)?;
                // Found, or a fill joined or started and waited for.
                cache
                    .hold_blob(digest, &target, |bytes| progress.advance(bytes))
                    .await
                    .map_err(|e| cache_error(image, e))?
            }
        };
        if descriptor.size != 0 && got != descriptor.size {
            return Err(PrefetchError::Short {
                image: image.text.clone(),
                digest: digest.clone(),
                got,
                expected: descriptor.size,
            });
        }
        Ok(got)
    }
}

fn local_target(upstreams: &Upstreams, image: &ImageRef) -> Result<Target, PrefetchError> {
    let query = image.query();
    let mut target = upstreams
        .target(RouteRequest {
            query: query.as_deref(),
            host: None,
            name: &image.name,
        })
        .map_err(|e| cache_error(image, Arc::new(e)))?;
    // Nobody waits on a prefetch: clients' requests get the pull budget and bandwidth first.
    target.priority = Priority::Background;
    Ok(target)
}

/// `<base>/v2/<name>/<rest>[?ns=<registry>]`.
fn daemon_url(base: &str, image: &ImageRef, rest: &str) -> String {
    let base = base.trim_end_matches('/');
    let mut url = format!("{base}/v2/{}/{rest}", image.name);
    if let Some(query) = image.query() {
        url.push('?');
        url.push_str(&query);
    }
    url
}

async fn check(
    image: &ImageRef,
    what: &str,
    response: reqwest::Response,
) -> Result<reqwest::Response, PrefetchError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.text().await.unwrap_or_default();
    Err(PrefetchError::Status {
        image: image.text.clone(),
        what: what.to_string(),
        status,
        body: body.chars().take(500).collect(),
    })
}

fn request_error(image: &ImageRef, source: reqwest::Error) -> PrefetchError {
    PrefetchError::Request {
        image: image.text.clone(),
        source,
    }
}

fn cache_error(image: &ImageRef, source: impl Into<Arc<crate::error::Error>>) -> PrefetchError {
    PrefetchError::Cache {
        image: image.text.clone(),
        source: source.into(),
    }
}
