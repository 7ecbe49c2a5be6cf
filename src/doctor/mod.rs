//! `regcache doctor`: whether the runtimes on this node pull through the mirror. The most
//! common failure of a mirror is a runtime that silently bypasses it, so this reads each
//! runtime's own configuration (containerd and its hosts.toml, k3s/RKE2's rendered copy,
//! Docker, BuildKit, podman/CRI-O), says for each what it will do and the exact fix where
//! it will not, and with `--probe` pulls through the runtimes it can drive and confirms
//! in the daemon's own counters that the requests arrived.
//!
//! Reading is all it does to the node: every path is under `--root` (fixtures in tests).

mod containerd;
mod others;
mod probe;

use std::fmt;
use std::path::{Path, PathBuf};

use url::Url;

pub use probe::probe;

/// What to inspect, and the mirror the runtimes should use.
pub struct Options {
    /// Prefix of every file read (`/` on a node).
    pub root: PathBuf,
    /// The registry API of the mirror, as runtimes reach it.
    pub mirror: Url,
    /// The mirror's admin listener, for `/metrics`.
    pub admin: Url,
    /// An image to pull through each runtime that can be driven, when given.
    pub probe: Option<String>,
    /// containerd's socket, for the probe.
    pub containerd_address: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Works, with a risk worth fixing.
    Warn,
    /// Pulls bypass the mirror (or fail).
    Fail,
    /// Not installed here: nothing to check.
    Absent,
}

/// One line of the checklist.
#[derive(Clone, Debug)]
pub struct Finding {
    pub runtime: &'static str,
    pub status: Status,
    pub what: String,
    pub fix: Option<String>,
}

impl Finding {
    pub fn new(runtime: &'static str, status: Status, what: impl Into<String>) -> Finding {
        Finding {
            runtime,
            status,
            what: what.into(),
            fix: None,
        }
    }

    pub fn fix(mut self, fix: impl Into<String>) -> Finding {
        self.fix = Some(fix.into());
        self
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mark = match self.status {
            Status::Ok => "ok  ",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
            Status::Absent => "--  ",
        };
        write!(f, "  [{mark}] {}", self.what)?;
        if let Some(fix) = &self.fix {
            for (n, line) in fix.lines().enumerate() {
                let lead = if n == 0 { "fix: " } else { "     " };
                write!(f, "\n         {lead}{line}")?;
            }
        }
        Ok(())
    }
}

/// Every runtime's configuration, checked.
pub fn inspect(options: &Options) -> Vec<Finding> {
    let mut found = containerd::inspect(options);
    found.extend(others::inspect(options));
    found
}

/// The checklist as printed, grouped by runtime in the order found.
pub fn render(findings: &[Finding]) -> String {
    let mut out = String::new();
    let mut last = "";
    for finding in findings {
        if finding.runtime != last {
            out.push_str(finding.runtime);
            out.push('\n');
            last = finding.runtime;
        }
        out.push_str(&finding.to_string());
        out.push('\n');
    }
    let failed = findings.iter().filter(|f| f.status == Status::Fail).count();
    let warned = findings.iter().filter(|f| f.status == Status::Warn).count();
    out.push_str(&format!("{failed} problem(s), {warned} warning(s)\n"));
    out
}

/// `path` under the inspected root.
fn under(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// Whether `url` (a host entry of a runtime's config) is the mirror: same scheme, port and
/// host, `localhost` and loopback addresses taken as one.
fn is_mirror(url: &Url, mirror: &Url) -> bool {
    let same_host =
        url.host_str() == mirror.host_str() || (is_loopback(url) && is_loopback(mirror));
    url.scheme() == mirror.scheme()
        && same_host
        && url.port_or_known_default() == mirror.port_or_known_default()
}

/// Whether `url` names this machine: `localhost` or a loopback address.
fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// The mirror as `host:port`, the form BuildKit, Docker's insecure list and
/// registries.conf write.
fn host_port(mirror: &Url) -> String {
    let host = mirror.host_str().unwrap_or_default();
    match mirror.port_or_known_default() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    }
}
