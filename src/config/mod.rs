//! Configuration: the TOML file (or the embedded default) as written by the operator,
//! and its validation into a [`Config`] the rest of the daemon can trust.
//!
//! Every problem found is reported at once, each naming the key, the value and the fix,
//! so `regcache check-config` can print them all. Nothing here does network I/O.

mod admin;
mod auth;
mod bucket;
mod cache;
mod cluster;
mod credentials;
mod hosts;
mod locate;
mod server;
mod upstream;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use admin::{token_required, AdminConfig};
pub use auth::{admin_exposure_warning, AuthConfig};
pub use bucket::BucketConfig;
pub use cache::{CacheConfig, DiskBudget};
pub use cluster::{ClusterConfig, Members};
pub use server::{ServerConfig, TlsFiles};
pub use upstream::{
    is_docker_hub, Credentials, EcrConfig, UpstreamConfig, DOCKER_HUB_HOST, DOCKER_HUB_NAMES,
};

/// The config used when no file is given: Docker Hub on 127.0.0.1:5000.
pub const DEFAULT_CONFIG: &str = include_str!("../../config/regcache.toml");

/// The file as written. Unknown keys are errors so typos do not pass silently.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    admin_listen: Option<String>,
    log_format: Option<String>,
    #[serde(default)]
    admin: admin::RawAdmin,
    #[serde(default)]
    server: server::RawServer,
    #[serde(default)]
    cache: cache::RawCache,
    bucket: Option<bucket::RawBucket>,
    cluster: Option<cluster::RawCluster>,
    #[serde(default, rename = "upstream")]
    upstreams: Vec<upstream::RawUpstream>,
}

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: Option<SocketAddr>,
    /// How the daemon writes its log lines.
    pub log_format: LogFormat,
    /// The admin API's token and the status page's egress price.
    pub admin: AdminConfig,
    pub server: ServerConfig,
    pub cache: CacheConfig,
    /// The shared tier, when replicas share a bucket.
    pub bucket: Option<BucketConfig>,
    /// The replicas blob misses are routed among.
    pub cluster: Option<ClusterConfig>,
    pub upstreams: Vec<UpstreamConfig>,
}

/// `log_format`: lines for a person, or one JSON object per line for a log collector.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Overrides from the command line; they win over the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub admin_token_file: Option<PathBuf>,
    pub upstream: Option<String>,
    pub cache_dir: Option<PathBuf>,
}

/// One problem in a config, printed as `key = value: what to do`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub value: String,
    pub fix: String,
    /// Line and column in the file, when the key (or its table) is written there.
    pub at: Option<(usize, usize)>,
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
        .map(|p| match p.at {
            Some((line, col)) => format!("  - line {line}:{col}: {p}"),
            None => format!("  - {p}"),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

impl Config {
    /// True when every upstream is of one trust domain: cached content is then served for
    /// any of them without asking who delivered it.
    pub fn one_trust_domain(&self) -> bool {
        let mut domains = self.upstreams.iter().map(|u| &u.trust_domain);
        let first = domains.next();
        domains.all(|d| Some(d) == first)
    }

    /// Reads and validates a config file, or the embedded default when `path` is `None`.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        match path {
            None => Config::parse(DEFAULT_CONFIG, "the embedded default config", overrides),
            Some(path) => {
                let name = path.display().to_string();
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
                    source_name: name.clone(),
                    problems: vec![Problem {
                        at: None,
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
        // Each line TOML or serde refuses is reported and commented out, and the rest read
        // again, so one run names every problem (serde stops at the first).
        let mut problems = Vec::new();
        let mut current = text.to_string();
        let mut skipped = Vec::new();
        let raw = loop {
            let e = match toml::from_str::<RawConfig>(&current) {
                Ok(raw) => break Some(raw),
                Err(e) => e,
            };
            let line = e.span().map(|s| locate::line_col(&current, s.start).0);
            problems.push(toml_problem(&e, &current));
            match line {
                Some(line)
                    if problems.len() < MAX_PARSE_PROBLEMS && comment_out(&mut current, line) =>
                {
                    skipped.push(line);
                }
                _ => break None,
            }
        };
        let Some(raw) = raw else {
            return Err(fail(problems));
        };
        let mut found = Problems::default();
        let config = validate(raw, overrides, &mut found);
        for mut problem in found.0 {
            problem.at = locate::find(text, &problem.key);
            // A key on a line already reported is missing now only because of that.
            if !problem.at.is_some_and(|(line, _)| skipped.contains(&line)) {
                problems.push(problem);
            }
        }
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

/// Problems reported before the file is given up on as unreadable.
const MAX_PARSE_PROBLEMS: usize = 50;

/// A problem TOML or serde found in `text`: where, which key (with its table), and for an
/// unknown key the nearest known one.
fn toml_problem(e: &toml::de::Error, text: &str) -> Problem {
    let Some(span) = e.span() else {
        return Problem {
            key: "(file)".into(),
            value: String::new(),
            fix: format!("{}; fix the TOML syntax", e.message()),
            at: None,
        };
    };
    let (line, col) = locate::line_col(text, span.start);
    let written = text.lines().nth(line - 1).unwrap_or_default();
    let name = written.split('=').next().unwrap_or_default().trim();
    let table = locate::table_at(text, line);
    let key = match (table.is_empty(), name.starts_with('[')) {
        (_, true) => name.to_string(),
        (true, false) => name.to_string(),
        (false, false) => format!("{table}.{name}"),
    };
    let message = e.message().trim_end_matches('.').to_string();
    let fix = match nearest(&message, name) {
        Some(near) => format!("{message}; did you mean `{near}`?"),
        None if message.starts_with("unknown field") => {
            format!("{message}; remove the key or fix its name")
        }
        None => format!("{message}; fix the value or the TOML syntax"),
    };
    Problem {
        key,
        value: String::new(),
        fix,
        at: Some((line, col)),
    }
}

/// The known key closest to `written`, from serde's "expected one of `a`, `b`" list.
fn nearest(message: &str, written: &str) -> Option<String> {
    let (_, expected) = message.split_once("expected one of")?;
    let known = expected.split('`').skip(1).step_by(2);
    known
        .map(|k| (strsim::damerau_levenshtein(k, written), k))
        .filter(|(distance, k)| *distance <= 2.max(k.len() / 4))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, k)| k.to_string())
}

/// Comments out line `line` (1-based) so the rest can be read; false when there is
/// nothing left to comment out.
fn comment_out(text: &mut String, line: usize) -> bool {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    match lines.get_mut(line - 1) {
        Some(l) if !l.trim_start().starts_with('#') => {
            l.insert_str(0, "# ");
            *text = lines.join("\n");
            true
        }
        _ => false,
    }
}

fn validate(raw: RawConfig, ov: &Overrides, problems: &mut Problems) -> Config {
    let listen_text = ov.listen.clone().or(raw.listen);
    let listen = parse_addr(
        "listen",
        listen_text.as_deref().unwrap_or("127.0.0.1:5000"),
        problems,
    );
    let admin_text = ov.admin_listen.clone().or(raw.admin_listen);
    let admin_listen = admin_text.and_then(|t| parse_addr("admin_listen", &t, problems));
    let cache = raw.cache.validate(ov, problems);
    let mut upstreams = upstream::validate_all(raw.upstreams, ov, problems);
    // The global switch wins: an air-gapped host must not reach any upstream.
    for u in &mut upstreams {
        u.offline |= cache.offline;
    }
    let log_format = match raw.log_format.as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            problems.add(
                "log_format",
                format!("{other:?}"),
                "use \"text\" (the default) or \"json\" (one object per line, for log collectors)",
            );
            LogFormat::Text
        }
    };
    Config {
        listen: listen.unwrap_or_else(|| ([127, 0, 0, 1], 5000).into()),
        admin_listen,
        log_format,
        admin: raw
            .admin
            .validate(admin_listen, ov.admin_token_file.clone(), problems),
        server: raw.server.validate(problems),
        cache,
        bucket: raw.bucket.and_then(|b| b.validate(problems)),
        cluster: raw.cluster.and_then(|c| c.validate(problems)),
        upstreams,
    }
}

fn parse_addr(key: &str, text: &str, problems: &mut Problems) -> Option<SocketAddr> {
    let addr = text.parse().ok();
    if addr.is_none() {
        problems.add(
            key,
            text,
            "must be an IP address and port, e.g. 127.0.0.1:5000 or [::1]:5000",
        );
    }
    addr
}

/// Collects every problem found, so all are reported at once.
#[derive(Default)]
pub(crate) struct Problems(Vec<Problem>);

impl Problems {
    pub fn add(
        &mut self,
        key: impl Into<String>,
        value: impl fmt::Display,
        fix: impl Into<String>,
    ) {
        self.0.push(Problem {
            at: None,
            key: key.into(),
            value: value.to_string(),
            fix: fix.into(),
        });
    }
}

/// Every problem a config text has, as printed: for the config modules' unit tests.
#[cfg(test)]
pub(crate) fn problems(text: &str) -> Vec<String> {
    match Config::parse(text, "test", &Overrides::default()) {
        Ok(_) => Vec::new(),
        Err(e) => e.problems.iter().map(ToString::to_string).collect(),
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
            ..Overrides::default()
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
    fn one_run_names_every_mistake_with_its_line_and_the_nearest_key() {
        let text = "listen = \"127.0.0.1:5000\"\nadmn_listen = \"127.0.0.1:5001\"\n\
                    [cache]\ndisk_byts = \"20GiB\"\nmax_blob_bytes = 12 12\n\
                    [[upstream]]\nurl = \"https://a.example\"\ntag_ttl_secs = \"five\"\n\
                    [[upstream]]\nurl = \"ftp://b.example\"\n";
        let err = parse(text).unwrap_err();
        let shown = err.to_string();
        for expected in [
            "line 2:1: admn_listen: unknown field `admn_listen`",
            "did you mean `admin_listen`?",
            "line 4:1: cache.disk_byts:",
            "did you mean `disk_bytes`?",
            "line 5:",
            "line 8:16: upstream[0].tag_ttl_secs: invalid type",
            "line 10:1: upstream[1].url = ftp://b.example",
        ] {
            assert!(
                shown.contains(expected),
                "{expected:?} missing from:\n{shown}"
            );
        }
        assert_eq!(err.problems.len(), 5, "{shown}");
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
    fn watermarks_and_offline_are_validated() {
        let err = parse(
            "[cache]\ndisk_bytes = \"nope\"\nhigh_watermark = 0.5\nlow_watermark = 0.7\n[[upstream]]\nurl = \"http://127.0.0.1:1\"\n",
        )
        .unwrap_err();
        let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["cache.disk_bytes", "cache.low_watermark"]);
        let c = parse(
            "[cache]\ndisk_bytes = \"10GiB\"\noffline = true\n[[upstream]]\nurl = \"http://127.0.0.1:1\"\n",
        )
        .unwrap();
        assert_eq!(c.cache.disk_budget, DiskBudget::Bytes(10 << 30));
        assert!(
            c.upstreams[0].offline,
            "the global switch applies to every upstream"
        );
        let c = parse("[[upstream]]\nurl = \"http://127.0.0.1:1\"\noffline = true\n").unwrap();
        assert!(!c.cache.offline && c.upstreams[0].offline);
        assert_eq!(c.cache.disk_budget, DiskBudget::Percent(80.0));
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
