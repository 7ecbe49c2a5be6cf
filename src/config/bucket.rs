//! `[bucket]`: the shared tier, an S3-compatible bucket that several replicas read and
//! fill. Credentials come the AWS way (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`,
//! `AWS_SESSION_TOKEN`, web identity), never from this file.

use bytesize::ByteSize;
use serde::Deserialize;

use super::Problems;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBucket {
    name: Option<String>,
    prefix: Option<String>,
    endpoint: Option<String>,
    region: Option<String>,
    path_style: Option<bool>,
    redirect_min_bytes: Option<ByteSize>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketConfig {
    pub name: String,
    /// Prepended to every key; empty, or ending in `/`.
    pub prefix: String,
    /// An S3-compatible service's URL (`http://127.0.0.1:8333`); `None` for AWS itself.
    pub endpoint: Option<String>,
    pub region: String,
    /// `https://endpoint/bucket/key` rather than `https://bucket.endpoint/key`.
    pub path_style: bool,
    /// Blobs at least this large that only the bucket holds are answered with a redirect
    /// to a presigned bucket URL (clients must reach the bucket); `None`: never.
    pub redirect_min_bytes: Option<u64>,
}

impl RawBucket {
    pub(super) fn validate(self, problems: &mut Problems) -> Option<BucketConfig> {
        let name = self.name.unwrap_or_default();
        let valid_name = (3..=63).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !valid_name {
            problems.add(
                "bucket.name",
                format!("{name:?}"),
                "give the bucket's name: 3 to 63 lowercase letters, digits, '-' or '.'",
            );
        }
        let mut prefix = self.prefix.unwrap_or_default();
        if prefix.starts_with('/') || prefix.contains("//") {
            problems.add(
                "bucket.prefix",
                format!("{prefix:?}"),
                "must not start with '/' or hold '//'; e.g. \"regcache/\"",
            );
        }
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        if let Some(endpoint) = &self.endpoint {
            let ok = url::Url::parse(endpoint)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
            if !ok {
                problems.add(
                    "bucket.endpoint",
                    format!("{endpoint:?}"),
                    "give the service's http(s) URL, e.g. \"http://127.0.0.1:8333\"; leave it out for AWS",
                );
            }
        }
        let redirect_min_bytes = self.redirect_min_bytes.map(|b| b.as_u64());
        if redirect_min_bytes == Some(0) {
            problems.add(
                "bucket.redirect_min_bytes",
                "0",
                "give a size such as \"64 MiB\" (blobs that large are redirected), or leave it out",
            );
        }
        Some(BucketConfig {
            redirect_min_bytes,
            name,
            prefix,
            path_style: self.path_style.unwrap_or(self.endpoint.is_some()),
            endpoint: self.endpoint,
            region: self.region.unwrap_or_else(|| "us-east-1".into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, Overrides};

    fn parse(bucket: &str) -> Result<Config, String> {
        let text = format!("[bucket]\n{bucket}\n[[upstream]]\nurl = \"http://127.0.0.1:1\"\n");
        Config::parse(&text, "test", &Overrides::default()).map_err(|e| e.to_string())
    }

    #[test]
    fn a_bucket_is_named_and_its_endpoint_is_a_url() {
        let config =
            parse("name = \"cache\"\nendpoint = \"http://127.0.0.1:8333\"\nprefix = \"a/b\"")
                .unwrap();
        let bucket = config.bucket.unwrap();
        assert_eq!(bucket.prefix, "a/b/");
        assert!(bucket.path_style, "path style by default with an endpoint");
        assert_eq!(bucket.region, "us-east-1");
        let aws = parse("name = \"cache\"").unwrap().bucket.unwrap();
        assert!(!aws.path_style);

        let e = parse("name = \"No_Such\"\nendpoint = \"ftp://x\"\nprefix = \"/a\"").unwrap_err();
        for key in ["bucket.name", "bucket.endpoint", "bucket.prefix"] {
            assert!(e.contains(key), "{e}");
        }
        let e = parse("bucket = \"x\"").unwrap_err();
        assert!(e.contains("bucket"), "{e}");
    }
}
