//! Media types: the manifest types we know and client `Accept` lists. Pure; no I/O.

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST_V1_SIGNED: &str =
    "application/vnd.docker.distribution.manifest.v1+prettyjws";
pub const DOCKER_MANIFEST_V1: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub const OCTET_STREAM: &str = "application/octet-stream";

/// What a mirror asks upstream for when the client does not narrow it down:
/// the current formats, never the deprecated schema1.
pub const MODERN_MANIFEST_TYPES: [&str; 4] = [
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST_V2,
    DOCKER_MANIFEST_LIST,
];

/// A client's `Accept` header(s), reduced to lowercase media ranges.
///
/// The default is "no header sent", which accepts everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Accept {
    /// Media ranges with a non-zero quality, in the client's order.
    ranges: Vec<String>,
    /// Whether the client sent any media range at all (even refused ones).
    sent: bool,
}

impl Accept {
    /// Parses every `Accept` header value of a request.
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a str>) -> Accept {
        let mut accept = Accept::default();
        for entry in values.into_iter().flat_map(|v| v.split(',')) {
            let mut parts = entry.split(';');
            let range = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
            if !is_media_range(&range) {
                continue;
            }
            accept.sent = true;
            if parts.any(is_zero_quality) || accept.ranges.contains(&range) {
                continue;
            }
            accept.ranges.push(range);
        }
        accept
    }

    /// Whether a response of `media_type` (parameters ignored) is acceptable.
    pub fn accepts(&self, media_type: &str) -> bool {
        if !self.sent {
            return true;
        }
        let wanted = essence(media_type);
        let main_type = wanted.split('/').next().unwrap_or_default();
        self.ranges.iter().any(|r| {
            r == "*/*" || *r == wanted || r.strip_suffix("/*").is_some_and(|t| t == main_type)
        })
    }

    /// True when any media type is acceptable.
    pub fn is_unrestricted(&self) -> bool {
        !self.sent || self.ranges.iter().any(|r| r == "*/*")
    }

    /// The `Accept` value to send upstream: the client's own list, or the
    /// modern manifest types when it named no concrete type.
    pub fn header_value(&self) -> String {
        if self.ranges.iter().all(|r| r.ends_with("/*")) {
            return MODERN_MANIFEST_TYPES.join(", ");
        }
        self.ranges.join(", ")
    }
}

/// `type/subtype` with token characters only; drops garbage such as pieces
/// of a quoted parameter that contained a comma.
fn is_media_range(s: &str) -> bool {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    match s.split_once('/') {
        Some((t, sub)) => {
            !t.is_empty() && !sub.is_empty() && t.bytes().all(tchar) && sub.bytes().all(tchar)
        }
        None => false,
    }
}

/// `q=0`, `q=0.0`, `Q = 0.000`: the client refuses this range.
fn is_zero_quality(param: &str) -> bool {
    let Some((key, value)) = param.split_once('=') else {
        return false;
    };
    if !key.trim().eq_ignore_ascii_case("q") {
        return false;
    }
    let value = value.trim();
    match value.strip_prefix('0') {
        Some("") => true,
        Some(rest) => rest
            .strip_prefix('.')
            .is_some_and(|z| z.bytes().all(|b| b == b'0')),
        None => false,
    }
}

/// The media type without parameters, lowercased.
pub(super) fn essence(media_type: &str) -> String {
    let base = media_type.split(';').next().unwrap_or_default();
    base.trim().to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_header_accepts_everything() {
        let a = Accept::parse([]);
        assert!(a.is_unrestricted());
        assert!(a.accepts(DOCKER_MANIFEST_V1_SIGNED));
        assert_eq!(a.header_value(), MODERN_MANIFEST_TYPES.join(", "));
        assert_eq!(Accept::parse([""]), a);
    }

    #[test]
    fn exact_and_wildcards() {
        let a = Accept::parse([
            "Application/VND.oci.image.manifest.v1+json; charset=utf-8",
            " application/vnd.oci.image.index.v1+json , text/*",
        ]);
        assert!(!a.is_unrestricted());
        assert!(a.accepts(OCI_MANIFEST));
        assert!(a.accepts("application/vnd.oci.image.index.v1+json; foo=bar"));
        assert!(a.accepts("text/plain"));
        assert!(!a.accepts(DOCKER_MANIFEST_V2));
        assert_eq!(
            a.header_value(),
            format!("{OCI_MANIFEST}, {OCI_INDEX}, text/*")
        );
        assert!(Accept::parse(["*/*"]).accepts(DOCKER_MANIFEST_V2));
    }

    #[test]
    fn zero_quality_is_refused() {
        let a = Accept::parse([&*format!(
            "{DOCKER_MANIFEST_V1_SIGNED};q=0, {OCI_INDEX};q=0.5"
        )]);
        assert!(!a.accepts(DOCKER_MANIFEST_V1_SIGNED));
        assert!(a.accepts(OCI_INDEX));
        let none = Accept::parse(["*/*; Q = 0.000"]);
        assert!(!none.accepts(OCI_INDEX));
        assert!(!none.is_unrestricted());
    }

    #[test]
    fn only_wildcards_asks_for_modern_types() {
        let a = Accept::parse(["*/*", "application/*"]);
        assert!(a.is_unrestricted());
        assert_eq!(a.header_value(), MODERN_MANIFEST_TYPES.join(", "));
    }

    #[test]
    fn garbage_entries_are_dropped() {
        let a = Accept::parse([r#"application/json;x="a,b", nonsense, a b/c"#]);
        assert_eq!(a.header_value(), "application/json");
    }
}
