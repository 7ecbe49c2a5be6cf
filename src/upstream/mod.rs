//! Upstream registries: which one serves a request, and the client that talks to it
//! (auth, timeouts, error classification). Nothing here caches; see `cache`.

mod auth;
mod client;

use std::sync::Arc;

pub use client::{classify, Kind, Upstream, MAX_MANIFEST_BYTES};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::oci::RepoName;

/// Every configured upstream, and the default one for requests that name none.
pub struct Upstreams {
    list: Vec<Arc<Upstream>>,
    default: usize,
}

/// The upstream chosen for a request, with the repository name as that upstream knows it.
#[derive(Clone)]
pub struct Target {
    pub upstream: Arc<Upstream>,
    pub name: RepoName,
}

impl Upstreams {
    pub fn new(config: &Config, metrics: &Metrics) -> Result<Upstreams, reqwest::Error> {
        let list = config
            .upstreams
            .iter()
            .map(|u| Upstream::new(u.clone(), metrics.clone()).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let default = config.upstreams.iter().position(|u| u.default).unwrap_or(0);
        Ok(Upstreams { list, default })
    }

    /// Picks the upstream for a repository. Every request goes to the default upstream
    /// for now; per-request routing (containerd `ns=`, path prefix, Host) builds on this.
    pub fn route(&self, name: &RepoName) -> Target {
        let upstream = self.list[self.default].clone();
        Target {
            name: upstream.repository(name),
            upstream,
        }
    }
}
