//! `regcache doctor` on a node's files: the shipped client snippets as a correctly set up
//! node, and the mistakes that make runtimes bypass a mirror, each named with its fix.

use std::path::Path;
use std::process::Command;

use super::{put, shipped};

/// Runs `regcache doctor --root root` (no probe): its exit status and output.
fn doctor(root: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_regcache"))
        .args(["doctor", "--mirror", "http://127.0.0.1:5000", "--root"])
        .arg(root)
        .output()
        .expect("run regcache doctor");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    (out.status.success(), text)
}

#[test]
fn a_node_set_up_with_the_shipped_snippets_passes_every_check() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    put(
        root,
        "etc/containerd/config.toml",
        &shipped("config/clients/containerd/config-v2.toml"),
    );
    put(
        root,
        "etc/containerd/certs.d/docker.io/hosts.toml",
        &shipped("config/clients/containerd/certs.d/docker.io/hosts.toml"),
    );
    put(
        root,
        "etc/docker/daemon.json",
        &shipped("config/clients/docker-daemon.json"),
    );
    put(
        root,
        "etc/buildkit/buildkitd.toml",
        &shipped("config/clients/buildkitd.toml"),
    );
    put(
        root,
        "etc/containers/registries.conf",
        &shipped("config/clients/registries.conf"),
    );
    let (ok, out) = doctor(root);
    assert!(ok, "{out}");
    assert!(out.contains("0 problem(s), 0 warning(s)"), "{out}");
    for runtime in ["containerd", "docker", "buildkit", "podman/cri-o"] {
        assert!(
            out.lines().any(|l| l == runtime),
            "{runtime} missing:\n{out}"
        );
    }
    assert!(
        out.contains("docker.io: pulls go to http://127.0.0.1:5000"),
        "{out}"
    );
}

#[test]
fn each_way_of_bypassing_the_mirror_is_named_with_its_fix() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    // containerd 2.x config listing two hosts directories (the transfer service then
    // ignores hosts.toml), a hosts.toml without server or dial_timeout, and a registry
    // directory whose hosts.toml does not name the mirror.
    put(
        root,
        "etc/containerd/config.toml",
        "version = 3\n[plugins.\"io.containerd.cri.v1.images\".registry]\n  config_path = \"/etc/containerd/certs.d:/etc/docker/certs.d\"\n",
    );
    put(
        root,
        "etc/containerd/certs.d/docker.io/hosts.toml",
        "[host.\"http://127.0.0.1:5000\"]\n  capabilities = [\"pull\"]\n",
    );
    put(
        root,
        "etc/containerd/certs.d/ghcr.io/hosts.toml",
        "server = \"https://ghcr.io\"\n[host.\"https://ghcr.io\"]\n",
    );
    put(
        root,
        "etc/docker/daemon.json",
        "{\"log-driver\": \"journald\"}",
    );
    put(
        root,
        "etc/buildkit/buildkitd.toml",
        "[registry.\"docker.io\"]\n  mirrors = [\"127.0.0.1:5000\"]\n",
    );
    put(
        root,
        "etc/containers/registries.conf",
        "unqualified-search-registries = [\"docker.io\"]\n",
    );
    // k3s with a registries.yaml it has not rendered yet.
    put(
        root,
        "etc/rancher/k3s/registries.yaml",
        "mirrors:\n  docker.io:\n    endpoint: [\"http://127.0.0.1:5000\"]\n",
    );
    let (ok, out) = doctor(root);
    assert!(!ok, "a broken node passed:\n{out}");
    let expected = [
        "config_path lists 2 directories",
        "set config_path = \"/etc/containerd/certs.d\" (one directory)",
        "docker.io: [host.\"http://127.0.0.1:5000\"] lacks the resolve capability",
        "has no server: when the mirror is down",
        "no dial_timeout for http://127.0.0.1:5000",
        "ghcr.io:",
        "does not list the mirror http://127.0.0.1:5000/",
        "registry-mirrors does not list http://127.0.0.1:5000: Docker Hub pulls bypass the mirror",
        "lacks http = true",
        "no docker.io registry with a mirror at 127.0.0.1:5000",
        "k3s has not rendered it into hosts.toml",
    ];
    for needle in expected {
        assert!(out.contains(needle), "{needle:?} missing from:\n{out}");
    }
    // Every failure carries its fix.
    let fails = out.lines().filter(|l| l.contains("[FAIL]")).count();
    let fixes = out
        .lines()
        .filter(|l| l.trim_start().starts_with("fix:"))
        .count();
    assert!(
        fails >= 7 && fixes >= fails,
        "{fails} failures, {fixes} fixes:\n{out}"
    );
}

#[test]
fn a_node_without_runtimes_has_nothing_to_fix() {
    let root = tempfile::tempdir().unwrap();
    let (ok, out) = doctor(root.path());
    assert!(ok, "{out}");
    assert!(
        out.contains("[--  ] no /etc/containerd/config.toml"),
        "{out}"
    );
}
