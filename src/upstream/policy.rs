//! Which repositories of an upstream this mirror serves: `allow` and `deny` patterns.
//!
//! A pattern is matched component by component against the repository name as the
//! upstream knows it (after `library/` was added for Docker Hub's official images):
//! `*` matches any run of characters within one component, and a component that is
//! exactly `**` matches any number of whole components, none included. A name matching
//! any `deny` pattern is refused; otherwise, with an `allow` list, it must match one of
//! its patterns; without one, every name is allowed.
//!
//! Pure: no I/O. Patterns are parsed once, when the config is validated.

use std::fmt;

/// One component of a pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    /// `**`: any number of whole components.
    AnyDepth,
    /// Literal text with `*` wildcards, within one component.
    Glob(String),
}

/// A parsed `allow` or `deny` pattern; prints as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    parts: Vec<Part>,
}

/// Why a pattern is not valid, worded as the fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("is empty; write a repository name or a glob such as \"team/*\"")]
    Empty,
    #[error(
        "has an empty component; separate components with one '/' and do not start or end with '/'"
    )]
    EmptyComponent,
    #[error(
        "contains {0:?}; use lowercase letters, digits, '.', '_', '-', '/' and the wildcards '*' and '**'"
    )]
    Character(char),
    #[error("uses '**' inside a component; '**' must be a whole component, as in \"team/**\"")]
    DoubleStar,
}

impl Pattern {
    pub fn parse(text: &str) -> Result<Pattern, PatternError> {
        if text.is_empty() {
            return Err(PatternError::Empty);
        }
        if let Some(c) = text
            .chars()
            .find(|&c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/*".contains(c)))
        {
            return Err(PatternError::Character(c));
        }
        let parts = text
            .split('/')
            .map(|component| match component {
                "" => Err(PatternError::EmptyComponent),
                "**" => Ok(Part::AnyDepth),
                c if c.contains("**") => Err(PatternError::DoubleStar),
                c => Ok(Part::Glob(c.to_string())),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Pattern {
            text: text.to_string(),
            parts,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True when the pattern can only match names of exactly one component.
    pub fn single_component(&self) -> bool {
        matches!(self.parts.as_slice(), [Part::Glob(_)])
    }

    pub fn matches(&self, name: &str) -> bool {
        let components: Vec<&str> = name.split('/').collect();
        matches_parts(&self.parts, &components)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn matches_parts(parts: &[Part], components: &[&str]) -> bool {
    match parts.split_first() {
        None => components.is_empty(),
        Some((Part::AnyDepth, rest)) => {
            (0..=components.len()).any(|skip| matches_parts(rest, &components[skip..]))
        }
        Some((Part::Glob(glob), rest)) => match components.split_first() {
            Some((first, others)) => {
                glob_matches(glob.as_bytes(), first.as_bytes()) && { matches_parts(rest, others) }
            }
            None => false,
        },
    }
}

/// `*` matches any run of bytes (the text is one component, so it holds no '/').
fn glob_matches(glob: &[u8], text: &[u8]) -> bool {
    let (mut g, mut t) = (0, 0);
    // Where the last `*` was, and where in `text` it is currently made to end.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if g < glob.len() && glob[g] == b'*' {
            star = Some((g, t));
            g += 1;
        } else if g < glob.len() && glob[g] == text[t] {
            g += 1;
            t += 1;
        } else if let Some((sg, st)) = star {
            g = sg + 1;
            t = st + 1;
            star = Some((sg, st + 1));
        } else {
            return false;
        }
    }
    glob[g..].iter().all(|&b| b == b'*')
}

/// An upstream's `allow` and `deny` lists.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub allow: Vec<Pattern>,
    pub deny: Vec<Pattern>,
}

/// Why a repository is refused: the rule, for the client's error message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    Denied(Pattern),
    NotAllowed,
}

impl Refusal {
    /// A bounded label for the denials metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Denied(_) => "deny",
            Refusal::NotAllowed => "not_allowed",
        }
    }
}

impl Policy {
    /// `Ok` when this mirror may serve `name` (as the upstream knows it). Deny wins.
    pub fn check(&self, name: &str) -> Result<(), Refusal> {
        if let Some(rule) = self.deny.iter().find(|p| p.matches(name)) {
            return Err(Refusal::Denied(rule.clone()));
        }
        if self.allow.is_empty() || self.allow.iter().any(|p| p.matches(name)) {
            return Ok(());
        }
        Err(Refusal::NotAllowed)
    }

    /// The client's explanation of a refusal, naming the rule.
    pub fn explain(&self, refusal: &Refusal, upstream: &str, name: &str) -> String {
        match refusal {
            Refusal::Denied(rule) => format!(
                "repository {name} is not served by this mirror: upstream {upstream:?} denies it \
                 by the rule deny = {:?}",
                rule.as_str()
            ),
            Refusal::NotAllowed => {
                let list: Vec<&str> = self.allow.iter().map(Pattern::as_str).collect();
                format!(
                    "repository {name} is not served by this mirror: it matches none of upstream \
                     {upstream:?}'s rules allow = {list:?}"
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(text: &str) -> Pattern {
        Pattern::parse(text).unwrap()
    }

    fn policy(allow: &[&str], deny: &[&str]) -> Policy {
        Policy {
            allow: allow.iter().map(|t| p(t)).collect(),
            deny: deny.iter().map(|t| p(t)).collect(),
        }
    }

    #[test]
    fn star_stays_within_one_component() {
        assert!(p("library/*").matches("library/nginx"));
        assert!(!p("library/*").matches("library/a/b"));
        assert!(!p("library/*").matches("library"));
        assert!(p("team/app-*").matches("team/app-web"));
        assert!(p("team/app-*").matches("team/app-"));
        assert!(!p("team/app-*").matches("team/web-app"));
        assert!(p("*/nginx").matches("library/nginx"));
        assert!(p("a*b*c").matches("abbbc"));
        assert!(p("a*b*c").matches("a-b-c"));
        assert!(!p("a*b*c").matches("a-b-d"));
        assert!(p("exact/name").matches("exact/name"));
        assert!(!p("exact/name").matches("exact/names"));
    }

    #[test]
    fn double_star_spans_components() {
        assert!(p("team/**").matches("team/app"));
        assert!(p("team/**").matches("team/a/b/c"));
        assert!(p("team/**").matches("team"));
        assert!(!p("team/**").matches("teams/app"));
        assert!(p("**/nginx").matches("library/nginx"));
        assert!(p("**/nginx").matches("nginx"));
        assert!(p("a/**/z").matches("a/b/c/z"));
        assert!(p("a/**/z").matches("a/z"));
        assert!(!p("a/**/z").matches("a/b/c"));
    }

    #[test]
    fn bad_patterns_are_refused_with_the_fix() {
        assert_eq!(Pattern::parse(""), Err(PatternError::Empty));
        assert_eq!(Pattern::parse("team/"), Err(PatternError::EmptyComponent));
        assert_eq!(Pattern::parse("/team"), Err(PatternError::EmptyComponent));
        assert_eq!(Pattern::parse("a//b"), Err(PatternError::EmptyComponent));
        assert_eq!(Pattern::parse("Team/*"), Err(PatternError::Character('T')));
        assert_eq!(Pattern::parse("team/?"), Err(PatternError::Character('?')));
        assert_eq!(Pattern::parse("team/a**"), Err(PatternError::DoubleStar));
        assert!(PatternError::DoubleStar.to_string().contains("team/**"));
    }

    #[test]
    fn deny_wins_and_no_allow_list_allows_everything() {
        let open = policy(&[], &[]);
        assert_eq!(open.check("any/thing"), Ok(()));
        let deny_only = policy(&[], &["secret/**"]);
        assert_eq!(deny_only.check("library/nginx"), Ok(()));
        assert_eq!(
            deny_only.check("secret/keys"),
            Err(Refusal::Denied(p("secret/**")))
        );
        let both = policy(&["library/*", "team/**"], &["team/private-*"]);
        assert_eq!(both.check("library/nginx"), Ok(()));
        assert_eq!(both.check("team/a/b"), Ok(()));
        assert_eq!(
            both.check("team/private-db"),
            Err(Refusal::Denied(p("team/private-*")))
        );
        assert_eq!(both.check("other/app"), Err(Refusal::NotAllowed));
        let message = both.explain(&Refusal::NotAllowed, "hub", "other/app");
        assert!(message.contains(r#"["library/*", "team/**"]"#), "{message}");
        let message = both.explain(
            &Refusal::Denied(p("team/private-*")),
            "hub",
            "team/private-db",
        );
        assert!(message.contains(r#"deny = "team/private-*""#), "{message}");
    }

    fn component() -> impl Strategy<Value = String> {
        "[a-z0-9][a-z0-9._-]{0,6}"
    }

    fn name() -> impl Strategy<Value = Vec<String>> {
        proptest::collection::vec(component(), 1..5)
    }

    proptest! {
        #[test]
        fn a_name_matches_itself_and_double_star_matches_all(name in name()) {
            let text = name.join("/");
            prop_assert!(p(&text).matches(&text));
            prop_assert!(p("**").matches(&text));
            let stars = vec!["*"; name.len()].join("/");
            prop_assert!(p(&stars).matches(&text));
            let prefix = format!("{}/**", name[0]);
            prop_assert!(p(&prefix).matches(&text));
        }

        #[test]
        fn star_never_crosses_a_slash(name in name(), extra in component()) {
            let text = format!("{}/{extra}", name.join("/"));
            let stars = vec!["*"; name.len()].join("/");
            prop_assert!(!p(&stars).matches(&text));
        }

        #[test]
        fn a_glob_with_a_star_matches_what_it_should(
            head in "[a-z]{0,3}", middle in "[a-z._-]{0,5}", tail in "[a-z]{0,3}",
        ) {
            let glob = p(&format!("{head}*{tail}"));
            let text = format!("{head}{middle}{tail}");
            prop_assert!(glob.matches(&text));
        }

        #[test]
        fn deny_always_wins(name in name()) {
            let text = name.join("/");
            let both = Policy { allow: vec![p("**")], deny: vec![p(&text)] };
            prop_assert!(both.check(&text).is_err());
        }
    }
}
