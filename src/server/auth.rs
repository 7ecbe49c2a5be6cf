//! Client access control on the registry API (`[server.auth]`): the IP allow list, then
//! Basic credentials checked against htpasswd bcrypt entries or Bearer tokens from a file.
//!
//! bcrypt is slow on purpose, so a success is remembered for [`VERIFIED_TTL`] and a
//! failure for [`FAILED_TTL`], under a hash of the header (never the password itself):
//! a login retried with the same wrong password costs no bcrypt. What does need bcrypt is
//! bounded by [`throttle`]: a few verifications at once, a bounded queue, a few places
//! and a failure budget per client address. A login whose client left while it waited
//! is dropped with its request and never verified. Tokens are kept as SHA-256 hashes and
//! compared in constant time. This module decides; turning a [`Denial`] into a response
//! is `respond`'s business.

mod throttle;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine as _;
use http::{HeaderValue, StatusCode};
use ipnet::IpNet;
use prometheus::IntCounter;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

use crate::config::AuthConfig;
use crate::error::Error;
use crate::oci::ErrorCode;

/// How long a successful Basic verification is trusted without running bcrypt again.
pub const VERIFIED_TTL: Duration = Duration::from_secs(60);
/// Verified credentials remembered at once.
const VERIFIED_MAX: u64 = 10_000;
/// How long a failed Basic login is answered 401 without running bcrypt again. Longer
/// than a success: a wrong password stays wrong until the files change, and a reload
/// forgets it.
pub const FAILED_TTL: Duration = Duration::from_secs(300);
/// Failed credentials remembered at once; a flood of distinct ones meets the throttle.
const FAILED_MAX: u64 = 10_000;
/// Tokens shorter than this are refused in the tokens file: they can be guessed.
const MIN_TOKEN_LEN: usize = 16;
/// The challenge sent with every 401.
pub const CHALLENGE: &str = "Basic realm=\"regcache\"";

type Hash = [u8; 32];

/// Why a request was refused: the `reason` label of `regcache_auth_failures_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denial {
    /// The client's address is not in `allow_ips`.
    Address,
    /// No `Authorization` header.
    Missing,
    /// An `Authorization` header that is neither valid Basic nor Bearer.
    Malformed,
    /// Unknown user, wrong password or unknown token.
    Rejected,
    /// Too many logins wait for a verification: come back after this long.
    Busy(Duration),
    /// The client's address failed to log in too often: come back after this long.
    Throttled(Duration),
}

impl Denial {
    pub fn reason(self) -> &'static str {
        match self {
            Denial::Address => "address",
            Denial::Missing => "missing",
            Denial::Malformed => "malformed",
            Denial::Rejected => "rejected",
            Denial::Busy(_) => "busy",
            Denial::Throttled(_) => "throttled",
        }
    }

    /// 403 `DENIED` for an address, 429 `TOOMANYREQUESTS` (with `Retry-After`) for a busy
    /// or throttled login, 401 `UNAUTHORIZED` (with [`CHALLENGE`]) otherwise.
    pub fn into_error(self) -> Error {
        let unauthorized = |message: &str| {
            Error::client(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message)
        };
        match self {
            Denial::Address => Error::client(
                StatusCode::FORBIDDEN,
                ErrorCode::Denied,
                "this mirror does not serve your address",
            ),
            Denial::Missing => unauthorized("authentication required"),
            Denial::Malformed => {
                unauthorized("malformed Authorization header; send Basic or Bearer credentials")
            }
            Denial::Rejected => unauthorized("invalid credentials"),
            Denial::Busy(wait) => Error::throttled(
                "too many logins are waiting to be verified; retry shortly",
                wait,
            ),
            Denial::Throttled(wait) => Error::throttled(
                "too many failed logins from your address; retry later with the right password",
                wait,
            ),
        }
    }
}

/// A problem in the credential files, naming the key, the file and the line.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct AuthFileError(pub Vec<String>);

/// The credentials read from the files.
#[derive(Default)]
pub struct Secrets {
    /// user -> bcrypt hash
    users: HashMap<String, String>,
    /// SHA-256 of every token.
    tokens: Vec<Hash>,
}

impl Secrets {
    /// Reads the files `config` names (blocking). Every problem is reported at once.
    pub fn read(config: &AuthConfig) -> Result<Secrets, AuthFileError> {
        let mut problems = Vec::new();
        let mut read = |key: &str, path: &Option<std::path::PathBuf>| {
            let path = path.as_deref()?;
            match std::fs::read_to_string(path) {
                Ok(text) => Some((path.to_path_buf(), text)),
                Err(e) => {
                    problems.push(format!(
                        "server.auth.{key} = {}: cannot read it ({e})",
                        path.display()
                    ));
                    None
                }
            }
        };
        let htpasswd = read("htpasswd_file", &config.htpasswd_file);
        let tokens = read("tokens_file", &config.tokens_file);
        let mut secrets = Secrets::default();
        if let Some((path, text)) = htpasswd {
            let lines = parse_htpasswd(&text);
            secrets.users = collect("htpasswd_file", &path, lines, &mut problems);
        }
        if let Some((path, text)) = tokens {
            let lines = parse_tokens(&text);
            let tokens: Vec<(String, Hash)> = collect("tokens_file", &path, lines, &mut problems);
            secrets.tokens = tokens.into_iter().map(|(_, hash)| hash).collect();
        }
        if problems.is_empty()
            && config.requires_credentials()
            && secrets.users.is_empty()
            && secrets.tokens.is_empty()
        {
            problems.push(
                "server.auth: the credential files hold no user and no token, so every \
                 request would be refused; add entries or remove the keys"
                    .into(),
            );
        }
        if problems.is_empty() {
            Ok(secrets)
        } else {
            Err(AuthFileError(problems))
        }
    }

    fn token_matches(&self, token: &[u8]) -> bool {
        let presented: Hash = Sha256::digest(token).into();
        // Look at every token so the time taken does not tell which one came close.
        self.tokens.iter().fold(false, |found, known| {
            found | bool::from(known.ct_eq(&presented))
        })
    }
}

fn collect<T: FromIterator<(String, V)>, V>(
    key: &str,
    path: &Path,
    lines: Lines<V>,
    problems: &mut Vec<String>,
) -> T {
    lines
        .into_iter()
        .filter_map(|(n, line)| match line {
            Ok(entry) => Some(entry),
            Err(problem) => {
                problems.push(format!(
                    "server.auth.{key} = {}, line {n}: {problem}",
                    path.display()
                ));
                None
            }
        })
        .collect()
}

/// Parsed lines of a credential file: (line number from 1, entry or problem).
type Lines<V> = Vec<(usize, Result<(String, V), String>)>;

/// The lines that hold something: blank lines and `#` comments are skipped.
fn content_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, line)| (i + 1, line.trim()))
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
}

/// `user:$2y$...` lines (htpasswd -B).
pub fn parse_htpasswd(text: &str) -> Lines<String> {
    let mut seen = std::collections::HashSet::new();
    content_lines(text)
        .map(|(n, line)| {
            let entry = match line.split_once(':') {
                None => Err("expected user:hash".to_string()),
                Some(("", _)) => Err("the user name is empty".to_string()),
                Some((user, hash)) if !is_bcrypt(hash) => Err(format!(
                    "user {user}: only bcrypt entries are supported (create them with htpasswd -B)"
                )),
                Some((user, _)) if !seen.insert(user.to_string()) => {
                    Err(format!("user {user} appears twice"))
                }
                Some((user, hash)) => Ok((user.to_string(), hash.to_string())),
            };
            (n, entry)
        })
        .collect()
}

fn is_bcrypt(hash: &str) -> bool {
    let prefix_ok = ["$2a$", "$2b$", "$2x$", "$2y$"]
        .iter()
        .any(|p| hash.starts_with(p));
    prefix_ok && hash.len() == 60
}

/// One token per line; the line number stands in for a name in messages.
pub fn parse_tokens(text: &str) -> Lines<Hash> {
    content_lines(text)
        .map(|(n, token)| {
            let entry = if token.len() < MIN_TOKEN_LEN {
                Err(format!(
                    "tokens must be at least {MIN_TOKEN_LEN} characters; make one with `openssl rand -hex 32`"
                ))
            } else if !token.bytes().all(|b| b.is_ascii_graphic()) {
                Err("a token must be printable ASCII without spaces".to_string())
            } else {
                Ok((n.to_string(), Sha256::digest(token.as_bytes()).into()))
            };
            (n, entry)
        })
        .collect()
}

/// Credentials as a client sent them.
#[derive(Debug, PartialEq, Eq)]
pub enum Presented {
    Basic { user: String, password: String },
    Bearer(String),
}

/// Parses an `Authorization` value; `None` when it is neither Basic nor Bearer.
pub fn parse_authorization(value: &[u8]) -> Option<Presented> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let (scheme, rest) = text.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (user, password) = decoded.split_once(':')?;
        Some(Presented::Basic {
            user: user.to_string(),
            password: password.to_string(),
        })
    } else if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
        Some(Presented::Bearer(rest.to_string()))
    } else {
        None
    }
}

/// The access check of one listener.
pub struct Access {
    allow: Vec<IpNet>,
    config: AuthConfig,
    secrets: RwLock<Arc<Secrets>>,
    verified: moka::sync::Cache<Hash, ()>,
    failed: moka::sync::Cache<Hash, ()>,
    throttle: throttle::Throttle,
    bcrypt_runs: IntCounter,
}

impl Access {
    /// Reads the credential files (blocking; at startup). `bcrypt_runs` counts the
    /// verifications that ran.
    pub fn load(config: &AuthConfig, bcrypt_runs: IntCounter) -> Result<Access, AuthFileError> {
        let secrets = Secrets::read(config)?;
        Ok(Access::with_secrets(config, secrets, bcrypt_runs))
    }

    fn with_secrets(config: &AuthConfig, secrets: Secrets, bcrypt_runs: IntCounter) -> Access {
        Access {
            allow: config.allow_ips.clone(),
            config: config.clone(),
            secrets: RwLock::new(Arc::new(secrets)),
            verified: moka::sync::Cache::builder()
                .max_capacity(VERIFIED_MAX)
                .time_to_live(VERIFIED_TTL)
                .build(),
            failed: moka::sync::Cache::builder()
                .max_capacity(FAILED_MAX)
                .time_to_live(FAILED_TTL)
                .build(),
            throttle: throttle::Throttle::new(
                config.max_pending_logins,
                config.max_login_failures_per_min,
            ),
            bcrypt_runs,
        }
    }

    /// True when this listener checks anything at all.
    pub fn is_enabled(&self) -> bool {
        !self.allow.is_empty() || self.config.requires_credentials()
    }

    /// Reads the files again (on SIGHUP); on failure the current credentials stay.
    /// Remembered verifications are forgotten, so a removed user is out at once (and a
    /// changed password works at once).
    pub async fn reload(&self) -> Result<(), AuthFileError> {
        let config = self.config.clone();
        let secrets = tokio::task::spawn_blocking(move || Secrets::read(&config))
            .await
            .map_err(|e| AuthFileError(vec![format!("reading the credential files: {e}")]))??;
        *self.secrets.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(secrets);
        self.verified.invalidate_all();
        self.failed.invalidate_all();
        Ok(())
    }

    /// How many bcrypt verifications ran (the rest were answered from memory).
    pub fn bcrypt_runs(&self) -> u64 {
        self.bcrypt_runs.get()
    }

    /// Lets a request in, or says why not.
    pub async fn check(
        &self,
        peer: Option<IpAddr>,
        authorization: Option<&HeaderValue>,
    ) -> Result<(), Denial> {
        // A dual-stack listener shows IPv4 clients as ::ffff:a.b.c.d.
        let peer = peer.map(|ip| ip.to_canonical());
        if !self.allow.is_empty()
            && !peer.is_some_and(|ip| self.allow.iter().any(|net| net.contains(&ip)))
        {
            return Err(Denial::Address);
        }
        if !self.config.requires_credentials() {
            return Ok(());
        }
        let header = authorization.ok_or(Denial::Missing)?;
        let presented = parse_authorization(header.as_bytes()).ok_or(Denial::Malformed)?;
        let secrets = self
            .secrets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let (user, password) = match presented {
            Presented::Bearer(token) if secrets.token_matches(token.as_bytes()) => return Ok(()),
            Presented::Bearer(_) => return Err(Denial::Rejected),
            // Clients that only speak Basic may send a token as the password.
            Presented::Basic { password, .. } if secrets.token_matches(password.as_bytes()) => {
                return Ok(())
            }
            Presented::Basic { user, password } => (user, password),
        };
        let key: Hash = Sha256::digest(header.as_bytes()).into();
        if self.verified.contains_key(&key) {
            return Ok(());
        }
        if self.failed.contains_key(&key) {
            return Err(Denial::Rejected);
        }
        let (hash, known) = match secrets.users.get(&user) {
            Some(hash) => (hash.clone(), true),
            // An unknown user costs as much as a wrong password, so timing does not
            // tell which user names exist.
            None => match secrets.users.values().next() {
                Some(hash) => (hash.clone(), false),
                None => return Err(Denial::Rejected),
            },
        };
        let ticket = self
            .throttle
            .admit(peer.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)))
            .map_err(|refusal| match refusal {
                throttle::Refusal::Busy(wait) => Denial::Busy(wait),
                throttle::Refusal::Throttled(wait) => Denial::Throttled(wait),
            })?;
        // Waiting here ends when the client leaves: its connection drops this request.
        let slot = ticket.slot().await;
        self.bcrypt_runs.inc();
        let matched = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            bcrypt::verify(password, &hash)
        })
        .await
        .is_ok_and(|r| r.unwrap_or(false));
        if matched && known {
            self.verified.insert(key, ());
            Ok(())
        } else {
            self.failed.insert(key, ());
            ticket.failed();
            Err(Denial::Rejected)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COST: u32 = 4;

    fn basic(user: &str, password: &str) -> HeaderValue {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        HeaderValue::from_str(&format!("Basic {encoded}")).unwrap()
    }

    fn access(config: AuthConfig, htpasswd: &str, tokens: &str) -> Access {
        let mut secrets = Secrets::default();
        for (_, entry) in parse_htpasswd(htpasswd) {
            let (user, hash) = entry.unwrap();
            secrets.users.insert(user, hash);
        }
        for (_, entry) in parse_tokens(tokens) {
            secrets.tokens.push(entry.unwrap().1);
        }
        let runs = IntCounter::new("runs", "bcrypt runs").unwrap();
        Access::with_secrets(&config, secrets, runs)
    }

    fn with_users() -> AuthConfig {
        AuthConfig {
            htpasswd_file: Some("users".into()),
            ..AuthConfig::default()
        }
    }

    fn local() -> Option<IpAddr> {
        Some("127.0.0.1".parse().unwrap())
    }

    #[test]
    fn htpasswd_takes_bcrypt_only_and_names_the_line() {
        let hash = bcrypt::hash("pw", COST).unwrap();
        let text = format!("# users\n\nalice:{hash}\nbob:{{SHA}}abc\nalice:{hash}\nnocolon\n");
        let lines = parse_htpasswd(&text);
        assert!(lines[0].1.is_ok());
        let errors: Vec<(usize, String)> = lines
            .into_iter()
            .filter_map(|(n, e)| e.err().map(|e| (n, e)))
            .collect();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert_eq!(errors[0].0, 4);
        assert!(errors[0].1.contains("only bcrypt"));
        assert!(errors[1].1.contains("twice"));
        assert!(errors[2].1.contains("user:hash"));
    }

    #[test]
    fn tokens_skip_comments_and_refuse_short_ones() {
        let lines = parse_tokens("# ci\n0123456789abcdef0123\n  \nshort\n");
        assert!(lines[0].1.is_ok());
        assert_eq!(lines[1].0, 4);
        assert!(lines[1].1.as_ref().unwrap_err().contains("at least 16"));
    }

    #[test]
    fn authorization_headers_parse() {
        assert_eq!(
            parse_authorization(basic("u", "p:q").as_bytes()),
            Some(Presented::Basic {
                user: "u".into(),
                password: "p:q".into()
            })
        );
        assert_eq!(
            parse_authorization(b"bearer abc"),
            Some(Presented::Bearer("abc".into()))
        );
        for bad in [
            &b"Basic !!!"[..],
            b"Basic",
            b"Digest x",
            b"Bearer ",
            b"\xff\xfe",
        ] {
            assert_eq!(parse_authorization(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn the_allow_list_comes_first_and_knows_mapped_addresses() {
        let config = AuthConfig {
            allow_ips: vec!["10.0.0.0/8".parse().unwrap()],
            ..AuthConfig::default()
        };
        let access = access(config, "", "");
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(access.check(Some(mapped), None).await, Ok(()));
        assert_eq!(access.check(local(), None).await, Err(Denial::Address));
        assert_eq!(access.check(None, None).await, Err(Denial::Address));
    }

    #[tokio::test]
    async fn a_mapped_entry_matches_the_ipv4_peer() {
        let text = "[server.auth]\nallow_ips = [\"::ffff:127.0.0.1\"]\n\
                    [[upstream]]\nurl = \"http://127.0.0.1:1\"\n";
        let parsed = crate::config::Config::parse(text, "test", &Default::default());
        let config = parsed.unwrap().server.auth;
        let access = access(config, "", "");
        assert_eq!(access.check(local(), None).await, Ok(()));
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(access.check(Some(mapped), None).await, Ok(()));
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        assert_eq!(access.check(Some(other), None).await, Err(Denial::Address));
    }

    #[tokio::test]
    async fn an_address_that_fails_too_often_is_throttled_but_others_are_not() {
        let hash = bcrypt::hash("s3cret", COST).unwrap();
        let config = AuthConfig {
            max_login_failures_per_min: 3,
            ..with_users()
        };
        let access = access(config, &format!("alice:{hash}"), "");
        let good = basic("alice", "s3cret");
        assert_eq!(access.check(local(), Some(&good)).await, Ok(()));
        for n in 0..3 {
            let wrong = basic("alice", &format!("guess{n}"));
            assert_eq!(
                access.check(local(), Some(&wrong)).await,
                Err(Denial::Rejected)
            );
        }
        let next = basic("alice", "guess3");
        let Err(Denial::Throttled(wait)) = access.check(local(), Some(&next)).await else {
            panic!("the fourth failure in a minute is not verified");
        };
        assert!(wait <= Duration::from_secs(20), "{wait:?}");
        assert_eq!(access.bcrypt_runs(), 4);
        let repeated = basic("alice", "guess0");
        assert_eq!(
            access.check(local(), Some(&repeated)).await,
            Err(Denial::Rejected),
            "a remembered failure is still a plain 401"
        );
        assert_eq!(
            access.check(local(), Some(&good)).await,
            Ok(()),
            "a remembered login still gets in"
        );
        let elsewhere: IpAddr = "10.0.0.7".parse().unwrap();
        assert_eq!(
            access.check(Some(elsewhere), Some(&next)).await,
            Err(Denial::Rejected)
        );
        assert_eq!(access.bcrypt_runs(), 5);
        let error = Denial::Throttled(wait).into_error();
        assert_eq!(error.status_and_code(ErrorCode::Unknown).0, 429);
        assert_eq!(error.retry_after(), Some(wait));
    }

    #[tokio::test]
    async fn basic_users_are_verified_once_then_remembered() {
        let hash = bcrypt::hash("s3cret", COST).unwrap();
        let access = access(with_users(), &format!("alice:{hash}"), "");
        let good = basic("alice", "s3cret");
        assert_eq!(access.check(local(), Some(&good)).await, Ok(()));
        assert_eq!(access.check(local(), Some(&good)).await, Ok(()));
        assert_eq!(access.bcrypt_runs(), 1, "the second check came from memory");
        let wrong = basic("alice", "guess");
        let unknown = basic("mallory", "s3cret");
        for _ in 0..3 {
            for credentials in [&wrong, &unknown] {
                assert_eq!(
                    access.check(local(), Some(credentials)).await,
                    Err(Denial::Rejected)
                );
            }
        }
        assert_eq!(
            access.bcrypt_runs(),
            3,
            "a repeated failure costs no bcrypt"
        );
        assert_eq!(access.check(local(), None).await, Err(Denial::Missing));
        let odd = HeaderValue::from_static("Negotiate abc");
        assert_eq!(
            access.check(local(), Some(&odd)).await,
            Err(Denial::Malformed)
        );
    }

    #[tokio::test]
    async fn tokens_work_as_bearer_and_as_a_basic_password() {
        let config = AuthConfig {
            tokens_file: Some("tokens".into()),
            ..AuthConfig::default()
        };
        let token = "0123456789abcdef0123456789abcdef";
        let access = access(config, "", &format!("# ci\n{token}\n"));
        let bearer = HeaderValue::from_str(&format!("Bearer {token}")).unwrap();
        assert_eq!(access.check(local(), Some(&bearer)).await, Ok(()));
        let as_password = basic("anyone", token);
        assert_eq!(access.check(local(), Some(&as_password)).await, Ok(()));
        let wrong = HeaderValue::from_static("Bearer 0123456789abcdef0123456789abcdeX");
        assert_eq!(
            access.check(local(), Some(&wrong)).await,
            Err(Denial::Rejected)
        );
        assert_eq!(access.bcrypt_runs(), 0);
    }

    #[test]
    fn empty_credential_files_are_a_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "# nobody yet\n").unwrap();
        let config = AuthConfig {
            tokens_file: Some(path),
            htpasswd_file: Some(dir.path().join("missing")),
            ..AuthConfig::default()
        };
        let err = Secrets::read(&config).err().unwrap();
        assert_eq!(err.0.len(), 1, "{err}");
        assert!(err.0[0].contains("cannot read"));
    }
}
