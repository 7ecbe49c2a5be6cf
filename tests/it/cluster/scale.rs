//! The cluster at the scale, with real components: the real docker-registry
//! upstream (its access log counts GETs per digest), SeaweedFS as the bucket, three or
//! four regcache processes with their own disks. Where a test must act mid-transfer, a
//! paced relay in front of the registry makes the link slow (`support::throttle`).

use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use super::fleet::{all_whole, blob, pull, pulls, total, urls, Fleet};
use crate::support::images::push_blob;
use crate::support::regcache::Regcache;
use crate::support::registry::Registry;
use crate::support::seaweed::Seaweed;
use crate::support::throttle::Throttle;

const MIB: usize = 1 << 20;

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
    // About four seconds per fetch: the fourth replica starts while the fills run.
    let link = Throttle::start(&registry.addr(), 8 << 20).await;
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
    // For each moving blob, whichever of the joiner and the old owner claimed its lease
    // second streamed from the first (or, when that fill had ended, read the bucket):
    // never a second fetch. Without leases both would go upstream.
    let all: Vec<&Regcache> = replicas.iter().collect();
    let metric = "regcache_peer_forwards_total";
    let followed = total(&all, metric, "to=\"lease_holder\"").await;
    let bucket = "regcache_bucket_operations_total";
    let from_bucket = total(&all, bucket, "op=\"get_blob\",result=\"hit\"").await;
    assert!(
        followed + from_bucket >= 2.0,
        "no replica followed a lease or read the bucket: {followed} + {from_bucket}"
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
