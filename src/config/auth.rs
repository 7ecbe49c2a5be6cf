//! `[server.auth]`: who may use the mirror: an IP allow list and the files holding client
//! credentials (htpasswd bcrypt users, static bearer tokens), and how much bcrypt work
//! Basic logins may cause (logins waiting for a verification, failures per address).
//!
//! Only the keys are validated here; the files are read and checked by `server::auth`,
//! which `check-config` also runs. Also the exposure checks: a listener reachable from
//! other hosts with no authentication and no allow list is an open proxy, and the admin
//! listener never has any.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use ipnet::{IpNet, Ipv4Net};
use serde::Deserialize;

use super::Problems;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    htpasswd_file: Option<PathBuf>,
    tokens_file: Option<PathBuf>,
    allow_ips: Option<Vec<String>>,
    max_pending_logins: Option<usize>,
    max_login_failures_per_min: Option<u32>,
}

/// Validated `[server.auth]` settings. The default lets everyone in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthConfig {
    /// htpasswd file of `user:bcrypt-hash` lines (Basic auth).
    pub htpasswd_file: Option<PathBuf>,
    /// One static bearer token per line; `#` starts a comment.
    pub tokens_file: Option<PathBuf>,
    /// Client networks allowed in; empty allows every address. IPv4-mapped IPv6 entries
    /// (`::ffff:10.0.0.0/104`) are kept as the IPv4 networks they mean.
    pub allow_ips: Vec<IpNet>,
    /// Basic logins waiting for or running a bcrypt verification at once; more get 429.
    pub max_pending_logins: usize,
    /// Failed Basic logins allowed per client address (IPv6: per /64) per minute, as a
    /// burst refilled evenly; past it, logins not remembered get 429 until it refills.
    pub max_login_failures_per_min: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        RawAuth::default().validate(&mut Problems::default())
    }
}

impl AuthConfig {
    /// True when clients must present credentials.
    pub fn requires_credentials(&self) -> bool {
        self.htpasswd_file.is_some() || self.tokens_file.is_some()
    }

    /// A warning when a listener on `addr` lets anyone on the network in, or takes
    /// credentials over clear text from other hosts. `None` when nothing is wrong.
    pub fn exposure_warning(&self, addr: SocketAddr, tls: bool) -> Option<String> {
        if addr.ip().is_loopback() {
            return None;
        }
        if !self.requires_credentials() && self.allow_ips.is_empty() {
            return Some(format!(
                "listen = {addr} is reachable from other hosts with no authentication and \
                 no allow list: anyone who can connect may pull through this mirror; set \
                 server.auth.htpasswd_file, server.auth.tokens_file or server.auth.allow_ips"
            ));
        }
        if self.requires_credentials() && !tls {
            return Some(format!(
                "listen = {addr} takes client credentials over clear text; set \
                 server.tls_cert_file and server.tls_key_file"
            ));
        }
        None
    }
}

/// A warning when the admin listener on `addr` is reachable from other hosts: it has no
/// authentication and no allow list. `None` on loopback.
pub fn admin_exposure_warning(addr: SocketAddr) -> Option<String> {
    if addr.ip().to_canonical().is_loopback() {
        return None;
    }
    Some(format!(
        "admin_listen = {addr} is reachable from other hosts: the admin API needs the token, \
         but /metrics and /healthz answer anyone who can connect; bind it to 127.0.0.1 or a \
         private interface (e.g. admin_listen = \"127.0.0.1:{}\"), or firewall the port",
        addr.port()
    ))
}

impl RawAuth {
    pub(super) fn validate(self, problems: &mut Problems) -> AuthConfig {
        let mut allow_ips = Vec::new();
        for (i, text) in self.allow_ips.unwrap_or_default().iter().enumerate() {
            match parse_network(text) {
                Some(net) => allow_ips.push(net),
                None => problems.add(
                    format!("server.auth.allow_ips[{i}]"),
                    text,
                    "must be an address or a CIDR network, e.g. 10.0.0.0/8 or fd00::/8",
                ),
            }
        }
        for (key, path) in [
            ("htpasswd_file", &self.htpasswd_file),
            ("tokens_file", &self.tokens_file),
        ] {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                problems.add(
                    format!("server.auth.{key}"),
                    "\"\"",
                    "must be a file path; leave the key out to disable it",
                );
            }
        }
        let max_pending_logins = self.max_pending_logins.unwrap_or(32);
        if max_pending_logins == 0 {
            problems.add(
                "server.auth.max_pending_logins",
                "0",
                "must be at least 1; it caps Basic logins waiting for bcrypt (try 32)",
            );
        }
        let max_login_failures_per_min = self.max_login_failures_per_min.unwrap_or(10);
        if max_login_failures_per_min == 0 {
            problems.add(
                "server.auth.max_login_failures_per_min",
                "0",
                "must be at least 1, or no address could ever log in after a typo (try 10)",
            );
        }
        AuthConfig {
            htpasswd_file: self.htpasswd_file,
            tokens_file: self.tokens_file,
            allow_ips,
            max_pending_logins: max_pending_logins.max(1),
            max_login_failures_per_min: max_login_failures_per_min.max(1),
        }
    }
}

/// `10.0.0.0/8`, or a bare address meaning just that host.
fn parse_network(text: &str) -> Option<IpNet> {
    let text = text.trim();
    let net = text
        .parse::<IpNet>()
        .map(|net| net.trunc())
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))?;
    Some(unmap(net))
}

/// `::ffff:a.b.c.d/n` (n >= 96) as the IPv4 network it stands for: peers are compared in
/// their canonical form, so an IPv4 client on a dual-stack listener matches it.
fn unmap(net: IpNet) -> IpNet {
    let IpNet::V6(v6) = net else { return net };
    match v6.addr().to_ipv4_mapped() {
        Some(v4) if v6.prefix_len() >= 96 => {
            Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, IpNet::V4)
        }
        _ => net,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (AuthConfig, Vec<String>) {
        let raw: RawAuth = toml::from_str(text).unwrap();
        let mut problems = Problems::default();
        let config = raw.validate(&mut problems);
        (config, problems.0.iter().map(|p| p.to_string()).collect())
    }

    #[test]
    fn networks_and_bare_addresses_parse() {
        let (c, problems) = parse(r#"allow_ips = ["10.1.2.3/8", "192.168.1.7", "fd00::/8"]"#);
        assert!(problems.is_empty(), "{problems:?}");
        let shown: Vec<String> = c.allow_ips.iter().map(|n| n.to_string()).collect();
        assert_eq!(shown, ["10.0.0.0/8", "192.168.1.7/32", "fd00::/8"]);
    }

    #[test]
    fn ipv4_mapped_entries_mean_their_ipv4_network() {
        let (c, problems) =
            parse(r#"allow_ips = ["::ffff:10.1.2.3", "::ffff:192.168.0.0/112", "::ffff:0:0/95"]"#);
        assert!(problems.is_empty(), "{problems:?}");
        let shown: Vec<String> = c.allow_ips.iter().map(|n| n.to_string()).collect();
        assert_eq!(shown, ["10.1.2.3/32", "192.168.0.0/16", "::fffe:0:0/95"]);
    }

    #[test]
    fn login_limits_have_defaults_and_refuse_zero() {
        let (c, problems) = parse("");
        assert!(problems.is_empty());
        assert_eq!(
            (c.max_pending_logins, c.max_login_failures_per_min),
            (32, 10)
        );
        let (_, problems) = parse("max_pending_logins = 0\nmax_login_failures_per_min = 0");
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("server.auth.max_pending_logins = 0"));
        assert!(problems[1].contains("after a typo"));
    }

    #[test]
    fn a_bad_network_names_its_index() {
        let (_, problems) = parse(r#"allow_ips = ["10.0.0.0/8", "10.0.0.0/33"]"#);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].starts_with("server.auth.allow_ips[1] = 10.0.0.0/33"));
    }

    #[test]
    fn only_open_non_loopback_listeners_warn() {
        let open = AuthConfig::default();
        let lo: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:5000".parse().unwrap();
        assert!(open.exposure_warning(lo, false).is_none());
        assert!(open
            .exposure_warning(any, true)
            .unwrap()
            .contains("no authentication"));
        let listed = AuthConfig {
            allow_ips: vec!["10.0.0.0/8".parse().unwrap()],
            ..AuthConfig::default()
        };
        assert!(listed.exposure_warning(any, false).is_none());
        let users = AuthConfig {
            htpasswd_file: Some("users".into()),
            ..AuthConfig::default()
        };
        assert!(users
            .exposure_warning(any, false)
            .unwrap()
            .contains("clear text"));
        assert!(users.exposure_warning(any, true).is_none());
    }

    #[test]
    fn an_admin_listener_off_loopback_warns() {
        for private in ["127.0.0.1:5001", "[::1]:5001", "[::ffff:127.0.0.1]:5001"] {
            assert_eq!(admin_exposure_warning(private.parse().unwrap()), None);
        }
        let warning = admin_exposure_warning("0.0.0.0:5001".parse().unwrap()).unwrap();
        assert!(warning.starts_with("admin_listen = 0.0.0.0:5001 is reachable"));
        assert!(warning.contains("127.0.0.1:5001"));
    }
}
