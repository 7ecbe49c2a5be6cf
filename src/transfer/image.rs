//! Image references as operators type them (`registry/repo:tag`, `repo@sha256:...`), the
//! platforms `--platform` names, and the descriptors a manifest lists. Pure: no I/O.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

use crate::oci::{Digest, Reference, RepoName, Tag};
use crate::upstream::router::{RouteRequest, Routed, Router, UnknownNamespace};

/// `[REGISTRY/]REPO[:TAG|@DIGEST]`. The first component is a registry when it looks like a
/// host (has a `.` or a `:`, or is `localhost`), as Docker reads it; it then selects the
/// upstream the way containerd's `ns=` does. Without one, the name is routed as a client's
/// path would be (a path prefix naming an upstream, else the default upstream).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    pub registry: Option<String>,
    pub name: RepoName,
    pub reference: Reference,
    /// As written (with `:latest` added when no tag or digest was given).
    pub text: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageRefError {
    #[error("{0:?}: {1}")]
    Name(String, crate::oci::NameError),
    #[error("{0:?}: {1}")]
    Reference(String, crate::oci::ReferenceError),
}

impl FromStr for ImageRef {
    type Err = ImageRefError;

    fn from_str(s: &str) -> Result<ImageRef, ImageRefError> {
        let s = s.trim();
        let (path, reference) = match s.split_once('@') {
            Some((path, digest)) => (path, digest.to_string()),
            None => {
                let last = s.rfind('/').map_or(0, |i| i + 1);
                match s[last..].rfind(':') {
                    Some(i) => (&s[..last + i], s[last + i + 1..].to_string()),
                    None => (s, "latest".to_string()),
                }
            }
        };
        let reference: Reference = reference
            .parse()
            .map_err(|e| ImageRefError::Reference(s.to_string(), e))?;
        let (registry, repo) = match path.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (Some(first.to_ascii_lowercase()), rest)
            }
            _ => (None, path),
        };
        let name = repo
            .parse()
            .map_err(|e| ImageRefError::Name(s.to_string(), e))?;
        let text = match &reference {
            Reference::Tag(_) if !s[path.len()..].starts_with(':') => format!("{s}:latest"),
            _ => s.to_string(),
        };
        Ok(ImageRef {
            registry,
            name,
            reference,
            text,
        })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl ImageRef {
    /// The query a request through the daemon carries: `ns=<registry>`, if one was named.
    pub fn query(&self) -> Option<String> {
        self.registry.as_ref().map(|r| format!("ns={r}"))
    }

    /// The upstream and repository name the daemon's router would pick for this image.
    pub fn route(&self, router: &Router) -> Result<Routed, UnknownNamespace> {
        let query = self.query();
        router.route(RouteRequest {
            query: query.as_deref(),
            host: None,
            name: &self.name,
        })
    }

    pub fn tag(&self) -> Option<&Tag> {
        self.reference.as_tag()
    }
}

/// `os/arch[/variant]`, as `--platform` takes it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default)]
    pub variant: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a platform: write os/arch or os/arch/variant, e.g. linux/arm64/v8")]
pub struct PlatformError(String);

impl FromStr for Platform {
    type Err = PlatformError;

    fn from_str(s: &str) -> Result<Platform, PlatformError> {
        let parts: Vec<&str> = s.split('/').collect();
        if parts.len() < 2 || parts.len() > 3 || parts.iter().any(|p| p.is_empty()) {
            return Err(PlatformError(s.to_string()));
        }
        Ok(Platform {
            os: parts[0].to_string(),
            architecture: parts[1].to_string(),
            variant: parts.get(2).map(|v| v.to_string()),
        })
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        match &self.variant {
            Some(variant) => write!(f, "/{variant}"),
            None => Ok(()),
        }
    }
}

impl Platform {
    /// Whether an index entry's platform is the one asked for (a variant asked for must match).
    pub fn matches(&self, other: &Platform) -> bool {
        self.os == other.os
            && self.architecture == other.architecture
            && (self.variant.is_none() || self.variant == other.variant)
    }
}

/// A content descriptor, as manifests and indexes list them.
#[derive(Clone, Debug, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: Option<String>,
    #[serde(deserialize_with = "digest")]
    pub digest: Digest,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
}

fn digest<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map_err(serde::de::Error::custom)
}

/// What a manifest references.
#[derive(Debug)]
pub enum Contents {
    /// An index (or Docker manifest list): its manifests.
    Index(Vec<Descriptor>),
    /// An image manifest: its config, then its layers (and nothing else).
    Image(Vec<Descriptor>),
}

#[derive(Debug, thiserror::Error)]
pub enum ContentsError {
    #[error("not a JSON manifest: {0}")]
    Json(#[from] serde_json::Error),
    #[error("neither an image manifest nor an index (schema 1 manifests are not supported)")]
    Unknown,
}

/// Reads what a manifest body references.
pub fn contents(body: &[u8]) -> Result<Contents, ContentsError> {
    #[derive(Deserialize)]
    struct Raw {
        #[serde(default)]
        manifests: Option<Vec<Descriptor>>,
        #[serde(default)]
        config: Option<Descriptor>,
        #[serde(default)]
        layers: Vec<Descriptor>,
    }
    let raw: Raw = serde_json::from_slice(body)?;
    match (raw.manifests, raw.config) {
        (Some(manifests), _) => Ok(Contents::Index(manifests)),
        (None, Some(config)) => Ok(Contents::Image(
            std::iter::once(config).chain(raw.layers).collect(),
        )),
        (None, None) => Err(ContentsError::Unknown),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Overrides};

    fn image(s: &str) -> (Option<String>, String, String, String) {
        let i: ImageRef = s.parse().unwrap();
        (
            i.registry,
            i.name.to_string(),
            i.reference.to_string(),
            i.text,
        )
    }

    #[test]
    fn image_refs_parse_like_docker_reads_them() {
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            image("nginx"),
            (None, "nginx".into(), "latest".into(), "nginx:latest".into())
        );
        assert_eq!(
            image("127.0.0.1:5000/team/app:v1"),
            (
                Some("127.0.0.1:5000".into()),
                "team/app".into(),
                "v1".into(),
                "127.0.0.1:5000/team/app:v1".into()
            )
        );
        assert_eq!(
            image(&format!("docker.io/library/nginx@{d}")).2,
            d.to_string()
        );
        assert_eq!(image("localhost/a").0.as_deref(), Some("localhost"));
        assert_eq!(image("hub/nginx:1").0, None);
        assert!("Upper/case".parse::<ImageRef>().is_err());
        assert!("a@sha256:zz".parse::<ImageRef>().is_err());
    }

    #[test]
    fn images_route_as_the_daemon_routes_them() {
        let config = Config::parse(
            "[[upstream]]\nname = \"hub\"\nurl = \"https://registry-1.docker.io\"\n\
             [[upstream]]\nname = \"local\"\nurl = \"http://127.0.0.1:5001\"\n",
            "test",
            &Overrides::default(),
        )
        .unwrap();
        let router = Router::new(&config.upstreams);
        let route = |s: &str| {
            let r = s.parse::<ImageRef>().unwrap().route(&router).unwrap();
            (r.upstream, r.name.to_string())
        };
        assert_eq!(route("nginx"), (0, "library/nginx".into()));
        assert_eq!(route("docker.io/nginx:1"), (0, "library/nginx".into()));
        assert_eq!(route("127.0.0.1:5001/team/app"), (1, "team/app".into()));
        assert_eq!(route("local/team/app"), (1, "team/app".into()));
        let unknown = "quay.io/a/b".parse::<ImageRef>().unwrap();
        assert!(unknown.route(&router).is_err());
    }

    #[test]
    fn platforms_and_contents() {
        let p: Platform = "linux/arm64".parse().unwrap();
        let v8: Platform = "linux/arm64/v8".parse().unwrap();
        assert!(p.matches(&v8) && !v8.matches(&p));
        assert!("linux".parse::<Platform>().is_err());
        let d = format!("sha256:{}", "b".repeat(64));
        let index = format!(
            r#"{{"manifests":[{{"digest":"{d}","size":3,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}}]}}"#
        );
        let Contents::Index(children) = contents(index.as_bytes()).unwrap() else {
            panic!("an index")
        };
        assert!(p.matches(children[0].platform.as_ref().unwrap()));
        let manifest = format!(
            r#"{{"config":{{"digest":"{d}","size":1}},"layers":[{{"digest":"{d}","size":2}}]}}"#
        );
        let Contents::Image(blobs) = contents(manifest.as_bytes()).unwrap() else {
            panic!("an image")
        };
        assert_eq!(blobs.len(), 2);
        assert!(contents(b"{\"schemaVersion\":1}").is_err());
    }
}
