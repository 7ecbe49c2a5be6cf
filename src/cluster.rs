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
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::HeaderValue;
use prometheus::IntCounterVec;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;
use url::Url;

use crate::config::ClusterConfig;
use crate::oci::{Digest, RepoName};

/// Carries the cluster's secret on a forwarded request.
pub const PEER_HEADER: &str = "x-regcache-peer";

/// A member that failed a forward is left out of the owner choice this long: every
/// replica that sees it fail picks the same next owner, so a death costs one more fetch.
const DOWN_FOR: Duration = Duration::from_secs(10);

pub struct Cluster {
    members: Vec<Url>,
    self_url: Url,
    secret: String,
    http: reqwest::Client,
    /// `regcache_peer_forwards_total{result}`.
    forwards: IntCounterVec,
    /// Members that failed a forward, until when they are left out.
    down: Mutex<HashMap<Url, Instant>>,
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
    pub fn new(config: &ClusterConfig, forwards: IntCounterVec) -> Result<Cluster, ClusterError> {
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
        Ok(Cluster {
            members: config.members.clone(),
            self_url: config.self_url.clone(),
            secret,
            http,
            forwards,
            down: Mutex::default(),
        })
    }

    /// The member that owns `digest` among those not down, unless it is this replica.
    pub fn owner(&self, digest: &Digest) -> Option<Url> {
        let now = Instant::now();
        let down = self.down.lock().expect("down lock");
        let up = |m: &&Url| **m == self.self_url || down.get(*m).is_none_or(|until| *until <= now);
        let owner = self
            .members
            .iter()
            .filter(up)
            .max_by_key(|m| weight(m, digest))?;
        (*owner != self.self_url).then(|| owner.clone())
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

    pub fn count(&self, result: &str) {
        self.forwards.with_label_values(&[result]).inc();
    }

    /// GETs `digest` of `name` on `upstream` from `owner`, marked as forwarded.
    pub async fn fetch_blob(
        &self,
        owner: &Url,
        upstream: &str,
        name: &RepoName,
        digest: &Digest,
    ) -> reqwest::Result<reqwest::Response> {
        let mut url = owner
            .join(&format!("v2/{name}/blobs/{digest}"))
            .expect("a valid path");
        url.query_pairs_mut().append_pair("ns", upstream);
        self.http
            .get(url)
            .header(PEER_HEADER, &self.secret)
            .send()
            .await
    }
}

/// The rendezvous weight of `member` for `digest`.
fn weight(member: &Url, digest: &Digest) -> u64 {
    let mut hash = Sha256::new();
    hash.update(member.as_str().as_bytes());
    hash.update(b"\n");
    hash.update(digest.to_string().as_bytes());
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
            members.iter().max_by_key(|m| weight(m, d)).unwrap().clone()
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
}
