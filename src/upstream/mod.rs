//! Upstream registries: which one serves a request ([`router`]), and the client that talks
//! to it (auth, blob redirects, timeouts, error classification). Nothing here caches; see `cache`.

mod address;
mod auth;
mod bandwidth;
mod budget;
mod client;
mod credentials;
mod docker_config;
#[cfg(feature = "ecr")]
mod ecr;
mod helper;
mod parents;
pub mod policy;
mod ratelimit;
mod reach;
mod realm;
pub mod redact;
mod redirect;
mod resource;
mod retry;
pub mod router;

use std::sync::Arc;

use http::StatusCode;

pub use budget::Priority;
pub use client::{classify, Answer, Upstream, MAX_MANIFEST_BYTES};
pub use resource::{Kind, Resource};
pub use router::{RouteRequest, Via};

use crate::config::{Config, UpstreamConfig};
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
    /// Replicas of the cluster this request passed already (0: from a client); see
    /// `cluster::MAX_HOPS`.
    pub hops: u8,
    /// Whether a client waits for the answer (pull budget and bandwidth go to it first).
    pub priority: Priority,
}

impl Upstreams {
    pub fn new(config: &Config, metrics: &Metrics) -> Result<Upstreams, reqwest::Error> {
        let list = config
            .upstreams
            .iter()
            .map(|u| Upstream::new(with_docker_credentials(u), metrics.clone()).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Upstreams {
            list,
            router: Router::new(&config.upstreams),
        })
    }

    /// The default upstream (the one a request naming none goes to).
    pub fn default_upstream(&self) -> Option<Arc<Upstream>> {
        self.list.iter().find(|u| u.config().default).cloned()
    }

    /// Each upstream's configuration, in the config's order (the default first).
    pub fn configs(&self) -> Vec<crate::config::UpstreamConfig> {
        self.list.iter().map(|u| u.config().clone()).collect()
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
            hops: 0,
            priority: Priority::Client,
        })
    }
}

/// Fills in credentials (or a credential helper) from the Docker CLI's config.json when
/// the config gave no source of credentials. Reads a small file once at startup; a broken
/// file is a warning, never a failure.
fn with_docker_credentials(config: &UpstreamConfig) -> UpstreamConfig {
    let mut config = config.clone();
    let has_source =
        config.credentials.is_some() || config.credential_helper.is_some() || config.ecr.is_some();
    if has_source || !config.docker_config {
        return config;
    }
    let Some(path) = config
        .docker_config_file
        .clone()
        .or_else(docker_config::default_path)
    else {
        return config;
    };
    let file = match docker_config::load(&path) {
        Ok(file) => file,
        Err(e) => {
            tracing::warn!(upstream = %config.name, error = %e, "ignoring the Docker config file");
            return config;
        }
    };
    let implied = config.implied_names();
    let names: Vec<&str> = config
        .explicit_names()
        .chain(implied.iter().map(String::as_str))
        .collect();
    match file.find(&names) {
        Some(docker_config::Found::Credentials(c)) => {
            tracing::info!(upstream = %config.name, username = %c.username, file = %path.display(), "using credentials from the Docker config file");
            config.credentials = Some(c);
        }
        Some(docker_config::Found::Helper(helper)) => {
            tracing::info!(upstream = %config.name, helper = %helper, file = %path.display(), "using the credential helper named in the Docker config file");
            config.credential_helper = Some(helper);
        }
        None => {}
    }
    config
}
