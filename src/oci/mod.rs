//! The OCI distribution protocol (pull side), as pure data and functions.
//!
//! Owns the wire vocabulary: request routes, repository names, tags and
//! references, digests and hashing, byte ranges, media types and `Accept`,
//! OCI error bodies, and `WWW-Authenticate` challenges. Everything here is
//! synchronous and does no I/O (no sockets, files, clocks or tokio), so it is
//! unit- and property-tested in isolation. Values are validated once here
//! and trusted everywhere else.

pub mod challenge;
pub mod digest;
pub mod errors;
pub mod manifest;
pub mod media;
pub mod name;
pub mod range;
pub mod reference;
pub mod route;

pub use challenge::{parse_challenges, scope_for_pull, Challenge};
pub use digest::{Algorithm, Digest, DigestError, Hasher};
pub use errors::{error_body, parse_error_body, ErrorCode};
pub use manifest::{media_type_of_manifest, ManifestError, References};
pub use media::Accept;
pub use name::{NameError, RepoName};
pub use range::{
    parse_content_range, parse_range, unsatisfied_content_range, ByteRange, RangeError, RangeSpec,
};
pub use reference::{Reference, ReferenceError, Tag, TagError};
pub use route::{Route, RouteError};
