//! What the cluster tests share: a fleet of replicas over one bucket and one upstream,
//! and clients that check every byte without holding a body.

use std::path::PathBuf;
use std::time::Duration;

use futures_util::future::join_all;
use futures_util::StreamExt;
use sha2::{Digest as _, Sha256};

use crate::support::regcache::Regcache;
use crate::support::registry::free_port;
use crate::support::seaweed::{Seaweed, ACCESS_KEY, SECRET_KEY};

const SECRET: &str = "a-test-secret-of-some-length";

/// Replicas that share one bucket and one upstream.
pub struct Fleet {
    dir: tempfile::TempDir,
    pub ports: Vec<u16>,
    upstream: String,
    bucket: String,
    /// More keys for the `[[upstream]]` table (say, `tag_ttl_secs`).
    pub upstream_extra: String,
}

impl Fleet {
    /// `size` replica ports chosen up front; nothing started.
    pub fn new(size: usize, upstream: String, seaweed: &Seaweed) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), SECRET).unwrap();
        Fleet {
            dir,
            ports: (0..size).map(|_| free_port()).collect(),
            upstream,
            bucket: seaweed.config(),
            upstream_extra: String::new(),
        }
    }

    pub fn disk(&self, n: usize) -> PathBuf {
        self.dir.path().join(format!("r{n}"))
    }

    /// Starts replica `n`, which knows the first `known` members.
    pub fn start(&self, n: usize, known: usize) -> Regcache {
        let members: Vec<String> = self.ports[..known]
            .iter()
            .map(|p| format!("\"http://127.0.0.1:{p}\""))
            .collect();
        let port = self.ports[n];
        let config = format!(
            "{}[cluster]\nmembers = [{}]\nself = \"http://127.0.0.1:{port}\"\nsecret_file = \"{}\"\n\
             [[upstream]]\nname = \"origin\"\nurl = \"{}\"\n{}\n",
            self.bucket,
            members.join(", "),
            self.dir.path().join("secret").display(),
            self.upstream,
            self.upstream_extra,
        );
        let env = [
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        ];
        Regcache::start_on(Some(port), &config, &self.disk(n), &env)
    }

    /// Every replica, each knowing every member.
    pub fn start_all(&self) -> Vec<Regcache> {
        (0..self.ports.len())
            .map(|n| self.start(n, self.ports.len()))
            .collect()
    }
}

/// A pull's length and digest, or the error that cut it.
pub type Pulled = Result<(u64, String), reqwest::Error>;

/// GETs `url`, hashing the body as it streams: its length and digest, or the error that
/// cut it (a client must never see a short body end cleanly).
pub async fn pull(client: &reqwest::Client, url: &str) -> Pulled {
    let response = client.get(url).send().await?.error_for_status()?;
    let mut body = response.bytes_stream();
    let (mut len, mut hash) = (0u64, Sha256::new());
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        len += chunk.len() as u64;
        hash.update(&chunk);
    }
    Ok((len, format!("sha256:{:x}", hash.finalize())))
}

/// `clients` concurrent GETs of `digest`, round-robin over `urls`; each one's replica and
/// result.
pub async fn pulls(urls: &[String], digest: &str, clients: usize) -> Vec<(usize, Pulled)> {
    let client = reqwest::Client::new();
    let tasks = (0..clients).map(|n| {
        let replica = n % urls.len();
        let url = format!("{}/v2/team/big/blobs/{digest}", urls[replica]);
        let client = client.clone();
        async move { (replica, pull(&client, &url).await) }
    });
    tokio::time::timeout(Duration::from_secs(240), join_all(tasks))
        .await
        .expect("every client finished within 4 minutes")
}

/// Every pull returned the whole blob.
pub fn all_whole(results: &[(usize, Pulled)], len: u64, digest: &str) {
    for (replica, result) in results {
        let (got_len, got) = result.as_ref().expect("a client failed");
        assert_eq!(
            (*got_len, got.as_str()),
            (len, digest),
            "via replica {replica}"
        );
    }
}

pub fn urls(replicas: &[Regcache]) -> Vec<String> {
    replicas.iter().map(Regcache::url).collect()
}

pub fn blob(len: usize, seed: u8) -> Vec<u8> {
    crate::support::data(len, seed)
}

/// The sum of every sample of `name` (any labels) whose line contains `with`.
pub async fn total(replicas: &[&Regcache], name: &str, with: &str) -> f64 {
    let mut sum = 0.0;
    for r in replicas {
        for line in r.metrics().await.lines() {
            if line.starts_with(name) && line.contains(with) {
                sum += line.rsplit(' ').next().unwrap().parse::<f64>().unwrap();
            }
        }
    }
    sum
}
