//! Upstreams: faults, retries and resumes, routing between several upstreams, Docker
//! Hub's ways, redirects and token realms.

mod faults;
mod hub;
mod listings;
mod resilience;
mod routing;
mod upstream_faults;
mod upstream_trust;
