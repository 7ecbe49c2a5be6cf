//! Docker, BuildKit and podman/CRI-O (registries.conf): each reads its own mirror settings.

use std::path::Path;

use url::Url;

use super::containerd::which;
use super::{host_port, is_loopback, is_mirror, under, Finding, Options, Status};

pub fn inspect(options: &Options) -> Vec<Finding> {
    let mut found = docker(options);
    found.extend(buildkit(options));
    found.extend(containers(options));
    found
}

/// The file's text; `None` with a finding when it is missing (a failure only when the
/// runtime is installed here).
fn read(
    options: &Options,
    runtime: &'static str,
    file: &str,
    binaries: &[&str],
    fix: impl FnOnce() -> String,
    found: &mut Vec<Finding>,
) -> Option<String> {
    match std::fs::read_to_string(under(&options.root, file)) {
        Ok(text) => Some(text),
        Err(_) => {
            let installed = options.root == Path::new("/") && binaries.iter().any(|b| which(b));
            found.push(match installed {
                true => Finding::new(
                    runtime,
                    Status::Fail,
                    format!("no {file}: pulls bypass the mirror"),
                )
                .fix(fix()),
                false => Finding::new(runtime, Status::Absent, format!("no {file}")),
            });
            None
        }
    }
}

fn docker(options: &Options) -> Vec<Finding> {
    const RUNTIME: &str = "docker";
    const FILE: &str = "/etc/docker/daemon.json";
    let mirror = options.mirror.as_str().trim_end_matches('/');
    let fix = || {
        format!("write {FILE}:\n{{\"registry-mirrors\": [\"{mirror}\"]}}\nthen restart dockerd (Docker mirrors Docker Hub only)")
    };
    let mut found = Vec::new();
    let Some(text) = read(options, RUNTIME, FILE, &["dockerd"], fix, &mut found) else {
        return found;
    };
    let json: serde_json::Value = match serde_json::from_str(&text) {
        Ok(json) => json,
        Err(e) => {
            found.push(Finding::new(
                RUNTIME,
                Status::Fail,
                format!("{FILE} does not parse: {e}"),
            ));
            return found;
        }
    };
    let listed = |key: &str| -> Vec<String> {
        json.get(key)
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mirrors = listed("registry-mirrors");
    if !mirrors
        .iter()
        .any(|m| Url::parse(m).is_ok_and(|u| is_mirror(&u, &options.mirror)))
    {
        found.push(
            Finding::new(RUNTIME, Status::Fail, format!("{FILE}: registry-mirrors does not list {mirror}: Docker Hub pulls bypass the mirror"))
                .fix(format!("\"registry-mirrors\": [\"{mirror}\"] in {FILE}, then restart dockerd")),
        );
        return found;
    }
    found.push(Finding::new(
        RUNTIME,
        Status::Ok,
        format!("Docker Hub pulls go to {mirror} (Docker mirrors no other registry)"),
    ));
    let plain_remote = options.mirror.scheme() == "http" && !is_loopback(&options.mirror);
    if plain_remote && !listed("insecure-registries").contains(&host_port(&options.mirror)) {
        found.push(
            Finding::new(RUNTIME, Status::Fail, format!("{FILE}: the mirror is plain HTTP on another host, and dockerd refuses that unless it is listed as insecure"))
                .fix(format!("\"insecure-registries\": [\"{}\"]", host_port(&options.mirror))),
        );
    }
    found
}

fn buildkit(options: &Options) -> Vec<Finding> {
    const RUNTIME: &str = "buildkit";
    const FILE: &str = "/etc/buildkit/buildkitd.toml";
    let mirror = host_port(&options.mirror);
    let http = options.mirror.scheme() == "http";
    let snippet = format!(
        "[registry.\"docker.io\"]\n  mirrors = [\"{mirror}\"]{}",
        if http {
            format!("\n[registry.\"{mirror}\"]\n  http = true")
        } else {
            String::new()
        }
    );
    let fix = || format!("write {FILE} (BuildKit ignores dockerd's registry-mirrors):\n{snippet}");
    let mut found = Vec::new();
    let Some(text) = read(options, RUNTIME, FILE, &["buildkitd"], fix, &mut found) else {
        return found;
    };
    let Some(table) = parse_toml(RUNTIME, FILE, &text, &mut found) else {
        return found;
    };
    let registry = |name: &str| table.get("registry").and_then(|r| r.get(name));
    let mirrors: Vec<&str> = registry("docker.io")
        .and_then(|r| r.get("mirrors"))
        .and_then(|m| m.as_array())
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    if !mirrors
        .iter()
        .any(|m| m.trim_start_matches("http://") == mirror)
    {
        found.push(
            Finding::new(RUNTIME, Status::Fail, format!("{FILE}: registry.\"docker.io\" has no mirror {mirror}: builds pull from Docker Hub directly"))
                .fix(snippet),
        );
        return found;
    }
    let plain = registry(&mirror)
        .and_then(|r| r.get("http"))
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    if http && !plain {
        found.push(
            Finding::new(RUNTIME, Status::Fail, format!("{FILE}: {mirror} is plain HTTP but registry.\"{mirror}\" lacks http = true: BuildKit tries HTTPS and falls back to Docker Hub"))
                .fix(format!("[registry.\"{mirror}\"]\n  http = true")),
        );
    } else {
        found.push(Finding::new(
            RUNTIME,
            Status::Ok,
            format!("Docker Hub pulls in builds go to {mirror}"),
        ));
    }
    found
}

fn containers(options: &Options) -> Vec<Finding> {
    const RUNTIME: &str = "podman/cri-o";
    const FILE: &str = "/etc/containers/registries.conf";
    let mirror = host_port(&options.mirror);
    let http = options.mirror.scheme() == "http";
    let snippet = format!(
        "[[registry]]\nprefix = \"docker.io\"\nlocation = \"docker.io\"\n\n[[registry.mirror]]\nlocation = \"{mirror}/docker.io\"{}",
        if http { "\ninsecure = true" } else { "" }
    );
    let fix = || format!("add to {FILE}:\n{snippet}");
    let mut found = Vec::new();
    let binaries = ["podman", "crio", "skopeo", "buildah"];
    let Some(text) = read(options, RUNTIME, FILE, &binaries, fix, &mut found) else {
        return found;
    };
    let Some(table) = parse_toml(RUNTIME, FILE, &text, &mut found) else {
        return found;
    };
    let registries = table.get("registry").and_then(|r| r.as_array());
    let docker_hub = registries.and_then(|list| {
        list.iter().find(|r| {
            let field = |k: &str| r.get(k).and_then(|v| v.as_str());
            field("prefix").or(field("location")) == Some("docker.io")
        })
    });
    let entry = docker_hub
        .and_then(|r| r.get("mirror"))
        .and_then(|m| m.as_array())
        .and_then(|mirrors| {
            mirrors.iter().find(|m| {
                m.get("location")
                    .and_then(|l| l.as_str())
                    .is_some_and(|l| l.split('/').next() == Some(mirror.as_str()))
            })
        });
    let Some(entry) = entry else {
        found.push(
            Finding::new(RUNTIME, Status::Fail, format!("{FILE}: no docker.io registry with a mirror at {mirror}: pulls go to Docker Hub"))
                .fix(snippet),
        );
        return found;
    };
    let insecure = entry
        .get("insecure")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    if http && !insecure {
        found.push(
            Finding::new(RUNTIME, Status::Fail, format!("{FILE}: the mirror {mirror} is plain HTTP but its entry lacks insecure = true: pulls try HTTPS, fail and go to Docker Hub"))
                .fix("insecure = true in the [[registry.mirror]] table"),
        );
    } else {
        found.push(Finding::new(
            RUNTIME,
            Status::Ok,
            format!("docker.io pulls go to {mirror}, then Docker Hub"),
        ));
    }
    found
}

/// The file's TOML; `None` with a finding when it does not parse.
fn parse_toml(
    runtime: &'static str,
    file: &str,
    text: &str,
    found: &mut Vec<Finding>,
) -> Option<toml::Table> {
    match text.parse() {
        Ok(table) => Some(table),
        Err(e) => {
            let what = format!("{file} does not parse: {}", e.message());
            found.push(Finding::new(runtime, Status::Fail, what));
            None
        }
    }
}
