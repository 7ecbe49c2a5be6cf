//! `[[upstream]]`: the registries regcache mirrors, their credentials and timeouts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;
use url::Url;

pub use super::credentials::{Credentials, EcrConfig};
use super::credentials::{RawEcr, RawSources, Sources};
use super::hosts;
use super::{Overrides, Problems};
use crate::upstream::policy::{Pattern, Policy};

/// The Docker Hub registry host; single-component names get `library/` there.
pub const DOCKER_HUB_HOST: &str = "registry-1.docker.io";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    name: Option<String>,
    url: String,
    #[serde(default)]
    default: bool,
    #[serde(default)]
    aliases: Vec<String>,
    trust_domain: Option<String>,
    library_prefix: Option<bool>,
    tag_ttl_secs: Option<u64>,
    stale_if_error_secs: Option<u64>,
    username: Option<String>,
    password: Option<String>,
    docker_config: Option<bool>,
    docker_config_file: Option<PathBuf>,
    connect_timeout_secs: Option<u64>,
    idle_timeout_secs: Option<u64>,
    retries: Option<u32>,
    max_retry_after_secs: Option<u64>,
    max_concurrent_requests: Option<usize>,
    ca_file: Option<PathBuf>,
    #[serde(default)]
    offline: bool,
    expire_after_days: Option<u64>,
    max_tags_per_repo: Option<u64>,
    ecr: Option<RawEcr>,
    credential_helper: Option<String>,
    credential_helper_ttl_secs: Option<u64>,
    #[serde(default)]
    token_realm_hosts: Vec<String>,
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
    #[serde(default)]
    parents: Vec<String>,
    pulls_per_hour: Option<u32>,
    pull_reserve: Option<u32>,
    max_bytes_per_second: Option<ByteSize>,
    #[serde(default)]
    serve_stale_on_not_found: bool,
    listing_ttl_secs: Option<u64>,
}

#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    pub name: String,
    pub url: Url,
    pub default: bool,
    /// Extra names requests may use for this upstream (`ns=`, path prefix, Host).
    pub aliases: Vec<String>,
    /// Upstreams of one trust domain share cached content; another domain's content is
    /// served for this upstream only once this upstream delivered the same bytes. Defaults
    /// to the upstream's name: every upstream its own domain.
    pub trust_domain: String,
    pub library_prefix: bool,
    pub tag_ttl: Duration,
    /// How long after its TTL a tag may still be served when upstream fails.
    pub stale_if_error: Duration,
    pub credentials: Option<Credentials>,
    /// Without `credentials`, look in the Docker CLI's config.json for this upstream.
    pub docker_config: bool,
    /// That file, when not the default (`$DOCKER_CONFIG/config.json`, `~/.docker/config.json`).
    pub docker_config_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    /// How long an upstream may stay silent (before headers or mid-body).
    pub idle_timeout: Duration,
    /// Retries of a request that failed before anything reached a client.
    pub retries: u32,
    /// The longest `Retry-After` regcache waits for before retrying.
    pub max_retry_after: Duration,
    /// Requests (bodies included) in flight to this upstream at once.
    pub max_concurrent_requests: usize,
    /// Extra trusted roots for this upstream's TLS, as read from `ca_file` (PEM).
    pub ca_pem: Option<Vec<u8>>,
    /// Never contact this upstream: serve what is cached, whatever its age.
    pub offline: bool,
    /// Objects fetched from this upstream and not pulled for this long are removed.
    pub expire_after: Option<Duration>,
    /// Tags kept per repository (the most recently confirmed); older tag records go.
    pub max_tags_per_repo: Option<usize>,
    /// Set for an Amazon ECR upstream, whose password comes from the ECR API.
    pub ecr: Option<EcrConfig>,
    /// A Docker credential helper (`docker-credential-<name>`) that gives the credentials.
    pub credential_helper: Option<String>,
    /// How long the helper's answer is used before it is asked again.
    pub credential_helper_ttl: Duration,
    /// Hosts besides the upstream's own whose token realms get its credentials
    /// (normalized; `auth.docker.io` included for Docker Hub).
    pub token_realm_hosts: Vec<String>,
    /// Which repositories (as this upstream names them) the mirror serves.
    pub policy: Policy,
    /// Other regcaches (a regional mirror) asked in order before the registry itself.
    pub parents: Vec<Url>,
    /// Manifest GETs (Docker Hub's pulls) allowed per hour; see `upstream::budget`.
    pub pulls_per_hour: Option<u32>,
    /// Pulls background work (prefetch) leaves for clients; default a fifth of the budget.
    pub pull_reserve: Option<u32>,
    /// The most bytes per second all blob fills from this upstream take together.
    pub max_bytes_per_second: Option<u64>,
    /// Keep serving a cached tag (stale) for `stale_if_error` after upstream deleted it.
    pub serve_stale_on_not_found: bool,
    /// How long a cached `tags/list` or `referrers` answer is served without asking.
    pub listing_ttl: Duration,
}

impl RawUpstream {
    fn from_url(url: &str) -> RawUpstream {
        RawUpstream {
            name: None,
            url: url.to_string(),
            default: true,
            aliases: Vec::new(),
            trust_domain: None,
            library_prefix: None,
            tag_ttl_secs: None,
            stale_if_error_secs: None,
            username: None,
            password: None,
            docker_config: None,
            docker_config_file: None,
            connect_timeout_secs: None,
            idle_timeout_secs: None,
            retries: None,
            max_retry_after_secs: None,
            max_concurrent_requests: None,
            ca_file: None,
            offline: false,
            expire_after_days: None,
            max_tags_per_repo: None,
            ecr: None,
            credential_helper: None,
            credential_helper_ttl_secs: None,
            token_realm_hosts: Vec::new(),
            allow: Vec::new(),
            deny: Vec::new(),
            parents: Vec::new(),
            pulls_per_hour: None,
            pull_reserve: None,
            max_bytes_per_second: None,
            serve_stale_on_not_found: false,
            listing_ttl_secs: None,
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
    // Names and aliases route requests, so one may not mean two upstreams.
    let mut seen: HashMap<&str, &str> = HashMap::new();
    for u in &upstreams {
        let own = std::iter::once(("upstream.name", u.name.as_str()));
        let aliases = u.aliases.iter().map(|a| ("upstream.aliases", a.as_str()));
        for (key, name) in own.chain(aliases) {
            match seen.insert(name, &u.name) {
                Some(other) if key == "upstream.name" && other == u.name => {
                    problems.add(key, name, "upstream names must be unique")
                }
                Some(other) if other != u.name => problems.add(
                    key,
                    name,
                    format!("is already a name or alias of upstream {other:?}; every name and alias must be unique"),
                ),
                _ => {}
            }
        }
    }
    upstreams
}

impl UpstreamConfig {
    /// The names given in the config: `name`, then `aliases`.
    pub fn explicit_names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.name.as_str()).chain(self.aliases.iter().map(String::as_str))
    }

    /// Names this upstream answers to without being told: its URL's `host[:port]`, and for
    /// Docker Hub the names clients use for it (`docker.io`, `index.docker.io`).
    pub fn implied_names(&self) -> Vec<String> {
        let host = self.url.host_str().unwrap_or_default();
        let mut names = vec![match self.url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        }];
        if is_docker_hub(host) {
            names.extend(DOCKER_HUB_NAMES.iter().map(|n| n.to_string()));
        }
        names
    }
}

/// The most `retries` allowed.
const MAX_RETRIES: u32 = 10;

/// The lowest `max_bytes_per_second`.
const MIN_BYTES_PER_SECOND: u64 = 64 << 10;

/// Reads a PEM bundle of CA certificates; problems name the key and the file.
fn read_ca_file(path: &Path, key: &str, problems: &mut Problems) -> Option<Vec<u8>> {
    match std::fs::read(path) {
        Ok(pem) if pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") => Some(pem),
        Ok(_) => {
            problems.add(
                key,
                path.display(),
                "holds no PEM certificate (-----BEGIN CERTIFICATE-----); give the CA bundle in PEM",
            );
            None
        }
        Err(e) => {
            problems.add(
                key,
                path.display(),
                format!("cannot be read ({e}); check the path and permissions"),
            );
            None
        }
    }
}

/// Parses `allow` or `deny`. With `library_prefix`, every name has two components or more,
/// so a one-component pattern could never match: that is a mistake worth naming.
fn patterns(
    texts: &[String],
    key: &str,
    library_prefix: bool,
    problems: &mut Problems,
) -> Vec<Pattern> {
    let mut parsed = Vec::new();
    for text in texts {
        match Pattern::parse(text) {
            Ok(p) if library_prefix && p.single_component() => problems.add(
                key,
                text,
                format!(
                    "can never match: this upstream names official images library/<name> \
                     (library_prefix); write \"library/{text}\""
                ),
            ),
            Ok(p) => parsed.push(p),
            Err(e) => problems.add(key, text, e.to_string()),
        }
    }
    parsed
}

/// The names clients use for Docker Hub.
pub const DOCKER_HUB_NAMES: [&str; 3] = ["docker.io", "index.docker.io", DOCKER_HUB_HOST];

pub fn is_docker_hub(host: &str) -> bool {
    DOCKER_HUB_NAMES.contains(&host)
}

/// Names route requests (`ns=`, path prefix, Host), so they use host-like characters only.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-_:".contains(c))
}

impl RawUpstream {
    fn validate(self, i: usize, single: bool, problems: &mut Problems) -> Option<UpstreamConfig> {
        let key = |k: &str| format!("upstream[{i}].{k}");
        let url = hosts::upstream_url(&self.url, &key("url"), problems)?;
        let host = url.host_str().unwrap_or_default().to_string();
        let token_realm_hosts = hosts::realm_hosts(
            self.token_realm_hosts,
            &host,
            &key("token_realm_hosts"),
            problems,
        );
        let name = self.name.unwrap_or_else(|| match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        });
        if !valid_name(&name) {
            problems.add(
                key("name"),
                &name,
                "use lowercase letters, digits, '.', '-', '_' and ':' only",
            );
        }
        // A directory name under the store: it starts with a letter or digit, so never `..`.
        let domain_ok =
            |d: &str| valid_name(d) && d.starts_with(|c: char| c.is_ascii_alphanumeric());
        let trust_domain = self.trust_domain.unwrap_or_else(|| name.clone());
        if trust_domain != name && !domain_ok(&trust_domain) {
            problems.add(
                key("trust_domain"),
                &trust_domain,
                "start with a letter or digit and use lowercase letters, digits, '.', '-', '_' \
                 and ':' only, e.g. \"corp\"; upstreams with the same trust_domain share \
                 cached content",
            );
        }
        let mut aliases: Vec<String> = Vec::new();
        for alias in self.aliases {
            if !valid_name(&alias) {
                problems.add(
                    key("aliases"),
                    &alias,
                    "an alias is a registry host or name as clients write it, e.g. \"docker.io\"; \
                     use lowercase letters, digits, '.', '-', '_' and ':' only",
                );
            } else if alias != name && !aliases.contains(&alias) {
                aliases.push(alias);
            }
        }
        let sources = Sources::validate(
            RawSources {
                username: self.username,
                password: self.password,
                ecr: self.ecr,
                credential_helper: self.credential_helper,
            },
            &host,
            &key,
            problems,
        );
        if self.docker_config == Some(false) && self.docker_config_file.is_some() {
            problems.add(
                key("docker_config_file"),
                self.docker_config_file
                    .as_ref()
                    .map_or(String::new(), |p| p.display().to_string()),
                "is set but docker_config = false turns reading it off; remove one of the two",
            );
        }
        let docker_config_file = self.docker_config_file.filter(|p| {
            let absolute = p.is_absolute();
            if !absolute {
                problems.add(
                    key("docker_config_file"),
                    p.display(),
                    "must be an absolute path, e.g. /root/.docker/config.json",
                );
            }
            absolute
        });
        let mut secs = |v: Option<u64>, default: u64, k: &str| {
            let v = v.unwrap_or(default);
            if v == 0 {
                problems.add(key(k), "0", "must be at least 1 second");
            }
            Duration::from_secs(v.max(1))
        };
        let connect_timeout = secs(self.connect_timeout_secs, 10, "connect_timeout_secs");
        let listing_ttl = secs(self.listing_ttl_secs, 60, "listing_ttl_secs");
        let idle_timeout = secs(self.idle_timeout_secs, 60, "idle_timeout_secs");
        let credential_helper_ttl = secs(
            self.credential_helper_ttl_secs,
            300,
            "credential_helper_ttl_secs",
        );
        let retries = self.retries.unwrap_or(3);
        if retries > MAX_RETRIES {
            problems.add(
                key("retries"),
                retries,
                format!("at most {MAX_RETRIES}; each retry makes a client wait longer"),
            );
        }
        let max_concurrent_requests = self.max_concurrent_requests.unwrap_or(64);
        if max_concurrent_requests == 0 {
            problems.add(
                key("max_concurrent_requests"),
                0,
                "must be at least 1 (0 would never send a request); the default is 64",
            );
        }
        let ca_pem = self
            .ca_file
            .and_then(|path| read_ca_file(&path, &key("ca_file"), problems));
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
        let pulls_per_hour =
            at_least_one(self.pulls_per_hour.map(u64::from), "pulls_per_hour").map(|n| n as u32);
        let library_prefix = self.library_prefix.unwrap_or(is_docker_hub(&host));
        let policy = Policy {
            allow: patterns(&self.allow, &key("allow"), library_prefix, problems),
            deny: patterns(&self.deny, &key("deny"), library_prefix, problems),
        };
        let parents = self
            .parents
            .iter()
            .filter_map(|p| super::cluster::base_url(&key("parents"), p, problems))
            .collect();
        if let (Some(reserve), Some(budget)) = (self.pull_reserve, pulls_per_hour) {
            if reserve > budget {
                problems.add(
                    key("pull_reserve"),
                    reserve,
                    format!(
                        "is more than pulls_per_hour ({budget}); the reserve is part of the budget"
                    ),
                );
            }
        }
        let max_bytes_per_second = self.max_bytes_per_second.map(|b| b.as_u64());
        if max_bytes_per_second.is_some_and(|b| b < MIN_BYTES_PER_SECOND) {
            problems.add(
                key("max_bytes_per_second"),
                self.max_bytes_per_second.unwrap_or_default(),
                "must be at least 64 KiB (a slower fill times out); give a rate such as \"100 MiB\", or leave it out for no cap",
            );
        }
        Some(UpstreamConfig {
            parents,
            pulls_per_hour,
            pull_reserve: self.pull_reserve,
            max_bytes_per_second,
            serve_stale_on_not_found: self.serve_stale_on_not_found,
            listing_ttl,
            library_prefix,
            policy,
            default: self.default || single,
            aliases,
            trust_domain,
            name,
            url,
            tag_ttl: Duration::from_secs(self.tag_ttl_secs.unwrap_or(300)),
            stale_if_error: Duration::from_secs(self.stale_if_error_secs.unwrap_or(86_400)),
            credentials: sources.credentials,
            docker_config: self.docker_config.unwrap_or(true),
            docker_config_file,
            connect_timeout,
            idle_timeout,
            retries: retries.min(MAX_RETRIES),
            max_retry_after: Duration::from_secs(self.max_retry_after_secs.unwrap_or(10)),
            max_concurrent_requests: max_concurrent_requests.max(1),
            ca_pem,
            offline: self.offline,
            expire_after,
            max_tags_per_repo,
            ecr: sources.ecr,
            credential_helper: sources.credential_helper,
            credential_helper_ttl,
            token_realm_hosts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{problems, Config, Overrides};

    #[test]
    fn trust_domains_default_to_each_upstream_and_can_be_shared() {
        let two = |a: &str, b: &str| {
            format!("[[upstream]]\nurl = \"https://a.example\"\ndefault = true\n{a}\n[[upstream]]\nurl = \"https://b.example\"\n{b}\n")
        };
        let parse = |text: &str| Config::parse(text, "test", &Overrides::default()).unwrap();
        let apart = parse(&two("", ""));
        assert_eq!(apart.upstreams[0].trust_domain, "a.example");
        assert!(!apart.one_trust_domain());
        let shared = parse(&two("trust_domain = \"corp\"", "trust_domain = \"corp\""));
        assert!(shared.one_trust_domain());
        let found = problems(&two("trust_domain = \"../x\"", "trust_domain = \".\""));
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0].starts_with("upstream[0].trust_domain"),
            "{found:?}"
        );
    }

    #[test]
    fn aliases_must_be_unique_and_host_like() {
        let found = problems(
            r#"
            [[upstream]]
            name = "hub"
            url = "https://registry-1.docker.io"
            aliases = ["docker.io", "Docker.IO"]
            [[upstream]]
            name = "mirror"
            url = "https://mirror.example"
            aliases = ["docker.io", "hub"]
            "#,
        );
        assert_eq!(found.len(), 3, "{found:#?}");
        assert!(found[0].starts_with("upstream[0].aliases = Docker.IO: "));
        assert!(found[1].starts_with("upstream.aliases = docker.io: is already"));
        assert!(found[1].contains("\"hub\""));
        assert!(found[2].starts_with("upstream.aliases = hub: is already"));
    }

    #[test]
    fn traffic_keys_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("ca.txt");
        std::fs::write(&not_pem, "hello").unwrap();
        let found = problems(&format!(
            r#"
            [[upstream]]
            url = "https://a.example"
            retries = 11
            max_concurrent_requests = 0
            ca_file = "{}"
            [[upstream]]
            url = "https://b.example"
            ca_file = "/nonexistent/ca.pem"
            "#,
            not_pem.display()
        ));
        assert_eq!(found.len(), 4, "{found:#?}");
        assert!(found[0].starts_with("upstream[0].retries = 11: at most 10"));
        assert!(found[1].starts_with("upstream[0].max_concurrent_requests = 0: "));
        assert!(found[2].contains("holds no PEM certificate"));
        assert!(found[3].starts_with("upstream[1].ca_file = /nonexistent/ca.pem: cannot be read"));
    }

    #[test]
    fn budget_and_bandwidth_keys_are_checked() {
        let found = problems(
            r#"
            [[upstream]]
            url = "https://registry-1.docker.io"
            pulls_per_hour = 10
            pull_reserve = 11
            max_bytes_per_second = "1 KiB"
            [[upstream]]
            url = "https://ghcr.io"
            pulls_per_hour = 0
            listing_ttl_secs = 0
            "#,
        );
        assert_eq!(found.len(), 4, "{found:#?}");
        assert!(found[0].starts_with("upstream[0].pull_reserve = 11: is more than"));
        assert!(found[1].starts_with("upstream[0].max_bytes_per_second = 1.0 KiB: "));
        assert!(found[2].starts_with("upstream[1].listing_ttl_secs = 0: "));
        assert!(found[3].starts_with("upstream[1].pulls_per_hour = 0: "));
        let c = Config::parse(
            "[[upstream]]\nurl = \"https://ghcr.io\"\npulls_per_hour = 100\nmax_bytes_per_second = \"100 MiB\"\n",
            "test",
            &Overrides::default(),
        )
        .unwrap();
        let up = &c.upstreams[0];
        assert_eq!(up.pulls_per_hour, Some(100));
        assert_eq!(up.max_bytes_per_second, Some(100 << 20));
        assert_eq!(up.listing_ttl.as_secs(), 60);
        assert!(!up.serve_stale_on_not_found);
    }

    #[test]
    fn ecr_region_comes_from_the_host() {
        assert_eq!(
            super::super::credentials::ecr_region("123456789012.dkr.ecr.eu-west-1.amazonaws.com")
                .as_deref(),
            Some("eu-west-1")
        );
        assert_eq!(
            super::super::credentials::ecr_region("1.dkr.ecr.cn-north-1.amazonaws.com.cn")
                .as_deref(),
            Some("cn-north-1")
        );
        assert_eq!(super::super::credentials::ecr_region("ghcr.io"), None);
        let c = Config::parse(
            "[[upstream]]\nurl = \"https://1.dkr.ecr.us-east-2.amazonaws.com\"\necr = {}\n",
            "test",
            &Overrides::default(),
        )
        .unwrap();
        let ecr = c.upstreams[0].ecr.as_ref().unwrap();
        assert_eq!(ecr.region, "us-east-2");
        assert_eq!(ecr.endpoint_url, None);
    }

    #[test]
    fn credential_sources_are_checked() {
        let found = problems(
            r#"
            [[upstream]]
            url = "https://registry.internal"
            ecr = { endpoint_url = "ftp://x" }
            [[upstream]]
            url = "https://1.dkr.ecr.eu-west-1.amazonaws.com"
            ecr = { endpoint_url = "ftp://x" }
            [[upstream]]
            name = "ecr-2"
            url = "https://1.dkr.ecr.eu-west-1.amazonaws.com"
            ecr = {}
            username = "AWS"
            password = "pw"
            [[upstream]]
            url = "https://ghcr.io"
            credential_helper = "../evil"
            [[upstream]]
            url = "https://quay.io"
            credential_helper = "pass"
            username = "me"
            password = "pw"
            credential_helper_ttl_secs = 0
            "#,
        );
        assert_eq!(found.len(), 6, "{found:#?}");
        assert!(found[0].starts_with("upstream[0].ecr.region: cannot be read"));
        assert!(found[1].starts_with("upstream[1].ecr.endpoint_url = ftp://x: "));
        assert!(found[2].starts_with("upstream[2].username: an ECR upstream"));
        assert!(found[3].starts_with("upstream[3].credential_helper = ../evil: "));
        assert!(found[4].starts_with("upstream[4].credential_helper = pass: give one source"));
        assert!(found[5].starts_with("upstream[4].credential_helper_ttl_secs = 0: "));
    }

    #[test]
    fn docker_hub_answers_to_its_usual_names() {
        let c = Config::parse(
            "[[upstream]]\nurl = \"https://registry-1.docker.io\"\n",
            "test",
            &Overrides::default(),
        )
        .unwrap();
        let up = &c.upstreams[0];
        assert!(up.library_prefix);
        let implied = up.implied_names();
        for name in ["registry-1.docker.io", "docker.io", "index.docker.io"] {
            assert!(implied.iter().any(|n| n == name), "{implied:?}");
        }
        let other = Config::parse(
            "[[upstream]]\nurl = \"http://127.0.0.1:5001\"\n",
            "test",
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(other.upstreams[0].implied_names(), ["127.0.0.1:5001"]);
    }

    #[test]
    fn allow_and_deny_patterns_are_checked() {
        let found = problems(
            r#"
            [[upstream]]
            url = "https://registry-1.docker.io"
            allow = ["library/*", "nginx", "team/**"]
            deny = ["Team/x", "a**"]
            [[upstream]]
            url = "https://ghcr.io"
            allow = ["app", ""]
            "#,
        );
        assert_eq!(found.len(), 4, "{found:#?}");
        assert!(found[0].starts_with("upstream[0].allow = nginx: can never match"));
        assert!(found[0].contains("\"library/nginx\""));
        assert!(found[1].starts_with("upstream[0].deny = Team/x: contains 'T'"));
        assert!(found[2].starts_with("upstream[0].deny = a**: uses '**'"));
        assert!(found[3].starts_with("upstream[1].allow"), "{found:#?}");
        assert!(found[3].contains("is empty"), "{found:#?}");
        let c = Config::parse(
            "[[upstream]]\nurl = \"https://ghcr.io\"\nallow = [\"app\", \"team/**\"]\n",
            "test",
            &Overrides::default(),
        )
        .unwrap();
        let policy = &c.upstreams[0].policy;
        assert_eq!(policy.allow.len(), 2);
        assert!(policy.deny.is_empty());
        assert!(policy.check("team/x/y").is_ok());
        assert!(policy.check("other").is_err());
    }
}
