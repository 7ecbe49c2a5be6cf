//! Content digests (`algorithm:encoded`): parsing, display and hashing.
//!
//! Only sha256 and sha512 are supported; any other well-formed digest is
//! rejected as `Unsupported` so callers can answer with the right error.
//! Pure: bytes in, digests out, no I/O.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256, Sha512};

/// A digest algorithm this proxy can verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    /// The name used on the wire, e.g. `sha256`.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// Length of the lowercase hex encoding of a digest of this algorithm.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a string is not a usable digest.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("malformed digest: expected `algorithm:encoded`")]
    Malformed,
    #[error("unsupported digest algorithm `{0}`; only sha256 and sha512 are accepted")]
    Unsupported(String),
    #[error("{algorithm} digest needs {expected} hex characters, got {found}")]
    WrongLength {
        algorithm: Algorithm,
        expected: usize,
        found: usize,
    },
    #[error("{0} digest must be lowercase hex")]
    InvalidHex(Algorithm),
}

/// A validated digest: a supported algorithm and its lowercase hex encoding.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

impl Digest {
    /// Digest of `bytes` in one go.
    pub fn of(algorithm: Algorithm, bytes: &[u8]) -> Digest {
        let mut hasher = Hasher::new(algorithm);
        hasher.update(bytes);
        hasher.finish()
    }

    /// The digest whose raw bytes are `bytes` (`bytes` must be the algorithm's length).
    pub fn from_raw(algorithm: Algorithm, bytes: &[u8]) -> Digest {
        debug_assert_eq!(bytes.len() * 2, algorithm.hex_len());
        Digest {
            algorithm,
            hex: hex::encode(bytes),
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// A fresh hasher of the same algorithm, for verifying content against `self`.
    pub fn hasher(&self) -> Hasher {
        Hasher::new(self.algorithm)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm, self.hex)
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (alg, encoded) = s.split_once(':').ok_or(DigestError::Malformed)?;
        // Check the generic grammar first so that garbage is `Malformed`,
        // and only a well-formed digest can be `Unsupported`.
        if !is_algorithm_grammar(alg) || !is_encoded_grammar(encoded) {
            return Err(DigestError::Malformed);
        }
        let algorithm = match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            other => return Err(DigestError::Unsupported(other.to_owned())),
        };
        if encoded.len() != algorithm.hex_len() {
            return Err(DigestError::WrongLength {
                algorithm,
                expected: algorithm.hex_len(),
                found: encoded.len(),
            });
        }
        if !encoded
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(DigestError::InvalidHex(algorithm));
        }
        Ok(Digest {
            algorithm,
            hex: encoded.to_owned(),
        })
    }
}

/// `[a-z0-9]+([+._-][a-z0-9]+)*`
fn is_algorithm_grammar(alg: &str) -> bool {
    alg.split(['+', '.', '_', '-']).all(|part| {
        !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    })
}

/// `[a-zA-Z0-9=_-]+`
fn is_encoded_grammar(encoded: &str) -> bool {
    !encoded.is_empty()
        && encoded
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'=' | b'_' | b'-'))
}

/// Incremental hashing that ends in a [`Digest`].
#[derive(Clone)]
pub struct Hasher(State);

#[derive(Clone)]
enum State {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    pub fn new(algorithm: Algorithm) -> Hasher {
        Hasher(match algorithm {
            Algorithm::Sha256 => State::Sha256(Sha256::new()),
            Algorithm::Sha512 => State::Sha512(Sha512::new()),
        })
    }

    pub fn algorithm(&self) -> Algorithm {
        match self.0 {
            State::Sha256(_) => Algorithm::Sha256,
            State::Sha512(_) => Algorithm::Sha512,
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        match &mut self.0 {
            State::Sha256(h) => h.update(bytes),
            State::Sha512(h) => h.update(bytes),
        }
    }

    pub fn finish(self) -> Digest {
        let algorithm = self.algorithm();
        let hex = match self.0 {
            State::Sha256(h) => hex::encode(h.finalize()),
            State::Sha512(h) => hex::encode(h.finalize()),
        };
        Digest { algorithm, hex }
    }
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hasher({})", self.algorithm())
    }
}

/// As its text (`sha256:<hex>`), for the operator API's reports.
impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Digest, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_SHA256: &str =
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_displays_sha256() {
        let d: Digest = EMPTY_SHA256.parse().unwrap();
        assert_eq!(d.algorithm(), Algorithm::Sha256);
        assert_eq!(d.hex().len(), 64);
        assert_eq!(d.to_string(), EMPTY_SHA256);
    }

    #[test]
    fn sha512_is_supported() {
        let d = Digest::of(Algorithm::Sha512, b"abc");
        assert_eq!(d.hex().len(), 128);
        assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
    }

    #[test]
    fn hashing_matches_known_value() {
        assert_eq!(Digest::of(Algorithm::Sha256, b"").to_string(), EMPTY_SHA256);
        let expected = Digest::of(Algorithm::Sha256, b"hello world");
        let mut h = expected.hasher();
        h.update(b"hello ");
        h.update(b"world");
        assert_eq!(h.finish(), expected);
    }

    #[test]
    fn uppercase_hex_is_invalid() {
        let upper = EMPTY_SHA256.to_uppercase().replace("SHA256", "sha256");
        assert_eq!(
            upper.parse::<Digest>(),
            Err(DigestError::InvalidHex(Algorithm::Sha256))
        );
    }

    #[test]
    fn other_algorithms_are_unsupported() {
        let err = "md5:d41d8cd98f00b204e9800998ecf8427e".parse::<Digest>();
        assert_eq!(err, Err(DigestError::Unsupported("md5".into())));
        let err =
            "multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8".parse::<Digest>();
        assert!(matches!(err, Err(DigestError::Unsupported(_))));
    }

    #[test]
    fn wrong_length_and_malformed() {
        assert!(matches!(
            "sha256:abc".parse::<Digest>(),
            Err(DigestError::WrongLength { found: 3, .. })
        ));
        for bad in [
            "",
            ":",
            "sha256",
            "sha256:",
            ":abc",
            "SHA256:ab",
            "sha256:a:b",
            "a..b:x",
        ] {
            assert_eq!(bad.parse::<Digest>(), Err(DigestError::Malformed), "{bad}");
        }
    }
}

#[cfg(test)]
mod prop {
    use super::*;
    use proptest::prelude::*;

    fn digest() -> impl Strategy<Value = Digest> {
        prop_oneof![
            "[0-9a-f]{64}".prop_map(|hex| Digest {
                algorithm: Algorithm::Sha256,
                hex
            }),
            "[0-9a-f]{128}".prop_map(|hex| Digest {
                algorithm: Algorithm::Sha512,
                hex
            }),
        ]
    }

    proptest! {
        #[test]
        fn display_round_trips(d in digest()) {
            prop_assert_eq!(d.to_string().parse::<Digest>(), Ok(d));
        }

        #[test]
        fn parse_accepts_only_its_own_display(s in "(sha256|sha512|md5)?:?[0-9a-fA-F:=_-]{0,130}") {
            if let Ok(d) = s.parse::<Digest>() {
                prop_assert_eq!(d.to_string(), s);
            }
        }
    }
}
