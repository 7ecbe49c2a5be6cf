//! The integration tests, in one binary laid out by the part of regcache they exercise.
//!
//! Tests that change what the whole process shares (environment variables, signals) or
//! that must not share it with others (the login flood, the soak) keep binaries of their
//! own beside this one: `auth`, `credential_helper`, `ecr`, `ecr_proxy`, `login_flood`,
//! `proxy_env`, `soak` and `tls`.

#[path = "../support/mod.rs"]
mod support;

mod cache;
mod cluster;
mod deploy;
// Needs Debian's docker-registry and skopeo: `--features e2e` (tests/run.sh sets it).
#[cfg(feature = "e2e")]
mod e2e;
mod security;
mod server;
mod upstream;
