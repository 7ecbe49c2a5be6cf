//! The mirror: the one layer that combines the store with upstreams. Handlers ask it for
//! a blob (`blobs`) or a manifest (`manifests`) and get an answer ready to send; it answers
//! from the store's tiers (`store::Tiers`) or from upstream through a single-flight fill
//! (`fill`), and lands only what it verified (`store::Disk::land`).
//!
//! Held content is served for a repository only once it is known to belong to it (the
//! store's membership records, confirmed upstream when missing) and once that upstream's
//! trust domain delivered it (here). Tags carry their TTL, revalidation and stale serving
//! (`tags`, `manifests`).
//!
//! The mirror never fails a request for the store's sake: a disk error is logged, counted
//! and served as a miss; a damaged file is removed and fetched again.

mod blobs;
mod declared;
mod fill;
mod flight;
mod listings;
mod manifests;
mod reader;
mod tag_owner;
mod tags;

use std::sync::Arc;

pub use blobs::{BlobAnswer, BlobBody};
pub use listings::{ListKind, Listing};
pub use manifests::Manifest;
pub use reader::{BlobReader, Piece, CHUNK, H2_CHUNK};

use http::Method;

use crate::cluster::Cluster;
use crate::config::CacheConfig;
use crate::error::{Error, Result, UpstreamError};
use crate::metrics::Metrics;
use crate::oci::{Digest, ErrorCode};
use crate::store::bucket::Bucket;
use crate::store::lifecycle::Rules;
use crate::store::memory::{Key, Memory};
use crate::store::{Disk, Membership, Store, Tiers};
use crate::upstream::{Resource, Target};
use declared::Declared;
pub use fill::InProgress;
use fill::{FillContext, Fills};
use tags::Tags;

/// How many tag answers are kept in memory (the rest are read from disk when asked).
const TAG_ENTRIES: u64 = 100_000;

pub struct Mirror {
    ctx: FillContext,
    fills: Arc<Fills>,
    /// Manifest and tag requests upstream, one per key at a time.
    flights: flight::Flights,
    tags: Tags,
    lists: listings::Lists,
    members: Membership,
    /// Every upstream is of one trust domain: who delivered content does not matter.
    one_domain: bool,
}

impl Mirror {
    /// Opens the store under the configured directory as its one writer, removing
    /// leftovers of a crash, and starts loading the disk index in the background (lookups
    /// work meanwhile). Must be called within a tokio runtime.
    pub fn open(
        config: &CacheConfig,
        bucket: Option<Bucket>,
        cluster: Option<Cluster>,
        rules: Rules,
        metrics: Metrics,
    ) -> std::io::Result<Mirror> {
        let disk = Arc::new(Disk::open(config, rules, metrics.clone())?);
        disk.start(config.index_flush, config.lifecycle_sweep);
        let members = disk.members.clone();
        let cluster = cluster.map(Arc::new);
        if let Some(cluster) = &cluster {
            Cluster::watch(cluster);
        }
        Ok(Mirror {
            ctx: FillContext {
                store: disk.store.clone(),
                tiers: Tiers {
                    memory: Memory::new(config.memory_bytes, config.memory_max_object_bytes),
                    disk,
                    bucket,
                },
                metrics,
                declared: Declared::default(),
                max_blob_bytes: config.max_blob_bytes,
                members: members.clone(),
                cluster,
            },
            fills: Arc::new(Fills::default()),
            flights: flight::Flights::default(),
            tags: Tags::new(TAG_ENTRIES),
            lists: listings::Lists::default(),
            members,
            one_domain: false,
        })
    }

    /// Declares every upstream one trust domain (see [`crate::config::Config::one_trust_domain`]):
    /// content is then served for any upstream without asking which one delivered it.
    pub fn one_trust_domain(mut self, one: bool) -> Mirror {
        self.one_domain = one;
        self
    }

    /// Whether content regcache holds may be served for `target`'s upstream: its trust
    /// domain delivered the bytes itself. Otherwise a hostile upstream could name (or claim
    /// with a HEAD) a digest another upstream's private repository delivered, and read it.
    async fn trusted(&self, target: &Target, digest: &Digest) -> bool {
        let domain = &target.upstream.config().trust_domain;
        if self.one_domain || self.members.delivered(domain, digest).await {
            return true;
        }
        // Another replica's delivery counts: the marker is written only once the content
        // it names is in the bucket.
        match &self.ctx.tiers.bucket {
            Some(bucket) if bucket.delivered(domain, digest).await => {
                self.members.record_delivered(domain, digest);
                true
            }
            _ => false,
        }
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.ctx.store
    }

    pub fn disk(&self) -> &Arc<Disk> {
        &self.ctx.tiers.disk
    }

    /// The replicas blob misses are routed among, when there are several.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.ctx.cluster.as_deref()
    }

    /// Forgets `removed` objects in the memory tier and every tag answer held in memory,
    /// after the store changed underneath (purge, verify, import through the admin API).
    pub fn forget(&self, removed: &[crate::store::ObjectKey]) {
        for key in removed {
            let key = match key.kind {
                crate::store::ObjectKind::Blob => Key::Blob(key.digest.clone()),
                crate::store::ObjectKind::Manifest => Key::Manifest(key.digest.clone()),
            };
            self.ctx.tiers.memory.remove(&key);
        }
        self.tags.forget_all();
        self.lists.forget_all();
    }

    /// Waits for the verified fills to be published and for the writes in the background
    /// (manifests, tag and membership records), and saves access recency; called at
    /// shutdown.
    pub async fn flush(&self) {
        self.fills.published().await;
        self.ctx.store.settled().await;
        let disk = self.ctx.tiers.disk.clone();
        let _ = tokio::task::spawn_blocking(move || disk.flush(false)).await;
    }

    /// Records that upstream answered for `digest` under `target`'s repository.
    fn confirmed(&self, target: &Target, digest: &Digest) {
        self.record_members(target, vec![digest.clone()]);
    }

    /// Records members of `target`'s repository here, and in the bucket (in the
    /// background) for the other replicas.
    fn record_members(&self, target: &Target, digests: Vec<Digest>) {
        let upstream = target.upstream.name();
        self.members.record(upstream, &target.name, &digests);
        if let Some(bucket) = &self.ctx.tiers.bucket {
            let (bucket, upstream, name) =
                (bucket.clone(), upstream.to_string(), target.name.clone());
            tokio::spawn(async move { bucket.record_members(&upstream, &name, &digests).await });
        }
    }

    /// Whether `digest` is known to belong to `target`'s repository, here or (recorded by
    /// another replica) in the bucket.
    async fn known_member(&self, target: &Target, digest: &Digest) -> bool {
        let upstream = target.upstream.name();
        self.members.contains(upstream, &target.name, digest).await
            || self.shared_member(target, digest).await
    }

    /// Whether another replica recorded `digest` in `target`'s repository; then it is
    /// recorded here too.
    async fn shared_member(&self, target: &Target, digest: &Digest) -> bool {
        let Some(bucket) = &self.ctx.tiers.bucket else {
            return false;
        };
        let upstream = target.upstream.name();
        if !bucket.is_member(upstream, &target.name, digest).await {
            return false;
        }
        let digests = std::slice::from_ref(digest);
        self.members.record(upstream, &target.name, digests);
        true
    }

    /// Whether the blob is held for this repository (memory lookup, then its record on
    /// disk) and its upstream's trust domain delivered it. False means a HEAD must answer
    /// from upstream.
    async fn is_member(&self, target: &Target, digest: &Digest) -> bool {
        self.members
            .contains(target.upstream.name(), &target.name, digest)
            .await
            && self.trusted(target, digest).await
    }

    /// Succeeds when `digest` is known to belong to `target`'s repository, asking upstream
    /// (a HEAD under that name) when regcache has not seen it there. `accept` is given for
    /// manifests. A blob confirmed this way is recorded; a manifest is recorded by its caller
    /// with what it references.
    async fn ensure_member(
        &self,
        target: &Target,
        digest: &Digest,
        accept: Option<&str>,
    ) -> Result<()> {
        let upstream = target.upstream.name();
        if self.known_member(target, digest).await {
            return Ok(());
        }
        let (resource, code, what) = match accept {
            None => (Resource::Blob(digest), ErrorCode::BlobUnknown, "blob"),
            Some(_) => (
                Resource::Manifest(digest),
                ErrorCode::ManifestUnknown,
                "manifest",
            ),
        };
        let asked = target
            .upstream
            .send(
                Method::HEAD,
                &target.name,
                resource,
                accept,
                target.priority,
            )
            .await;
        let count = |result: &str| {
            self.ctx
                .metrics
                .membership_checks
                .with_label_values(&[upstream, result])
                .inc();
        };
        let name = &target.name;
        match asked {
            Ok(_) => {
                count("confirmed");
                if accept.is_none() {
                    self.confirmed(target, digest);
                }
                Ok(())
            }
            Err(e) if says_no(&e) => {
                count("refused");
                tracing::debug!(%digest, repository = %name, error = %e, "upstream does not confirm a cached object for this repository");
                Err(Error::not_found(
                    code,
                    format!("{what} unknown to repository {name} on upstream {upstream:?}"),
                ))
            }
            Err(e) => {
                count("unavailable");
                Err(Error::not_found(
                    code,
                    format!(
                        "{what} not known to belong to repository {name} on upstream {upstream:?}, \
                         and upstream could not be asked to confirm it ({e}); pull it through a \
                         manifest of {name}, or retry when upstream is reachable"
                    ),
                ))
            }
        }
    }

    /// Records a manifest served for `target`'s repository together with what it references
    /// (and the blob sizes it declares), unless already known (one memory lookup on the hot
    /// path).
    fn note_manifest(&self, target: &Target, manifest: &Manifest) {
        let upstream = target.upstream.name();
        let Some(bytes) = &manifest.bytes else { return };
        if self.members.known(upstream, &target.name, &manifest.digest) {
            return;
        }
        let found = crate::oci::manifest::references(&manifest.media_type, bytes);
        self.ctx
            .declared
            .record(upstream, &target.name, &found.sizes);
        // An image's config and layers: registries refuse an image manifest whose blobs the
        // repository lacks. An index's children are not taken on its word: OCI 1.1 lets a
        // registry accept an index whose children are elsewhere (a sparse index), so a child
        // is confirmed upstream (a HEAD) unless this repository fetched it itself.
        // The references first: the manifest's own record means "its blobs are recorded".
        let mut digests = found.blobs;
        digests.push(manifest.digest.clone());
        self.record_members(target, digests);
    }

    /// The blob fills in progress.
    pub fn fills(&self) -> Vec<fill::InProgress> {
        self.fills.in_progress()
    }

    /// The memory tier's (objects, bytes) and its budget.
    pub fn memory_usage(&self) -> (u64, u64) {
        self.ctx.tiers.memory.usage()
    }

    /// Updates the memory and disk gauges; called when metrics are scraped.
    pub fn report_usage(&self) {
        let (objects, bytes) = self.ctx.tiers.disk.index.usage();
        self.ctx.metrics.disk_objects.set(objects as i64);
        self.ctx.metrics.disk_bytes.set(bytes as i64);
        let (objects, bytes) = self.ctx.tiers.memory.usage();
        self.ctx.metrics.memory_objects.set(objects as i64);
        self.ctx.metrics.memory_bytes.set(bytes as i64);
        self.ctx
            .metrics
            .fills_in_flight
            .set(self.fills.in_flight() as i64);
    }
}

fn vanished() -> Error {
    Error::local(
        "blob lookup",
        std::io::Error::other("blob vanished while being looked up"),
    )
}

/// Upstream's definite "not here" (or "not for you") for the name asked, as opposed to
/// upstream being unavailable.
fn says_no(e: &Error) -> bool {
    match e {
        Error::Upstream { cause, .. } => match cause {
            UpstreamError::Status { status, .. } | UpstreamError::Refused { status } => {
                status.is_client_error()
            }
            _ => false,
        },
        _ => e.is_not_found(),
    }
}
