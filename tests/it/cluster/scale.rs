//! The cluster at the scale, with real components: the real docker-registry
//! upstream (its access log counts GETs per digest), SeaweedFS as the bucket, three or
//! four regcache processes with their own disks. Where a test must act mid-transfer, a
//! paced relay in front of the registry makes the link slow (`support::throttle`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use futures_util::StreamExt;
use sha2::{Digest as _, Sha256};

use crate::support::images::push_blob;
use crate::support::regcache::Regcache;
use crate::support::registry::{free_port, Registry};
use crate::support::seaweed::{Seaweed, ACCESS_KEY, SECRET_KEY};
use crate::support::throttle::Throttle;

const MIB: usize = 1 << 20;
const SECRET: &str = "a-test-secret-of-some-length";

/// Replicas that share one bucket and one upstream.
struct Fleet {
    dir: tempfile::TempDir,
    ports: Vec<u16>,
    upstream: String,
    bucket: String,
}

impl Fleet {
    /// `size` replica ports chosen up front; nothing started.
    fn new(size: usize, upstream: String, seaweed: &Seaweed) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), SECRET).unwrap();
        Fleet {
            dir,
            ports: (0..size).map(|_| free_port()).collect(),
            upstream,
            bucket: seaweed.config(),
        }
    }

    fn disk(&self, n: usize) -> PathBuf {
        self.dir.path().join(format!("r{n}"))
    }

    /// Starts replica `n`, which knows the first `known` members.
    fn start(&self, n: usize, known: usize) -> Regcache {
        let members: Vec<String> = self.ports[..known]
            .iter()
            .map(|p| format!("\"http://127.0.0.1:{p}\""))
            .collect();
        let port = self.ports[n];
        let config = format!(
            "{}[cluster]\nmembers = [{}]\nself = \"http://127.0.0.1:{port}\"\nsecret_file = \"{}\"\n\
             [[upstream]]\nname = \"origin\"\nurl = \"{}\"\n",
            self.bucket,
            members.join(", "),
            self.dir.path().join("secret").display(),
            self.upstream,
        );
        let env = [
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        ];
        Regcache::start_on(Some(port), &config, &self.disk(n), &env)
    }

    /// Every replica, each knowing every member.
    fn start_all(&self) -> Vec<Regcache> {
        (0..self.ports.len())
            .map(|n| self.start(n, self.ports.len()))
            .collect()
    }
}

/// A pull's length and digest, or the error that cut it.
type Pulled = Result<(u64, String), reqwest::Error>;

/// GETs `url`, hashing the body as it streams: its length and digest, or the error that
/// cut it (a client must never see a short body end cleanly).
async fn pull(client: &reqwest::Client, url: &str) -> Pulled {
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
async fn pulls(urls: &[String], digest: &str, clients: usize) -> Vec<(usize, Pulled)> {
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
fn all_whole(results: &[(usize, Pulled)], len: u64, digest: &str) {
    for (replica, result) in results {
        let (got_len, got) = result.as_ref().expect("a client failed");
        assert_eq!(
            (*got_len, got.as_str()),
            (len, digest),
            "via replica {replica}"
        );
    }
}

fn urls(replicas: &[Regcache]) -> Vec<String> {
    replicas.iter().map(Regcache::url).collect()
}

fn blob(len: usize, seed: u8) -> Vec<u8> {
    crate::support::data(len, seed)
}

/// The sum of every sample of `name` (any labels) whose line contains `with`.
async fn total(replicas: &[&Regcache], name: &str, with: &str) -> f64 {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_cold_clients_one_get_then_a_killed_replica_and_wiped_disks_cost_none() {
    let Some(seaweed) = Seaweed::start("fleet") else {
        return;
    };
    let registry = Registry::start();
    let len = 256 * MIB;
    let digest = push_blob(&registry.url(), "team/big", blob(len, 1)).await;
    let fleet = Fleet::new(3, registry.url(), &seaweed);
    let mut replicas = fleet.start_all();

    let results = pulls(&urls(&replicas), &digest, 60).await;
    all_whole(&results, len as u64, &digest);
    assert_eq!(
        registry.gets_of(&digest),
        1,
        "60 cold clients on 3 replicas"
    );

    // A replica killed: what the others and the bucket hold is still there.
    replicas[0].stop();
    let survivors = urls(&replicas[1..]);
    all_whole(&pulls(&survivors, &digest, 4).await, len as u64, &digest);
    replicas[0] = fleet.start(0, 3);
    all_whole(
        &pulls(&urls(&replicas[..1]), &digest, 1).await,
        len as u64,
        &digest,
    );
    assert_eq!(registry.gets_of(&digest), 1, "after a replica was killed");

    // Every replica restarted with an empty disk: the bucket serves them all.
    for (n, replica) in replicas.iter_mut().enumerate() {
        replica.stop();
        std::fs::remove_dir_all(fleet.disk(n)).unwrap();
    }
    let replicas = fleet.start_all();
    all_whole(
        &pulls(&urls(&replicas), &digest, 6).await,
        len as u64,
        &digest,
    );
    assert_eq!(registry.gets_of(&digest), 1, "after every disk was wiped");
    let refs: Vec<&Regcache> = replicas.iter().collect();
    assert!(
        total(
            &refs,
            "regcache_bucket_operations_total",
            "get_blob\",result=\"hit"
        )
        .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_owner_killed_mid_fill_of_sixty_clients_costs_at_most_two_gets() {
    let Some(seaweed) = Seaweed::start("kill") else {
        return;
    };
    let registry = Registry::start();
    let len = 256 * MIB;
    let digest = push_blob(&registry.url(), "team/big", blob(len, 2)).await;
    // About four seconds per fetch: the kill lands mid-fill.
    let link = Throttle::start(&registry.addr(), 64 << 20).await;
    let fleet = Fleet::new(3, link.url(), &seaweed);
    let mut replicas = fleet.start_all();
    let urls = urls(&replicas);
    let clients = {
        let urls = urls.clone();
        let digest = digest.clone();
        tokio::spawn(async move { pulls(&urls, &digest, 60).await })
    };
    // The owner is the one replica the other two forwarded to.
    let deadline = Instant::now() + Duration::from_secs(30);
    let owner = loop {
        let mut forwarded = Vec::new();
        for r in &replicas {
            forwarded
                .push(total(&[r], "regcache_peer_forwards_total", "result=\"ok\"").await > 0.0);
        }
        if forwarded.iter().filter(|f| **f).count() == 2 {
            break forwarded.iter().position(|f| !f).unwrap();
        }
        assert!(Instant::now() < deadline, "no forwards seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    replicas[owner].stop();
    let results = clients.await.unwrap();
    let client = reqwest::Client::new();
    for (replica, result) in results {
        match result {
            // A body that ended cleanly is the whole blob, never a short or wrong one.
            Ok(got) => assert_eq!(
                got,
                (len as u64, digest.clone()),
                "a clean end, wrong bytes"
            ),
            // Cut: a client of a survivor asks again and gets the blob.
            Err(_) if replica != owner => {
                let url = format!("{}/v2/team/big/blobs/{digest}", urls[replica]);
                let again = pull(&client, &url).await.expect("the retry succeeds");
                assert_eq!(again, (len as u64, digest.clone()));
            }
            Err(_) => {}
        }
    }
    let gets = registry.gets_of(&digest);
    assert!(
        gets <= 2,
        "{gets} upstream GETs for one blob and one owner death"
    );
}

/// The member that owns `digest` among `ports`: rendezvous hashing as replicas do it (the
/// first 8 bytes of SHA-256 over `<member URL>\n<digest>`, highest wins). Replicas of
/// different versions must agree on it, so the test may rely on it.
fn owner(ports: &[u16], digest: &str) -> u16 {
    let weight = |port: &u16| {
        let hash = Sha256::digest(format!("http://127.0.0.1:{port}/\n{digest}"));
        u64::from_be_bytes(hash[..8].try_into().unwrap())
    };
    *ports.iter().max_by_key(|p| weight(p)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fourth_replica_joining_mid_run_follows_the_lease_and_costs_one_get_per_blob() {
    let Some(seaweed) = Seaweed::start("join") else {
        return;
    };
    let registry = Registry::start();
    // About two seconds per fetch: the fourth replica starts while the fills run.
    let link = Throttle::start(&registry.addr(), 16 << 20).await;
    let fleet = Fleet::new(4, link.url(), &seaweed);
    // Blobs whose owner moves to the joining replica, and blobs whose owner stays: the
    // first three know only each other, the fourth (started later) knows all four.
    let joiner = fleet.ports[3];
    let (mut moving, mut staying) = (Vec::new(), Vec::new());
    for seed in 10.. {
        let bytes = blob(32 * MIB, seed);
        let digest = format!("sha256:{:x}", Sha256::digest(&bytes));
        let list = match owner(&fleet.ports, &digest) == joiner {
            true => &mut moving,
            false => &mut staying,
        };
        if list.len() < 2 {
            list.push(push_blob(&registry.url(), "team/big", bytes).await);
        }
        if moving.len() == 2 && staying.len() == 2 {
            break;
        }
    }
    let digests: Vec<String> = moving.iter().chain(&staying).cloned().collect();
    let mut replicas: Vec<Regcache> = (0..3).map(|n| fleet.start(n, 3)).collect();
    let started = |urls: Vec<String>, clients: usize| {
        digests
            .iter()
            .map(|d| {
                let (urls, d) = (urls.clone(), d.clone());
                tokio::spawn(async move { (pulls(&urls, &d, clients).await, d) })
            })
            .collect::<Vec<_>>()
    };
    let mut tasks = started(urls(&replicas), 9);
    tokio::time::sleep(Duration::from_millis(300)).await;
    replicas.push(fleet.start(3, 4));
    tasks.extend(started(urls(&replicas), 8));
    for task in tasks {
        let (results, digest) = task.await.unwrap();
        all_whole(&results, 32 * MIB as u64, &digest);
    }
    // The joiner owns the moving blobs in its view and finds the old owner's lease: one
    // fetch each, where a joiner without leases would fetch them again.
    for digest in &digests {
        assert_eq!(
            registry.gets_of(digest),
            1,
            "upstream GETs of {digest} during a join"
        );
    }
    let joined = [&replicas[3]];
    let followed = total(
        &joined,
        "regcache_peer_forwards_total",
        "to=\"lease_holder\"",
    )
    .await;
    assert!(
        followed >= 2.0,
        "the joiner streamed from the lease holders"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bucket_stopped_mid_run_leaves_disks_serving_and_fills_unpublished() {
    let Some(mut seaweed) = Seaweed::start("stop") else {
        return;
    };
    let registry = Registry::start();
    let warm = push_blob(&registry.url(), "team/big", blob(48 * MIB, 20)).await;
    let cold = push_blob(&registry.url(), "team/big", blob(48 * MIB, 21)).await;
    let fleet = Fleet::new(3, registry.url(), &seaweed);
    let replicas = fleet.start_all();
    let urls = urls(&replicas);
    all_whole(&pulls(&urls, &warm, 6).await, 48 * MIB as u64, &warm);
    let refs: Vec<&Regcache> = replicas.iter().collect();
    let put_ok = "op=\"put_blob\",result=\"ok\"";
    let deadline = Instant::now() + Duration::from_secs(20);
    while total(&refs, "regcache_bucket_operations_total", put_ok).await < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the warm blob never reached the bucket"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    seaweed.stop();
    // What the disks hold is served as before; a cold blob still costs one GET, its fill
    // verified and served, and not published.
    all_whole(&pulls(&urls, &warm, 6).await, 48 * MIB as u64, &warm);
    all_whole(&pulls(&urls, &cold, 12).await, 48 * MIB as u64, &cold);
    assert_eq!(registry.gets_of(&warm), 1);
    assert_eq!(registry.gets_of(&cold), 1);
    let failed = total(
        &refs,
        "regcache_bucket_operations_total",
        "result=\"error\"",
    )
    .await
        + total(
            &refs,
            "regcache_bucket_operations_total",
            "result=\"skipped\"",
        )
        .await;
    assert!(failed >= 1.0, "the stopped bucket's failures are counted");
    assert_eq!(
        total(&refs, "regcache_bucket_operations_total", put_ok).await,
        1.0
    );
}
