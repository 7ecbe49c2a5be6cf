//! Several replicas: a shared S3-compatible bucket (SeaweedFS, a real S3 server) where what
//! one replica verified serves the others without upstream, nothing unverified enters and
//! a stopped bucket costs only the sharing (`bucket`); blob misses routed to one owner
//! replica, so many cold clients over many replicas cost one upstream fetch (`routing`).

mod bucket;
mod chain;
mod fleet;
mod routing;
mod scale;
mod shared;
