//! Amazon ECR: the registry takes Basic `AWS:<password>`, where the password is a token
//! from the ECR API's `GetAuthorizationToken`, valid for 12 hours. The API call is signed
//! by the AWS SDK with whatever the standard credential chain finds (environment, shared
//! profile, web identity / IRSA, ECS or instance metadata).
//!
//! The SDK client is built on the first fetch, so a regcache whose ECR upstream is never
//! used never looks for AWS credentials. Caching, refresh before expiry and after a 401,
//! and single flight are the caller's ([`super::credentials::Refreshing`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use tokio::sync::OnceCell;

use crate::config::{Credentials, EcrConfig};
use crate::error::UpstreamError;

/// ECR's documented token lifetime, used when the answer has no `expiresAt`.
const DEFAULT_VALIDITY: Duration = Duration::from_secs(12 * 3600);

pub struct Ecr {
    config: EcrConfig,
    client: OnceCell<aws_sdk_ecr::Client>,
}

impl Ecr {
    pub fn new(config: EcrConfig) -> Ecr {
        Ecr {
            config,
            client: OnceCell::new(),
        }
    }

    async fn client(&self) -> &aws_sdk_ecr::Client {
        self.client
            .get_or_init(|| async {
                let shared = crate::aws::sdk_config(Some(&self.config.region)).await;
                // Only the ECR API moves; STS (web identity) keeps its own endpoint.
                let mut ecr = aws_sdk_ecr::config::Builder::from(&shared);
                if let Some(url) = &self.config.endpoint_url {
                    ecr = ecr.endpoint_url(url.as_str().trim_end_matches('/'));
                }
                aws_sdk_ecr::Client::from_conf(ecr.build())
            })
            .await
    }

    /// One `GetAuthorizationToken`: the Basic credentials and how long they are valid.
    pub async fn fetch(&self) -> Result<(Option<Credentials>, Duration), UpstreamError> {
        let fail = |what: String| UpstreamError::Credentials(format!("ECR: {what}"));
        let output = self
            .client()
            .await
            .get_authorization_token()
            .send()
            .await
            .map_err(|e| {
                fail(format!(
                    "GetAuthorizationToken failed: {}",
                    aws_sdk_ecr::error::DisplayErrorContext(&e)
                ))
            })?;
        let data = output
            .authorization_data()
            .first()
            .ok_or_else(|| fail("GetAuthorizationToken returned no authorizationData".into()))?;
        let token = data
            .authorization_token()
            .ok_or_else(|| fail("GetAuthorizationToken returned no authorizationToken".into()))?;
        let credentials = decode_token(token).ok_or_else(|| {
            fail("the authorizationToken is not base64 of <user>:<password>".into())
        })?;
        let valid_for = data
            .expires_at()
            .map(|at| seconds_until(at.secs()))
            .unwrap_or(DEFAULT_VALIDITY);
        tracing::info!(
            region = %self.config.region,
            valid_secs = valid_for.as_secs(),
            "fetched an ECR authorization token"
        );
        Ok((Some(credentials), valid_for))
    }
}

/// `base64("AWS:<password>")` into its two halves.
fn decode_token(token: &str) -> Option<Credentials> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (username, password) = text.split_once(':')?;
    (!username.is_empty() && !password.is_empty()).then(|| Credentials {
        username: username.to_string(),
        password: password.to_string(),
    })
}

/// Time from now until `epoch_secs`; zero if that is past.
fn seconds_until(epoch_secs: i64) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    Duration::from_secs(epoch_secs.saturating_sub(now).max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_base64_of_user_and_password() {
        let c = decode_token("QVdTOnB3OndpdGg6Y29sb25z").unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("AWS", "pw:with:colons")
        );
        assert!(decode_token("not base64").is_none());
        assert!(decode_token("QVdT").is_none(), "AWS without a password");
    }

    #[test]
    fn expiry_in_the_past_is_now() {
        assert_eq!(seconds_until(0), Duration::ZERO);
        let in_an_hour = seconds_until(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64
                + 3600,
        );
        assert!(in_an_hour.as_secs() >= 3599);
    }
}
