//! `WWW-Authenticate` challenges from upstream registries, and the token
//! scope a pull needs.
//!
//! Upstream headers are untrusted input: the parser is lenient (unquoted
//! URLs, missing spaces) and never panics. Pure; no I/O.

use super::name::RepoName;

/// A challenge this proxy knows how to answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    Basic {
        realm: Option<String>,
    },
}

/// The scope to request for pulling from `name`.
pub fn scope_for_pull(name: &RepoName) -> String {
    format!("repository:{name}:pull")
}

/// Parses every challenge in one header value; unknown schemes and Bearer
/// challenges without a realm are skipped.
pub fn parse_challenges(value: &str) -> Vec<Challenge> {
    let mut cursor = Cursor {
        s: value.as_bytes(),
        i: 0,
    };
    let mut raw: Vec<(String, Vec<(String, String)>)> = Vec::new();
    loop {
        cursor.skip(|b| b == b',' || b == b' ' || b == b'\t');
        if cursor.at_end() {
            break;
        }
        let token = cursor.take(is_tchar);
        if token.is_empty() {
            cursor.i += 1; // resynchronise past a stray byte
            continue;
        }
        let token = String::from_utf8_lossy(token).to_ascii_lowercase();
        cursor.skip(|b| b == b' ' || b == b'\t');
        if cursor.peek() == Some(b'=') {
            cursor.i += 1;
            cursor.skip(|b| b == b' ' || b == b'\t');
            let value = cursor.value();
            // A parameter before any scheme has nobody to belong to.
            if let Some((_, params)) = raw.last_mut() {
                params.push((token, value));
            }
        } else {
            raw.push((token, Vec::new()));
        }
    }
    raw.into_iter()
        .filter_map(|(scheme, params)| {
            let get = |key: &str| {
                params
                    .iter()
                    .find(|(k, _)| k == key)
                    .map(|(_, v)| v.clone())
            };
            match scheme.as_str() {
                "bearer" => Some(Challenge::Bearer {
                    realm: get("realm").filter(|r| !r.is_empty())?,
                    service: get("service"),
                    scope: get("scope"),
                }),
                "basic" => Some(Challenge::Basic {
                    realm: get("realm"),
                }),
                _ => None,
            }
        })
        .collect()
}

/// RFC 9110 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn at_end(&self) -> bool {
        self.i >= self.s.len()
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn skip(&mut self, pred: impl Fn(u8) -> bool) {
        self.take(pred);
    }

    fn take(&mut self, pred: impl Fn(u8) -> bool) -> &'a [u8] {
        let start = self.i;
        while self.peek().is_some_and(&pred) {
            self.i += 1;
        }
        &self.s[start..self.i]
    }

    /// A quoted string (with `\` escapes; unterminated runs to the end) or a
    /// bare value up to the next comma or space, so unquoted URLs survive.
    fn value(&mut self) -> String {
        if self.peek() != Some(b'"') {
            let bare = self.take(|b| b != b',' && b != b' ' && b != b'\t');
            return String::from_utf8_lossy(bare).into_owned();
        }
        self.i += 1;
        let mut out = Vec::new();
        while let Some(b) = self.peek() {
            self.i += 1;
            match b {
                b'"' => break,
                b'\\' => {
                    if let Some(escaped) = self.peek() {
                        out.push(escaped);
                        self.i += 1;
                    }
                }
                _ => out.push(b),
            }
        }
        // Only ASCII bytes are ever consumed specially, so a valid UTF-8
        // input stays valid; lossy conversion is just belt and braces.
        String::from_utf8_lossy(&out).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(realm: &str, service: Option<&str>, scope: Option<&str>) -> Challenge {
        Challenge::Bearer {
            realm: realm.into(),
            service: service.map(Into::into),
            scope: scope.map(Into::into),
        }
    }

    #[test]
    fn docker_hub() {
        let v = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#;
        assert_eq!(
            parse_challenges(v),
            [bearer(
                "https://auth.docker.io/token",
                Some("registry.docker.io"),
                Some("repository:library/nginx:pull")
            )]
        );
    }

    #[test]
    fn quoted_commas_escapes_and_case() {
        let v = r#"BEARER Realm = "https://a/t?x=1,2" , scope="repository:a:pull,push", service="say \"hi\"""#;
        assert_eq!(
            parse_challenges(v),
            [bearer(
                "https://a/t?x=1,2",
                Some("say \"hi\""),
                Some("repository:a:pull,push")
            )]
        );
    }

    #[test]
    fn several_challenges_and_unknown_schemes() {
        let v = r#"Negotiate abc==, Basic realm="Registry Realm", Bearer realm=https://ghcr.io/token,service=ghcr.io, Digest realm="x", nonce="y""#;
        assert_eq!(
            parse_challenges(v),
            [
                Challenge::Basic {
                    realm: Some("Registry Realm".into())
                },
                bearer("https://ghcr.io/token", Some("ghcr.io"), None),
            ]
        );
        assert_eq!(
            parse_challenges("Basic"),
            [Challenge::Basic { realm: None }]
        );
    }

    #[test]
    fn bearer_without_realm_and_garbage() {
        assert_eq!(parse_challenges(r#"Bearer service="x""#), []);
        assert_eq!(parse_challenges(r#"Bearer realm="", service="x""#), []);
        for junk in [
            "",
            ",,,",
            "=",
            "realm=x",
            "Bearer realm=\"unterminated",
            "\"\\",
            "Bearer realm=\"x\\",
        ] {
            let _ = parse_challenges(junk);
        }
        assert_eq!(
            parse_challenges("Bearer realm=\"open"),
            [bearer("open", None, None)]
        );
    }

    #[test]
    fn pull_scope() {
        let name = "library/nginx".parse().unwrap();
        assert_eq!(scope_for_pull(&name), "repository:library/nginx:pull");
    }
}

#[cfg(test)]
mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn never_panics(s in any::<String>()) {
            let _ = parse_challenges(&s);
        }

        #[test]
        fn never_panics_on_near_misses(s in r#"(Bearer|Basic|x)?[ a-z=",\\é]{0,40}"#) {
            let _ = parse_challenges(&s);
        }

        #[test]
        fn quoted_values_round_trip(realm in r#"[ -~é]{1,30}"#, service in "[a-z.]{1,10}") {
            let quoted = realm.replace('\\', r"\\").replace('"', "\\\"");
            let header = format!(r#"Bearer realm="{quoted}", service={service}"#);
            prop_assert_eq!(parse_challenges(&header), vec![Challenge::Bearer {
                realm, service: Some(service), scope: None,
            }]);
        }
    }
}
