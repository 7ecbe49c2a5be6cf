//! The store layer: what regcache holds and how it is kept, with no knowledge of
//! upstreams or HTTP (nothing here imports `upstream` or `http`).
//!
//! - `files`: the content-addressed layout under `v1/` (blobs and manifests by digest, tag
//!   records, temp files published by rename); `owner`: the lock that makes one process
//!   the store's only writer, and where operator commands go while a daemon holds it.
//! - `land`: the one door in: only what hashes to its digest is published.
//! - `lookup`: the one lookup, memory then disk, for blobs and manifests alike.
//! - `index`: every object's size and last access; `disk` keeps the total under the
//!   budget (LRU eviction, at once when the filesystem is full: `space`) and applies the
//!   lifecycle rules (`lifecycle`); `persist` keeps recency across restarts.
//! - `memory`: the in-memory tier of small objects; `bucket`: the shared tier, an
//!   S3-compatible bucket that replicas read and fill.
//! - `members`: which repository holds which digest, and which trust domain delivered
//!   it: records the mirror writes and reads to decide what it may serve.
//! - `ops`: the operator commands on a store this process owns (gc, verify, stats);
//!   `catalog`: what the cache holds by upstream, repository and tag, purge and pins.
//!
//! A disk error never fails a request: the caller treats it as a miss.

pub mod bucket;
pub mod catalog;
mod disk;
mod files;
mod index;
mod land;
pub mod lifecycle;
mod lookup;
mod members;
// Public for the tiers bench, which replays traces against it.
pub mod memory;
pub mod ops;
pub mod owner;
mod persist;
mod space;

pub use disk::{Disk, Limits, Reason, Swept};
pub use files::{
    parse_manifest, unix_millis, unix_now, ListRecord, Lookup, ObjectKey, ObjectKind, Store,
    TagRecord, LAYOUT_VERSION,
};
pub use index::{Index, Meta, Pin};
pub use land::Refused;
pub use lookup::{Held, Tier, Tiers};
pub use members::{record_image, upstream_dir, Membership};
pub use persist::{read_snapshot, walk, Found};
