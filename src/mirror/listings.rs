//! `tags/list` and `referrers`, cached per repository like tags: answered locally within
//! the upstream's `listing_ttl`, asked again after it, served stale when upstream fails
//! (within `stale_if_error`) and whatever their age offline, so signature and SBOM lookups
//! (cosign, notation) work air-gapped.
//!
//! Upstream is asked for the whole listing (every page it links to, within bounds); the
//! client's `n`/`last` pages and `artifactType` filter are applied here (`server::listings`),
//! so one upstream answer serves every page and every filter.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use http::header::LINK;
use http::Method;
use moka::sync::Cache;
use serde_json::Value;

use super::Mirror;
use crate::error::{Result, UpstreamError};
use crate::metrics::Outcome;
use crate::oci::{media, Digest};
use crate::store::{unix_now, ListRecord};
use crate::upstream::{classify, Resource, Target};

/// The largest listing kept, all pages together.
const MAX_LIST_BYTES: usize = 4 << 20;
/// The most pages followed for one listing.
const MAX_PAGES: usize = 100;
/// Memory for listings held hot (the rest are read from disk when asked).
const MEMORY_BYTES: u64 = 32 << 20;

/// Which listing of a repository.
#[derive(Clone, Copy, Debug)]
pub enum ListKind<'a> {
    Tags,
    Referrers(&'a Digest),
}

impl ListKind<'_> {
    /// Its record's name in the store (never a path of its own).
    fn record_name(&self) -> String {
        match self {
            ListKind::Tags => "tags".into(),
            ListKind::Referrers(d) => format!("referrers-{}-{}", d.algorithm().as_str(), d.hex()),
        }
    }

    /// The array that later pages add to.
    fn field(&self) -> &'static str {
        match self {
            ListKind::Tags => "tags",
            ListKind::Referrers(_) => "manifests",
        }
    }
}

/// A whole listing and how it was answered.
#[derive(Clone, Debug)]
pub struct Listing {
    /// `{"name", "tags"}` with the tags in lexical order, or an OCI image index.
    pub doc: Arc<Value>,
    /// Served from the cache because upstream failed.
    pub stale: bool,
    pub outcome: Outcome,
}

/// Listings held in memory, each with when upstream last gave it (unix seconds).
#[derive(Clone)]
pub struct Lists {
    memory: Cache<String, (Arc<Value>, u64)>,
}

impl Default for Lists {
    fn default() -> Lists {
        let memory = Cache::builder()
            .max_capacity(MEMORY_BYTES)
            .weigher(|key: &String, (doc, _): &(Arc<Value>, u64)| {
                let size = key.len() + doc.to_string().len();
                u32::try_from(size).unwrap_or(u32::MAX)
            })
            .build();
        Lists { memory }
    }
}

impl Lists {
    pub fn forget_all(&self) {
        self.memory.invalidate_all();
    }
}

impl Mirror {
    /// The whole listing `kind` of `target`'s repository, from the cache or upstream.
    pub async fn listing(&self, target: &Target, kind: ListKind<'_>) -> Result<Listing> {
        let key = format!(
            "{}\n{}\n{}",
            target.upstream.name(),
            target.name,
            kind.record_name()
        );
        if let Some(found) = self.fresh_list(target, kind, &key).await {
            return Ok(found);
        }
        // One upstream request per listing at a time: who waited finds its answer.
        let _turn = self.flights.enter(format!("list\n{key}")).await;
        if let Some(found) = self.fresh_list(target, kind, &key).await {
            return Ok(found);
        }
        match self.fetch_list(target, kind).await {
            Ok(doc) => {
                let doc = Arc::new(doc);
                self.keep_list(target, kind, key, doc.clone());
                Ok(Listing {
                    doc,
                    stale: false,
                    outcome: Outcome::Miss,
                })
            }
            Err(e) if e.is_upstream_unavailable() => {
                let window = target.upstream.config().stale_if_error;
                let ttl = target.upstream.config().listing_ttl;
                let held = self.held_list(target, kind, &key).await;
                match held.filter(|(_, at)| age(*at) < ttl + window) {
                    Some((doc, _)) => {
                        let upstream = target.upstream.name();
                        tracing::warn!(%upstream, repository = %target.name, error = %e, "upstream failed; serving the cached listing stale");
                        self.count_stale(upstream);
                        Ok(Listing {
                            doc,
                            stale: true,
                            outcome: Outcome::DiskHit,
                        })
                    }
                    None => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// The listing when it may be served without asking: within its TTL, or offline.
    async fn fresh_list(&self, target: &Target, kind: ListKind<'_>, key: &str) -> Option<Listing> {
        let config = target.upstream.config();
        let (doc, at) = self.held_list(target, kind, key).await?;
        let fresh = config.offline || age(at) < config.listing_ttl;
        fresh.then_some(Listing {
            doc,
            stale: false,
            outcome: Outcome::MemoryHit,
        })
    }

    /// The listing held in memory, else on disk (then kept in memory).
    async fn held_list(
        &self,
        target: &Target,
        kind: ListKind<'_>,
        key: &str,
    ) -> Option<(Arc<Value>, u64)> {
        if let Some(held) = self.lists.memory.get(key) {
            return Some(held);
        }
        let store = self.store().clone();
        let (upstream, repo) = (target.upstream.name().to_string(), target.name.clone());
        let name = kind.record_name();
        let record = tokio::task::spawn_blocking(move || store.read_list(&upstream, &repo, &name))
            .await
            .ok()?
            .inspect_err(|e| tracing::warn!(error = %e, "reading a listing record failed"))
            .ok()??;
        let doc = Arc::new(serde_json::from_str(&record.body).ok()?);
        let held = (doc, record.checked_at);
        self.lists.memory.insert(key.to_string(), held.clone());
        Some(held)
    }

    /// Keeps a listing upstream just gave: in memory now, on disk in the background.
    fn keep_list(&self, target: &Target, kind: ListKind<'_>, key: String, doc: Arc<Value>) {
        let now = unix_now();
        let record = ListRecord {
            body: doc.to_string(),
            checked_at: now,
        };
        self.lists.memory.insert(key, (doc, now));
        let disk = self.disk().clone();
        let (upstream, repo) = (target.upstream.name().to_string(), target.name.clone());
        let name = kind.record_name();
        self.store().write_behind(move || {
            if let Err(e) = disk.store.write_list(&upstream, &repo, &name, &record) {
                disk.note_write_error("writing a listing record", &e, 0);
            }
        });
    }

    /// Asks upstream for the whole listing, following its `Link: rel="next"` pages.
    async fn fetch_list(&self, target: &Target, kind: ListKind<'_>) -> Result<Value> {
        let upstream = &target.upstream;
        let invalid = |why: String| upstream.error(UpstreamError::Invalid(why));
        let field = kind.field();
        let accept = match kind {
            ListKind::Tags => None,
            ListKind::Referrers(_) => Some(media::OCI_INDEX),
        };
        let mut whole: Option<Value> = None;
        let mut query: Option<String> = None;
        let mut read = 0usize;
        for _ in 0..MAX_PAGES {
            let resource = match kind {
                ListKind::Tags => Resource::Tags(query.as_deref()),
                ListKind::Referrers(d) => Resource::Referrers(d, query.as_deref()),
            };
            let mut answer = upstream
                .send(Method::GET, &target.name, resource, accept, target.priority)
                .await?;
            let next = next_page(answer.headers());
            let mut body = BytesMut::new();
            while let Some(chunk) = answer
                .chunk()
                .await
                .map_err(|e| upstream.error(classify(&e)))?
            {
                read += chunk.len();
                if read > MAX_LIST_BYTES {
                    return Err(invalid(format!(
                        "listing larger than {MAX_LIST_BYTES} bytes"
                    )));
                }
                body.extend_from_slice(&chunk);
            }
            upstream.count_bytes(body.len() as u64);
            let page: Value = serde_json::from_slice(&body)
                .map_err(|e| invalid(format!("listing is not JSON: {e}")))?;
            if !page.is_object() {
                return Err(invalid("listing is not a JSON object".into()));
            }
            match &mut whole {
                None => whole = Some(page),
                Some(doc) => append(doc, field, page),
            }
            match next {
                Some(q) => query = Some(q),
                None => break,
            }
        }
        let mut doc = whole.expect("one page at least");
        if let ListKind::Tags = kind {
            sort_tags(&mut doc);
        }
        Ok(doc)
    }
}

/// Adds a later page's `field` items to the first page's.
fn append(doc: &mut Value, field: &str, page: Value) {
    let Some(Value::Array(more)) = page.get(field).cloned() else {
        return;
    };
    match doc.get_mut(field) {
        Some(Value::Array(items)) => items.extend(more),
        _ => doc[field] = Value::Array(more),
    }
}

/// Tags in lexical order, once each (`null` becomes empty), as the spec orders them.
fn sort_tags(doc: &mut Value) {
    let mut tags: Vec<String> = doc
        .get("tags")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    tags.sort();
    tags.dedup();
    doc["tags"] = Value::from(tags);
}

/// The query of upstream's next page (`Link: </v2/a/tags/list?n=2&last=b>; rel="next"`).
fn next_page(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get_all(LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find(|link| link.contains("rel=\"next\"") || link.contains("rel=next"))
        .and_then(|link| {
            let target = link.trim().strip_prefix('<')?.split('>').next()?;
            Some(target.split_once('?')?.1.to_string())
        })
        .filter(|q| !q.is_empty())
}

/// Seconds since `at` (unix seconds).
fn age(at: u64) -> Duration {
    Duration::from_secs(unix_now().saturating_sub(at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_merge_and_tags_sort() {
        let mut doc = serde_json::json!({"name": "a", "tags": ["b", "a"]});
        append(
            &mut doc,
            "tags",
            serde_json::json!({"name": "a", "tags": ["c", "a"]}),
        );
        sort_tags(&mut doc);
        assert_eq!(doc["tags"], serde_json::json!(["a", "b", "c"]));
        let mut empty = serde_json::json!({"name": "a", "tags": null});
        sort_tags(&mut empty);
        assert_eq!(empty["tags"], serde_json::json!([]));
    }

    #[test]
    fn the_next_page_is_read_from_the_link_header() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            LINK,
            "</v2/a/tags/list?n=2&last=b>; rel=\"next\""
                .parse()
                .unwrap(),
        );
        assert_eq!(next_page(&headers).as_deref(), Some("n=2&last=b"));
        headers.insert(LINK, "</v2/a/tags/list?n=2>; rel=\"prev\"".parse().unwrap());
        assert_eq!(next_page(&headers), None);
        assert_eq!(next_page(&http::HeaderMap::new()), None);
    }
}
