//! One writer per store, with the real binary: while a daemon owns a cache directory,
//! `import`, `verify` and `gc` run in the daemon through its admin API, so what they add
//! or remove is in its index (and its budget) the moment the command returns; so does a
//! `prefetch` (a job of the admin API), which leaves the daemon's fills in progress alone. A daemon without an admin listener refuses them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::fake::{FakeRegistry, Fault};
use crate::support::fake_images::{add_image, pull_checked, FakeImage};
use crate::support::regcache::{metric_sum, Regcache};
use crate::support::store::{files, usage, verified_objects};

const KIB: usize = 1 << 10;

fn config(upstream: &str, budget: &str) -> String {
    format!(
        "[cache]\ndisk_bytes = \"{budget}\"\nhigh_watermark = 0.9\nlow_watermark = 0.5\n\
         memory_bytes = \"0\"\nindex_flush_secs = 1\n\
         [[upstream]]\nname = \"origin\"\nurl = \"{upstream}\"\n"
    )
}

/// Runs `regcache ARGS --config <cache>.toml --cache-dir <cache>` (bounded); its output.
/// Panics unless it succeeded.
fn regcache(args: &[&str], cache: &Path) -> String {
    run(args, cache, true)
}

/// As [`regcache`], for a command that must fail.
fn regcache_fails(args: &[&str], cache: &Path) -> String {
    run(args, cache, false)
}

fn run(args: &[&str], cache: &Path, succeed: bool) -> String {
    let log = cache.with_extension("cli.log");
    let _ = std::fs::remove_file(&log);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_regcache"));
    cmd.args(args)
        .arg("--config")
        .arg(cache.with_extension("toml"))
        .arg("--cache-dir")
        .arg(cache);
    let status = crate::support::registry::run_bounded(&mut cmd, &log, Duration::from_secs(60));
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        status.is_some_and(|s| s.success() == succeed),
        "regcache {args:?} (should succeed: {succeed}):\n{out}"
    );
    out
}

/// The daemon's (objects, bytes) gauges.
async fn counted(daemon: &Regcache) -> (u64, u64) {
    let metrics = daemon.metrics().await;
    let get = |name| metric_sum(&metrics, name).unwrap_or(-1.0) as u64;
    (get("regcache_disk_objects"), get("regcache_disk_bytes"))
}

/// Waits (bounded) until `check` holds for the daemon's gauges and the files on disk.
async fn until(
    what: &str,
    daemon: &Regcache,
    cache: &Path,
    check: impl Fn((u64, u64), (u64, u64)) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (index, files) = (counted(daemon).await, usage(cache));
        if check(index, files) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: index {index:?}, files {files:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn blob_path(cache: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap();
    cache.join("v1/blobs/sha256").join(&hex[..2]).join(hex)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn import_verify_and_gc_go_through_the_daemon_and_are_counted_at_once() {
    let fake = FakeRegistry::start().await;
    let images: Vec<FakeImage> = (0..4u64)
        .map(|n| {
            add_image(
                &fake,
                "team/app",
                &format!("v{n}"),
                &[256 * KIB, 256 * KIB],
                n,
            )
        })
        .collect();
    let root = tempfile::tempdir().unwrap();
    let (source, cache) = (root.path().join("source"), root.path().join("cache"));
    // Two archives, made from another cache: one image, then two.
    std::fs::write(source.with_extension("toml"), config(&fake.url(), "100MiB")).unwrap();
    regcache(
        &["prefetch", "team/app:v1", "team/app:v2", "team/app:v3"],
        &source,
    );
    let export = |file: &str, names: &[&str]| {
        let archive = root.path().join(file).display().to_string();
        regcache(&[&["export", "-o", &archive][..], names].concat(), &source);
        archive
    };
    let first = export("first.tar", &["team/app:v1"]);
    let second = export("second.tar", &["team/app:v2", "team/app:v3"]);

    // A budget of 2 MiB: evictions start past 1.8 MiB and go down to 1 MiB.
    let daemon = Regcache::start_with_config(&config(&fake.url(), "2MiB"), &cache);
    let client = reqwest::Client::new();
    pull_checked(&client, &daemon.url(), &images[0]).await;
    // The response ends at the digest check; the files land just after.
    daemon.settled().await;
    until("the pull is counted", &daemon, &cache, |index, files| {
        index == files
    })
    .await;
    let before = counted(&daemon).await;
    let out = regcache(&["import", &first], &cache);
    assert!(out.contains("1 manifest(s), 3 blob(s)"), "{out}");
    assert!(out.contains("through its admin API"), "{out}");
    let now = counted(&daemon).await;
    assert_eq!(
        (now, now.0),
        (usage(&cache), before.0 + 4),
        "counted at once"
    );
    // The imported tag is served at once, from what the import wrote.
    pull_checked(&client, &daemon.url(), &images[1]).await;

    // 1 MiB + 1 MiB imported: past the high mark only because of the import.
    let out = regcache(&["import", &second], &cache);
    assert!(out.contains("2 manifest(s), 6 blob(s)"), "{out}");
    until("the budget is applied", &daemon, &cache, |index, files| {
        index == files && files.1 <= 1024 * KIB as u64
    })
    .await;
    let metrics = daemon.metrics().await;
    let evicted = metrics
        .lines()
        .find_map(|l| l.strip_prefix("regcache_evictions_total{reason=\"budget\"} "))
        .and_then(|v| v.parse::<f64>().ok());
    assert!(evicted > Some(0.0), "{metrics}\n{}", daemon.log());
    // Nothing left of the import (the daemon may be writing its snapshot).
    let daemon_temp = format!("{}-", daemon.pid().unwrap());
    for file in files(&cache.join("v1/tmp")) {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with(&daemon_temp), "{name}");
    }

    // `verify` removes a damaged file: the daemon stops counting it.
    pull_checked(&client, &daemon.url(), &images[0]).await;
    until("the pull is counted", &daemon, &cache, |index, files| {
        index == files
    })
    .await;
    let (damaged, bytes) = &images[0].blobs[1];
    std::fs::write(blob_path(&cache, damaged), vec![0u8; bytes.len()]).unwrap();
    let before = usage(&cache);
    let out = regcache(&["verify"], &cache);
    assert!(out.contains("removed 1"), "{out}");
    assert_eq!(usage(&cache).0, before.0 - 1);
    assert_eq!(counted(&daemon).await, usage(&cache), "forgotten at once");
    pull_checked(&client, &daemon.url(), &images[0]).await;
    verified_objects(&cache);

    let out = regcache(&["gc"], &cache);
    assert!(out.contains("through its admin API"), "{out}");
    assert!(out.contains("budget; removed"), "{out}");
    assert_eq!(counted(&daemon).await, usage(&cache));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_without_an_admin_listener_refuses_operator_commands_clearly() {
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("cache");
    let text = config("http://127.0.0.1:9", "64MiB");
    std::fs::write(cache.with_extension("toml"), &text).unwrap();
    // No admin listener: the test support always gives one, so start it by hand.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_regcache"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--config")
        .arg(cache.with_extension("toml"))
        .arg("--cache-dir")
        .arg(&cache)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = daemon.id().to_string();
    let deadline = Instant::now() + Duration::from_secs(15);
    let lock = cache.join("v1/lock");
    while std::fs::read_to_string(&lock).unwrap_or_default().trim() != pid {
        assert!(Instant::now() < deadline, "the daemon never took the store");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = regcache_fails(&["gc"], &cache);
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert!(out.contains("no admin listener"), "{out}");
    assert!(out.contains("admin_listen"), "{out}");
    assert!(out.contains(&pid), "{out}");
    // With the daemon gone the command owns the store itself.
    let out = regcache(&["gc"], &cache);
    assert!(!out.contains("admin API"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_prefetch_runs_in_the_daemon_that_owns_the_store() {
    let fake = FakeRegistry::start().await;
    let images: Vec<FakeImage> = (0..3u64)
        .map(|n| add_image(&fake, "team/app", &format!("v{n}"), &[300 * KIB], n))
        .collect();
    let held = fake.add_blob(vec![5u8; 512 * KIB]);
    fake.set_fault(&held, Fault::Held);
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("cache");
    let daemon = Regcache::start_with_config(&config(&fake.url(), "64MiB"), &cache);
    let client = reqwest::Client::new();
    pull_checked(&client, &daemon.url(), &images[0]).await;

    // A fill in progress in the daemon: half the blob is in its temp file.
    let url = format!("{}/v2/team/app/blobs/{held}", daemon.url());
    let pending = tokio::spawn(client.get(url).send());
    let deadline = Instant::now() + Duration::from_secs(10);
    while files(&cache.join("v1/tmp")).is_empty() {
        assert!(Instant::now() < deadline, "the fill never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Without --via, the daemon runs it as a job of its admin API: counted at once.
    let before = counted(&daemon).await;
    let out = regcache(&["prefetch", "team/app:v1"], &cache);
    assert!(out.contains("runs this prefetch as job 1"), "{out}");
    assert!(
        !files(&cache.join("v1/tmp")).is_empty(),
        "the daemon's temp file is left alone"
    );
    assert_eq!(counted(&daemon).await.0, before.0 + 3);
    // Through the daemon's registry API: the same.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_regcache"));
    cmd.args([
        "prefetch",
        "--via",
        &daemon.url(),
        "team/app:v1",
        "team/app:v2",
    ]);
    let log = root.path().join("via.log");
    let status = crate::support::registry::run_bounded(&mut cmd, &log, Duration::from_secs(60));
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.is_some_and(|s| s.success()), "{out}");
    assert!(out.contains("prefetched 2 image(s)"), "{out}");
    let now = counted(&daemon).await;
    assert_eq!((now, now.0), (usage(&cache), before.0 + 6));

    fake.release();
    let response = pending.await.unwrap().unwrap();
    assert!(response.bytes().await.unwrap()[..] == vec![5u8; 512 * KIB][..]);
    for image in &images {
        pull_checked(&client, &daemon.url(), image).await;
    }
    verified_objects(&cache);
}
