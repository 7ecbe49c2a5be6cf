//! Credentials from the Docker CLI's `config.json` (what `docker login` writes):
//! `{"auths": {"<registry>": {"auth": base64("user:password")}}}`.
//!
//! Used for an upstream whose config has no `username`/`password`, unless it says
//! `docker_config = false`. The file is `docker_config_file`, else `$DOCKER_CONFIG/config.json`,
//! else `~/.docker/config.json`. A credential helper named for the registry in
//! `credHelpers`, or for all registries in `credsStore`, is returned by [`DockerConfig::helper_for`]
//! for `helper` to run; `identitytoken`s are not read. Parsing and matching are pure; only
//! [`load`] touches the file system.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

use crate::config::Credentials;

#[derive(Debug, Default, Deserialize)]
pub struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: HashMap<String, String>,
    #[serde(rename = "credsStore")]
    creds_store: Option<String>,
}

/// Where the Docker config says an upstream's credentials are.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    Credentials(Credentials),
    /// The name of a `docker-credential-<name>` helper.
    Helper(String),
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DockerConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a Docker config: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
}

/// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
pub fn default_path() -> Option<PathBuf> {
    match std::env::var_os("DOCKER_CONFIG") {
        Some(dir) if !dir.is_empty() => Some(PathBuf::from(dir).join("config.json")),
        _ => dirs::home_dir().map(|home| home.join(".docker").join("config.json")),
    }
}

/// Reads the file; a missing file is an empty config, not an error. Blocks (startup only).
pub fn load(path: &Path) -> Result<DockerConfig, DockerConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(DockerConfig::default()),
        Err(source) => {
            return Err(DockerConfigError::Read {
                path: path.display().to_string(),
                source,
            })
        }
    };
    serde_json::from_str(&text).map_err(|source| DockerConfigError::Parse {
        path: path.display().to_string(),
        source,
    })
}

impl DockerConfig {
    /// The credentials stored for the first of `names` (registry hosts as clients write
    /// them) that has an entry. Keys may be URLs (`https://index.docker.io/v1/`).
    pub fn credentials_for<'a>(
        &self,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Option<Credentials> {
        let by_host: HashMap<String, &AuthEntry> = self
            .auths
            .iter()
            .map(|(key, entry)| (registry_host(key), entry))
            .collect();
        names
            .into_iter()
            .filter_map(|name| by_host.get(&name.to_ascii_lowercase()))
            .find_map(|entry| entry.credentials())
    }
}

impl DockerConfig {
    /// Docker's order: a `credHelpers` entry for the registry, then `auths` credentials,
    /// then the `credsStore` for everything else.
    pub fn find(&self, names: &[&str]) -> Option<Found> {
        let helpers: HashMap<String, &String> = self
            .cred_helpers
            .iter()
            .map(|(key, helper)| (registry_host(key), helper))
            .collect();
        let helper = names
            .iter()
            .find_map(|name| helpers.get(&name.to_ascii_lowercase()));
        if let Some(helper) = helper.filter(|h| plain_name(h)) {
            return Some(Found::Helper(helper.to_string()));
        }
        if let Some(credentials) = self.credentials_for(names.iter().copied()) {
            return Some(Found::Credentials(credentials));
        }
        self.creds_store
            .as_ref()
            .filter(|s| plain_name(s))
            .map(|s| Found::Helper(s.clone()))
    }
}

/// A helper name becomes part of a program name: no paths, nothing empty.
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

impl AuthEntry {
    fn credentials(&self) -> Option<Credentials> {
        if let (Some(username), Some(password)) = (&self.username, &self.password) {
            if !username.is_empty() {
                return Some(Credentials {
                    username: username.clone(),
                    password: password.clone(),
                });
            }
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(self.auth.as_deref()?.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (username, password) = text.split_once(':')?;
        (!username.is_empty()).then(|| Credentials {
            username: username.to_string(),
            password: password.to_string(),
        })
    }
}

/// `https://index.docker.io/v1/` gives `index.docker.io`; `ghcr.io` stays `ghcr.io`.
fn registry_host(key: &str) -> String {
    let key = key.trim();
    let rest = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    rest.split('/').next().unwrap_or(rest).to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"{
        "auths": {
            "https://index.docker.io/v1/": {"auth": "aHViOnNlY3JldDp3aXRoOmNvbG9ucw=="},
            "ghcr.io": {"auth": "Z2g6dG9rZW4="},
            "127.0.0.1:5001": {"username": "u", "password": "p"},
            "quay.io": {},
            "bad.example": {"auth": "not base64!"}
        },
        "credsStore": "desktop"
    }"#;

    fn creds(names: &[&str]) -> Option<(String, String)> {
        let config: DockerConfig = serde_json::from_str(CONFIG).unwrap();
        config
            .credentials_for(names.iter().copied())
            .map(|c| (c.username, c.password))
    }

    #[test]
    fn finds_credentials_by_any_name_of_the_registry() {
        assert_eq!(
            creds(&[
                "hub",
                "registry-1.docker.io",
                "docker.io",
                "index.docker.io"
            ]),
            Some(("hub".into(), "secret:with:colons".into()))
        );
        assert_eq!(creds(&["GHCR.io"]), Some(("gh".into(), "token".into())));
        assert_eq!(
            creds(&["local", "127.0.0.1:5001"]),
            Some(("u".into(), "p".into()))
        );
    }

    #[test]
    fn entries_without_usable_credentials_are_skipped() {
        assert_eq!(creds(&["quay.io"]), None);
        assert_eq!(creds(&["bad.example"]), None);
        assert_eq!(creds(&["elsewhere.example"]), None);
    }

    #[test]
    fn cred_helpers_come_first_then_auths_then_the_store() {
        let config: DockerConfig = serde_json::from_str(
            r#"{
                "auths": {"ghcr.io": {"auth": "Z2g6dG9rZW4="}},
                "credHelpers": {"1.dkr.ecr.eu-west-1.amazonaws.com": "ecr-login", "ghcr.io": ""},
                "credsStore": "pass"
            }"#,
        )
        .unwrap();
        let find = |name: &str| config.find(&[name]);
        assert_eq!(
            find("1.dkr.ecr.eu-west-1.amazonaws.com"),
            Some(Found::Helper("ecr-login".into()))
        );
        assert!(matches!(find("ghcr.io"), Some(Found::Credentials(c)) if c.username == "gh"));
        assert_eq!(find("quay.io"), Some(Found::Helper("pass".into())));
        let without_store: DockerConfig =
            serde_json::from_str(CONFIG.replace("desktop", "").as_str()).unwrap();
        assert_eq!(without_store.find(&["quay.io"]), None);
    }

    #[test]
    fn a_missing_file_is_an_empty_config_and_a_broken_one_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = load(&dir.path().join("config.json")).unwrap();
        assert!(missing.auths.is_empty());
        let broken = dir.path().join("broken.json");
        std::fs::write(&broken, "{").unwrap();
        let err = load(&broken).unwrap_err();
        assert!(err.to_string().contains("is not a Docker config"), "{err}");
    }
}
