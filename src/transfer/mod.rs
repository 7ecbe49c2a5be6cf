//! Moving images into and out of a cache, for the operator commands:
//!
//! - [`prefetch`] fills a cache with images, through a running daemon or in-process;
//! - [`archive`] exports cached images as an OCI image layout archive (a tar that other
//!   tools read) and imports such an archive into a cache, verifying every blob.
//!
//! [`image`] parses the image references operators type and the manifests' descriptors;
//! [`progress`] reports long transfers. Nothing here serves requests.

pub mod archive;
pub mod image;
pub mod prefetch;
pub mod progress;

pub use image::{ImageRef, Platform};
pub use progress::Progress;
