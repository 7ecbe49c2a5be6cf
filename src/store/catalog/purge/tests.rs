use std::sync::Arc;

use super::*;
use crate::metrics::Metrics;
use crate::oci::Algorithm;
use crate::store::catalog::pins;
use crate::store::files::{put_test_blob, unix_now, Store, TagRecord};
use crate::store::lifecycle::Rules;
use crate::store::{Limits, Membership};

const IMAGE: &str = "application/vnd.oci.image.manifest.v1+json";

/// A disk of `budget` bytes (marks at 90% and 80%) in `dir`, index loaded.
fn disk(dir: &std::path::Path, budget: u64) -> Disk {
    let store = Arc::new(Store::open(dir).unwrap());
    let limits = Limits {
        budget,
        high: budget * 9 / 10,
        low: budget * 8 / 10,
    };
    let disk = Disk::new(store, limits, Rules::default(), Metrics::new());
    disk.load();
    disk
}

/// Publishes an image of `layers` (and a config) tagged `tag` in `repo` of upstream "hub",
/// with its membership records; returns the manifest's digest.
fn image(disk: &Disk, repo: &str, tag: &str, layers: &[&[u8]]) -> Digest {
    let store = &disk.store;
    let config = put_test_blob(store, format!("config of {repo}:{tag}").as_bytes());
    let layers: Vec<ObjectKey> = layers.iter().map(|l| put_test_blob(store, l)).collect();
    let descriptor = |k: &ObjectKey| {
        format!(
            r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":1}}"#,
            k.digest
        )
    };
    let body = format!(
        r#"{{"schemaVersion":2,"mediaType":"{IMAGE}","config":{},"layers":[{}]}}"#,
        descriptor(&config),
        layers.iter().map(descriptor).collect::<Vec<_>>().join(",")
    );
    let digest = Digest::of(Algorithm::Sha256, body.as_bytes());
    store
        .write_manifest(&digest, IMAGE, body.as_bytes())
        .unwrap();
    let name: crate::oci::RepoName = repo.parse().unwrap();
    let record = TagRecord {
        digest: digest.clone(),
        media_type: IMAGE.into(),
        checked_at: unix_now(),
    };
    store
        .write_tag("hub", &name, &tag.parse().unwrap(), &record)
        .unwrap();
    let mut all = vec![digest.clone(), config.digest.clone()];
    all.extend(layers.iter().map(|k| k.digest.clone()));
    let members = Membership::new(store.clone(), 100);
    members.record("hub", &name, &all);
    digest
}

async fn settled(disk: &Disk) {
    disk.store.settled().await;
    disk.load();
}

#[tokio::test]
async fn a_purge_frees_what_only_its_scope_held_and_names_what_it_kept() {
    let dir = tempfile::tempdir().unwrap();
    let disk = disk(dir.path(), 1 << 30);
    let base: &[u8] = &[1; 1000];
    let a = image(&disk, "team/a", "v1", &[base, &[2; 500]]);
    image(&disk, "team/b", "v1", &[base, &[3; 700]]);
    settled(&disk).await;
    let catalog = Catalog::read(&disk.store).unwrap();
    let repos = catalog.repositories(&disk.store, &disk.index, &disk.pins);
    assert_eq!(repos.len(), 2);
    assert_eq!((repos[0].tags, repos[0].manifests), (1, 1));
    // Listing records of team/a and of a repository below it.
    let list = crate::store::ListRecord {
        body: "{}".into(),
        checked_at: 1,
    };
    let (team_a, below) = ("team/a".parse().unwrap(), "team/a/x".parse().unwrap());
    disk.store
        .write_list("hub", &team_a, "tags", &list)
        .unwrap();
    disk.store.write_list("hub", &below, "tags", &list).unwrap();

    let scope: Scope = "hub/team/a".parse().unwrap();
    let manifest_len = body_len(&disk, &a);
    let (report, removed) = purge(&disk, &scope).unwrap();
    // The manifest, config and own layer go; the shared base stays for team/b.
    assert_eq!(report.objects_removed, 3);
    assert_eq!(removed.len(), 3);
    let config_len = "config of team/a:v1".len() as u64;
    assert_eq!(report.bytes_freed, manifest_len + config_len + 500);
    assert_eq!(report.tags_removed, 1);
    assert_eq!(report.repositories_forgotten, 1);
    assert_eq!(report.objects_kept, 1);
    assert_eq!(report.kept[0].reason, "hub/team/b");
    assert_eq!(report.kept[0].bytes, 1000);
    assert!(!disk.store.manifest_path(&a).exists());
    assert_eq!(disk.store.read_list("hub", &team_a, "tags").unwrap(), None);
    assert_eq!(
        disk.store.read_list("hub", &below, "tags").unwrap(),
        Some(list)
    );
    let catalog = Catalog::read(&disk.store).unwrap();
    let left = catalog.repositories(&disk.store, &disk.index, &disk.pins);
    assert_eq!(left.len(), 1, "team/a has no records left");
    assert_eq!(left[0].repository, "team/b");

    // Purging it again finds nothing.
    assert!(matches!(
        purge(&disk, &scope),
        Err(PurgeError::NotCached(_))
    ));
}

#[tokio::test]
async fn a_tag_purge_keeps_what_another_tag_of_the_repository_reaches() {
    let dir = tempfile::tempdir().unwrap();
    let disk = disk(dir.path(), 1 << 30);
    image(&disk, "team/a", "v1", &[&[1; 100], &[2; 100]]);
    image(&disk, "team/a", "v2", &[&[1; 100], &[4; 100]]);
    settled(&disk).await;
    let (report, _) = purge(&disk, &"hub/team/a:v1".parse().unwrap()).unwrap();
    assert_eq!((report.tags_removed, report.objects_removed), (1, 3));
    assert_eq!(report.repositories_forgotten, 0);
    assert_eq!(report.kept[0].reason, "another tag of the same repository");
}

/// A manifest's body length: its file minus the media type line.
fn body_len(disk: &Disk, digest: &Digest) -> u64 {
    let file = std::fs::metadata(disk.store.manifest_path(digest)).unwrap();
    file.len() - IMAGE.len() as u64 - 1
}

#[tokio::test]
async fn pins_survive_a_restart_and_a_budget_that_evicts_everything_else() {
    let dir = tempfile::tempdir().unwrap();
    {
        let disk = disk(dir.path(), 1 << 30);
        image(&disk, "team/keep", "v1", &[&[1; 4000]]);
        image(&disk, "team/other", "v1", &[&[2; 4000]]);
        settled(&disk).await;
        let missing: Scope = "hub/team/keep:v9".parse().unwrap();
        assert!(matches!(
            pins::pin(&disk, missing),
            Err(pins::PinError::NotCached(_))
        ));
        let pinned = pins::pin(&disk, "hub/team/keep:v1".parse().unwrap()).unwrap();
        assert!(pinned.added);
        assert_eq!(pinned.objects, 3);
    }
    // Reopened with a budget of 1 KB: only the pinned image may stay.
    let disk = disk(dir.path(), 1000);
    let catalog = Catalog::read(&disk.store).unwrap();
    let tags = catalog.tags(
        &disk.store,
        &disk.index,
        &disk.pins,
        &("hub".into(), "team/keep".into()),
    );
    assert!(tags[0].pinned);
    disk.evict(true);
    let (objects, _) = disk.index.usage();
    assert_eq!(objects, 3, "the pinned manifest, config and layer");
    assert_eq!(disk.index.kept_usage().0, 3);

    // A purge keeps pinned content and says so.
    let (report, _) = purge(&disk, &"hub/team/keep".parse().unwrap()).unwrap();
    assert_eq!((report.objects_removed, report.objects_kept), (0, 3));
    assert_eq!((report.tags_removed, report.tags_kept), (0, 1));
    assert!(report.kept.iter().all(|k| k.reason == "pinned"));

    let unpinned = pins::unpin(&disk, "hub/team/keep:v1".parse().unwrap()).unwrap();
    assert!(unpinned.added, "it was pinned");
    assert_eq!(disk.index.kept_usage(), (0, 0));
    disk.evict(true);
    assert!(disk.index.usage().1 <= 800, "down to the low mark");
}

#[tokio::test]
async fn a_digest_purge_takes_the_image_and_the_tags_that_point_at_it() {
    let dir = tempfile::tempdir().unwrap();
    let disk = disk(dir.path(), 1 << 30);
    let old = image(&disk, "team/a", "v1", &[&[1; 100]]);
    image(&disk, "team/a", "v2", &[&[2; 100]]);
    settled(&disk).await;
    let scope = Scope::Digest("hub".into(), "team/a".parse().unwrap(), old.clone());
    let (report, _) = purge(&disk, &scope).unwrap();
    assert_eq!((report.tags_removed, report.objects_removed), (1, 3));
    let catalog = Catalog::read(&disk.store).unwrap();
    let tags = catalog.tags(
        &disk.store,
        &disk.index,
        &disk.pins,
        &("hub".into(), "team/a".into()),
    );
    assert_eq!(tags.len(), 1);
    assert_eq!(tags[0].tag, "v2");
}

#[tokio::test]
async fn the_lifecycle_rules_leave_pinned_content_and_tags_alone() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[[upstream]]\nname = \"hub\"\nurl = \"http://127.0.0.1:1\"\n\
                expire_after_days = 1\nmax_tags_per_repo = 1\n";
    let ov = crate::config::Overrides {
        cache_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    let config = crate::config::Config::parse(text, "test", &ov).unwrap();
    let rules = Rules::new(&config.upstreams);
    let disk = Disk::open(&config.cache, rules, Metrics::new()).unwrap();
    let kept = image(&disk, "team/a", "v1", &[&[1; 100]]);
    image(&disk, "team/a", "v2", &[&[2; 100]]);
    disk.store.settled().await;
    disk.load();
    pins::pin(&disk, "hub/team/a:v1".parse().unwrap()).unwrap();
    // Every object last pulled two days ago, and from "hub", whose rules apply.
    let two_days_ago = crate::store::unix_millis() - 2 * 86_400_000;
    for (key, meta) in disk.index.snapshot(true).unwrap() {
        disk.index.insert(key, meta.size, two_days_ago, Some("hub"));
    }
    let swept = disk.sweep();
    assert_eq!(swept.objects, 3, "v2's manifest, config and layer expired");
    assert_eq!(swept.tags, 0, "v1 is pinned, v2 the one left");
    assert!(disk.store.manifest_path(&kept).exists());
    assert_eq!(disk.index.kept_usage().0, 3);
}
