//! `[[upstream]]`: the registries regcache mirrors, their credentials and timeouts.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::{Overrides, Problems};

/// The Docker Hub registry host; single-component names get `library/` there.
pub const DOCKER_HUB_HOST: &str = "registry-1.docker.io";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    name: Option<String>,
    url: String,
    #[serde(default)]
    default: bool,
    library_prefix: Option<bool>,
    tag_ttl_secs: Option<u64>,
    username: Option<String>,
    password: Option<String>,
    connect_timeout_secs: Option<u64>,
    idle_timeout_secs: Option<u64>,
    #[serde(default)]
    offline: bool,
    expire_after_days: Option<u64>,
    max_tags_per_repo: Option<u64>,
}

#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    pub name: String,
    pub url: Url,
    pub default: bool,
    pub library_prefix: bool,
    pub tag_ttl: Duration,
    pub credentials: Option<Credentials>,
    pub connect_timeout: Duration,
    /// How long an upstream may stay silent (before headers or mid-body).
    pub idle_timeout: Duration,
    /// Never contact this upstream: serve what is cached, whatever its age.
    pub offline: bool,
    /// Objects fetched from this upstream and not pulled for this long are removed.
    pub expire_after: Option<Duration>,
    /// Tags kept per repository (the most recently confirmed); older tag records go.
    pub max_tags_per_repo: Option<usize>,
}

#[derive(Clone)]
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

impl RawUpstream {
    fn from_url(url: &str) -> RawUpstream {
        RawUpstream {
            name: None,
            url: url.to_string(),
            default: true,
            library_prefix: None,
            tag_ttl_secs: None,
            username: None,
            password: None,
            connect_timeout_secs: None,
            idle_timeout_secs: None,
            offline: false,
            expire_after_days: None,
            max_tags_per_repo: None,
        }
    }
}

/// Validates every `[[upstream]]`, after applying `--upstream`.
pub(super) fn validate_all(
    mut raw: Vec<RawUpstream>,
    ov: &Overrides,
    problems: &mut Problems,
) -> Vec<UpstreamConfig> {
    if let Some(url) = &ov.upstream {
        // `--upstream` replaces the default upstream's URL (or the only one), else adds one.
        let only = (raw.len() == 1).then_some(0);
        match raw.iter().position(|u| u.default).or(only) {
            Some(i) => {
                raw[i].url = url.clone();
                raw[i].name = None;
                raw[i].library_prefix = None;
            }
            None => raw.push(RawUpstream::from_url(url)),
        }
    }
    if raw.is_empty() {
        problems.add(
            "upstream",
            "",
            "no upstream is configured; add an [[upstream]] table with a url",
        );
    }
    let single = raw.len() == 1;
    let upstreams: Vec<UpstreamConfig> = raw
        .into_iter()
        .enumerate()
        .filter_map(|(i, u)| u.validate(i, single, problems))
        .collect();
    if upstreams.iter().filter(|u| u.default).count() > 1 {
        problems.add(
            "upstream.default",
            "true",
            "only one upstream may be the default",
        );
    }
    let mut names: Vec<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
    names.sort_unstable();
    for pair in names.windows(2) {
        if pair[0] == pair[1] {
            problems.add("upstream.name", pair[0], "upstream names must be unique");
        }
    }
    upstreams
}

impl RawUpstream {
    fn validate(self, i: usize, single: bool, problems: &mut Problems) -> Option<UpstreamConfig> {
        let key = |k: &str| format!("upstream[{i}].{k}");
        let url = match Url::parse(&self.url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host_str().is_some() => url,
            _ => {
                problems.add(
                    key("url"),
                    &self.url,
                    "must be an http:// or https:// URL with a host, e.g. https://registry-1.docker.io",
                );
                return None;
            }
        };
        let host = url.host_str().unwrap_or_default().to_string();
        let name = self.name.unwrap_or_else(|| match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        });
        let name_ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-_:".contains(c));
        if !name_ok {
            problems.add(
                key("name"),
                &name,
                "use lowercase letters, digits, '.', '-', '_' and ':' only",
            );
        }
        let credentials = match (self.username, self.password) {
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
        let mut secs = |v: Option<u64>, default: u64, k: &str| {
            let v = v.unwrap_or(default);
            if v == 0 {
                problems.add(key(k), "0", "must be at least 1 second");
            }
            Duration::from_secs(v.max(1))
        };
        let connect_timeout = secs(self.connect_timeout_secs, 10, "connect_timeout_secs");
        let idle_timeout = secs(self.idle_timeout_secs, 60, "idle_timeout_secs");
        let mut at_least_one = |v: Option<u64>, k: &str| {
            if v == Some(0) {
                problems.add(
                    key(k),
                    "0",
                    "must be at least 1; leave the key out for no limit",
                );
            }
            v.filter(|&v| v > 0)
        };
        let expire_after = at_least_one(self.expire_after_days, "expire_after_days")
            .map(|days| Duration::from_secs(days.saturating_mul(86_400)));
        let max_tags_per_repo = at_least_one(self.max_tags_per_repo, "max_tags_per_repo")
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        Some(UpstreamConfig {
            library_prefix: self
                .library_prefix
                .unwrap_or(host == DOCKER_HUB_HOST || host == "docker.io"),
            default: self.default || single,
            name,
            url,
            tag_ttl: Duration::from_secs(self.tag_ttl_secs.unwrap_or(300)),
            credentials,
            connect_timeout,
            idle_timeout,
            offline: self.offline,
            expire_after,
            max_tags_per_repo,
        })
    }
}
