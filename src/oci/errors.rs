//! OCI error codes and the JSON error body registries exchange.
//!
//! Builds the bodies we send and reads the first error out of an upstream's
//! body so a known code can pass through. Choosing the HTTP status is the
//! caller's job. Pure; no I/O.

use std::fmt;

use serde::Serialize;
use serde_json::Value;

/// An error code from the distribution spec, plus the few extra codes that
/// registries use in practice (`RANGE_INVALID`, `UNAVAILABLE`, `UNKNOWN`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    TagInvalid,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    TooManyRequests,
    RangeInvalid,
    Unavailable,
    Unknown,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 18] = [
        ErrorCode::BlobUnknown,
        ErrorCode::BlobUploadInvalid,
        ErrorCode::BlobUploadUnknown,
        ErrorCode::DigestInvalid,
        ErrorCode::ManifestBlobUnknown,
        ErrorCode::ManifestInvalid,
        ErrorCode::ManifestUnknown,
        ErrorCode::TagInvalid,
        ErrorCode::NameInvalid,
        ErrorCode::NameUnknown,
        ErrorCode::SizeInvalid,
        ErrorCode::Unauthorized,
        ErrorCode::Denied,
        ErrorCode::Unsupported,
        ErrorCode::TooManyRequests,
        ErrorCode::RangeInvalid,
        ErrorCode::Unavailable,
        ErrorCode::Unknown,
    ];

    /// The code as written in error bodies.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            ErrorCode::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            ErrorCode::ManifestInvalid => "MANIFEST_INVALID",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::TagInvalid => "TAG_INVALID",
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::SizeInvalid => "SIZE_INVALID",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Denied => "DENIED",
            ErrorCode::Unsupported => "UNSUPPORTED",
            // The spec spells this one without an underscore.
            ErrorCode::TooManyRequests => "TOOMANYREQUESTS",
            ErrorCode::RangeInvalid => "RANGE_INVALID",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::Unknown => "UNKNOWN",
        }
    }

    /// The code for a wire string such as an upstream's `"MANIFEST_UNKNOWN"`.
    pub fn from_wire(code: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == code)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Serialize)]
struct Body<'a> {
    errors: [Entry<'a>; 1],
}

#[derive(Serialize)]
struct Entry<'a> {
    code: &'static str,
    message: &'a str,
    detail: Option<Value>,
}

/// `{"errors":[{"code":"...","message":"...","detail":null}]}`
pub fn error_body(code: ErrorCode, message: &str) -> Vec<u8> {
    let body = Body {
        errors: [Entry {
            code: code.as_str(),
            message,
            detail: None,
        }],
    };
    serde_json::to_vec(&body).expect("a struct of strings always serializes")
}

/// The code and message of the first error in an upstream error body.
///
/// Tolerant: a missing or non-string message becomes empty; anything without
/// a string code is `None`.
pub fn parse_error_body(bytes: &[u8]) -> Option<(String, String)> {
    let body: Value = serde_json::from_slice(bytes).ok()?;
    let first = body.get("errors")?.get(0)?;
    let code = first.get("code")?.as_str()?;
    let message = first
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or_default();
    Some((code.to_owned(), message.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_shape() {
        let body = error_body(ErrorCode::ManifestUnknown, "manifest unknown");
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":null}]}"#
        );
    }

    #[test]
    fn message_is_escaped() {
        let msg = "bad \"name\"\n\\ </script> é";
        let body = error_body(ErrorCode::NameInvalid, msg);
        assert_eq!(
            parse_error_body(&body),
            Some(("NAME_INVALID".to_owned(), msg.to_owned()))
        );
    }

    #[test]
    fn codes_round_trip() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_wire(code.as_str()), Some(code));
        }
        assert_eq!(ErrorCode::TooManyRequests.to_string(), "TOOMANYREQUESTS");
        assert_eq!(ErrorCode::from_wire("blob_unknown"), None);
    }

    #[test]
    fn parses_upstream_bodies_tolerantly() {
        let hub = br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":[{"Type":"repository","Name":"x","Action":"pull"}]},{"code":"DENIED"}]}"#;
        assert_eq!(
            parse_error_body(hub),
            Some(("UNAUTHORIZED".into(), "authentication required".into()))
        );
        let no_message = br#"{"errors":[{"code":"TOOMANYREQUESTS","message":null}]}"#;
        assert_eq!(
            parse_error_body(no_message),
            Some(("TOOMANYREQUESTS".into(), String::new()))
        );
        for bad in [
            &b""[..],
            b"<html>",
            b"{}",
            b"{\"errors\":[]}",
            b"{\"errors\":{}}",
            b"{\"errors\":[{\"code\":1}]}",
        ] {
            assert_eq!(parse_error_body(bad), None);
        }
    }
}
