//! The network names in an `[[upstream]]`: its `url` and its `token_realm_hosts`.
//!
//! A URL may not carry a user name or password: regcache logs upstream URLs, and
//! credentials have their own keys (`username`, `password`), which are never logged.
//! Problems show the URL with any userinfo hidden.

use url::{Host, Url};

use super::upstream::is_docker_hub;
use super::Problems;
use crate::upstream::redact;

/// Docker Hub's token service, trusted with Docker Hub credentials without being listed.
pub const DOCKER_HUB_AUTH_HOST: &str = "auth.docker.io";

/// Parses `upstream[i].url` (`key`), or records why it cannot be used.
pub(super) fn upstream_url(raw: &str, key: &str, problems: &mut Problems) -> Option<Url> {
    let url = match Url::parse(raw) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host_str().is_some() => url,
        _ => {
            problems.add(
                key,
                redact::text(raw),
                "must be an http:// or https:// URL with a host, e.g. https://registry-1.docker.io",
            );
            return None;
        }
    };
    if !url.username().is_empty() || url.password().is_some() {
        let prefix = key.trim_end_matches("url");
        problems.add(
            key,
            redact::url(&url),
            format!(
                "must not hold a user name or password (URLs are logged); remove them from \
                 the URL and give them as {prefix}username and {prefix}password"
            ),
        );
        return None;
    }
    Some(url)
}

/// Validates `token_realm_hosts` (`key`): host names only, normalized as URLs write them.
/// For Docker Hub, its token service is added.
pub(super) fn realm_hosts(
    raw: Vec<String>,
    upstream_host: &str,
    key: &str,
    problems: &mut Problems,
) -> Vec<String> {
    let mut hosts = Vec::new();
    for text in raw {
        match Host::parse(&text) {
            Ok(host) if !text.contains(['/', '@']) => hosts.push(host.to_string()),
            _ => problems.add(
                key,
                &text,
                "give a host name only, e.g. \"auth.example.com\" (no scheme, port or path)",
            ),
        }
    }
    if is_docker_hub(upstream_host) && !hosts.iter().any(|h| h == DOCKER_HUB_AUTH_HOST) {
        hosts.push(DOCKER_HUB_AUTH_HOST.to_string());
    }
    hosts
}

#[cfg(test)]
mod tests {
    use super::super::{problems, Config, Overrides};

    #[test]
    fn a_password_in_the_url_is_refused_without_being_shown() {
        let found = problems(
            r#"
            [[upstream]]
            url = "https://ghcr.io"
            [[upstream]]
            url = "http://user:secretpw@registry.internal:5000"
            [[upstream]]
            url = "http//user:secretpw@registry.internal"
            "#,
        );
        assert_eq!(found.len(), 2, "{found:#?}");
        assert!(found[0].starts_with("upstream[1].url = http://***@registry.internal:5000/: "));
        assert!(found[0].contains("upstream[1].username and upstream[1].password"));
        assert!(found[1].starts_with("upstream[2].url = http//***@registry.internal: "));
        assert!(!found.concat().contains("secretpw"), "{found:#?}");
    }

    #[test]
    fn realm_hosts_are_host_names_and_docker_hub_knows_its_own() {
        let found = problems(
            "[[upstream]]\nurl = \"https://ghcr.io\"\n\
             token_realm_hosts = [\"https://auth.example\", \"auth.example:443\", \"Auth.Example\"]\n",
        );
        assert_eq!(found.len(), 2, "{found:#?}");
        assert!(found[0].starts_with("upstream[0].token_realm_hosts = https://auth.example: "));
        let parse = |text: &str| Config::parse(text, "test", &Overrides::default()).unwrap();
        let c = parse(
            "[[upstream]]\nurl = \"https://ghcr.io\"\ntoken_realm_hosts = [\"Auth.Example\"]\n",
        );
        assert_eq!(c.upstreams[0].token_realm_hosts, ["auth.example"]);
        let hub = parse("[[upstream]]\nurl = \"https://registry-1.docker.io\"\n");
        assert_eq!(hub.upstreams[0].token_realm_hosts, ["auth.docker.io"]);
    }
}
