//! End to end against Debian's `docker-registry` with real clients (skopeo).

mod admin;
mod airgap;
mod auth;
mod mirror;
mod skopeo;
mod status_page;
