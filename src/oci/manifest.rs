//! Reading a manifest document strictly by its media type: which type it is, and which
//! blobs and child manifests it references. Pure; no I/O.
//!
//! What a manifest references becomes part of its repository (see `cache::membership`),
//! so a document is read only through the fields its type defines: an image's `config`
//! and `layers`, an index's `manifests`, schema1's `fsLayers`. A document whose fields
//! belong to another type (an image manifest that also lists `manifests`, the ambiguity
//! behind CVE-2021-41190) or whose declared `mediaType` contradicts the type it was served
//! as is refused whole: a registry that checks only the fields of the declared type would
//! otherwise let a pusher claim any digest for their repository.

use serde_json::{Map, Value};

use super::digest::Digest;
use super::media::{
    essence, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST_V1, DOCKER_MANIFEST_V1_SIGNED,
    DOCKER_MANIFEST_V2, OCI_INDEX, OCI_MANIFEST,
};

/// What a manifest points at: an image's config and layers (blobs), an index's child
/// manifests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct References {
    pub blobs: Vec<Digest>,
    pub manifests: Vec<Digest>,
    /// The sizes the descriptors declared for blobs, where they did.
    pub sizes: Vec<(Digest, u64)>,
}

/// A manifest read by its type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Document {
    /// The media type it is served and stored as (lowercase, no parameters).
    pub media_type: String,
    pub references: References,
}

/// Why a document cannot be served as a manifest.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("the manifest is not a JSON object")]
    NotObject,
    #[error("the manifest declares mediaType {declared:?} but was served as {served:?}")]
    TypeMismatch { declared: String, served: String },
    #[error(
        "a {media_type} must not have a {field:?} field (it belongs to another manifest type)"
    )]
    ForeignField {
        media_type: &'static str,
        field: &'static str,
    },
    #[error("the manifest has both image fields (config, layers) and index fields (manifests) and no media type to choose between them")]
    Ambiguous,
}

/// The kinds of manifest whose references are read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Image(&'static str),
    Index(&'static str),
    Schema1(&'static str),
}

fn kind_of(media_type: &str) -> Option<Kind> {
    [
        Kind::Image(OCI_MANIFEST),
        Kind::Image(DOCKER_MANIFEST_V2),
        Kind::Index(OCI_INDEX),
        Kind::Index(DOCKER_MANIFEST_LIST),
        Kind::Schema1(DOCKER_MANIFEST_V1_SIGNED),
        Kind::Schema1(DOCKER_MANIFEST_V1),
    ]
    .into_iter()
    .find(|k| k.name() == media_type)
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Image(n) | Kind::Index(n) | Kind::Schema1(n) => n,
        }
    }

    /// Fields that belong to the other kinds: their presence makes the document ambiguous.
    fn foreign(self) -> &'static [&'static str] {
        match self {
            Kind::Image(_) => &["manifests", "fsLayers"],
            Kind::Index(_) => &["config", "layers", "fsLayers"],
            Kind::Schema1(_) => &["config", "layers", "manifests"],
        }
    }
}

/// Reads a manifest. `served` is the type upstream named in `Content-Type` (generic types
/// such as `application/json` already dropped), else the document's own `mediaType`
/// decides, else its fields (an old OCI document without `mediaType`). Types regcache does
/// not know (artifacts of other kinds) reference nothing.
pub fn read(served: Option<&str>, bytes: &[u8]) -> Result<Document, ManifestError> {
    let json: Value = serde_json::from_slice(bytes).map_err(|_| ManifestError::NotObject)?;
    let object = json.as_object().ok_or(ManifestError::NotObject)?;
    let declared = match object.get("mediaType") {
        Some(Value::String(s)) if !s.is_empty() => Some(essence(s)),
        _ => None,
    };
    let media_type = match (served.map(essence), declared) {
        (Some(served), Some(declared)) if served != declared => {
            return Err(ManifestError::TypeMismatch { declared, served })
        }
        (Some(t), _) | (None, Some(t)) => t,
        (None, None) => guess(object)?.to_string(),
    };
    let Some(kind) = kind_of(&media_type) else {
        return Ok(Document {
            media_type,
            references: References::default(),
        });
    };
    if let Some(field) = kind.foreign().iter().find(|f| object.contains_key(**f)) {
        return Err(ManifestError::ForeignField {
            media_type: kind.name(),
            field,
        });
    }
    // A missing field or a descriptor without a valid digest references nothing: it can
    // claim no content, so it is no reason to refuse the document.
    let references = match kind {
        Kind::Image(_) => {
            let config = object.get("config").and_then(|c| descriptor(c, "digest"));
            let mut found: Vec<_> = config.into_iter().collect();
            found.extend(listed(object, "layers", "digest"));
            References {
                sizes: found
                    .iter()
                    .filter_map(|(d, s)| Some((d.clone(), (*s)?)))
                    .collect(),
                blobs: digests(found),
                ..References::default()
            }
        }
        Kind::Index(_) => References {
            manifests: digests(listed(object, "manifests", "digest")),
            ..References::default()
        },
        Kind::Schema1(_) => References {
            blobs: digests(listed(object, "fsLayers", "blobSum")),
            ..References::default()
        },
    };
    Ok(Document {
        media_type,
        references,
    })
}

/// What a stored manifest of `media_type` references; nothing when it does not read
/// cleanly (its content then has to be confirmed upstream one by one).
pub fn references(media_type: &str, bytes: &[u8]) -> References {
    read(Some(media_type), bytes)
        .map(|d| d.references)
        .unwrap_or_default()
}

/// The type of a document that names none: by its fields, refusing both kinds at once.
fn guess(object: &Map<String, Value>) -> Result<&'static str, ManifestError> {
    let image = object.contains_key("config") || object.contains_key("layers");
    let index = object.contains_key("manifests");
    match (image, index) {
        (true, true) => Err(ManifestError::Ambiguous),
        (false, true) => Ok(OCI_INDEX),
        _ => Ok(OCI_MANIFEST),
    }
}

/// A descriptor's digest (under `key`) and its declared size, if it has one.
fn descriptor(value: &Value, key: &str) -> Option<(Digest, Option<u64>)> {
    let digest = value.get(key)?.as_str()?.parse().ok()?;
    Some((digest, value.get("size").and_then(Value::as_u64)))
}

fn digests(found: Vec<(Digest, Option<u64>)>) -> Vec<Digest> {
    found.into_iter().map(|(d, _)| d).collect()
}

/// The descriptors in the array `field` that have a valid digest.
fn listed(object: &Map<String, Value>, field: &str, key: &str) -> Vec<(Digest, Option<u64>)> {
    let items = object.get(field).and_then(Value::as_array);
    items
        .into_iter()
        .flatten()
        .filter_map(|item| descriptor(item, key))
        .collect()
}

/// The top-level `mediaType` of a JSON manifest, if it has a non-empty one.
pub fn media_type_of_manifest(bytes: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
    }
    let probe: Probe = serde_json::from_slice(bytes).ok()?;
    probe.media_type.filter(|m| !m.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Algorithm;

    fn d(s: &str) -> Digest {
        Digest::of(Algorithm::Sha256, s.as_bytes())
    }

    fn image(media_type: &str, extra: &str) -> String {
        let (c, l) = (d("c"), d("l"));
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{media_type}","config":{{"digest":"{c}"}},"layers":[{{"digest":"{l}","size":1234}}]{extra}}}"#
        )
    }

    #[test]
    fn an_image_references_its_config_and_layers() {
        for t in [OCI_MANIFEST, DOCKER_MANIFEST_V2] {
            let doc = read(Some(t), image(t, "").as_bytes()).unwrap();
            assert_eq!(doc.media_type, t);
            assert_eq!(doc.references.blobs, [d("c"), d("l")]);
            assert_eq!(doc.references.sizes, [(d("l"), 1234)]);
            assert!(doc.references.manifests.is_empty());
        }
    }

    #[test]
    fn an_index_references_its_manifests_only() {
        let m = d("m");
        let index = format!(r#"{{"mediaType":"{OCI_INDEX}","manifests":[{{"digest":"{m}"}}]}}"#);
        let doc = read(None, index.as_bytes()).unwrap();
        assert_eq!(doc.media_type, OCI_INDEX);
        assert_eq!(doc.references.manifests, [m]);
        assert!(doc.references.blobs.is_empty());
    }

    #[test]
    fn an_image_with_index_fields_is_refused() {
        // A schema2 manifest smuggling a `manifests` list: a registry that checks only
        // config and layers accepts it; its extra digest must never become a member.
        let v = d("victim");
        let extra = format!(r#","manifests":[{{"digest":"{v}"}}]"#);
        let doc = image(DOCKER_MANIFEST_V2, &extra);
        assert_eq!(
            read(Some(DOCKER_MANIFEST_V2), doc.as_bytes()),
            Err(ManifestError::ForeignField {
                media_type: DOCKER_MANIFEST_V2,
                field: "manifests"
            })
        );
        assert_eq!(
            references(DOCKER_MANIFEST_V2, doc.as_bytes()),
            References::default()
        );
        let index = format!(
            r#"{{"mediaType":"{OCI_INDEX}","manifests":[],"layers":[{{"digest":"{v}"}}]}}"#
        );
        assert!(matches!(
            read(None, index.as_bytes()),
            Err(ManifestError::ForeignField {
                field: "layers",
                ..
            })
        ));
    }

    #[test]
    fn a_declared_type_must_match_the_served_one() {
        let doc = image(OCI_MANIFEST, "");
        assert!(matches!(
            read(Some(OCI_INDEX), doc.as_bytes()),
            Err(ManifestError::TypeMismatch { .. })
        ));
        // Parameters and case do not matter.
        let served = format!("{}; charset=utf-8", OCI_MANIFEST.to_uppercase());
        assert!(read(Some(&served), doc.as_bytes()).is_ok());
    }

    #[test]
    fn without_a_type_the_fields_decide_and_both_kinds_are_ambiguous() {
        let (c, m) = (d("c"), d("m"));
        let old_image = format!(r#"{{"config":{{"digest":"{c}"}},"layers":[]}}"#);
        assert_eq!(
            read(None, old_image.as_bytes()).unwrap().media_type,
            OCI_MANIFEST
        );
        let old_index = format!(r#"{{"manifests":[{{"digest":"{m}"}}]}}"#);
        assert_eq!(
            read(None, old_index.as_bytes()).unwrap().media_type,
            OCI_INDEX
        );
        let both = format!(
            r#"{{"config":{{"digest":"{c}"}},"layers":[],"manifests":[{{"digest":"{m}"}}]}}"#
        );
        assert_eq!(read(None, both.as_bytes()), Err(ManifestError::Ambiguous));
    }

    #[test]
    fn broken_descriptors_claim_nothing_and_non_objects_are_refused() {
        let c = d("c");
        let bad = format!(
            r#"{{"mediaType":"{OCI_MANIFEST}","config":{{"digest":"{c}"}},"layers":[{{"digest":"bad"}},{{"size":3}}]}}"#
        );
        assert_eq!(read(None, bad.as_bytes()).unwrap().references.blobs, [c]);
        let no_config = format!(r#"{{"mediaType":"{OCI_MANIFEST}","layers":{{}}}}"#);
        assert_eq!(
            read(None, no_config.as_bytes()).unwrap().references,
            References::default()
        );
        for junk in [&b"[]"[..], b"not json", b"\xff", b"3"] {
            assert_eq!(
                read(Some(OCI_MANIFEST), junk),
                Err(ManifestError::NotObject)
            );
        }
    }

    #[test]
    fn schema1_references_its_fs_layers_and_unknown_types_nothing() {
        let l = d("l");
        let s1 = format!(r#"{{"schemaVersion":1,"fsLayers":[{{"blobSum":"{l}"}}]}}"#);
        let doc = read(Some(DOCKER_MANIFEST_V1_SIGNED), s1.as_bytes()).unwrap();
        assert_eq!(doc.references.blobs, [l]);
        let artifact = image("application/vnd.example.thing+json", "");
        let doc = read(None, artifact.as_bytes()).unwrap();
        assert_eq!(doc.media_type, "application/vnd.example.thing+json");
        assert_eq!(doc.references, References::default());
    }

    #[test]
    fn reads_manifest_media_type() {
        let m = format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[]}}"#);
        assert_eq!(
            media_type_of_manifest(m.as_bytes()).as_deref(),
            Some(OCI_INDEX)
        );
        for bad in [
            &b"{}"[..],
            b"[]",
            b"not json",
            b"{\"mediaType\":3}",
            b"{\"mediaType\":\"\"}",
            b"\xff",
        ] {
            assert_eq!(media_type_of_manifest(bad), None);
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256), typed in proptest::bool::ANY) {
            let _ = read(typed.then_some(OCI_INDEX), &bytes);
        }
    }
}
