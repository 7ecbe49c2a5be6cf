//! Replicas that share an S3-compatible bucket (SeaweedFS, a real S3 server): what one
//! replica verified serves the others without upstream, nothing unverified enters the
//! bucket, and a bucket that stops costs nothing but the sharing.

mod bucket;
