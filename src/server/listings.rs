//! `tags/list` and `referrers`: the whole listing comes from the mirror (cached, see
//! `mirror::listings`); the client's page (`n`, `last`) and filter (`artifactType`) are
//! cut from it here.

use http::header::{CONTENT_TYPE, LINK, WARNING};
use http::request::Parts;
use http::{Response, StatusCode};
use serde_json::Value;

use super::body::full;
use super::manifest::STALE;
use super::service::Reply;
use super::State;
use crate::error::{Error, Result};
use crate::mirror::{ListKind, Listing};
use crate::oci::{media, Digest, ErrorCode};
use crate::upstream::Target;

/// Set on a referrers answer filtered by `artifactType`, as the spec asks.
const FILTERS_APPLIED: &str = "oci-filters-applied";

pub async fn tags(state: &State, parts: &Parts, target: &Target) -> Result<Reply> {
    let query = Query::of(parts);
    let n = match query.get("n") {
        None => None,
        Some(n) => Some(n.parse::<usize>().map_err(|_| {
            Error::client(
                StatusCode::BAD_REQUEST,
                ErrorCode::Unsupported,
                format!("n = {n:?}: give the number of tags wanted, a whole number"),
            )
        })?),
    };
    let listing = state.cache.listing(target, ListKind::Tags).await?;
    let all = listing.doc["tags"].as_array().cloned().unwrap_or_default();
    let after = query.get("last");
    let mut page: Vec<Value> = all
        .into_iter()
        .filter(|t| after.is_none_or(|last| t.as_str().is_some_and(|t| t > last)))
        .collect();
    let mut next = None;
    if let Some(n) = n.filter(|&n| n < page.len()) {
        page.truncate(n);
        next = page.last().and_then(Value::as_str).map(|last| {
            let rest = query.without(&["n", "last"]);
            let mut q = url::form_urlencoded::Serializer::new(String::new());
            q.extend_pairs(rest).append_pair("n", &n.to_string());
            q.append_pair("last", last);
            format!("<{}?{}>; rel=\"next\"", parts.uri.path(), q.finish())
        });
    }
    let doc = serde_json::json!({"name": listing.doc["name"], "tags": page});
    let mut builder = Response::builder().header(CONTENT_TYPE, "application/json");
    if let Some(link) = next {
        builder = builder.header(LINK, link);
    }
    Ok(reply(builder, &listing, doc))
}

pub async fn referrers(
    state: &State,
    parts: &Parts,
    target: &Target,
    digest: &Digest,
) -> Result<Reply> {
    let query = Query::of(parts);
    let listing = state
        .cache
        .listing(target, ListKind::Referrers(digest))
        .await?;
    let mut doc = (*listing.doc).clone();
    let mut builder = Response::builder().header(CONTENT_TYPE, media::OCI_INDEX);
    if let Some(wanted) = query.get("artifactType") {
        // A media type has no spaces: a space is a `+` sent unencoded (`spdx+json`).
        let wanted = &wanted.replace(' ', "+");
        if let Some(Value::Array(manifests)) = doc.get_mut("manifests") {
            manifests.retain(|m| m["artifactType"].as_str() == Some(wanted));
        }
        builder = builder.header(FILTERS_APPLIED, "artifactType");
    }
    Ok(reply(builder, &listing, doc))
}

fn reply(mut builder: http::response::Builder, listing: &Listing, doc: Value) -> Reply {
    if listing.stale {
        builder = builder
            .header(WARNING, "110 - \"response is stale\"")
            .header(STALE, "1");
    }
    let body = full(serde_json::to_vec(&doc).expect("JSON serializes"));
    Reply::new(builder.body(body).expect("valid headers"), listing.outcome)
}

/// The request's query pairs, decoded.
struct Query(Vec<(String, String)>);

impl Query {
    fn of(parts: &Parts) -> Query {
        let query = parts.uri.query().unwrap_or_default();
        Query(
            url::form_urlencoded::parse(query.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The pairs other than `keys` (`ns=` stays, so the next page is routed alike).
    fn without<'a>(&'a self, keys: &'a [&str]) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.0
            .iter()
            .filter(move |(k, _)| !keys.contains(&k.as_str()))
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }
}
