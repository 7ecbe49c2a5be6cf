//! Whole images in the in-process fake: a config blob, layers and an OCI manifest under a
//! tag, with every byte kept so a test can compare what a proxy serves.

use super::fake::FakeRegistry;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

pub struct FakeImage {
    pub repo: String,
    pub tag: String,
    pub manifest_digest: String,
    pub manifest: Vec<u8>,
    /// The config first, then the layers: (digest, bytes).
    pub blobs: Vec<(String, Vec<u8>)>,
}

/// Deterministic bytes that differ by `seed`.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    (0..len as u64)
        .map(|i| (i.wrapping_mul(31) ^ seed.wrapping_mul(0x9e37_79b9)) as u8)
        .collect()
}

/// Adds an image of layers with the given sizes (contents from `seed`) as `repo:tag`.
pub fn add_image(
    fake: &FakeRegistry,
    repo: &str,
    tag: &str,
    layer_sizes: &[usize],
    seed: u64,
) -> FakeImage {
    let config = format!(r#"{{"architecture":"amd64","os":"linux","seed":{seed}}}"#).into_bytes();
    let mut blobs = vec![(fake.add_blob(config.clone()), config)];
    for (n, size) in layer_sizes.iter().enumerate() {
        let bytes = pattern(*size, seed * 1000 + n as u64);
        blobs.push((fake.add_blob(bytes.clone()), bytes));
    }
    let descriptor = |media: &str, (digest, bytes): &(String, Vec<u8>)| {
        format!(
            r#"{{"mediaType":"{media}","digest":"{digest}","size":{}}}"#,
            bytes.len()
        )
    };
    let layers: Vec<String> = blobs[1..]
        .iter()
        .map(|b| descriptor("application/vnd.oci.image.layer.v1.tar", b))
        .collect();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{},"layers":[{}]}}"#,
        descriptor("application/vnd.oci.image.config.v1+json", &blobs[0]),
        layers.join(",")
    )
    .into_bytes();
    let manifest_digest = fake.add_manifest(repo, tag, OCI_MANIFEST, manifest.clone());
    FakeImage {
        repo: repo.into(),
        tag: tag.into(),
        manifest_digest,
        manifest,
        blobs,
    }
}

/// Pulls `image` through `base` (the manifest by tag, then every blob) and checks every
/// status and byte.
pub async fn pull_checked(client: &reqwest::Client, base: &str, image: &FakeImage) {
    let url = format!("{base}/v2/{}/manifests/{}", image.repo, image.tag);
    let response = client
        .get(url)
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    assert_eq!(status, 200, "{}:{}", image.repo, image.tag);
    assert!(response.bytes().await.unwrap()[..] == image.manifest[..]);
    for (digest, bytes) in &image.blobs {
        let url = format!("{base}/v2/{}/blobs/{digest}", image.repo);
        let response = client.get(url).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "{digest}");
        assert!(response.bytes().await.unwrap()[..] == bytes[..], "{digest}");
    }
}
