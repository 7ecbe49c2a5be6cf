//! Manifest references: a tag (`latest`) or a digest (`sha256:...`).
//!
//! Pure parsing; a [`Tag`] always matches the spec grammar.

use std::fmt;
use std::str::FromStr;

use super::digest::{Digest, DigestError};

/// Longest tag the spec allows.
pub const MAX_TAG_LEN: usize = 128;

/// Why a string is not a tag.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TagError {
    #[error("tag is empty")]
    Empty,
    #[error("tag is {0} characters long; the limit is 128")]
    TooLong(usize),
    #[error("invalid tag: use letters, digits, `_`, `.` and `-`, not starting with `.` or `-`")]
    Invalid,
}

/// A validated tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Tag {
    type Err = TagError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let first = *s.as_bytes().first().ok_or(TagError::Empty)?;
        if s.len() > MAX_TAG_LEN {
            return Err(TagError::TooLong(s.len()));
        }
        let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
        let valid = word(first) && s.bytes().all(|b| word(b) || b == b'.' || b == b'-');
        if !valid {
            return Err(TagError::Invalid);
        }
        Ok(Tag(s.to_owned()))
    }
}

/// What a manifest request names: a mutable tag or an immutable digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

impl Reference {
    pub fn as_tag(&self) -> Option<&Tag> {
        match self {
            Reference::Tag(t) => Some(t),
            Reference::Digest(_) => None,
        }
    }

    pub fn as_digest(&self) -> Option<&Digest> {
        match self {
            Reference::Digest(d) => Some(d),
            Reference::Tag(_) => None,
        }
    }
}

/// Why a string is neither a tag nor a digest.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error(transparent)]
    Tag(#[from] TagError),
    #[error(transparent)]
    Digest(#[from] DigestError),
}

impl FromStr for Reference {
    type Err = ReferenceError;

    /// A `:` can never appear in a tag, so it marks a digest.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains(':') {
            Ok(Reference::Digest(s.parse()?))
        } else {
            Ok(Reference::Tag(s.parse()?))
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

impl From<Tag> for Reference {
    fn from(t: Tag) -> Self {
        Reference::Tag(t)
    }
}

impl From<Digest> for Reference {
    fn from(d: Digest) -> Self {
        Reference::Digest(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::digest::Algorithm;

    #[test]
    fn tag_lengths() {
        assert!("a".repeat(128).parse::<Tag>().is_ok());
        assert_eq!("a".repeat(129).parse::<Tag>(), Err(TagError::TooLong(129)));
        assert_eq!("".parse::<Tag>(), Err(TagError::Empty));
    }

    #[test]
    fn tag_characters() {
        for ok in ["latest", "v1.2.3", "_x", "1.0-rc_1", "A-Z"] {
            assert!(ok.parse::<Tag>().is_ok(), "{ok}");
        }
        for bad in [".x", "-x", "a/b", "a b", "a+b", "é", "%41"] {
            assert_eq!(bad.parse::<Tag>(), Err(TagError::Invalid), "{bad}");
        }
    }

    #[test]
    fn reference_picks_kind_by_colon() {
        let r: Reference = "latest".parse().unwrap();
        assert_eq!(r.as_tag().map(Tag::as_str), Some("latest"));
        let d = Digest::of(Algorithm::Sha256, b"x");
        let r: Reference = d.to_string().parse().unwrap();
        assert_eq!(r.as_digest(), Some(&d));
        assert_eq!(r.to_string(), d.to_string());
        assert!(matches!(
            "latest:1".parse::<Reference>(),
            Err(ReferenceError::Digest(DigestError::Unsupported(_)))
        ));
        assert!(matches!(
            ".bad".parse::<Reference>(),
            Err(ReferenceError::Tag(TagError::Invalid))
        ));
    }
}

#[cfg(test)]
mod prop {
    use super::*;
    use proptest::prelude::*;
    use regex::Regex;
    use std::sync::LazyLock;

    const TAG_RE: &str = "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}";

    static ORACLE: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(&format!(r"\A{TAG_RE}\z")).unwrap());

    proptest! {
        #[test]
        fn agrees_with_regex_on_valid_tags(s in TAG_RE) {
            prop_assert!(ORACLE.is_match(&s));
            let tag = s.parse::<Tag>().unwrap();
            prop_assert_eq!(tag.as_str(), s.as_str());
        }

        #[test]
        fn agrees_with_regex_on_near_misses(s in "[a-zA-Z0-9._ /-]{0,130}") {
            prop_assert_eq!(s.parse::<Tag>().is_ok(), ORACLE.is_match(&s));
        }

        #[test]
        fn agrees_with_regex_on_anything(s in any::<String>()) {
            prop_assert_eq!(s.parse::<Tag>().is_ok(), ORACLE.is_match(&s));
        }

        #[test]
        fn reference_display_round_trips(s in TAG_RE) {
            let r: Reference = s.parse().unwrap();
            prop_assert_eq!(r.to_string(), s);
        }
    }
}
