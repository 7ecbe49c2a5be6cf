//! Where an upstream's credentials come from, as configured: `username`/`password`,
//! `credential_helper`, or `ecr = { region, endpoint_url }`. At most one per upstream.

use std::fmt;

use serde::Deserialize;
use url::Url;

use super::Problems;

/// `ecr = { region = "..", endpoint_url = ".." }`: the password comes from ECR.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEcr {
    region: Option<String>,
    endpoint_url: Option<String>,
}

/// An Amazon ECR upstream: `AWS:<token>` from `GetAuthorizationToken` in `region`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EcrConfig {
    pub region: String,
    /// The ECR API endpoint, when not AWS's own (tests, VPC endpoints).
    pub endpoint_url: Option<Url>,
}

#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    // Never print the secret, even in debug logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// The credential keys of one `[[upstream]]` as written.
pub(super) struct RawSources {
    pub username: Option<String>,
    pub password: Option<String>,
    pub ecr: Option<RawEcr>,
    pub credential_helper: Option<String>,
}

/// The validated credential source (all `None`: anonymous, or the Docker config file).
pub(super) struct Sources {
    pub credentials: Option<Credentials>,
    pub ecr: Option<EcrConfig>,
    pub credential_helper: Option<String>,
}

impl Sources {
    pub fn validate(
        raw: RawSources,
        host: &str,
        key: &dyn Fn(&str) -> String,
        problems: &mut Problems,
    ) -> Sources {
        let credentials = match (raw.username, raw.password) {
            (Some(username), Some(password)) => Some(Credentials { username, password }),
            (None, None) => None,
            _ => {
                problems.add(
                    key("username"),
                    "",
                    "username and password must be given together",
                );
                None
            }
        };
        let ecr = raw
            .ecr
            .and_then(|raw| validate_ecr(raw, host, &key("ecr"), problems));
        if ecr.is_some() && credentials.is_some() {
            problems.add(
                key("username"),
                "",
                "an ECR upstream gets its password from AWS; remove username and password, \
                 or remove the ecr table to use them as they are",
            );
        }
        let credential_helper = raw.credential_helper.filter(|name| {
            let valid = valid_helper_name(name);
            if !valid {
                problems.add(
                    key("credential_helper"),
                    name,
                    "name the helper as in docker-credential-<name>, e.g. \"ecr-login\" \
                     (letters, digits, '-', '_' and '.' only)",
                );
            }
            valid
        });
        if let Some(helper) = &credential_helper {
            if credentials.is_some() || ecr.is_some() {
                problems.add(
                    key("credential_helper"),
                    helper,
                    "give one source of credentials: a helper, username/password, or ecr",
                );
            }
        }
        Sources {
            credentials,
            ecr,
            credential_helper,
        }
    }
}

/// Checks `ecr = {..}`; the region defaults to the one in `<account>.dkr.ecr.<region>.amazonaws.com`.
fn validate_ecr(raw: RawEcr, host: &str, key: &str, problems: &mut Problems) -> Option<EcrConfig> {
    if !cfg!(feature = "ecr") {
        problems.add(
            key,
            host,
            "this regcache was built without the `ecr` feature; rebuild with \
             `cargo build --features ecr` or remove the ecr table",
        );
        return None;
    }
    let region = match raw.region.or_else(|| ecr_region(host)) {
        Some(region) if !region.is_empty() => region,
        _ => {
            problems.add(
                format!("{key}.region"),
                "",
                format!(
                    "cannot be read from the URL host {host:?} (not <account>.dkr.ecr.<region>.amazonaws.com); \
                     set it, e.g. ecr = {{ region = \"eu-west-1\" }}"
                ),
            );
            return None;
        }
    };
    let endpoint_url = match raw.endpoint_url {
        None => None,
        Some(text) => match Url::parse(&text) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => Some(url),
            _ => {
                problems.add(
                    format!("{key}.endpoint_url"),
                    &text,
                    "must be an http:// or https:// URL, e.g. https://api.ecr.eu-west-1.amazonaws.com",
                );
                return None;
            }
        },
    };
    Some(EcrConfig {
        region,
        endpoint_url,
    })
}

/// `eu-west-1` from `123456789012.dkr.ecr.eu-west-1.amazonaws.com` (or `.amazonaws.com.cn`).
pub(super) fn ecr_region(host: &str) -> Option<String> {
    let (_, rest) = host.split_once(".dkr.ecr.")?;
    let (region, _) = rest.split_once(".amazonaws.com")?;
    (!region.is_empty() && !region.contains('.')).then(|| region.to_string())
}

/// A helper's name becomes part of a program name: keep it to a plain file name.
fn valid_helper_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && !name.starts_with('.')
}
