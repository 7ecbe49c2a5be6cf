//! containerd: its config's `config_path` and the hosts.toml of each registry there; k3s
//! and RKE2 render registries.yaml into the same hosts.toml form, checked the same way.

use std::path::{Path, PathBuf};
use std::process::Command;

use url::Url;

use super::{is_mirror, under, Finding, Options, Status};

const RUNTIME: &str = "containerd";
const CONFIG: &str = "/etc/containerd/config.toml";

/// Where k3s and RKE2 write the hosts.toml they render from their registries.yaml.
const RENDERED: [(&str, &str, &str); 2] = [
    (
        "k3s",
        "/etc/rancher/k3s/registries.yaml",
        "/var/lib/rancher/k3s/agent/etc/containerd/certs.d",
    ),
    (
        "rke2",
        "/etc/rancher/rke2/registries.yaml",
        "/var/lib/rancher/rke2/agent/etc/containerd/certs.d",
    ),
];

pub fn inspect(options: &Options) -> Vec<Finding> {
    let mut found = Vec::new();
    let path = under(&options.root, CONFIG);
    let installed = options.root == Path::new("/") && which("containerd");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(_) if installed => {
            found.push(
                Finding::new(RUNTIME, Status::Fail, format!("{CONFIG} is missing: the CRI plugin's config_path is empty, so no hosts.toml is read"))
                    .fix(format!("write {CONFIG} with\n{}", config_snippet(2))),
            );
            return found;
        }
        Err(_) => {
            found.push(Finding::new(
                RUNTIME,
                Status::Absent,
                format!("no {CONFIG}"),
            ));
            return rendered(options, found);
        }
    };
    let table: toml::Table = match text.parse() {
        Ok(table) => table,
        Err(e) => {
            let what = format!("{CONFIG} does not parse: {}", e.message());
            found.push(Finding::new(RUNTIME, Status::Fail, what));
            return found;
        }
    };
    let version = table
        .get("version")
        .and_then(|v| v.as_integer())
        .unwrap_or(1);
    let plugin = match version {
        3 => "io.containerd.cri.v1.images",
        _ => "io.containerd.grpc.v1.cri",
    };
    let registry = table
        .get("plugins")
        .and_then(|p| p.get(plugin))
        .and_then(|p| p.get("registry"));
    if registry.and_then(|r| r.get("mirrors")).is_some() {
        found.push(
            Finding::new(RUNTIME, Status::Warn, "registry.mirrors is set: deprecated, and ignored once config_path is set")
                .fix("remove the registry.mirrors tables; mirrors belong in hosts.toml under config_path"),
        );
    }
    let Some(config_path) = registry
        .and_then(|r| r.get("config_path"))
        .and_then(|v| v.as_str())
        .filter(|p| !p.is_empty())
    else {
        found.push(
            Finding::new(RUNTIME, Status::Fail, format!("{CONFIG} (version {version}) sets no config_path: containerd reads no hosts.toml and pulls go straight to the registries"))
                .fix(format!("add to {CONFIG}, then restart containerd:\n{}", config_snippet(version))),
        );
        return found;
    };
    let dirs: Vec<&str> = config_path.split(':').filter(|d| !d.is_empty()).collect();
    if dirs.len() > 1 {
        let version = containerd_version(options);
        let transfer = version.is_none_or(|(major, minor)| (major, minor) >= (2, 1));
        let status = if transfer { Status::Fail } else { Status::Warn };
        found.push(
            Finding::new(RUNTIME, status, format!("config_path lists {} directories: containerd 2.1 and 2.2 pulling through the transfer service ignore hosts.toml then", dirs.len()))
                .fix(format!("set config_path = \"{}\" (one directory) and restart containerd", dirs[0])),
        );
    } else {
        found.push(Finding::new(
            RUNTIME,
            Status::Ok,
            format!("{CONFIG} (version {version}): config_path = \"{config_path}\""),
        ));
    }
    check_hosts_dir(options, RUNTIME, &under(&options.root, dirs[0]), &mut found);
    rendered(options, found)
}

/// The directory containerd reads hosts.toml from (the first of `config_path`), if set.
pub fn hosts_dir(options: &Options) -> Option<PathBuf> {
    let text = std::fs::read_to_string(under(&options.root, CONFIG)).ok()?;
    let table: toml::Table = text.parse().ok()?;
    let plugin = match table.get("version").and_then(|v| v.as_integer()) {
        Some(3) => "io.containerd.cri.v1.images",
        _ => "io.containerd.grpc.v1.cri",
    };
    let path = table
        .get("plugins")?
        .get(plugin)?
        .get("registry")?
        .get("config_path")?
        .as_str()?;
    let first = path.split(':').find(|d| !d.is_empty())?;
    Some(under(&options.root, first))
}

/// The hosts.toml k3s and RKE2 render, when their registries.yaml exists.
fn rendered(options: &Options, mut found: Vec<Finding>) -> Vec<Finding> {
    for (runtime, yaml, dir) in RENDERED {
        if !under(&options.root, yaml).exists() {
            continue;
        }
        let dir = under(&options.root, dir);
        if !dir.exists() {
            found.push(
                Finding::new(
                    runtime,
                    Status::Fail,
                    format!("{yaml} exists but {runtime} has not rendered it into hosts.toml"),
                )
                .fix(format!(
                    "restart {runtime} so it rewrites its containerd config"
                )),
            );
            continue;
        }
        check_hosts_dir(options, runtime, &dir, &mut found);
    }
    found
}

/// docker.io and every registry with a directory under `dir`.
fn check_hosts_dir(options: &Options, runtime: &'static str, dir: &Path, found: &mut Vec<Finding>) {
    let mut registries = vec!["docker.io".to_string()];
    if let Ok(entries) = std::fs::read_dir(dir) {
        let mut more: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|name| name != "docker.io" && name != "_default")
            .collect();
        more.sort();
        registries.extend(more);
    }
    for registry in registries {
        found.extend(check_hosts(
            runtime,
            &dir.join(&registry),
            &registry,
            &options.mirror,
        ));
    }
}

/// One registry's hosts.toml.
fn check_hosts(runtime: &'static str, dir: &Path, registry: &str, mirror: &Url) -> Vec<Finding> {
    let path = dir.join("hosts.toml");
    let shown = path.display();
    let Ok(text) = std::fs::read_to_string(&path) else {
        return vec![Finding::new(
            runtime,
            Status::Fail,
            format!("{registry}: no {shown}: its pulls go straight to the registry"),
        )
        .fix(format!(
            "write {shown}:\n{}",
            hosts_snippet(registry, mirror)
        ))];
    };
    let table: toml::Table = match text.parse() {
        Ok(table) => table,
        Err(e) => {
            return vec![Finding::new(
                runtime,
                Status::Fail,
                format!("{registry}: {shown} does not parse: {}", e.message()),
            )];
        }
    };
    let mut found = Vec::new();
    let hosts = table.get("host").and_then(|h| h.as_table());
    let entry = hosts.and_then(|hosts| {
        hosts
            .iter()
            .find(|(key, _)| Url::parse(key).is_ok_and(|u| is_mirror(&u, mirror)))
    });
    let Some((key, entry)) = entry else {
        found.push(
            Finding::new(
                runtime,
                Status::Fail,
                format!("{registry}: {shown} does not list the mirror {mirror}"),
            )
            .fix(format!(
                "replace {shown} with:\n{}",
                hosts_snippet(registry, mirror)
            )),
        );
        return found;
    };
    let capabilities: Vec<&str> = entry
        .get("capabilities")
        .and_then(|c| c.as_array())
        .map(|c| c.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_else(|| vec!["pull", "resolve", "push"]);
    for needed in ["pull", "resolve"] {
        if !capabilities.contains(&needed) {
            let why = match needed {
                "pull" => "blobs are not pulled through the mirror",
                _ => "tags are resolved at the registry (the requests Docker Hub counts)",
            };
            found.push(
                Finding::new(
                    runtime,
                    Status::Fail,
                    format!("{registry}: [host.\"{key}\"] lacks the {needed} capability: {why}"),
                )
                .fix("capabilities = [\"pull\", \"resolve\"]"),
            );
        }
    }
    match table.get("server").and_then(|s| s.as_str()) {
        None => found.push(
            Finding::new(runtime, Status::Warn, format!("{registry}: {shown} has no server: when the mirror is down, pulls fail instead of falling back to the registry"))
                .fix(format!("server = \"{}\"", registry_url(registry))),
        ),
        Some(server) => found.push(Finding::new(runtime, Status::Ok, format!("{registry}: pulls go to {key}, falling back to {server}"))),
    }
    if entry.get("dial_timeout").is_none() {
        found.push(
            Finding::new(runtime, Status::Warn, format!("{registry}: no dial_timeout for {key}: an unreachable mirror costs about 30 s per request before the fallback"))
                .fix("dial_timeout = \"2s\" in the host table (containerd 2.0.7 and later honour it; 1.6 and 1.7 wait regardless)"),
        );
    }
    found
}

/// The registry's own API address, as a hosts.toml `server`.
fn registry_url(registry: &str) -> String {
    match registry {
        "docker.io" => "https://registry-1.docker.io".into(),
        other => format!("https://{other}"),
    }
}

fn hosts_snippet(registry: &str, mirror: &Url) -> String {
    let mirror = mirror.as_str().trim_end_matches('/');
    format!(
        "server = \"{}\"\n\n[host.\"{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  dial_timeout = \"2s\"",
        registry_url(registry)
    )
}

fn config_snippet(version: i64) -> String {
    match version {
        3 => "version = 3\n[plugins.\"io.containerd.cri.v1.images\".registry]\n  config_path = \"/etc/containerd/certs.d\"".into(),
        _ => "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"".into(),
    }
}

/// containerd's (major, minor), when its binary runs here.
fn containerd_version(options: &Options) -> Option<(u32, u32)> {
    if options.root != Path::new("/") {
        return None;
    }
    let out = Command::new("containerd").arg("--version").output().ok()?;
    parse_version(&String::from_utf8_lossy(&out.stdout))
}

/// `containerd github.com/containerd/containerd v1.6.20 ...` -> (1, 6).
fn parse_version(text: &str) -> Option<(u32, u32)> {
    let word = text.split_whitespace().find(|w| {
        w.trim_start_matches('v')
            .split('.')
            .take(2)
            .all(|n| n.parse::<u32>().is_ok())
            && w.contains('.')
    })?;
    let mut parts = word.trim_start_matches('v').split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

pub(super) fn which(binary: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(binary).is_file()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_the_version_line() {
        let line = "containerd github.com/containerd/containerd v1.6.20~ds1 1.6.20~ds1-1+b1";
        assert_eq!(parse_version(line), Some((1, 6)));
        assert_eq!(
            parse_version("containerd containerd.io 2.1.4 75cb2b7"),
            Some((2, 1))
        );
        assert_eq!(parse_version("nothing here"), None);
    }
}
