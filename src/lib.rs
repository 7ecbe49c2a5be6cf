//! regcache: a pull-through caching proxy for container registries.
//!
//! One request's path through the crate:
//!
//! - [`server`]: accepts the connection, parses the route ([`oci`]) and calls a handler;
//!   every error leaves through one function that logs, counts and answers with OCI JSON.
//!   Plain HTTP/1.1 requests are answered by `server::plain` (blob bytes go out with
//!   sendfile), everything else by hyper.
//! - [`cache`]: answers from the memory tier or the disk store, or starts (or joins) a
//!   single-flight fill that streams upstream bytes to every waiting client while hashing;
//!   a blob request is decided whole in `cache::blobs` (an answer ready to send).
//!   It keeps the disk under its budget (LRU eviction) and hosts the operator commands
//!   (`cache::ops`: gc, verify, stats) that `main` exposes. Held content is served for a
//!   repository only once it is known to belong to it (`cache::membership`).
//! - [`upstream`]: routes the request to an upstream (`ns=`, path prefix, Host, default)
//!   and talks to it (auth, retries, blob redirects, concurrency cap, rate-limit gauges,
//!   error classes); `upstream::policy` holds each upstream's repository `allow`/`deny`
//!   patterns.
//!
//! Around them: [`config`] (TOML, validated with messages naming the key), [`metrics`]
//! (Prometheus), [`telemetry`] (tracing), [`error`] (the error type), [`systemd`]
//! (socket activation, readiness) and [`app`] (wiring). [`transfer`] moves images into
//! and out of a cache for the operator commands (prefetch, OCI layout export and import).

pub mod app;
pub mod config;
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
