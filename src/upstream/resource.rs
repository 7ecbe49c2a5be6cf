//! What a request asks an upstream for under `/v2/<name>/`: the path, the metrics kind
//! and whether it names content by digest all come from one typed value, never from a
//! string built at the call site and read back later.

use crate::oci::{Digest, Tag};

#[derive(Clone, Copy, Debug)]
pub enum Resource<'a> {
    Blob(&'a Digest),
    Manifest(&'a Digest),
    TaggedManifest(&'a Tag),
    /// `tags/list`, with the query the client sent (already filtered).
    Tags(Option<&'a str>),
    Referrers(&'a Digest, Option<&'a str>),
}

/// What a request is for: the `kind` label of upstream metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Manifest,
    Blob,
    Tags,
    Referrers,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Manifest => "manifest",
            Kind::Blob => "blob",
            Kind::Tags => "tags",
            Kind::Referrers => "referrers",
        }
    }
}

impl Resource<'_> {
    pub fn kind(&self) -> Kind {
        match self {
            Resource::Blob(_) => Kind::Blob,
            Resource::Manifest(_) | Resource::TaggedManifest(_) => Kind::Manifest,
            Resource::Tags(_) => Kind::Tags,
            Resource::Referrers(..) => Kind::Referrers,
        }
    }

    /// Names content exactly: offline, not having it is a plain 404. So are a digest's
    /// referrers: a 404 sends cosign and notation to the tag schema (`sha256-<hex>` tags),
    /// which offline serves like any cached tag.
    pub fn by_digest(&self) -> bool {
        matches!(
            self,
            Resource::Blob(_) | Resource::Manifest(_) | Resource::Referrers(..)
        )
    }

    /// The path under `/v2/<name>/`.
    pub fn path(&self) -> String {
        let with = |path: String, query: &Option<&str>| match query {
            Some(q) if !q.is_empty() => format!("{path}?{q}"),
            _ => path,
        };
        match self {
            Resource::Blob(digest) => format!("blobs/{digest}"),
            Resource::Manifest(digest) => format!("manifests/{digest}"),
            Resource::TaggedManifest(tag) => format!("manifests/{tag}"),
            Resource::Tags(query) => with("tags/list".into(), query),
            Resource::Referrers(digest, query) => with(format!("referrers/{digest}"), query),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Algorithm;

    #[test]
    fn paths_and_kinds() {
        let d = Digest::of(Algorithm::Sha256, b"x");
        let tag: Tag = "v1".parse().unwrap();
        assert_eq!(Resource::Blob(&d).path(), format!("blobs/{d}"));
        assert_eq!(Resource::TaggedManifest(&tag).path(), "manifests/v1");
        assert_eq!(Resource::Tags(Some("n=2")).path(), "tags/list?n=2");
        assert_eq!(
            Resource::Referrers(&d, None).path(),
            format!("referrers/{d}")
        );
        assert!(Resource::Manifest(&d).by_digest());
        assert!(!Resource::TaggedManifest(&tag).by_digest());
        assert_eq!(Resource::Tags(None).kind(), Kind::Tags);
    }
}
