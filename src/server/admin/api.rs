//! The admin API's operations, each `(state, request) -> Outcome<report>`: listings of
//! what is cached (paged), purge, pins, gc, verify and import. The store work runs on the
//! blocking pool against the daemon's own `Disk`, the same functions the CLI runs when no
//! daemon owns the store (`store::catalog`, `store::ops`, `transfer::archive`).

use std::collections::HashMap;
use std::io;

use futures_util::TryStreamExt;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{blocking, failed, Outcome};
use crate::metrics;
use crate::server::{RequestBody, State};
use crate::store::catalog::pins::{self, PinError, PinReport};
use crate::store::catalog::purge::{self, PurgeError, PurgeReport};
use crate::store::catalog::{Catalog, ManifestInfo, RepoInfo, Scope, TagInfo};
use crate::store::ops;
use crate::store::upstream_dir;
use crate::transfer::archive;

/// Listings answer at most this many items a page.
const MAX_LIMIT: usize = 1000;
/// The largest JSON body an operation takes.
const MAX_JSON: usize = 64 << 10;

#[derive(Debug, Serialize, Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub total: usize,
    pub offset: usize,
    pub limit: usize,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct UpstreamInfo {
    pub name: String,
    /// Empty for a directory no configured upstream names any more.
    pub url: String,
    pub repositories: usize,
    pub tags: usize,
    pub bytes: u64,
    /// Manifest GETs sent to the registry since start (what Docker Hub counts).
    #[serde(default)]
    pub pulls_spent: u64,
    /// Client manifest GETs answered without one, since start.
    #[serde(default)]
    pub pulls_avoided: u64,
    /// Pulls left in the budget, when the upstream has one (configured or reported).
    #[serde(default)]
    pub pull_budget_left: Option<u64>,
}

/// The query string's values by name.
pub fn query(request: &Request<()>) -> HashMap<String, String> {
    let text = request.uri().query().unwrap_or_default();
    url::form_urlencoded::parse(text.as_bytes())
        .into_owned()
        .collect()
}

fn page<T>(mut items: Vec<T>, q: &HashMap<String, String>) -> Outcome<Page<T>> {
    let number = |key: &str, default: usize| match q.get(key) {
        None => Ok(default),
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| bad(format!("{key} must be a number, got {v:?}"))),
    };
    let (offset, limit) = (
        number("offset", 0)?,
        number("limit", 100)?.clamp(1, MAX_LIMIT),
    );
    let total = items.len();
    let items = items.drain(offset.min(total)..).take(limit).collect();
    Ok(Page {
        items,
        total,
        offset,
        limit,
    })
}

fn bad(message: String) -> (StatusCode, String) {
    (StatusCode::BAD_REQUEST, message)
}

/// Upstream directory names to the configured names.
fn names(state: &State) -> HashMap<String, (String, String)> {
    state
        .upstreams
        .configs()
        .into_iter()
        .map(|u| (upstream_dir(&u.name), (u.name.clone(), u.url.to_string())))
        .collect()
}

/// Every cached repository with its sizes, upstreams by their configured names.
async fn all_repositories(state: &State) -> Outcome<Vec<RepoInfo>> {
    let disk = state.cache.disk().clone();
    let mut repos = blocking(move || {
        let catalog = Catalog::read(&disk.store).map_err(failed)?;
        Ok(catalog.repositories(&disk.store, &disk.index, &disk.pins))
    })
    .await?;
    let names = names(state);
    for repo in &mut repos {
        if let Some((name, _)) = names.get(&repo.upstream) {
            repo.upstream = name.clone();
        }
    }
    Ok(repos)
}

pub async fn upstreams(state: &State) -> Outcome<Vec<UpstreamInfo>> {
    let repos = all_repositories(state).await?;
    // The pull counts, as `/metrics` shows them, by (metric, upstream).
    let families = state.metrics.gather();
    let mut pulls = HashMap::new();
    for name in [
        metrics::UPSTREAM_PULLS,
        metrics::PULLS_AVOIDED,
        metrics::PULL_BUDGET_REMAINING,
    ] {
        for (labels, value) in metrics::counters(&families, name) {
            if let Some(upstream) = labels.get("upstream") {
                pulls.insert((name, upstream.clone()), value);
            }
        }
    }
    let mut out: Vec<UpstreamInfo> = state
        .upstreams
        .configs()
        .into_iter()
        .map(|u| {
            let counted = |name: &str| pulls.get(&(name, u.name.clone())).copied();
            UpstreamInfo {
                name: u.name.clone(),
                url: u.url.to_string(),
                repositories: 0,
                tags: 0,
                bytes: 0,
                pulls_spent: counted(metrics::UPSTREAM_PULLS).unwrap_or(0),
                pulls_avoided: counted(metrics::PULLS_AVOIDED).unwrap_or(0),
                pull_budget_left: counted(metrics::PULL_BUDGET_REMAINING),
            }
        })
        .collect();
    for repo in repos {
        let at = match out.iter().position(|u| u.name == repo.upstream) {
            Some(at) => at,
            None => {
                out.push(UpstreamInfo {
                    name: repo.upstream.clone(),
                    url: String::new(),
                    repositories: 0,
                    tags: 0,
                    bytes: 0,
                    pulls_spent: 0,
                    pulls_avoided: 0,
                    pull_budget_left: None,
                });
                out.len() - 1
            }
        };
        out[at].repositories += 1;
        out[at].tags += repo.tags;
        out[at].bytes += repo.bytes;
    }
    Ok(out)
}

/// `?upstream=&sort=name|bytes|last_pull&offset=&limit=`.
pub async fn repositories(state: &State, q: &HashMap<String, String>) -> Outcome<Page<RepoInfo>> {
    let mut repos = all_repositories(state).await?;
    if let Some(upstream) = q.get("upstream") {
        repos.retain(|r| r.upstream == *upstream);
    }
    match q.get("sort").map(String::as_str) {
        None | Some("name") => {}
        Some("bytes") => repos.sort_by_key(|r| std::cmp::Reverse(r.bytes)),
        Some("last_pull") => repos.sort_by_key(|r| std::cmp::Reverse(r.last_pull)),
        Some(other) => return Err(bad(format!("sort={other}: use name, bytes or last_pull"))),
    }
    page(repos, q)
}

/// The repository named by `?upstream=&repository=`, as the store names it.
fn repo_id(q: &HashMap<String, String>) -> Outcome<(String, String)> {
    match (q.get("upstream"), q.get("repository")) {
        (Some(u), Some(r)) => Ok((upstream_dir(u), r.clone())),
        _ => Err(bad("give ?upstream=NAME&repository=REPO".into())),
    }
}

pub async fn tags(state: &State, q: &HashMap<String, String>) -> Outcome<Page<TagInfo>> {
    let id = repo_id(q)?;
    let disk = state.cache.disk().clone();
    let tags = blocking(move || {
        let catalog = Catalog::read(&disk.store).map_err(failed)?;
        Ok(catalog.tags(&disk.store, &disk.index, &disk.pins, &id))
    })
    .await?;
    page(tags, q)
}

pub async fn manifests(state: &State, q: &HashMap<String, String>) -> Outcome<Page<ManifestInfo>> {
    let id = repo_id(q)?;
    let disk = state.cache.disk().clone();
    let manifests = blocking(move || {
        let catalog = Catalog::read(&disk.store).map_err(failed)?;
        Ok(catalog.manifests(&disk.store, &disk.index, &id))
    })
    .await?;
    page(manifests, q)
}

pub fn pin_list(state: &State) -> Vec<Scope> {
    state.cache.disk().pins.list()
}

pub async fn pin(state: &State, request: &Request<()>, on: bool) -> Outcome<PinReport> {
    let scope: Scope = json(request).await?;
    let disk = state.cache.disk().clone();
    blocking(move || {
        let done = if on {
            pins::pin(&disk, scope)
        } else {
            pins::unpin(&disk, scope)
        };
        done.map_err(|e| match e {
            PinError::NotCached(_) => (StatusCode::NOT_FOUND, e.to_string()),
            PinError::Io(e) => failed(e),
        })
    })
    .await
}

pub async fn purge(state: &State, request: &Request<()>) -> Outcome<PurgeReport> {
    let scope: Scope = json(request).await?;
    let disk = state.cache.disk().clone();
    let (report, removed) = blocking(move || {
        purge::purge(&disk, &scope).map_err(|e| match e {
            PurgeError::NotCached(_) => (StatusCode::NOT_FOUND, e.to_string()),
            PurgeError::Io(e) => failed(e),
        })
    })
    .await?;
    state.cache.forget(&removed);
    Ok(report)
}

pub async fn gc(state: &State) -> Outcome<ops::GcReport> {
    let disk = state.cache.disk().clone();
    blocking(move || Ok(ops::gc(&disk))).await
}

pub async fn verify(state: &State) -> Outcome<ops::VerifyReport> {
    let disk = state.cache.disk().clone();
    let report = blocking(move || ops::verify(&disk).map_err(failed)).await?;
    state.cache.forget(&report.removed);
    Ok(report)
}

/// Streams the request body, an OCI layout archive, into the store.
pub async fn import(state: &State, request: &Request<()>) -> Outcome<archive::ImportReport> {
    let upstream = query(request).remove("upstream");
    let body = body(request)?;
    let stream = body.into_data_stream().map_err(io::Error::other);
    let reader = tokio_util::io::StreamReader::new(stream);
    let reader = tokio_util::io::SyncIoBridge::new(reader);
    let (disk, upstreams) = (state.cache.disk().clone(), state.upstreams.configs());
    let imported = blocking(move || {
        archive::import(&disk, &upstreams, reader, upstream.as_deref())
            .map_err(|e| (StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))
    })
    .await;
    // Tag answers held in memory must not hide the tags just written.
    state.cache.forget(&[]);
    imported
}

fn body(request: &Request<()>) -> Outcome<hyper::body::Incoming> {
    request
        .extensions()
        .get::<RequestBody>()
        .and_then(|b| b.take())
        .ok_or_else(|| bad("this operation takes a request body".into()))
}

/// The request body as JSON of at most `MAX_JSON` bytes.
pub async fn json<T: DeserializeOwned>(request: &Request<()>) -> Outcome<T> {
    let limited = http_body_util::Limited::new(body(request)?, MAX_JSON);
    let bytes = limited
        .collect()
        .await
        .map_err(|e| bad(format!("reading the body: {e}")))?
        .to_bytes();
    serde_json::from_slice(&bytes)
        .map_err(|e| bad(format!("the body is not what this operation takes: {e}")))
}
