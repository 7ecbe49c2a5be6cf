//! The HTTP `Range` request header, limited to one byte range.
//!
//! Clients resume blob downloads with a single range; several ranges would
//! need a multipart response, so they are reported separately and the
//! caller can serve the whole blob instead. Pure; no I/O, no panics.

/// A parsed `bytes=` range, not yet checked against a length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeSpec {
    /// `bytes=start-end` or `bytes=start-` (end inclusive).
    From { start: u64, end: Option<u64> },
    /// `bytes=-n`: the last `n` bytes.
    Suffix(u64),
}

/// Why a `Range` header value cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("malformed Range header; expected `bytes=start-end`, `bytes=start-` or `bytes=-n`")]
    Malformed,
    #[error("multiple byte ranges are not supported")]
    MultipleRanges,
}

/// A satisfiable range within a known length; `end` is inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl ByteRange {
    /// Number of bytes covered. Fields are public, so stay panic-free even
    /// if someone builds one with `start > end`.
    #[allow(
        clippy::len_without_is_empty,
        reason = "an inclusive range always covers at least one byte"
    )]
    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start).saturating_add(1)
    }

    /// The `Content-Range` value for a 206 response.
    pub fn content_range(&self, total: u64) -> String {
        format!("bytes {}-{}/{}", self.start, self.end, total)
    }
}

/// The `Content-Range` value for a 416 response.
pub fn unsatisfied_content_range(total: u64) -> String {
    format!("bytes */{total}")
}

/// Parses a `Range` header value holding one byte range.
pub fn parse_range(value: &str) -> Result<RangeSpec, RangeError> {
    let (unit, set) = value.split_once('=').ok_or(RangeError::Malformed)?;
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return Err(RangeError::Malformed);
    }
    if set.contains(',') {
        return Err(RangeError::MultipleRanges);
    }
    let (first, last) = set.split_once('-').ok_or(RangeError::Malformed)?;
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        return Ok(RangeSpec::Suffix(number(last)?));
    }
    let start = number(first)?;
    if last.is_empty() {
        return Ok(RangeSpec::From { start, end: None });
    }
    let end = number(last)?;
    if start > end {
        return Err(RangeError::Malformed);
    }
    Ok(RangeSpec::From {
        start,
        end: Some(end),
    })
}

/// Plain decimal digits only: `u64::from_str` would also take a `+` sign.
fn number(s: &str) -> Result<u64, RangeError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RangeError::Malformed);
    }
    s.parse().map_err(|_| RangeError::Malformed)
}

/// Parses a 206 answer's `Content-Range: bytes start-end/total` (`total` may be `*`).
pub fn parse_content_range(value: &str) -> Option<(ByteRange, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (span, total) = rest.split_once('/')?;
    let (start, end) = span.split_once('-')?;
    let range = ByteRange {
        start: number(start.trim()).ok()?,
        end: number(end.trim()).ok()?,
    };
    let total = match total.trim() {
        "*" => None,
        t => Some(number(t).ok()?),
    };
    let consistent = range.start <= range.end && total.is_none_or(|t| range.end < t);
    consistent.then_some((range, total))
}

impl RangeSpec {
    /// The bytes to send from a body of `len` bytes, or `None` when the range
    /// is unsatisfiable (answer 416). An end past the body is clamped.
    pub fn resolve(&self, len: u64) -> Option<ByteRange> {
        let last = len.checked_sub(1)?;
        match *self {
            RangeSpec::From { start, end } => (start <= last).then(|| ByteRange {
                start,
                end: end.map_or(last, |e| e.min(last)),
            }),
            RangeSpec::Suffix(0) => None,
            RangeSpec::Suffix(n) => Some(ByteRange {
                start: len.saturating_sub(n),
                end: last,
            }),
        }
    }
}

#[cfg(test)]
mod content_range_tests {
    use super::*;

    #[test]
    fn parses_what_a_206_carries() {
        let r = |start, end| ByteRange { start, end };
        assert_eq!(
            parse_content_range("bytes 100-199/200"),
            Some((r(100, 199), Some(200)))
        );
        assert_eq!(parse_content_range("bytes 0-0/*"), Some((r(0, 0), None)));
        for bad in [
            "bytes 5-4/10",
            "bytes 0-10/10",
            "bytes */10",
            "items 0-1/2",
            "bytes 0-1",
            "bytes +1-2/3",
            "",
        ] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(start: u64, end: Option<u64>) -> RangeSpec {
        RangeSpec::From { start, end }
    }

    #[test]
    fn parses_the_three_forms() {
        assert_eq!(parse_range("bytes=0-0"), Ok(from(0, Some(0))));
        assert_eq!(parse_range("bytes=10-"), Ok(from(10, None)));
        assert_eq!(parse_range("bytes=-5"), Ok(RangeSpec::Suffix(5)));
        assert_eq!(parse_range("  Bytes = 1 - 2 "), Ok(from(1, Some(2))));
    }

    #[test]
    fn rejects_bad_values() {
        for bad in [
            "",
            "bytes",
            "bytes=",
            "bytes=-",
            "bytes=5-2",
            "bytes=a-b",
            "bytes=+1-2",
            "bytes=1-+2",
            "bytes=--1",
            "items=0-1",
            "bytes=0-1-2",
            "bytes=99999999999999999999-",
            "bytes=0-99999999999999999999",
            "bytes=-99999999999999999999",
        ] {
            assert_eq!(parse_range(bad), Err(RangeError::Malformed), "{bad}");
        }
        assert_eq!(
            parse_range("bytes=0-1,3-4"),
            Err(RangeError::MultipleRanges)
        );
    }

    #[test]
    fn resolves_against_length() {
        assert_eq!(
            from(0, Some(0)).resolve(10),
            Some(ByteRange { start: 0, end: 0 })
        );
        assert_eq!(
            from(5, Some(100)).resolve(10),
            Some(ByteRange { start: 5, end: 9 })
        );
        assert_eq!(
            from(5, None).resolve(10),
            Some(ByteRange { start: 5, end: 9 })
        );
        assert_eq!(
            RangeSpec::Suffix(3).resolve(10),
            Some(ByteRange { start: 7, end: 9 })
        );
        assert_eq!(
            RangeSpec::Suffix(30).resolve(10),
            Some(ByteRange { start: 0, end: 9 })
        );
    }

    #[test]
    fn unsatisfiable() {
        assert_eq!(parse_range("bytes=-0").unwrap().resolve(10), None);
        assert_eq!(from(10, None).resolve(10), None);
        assert_eq!(from(0, None).resolve(0), None);
        assert_eq!(RangeSpec::Suffix(5).resolve(0), None);
    }

    #[test]
    fn header_values() {
        let r = ByteRange { start: 7, end: 9 };
        assert_eq!(r.len(), 3);
        assert_eq!(r.content_range(10), "bytes 7-9/10");
        assert_eq!(unsatisfied_content_range(10), "bytes */10");
        assert_eq!(
            ByteRange {
                start: 0,
                end: u64::MAX
            }
            .len(),
            u64::MAX
        );
    }
}

#[cfg(test)]
mod prop {
    use super::*;
    use proptest::prelude::*;

    fn spec() -> impl Strategy<Value = RangeSpec> {
        prop_oneof![
            (any::<u64>(), any::<u64>()).prop_map(|(a, b)| from_pair(a, b)),
            (any::<u64>()).prop_map(|start| RangeSpec::From { start, end: None }),
            (0u64..64).prop_map(|start| RangeSpec::From { start, end: None }),
            any::<u64>().prop_map(RangeSpec::Suffix),
            (0u64..64).prop_map(RangeSpec::Suffix),
        ]
    }

    fn from_pair(a: u64, b: u64) -> RangeSpec {
        RangeSpec::From {
            start: a.min(b),
            end: Some(a.max(b)),
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in any::<String>()) {
            let _ = parse_range(&s);
        }

        #[test]
        fn parse_never_panics_on_near_misses(s in "bytes ?= ?[0-9 ,+-]{0,45}") {
            if let Ok(spec) = parse_range(&s) {
                let _ = spec.resolve(1000);
            }
        }

        #[test]
        fn resolve_stays_in_bounds(spec in spec(), len in prop_oneof![0u64..64, any::<u64>()]) {
            if let Some(r) = spec.resolve(len) {
                prop_assert!(r.start <= r.end && r.end < len, "{:?} of {} gave {:?}", spec, len, r);
                prop_assert!(r.len() <= len);
            }
        }

        #[test]
        fn rendered_ranges_parse_back(a in any::<u64>(), b in any::<u64>()) {
            let spec = from_pair(a, b);
            let RangeSpec::From { start, end: Some(end) } = spec else { unreachable!() };
            prop_assert_eq!(parse_range(&format!("bytes={start}-{end}")), Ok(spec));
        }
    }
}
