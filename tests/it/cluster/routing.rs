//! Routing blob misses to the owner replica, with the real binary: three replicas that
//! know each other, many cold clients of one blob spread over them, one upstream GET.

use std::path::Path;
use std::time::Duration;

use crate::support::fake::{FakeRegistry, Fault};
use crate::support::regcache::Regcache;
use crate::support::registry::free_port;

const MIB: usize = 1 << 20;

/// The bearer token clients must show; peers prove themselves with the secret instead.
const TOKEN: &str = "client-token-0123456789";
const SECRET: &str = "a-test-secret-of-some-length";

/// Three replicas on ports chosen up front (each config lists every member), sharing the
/// secret in `dir/secret`, each asking clients for [`TOKEN`].
fn cluster(fake: &FakeRegistry, dir: &Path) -> Vec<Regcache> {
    let secret = dir.join("secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, format!("{TOKEN}\n")).unwrap();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let members: Vec<String> = ports
        .iter()
        .map(|p| format!("\"http://127.0.0.1:{p}\""))
        .collect();
    ports
        .iter()
        .enumerate()
        .map(|(n, port)| {
            let config = format!(
                "[server.auth]\ntokens_file = \"{}\"\n\
                 [cluster]\nmembers = [{}]\nself = \"http://127.0.0.1:{port}\"\nsecret_file = \"{}\"\n\
                 [[upstream]]\nname = \"origin\"\nurl = \"{}\"\n",
                tokens.display(),
                members.join(", "),
                secret.display(),
                fake.url()
            );
            Regcache::start_on(Some(*port), &config, &dir.join(format!("r{n}")), &[])
        })
        .collect()
}

/// Forwards to the owner replica with `result`.
fn forwards(metrics: &str, result: &str) -> f64 {
    let series = format!("regcache_peer_forwards_total{{result=\"{result}\",to=\"owner\"}}");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cold_clients_spread_over_three_replicas_cost_one_upstream_get() {
    let fake = FakeRegistry::start().await;
    let bytes: Vec<u8> = (0..24 * MIB).map(|i| (i % 251) as u8).collect();
    let digest = fake.add_blob(bytes.clone());
    // Slow enough that every client arrives while the fill is in flight.
    fake.set_fault(&digest, Fault::Slow(Duration::from_millis(5)));
    let dir = tempfile::tempdir().unwrap();
    let replicas = cluster(&fake, dir.path());
    let client = reqwest::Client::new();
    let mut clients = Vec::new();
    for n in 0..30 {
        let url = format!("{}/v2/team/app/blobs/{digest}", replicas[n % 3].url());
        let client = client.clone();
        clients.push(tokio::spawn(async move {
            let response = client.get(url).bearer_auth(TOKEN).send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.bytes().await.unwrap()
        }));
    }
    for c in clients {
        let body = tokio::time::timeout(Duration::from_secs(120), c)
            .await
            .expect("a client finished within 2 minutes")
            .unwrap();
        assert!(body[..] == bytes[..], "a client got the wrong bytes");
    }
    assert_eq!(fake.count("GET", &digest), 1, "upstream GETs of the blob");
    let mut ok = 0.0;
    for r in &replicas {
        let metrics = r.metrics().await;
        ok += forwards(&metrics, "ok");
        assert_eq!(forwards(&metrics, "fallback"), 0.0, "{metrics}");
    }
    // The two replicas that do not own the digest asked the owner once each.
    assert_eq!(ok, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_cluster_secret_lets_a_request_in_as_a_peer() {
    let fake = FakeRegistry::start().await;
    let digest = fake.add_blob(vec![1u8; 1000]);
    let dir = tempfile::tempdir().unwrap();
    let replicas = cluster(&fake, dir.path());
    let url = format!("{}/v2/team/app/blobs/{digest}?ns=origin", replicas[0].url());
    let client = reqwest::Client::new();
    let status = |peer: &'static str| {
        let request = client.get(&url).header("x-regcache-peer", peer);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    // Neither a client's token nor a peer's secret: refused like any client.
    assert_eq!(status("not-the-secret-at-all").await, 401);
    assert_eq!(fake.count("GET", &digest), 0);
    // The secret admits a forwarded request without the client's credentials.
    assert_eq!(status(SECRET).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_owner_killed_mid_fill_costs_one_more_upstream_get_and_no_clean_short_body() {
    let fake = FakeRegistry::start().await;
    let bytes: Vec<u8> = (0..24 * MIB).map(|i| (i % 241) as u8).collect();
    let digest = fake.add_blob(bytes.clone());
    // About two seconds per fetch: the kill lands mid-fill.
    fake.set_fault(&digest, Fault::Slow(Duration::from_millis(5)));
    let dir = tempfile::tempdir().unwrap();
    let mut replicas = cluster(&fake, dir.path());
    let urls: Vec<String> = replicas.iter().map(|r| r.url()).collect();
    let client = reqwest::Client::new();
    let fetch = move |url: String| {
        let client = client.clone();
        async move {
            let response = client.get(url).bearer_auth(TOKEN).send().await?;
            response.error_for_status()?.bytes().await
        }
    };
    let mut clients = Vec::new();
    for n in 0..30 {
        let url = format!("{}/v2/team/app/blobs/{digest}", urls[n % 3]);
        let fetch = fetch.clone();
        clients.push((n % 3, tokio::spawn(async move { fetch(url).await })));
    }
    // The owner is the replica that forwarded nothing while the other two did.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let owner = loop {
        let mut forwarded = Vec::new();
        for r in &replicas {
            forwarded.push(forwards(&r.metrics().await, "ok") > 0.0);
        }
        if forwarded.iter().filter(|f| **f).count() == 2 {
            break forwarded.iter().position(|f| !f).unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "no forwards seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let pid = replicas[owner].pid().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status();
    assert!(killed.unwrap().success());
    for (replica, c) in clients {
        let first = tokio::time::timeout(Duration::from_secs(120), c)
            .await
            .expect("a client finished within 2 minutes")
            .unwrap();
        match first {
            // A body that ended cleanly is the whole blob, never a short or wrong one.
            Ok(body) => assert!(body[..] == bytes[..], "a clean end with wrong bytes"),
            // Cut: a client of a survivor asks again and gets the blob.
            Err(_) if replica != owner => {
                let url = format!("{}/v2/team/app/blobs/{digest}", urls[replica]);
                let again = fetch(url).await.expect("the retry succeeds");
                assert!(again[..] == bytes[..]);
            }
            Err(_) => {}
        }
    }
    let gets = fake.count("GET", &digest);
    assert!(
        gets <= 2,
        "{gets} upstream GETs for one blob and one owner death"
    );
    replicas[owner].wait_exit(Duration::from_secs(5));
}

#[test]
fn the_shipped_cluster_config_validates_and_its_dns_form_too() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let shipped = include_str!("../../../config/cluster.toml").replace(
        "/etc/regcache/cluster-secret",
        &secret.display().to_string(),
    );
    let (status, printed) = crate::support::regcache::check_config(dir.path(), &shipped);
    assert!(status.success(), "{printed}");
    // The Kubernetes form: members from a headless Service, this replica found by address.
    let dns = shipped
        .replace("members = [", "# members = [")
        .replace("self = ", "# self = ")
        .replace(
            "[cluster]\n",
            "[cluster]\nmembers_dns = \"http://regcache-peers.regcache.svc:5000\"\n",
        );
    let (status, printed) = crate::support::regcache::check_config(dir.path(), &dns);
    assert!(status.success(), "{printed}");
    // Both forms at once is a mistake the check names.
    let both = shipped.replace(
        "[cluster]\n",
        "[cluster]\nmembers_dns = \"http://regcache-peers:5000\"\n",
    );
    let (status, printed) = crate::support::regcache::check_config(dir.path(), &both);
    assert!(!status.success());
    assert!(printed.contains("cluster.members_dns"), "{printed}");
}
