//! End to end against Debian's `docker-registry` with real clients (skopeo).

mod admin;
mod airgap;
mod auth;
mod bandwidth;
mod listings;
mod mirror;
mod pulls;
mod skopeo;
mod status_page;
