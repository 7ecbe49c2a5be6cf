//! The bucket's credentials from the AWS SDK's standard chain (see `crate::aws`): keys in
//! the environment, a shared profile (`AWS_PROFILE`, `~/.aws/credentials`), web identity
//! (IRSA), ECS or instance roles, so a replica runs wherever its other AWS clients do.
//! The chain is loaded on the first request; an answer is reused until five minutes
//! before it expires.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use object_store::aws::AwsCredential;
use object_store::CredentialProvider;
use tokio::sync::{Mutex, OnceCell};

/// Credentials this close to their expiry are fetched again.
const REFRESH_BEFORE: Duration = Duration::from_secs(300);

#[derive(Debug, Default)]
pub struct Chain {
    provider: OnceCell<Option<SharedCredentialsProvider>>,
    /// The last answer and when it expires (`None`: it does not).
    held: Mutex<Option<(Arc<AwsCredential>, Option<SystemTime>)>>,
}

#[async_trait::async_trait]
impl CredentialProvider for Chain {
    type Credential = AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        let mut held = self.held.lock().await;
        if let Some((credential, expiry)) = held.as_ref() {
            let fresh = expiry.is_none_or(|at| SystemTime::now() + REFRESH_BEFORE < at);
            if fresh {
                return Ok(credential.clone());
            }
        }
        let provider = self
            .provider
            .get_or_init(|| async { crate::aws::sdk_config(None).await.credentials_provider() })
            .await
            .as_ref()
            .ok_or_else(|| failed("the AWS SDK configured no credential provider".into()))?;
        let found = provider
            .provide_credentials()
            .await
            .map_err(|e| failed(format!("no AWS credentials for the bucket: {e}")))?;
        let credential = Arc::new(AwsCredential {
            key_id: found.access_key_id().to_string(),
            secret_key: found.secret_access_key().to_string(),
            token: found.session_token().map(str::to_string),
        });
        *held = Some((credential.clone(), found.expiry()));
        Ok(credential)
    }
}

fn failed(why: String) -> object_store::Error {
    object_store::Error::Generic {
        store: "S3",
        source: why.into(),
    }
}
