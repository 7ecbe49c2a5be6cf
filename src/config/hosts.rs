//! The network names in an `[[upstream]]`: its `url`.
//!
//! A URL may not carry a user name or password: regcache logs upstream URLs, and
//! credentials have their own keys (`username`, `password`), which are never logged.
//! Problems show the URL with any userinfo hidden.

use url::Url;

use super::Problems;
use crate::upstream::redact;

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

#[cfg(test)]
mod tests {
    use super::super::{Config, Overrides};

    fn problems(text: &str) -> Vec<String> {
        match Config::parse(text, "test", &Overrides::default()) {
            Ok(_) => Vec::new(),
            Err(e) => e.problems.iter().map(ToString::to_string).collect(),
        }
    }

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
}
