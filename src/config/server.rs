//! `[server]`: how the listeners treat clients: connection limits (in all and per client
//! address), header limits, timeouts for idle and slow clients, the shutdown grace
//! period, TLS certificate files, and (in `[server.auth]`, see `auth`) who may connect.
//!
//! Every limit has a safe default so an operator who writes nothing still gets a mirror
//! that one misbehaving client cannot exhaust.

use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

use super::auth::{AuthConfig, RawAuth};
use super::Problems;

/// hyper cannot buffer less than this for an HTTP/1.1 request head.
const MIN_HEADER_BYTES: u64 = 8 * 1024;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    max_connections: Option<usize>,
    max_connections_per_ip: Option<usize>,
    header_read_timeout_secs: Option<u64>,
    max_header_bytes: Option<ByteSize>,
    max_headers: Option<usize>,
    max_streams_per_connection: Option<u32>,
    idle_timeout_secs: Option<u64>,
    send_timeout_secs: Option<u64>,
    shutdown_grace_secs: Option<u64>,
    tls_cert_file: Option<PathBuf>,
    tls_key_file: Option<PathBuf>,
    #[serde(default)]
    auth: RawAuth,
}

/// Validated `[server]` settings.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Connections held at once on each listener; more are closed on accept.
    pub max_connections: usize,
    /// Connections held at once from one client address on each listener, so one host
    /// cannot take every connection; more are closed on accept.
    pub max_connections_per_ip: usize,
    /// Time to receive a request head (HTTP/1.1: also the keep-alive wait between requests).
    pub header_read_timeout: Duration,
    /// Bytes of request line and headers; larger heads get 431.
    pub max_header_bytes: usize,
    /// Number of request headers (HTTP/1.1); more get 431.
    pub max_headers: usize,
    /// Concurrent h2 streams one connection may open.
    pub max_streams_per_connection: u32,
    /// A connection with no request in flight and no bytes moving is closed after this.
    pub idle_timeout: Duration,
    /// A write to a client that makes no progress for this long aborts the connection, and
    /// so does an h2 stream whose client opens no window for it for this long.
    pub send_timeout: Duration,
    /// How long transfers in flight may go on after shutdown was asked for.
    pub shutdown_grace: Duration,
    pub tls: Option<TlsFiles>,
    pub auth: AuthConfig,
}

/// PEM files of the serving certificate chain and its private key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Default for ServerConfig {
    fn default() -> Self {
        RawServer::default().validate(&mut Problems::default())
    }
}

impl RawServer {
    pub(super) fn validate(self, problems: &mut Problems) -> ServerConfig {
        let mut secs = |value: Option<u64>, default: u64, key: &str| {
            let v = value.unwrap_or(default);
            if v == 0 {
                problems.add(format!("server.{key}"), "0", "must be at least 1 second");
            }
            Duration::from_secs(v.max(1))
        };
        let header_read_timeout = secs(
            self.header_read_timeout_secs,
            30,
            "header_read_timeout_secs",
        );
        let idle_timeout = secs(self.idle_timeout_secs, 60, "idle_timeout_secs");
        let send_timeout = secs(self.send_timeout_secs, 60, "send_timeout_secs");
        let shutdown_grace = secs(self.shutdown_grace_secs, 30, "shutdown_grace_secs");
        let max_connections = self.max_connections.unwrap_or(1024);
        if max_connections == 0 {
            problems.add(
                "server.max_connections",
                "0",
                "must be at least 1; it caps connections held at once",
            );
        }
        let max_connections_per_ip = self.max_connections_per_ip.unwrap_or(64);
        if max_connections_per_ip == 0 {
            problems.add(
                "server.max_connections_per_ip",
                "0",
                "must be at least 1; it caps connections from one client address (try 64)",
            );
        }
        let header_bytes = self.max_header_bytes.map_or(64 * 1024, |b| b.as_u64());
        if !(MIN_HEADER_BYTES..=u64::from(u32::MAX)).contains(&header_bytes) {
            problems.add(
                "server.max_header_bytes",
                ByteSize(header_bytes),
                "must be between 8KiB and 4GiB; 64KiB suits every registry client",
            );
        }
        let max_headers = self.max_headers.unwrap_or(100);
        if max_headers == 0 {
            problems.add("server.max_headers", "0", "must be at least 1; try 100");
        }
        // Registry clients pull a handful of layers at once; each stream may pin a read
        // buffer while its client holds its window shut.
        let max_streams = self.max_streams_per_connection.unwrap_or(100);
        if max_streams == 0 {
            problems.add(
                "server.max_streams_per_connection",
                "0",
                "must be at least 1; the default is 100",
            );
        }
        let tls = match (self.tls_cert_file, self.tls_key_file) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            (cert, _) => {
                let (given, missing) = if cert.is_some() {
                    ("server.tls_cert_file", "server.tls_key_file")
                } else {
                    ("server.tls_key_file", "server.tls_cert_file")
                };
                problems.add(
                    missing,
                    "",
                    format!("is required when {given} is set; give both PEM files or neither"),
                );
                None
            }
        };
        ServerConfig {
            max_connections: max_connections.max(1),
            max_connections_per_ip: max_connections_per_ip.max(1),
            header_read_timeout,
            max_header_bytes: header_bytes.clamp(MIN_HEADER_BYTES, u64::from(u32::MAX)) as usize,
            max_headers: max_headers.max(1),
            max_streams_per_connection: max_streams.max(1),
            idle_timeout,
            send_timeout,
            shutdown_grace,
            tls,
            auth: self.auth.validate(problems),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (ServerConfig, Vec<String>) {
        let raw: RawServer = toml::from_str(text).unwrap();
        let mut problems = Problems::default();
        let config = raw.validate(&mut problems);
        (config, problems.0.iter().map(|p| p.to_string()).collect())
    }

    #[test]
    fn defaults_are_bounded() {
        let (c, problems) = parse("");
        assert!(problems.is_empty());
        assert_eq!(c.max_connections, 1024);
        assert_eq!(c.max_connections_per_ip, 64);
        assert_eq!(c.max_header_bytes, 64 * 1024);
        assert_eq!(c.send_timeout, Duration::from_secs(60));
        assert!(c.tls.is_none());
    }

    #[test]
    fn bad_values_name_the_key_and_the_fix() {
        let (_, problems) = parse(
            "max_connections = 0\nmax_connections_per_ip = 0\nmax_header_bytes = \"1KiB\"\nsend_timeout_secs = 0\ntls_cert_file = \"c.pem\"",
        );
        assert_eq!(problems.len(), 5, "{problems:?}");
        assert!(problems
            .iter()
            .any(|p| p.starts_with("server.max_connections_per_ip = 0")));
        assert!(problems[0].starts_with("server.send_timeout_secs = 0"));
        assert!(problems
            .iter()
            .any(|p| p.starts_with("server.tls_key_file: is required")));
        assert!(problems.iter().any(|p| p.contains("between 8KiB")));
    }
}
