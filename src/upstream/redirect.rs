//! Redirects from an upstream. The client follows none by itself: an upstream that
//! redirected a manifest or tag list to regcache's own admin port got its metrics page
//! served (and stored) as a manifest. Registries redirect blobs only, to storage or a CDN,
//! so only blob requests follow (GET, and HEAD, which some registries redirect alike),
//! and each hop is checked first ([`Reach`]): http(s) only,
//! no downgrade from https, no address the upstream may not send regcache to. The
//! upstream's `Authorization` goes along only to the upstream's own origin, and userinfo
//! in a `Location` is dropped, so no credentials reach another host.

use http::header::{HeaderValue, AUTHORIZATION, LOCATION, RANGE};
use http::Method;
use reqwest::{Response, StatusCode};
use url::{Origin, Url};

use super::reach::Reach;
use super::redact;
use crate::error::UpstreamError;

/// Redirects followed for one request; registries use one (Docker Hub to its CDN).
const MAX_HOPS: usize = 5;

/// Why following stopped without an answer.
pub enum Stop {
    /// The redirect is refused: the error for the client and the log.
    Refused(UpstreamError),
    /// A hop failed in transit; retried like any transport error.
    Transport(reqwest::Error),
}

/// One hop's request as the upstream's first one was sent.
pub struct Hop<'a> {
    pub method: &'a Method,
    pub authorization: Option<&'a HeaderValue>,
    pub range: Option<&'a HeaderValue>,
}

pub fn is_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

/// The error for a redirect that is not followed (anything but a blob).
pub fn not_followed(response: &Response) -> UpstreamError {
    let target = location(response).map_or_else(
        |_| "no usable Location".to_string(),
        |u| redact::without_query(&u),
    );
    UpstreamError::Redirect(format!(
        "answered {} to {target}; regcache follows an upstream's redirects for blobs only",
        response.status()
    ))
}

/// Follows `response`'s redirects for a blob, returning the first answer that is not one.
pub async fn follow(
    http: &reqwest::Client,
    reach: &Reach,
    upstream: &Url,
    hop: Hop<'_>,
    mut response: Response,
) -> Result<Response, Stop> {
    let refused = |why: String| Stop::Refused(UpstreamError::Redirect(why));
    for _ in 0..MAX_HOPS {
        if !is_redirect(response.status()) {
            return Ok(response);
        }
        let mut target = location(&response).map_err(refused)?;
        let shown = redact::without_query(&target);
        match target.scheme() {
            "https" => {}
            "http" if upstream.scheme() == "http" => {}
            _ => {
                return Err(refused(format!(
                    "{shown}: an {} upstream may redirect to https only",
                    upstream.scheme()
                )))
            }
        }
        reach
            .check_host(&target)
            .map_err(|e| refused(format!("{shown}: {e}")))?;
        // Userinfo in a Location would be sent as Basic credentials by the client.
        let _ = target.set_password(None);
        let _ = target.set_username("");
        let mut request = http.request(hop.method.clone(), target.clone());
        if let Some(range) = hop.range {
            request = request.header(RANGE, range.clone());
        }
        if let Some(value) = hop.authorization {
            if same_origin(&target.origin(), &upstream.origin()) {
                request = request.header(AUTHORIZATION, value.clone());
            }
        }
        response = match request.send().await {
            Ok(next) => next,
            Err(mut e) => match super::reach::blocked_in(&e) {
                Some(blocked) => return Err(refused(format!("{shown}: {blocked}"))),
                None => {
                    // The error's text names the URL: keep a presigned signature out of logs.
                    if let Some(url) = e.url_mut() {
                        url.set_query(None);
                    }
                    return Err(Stop::Transport(e));
                }
            },
        };
    }
    if is_redirect(response.status()) {
        return Err(refused(format!("more than {MAX_HOPS} redirects in a row")));
    }
    Ok(response)
}

fn same_origin(a: &Origin, b: &Origin) -> bool {
    a.is_tuple() && a == b
}

/// The `Location` of a redirect, resolved against the URL that answered.
fn location(response: &Response) -> Result<Url, String> {
    let value = response
        .headers()
        .get(LOCATION)
        .ok_or_else(|| format!("answered {} without a Location", response.status()))?;
    let text = value
        .to_str()
        .map_err(|_| "a Location that is not text".to_string())?;
    response
        .url()
        .join(text)
        .map_err(|e| format!("a Location that is not a URL ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_real_redirects_are_followed() {
        for code in [301, 302, 303, 307, 308] {
            assert!(is_redirect(StatusCode::from_u16(code).unwrap()));
        }
        for code in [200, 300, 304, 305, 404] {
            assert!(!is_redirect(StatusCode::from_u16(code).unwrap()));
        }
    }

    #[test]
    fn origins_compare_scheme_host_and_port() {
        let o = |s: &str| Url::parse(s).unwrap().origin();
        assert!(same_origin(
            &o("https://r.example/v2/x"),
            &o("https://r.example:443/y")
        ));
        assert!(!same_origin(
            &o("https://r.example/"),
            &o("https://cdn.example/")
        ));
        assert!(!same_origin(
            &o("http://r.example/"),
            &o("https://r.example/")
        ));
        assert!(!same_origin(
            &o("http://127.0.0.1:1/"),
            &o("http://127.0.0.1:2/")
        ));
    }
}
