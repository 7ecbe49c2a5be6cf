//! Test images, generated and pushed over the registry HTTP API (no docker, no skopeo).
//!
//! Layers are real, uncompressed tar archives holding deterministic pseudo-random
//! bytes, so a seed always gives the same digests and the content does not compress.
//! Configs are valid image configs whose `rootfs.diff_ids` match the layers.
#![allow(dead_code)]

use serde_json::json;
use sha2::{Digest, Sha256};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// What was pushed, as a test needs it to check a pull.
#[derive(Debug, Clone)]
pub struct PushedImage {
    pub repo: String,
    /// The tag it was pushed under; empty for the children of an index.
    pub tag: String,
    pub manifest_digest: String,
    pub media_type: String,
    /// Every blob (config and layers) with its size; for an index, those of all children.
    pub blobs: Vec<(String, u64)>,
    /// For an index, the platform images it lists; empty otherwise.
    pub children: Vec<PushedImage>,
}

struct Format {
    manifest: &'static str,
    config: &'static str,
    layer: &'static str,
}

const OCI: Format = Format {
    manifest: OCI_MANIFEST,
    config: OCI_CONFIG,
    layer: OCI_LAYER_TAR,
};
const DOCKER: Format = Format {
    manifest: DOCKER_MANIFEST,
    config: DOCKER_CONFIG,
    layer: DOCKER_LAYER_TAR,
};

/// Pushes an OCI image (manifest, config, one uncompressed tar layer per size) as `repo:tag`.
pub async fn push_oci_image(
    registry_url: &str,
    repo: &str,
    tag: &str,
    layer_sizes: &[usize],
    seed: u64,
) -> PushedImage {
    let (image, _) = push_image(
        registry_url,
        None,
        repo,
        tag,
        &OCI,
        layer_sizes,
        seed,
        "amd64",
    )
    .await;
    PushedImage {
        tag: tag.to_string(),
        ..image
    }
}

/// Pushes a Docker schema 2 image with uncompressed tar layers as `repo:tag`.
pub async fn push_docker_image(
    registry_url: &str,
    repo: &str,
    tag: &str,
    layer_sizes: &[usize],
    seed: u64,
) -> PushedImage {
    push_docker_image_as(registry_url, None, repo, tag, layer_sizes, seed).await
}

/// Like `push_docker_image`, sending `authorization` (e.g. `Basic ..` or `Bearer ..`)
/// with every request, for a registry with auth configured.
pub async fn push_docker_image_as(
    registry_url: &str,
    authorization: Option<&str>,
    repo: &str,
    tag: &str,
    layer_sizes: &[usize],
    seed: u64,
) -> PushedImage {
    let (image, _) = push_image(
        registry_url,
        authorization,
        repo,
        tag,
        &DOCKER,
        layer_sizes,
        seed,
        "amd64",
    )
    .await;
    PushedImage {
        tag: tag.to_string(),
        ..image
    }
}

/// Pushes an OCI index for linux/amd64 and linux/arm64, each a small OCI image pushed by digest.
pub async fn push_index(registry_url: &str, repo: &str, tag: &str, seed: u64) -> PushedImage {
    let mut children = Vec::new();
    let mut entries = Vec::new();
    for (i, arch) in ["amd64", "arm64"].into_iter().enumerate() {
        let child_seed = seed.wrapping_mul(31).wrapping_add(i as u64 + 1);
        let sizes = [64 * 1024, 3000 + i * 1000];
        let (child, size) =
            push_image(registry_url, None, repo, "", &OCI, &sizes, child_seed, arch).await;
        entries.push(json!({
            "mediaType": OCI_MANIFEST,
            "digest": child.manifest_digest,
            "size": size,
            "platform": { "architecture": arch, "os": "linux" },
        }));
        children.push(child);
    }
    let index = json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries });
    let bytes = serde_json::to_vec(&index).expect("serialize index");
    let manifest_digest = put_manifest(registry_url, None, repo, tag, OCI_INDEX, bytes).await;
    PushedImage {
        repo: repo.to_string(),
        tag: tag.to_string(),
        manifest_digest,
        media_type: OCI_INDEX.to_string(),
        blobs: children.iter().flat_map(|c| c.blobs.clone()).collect(),
        children,
    }
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// An uncompressed tar holding one file of `size` pseudo-random bytes chosen by `seed`.
pub fn layer_tar(size: usize, seed: u64) -> Vec<u8> {
    let mut header = tar::Header::new_ustar();
    header
        .set_path(format!("data/layer-{seed}.bin"))
        .expect("tar path");
    header.set_size(size as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_cksum();
    let mut builder = tar::Builder::new(Vec::with_capacity(size + 2048));
    let data = std::io::Read::take(Noise::new(seed), size as u64);
    builder.append(&header, data).expect("tar append");
    builder.into_inner().expect("tar finish")
}

/// Pushes one image's blobs and manifest; `reference` empty means push by digest.
/// Returns the image and its manifest's length.
#[allow(clippy::too_many_arguments)]
async fn push_image(
    url: &str,
    auth: Option<&str>,
    repo: &str,
    reference: &str,
    format: &Format,
    layer_sizes: &[usize],
    seed: u64,
    arch: &str,
) -> (PushedImage, u64) {
    let mut layers = Vec::new();
    for (i, &size) in layer_sizes.iter().enumerate() {
        let tar = layer_tar(size, seed.wrapping_mul(1000).wrapping_add(i as u64));
        let digest = sha256_digest(&tar);
        let len = tar.len() as u64;
        put_blob(url, auth, repo, &digest, tar).await;
        layers.push((digest, len));
    }
    let diff_ids: Vec<&str> = layers.iter().map(|(d, _)| d.as_str()).collect();
    let config = json!({
        "created": "1970-01-01T00:00:00Z",
        "architecture": arch,
        "os": "linux",
        "config": { "Labels": { "regcache.test.seed": seed.to_string() } },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "history": layers.iter().map(|_| json!({ "created_by": "regcache e2e" })).collect::<Vec<_>>(),
    });
    let config = serde_json::to_vec(&config).expect("serialize config");
    let config_digest = sha256_digest(&config);
    let config_len = config.len() as u64;
    put_blob(url, auth, repo, &config_digest, config).await;

    let descriptor = |media_type: &str, (digest, size): &(String, u64)| json!({ "mediaType": media_type, "digest": digest, "size": size });
    let config_blob = (config_digest, config_len);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": format.manifest,
        "config": descriptor(format.config, &config_blob),
        "layers": layers.iter().map(|l| descriptor(format.layer, l)).collect::<Vec<_>>(),
    });
    let manifest = serde_json::to_vec(&manifest).expect("serialize manifest");
    let manifest_len = manifest.len() as u64;
    let reference = if reference.is_empty() {
        sha256_digest(&manifest)
    } else {
        reference.into()
    };
    let manifest_digest =
        put_manifest(url, auth, repo, &reference, format.manifest, manifest).await;
    let mut blobs = vec![config_blob];
    blobs.extend(layers);
    let image = PushedImage {
        repo: repo.to_string(),
        tag: String::new(),
        manifest_digest,
        media_type: format.manifest.to_string(),
        blobs,
        children: Vec::new(),
    };
    (image, manifest_len)
}

/// A client sending `authorization`, when given, with every request.
fn client(authorization: Option<&str>) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(value) = authorization {
        headers.insert("authorization", value.parse().expect("header value"));
    }
    reqwest::Client::builder()
        .no_proxy()
        .default_headers(headers)
        .build()
        .expect("reqwest client")
}

/// Monolithic upload: POST to open an upload, PUT the whole body with `digest=`.
/// Pushes one blob to `repo` of the registry at `url`; its digest.
pub async fn push_blob(url: &str, repo: &str, body: Vec<u8>) -> String {
    let digest = sha256_digest(&body);
    put_blob(url, None, repo, &digest, body).await;
    digest
}

async fn put_blob(url: &str, auth: Option<&str>, repo: &str, digest: &str, body: Vec<u8>) {
    let client = client(auth);
    let start = client
        .post(format!("{url}/v2/{repo}/blobs/uploads/"))
        .send()
        .await;
    let start = start.expect("POST blob upload");
    assert_eq!(
        start.status().as_u16(),
        202,
        "POST upload for {repo}: {start:?}"
    );
    let location = start.headers()["location"]
        .to_str()
        .expect("ascii location")
        .to_string();
    let location = if location.starts_with('/') {
        format!("{url}{location}")
    } else {
        location
    };
    let sep = if location.contains('?') { '&' } else { '?' };
    let put = client
        .put(format!("{location}{sep}digest={digest}"))
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .expect("PUT blob");
    assert_eq!(
        put.status().as_u16(),
        201,
        "PUT blob {digest} to {repo}: {put:?}"
    );
}

/// PUTs a manifest and returns its digest, checked against the registry's answer.
pub async fn put_manifest(
    url: &str,
    auth: Option<&str>,
    repo: &str,
    reference: &str,
    media: &str,
    body: Vec<u8>,
) -> String {
    let digest = sha256_digest(&body);
    let put = client(auth)
        .put(format!("{url}/v2/{repo}/manifests/{reference}"))
        .header("content-type", media)
        .body(body)
        .send()
        .await
        .expect("PUT manifest");
    let status = put.status().as_u16();
    let echoed = put.headers().get("docker-content-digest").cloned();
    assert_eq!(
        status,
        201,
        "PUT manifest {repo}:{reference}: {}",
        put.text().await.unwrap_or_default()
    );
    assert_eq!(
        echoed.as_ref().and_then(|v| v.to_str().ok()),
        Some(digest.as_str())
    );
    digest
}

/// Deterministic, incompressible bytes: xorshift64* seeded through splitmix64.
struct Noise {
    state: u64,
    word: u64,
    left: u8,
}

impl Noise {
    fn new(seed: u64) -> Noise {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Noise {
            state: (z ^ (z >> 31)) | 1,
            word: 0,
            left: 0,
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

impl std::io::Read for Noise {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        for byte in buf.iter_mut() {
            if self.left == 0 {
                self.word = self.next_u64();
                self.left = 8;
            }
            *byte = self.word as u8;
            self.word >>= 8;
            self.left -= 1;
        }
        Ok(buf.len())
    }
}
