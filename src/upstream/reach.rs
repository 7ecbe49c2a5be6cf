//! Where one upstream's HTTP client may connect: the upstream itself, the hosts the
//! operator named (token realms, proxies), and elsewhere only public addresses or the kind
//! of network the upstream lives on (see `address`).
//!
//! Redirect targets and unlisted token realms come from the upstream's answers, so they are
//! checked twice: an IP literal or `localhost` before the request ([`Reach::check_host`]),
//! and a host name when it is resolved, by the client's DNS resolver ([`Guarded`]). The
//! resolver drops the addresses the name may not reach and connects to the rest, so a name
//! that resolves to 127.0.0.1 or 169.254.169.254 (or rebinds to it after a first look) is
//! never connected to. It costs nothing beyond the usual lookup: the same blocking
//! `getaddrinfo`, once per new connection.
//!
//! Names the operator wrote are trusted as resolved: the upstream's host (whose classes are
//! recorded, so an internal registry may send blobs to internal storage), its
//! `token_realm_hosts`, and the proxy hosts in `HTTP(S)_PROXY`/`ALL_PROXY`. Through a proxy,
//! the proxy resolves target names, so only the literal check applies.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::Url;

use super::address::{classify, literal_class, Class, Classes};

pub struct Reach {
    upstream_host: String,
    trusted: Vec<String>,
    /// The classes of the upstream's own addresses: its literal, or what its name resolved to.
    own: AtomicU8,
}

/// A connection regcache will not make.
#[derive(Clone, Debug, thiserror::Error)]
#[error(
    "{host} is not a public address but {}; regcache connects for an upstream only to public addresses and \
     to the kind of network the upstream itself is on",
    .class.as_str()
)]
pub struct Blocked {
    pub host: String,
    pub class: Class,
}

impl Reach {
    pub fn new(upstream: &Url, realm_hosts: &[String]) -> Reach {
        let upstream_host = upstream.host_str().unwrap_or_default().to_ascii_lowercase();
        let own = upstream
            .host()
            .and_then(|h| literal_class(&h))
            .map_or(Classes::default(), Classes::of);
        let mut trusted = vec![upstream_host.clone()];
        trusted.extend(realm_hosts.iter().map(|h| h.to_ascii_lowercase()));
        trusted.extend(proxy_hosts());
        Reach {
            upstream_host,
            trusted,
            own: AtomicU8::new(own.0),
        }
    }

    pub fn own(&self) -> Classes {
        Classes(self.own.load(Ordering::Relaxed))
    }

    /// Refuses an IP literal or `localhost` the upstream may not send regcache to. Host
    /// names are left to the resolver.
    pub fn check_host(&self, url: &Url) -> Result<(), Blocked> {
        let Some(host) = url.host() else {
            return Ok(());
        };
        match literal_class(&host) {
            Some(class) if !self.own().allow(class) => Err(Blocked {
                host: host.to_string(),
                class,
            }),
            _ => Ok(()),
        }
    }

    fn trusts(&self, name: &str) -> bool {
        self.trusted.iter().any(|t| t == name)
    }
}

/// The DNS resolver of an upstream's client.
pub struct Guarded(pub Arc<Reach>);

impl Resolve for Guarded {
    fn resolve(&self, name: Name) -> Resolving {
        let reach = self.0.clone();
        let host = name.as_str().trim_end_matches('.').to_ascii_lowercase();
        Box::pin(async move {
            // Port 0: reqwest puts in the URL's port.
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if host == reach.upstream_host {
                let classes = found
                    .iter()
                    .fold(reach.own(), |c, a| c.with(classify(a.ip())));
                reach.own.store(classes.0, Ordering::Relaxed);
            }
            if reach.trusts(&host) {
                return Ok(Box::new(found.into_iter()) as Addrs);
            }
            let own = reach.own();
            let (kept, refused): (Vec<SocketAddr>, Vec<SocketAddr>) =
                found.into_iter().partition(|a| own.allow(classify(a.ip())));
            match (kept.is_empty(), refused.first()) {
                (true, Some(first)) => Err(Box::new(Blocked {
                    host: format!("{host} ({})", first.ip()),
                    class: classify(first.ip()),
                }) as _),
                _ => Ok(Box::new(kept.into_iter()) as Addrs),
            }
        })
    }
}

/// The hosts of the proxies reqwest reads from the environment.
fn proxy_hosts() -> Vec<String> {
    let keys = [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
    ];
    keys.iter()
        .filter_map(|k| std::env::var(k).ok())
        .filter_map(|v| {
            let v = if v.contains("://") {
                v
            } else {
                format!("http://{v}")
            };
            Url::parse(&v).ok()?.host_str().map(str::to_ascii_lowercase)
        })
        .collect()
}

/// Finds a [`Blocked`] in an error's chain (the resolver's error arrives inside reqwest's).
pub fn blocked_in(e: &(dyn std::error::Error + 'static)) -> Option<Blocked> {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(b) = e.downcast_ref::<Blocked>() {
            return Some(b.clone());
        }
        next = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reach(upstream: &str) -> Reach {
        Reach::new(&Url::parse(upstream).unwrap(), &[])
    }

    fn check(r: &Reach, target: &str) -> Result<(), Blocked> {
        r.check_host(&Url::parse(target).unwrap())
    }

    #[test]
    fn a_public_upstream_may_not_send_regcache_inside() {
        let r = reach("https://registry.example.com");
        assert!(check(&r, "https://cdn.example.net/x").is_ok());
        assert!(check(&r, "https://203.0.113.9/x").is_ok());
        for target in [
            "http://127.0.0.1:9090/metrics",
            "http://localhost/",
            "http://169.254.169.254/latest/meta-data/",
            "http://[fd00:ec2::254]/",
            "http://10.0.0.1/",
            "http://0.0.0.0:9090/",
        ] {
            assert!(check(&r, target).is_err(), "{target}");
        }
        let e = check(&r, "http://169.254.169.254/").unwrap_err();
        assert!(e
            .to_string()
            .contains("169.254.169.254 is not a public address but link-local"));
    }

    #[test]
    fn an_upstream_on_loopback_may_redirect_to_loopback_only() {
        let r = reach("http://127.0.0.1:5000");
        assert!(check(&r, "http://127.0.0.1:6000/blob").is_ok());
        assert!(check(&r, "http://localhost:6000/blob").is_ok());
        assert!(check(&r, "http://169.254.169.254/").is_err());
        assert!(check(&r, "http://0.0.0.0:6000/").is_err());
        let private = reach("http://10.1.2.3:5000");
        assert!(check(&private, "http://10.9.9.9/blob").is_ok());
        assert!(check(&private, "http://127.0.0.1/").is_err());
    }

    #[tokio::test]
    async fn names_that_resolve_inside_are_refused_unless_trusted() {
        let r = Arc::new(Reach::new(
            &Url::parse("https://registry.example.com").unwrap(),
            &["auth.internal".to_string()],
        ));
        let resolver = Guarded(r.clone());
        let e = resolver
            .resolve("localhost".parse().unwrap())
            .await
            .err()
            .expect("localhost is refused");
        assert!(blocked_in(e.as_ref()).is_some(), "{e}");
        let loopback = Guarded(Arc::new(reach("http://127.0.0.1:5000")));
        let found: Vec<_> = loopback
            .resolve("localhost".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert!(!found.is_empty());
        assert!(r.trusts("auth.internal") && r.trusts("registry.example.com"));
    }
}
