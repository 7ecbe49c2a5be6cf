//! What an operator purges or pins: a whole upstream, a repository, or one image of a
//! repository by tag or digest. Written `UPSTREAM[/REPO[:TAG|@DIGEST]]` on the command line
//! (an upstream name holds no `/`) and as an object in the admin API's JSON.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::RepoId;
use crate::oci::{Digest, RepoName, Tag};
use crate::store::members::upstream_dir;

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawScope", into = "RawScope")]
pub enum Scope {
    Upstream(String),
    Repository(String, RepoName),
    Tag(String, RepoName, Tag),
    Digest(String, RepoName, Digest),
}

/// The JSON form: `{"upstream": "hub", "repository": "library/alpine", "tag": "3.19"}`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScope {
    upstream: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    repository: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    digest: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScopeError {
    #[error("name an upstream (its `name` in the config)")]
    NoUpstream,
    #[error("an upstream name has no `/` or whitespace: {0:?}")]
    BadUpstream(String),
    #[error("a tag or digest needs its repository")]
    NoRepository,
    #[error("give a tag or a digest, not both")]
    TagAndDigest,
    #[error("{0}")]
    Invalid(String),
}

impl TryFrom<RawScope> for Scope {
    type Error = ScopeError;

    fn try_from(raw: RawScope) -> Result<Scope, ScopeError> {
        let upstream = raw.upstream;
        if upstream.is_empty() {
            return Err(ScopeError::NoUpstream);
        }
        if upstream.contains('/') || upstream.contains(char::is_whitespace) {
            return Err(ScopeError::BadUpstream(upstream));
        }
        let invalid = |e: &dyn fmt::Display| ScopeError::Invalid(e.to_string());
        let Some(repo) = raw.repository else {
            return match (raw.tag, raw.digest) {
                (None, None) => Ok(Scope::Upstream(upstream)),
                _ => Err(ScopeError::NoRepository),
            };
        };
        let repo: RepoName = repo.parse().map_err(|e| invalid(&e))?;
        match (raw.tag, raw.digest) {
            (None, None) => Ok(Scope::Repository(upstream, repo)),
            (Some(tag), None) => Ok(Scope::Tag(
                upstream,
                repo,
                tag.parse().map_err(|e| invalid(&e))?,
            )),
            (None, Some(digest)) => Ok(Scope::Digest(
                upstream,
                repo,
                digest.parse().map_err(|e| invalid(&e))?,
            )),
            (Some(_), Some(_)) => Err(ScopeError::TagAndDigest),
        }
    }
}

impl From<Scope> for RawScope {
    fn from(scope: Scope) -> RawScope {
        let (upstream, repo) = (scope.upstream().to_string(), scope.repo().cloned());
        let (tag, digest) = match scope {
            Scope::Tag(_, _, tag) => (Some(tag.as_str().to_string()), None),
            Scope::Digest(_, _, digest) => (None, Some(digest.to_string())),
            _ => (None, None),
        };
        RawScope {
            upstream,
            repository: repo.map(|r| r.as_str().to_string()),
            tag,
            digest,
        }
    }
}

impl Scope {
    pub fn upstream(&self) -> &str {
        match self {
            Scope::Upstream(u)
            | Scope::Repository(u, _)
            | Scope::Tag(u, ..)
            | Scope::Digest(u, ..) => u,
        }
    }

    pub fn repo(&self) -> Option<&RepoName> {
        match self {
            Scope::Upstream(_) => None,
            Scope::Repository(_, r) | Scope::Tag(_, r, _) | Scope::Digest(_, r, _) => Some(r),
        }
    }

    /// Whether the repository `id` is one this scope reaches into.
    pub fn covers_repo(&self, id: &RepoId) -> bool {
        id.0 == upstream_dir(self.upstream()) && self.repo().is_none_or(|r| r.as_str() == id.1)
    }

    /// Whether the scope takes whole repositories (an upstream's, or one).
    pub fn whole(&self) -> bool {
        matches!(self, Scope::Upstream(_) | Scope::Repository(..))
    }
}

impl FromStr for Scope {
    type Err = ScopeError;

    /// `UPSTREAM`, `UPSTREAM/REPO`, `UPSTREAM/REPO:TAG` or `UPSTREAM/REPO@DIGEST`.
    fn from_str(text: &str) -> Result<Scope, ScopeError> {
        let (upstream, rest) = match text.split_once('/') {
            Some((u, rest)) => (u, Some(rest)),
            None => (text, None),
        };
        let mut raw = RawScope {
            upstream: upstream.to_string(),
            repository: None,
            tag: None,
            digest: None,
        };
        if let Some(rest) = rest {
            if let Some((repo, digest)) = rest.split_once('@') {
                raw.repository = Some(repo.to_string());
                raw.digest = Some(digest.to_string());
            } else if let Some((repo, tag)) = rest.rsplit_once(':') {
                raw.repository = Some(repo.to_string());
                raw.tag = Some(tag.to_string());
            } else {
                raw.repository = Some(rest.to_string());
            }
        }
        Scope::try_from(raw)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Upstream(u) => write!(f, "{u}"),
            Scope::Repository(u, r) => write!(f, "{u}/{r}"),
            Scope::Tag(u, r, t) => write!(f, "{u}/{r}:{t}"),
            Scope::Digest(u, r, d) => write!(f, "{u}/{r}@{d}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_from_text_and_json_alike() {
        let digest = format!("sha256:{}", "a".repeat(64));
        for (text, json) in [
            ("hub", r#"{"upstream":"hub"}"#.to_string()),
            (
                "127.0.0.1:5000/team/app",
                r#"{"upstream":"127.0.0.1:5000","repository":"team/app"}"#.to_string(),
            ),
            (
                "hub/library/alpine:3.19",
                r#"{"upstream":"hub","repository":"library/alpine","tag":"3.19"}"#.to_string(),
            ),
            (
                &format!("hub/library/alpine@{digest}"),
                format!(
                    r#"{{"upstream":"hub","repository":"library/alpine","digest":"{digest}"}}"#
                ),
            ),
        ] {
            let parsed: Scope = text.parse().unwrap();
            assert_eq!(parsed.to_string(), text);
            assert_eq!(serde_json::to_string(&parsed).unwrap(), json);
            assert_eq!(serde_json::from_str::<Scope>(&json).unwrap(), parsed);
        }
    }

    #[test]
    fn bad_scopes_say_why() {
        assert_eq!("".parse::<Scope>(), Err(ScopeError::NoUpstream));
        assert!(matches!(
            "hub/Bad Name".parse::<Scope>(),
            Err(ScopeError::Invalid(_))
        ));
        let json = r#"{"upstream":"hub","tag":"v1"}"#;
        assert!(serde_json::from_str::<Scope>(json).is_err());
        let json = r#"{"upstream":"hub","repository":"a","tag":"v1","digest":"sha256:00"}"#;
        let err = serde_json::from_str::<Scope>(json).unwrap_err().to_string();
        assert!(err.contains("not both"), "{err}");
    }

    #[test]
    fn a_scope_covers_its_repositories_only() {
        let id = |u: &str, r: &str| (u.to_string(), r.to_string());
        let scope: Scope = "127.0.0.1:5000/team/app:v1".parse().unwrap();
        assert!(scope.covers_repo(&id("127.0.0.1_5000", "team/app")));
        assert!(!scope.covers_repo(&id("127.0.0.1_5000", "team/app2")));
        let scope: Scope = "hub".parse().unwrap();
        assert!(scope.covers_repo(&id("hub", "x/y")));
        assert!(!scope.covers_repo(&id("hub2", "x/y")));
    }
}
