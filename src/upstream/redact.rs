//! URLs as they may appear in logs and error messages: never with a user name or password,
//! and, for redirect targets, without the query (presigned storage URLs carry their
//! signature there). Pure; no I/O.

use url::Url;

const HIDDEN: &str = "***";

/// `url` with any user name and password replaced by `***`.
pub fn url(url: &Url) -> String {
    if url.username().is_empty() && url.password().is_none() {
        return url.to_string();
    }
    let mut shown = url.clone();
    // Only URLs that cannot have userinfo refuse these, and those have none to hide.
    let _ = shown.set_password(None);
    let _ = shown.set_username(HIDDEN);
    shown.to_string()
}

/// Like [`url`], also without the query and fragment.
pub fn without_query(url: &Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.set_fragment(None);
    self::url(&shown)
}

/// Text that should have been a URL but did not parse: whatever sits between `//` (or
/// the start) and the last `@` before the path is hidden.
pub fn text(text: &str) -> String {
    let start = text.find("//").map_or(0, |i| i + 2);
    let rest = &text[start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}{HIDDEN}{}", &text[..start], &rest[at..]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_never_shows() {
        let parsed = |s: &str| Url::parse(s).unwrap();
        assert_eq!(
            url(&parsed("http://user:secretpw@host:5000/v2/")),
            "http://***@host:5000/v2/"
        );
        assert_eq!(url(&parsed("https://ghcr.io/")), "https://ghcr.io/");
        assert_eq!(
            without_query(&parsed(
                "https://u:p@cdn.example/blob?X-Amz-Signature=abc#f"
            )),
            "https://***@cdn.example/blob"
        );
    }

    #[test]
    fn unparsed_text_hides_userinfo_too() {
        assert_eq!(text("http://user:pw@host"), "http://***@host");
        assert_eq!(text("http//user:pw@host"), "http//***@host");
        assert_eq!(text("user:pw@host:5000"), "***@host:5000");
        assert_eq!(text("ftp://a:b@c@host/x@y"), "ftp://***@host/x@y");
        assert_eq!(text("https://host/path@x"), "https://host/path@x");
        assert_eq!(text("not a url"), "not a url");
    }
}
