//! Credentials for one upstream: Basic, or the Bearer token flow of the distribution spec
//! (a 401 with `WWW-Authenticate: Bearer realm=..,service=..,scope=..`, then a token from
//! the realm). Tokens are cached per scope until shortly before they expire, and concurrent
//! requests for the same scope share one token fetch.
//!
//! The username and password come from a [`CredentialSource`]: fixed in the config, or fetched (a
//! credential helper, Amazon ECR). A 401 to credentials that were sent drops them from
//! their source, so the one retry of the request uses fresh ones. Which token realms may
//! receive them is decided by [`Realms`].

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use http::header::{HeaderValue, AUTHORIZATION};
use http::StatusCode;
use moka::future::Cache;
use moka::Expiry;
use serde::Deserialize;

use super::client::error_chain;
use super::credentials::CredentialSource;
use super::realm::{Realms, Trust};
use super::redact;
use crate::config::Credentials;
use crate::error::UpstreamError;
use crate::oci::Challenge;

/// Token lifetime when the token service does not say (the spec's default).
const DEFAULT_TOKEN_SECS: u64 = 60;

#[derive(Clone)]
struct Token {
    header: HeaderValue,
    ttl: Duration,
}

struct TokenTtl;

impl Expiry<String, Token> for TokenTtl {
    fn expire_after_create(&self, _: &String, token: &Token, _: Instant) -> Option<Duration> {
        Some(token.ttl)
    }
}

#[derive(Clone, Debug)]
struct Realm {
    realm: String,
    service: Option<String>,
}

/// What the upstream asked for, learnt from its first 401.
#[derive(Clone, Debug)]
enum Scheme {
    Unknown,
    Basic,
    Bearer(Realm),
}

pub struct Auth {
    source: CredentialSource,
    realms: Realms,
    scheme: RwLock<Scheme>,
    tokens: Cache<String, Token>,
}

#[derive(Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

impl Auth {
    pub fn new(source: CredentialSource, realms: Realms) -> Auth {
        Auth {
            source,
            realms,
            scheme: RwLock::new(Scheme::Unknown),
            tokens: Cache::builder()
                .max_capacity(10_000)
                .expire_after(TokenTtl)
                .build(),
        }
    }

    /// The `Authorization` value to send up front for `scope`, if any is known.
    pub async fn header(
        &self,
        http: &reqwest::Client,
        scope: &str,
    ) -> Result<Option<Sent>, UpstreamError> {
        let scheme = self.scheme.read().expect("auth lock").clone();
        match scheme {
            Scheme::Unknown => Ok(None),
            Scheme::Basic => Ok(self.source.get().await?.map(|c| Sent {
                value: basic_header(&c.credentials.username, &c.credentials.password),
                basic_generation: Some(c.generation),
            })),
            Scheme::Bearer(realm) => {
                let value = self.token(http, &realm, scope).await?;
                Ok(Some(Sent {
                    value,
                    basic_generation: None,
                }))
            }
        }
    }

    /// Learns from a 401's challenges to a request that carried `sent`. Returns true when
    /// a retry can now succeed.
    pub async fn challenged(
        &self,
        challenges: &[Challenge],
        scope: &str,
        sent: Option<&Sent>,
    ) -> bool {
        if let Some(generation) = sent.and_then(|s| s.basic_generation) {
            // Those credentials were refused: an expired ECR token, a rotated password.
            self.source.rejected(generation).await;
        }
        for challenge in challenges {
            match challenge {
                Challenge::Bearer { realm, service, .. } => {
                    *self.scheme.write().expect("auth lock") = Scheme::Bearer(Realm {
                        realm: realm.clone(),
                        service: service.clone(),
                    });
                    // The token we sent (if any) was not good enough for this scope.
                    self.tokens.invalidate(scope).await;
                    return true;
                }
                Challenge::Basic { .. } if self.source.is_some() => {
                    *self.scheme.write().expect("auth lock") = Scheme::Basic;
                    return true;
                }
                Challenge::Basic { .. } => {}
            }
        }
        false
    }

    async fn token(
        &self,
        http: &reqwest::Client,
        realm: &Realm,
        scope: &str,
    ) -> Result<HeaderValue, UpstreamError> {
        let fetch = async {
            let (url, trust) = self
                .realms
                .judge(&realm.realm, self.source.is_some())
                .map_err(UpstreamError::Token)?;
            // Not even asked for credentials when the realm may not have them.
            let current = match trust {
                Trust::Credentials => self.source.get().await?,
                Trust::Anonymous => None,
            };
            let credentials = current.as_ref().map(|c| &c.credentials);
            let result = fetch_token(http, url, realm, scope, credentials).await;
            if let (Err(UpstreamError::Refused { .. }), Some(c)) = (&result, &current) {
                self.source.rejected(c.generation).await;
            }
            result
        };
        self.tokens
            .try_get_with(scope.to_string(), fetch)
            .await
            .map(|t| t.header)
            .map_err(|e: Arc<UpstreamError>| (*e).clone())
    }
}

/// The `Authorization` value sent with a request, and for Basic which credentials it held.
pub struct Sent {
    pub value: HeaderValue,
    basic_generation: Option<u64>,
}

/// Asks the realm at `url` (already judged, see [`Realms`]) for a token.
async fn fetch_token(
    http: &reqwest::Client,
    mut url: url::Url,
    realm: &Realm,
    scope: &str,
    credentials: Option<&Credentials>,
) -> Result<Token, UpstreamError> {
    let shown = redact::url(&url);
    {
        let mut query = url.query_pairs_mut();
        if let Some(service) = &realm.service {
            query.append_pair("service", service);
        }
        if !scope.is_empty() {
            query.append_pair("scope", scope);
        }
    }
    let mut request = http.get(url.clone());
    if let Some(c) = credentials {
        request = request.header(AUTHORIZATION, basic_header(&c.username, &c.password));
    }
    let response = request
        .send()
        .await
        .map_err(|e| UpstreamError::Token(format!("{shown}: {}", error_chain(&e))))?;
    let status = response.status();
    if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
        // The token service refused the credentials (or their absence).
        return Err(UpstreamError::Refused { status });
    }
    if !status.is_success() {
        return Err(UpstreamError::Token(format!("{shown} answered {status}")));
    }
    let body: TokenResponse = response
        .json()
        .await
        .map_err(|e| UpstreamError::Token(format!("unreadable token response: {e}")))?;
    let token = body
        .token
        .or(body.access_token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| UpstreamError::Token("token response has no token".into()))?;
    let header = HeaderValue::try_from(format!("Bearer {token}"))
        .map_err(|_| UpstreamError::Token("token has characters not allowed in a header".into()))?;
    let secs = body.expires_in.unwrap_or(DEFAULT_TOKEN_SECS).max(1);
    Ok(Token {
        header,
        ttl: token_ttl(secs),
    })
}

/// Refresh a little before expiry so a token never dies in flight.
fn token_ttl(expires_in: u64) -> Duration {
    let margin = (expires_in / 10).clamp(1, 30);
    Duration::from_secs(expires_in.saturating_sub(margin).max(1))
}

fn basic_header(user: &str, password: &str) -> HeaderValue {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let mut value =
        HeaderValue::try_from(format!("Basic {encoded}")).expect("base64 is a valid header");
    value.set_sensitive(true);
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_refreshed_before_they_expire() {
        assert_eq!(token_ttl(60), Duration::from_secs(54));
        assert_eq!(token_ttl(300), Duration::from_secs(270));
        assert_eq!(token_ttl(3600), Duration::from_secs(3570));
        assert_eq!(token_ttl(1), Duration::from_secs(1));
    }

    #[test]
    fn basic_header_is_base64_of_user_and_password() {
        assert_eq!(
            basic_header("AWS", "pw").to_str().unwrap(),
            "Basic QVdTOnB3"
        );
    }
}
