//! Which token realms may receive this upstream's credentials. A realm comes from the
//! upstream's 401 (`WWW-Authenticate: Bearer realm=..`), so a hostile or spoofed answer
//! could name any URL; credentials go only to the upstream's own host (any port: a
//! registry and its token service often share a machine), to `auth.docker.io` for Docker
//! Hub, and to the hosts the operator lists in `token_realm_hosts`. Pure; no I/O.
//!
//! A realm on another host still gets asked for an anonymous token when this upstream has
//! no credentials at all: nothing is at risk, and public images on registries that
//! delegate auth keep working. With credentials, such a realm is an error naming the
//! key to fix, not a silent anonymous pull: that would turn a config gap into puzzling
//! 401s or anonymous rate limits. Such a realm must also be an address the upstream may
//! send regcache to (see `reach`), as a redirect must.

use std::sync::Arc;

use url::Url;

use super::reach::Reach;
use super::redact;
use crate::config::UpstreamConfig;

pub struct Realms {
    upstream: String,
    https: bool,
    host: String,
    /// `token_realm_hosts`, with `auth.docker.io` added for Docker Hub by the config.
    listed: Vec<String>,
    reach: Arc<Reach>,
}

/// What may be sent to a realm.
#[derive(Debug, PartialEq, Eq)]
pub enum Trust {
    /// This upstream's credentials.
    Credentials,
    /// Nothing: an anonymous token request.
    Anonymous,
}

impl Realms {
    pub fn new(config: &UpstreamConfig, reach: Arc<Reach>) -> Realms {
        Realms {
            upstream: config.name.clone(),
            https: config.url.scheme() == "https",
            host: config.url.host_str().unwrap_or_default().to_string(),
            listed: config.token_realm_hosts.clone(),
            reach,
        }
    }

    /// Parses `realm` and decides what it may receive; `has_credentials` says whether this
    /// upstream has any. The error is the message for the operator.
    pub fn judge(&self, realm: &str, has_credentials: bool) -> Result<(Url, Trust), String> {
        let mut url = Url::parse(realm).map_err(|e| {
            format!(
                "the realm {:?} this upstream sent is not a URL ({e})",
                redact::text(realm)
            )
        })?;
        // Credentials in a realm URL would be sent as Basic by the HTTP client.
        let _ = url.set_password(None);
        let _ = url.set_username("");
        let host = url.host_str().unwrap_or_default().to_string();
        let shown = redact::url(&url);
        match url.scheme() {
            "https" => {}
            "http" if !self.https => {}
            "http" => {
                return Err(format!(
                    "this https upstream sent the plain-http token realm {shown}; regcache \
                     does not fetch tokens over plain http for an https upstream (an \
                     attacker on the path could read or forge them): the registry's auth \
                     settings must give an https realm"
                ))
            }
            _ => return Err(format!("the token realm {shown} is not an http(s) URL")),
        }
        let trusted = host == self.host || self.listed.contains(&host);
        match (trusted, has_credentials) {
            (true, _) => Ok((url, Trust::Credentials)),
            (false, false) => match self.reach.check_host(&url) {
                Ok(()) => Ok((url, Trust::Anonymous)),
                Err(e) => Err(format!("the token realm {shown}: {e}")),
            },
            (false, true) => Err(format!(
                "the token realm {shown} is on {host}, not on this upstream's host {}; \
                 regcache sends this upstream's credentials only to its own host and to the \
                 hosts in token_realm_hosts. If {host} is this registry's token service, add \
                 token_realm_hosts = [\"{host}\"] to the [[upstream]] named {:?}",
                self.host, self.upstream
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Overrides};

    fn realms(upstream: &str) -> Realms {
        let config = Config::parse(upstream, "test", &Overrides::default()).unwrap();
        let up = &config.upstreams[0];
        Realms::new(up, Arc::new(Reach::new(&up.url, &up.token_realm_hosts)))
    }

    #[test]
    fn credentials_go_to_the_upstreams_host_and_listed_hosts_only() {
        let r = realms(
            "[[upstream]]\nurl = \"https://registry.internal:5000\"\n\
             token_realm_hosts = [\"auth.internal\"]\n",
        );
        let trust = |realm: &str, creds| r.judge(realm, creds).map(|(_, t)| t);
        let own = "https://registry.internal:5001/token";
        assert_eq!(trust(own, true), Ok(Trust::Credentials));
        assert_eq!(
            trust("https://auth.internal/token?x=1", true),
            Ok(Trust::Credentials)
        );
        assert_eq!(
            trust("https://evil.example/token", false),
            Ok(Trust::Anonymous)
        );
        let metadata = trust("https://169.254.169.254/token", false).unwrap_err();
        assert!(metadata.contains("link-local"), "{metadata}");
        let refused = trust("https://evil.example/token", true).unwrap_err();
        assert!(refused.contains("evil.example"), "{refused}");
        assert!(refused.contains("token_realm_hosts = [\"evil.example\"]"));
        assert!(refused.contains("\"registry.internal:5000\""), "{refused}");
    }

    #[test]
    fn an_https_upstream_never_fetches_tokens_over_http() {
        let r = realms("[[upstream]]\nurl = \"https://registry.internal\"\n");
        for creds in [true, false] {
            let e = r
                .judge("http://registry.internal/token", creds)
                .unwrap_err();
            assert!(e.contains("plain-http token realm"), "{e}");
        }
        let plain = realms("[[upstream]]\nurl = \"http://127.0.0.1:5000\"\n");
        assert!(plain.judge("http://127.0.0.1:5001/token", true).is_ok());
        assert!(r.judge("ftp://registry.internal/token", false).is_err());
    }

    #[test]
    fn docker_hub_knows_its_auth_host_and_realm_userinfo_is_dropped() {
        let hub = realms("[[upstream]]\nurl = \"https://registry-1.docker.io\"\n");
        let (url, trust) = hub
            .judge("https://user:pw@auth.docker.io/token", true)
            .unwrap();
        assert_eq!(trust, Trust::Credentials);
        assert_eq!(url.as_str(), "https://auth.docker.io/token");
        let e = hub.judge("not a url user:pw@x", true).unwrap_err();
        assert!(!e.contains("pw"), "{e}");
    }
}
