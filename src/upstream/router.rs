//! Which upstream serves a request, read from the request the way clients address a mirror:
//!
//! 1. containerd's `ns=` query parameter (`/v2/library/nginx/manifests/1.27?ns=docker.io`);
//! 2. a path prefix naming the upstream (`/v2/docker.io/library/nginx/...`), which is how
//!    podman and CRI-O use a `registries.conf` mirror such as `localhost:5000/docker.io`;
//! 3. the request's `Host` when it names an upstream (DNS pointed at regcache);
//! 4. the default upstream (the Docker daemon's `registry-mirrors`).
//!
//! An upstream answers to its `name`, its `aliases`, its URL's `host[:port]`, and, for
//! Docker Hub, `docker.io` and `index.docker.io`. Explicit names win over implied ones.
//! Pure: no I/O, no clock; the handlers pass in what they read from the request.

use std::collections::HashMap;

use crate::config::UpstreamConfig;
use crate::oci::RepoName;

/// What routing needs from a request. `host` is the `Host` header (or h2 `:authority`).
#[derive(Clone, Copy, Debug)]
pub struct RouteRequest<'a> {
    pub query: Option<&'a str>,
    pub host: Option<&'a str>,
    pub name: &'a RepoName,
}

/// How a request was routed; a bounded label for spans and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Namespace,
    PathPrefix,
    Host,
    Default,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Namespace => "ns",
            Via::PathPrefix => "path_prefix",
            Via::Host => "host",
            Via::Default => "default",
        }
    }
}

/// The routing decision: an index into the configured upstreams, and the repository name
/// as that upstream knows it (prefix removed, `library/` added where the upstream wants it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routed {
    pub upstream: usize,
    pub name: RepoName,
    pub via: Via,
}

/// `ns=` named a registry no upstream answers to.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "ns={0} names no upstream of this regcache; add an [[upstream]] for it, or give an \
     existing one the alias {0:?}"
)]
pub struct UnknownNamespace(pub String);

pub struct Router {
    names: HashMap<String, usize>,
    library_prefix: Vec<bool>,
    default: usize,
}

impl Router {
    pub fn new(upstreams: &[UpstreamConfig]) -> Router {
        let mut names = HashMap::new();
        for (i, u) in upstreams.iter().enumerate() {
            for name in u.explicit_names() {
                names.entry(name.to_string()).or_insert(i);
            }
        }
        for (i, u) in upstreams.iter().enumerate() {
            for name in u.implied_names() {
                names.entry(name).or_insert(i);
            }
        }
        Router {
            names,
            library_prefix: upstreams.iter().map(|u| u.library_prefix).collect(),
            default: upstreams.iter().position(|u| u.default).unwrap_or(0),
        }
    }

    /// The upstream a name (as a client writes a registry) stands for.
    pub fn lookup(&self, name: &str) -> Option<usize> {
        self.names.get(&name.to_ascii_lowercase()).copied()
    }

    pub fn route(&self, request: RouteRequest<'_>) -> Result<Routed, UnknownNamespace> {
        let (upstream, name, via) = self.pick(request)?;
        let name = if self.library_prefix[upstream] {
            name.with_library_prefix()
        } else {
            name
        };
        Ok(Routed {
            upstream,
            name,
            via,
        })
    }

    fn pick(&self, request: RouteRequest<'_>) -> Result<(usize, RepoName, Via), UnknownNamespace> {
        let name = request.name;
        if let Some(ns) = request.query.and_then(namespace) {
            return match self.lookup(&ns) {
                Some(i) => Ok((i, name.clone(), Via::Namespace)),
                None => Err(UnknownNamespace(ns)),
            };
        }
        if let Some((first, rest)) = name.strip_first_component() {
            if let Some(i) = self.lookup(first) {
                return Ok((i, rest, Via::PathPrefix));
            }
        }
        if let Some(i) = request.host.and_then(|h| self.lookup_host(h)) {
            return Ok((i, name.clone(), Via::Host));
        }
        Ok((self.default, name.clone(), Via::Default))
    }

    /// `Host` as sent (`ghcr.io:443` too), then without its port.
    fn lookup_host(&self, host: &str) -> Option<usize> {
        self.lookup(host).or_else(|| {
            let (bare, port) = host.rsplit_once(':')?;
            // `[::1]` has colons of its own; only strip a real port.
            port.bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| self.lookup(bare))?
        })
    }
}

/// The `ns` query parameter, if present and not empty.
fn namespace(query: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "ns")
        .map(|(_, v)| v.trim().to_ascii_lowercase())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Overrides};

    fn router() -> Router {
        let config = Config::parse(
            r#"
            [[upstream]]
            name = "hub"
            url = "https://registry-1.docker.io"
            aliases = ["docker.io", "index.docker.io"]
            default = true
            [[upstream]]
            url = "https://ghcr.io"
            [[upstream]]
            name = "local"
            url = "http://127.0.0.1:5001"
            aliases = ["registry.internal"]
            "#,
            "test",
            &Overrides::default(),
        )
        .unwrap();
        Router::new(&config.upstreams)
    }

    fn route(query: Option<&str>, host: Option<&str>, name: &str) -> (usize, String, Via) {
        let name: RepoName = name.parse().unwrap();
        let r = router()
            .route(RouteRequest {
                query,
                host,
                name: &name,
            })
            .unwrap();
        (r.upstream, r.name.to_string(), r.via)
    }

    #[test]
    fn ns_names_the_upstream_and_docker_io_is_docker_hub() {
        assert_eq!(
            route(Some("ns=docker.io"), None, "nginx"),
            (0, "library/nginx".into(), Via::Namespace)
        );
        assert_eq!(
            route(Some("ns=ghcr.io"), Some("docker.io"), "owner/app"),
            (1, "owner/app".into(), Via::Namespace)
        );
        assert_eq!(
            route(Some("n=10&ns=127.0.0.1%3A5001"), None, "a"),
            (2, "a".into(), Via::Namespace)
        );
        // With ns= the whole path is the repository, even if it starts like a prefix.
        assert_eq!(
            route(Some("ns=ghcr.io"), None, "docker.io/x"),
            (1, "docker.io/x".into(), Via::Namespace)
        );
    }

    #[test]
    fn an_unknown_ns_is_refused_not_sent_to_the_default() {
        let name: RepoName = "a".parse().unwrap();
        let err = router()
            .route(RouteRequest {
                query: Some("ns=quay.io"),
                host: None,
                name: &name,
            })
            .unwrap_err();
        assert_eq!(err, UnknownNamespace("quay.io".into()));
        assert!(err.to_string().contains("alias \"quay.io\""));
    }

    #[test]
    fn a_path_prefix_names_the_upstream_and_is_removed() {
        assert_eq!(
            route(None, None, "docker.io/library/nginx"),
            (0, "library/nginx".into(), Via::PathPrefix)
        );
        assert_eq!(
            route(None, None, "docker.io/nginx"),
            (0, "library/nginx".into(), Via::PathPrefix)
        );
        assert_eq!(
            route(None, None, "hub/nginx"),
            (0, "library/nginx".into(), Via::PathPrefix)
        );
        assert_eq!(
            route(None, None, "ghcr.io/owner/app"),
            (1, "owner/app".into(), Via::PathPrefix)
        );
        assert_eq!(
            route(None, None, "registry.internal/team/app"),
            (2, "team/app".into(), Via::PathPrefix)
        );
        // A lone component is a repository, not a prefix.
        assert_eq!(
            route(None, None, "ghcr.io"),
            (0, "library/ghcr.io".into(), Via::Default)
        );
    }

    #[test]
    fn host_routes_when_nothing_else_does() {
        assert_eq!(
            route(None, Some("ghcr.io"), "owner/app"),
            (1, "owner/app".into(), Via::Host)
        );
        assert_eq!(
            route(None, Some("GHCR.io:443"), "owner/app"),
            (1, "owner/app".into(), Via::Host)
        );
        assert_eq!(
            route(None, Some("127.0.0.1:5001"), "a"),
            (2, "a".into(), Via::Host)
        );
        // The path prefix is more specific than the Host.
        assert_eq!(
            route(None, Some("ghcr.io"), "docker.io/library/nginx"),
            (0, "library/nginx".into(), Via::PathPrefix)
        );
    }

    #[test]
    fn everything_else_goes_to_the_default() {
        for host in [None, Some("localhost:5000"), Some("[::1]:5000"), Some("")] {
            assert_eq!(
                route(Some("n=1"), host, "library/nginx"),
                (0, "library/nginx".into(), Via::Default)
            );
        }
        assert_eq!(
            route(Some("ns="), None, "nginx"),
            (0, "library/nginx".into(), Via::Default)
        );
        assert_eq!(
            route(None, None, "unknown.example/app"),
            (0, "unknown.example/app".into(), Via::Default)
        );
    }

    #[test]
    fn explicit_names_win_over_implied_ones() {
        let config = Config::parse(
            r#"
            [[upstream]]
            url = "https://registry-1.docker.io"
            [[upstream]]
            name = "mirror"
            url = "https://mirror.example"
            aliases = ["docker.io"]
            "#,
            "test",
            &Overrides::default(),
        )
        .unwrap();
        let router = Router::new(&config.upstreams);
        assert_eq!(router.lookup("docker.io"), Some(1));
        assert_eq!(router.lookup("index.docker.io"), Some(0));
        assert_eq!(router.lookup("mirror.example"), Some(1));
    }
}
