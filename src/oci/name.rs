//! Repository names (`library/nginx`, `docker.io/library/nginx`).
//!
//! A [`RepoName`] always matches the OCI distribution grammar and is at most
//! 255 characters, so nothing past the parse re-validates it. Pure; no I/O.

use std::fmt;
use std::str::FromStr;

/// Longest name we accept; many clients and registries cap at this.
pub const MAX_NAME_LEN: usize = 255;

/// Why a string is not a repository name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("repository name is empty")]
    Empty,
    #[error("repository name is {0} characters long; the limit is 255")]
    TooLong(usize),
    #[error(
        "invalid repository name component `{0}`: use lowercase letters and digits, \
         joined by `.`, `_`, `__` or dashes"
    )]
    InvalidComponent(String),
}

/// A validated repository name: `/`-separated lowercase components.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

impl RepoName {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// Docker Hub's implicit namespace: `nginx` becomes `library/nginx`.
    ///
    /// Names with a `/` are returned unchanged, and so is a single component
    /// too long to take the prefix (Hub would reject it anyway).
    pub fn with_library_prefix(&self) -> RepoName {
        if self.0.contains('/') || self.0.len() + "library/".len() > MAX_NAME_LEN {
            return self.clone();
        }
        RepoName(format!("library/{}", self.0))
    }

    /// Splits off the first component, used when a path prefix names the
    /// upstream: `docker.io/library/nginx` gives `("docker.io", library/nginx)`.
    /// `None` for a single-component name.
    pub fn strip_first_component(&self) -> Option<(&str, RepoName)> {
        let (first, rest) = self.0.split_once('/')?;
        // Every component of `rest` was already valid, and it is shorter.
        Some((first, RepoName(rest.to_owned())))
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for RepoName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong(s.len()));
        }
        if let Some(bad) = s.split('/').find(|c| !is_component(c.as_bytes())) {
            return Err(NameError::InvalidComponent(bad.to_owned()));
        }
        Ok(RepoName(s.to_owned()))
    }
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`: alternating alphanumeric runs and
/// separators, starting and ending with an alphanumeric run.
fn is_component(c: &[u8]) -> bool {
    let mut i = 0;
    loop {
        let run = i;
        while i < c.len() && is_alnum(c[i]) {
            i += 1;
        }
        if i == run {
            return false;
        }
        if i == c.len() {
            return true;
        }
        let sep = i;
        while i < c.len() && !is_alnum(c[i]) {
            i += 1;
        }
        match &c[sep..i] {
            b"." | b"_" | b"__" => {}
            dashes if dashes.iter().all(|&b| b == b'-') => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> RepoName {
        s.parse().unwrap()
    }

    #[test]
    fn accepts_spec_examples() {
        for ok in [
            "a",
            "nginx",
            "library/nginx",
            "a__b",
            "a_b",
            "a.b",
            "a---b",
            "docker.io/library/nginx",
            "ghcr.io/o/r",
            "localhost/x",
            "0/1/2",
        ] {
            assert!(ok.parse::<RepoName>().is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_bad_components() {
        for bad in [
            "a___b",
            "-a",
            "a-",
            "A",
            "a/",
            "/a",
            "a//b",
            "a._b",
            "a..b",
            ".",
            "..",
            "a/./b",
            "a:b",
            "a%2fb",
            "localhost:5000/x",
            "é",
        ] {
            assert!(
                matches!(bad.parse::<RepoName>(), Err(NameError::InvalidComponent(_))),
                "{bad}"
            );
        }
        assert_eq!("".parse::<RepoName>(), Err(NameError::Empty));
    }

    #[test]
    fn length_limit_is_255() {
        assert!("a".repeat(255).parse::<RepoName>().is_ok());
        assert_eq!(
            "a".repeat(256).parse::<RepoName>(),
            Err(NameError::TooLong(256))
        );
    }

    #[test]
    fn library_prefix() {
        assert_eq!(name("nginx").with_library_prefix(), name("library/nginx"));
        assert_eq!(name("me/app").with_library_prefix(), name("me/app"));
        let long = name(&"a".repeat(250));
        assert_eq!(long.with_library_prefix(), long);
    }

    #[test]
    fn strips_first_component() {
        let n = name("docker.io/library/nginx");
        assert_eq!(
            n.strip_first_component(),
            Some(("docker.io", name("library/nginx")))
        );
        assert_eq!(name("nginx").strip_first_component(), None);
        assert_eq!(
            n.components().collect::<Vec<_>>(),
            ["docker.io", "library", "nginx"]
        );
    }
}

#[cfg(test)]
mod prop {
    use super::*;
    use proptest::prelude::*;
    use regex::Regex;
    use std::sync::LazyLock;

    /// The grammar from the distribution spec, used as the oracle.
    const NAME_RE: &str = r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*";

    static ORACLE: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(&format!(r"\A{NAME_RE}\z")).unwrap());

    fn oracle(s: &str) -> bool {
        ORACLE.is_match(s) && s.len() <= MAX_NAME_LEN
    }

    proptest! {
        #[test]
        fn agrees_with_regex_on_valid_names(s in NAME_RE) {
            prop_assert_eq!(s.parse::<RepoName>().is_ok(), oracle(&s));
        }

        #[test]
        fn agrees_with_regex_on_near_misses(s in "[a-cA._/-]{0,12}") {
            prop_assert_eq!(s.parse::<RepoName>().is_ok(), oracle(&s));
        }

        #[test]
        fn agrees_with_regex_on_anything(s in any::<String>()) {
            prop_assert_eq!(s.parse::<RepoName>().is_ok(), oracle(&s));
        }

        #[test]
        fn strip_then_join_round_trips(s in NAME_RE) {
            if let Ok(n) = s.parse::<RepoName>() {
                if let Some((first, rest)) = n.strip_first_component() {
                    prop_assert_eq!(format!("{first}/{rest}"), s);
                }
            }
        }
    }
}
