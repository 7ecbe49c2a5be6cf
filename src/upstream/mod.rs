//! Upstream registries: which one serves a request ([`router`]), and the client that talks
//! to it (auth, timeouts, error classification). Nothing here caches; see `cache`.

mod auth;
mod client;
pub mod router;

use std::sync::Arc;

use http::StatusCode;

pub use client::{classify, Kind, Upstream, MAX_MANIFEST_BYTES};
pub use router::{RouteRequest, Via};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::oci::{ErrorCode, RepoName};
use router::Router;

/// Every configured upstream, and the router that picks one per request.
pub struct Upstreams {
    list: Vec<Arc<Upstream>>,
    router: Router,
}

/// The upstream chosen for a request, with the repository name as that upstream knows it.
#[derive(Clone)]
pub struct Target {
    pub upstream: Arc<Upstream>,
    pub name: RepoName,
    pub via: Via,
}

impl Upstreams {
    pub fn new(config: &Config, metrics: &Metrics) -> Result<Upstreams, reqwest::Error> {
        let list = config
            .upstreams
            .iter()
            .map(|u| Upstream::new(u.clone(), metrics.clone()).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Upstreams {
            list,
            router: Router::new(&config.upstreams),
        })
    }

    /// Picks the upstream for a request from its `ns=` parameter, path prefix, `Host` or
    /// else the default (see [`router`]). An `ns=` naming no upstream is the client's error.
    pub fn target(&self, request: RouteRequest<'_>) -> Result<Target> {
        let routed = self.router.route(request).map_err(|e| {
            Error::client(StatusCode::NOT_FOUND, ErrorCode::NameUnknown, e.to_string())
        })?;
        Ok(Target {
            upstream: self.list[routed.upstream].clone(),
            name: routed.name,
            via: routed.via,
        })
    }
}
