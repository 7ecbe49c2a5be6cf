//! regcache: a pull-through caching proxy for container registries.
//!
//! One request's path through the crate, top to bottom:
//!
//! - [`server`]: accepts the connection, parses the route ([`oci`]) and calls a handler;
//!   every error leaves through one function that logs, counts and answers with OCI JSON.
//!   Plain HTTP/1.1 requests are answered by `server::plain` (blob bytes go out with
//!   sendfile), everything else by hyper. Handlers only format what the mirror decided.
//! - [`mirror`]: the only layer that combines the store with upstreams. It decides a blob
//!   request whole (`mirror::blobs`: an answer ready to send) and a manifest request
//!   (`mirror::manifests`: tags with their TTL, revalidation and stale serving), serves
//!   held content for a repository only once it is known to belong there and its trust
//!   domain delivered it, and runs the single-flight fills (`mirror::fill`) that stream
//!   upstream bytes to every waiting client while hashing.
//! - [`cluster`]: with several replicas, the owner of each blob digest (rendezvous
//!   hashing), which a replica asks before going upstream itself.
//! - [`store`]: what is held and how it is kept, with no `upstream` and no `http`: the
//!   content-addressed files, the one lookup (memory, then disk), the one door in
//!   (`Disk::land`: verified content only), the index, budget and eviction, the snapshot,
//!   the membership records, and the lock that makes one process the store's writer.
//! - [`upstream`]: routes the request to an upstream (`ns=`, path prefix, Host, default)
//!   and talks to it (auth, retries, blob redirects, concurrency cap, rate-limit gauges,
//!   error classes); `upstream::policy` holds each upstream's `allow`/`deny` patterns.
//!
//! Around them: [`config`] (TOML, validated with messages naming the key), [`metrics`]
//! (Prometheus), [`telemetry`] (tracing), [`error`] (the error type), [`systemd`]
//! (socket activation, readiness) and [`app`] (wiring). [`transfer`] moves images into
//! and out of a cache (prefetch, OCI layout export and import); [`operator`] runs the
//! commands that write a store where its one writer is (this process, or the daemon
//! through its admin API).

pub mod app;
#[cfg(feature = "ecr")]
pub mod aws;
pub mod cluster;
pub mod config;
pub mod doctor;
pub mod error;
pub mod metrics;
pub mod mirror;
pub mod oci;
pub mod operator;
pub mod server;
pub mod store;
pub mod systemd;
pub mod telemetry;
pub mod transfer;
pub mod upstream;
