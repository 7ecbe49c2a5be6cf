//! `[cluster]`: replicas that route each blob miss to one owner, so a blob crosses the
//! upstream link once however many replicas are asked for it at once.

use std::path::PathBuf;

use serde::Deserialize;
use url::Url;

use super::Problems;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    members: Option<Vec<String>>,
    members_dns: Option<String>,
    #[serde(rename = "self")]
    self_url: Option<String>,
    secret_file: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    pub members: Members,
    /// This replica's URL, one of the members; with `members_dns` and no `self`, the
    /// member whose address is one of this host's.
    pub self_url: Option<Url>,
    /// A file holding the secret replicas prove to each other when they forward.
    pub secret_file: PathBuf,
}

/// A regcache's registry URL (scheme, host, port, no path), or a problem under `key`.
pub(super) fn base_url(key: &str, text: &str, problems: &mut Problems) -> Option<Url> {
    let url = Url::parse(text).ok().filter(|u| {
        matches!(u.scheme(), "http" | "https") && u.host().is_some() && u.path() == "/"
    });
    if url.is_none() {
        problems.add(
            key,
            format!("{text:?}"),
            "give a regcache's registry URL, scheme, host and port only, e.g. \"http://10.0.0.7:5000\"",
        );
    }
    url
}

/// Where the member list comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Members {
    /// Every replica's registry URL as the others reach it, this one's included.
    Static(Vec<Url>),
    /// A name whose addresses are the replicas (a Kubernetes headless Service), each
    /// reached at the URL's scheme and port, re-resolved every few seconds.
    Dns(Url),
}

impl RawCluster {
    pub(super) fn validate(self, problems: &mut Problems) -> Option<ClusterConfig> {
        let self_url = self
            .self_url
            .as_deref()
            .and_then(|text| base_url("cluster.self", text, problems));
        let members = match (self.members, self.members_dns) {
            (Some(_), Some(_)) => {
                problems.add(
                    "cluster.members_dns",
                    "",
                    "give either members (a fixed list) or members_dns (a name to re-resolve), not both",
                );
                return None;
            }
            (None, Some(dns)) => Members::Dns(base_url("cluster.members_dns", &dns, problems)?),
            (list, None) => {
                let members: Vec<Url> = list
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|m| base_url("cluster.members", m, problems))
                    .collect();
                if members.is_empty() {
                    problems.add(
                        "cluster.members",
                        "[]",
                        "list every replica's registry URL, this one's included, or give \
                         members_dns, e.g. \"http://regcache-peers.regcache.svc:5000\"",
                    );
                }
                match &self_url {
                    None => problems.add(
                        "cluster.self",
                        "",
                        "give this replica's URL, one of cluster.members",
                    ),
                    Some(url) if !members.contains(url) && !members.is_empty() => problems.add(
                        "cluster.self",
                        format!("{:?}", url.as_str()),
                        "must be one of cluster.members (this replica's own URL)",
                    ),
                    Some(_) => {}
                }
                Members::Static(members)
            }
        };
        let Some(secret_file) = self.secret_file else {
            problems.add(
                "cluster.secret_file",
                "",
                "give a file holding the secret the replicas share (at least 16 bytes)",
            );
            return None;
        };
        Some(ClusterConfig {
            members,
            self_url,
            secret_file,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Members;
    use crate::config::{Config, Overrides};

    fn parse(cluster: &str) -> Result<Config, String> {
        let text = format!("[cluster]\n{cluster}\n[[upstream]]\nurl = \"http://127.0.0.1:1\"\n");
        Config::parse(&text, "test", &Overrides::default()).map_err(|e| e.to_string())
    }

    #[test]
    fn members_are_urls_and_self_is_one_of_them() {
        let ok = parse(
            "members = [\"http://10.0.0.1:5000\", \"http://10.0.0.2:5000\"]\n\
             self = \"http://10.0.0.2:5000\"\nsecret_file = \"/etc/regcache/secret\"",
        )
        .unwrap();
        let members = ok.cluster.unwrap().members;
        assert!(matches!(members, Members::Static(list) if list.len() == 2));
        let e =
            parse("members = [\"10.0.0.1:5000\", \"http://10.0.0.1:5000\"]\nself = \"http://10.0.0.9:5000\"").unwrap_err();
        for key in ["cluster.members", "cluster.self", "cluster.secret_file"] {
            assert!(e.contains(key), "{e}");
        }
        let dns =
            parse("members_dns = \"http://peers.ns.svc:5000\"\nsecret_file = \"/s\"").unwrap();
        assert!(matches!(dns.cluster.unwrap().members, Members::Dns(_)));
        let both = parse(
            "members = [\"http://10.0.0.1:5000\"]\nmembers_dns = \"http://p:5000\"\nsecret_file = \"/s\"",
        )
        .unwrap_err();
        assert!(both.contains("cluster.members_dns"), "{both}");
    }
}
