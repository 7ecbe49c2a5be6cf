//! Configuration: the TOML file (or the embedded default) as written by the operator,
//! and its validation into a [`Config`] the rest of the daemon can trust.
//!
//! Every problem found is reported at once, each naming the key, the value and the fix,
//! so `regcache check-config` can print them all. Nothing here does network I/O.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;
use url::Url;

/// The config used when no file is given: Docker Hub on 127.0.0.1:5000.
pub const DEFAULT_CONFIG: &str = include_str!("../config/regcache.toml");

/// The Docker Hub registry host; single-component names get `library/` there.
pub const DOCKER_HUB_HOST: &str = "registry-1.docker.io";

/// The file as written. Unknown keys are errors so typos do not pass silently.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    admin_listen: Option<String>,
    #[serde(default)]
    cache: RawCache,
    #[serde(default, rename = "upstream")]
    upstreams: Vec<RawUpstream>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    dir: Option<PathBuf>,
    memory_bytes: Option<ByteSize>,
    memory_max_object_bytes: Option<ByteSize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
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
}

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: Option<SocketAddr>,
    pub cache: CacheConfig,
    pub upstreams: Vec<UpstreamConfig>,
}

#[derive(Clone, Debug)]
pub struct CacheConfig {
    pub dir: PathBuf,
    /// Byte budget of the memory tier; 0 disables it.
    pub memory_bytes: u64,
    /// Objects larger than this never enter the memory tier.
    pub memory_max_object_bytes: u64,
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

/// Overrides from the command line; they win over the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub upstream: Option<String>,
    pub cache_dir: Option<PathBuf>,
}

/// One problem in a config, printed as `key = value: what to do`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub value: String,
    pub fix: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.value.is_empty() {
            write!(f, "{}: {}", self.key, self.fix)
        } else {
            write!(f, "{} = {}: {}", self.key, self.value, self.fix)
        }
    }
}

/// Every problem found in a config.
#[derive(Debug, thiserror::Error)]
#[error("{} problem(s) in {source_name}:\n{}", .problems.len(), render(.problems))]
pub struct ConfigError {
    pub source_name: String,
    pub problems: Vec<Problem>,
}

fn render(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Config {
    /// Reads and validates a config file, or the embedded default when `path` is `None`.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        match path {
            None => Config::parse(DEFAULT_CONFIG, "the embedded default config", overrides),
            Some(path) => {
                let name = path.display().to_string();
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
                    source_name: name.clone(),
                    problems: vec![Problem {
                        key: "(file)".into(),
                        value: name.clone(),
                        fix: format!("cannot read the file ({e}); check the path and permissions"),
                    }],
                })?;
                Config::parse(&text, &name, overrides)
            }
        }
    }

    /// Parses TOML text; `source_name` names it in messages.
    pub fn parse(
        text: &str,
        source_name: &str,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let fail = |problems| ConfigError {
            source_name: source_name.to_string(),
            problems,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| fail(vec![toml_problem(&e)]))?;
        let mut problems = Vec::new();
        let config = validate(raw, overrides, &mut problems);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(fail(problems))
        }
    }

    pub fn default_upstream(&self) -> &UpstreamConfig {
        // Validation guarantees exactly one default.
        self.upstreams
            .iter()
            .find(|u| u.default)
            .unwrap_or(&self.upstreams[0])
    }
}

fn toml_problem(e: &toml::de::Error) -> Problem {
    let key = e
        .span()
        .map(|s| format!("(at byte {})", s.start))
        .unwrap_or_else(|| "(file)".into());
    Problem {
        key,
        value: String::new(),
        fix: format!("{}; fix the TOML syntax or the key name", e.message()),
    }
}

fn validate(raw: RawConfig, ov: &Overrides, problems: &mut Vec<Problem>) -> Config {
    let mut problem = |key: &str, value: &str, fix: &str| {
        problems.push(Problem {
            key: key.into(),
            value: value.into(),
            fix: fix.into(),
        })
    };

    let listen_text = ov
        .listen
        .clone()
        .or(raw.listen)
        .unwrap_or_else(|| "127.0.0.1:5000".into());
    let listen = parse_addr("listen", &listen_text, &mut problem);
    let admin_text = ov.admin_listen.clone().or(raw.admin_listen);
    let admin_listen = admin_text.and_then(|t| parse_addr("admin_listen", &t, &mut problem));

    let dir = ov
        .cache_dir
        .clone()
        .or(raw.cache.dir)
        .or_else(|| dirs::cache_dir().map(|d| d.join("regcache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache/regcache"));
    if dir.as_os_str().is_empty() {
        problem("cache.dir", "", "must not be empty; give a directory path");
    }
    let memory_bytes = raw.cache.memory_bytes.map_or(256 << 20, |b| b.as_u64());
    let memory_max_object_bytes = raw
        .cache
        .memory_max_object_bytes
        .map_or(4 << 20, |b| b.as_u64());
    if memory_max_object_bytes > memory_bytes && memory_bytes > 0 {
        problem(
            "cache.memory_max_object_bytes",
            &ByteSize(memory_max_object_bytes).to_string(),
            "is larger than cache.memory_bytes; lower it or raise the budget",
        );
    }

    let mut raw_upstreams = raw.upstreams;
    if let Some(url) = &ov.upstream {
        // `--upstream` replaces the default upstream's URL (or defines one).
        match raw_upstreams
            .iter_mut()
            .position(|u| u.default)
            .or(if raw_upstreams.len() == 1 {
                Some(0)
            } else {
                None
            }) {
            Some(i) => {
                raw_upstreams[i].url = url.clone();
                raw_upstreams[i].name = None;
                raw_upstreams[i].library_prefix = None;
            }
            None => raw_upstreams.push(RawUpstream::from_url(url)),
        }
    }
    if raw_upstreams.is_empty() {
        problem(
            "upstream",
            "",
            "no upstream is configured; add an [[upstream]] table with a url",
        );
    }
    let single = raw_upstreams.len() == 1;
    let mut upstreams = Vec::new();
    for (i, u) in raw_upstreams.into_iter().enumerate() {
        if let Some(up) = validate_upstream(i, u, single, &mut problem) {
            upstreams.push(up);
        }
    }
    let defaults = upstreams.iter().filter(|u| u.default).count();
    if defaults > 1 {
        problem(
            "upstream.default",
            "true",
            "only one upstream may be the default",
        );
    }
    let mut names: Vec<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
    names.sort_unstable();
    for pair in names.windows(2) {
        if pair[0] == pair[1] {
            problem("upstream.name", pair[0], "upstream names must be unique");
        }
    }

    Config {
        listen: listen.unwrap_or_else(|| ([127, 0, 0, 1], 5000).into()),
        admin_listen,
        cache: CacheConfig {
            dir,
            memory_bytes,
            memory_max_object_bytes,
        },
        upstreams,
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
        }
    }
}

fn validate_upstream(
    i: usize,
    u: RawUpstream,
    single: bool,
    problem: &mut impl FnMut(&str, &str, &str),
) -> Option<UpstreamConfig> {
    let key = |k: &str| format!("upstream[{i}].{k}");
    let url = match Url::parse(&u.url) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host_str().is_some() => url,
        _ => {
            problem(
                &key("url"),
                &u.url,
                "must be an http:// or https:// URL with a host, e.g. https://registry-1.docker.io",
            );
            return None;
        }
    };
    let host = url.host_str().unwrap_or_default().to_string();
    let name = u.name.unwrap_or_else(|| match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.clone(),
    });
    if name.is_empty()
        || !name.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_' | ':')
        })
    {
        problem(
            &key("name"),
            &name,
            "use lowercase letters, digits, '.', '-', '_' and ':' only",
        );
    }
    let tag_ttl_secs = u.tag_ttl_secs.unwrap_or(300);
    let credentials = match (u.username, u.password) {
        (Some(username), Some(password)) => Some(Credentials { username, password }),
        (None, None) => None,
        (Some(_), None) | (None, Some(_)) => {
            problem(
                &key("username"),
                "",
                "username and password must be given together",
            );
            None
        }
    };
    let secs =
        |v: Option<u64>, default: u64, k: &str, problem: &mut dyn FnMut(&str, &str, &str)| {
            let v = v.unwrap_or(default);
            if v == 0 {
                problem(&key(k), "0", "must be at least 1 second");
            }
            Duration::from_secs(v.max(1))
        };
    Some(UpstreamConfig {
        library_prefix: u
            .library_prefix
            .unwrap_or(host == DOCKER_HUB_HOST || host == "docker.io"),
        default: u.default || single,
        name,
        url,
        tag_ttl: Duration::from_secs(tag_ttl_secs),
        credentials,
        connect_timeout: secs(u.connect_timeout_secs, 10, "connect_timeout_secs", problem),
        idle_timeout: secs(u.idle_timeout_secs, 60, "idle_timeout_secs", problem),
    })
}

fn parse_addr(
    key: &str,
    text: &str,
    problem: &mut impl FnMut(&str, &str, &str),
) -> Option<SocketAddr> {
    match text.parse() {
        Ok(addr) => Some(addr),
        Err(_) => {
            problem(
                key,
                text,
                "must be an IP address and port, e.g. 127.0.0.1:5000 or [::1]:5000",
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "test", &Overrides::default())
    }

    #[test]
    fn embedded_default_is_docker_hub_on_loopback() {
        let c = Config::load(None, &Overrides::default()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:5000");
        let up = c.default_upstream();
        assert_eq!(up.url.host_str(), Some(DOCKER_HUB_HOST));
        assert!(up.library_prefix);
        assert!(c.cache.dir.ends_with("regcache"));
    }

    #[test]
    fn overrides_win_over_the_file() {
        let ov = Overrides {
            listen: Some("127.0.0.1:0".into()),
            upstream: Some("http://127.0.0.1:9999".into()),
            cache_dir: Some("/tmp/x".into()),
            admin_listen: Some("127.0.0.1:0".into()),
        };
        let c = Config::load(None, &ov).unwrap();
        assert_eq!(c.listen.port(), 0);
        let up = c.default_upstream();
        assert_eq!(up.url.as_str(), "http://127.0.0.1:9999/");
        assert_eq!(up.name, "127.0.0.1:9999");
        assert!(!up.library_prefix);
        assert_eq!(c.cache.dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn every_problem_is_reported_with_key_and_fix() {
        let err = parse(
            r#"
            listen = "nowhere"
            [cache]
            memory_bytes = "1MiB"
            memory_max_object_bytes = "2MiB"
            [[upstream]]
            url = "ftp://x"
            [[upstream]]
            url = "https://a.example"
            username = "u"
            "#,
        )
        .unwrap_err();
        let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "listen",
                "cache.memory_max_object_bytes",
                "upstream[0].url",
                "upstream[1].username"
            ]
        );
        assert!(err.to_string().contains("4 problem(s) in test"));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = parse("listne = \"127.0.0.1:1\"").unwrap_err();
        assert!(err.problems[0].fix.contains("unknown field"), "{err}");
    }

    #[test]
    fn human_sizes_parse() {
        let c = parse(
            "[cache]\nmemory_bytes = \"1 GiB\"\n[[upstream]]\nurl = \"http://127.0.0.1:1\"\n",
        )
        .unwrap();
        assert_eq!(c.cache.memory_bytes, 1 << 30);
    }

    #[test]
    fn credentials_are_not_printed() {
        let c = Credentials {
            username: "u".into(),
            password: "secret".into(),
        };
        assert!(!format!("{c:?}").contains("secret"));
    }
}
