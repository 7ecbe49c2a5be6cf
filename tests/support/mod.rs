//! Shared test support. Each test binary uses only part of it.
#![allow(dead_code)]

pub mod fake;
pub mod fake_ecr;
pub mod fake_images;
pub mod images;
pub mod proxy;
pub mod regcache;
pub mod registry;
pub mod scripted;
pub mod skopeo;
pub mod store;
pub mod token_issuer;
