//! `[admin]`: who may use the admin API and the status page, and the price the status
//! page turns saved egress into. The admin listener's address stays `admin_listen`.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::Problems;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    token_file: Option<PathBuf>,
    egress_price_per_gb: Option<f64>,
    currency: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AdminConfig {
    /// The bearer token the API and the status page require (read at startup; written
    /// with a fresh random token when the file does not exist).
    pub token_file: Option<PathBuf>,
    /// What a GB (10^9 bytes) of upstream egress costs, for the status page.
    pub egress_price_per_gb: f64,
    pub currency: String,
}

impl Default for AdminConfig {
    fn default() -> AdminConfig {
        AdminConfig {
            token_file: None,
            // AWS's NAT gateway processing charge per GB, the cost a shared mirror saves.
            egress_price_per_gb: 0.045,
            currency: "USD".into(),
        }
    }
}

impl RawAdmin {
    pub(super) fn validate(
        self,
        admin_listen: Option<SocketAddr>,
        token_override: Option<PathBuf>,
        problems: &mut Problems,
    ) -> AdminConfig {
        let mut admin = AdminConfig {
            token_file: token_override.or(self.token_file),
            ..AdminConfig::default()
        };
        if admin
            .token_file
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            problems.add(
                "admin.token_file",
                "\"\"",
                "name a file holding the token, e.g. \"/etc/regcache/admin-token\"",
            );
            admin.token_file = None;
        }
        if let Some(addr) = admin_listen {
            if let Some(fix) = token_required(addr, admin.token_file.is_some()) {
                problems.add("admin.token_file", "", fix);
            }
        }
        if let Some(price) = self.egress_price_per_gb {
            if price.is_finite() && price >= 0.0 {
                admin.egress_price_per_gb = price;
            } else {
                problems.add(
                    "admin.egress_price_per_gb",
                    price,
                    "must be a price of 0 or more, e.g. 0.09",
                );
            }
        }
        if let Some(currency) = self.currency {
            if (1..=8).contains(&currency.len()) {
                admin.currency = currency;
            } else {
                problems.add(
                    "admin.currency",
                    format!("{currency:?}"),
                    "give a short currency code, e.g. \"USD\" or \"EUR\"",
                );
            }
        }
        admin
    }
}

/// Why an admin listener on `addr` may not run as configured: one other hosts can reach
/// serves the API (purge, pin) and the status page only behind a token.
pub fn token_required(addr: SocketAddr, has_token: bool) -> Option<String> {
    if has_token || addr.ip().to_canonical().is_loopback() {
        return None;
    }
    Some(format!(
        "required: admin_listen = {addr} is reachable from other hosts, so the admin API and \
         status page need a token (/metrics and /healthz stay open); set [admin] token_file = \
         \"/etc/regcache/admin-token\" (a missing file is created with a random token), or bind \
         admin_listen to 127.0.0.1:{}",
        addr.port()
    ))
}

#[cfg(test)]
mod tests {
    use crate::config::problems;

    #[test]
    fn an_exposed_admin_listener_needs_a_token_file() {
        let up = "[[upstream]]\nurl = \"http://127.0.0.1:1\"\n";
        let shown = problems(&format!("admin_listen = \"0.0.0.0:5001\"\n{up}"));
        assert_eq!(shown.len(), 1, "{shown:?}");
        assert!(shown[0].starts_with("admin.token_file: required: admin_listen = 0.0.0.0:5001"));
        assert!(shown[0].contains("127.0.0.1:5001"));
        let with_token =
            format!("admin_listen = \"0.0.0.0:5001\"\n[admin]\ntoken_file = \"/t\"\n{up}");
        assert!(problems(&with_token).is_empty());
        assert!(problems(&format!("admin_listen = \"[::1]:5001\"\n{up}")).is_empty());
    }

    #[test]
    fn prices_and_currencies_are_checked() {
        let shown = problems(
            "[admin]\negress_price_per_gb = -1.0\ncurrency = \"\"\n[[upstream]]\nurl = \"http://127.0.0.1:1\"\n",
        );
        assert_eq!(shown.len(), 2, "{shown:?}");
        assert!(shown[0].starts_with("admin.egress_price_per_gb = -1"));
        assert!(shown[1].starts_with("admin.currency"));
    }
}
