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
    #[serde(rename = "self")]
    self_url: Option<String>,
    secret_file: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Every replica's registry URL as the others reach it, this one's included.
    pub members: Vec<Url>,
    /// This replica's URL, one of `members`.
    pub self_url: Url,
    /// A file holding the secret replicas prove to each other when they forward.
    pub secret_file: PathBuf,
}

impl RawCluster {
    pub(super) fn validate(self, problems: &mut Problems) -> Option<ClusterConfig> {
        let parse = |key: &str, text: &str, problems: &mut Problems| {
            let url = Url::parse(text).ok().filter(|u| {
                matches!(u.scheme(), "http" | "https") && u.host().is_some() && u.path() == "/"
            });
            if url.is_none() {
                problems.add(
                    key,
                    format!("{text:?}"),
                    "give a replica's registry URL, scheme, host and port only, e.g. \"http://10.0.0.7:5000\"",
                );
            }
            url
        };
        let members: Vec<Url> = self
            .members
            .unwrap_or_default()
            .iter()
            .filter_map(|m| parse("cluster.members", m, problems))
            .collect();
        if members.is_empty() {
            problems.add(
                "cluster.members",
                "[]",
                "list every replica's registry URL, this one's included",
            );
        }
        let self_text = self.self_url.unwrap_or_default();
        let self_url = parse("cluster.self", &self_text, problems)?;
        if !members.contains(&self_url) && !members.is_empty() {
            problems.add(
                "cluster.self",
                format!("{self_text:?}"),
                "must be one of cluster.members (this replica's own URL)",
            );
        }
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
        assert_eq!(ok.cluster.unwrap().members.len(), 2);
        let e =
            parse("members = [\"10.0.0.1:5000\", \"http://10.0.0.1:5000\"]\nself = \"http://10.0.0.9:5000\"").unwrap_err();
        for key in ["cluster.members", "cluster.self", "cluster.secret_file"] {
            assert!(e.contains(key), "{e}");
        }
    }
}
