//! The AWS SDK's configuration, shared by the ECR upstreams and the bucket's credentials:
//! the standard credential chain (environment, shared profile with `AWS_PROFILE`, web
//! identity / IRSA, ECS, instance metadata) over regcache's own HTTPS stack.

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_smithy_http_client::proxy::ProxyConfig;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use aws_smithy_http_client::Connector;
use aws_smithy_runtime_api::client::http::{
    http_client_fn, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;

/// The SDK configuration the environment and profile files give, in `region` when set.
pub async fn sdk_config(region: Option<&str>) -> SdkConfig {
    let mut loader =
        aws_config::defaults(BehaviorVersion::latest()).http_client(http_client_fn(connector));
    if let Some(region) = region {
        loader = loader.region(Region::new(region.to_string()));
    }
    loader.load().await
}

/// The SDK's HTTPS connector: rustls with ring, like the rest of regcache (the SDK's
/// default needs aws-lc), and HTTPS_PROXY/NO_PROXY from the environment as for upstream
/// traffic (the SDK's default ignores them). A new connection per call is fine for calls
/// made every few hours.
fn connector(
    settings: &HttpConnectorSettings,
    components: &RuntimeComponents,
) -> SharedHttpConnector {
    let mut builder = Connector::builder()
        .connector_settings(settings.clone())
        .proxy_config(ProxyConfig::from_env());
    builder.set_sleep_impl(components.sleep_impl());
    SharedHttpConnector::new(
        builder
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .build(),
    )
}
