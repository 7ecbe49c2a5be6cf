//! Replicas that route blob misses: every digest has one owner among the members, chosen
//! by rendezvous (highest random weight) hashing, so members agree without talking and a
//! member leaving moves only its own share. A replica that misses memory, disk and bucket
//! asks the owner (one hop, marked so the owner never forwards again) and streams the
//! owner's fill, which already fans out to every reader: the blob crosses the upstream
//! link once however many replicas are asked at once.
//!
//! Replicas prove themselves with a shared secret in [`PEER_HEADER`]. A forwarded request
//! is admitted on that proof (the forwarding replica checked the client), and the owner
//! still applies the upstream's allow/deny policy and membership to the name asked.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use http::{HeaderValue, Method};
use prometheus::{IntCounterVec, IntGauge};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;
use url::Url;

use crate::config::{ClusterConfig, Members};
use crate::metrics::Metrics;
use crate::oci::{Digest, RepoName};

/// Carries the cluster's secret on a forwarded request.
pub const PEER_HEADER: &str = "x-regcache-peer";
/// How many replicas a forwarded request has passed already.
pub const HOPS_HEADER: &str = "x-regcache-hops";
/// A request forwarded to the owner may follow one fill lease more; no further, so
/// replicas that disagree can never pass a request around.
pub const MAX_HOPS: u8 = 2;

/// A member that failed a forward is left out of the owner choice this long: every
/// replica that sees it fail picks the same next owner, so a death costs one more fetch.
const DOWN_FOR: Duration = Duration::from_secs(10);

/// How often `members_dns` is resolved again: a Kubernetes headless Service's records
/// follow pods within seconds, and a stale list only costs a forward to a dead member.
const RESOLVE_EVERY: Duration = Duration::from_secs(5);

pub struct Cluster {
    view: RwLock<View>,
    /// The name to re-resolve for the member list, when not a fixed list.
    dns: Option<Url>,
    /// `cluster.self` as configured.
    configured_self: Option<Url>,
    secret: String,
    http: reqwest::Client,
    /// `regcache_peer_forwards_total{result}`.
    forwards: IntCounterVec,
    /// Members that failed a forward, until when they are left out.
    down: Mutex<HashMap<Url, Instant>>,
    /// `regcache_cluster_members`.
    size: IntGauge,
}

/// The members as last known, and which one is this replica.
#[derive(Default, PartialEq)]
struct View {
    members: Vec<Url>,
    self_url: Option<Url>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster.secret_file {0}: {1}")]
    Secret(String, String),
    #[error("cannot build the peer HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

impl Cluster {
    /// Reads the secret file; does no network I/O.
    pub fn new(config: &ClusterConfig, metrics: &Metrics) -> Result<Cluster, ClusterError> {
        let path = config.secret_file.display().to_string();
        let secret = std::fs::read_to_string(&config.secret_file)
            .map_err(|e| ClusterError::Secret(path.clone(), e.to_string()))?
            .trim()
            .to_string();
        if secret.len() < 16 || HeaderValue::try_from(&secret).is_err() {
            let why = "must hold at least 16 printable characters (say, `openssl rand -hex 32`)";
            return Err(ClusterError::Secret(path, why.into()));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()?;
        let (view, dns) = match &config.members {
            Members::Static(members) => (
                View {
                    members: members.clone(),
                    self_url: config.self_url.clone(),
                },
                None,
            ),
            Members::Dns(url) => (View::default(), Some(url.clone())),
        };
        metrics.cluster_members.set(view.members.len() as i64);
        Ok(Cluster {
            view: RwLock::new(view),
            dns,
            configured_self: config.self_url.clone(),
            secret,
            http,
            forwards: metrics.peer_forwards.clone(),
            down: Mutex::default(),
            size: metrics.cluster_members.clone(),
        })
    }

    /// Resolves `members_dns` now and then every few seconds, while the cluster lives.
    /// Must be called within a tokio runtime.
    pub fn watch(cluster: &Arc<Cluster>) {
        let Some(dns) = cluster.dns.clone() else {
            return;
        };
        let cluster = Arc::downgrade(cluster);
        tokio::spawn(async move {
            while let Some(live) = cluster.upgrade() {
                live.resolve(&dns).await;
                drop(live);
                tokio::time::sleep(RESOLVE_EVERY).await;
            }
        });
    }

    /// Replaces the member list with `dns`'s addresses; on a failed or empty lookup the
    /// last list stays (a DNS hiccup must not turn every replica into a lone owner).
    async fn resolve(&self, dns: &Url) {
        let host = dns.host_str().unwrap_or_default();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = dns.port_or_known_default().unwrap_or(80);
        let found: Vec<SocketAddr> = match tokio::net::lookup_host((host, port)).await {
            Ok(found) => found.collect(),
            Err(e) => {
                tracing::warn!(name = %dns, error = %e, "cannot resolve cluster.members_dns; keeping the last member list");
                return;
            }
        };
        let mut members: Vec<Url> = found
            .iter()
            .map(|addr| {
                let mut url = dns.clone();
                url.set_ip_host(addr.ip())
                    .expect("an http(s) URL takes an IP host");
                url
            })
            .collect();
        members.sort();
        members.dedup();
        if members.is_empty() {
            tracing::warn!(name = %dns, "cluster.members_dns has no addresses; keeping the last member list");
            return;
        }
        let self_url = self
            .configured_self
            .clone()
            .or_else(|| members.iter().find(|m| is_local(m)).cloned());
        let view = View { members, self_url };
        let mut current = self.view.write().expect("view lock");
        if *current != view {
            let list: Vec<&str> = view.members.iter().map(Url::as_str).collect();
            let this = view.self_url.as_ref().map(Url::as_str);
            tracing::info!(members = ?list, this_replica = ?this, "cluster members changed");
            self.size.set(view.members.len() as i64);
            *current = view;
        }
    }

    /// The member that owns `digest` among those not down, unless it is this replica.
    pub fn owner(&self, digest: &Digest) -> Option<Url> {
        self.owner_of(&digest.to_string())
    }

    /// The member that owns `key` among those not down, unless it is this replica.
    pub fn owner_of(&self, key: &str) -> Option<Url> {
        let now = Instant::now();
        let view = self.view.read().expect("view lock");
        let down = self.down.lock().expect("down lock");
        let this = view.self_url.as_ref();
        let up = |m: &&Url| Some(*m) == this || down.get(*m).is_none_or(|until| *until <= now);
        let owner = view
            .members
            .iter()
            .filter(up)
            .max_by_key(|m| weight(m, key))?;
        (Some(owner) != this).then(|| owner.clone())
    }

    /// Leaves `member` out of the owner choice for a while: it failed a forward.
    pub fn mark_down(&self, member: &Url) {
        let until = Instant::now() + DOWN_FOR;
        self.down
            .lock()
            .expect("down lock")
            .insert(member.clone(), until);
    }

    /// Whether a request's [`PEER_HEADER`] proves it comes from a member.
    pub fn is_peer(&self, value: &HeaderValue) -> bool {
        value.as_bytes().ct_eq(self.secret.as_bytes()).into()
    }

    /// This replica's URL, once known.
    pub fn this(&self) -> Option<Url> {
        self.view.read().expect("view lock").self_url.clone()
    }

    /// Counts a forward to `to` (`owner`, `lease_holder`) with `result`.
    pub fn count(&self, to: &str, result: &str) {
        self.forwards.with_label_values(&[result, to]).inc();
    }

    /// The hops a request has made, from its headers: 0 unless a member sent it.
    pub fn hops(&self, headers: &http::HeaderMap) -> u8 {
        if !headers.get(PEER_HEADER).is_some_and(|v| self.is_peer(v)) {
            return 0;
        }
        let hops = headers.get(HOPS_HEADER).and_then(|v| v.to_str().ok());
        hops.and_then(|v| v.parse().ok())
            .unwrap_or(1)
            .clamp(1, MAX_HOPS)
    }

    /// GETs `digest` of `name` on `upstream` from `member`, as its `hops`th hop.
    pub async fn fetch_blob(
        &self,
        member: &Url,
        upstream: &str,
        name: &RepoName,
        digest: &Digest,
        hops: u8,
    ) -> reqwest::Result<reqwest::Response> {
        let path = format!("{name}/blobs/{digest}");
        self.send(member, Method::GET, &path, upstream, hops, None)
            .await
    }

    /// Sends `method` for manifest `reference` of `name` on `upstream` to `member`.
    pub async fn fetch_manifest(
        &self,
        member: &Url,
        method: Method,
        (upstream, name): (&str, &RepoName),
        reference: &str,
        accept: &str,
    ) -> reqwest::Result<reqwest::Response> {
        let path = format!("{name}/manifests/{reference}");
        self.send(member, method, &path, upstream, 1, Some(accept))
            .await
    }

    async fn send(
        &self,
        member: &Url,
        method: Method,
        path: &str,
        upstream: &str,
        hops: u8,
        accept: Option<&str>,
    ) -> reqwest::Result<reqwest::Response> {
        let mut url = member.join(&format!("v2/{path}")).expect("a valid path");
        url.query_pairs_mut().append_pair("ns", upstream);
        let mut request = self
            .http
            .request(method, url)
            .header(PEER_HEADER, &self.secret)
            .header(HOPS_HEADER, hops.to_string());
        if let Some(accept) = accept {
            request = request.header(http::header::ACCEPT, accept);
        }
        request.send().await
    }
}

/// Whether `url`'s host is an address of this machine: binding a socket to it works
/// only then (a pod knows its own IP this way, without being told).
fn is_local(url: &Url) -> bool {
    let ip = match url.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
        _ => return false,
    };
    std::net::UdpSocket::bind((ip, 0)).is_ok()
}

/// The rendezvous weight of `member` for `key`.
fn weight(member: &Url, key: &str) -> u64 {
    let mut hash = Sha256::new();
    hash.update(member.as_str().as_bytes());
    hash.update(b"\n");
    hash.update(key.as_bytes());
    let out = hash.finalize();
    u64::from_be_bytes(out[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Algorithm;

    #[test]
    fn owners_spread_and_a_leaving_member_moves_only_its_share() {
        let members: Vec<Url> = (1..=3)
            .map(|n| Url::parse(&format!("http://10.0.0.{n}:5000")).unwrap())
            .collect();
        let digests: Vec<Digest> = (0..300u32)
            .map(|n| Digest::of(Algorithm::Sha256, &n.to_be_bytes()))
            .collect();
        let owner = |members: &[Url], d: &Digest| {
            let key = d.to_string();
            members
                .iter()
                .max_by_key(|m| weight(m, &key))
                .unwrap()
                .clone()
        };
        let mut counts = [0; 3];
        for d in &digests {
            let o = owner(&members, d);
            counts[members.iter().position(|m| *m == o).unwrap()] += 1;
        }
        assert!(counts.iter().all(|&c| c > 60), "{counts:?}");
        let fewer = &members[..2];
        for d in &digests {
            let before = owner(&members, d);
            if before != members[2] {
                assert_eq!(owner(fewer, d), before, "only the leaver's share moves");
            }
        }
    }

    #[tokio::test]
    async fn a_dns_name_gives_the_members_and_the_local_one_is_this_replica() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "0123456789abcdef0123").unwrap();
        let config = ClusterConfig {
            members: Members::Dns(Url::parse("http://localhost:5999").unwrap()),
            self_url: None,
            secret_file: secret,
        };
        let metrics = Metrics::new();
        let cluster = Cluster::new(&config, &metrics).unwrap();
        let digest = Digest::of(Algorithm::Sha256, b"x");
        assert_eq!(cluster.owner(&digest), None, "no members yet: go upstream");
        cluster
            .resolve(&Url::parse("http://localhost:5999").unwrap())
            .await;
        let local = Url::parse("http://127.0.0.1:5999").unwrap();
        let members = cluster.view.read().unwrap().members.clone();
        assert!(members.contains(&local), "{members:?}");
        assert!(cluster.this().is_some_and(|s| members.contains(&s)));
        assert_eq!(metrics.cluster_members.get(), members.len() as i64);
        // A name that no longer resolves keeps the last list.
        cluster
            .resolve(&Url::parse("http://no-such-host.invalid:5999").unwrap())
            .await;
        assert!(cluster.view.read().unwrap().members.contains(&local));
    }
}
