//! Maps a raw request path to a registry API [`Route`].
//!
//! The path is taken as sent (not percent-decoded): a `%` simply fails name
//! validation. Repository names contain `/`, so the kind of request is read
//! from the end of the path and everything between `/v2/` and it is the name.
//! Pure; never panics on any input.

use super::digest::{Digest, DigestError};
use super::name::{NameError, RepoName};
use super::reference::{Reference, ReferenceError};

/// Longer paths are refused before any parsing work.
pub const MAX_PATH_LEN: usize = 2048;

/// A pull-side registry API endpoint, with its parts already validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/v2/` (or `/v2`): the API version check.
    Base,
    /// `/v2/<name>/manifests/<reference>`
    Manifest {
        name: RepoName,
        reference: Reference,
    },
    /// `/v2/<name>/blobs/<digest>`
    Blob { name: RepoName, digest: Digest },
    /// `/v2/<name>/tags/list`
    Tags { name: RepoName },
    /// `/v2/<name>/referrers/<digest>`
    Referrers { name: RepoName, digest: Digest },
    /// `/v2/<name>/blobs/uploads/` (slash optional) and
    /// `/v2/<name>/blobs/uploads/<session>`: recognised only so a pull-only
    /// proxy can refuse pushes with a proper error.
    Upload { name: RepoName },
}

impl Route {
    pub fn name(&self) -> Option<&RepoName> {
        match self {
            Route::Base => None,
            Route::Manifest { name, .. }
            | Route::Blob { name, .. }
            | Route::Tags { name }
            | Route::Referrers { name, .. }
            | Route::Upload { name } => Some(name),
        }
    }

    /// A fixed label for metrics and spans.
    pub fn kind(&self) -> &'static str {
        match self {
            Route::Base => "base",
            Route::Manifest { .. } => "manifest",
            Route::Blob { .. } => "blob",
            Route::Tags { .. } => "tags",
            Route::Referrers { .. } => "referrers",
            Route::Upload { .. } => "upload",
        }
    }
}

/// Why a path is not a usable registry API request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("not a registry API path")]
    NotFound,
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error(transparent)]
    Digest(#[from] DigestError),
}

/// Parses a request path such as `/v2/library/nginx/manifests/latest`.
///
/// Pass the path alone: a query string (e.g. `?artifactType=` on referrers)
/// must be split off first, or it fails validation.
pub fn parse(path: &str) -> Result<Route, RouteError> {
    if path.len() > MAX_PATH_LEN {
        return Err(RouteError::NotFound);
    }
    if path == "/v2/" || path == "/v2" {
        return Ok(Route::Base);
    }
    let rest = path.strip_prefix("/v2/").ok_or(RouteError::NotFound)?;
    let segs: Vec<&str> = rest.split('/').collect();
    let n = segs.len();
    let dot = |s: &&str| *s == "." || *s == "..";
    if segs.iter().any(dot) || segs[..n - 1].iter().any(|s| s.is_empty()) {
        return Err(RouteError::NotFound);
    }
    let name = |end: usize| -> Result<RepoName, RouteError> {
        if end == 0 {
            return Err(RouteError::NotFound);
        }
        Ok(segs[..end].join("/").parse()?)
    };
    // Only `blobs/uploads/` may end in an empty segment.
    let last = segs[n - 1];
    let upload_tail = n >= 3 && segs[n - 3] == "blobs" && segs[n - 2] == "uploads";
    if last.is_empty() && !upload_tail {
        return Err(RouteError::NotFound);
    }
    if n < 2 {
        return Err(RouteError::NotFound);
    }
    match (segs[n - 2], last) {
        ("tags", "list") => Ok(Route::Tags { name: name(n - 2)? }),
        ("manifests", reference) => Ok(Route::Manifest {
            name: name(n - 2)?,
            reference: reference.parse()?,
        }),
        // `uploads` can never be a digest, so it is the upload endpoint.
        ("blobs", "uploads") => Ok(Route::Upload { name: name(n - 2)? }),
        ("blobs", digest) => Ok(Route::Blob {
            name: name(n - 2)?,
            digest: digest.parse()?,
        }),
        ("referrers", digest) => Ok(Route::Referrers {
            name: name(n - 2)?,
            digest: digest.parse()?,
        }),
        _ if upload_tail => Ok(Route::Upload { name: name(n - 3)? }),
        _ => Err(RouteError::NotFound),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn name(s: &str) -> RepoName {
        s.parse().unwrap()
    }

    #[test]
    fn base() {
        assert_eq!(parse("/v2/"), Ok(Route::Base));
        assert_eq!(parse("/v2"), Ok(Route::Base));
        assert_eq!(parse("/v2//"), Err(RouteError::NotFound));
        assert_eq!(parse("/v1/"), Err(RouteError::NotFound));
    }

    #[test]
    fn each_kind() {
        let r = parse("/v2/library/nginx/manifests/latest").unwrap();
        assert_eq!(r.kind(), "manifest");
        assert_eq!(r.name(), Some(&name("library/nginx")));
        assert_eq!(parse(&format!("/v2/a/blobs/{D}")).unwrap().kind(), "blob");
        assert_eq!(
            parse("/v2/a/b/tags/list"),
            Ok(Route::Tags { name: name("a/b") })
        );
        assert_eq!(
            parse(&format!("/v2/a/referrers/{D}")).unwrap().kind(),
            "referrers"
        );
        for up in [
            "/v2/a/blobs/uploads/",
            "/v2/a/blobs/uploads",
            "/v2/a/blobs/uploads/0f-9c",
        ] {
            assert_eq!(parse(up), Ok(Route::Upload { name: name("a") }), "{up}");
        }
    }

    #[test]
    fn keywords_as_name_components() {
        let r = parse("/v2/a/manifests/manifests/latest").unwrap();
        assert_eq!(r.name(), Some(&name("a/manifests")));
        let r = parse(&format!("/v2/blobs/manifests/blobs/{D}")).unwrap();
        assert_eq!(r.name(), Some(&name("blobs/manifests")));
        let r = parse("/v2/tags/list/tags/list").unwrap();
        assert_eq!(
            r,
            Route::Tags {
                name: name("tags/list")
            }
        );
        let r = parse("/v2/a/blobs/blobs/uploads/x").unwrap();
        assert_eq!(
            r,
            Route::Upload {
                name: name("a/blobs")
            }
        );
    }

    #[test]
    fn rejects_bad_shapes() {
        for bad in [
            "",
            "/",
            "/v2/manifests/latest",
            "/v2/a//manifests/latest",
            "/v2/a/manifests/",
            "/v2/a/tags/list/",
            "/v2/a/tags/other",
            "/v2/a",
            "/v2/a/./manifests/x",
            "/v2/../manifests/x",
            "/v2/a/manifests/..",
            "/v2/a/blobs/uploads/..",
            "/v2/a/blobs/uploads/x/y",
            "v2/a/manifests/x",
        ] {
            assert_eq!(parse(bad), Err(RouteError::NotFound), "{bad}");
        }
        assert!(matches!(
            parse("/v2/A/manifests/x"),
            Err(RouteError::Name(_))
        ));
        assert!(matches!(
            parse("/v2/a%2fb/manifests/x"),
            Err(RouteError::Name(_))
        ));
        assert!(matches!(
            parse("/v2/a/manifests/.x"),
            Err(RouteError::Reference(_))
        ));
        assert!(matches!(
            parse("/v2/a/blobs/latest"),
            Err(RouteError::Digest(_))
        ));
        let long = format!("/v2/{}/manifests/x", "a/".repeat(1100));
        assert_eq!(parse(&long), Err(RouteError::NotFound));
    }
}

#[cfg(test)]
mod prop {
    use super::*;
    use proptest::prelude::*;

    fn name() -> impl Strategy<Value = RepoName> {
        let component = prop_oneof![
            3 => "[a-z0-9]{1,6}((\\.|_|__|-+)[a-z0-9]{1,4}){0,2}",
            1 => proptest::sample::select(vec!["manifests", "blobs", "uploads", "tags", "list", "referrers", "v2"])
                .prop_map(String::from),
        ];
        proptest::collection::vec(component, 1..6).prop_map(|c| c.join("/").parse().unwrap())
    }

    fn digest() -> impl Strategy<Value = Digest> {
        "sha256:[0-9a-f]{64}".prop_map(|s| s.parse().unwrap())
    }

    fn reference() -> impl Strategy<Value = Reference> {
        prop_oneof![
            "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,20}".prop_map(|s| s.parse().unwrap()),
            digest().prop_map(Reference::Digest),
        ]
    }

    proptest! {
        #[test]
        fn never_panics(s in any::<String>()) {
            let _ = parse(&s);
        }

        #[test]
        fn never_panics_on_near_misses(s in "/v2/[a-z0-9/:._%-]{0,60}") {
            let _ = parse(&s);
        }

        #[test]
        fn round_trips(name in name(), reference in reference(), digest in digest(), session in "[a-z0-9-]{0,8}") {
            let cases = [
                (format!("/v2/{name}/manifests/{reference}"), Route::Manifest { name: name.clone(), reference }),
                (format!("/v2/{name}/blobs/{digest}"), Route::Blob { name: name.clone(), digest: digest.clone() }),
                (format!("/v2/{name}/referrers/{digest}"), Route::Referrers { name: name.clone(), digest }),
                (format!("/v2/{name}/tags/list"), Route::Tags { name: name.clone() }),
                (format!("/v2/{name}/blobs/uploads/{session}"), Route::Upload { name }),
            ];
            for (path, route) in cases {
                prop_assert_eq!(parse(&path), Ok(route), "{}", path);
            }
        }
    }
}
