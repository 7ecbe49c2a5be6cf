#!/usr/bin/env python3
"""Checks config/kubernetes: renders every base and overlay with `kubectl kustomize`,
validates each object against the schemas of several Kubernetes releases
(kubernetes-validate, from the virtualenv target/venv), and checks what schemas cannot:
pinned images, probes, no privileged containers, root only for the two init containers
that write node directories, hostPath volumes only where HOSTPATHS says, resources, the
ServiceMonitor, and that the regcache configs and hosts.toml files agree with the
manifests that run them (an admin listener other hosts reach has its token_file in a
mounted, non-optional Secret). With a built regcache (target/debug or target/release, or
$REGCACHE_BIN) every config also passes `regcache check-config`.

Needs kubectl ($KUBECTL, default `kubectl`; kustomize v2.0.3 of kubectl 1.20 or later),
PyYAML (Debian: python3-yaml) and Python 3.11 (tomllib). Installs nothing: a missing
prerequisite exits 2. Prints `kubernetes: N passed, M failed` last and exits 1 on a
failure; -v lists every check.
"""

import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import namedtuple
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "config" / "kubernetes"
VENV = ROOT / "target" / "venv" / "bin"
NAMESPACE = "regcache"
# An old release still in providers' extended support, and newer ones.
VERSIONS = ("1.29", "1.33", "1.37")
REGCACHE_IMAGE = "ghcr.io/regcache/regcache"
WORKLOADS = ("Deployment", "DaemonSet", "StatefulSet")
CERTS_D = "/etc/containerd/certs.d"

# The only hostPath volumes, by workload and volume name: the node's path and the
# containers that may mount it.
HOSTPATHS = {
    ("DaemonSet/regcache-node-local", "containerd-certs"): (CERTS_D, {"hosts-toml"}),
    ("DaemonSet/regcache-node-local", "cache"): ("/var/lib/regcache", {"regcache", "cache-owner"}),
}
# The only containers that run as root, to write root-owned node directories.
ROOT_CONTAINERS = {
    ("DaemonSet/regcache-node-local", "hosts-toml"),
    ("DaemonSet/regcache-node-local", "cache-owner"),
}
# What a client-side `kubectl apply` can keep in its last-applied annotation.
APPLY_MAX_BYTES = 256 * 1024

# Run by the virtualenv's interpreter, where kubernetes-validate lives.
VALIDATE = r"""
import json, sys
import kubernetes_validate.utils as kv
request = json.load(sys.stdin)
shipped = sorted({kv.major_minor(v) for v in kv.all_versions()})
results = []
for i, doc in enumerate(request["docs"]):
    for version in request["versions"]:
        if version not in shipped:
            continue
        try:
            kv.validate(doc, version, strict=True)
            results.append([i, version, None])
        except kv.ValidationError as e:
            where = ".".join(str(p) for p in e.absolute_path) or "(top)"
            results.append([i, version, f"{where}: {e.message}"])
        except kv.SchemaNotFoundError as e:
            results.append([i, version, e.message])
json.dump({"shipped": shipped, "results": results}, sys.stdout)
"""


def missing(message):
    print(f"kubernetes: {message}", file=sys.stderr)
    sys.exit(2)


try:
    import tomllib

    import yaml
except ImportError as e:
    missing(f"{e}: needs PyYAML (Debian: python3-yaml) and Python 3.11 or later (tomllib)")

# A regcache config and a hosts.toml as found mounted into a rendered container.
RegcacheConfig = namedtuple("RegcacheConfig", "where source text toml")
HostsFile = namedtuple("HostsFile", "where source registry text")


class Checks:
    def __init__(self, verbose):
        self.verbose = verbose
        self.passed = 0
        self.failures = []
        self.configs = []
        self.hosts = []

    def check(self, where, what, ok, why=""):
        if ok:
            self.passed += 1
            if self.verbose:
                print(f"ok {where}: {what}")
        else:
            self.failures.append(f"{where}: {what}" + (f": {why}" if why else ""))
        return ok


def rel(path):
    return str(Path(path).relative_to(ROOT))


def name_of(doc):
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def render(kubectl, directory):
    run = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True)
    if run.returncode != 0:
        # Newer kustomize warns about the v2 fields used on purpose: not the error.
        lines = [l for l in run.stderr.splitlines() if not l.startswith("# Warning:")]
        return None, "\n".join(lines).strip()
    return [d for d in yaml.safe_load_all(run.stdout) if d], ""


def walk(value, path=""):
    """Every (path, key, value) in a document."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield path, k, v
            yield from walk(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from walk(v, f"{path}[{i}]")


def image_pinned(image):
    if "@sha256:" in image:
        return True
    last = image.rsplit("/", 1)[-1]
    return ":" in last and last.rsplit(":", 1)[1] not in ("", "latest")


def repository(image):
    head, _, last = image.split("@", 1)[0].rpartition("/")
    last = last.split(":", 1)[0]
    return f"{head}/{last}" if head else last


def port_of(address):
    return int(address.rsplit(":", 1)[1])


def host_of(address):
    return ipaddress.ip_address(address.rsplit(":", 1)[0].strip("[]"))


def labels_match(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def pod_labels(workload):
    return workload["spec"]["template"]["metadata"].get("labels", {})


def container_port(container, port):
    """A probe's or Service's port (a name or a number) as a number, or None."""
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    return None


def service_ports(service):
    return [p["port"] for p in service["spec"].get("ports", [])]


def service_named(host, services):
    """The rendered Service that <name>.<namespace>.svc.cluster.local names, or None."""
    parts = (host or "").split(".")
    if len(parts) != 5 or parts[2:] != ["svc", "cluster", "local"]:
        return None
    return services.get((parts[1], parts[0]))


def mounted_files(container, spec, objects):
    """Path -> (kind, object name, key, text or None, optional) of each ConfigMap or
    Secret key mounted into a container, through configMap, secret and projected volumes;
    optional is the source's `optional` (True: the pod starts without the object)."""
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    files = {}
    for mount in container.get("volumeMounts", []):
        volume = volumes.get(mount["name"], {})
        sources = list(volume.get("projected", {}).get("sources", []))
        if "configMap" in volume:
            sources.append({"configMap": volume["configMap"]})
        if "secret" in volume:
            sources.append({"secret": {"name": volume["secret"]["secretName"], **volume["secret"]}})
        for source in sources:
            kind = next((k for k in ("configMap", "secret") if k in source), None)
            if kind is None:
                continue
            ref = source[kind]
            data = {}
            if kind == "configMap":
                data = objects.get(("ConfigMap", ref["name"]), {}).get("data", {})
            for item in ref.get("items") or [{"key": k, "path": k} for k in data]:
                path = f"{mount['mountPath'].rstrip('/')}/{item['path']}"
                files[path] = (kind, ref["name"], item["key"], data.get(item["key"]),
                               ref.get("optional") is True)
    return files


def object_checks(c, where, doc, docs):
    ref = name_of(doc)
    meta = doc.get("metadata", {})
    if doc["kind"] == "Namespace":
        in_namespace = meta.get("name") == NAMESPACE
    else:
        in_namespace = meta.get("namespace") == NAMESPACE
    c.check(where, f"{ref}: in namespace {NAMESPACE}", in_namespace,
            f"namespace {meta.get('namespace')}")
    privileged = [p for p, k, v in walk(doc) if k == "privileged" and v is True]
    c.check(where, f"{ref}: no privileged: true", not privileged, ", ".join(privileged))
    size = len(json.dumps(doc))
    c.check(where, f"{ref}: small enough for a client-side kubectl apply",
            size < APPLY_MAX_BYTES, f"{size} bytes; use kubectl apply --server-side")
    if doc["kind"] in ("Service", "PodDisruptionBudget"):
        selector = doc["spec"].get("selector", {})
        if doc["kind"] == "PodDisruptionBudget":
            selector = selector.get("matchLabels", {})
        workloads = [w for w in docs if w["kind"] in WORKLOADS]
        c.check(where, f"{ref}: selector matches a workload's pods",
                any(labels_match(selector, pod_labels(w)) for w in workloads),
                json.dumps(selector))


def service_monitor_checks(c, where, doc, docs):
    """Not in kubernetes-validate's schemas: what the Prometheus operator needs."""
    ref = name_of(doc)
    c.check(where, f"{ref}: apiVersion monitoring.coreos.com/v1, kind ServiceMonitor",
            doc["apiVersion"] == "monitoring.coreos.com/v1" and doc["kind"] == "ServiceMonitor")
    spec = doc.get("spec", {})
    selector = spec.get("selector", {}).get("matchLabels", {})
    endpoints = spec.get("endpoints", [])
    c.check(where, f"{ref}: one endpoint, port admin, path /metrics",
            [(e.get("port"), e.get("path")) for e in endpoints] == [("admin", "/metrics")],
            json.dumps(endpoints))
    scraped = [
        s for s in docs
        if s["kind"] == "Service"
        and labels_match(selector, s["metadata"].get("labels", {}))
        and "admin" in [p.get("name") for p in s["spec"].get("ports", [])]
    ]
    # Two Services with the port would scrape every replica twice.
    c.check(where, f"{ref}: selects exactly one Service with an admin port", len(scraped) == 1,
            str([name_of(s) for s in scraped]))
    for service in scraped:
        port = next(p for p in service["spec"]["ports"] if p["name"] == "admin")
        containers = [
            k for w in docs
            if w["kind"] in WORKLOADS and labels_match(service["spec"].get("selector"), pod_labels(w))
            for k in w["spec"]["template"]["spec"]["containers"]
        ]
        c.check(where, f"{ref}: {name_of(service)} port admin reaches the pods' admin port", any(
            container_port(k, "admin") is not None
            and container_port(k, port["targetPort"]) == container_port(k, "admin")
            for k in containers
        ))


def pod_checks(c, where, doc, objects, services):
    ref = name_of(doc)
    spec = doc["spec"]["template"]["spec"]
    pod_sc = spec.get("securityContext", {})
    containers = spec.get("initContainers", []) + spec.get("containers", [])

    c.check(where, f"{ref}: no hostPID or hostIPC", not spec.get("hostPID") and not spec.get("hostIPC"))
    allowed_list = ", ".join(f"{w} {v} ({p})" for (w, v), (p, _) in HOSTPATHS.items())
    for volume in spec.get("volumes", []):
        if "hostPath" not in volume:
            continue
        name, path = volume["name"], volume["hostPath"]["path"]
        allowed = HOSTPATHS.get((ref, name))
        c.check(where, f"{ref}: hostPath volume {name!r} is one of {allowed_list}",
                allowed is not None and path == allowed[0], f"path {path}")
        if allowed:
            users = {k["name"] for k in containers
                     for m in k.get("volumeMounts", []) if m["name"] == name}
            c.check(where, f"{ref}: hostPath {name!r} mounted only by {sorted(allowed[1])}",
                    users <= allowed[1], f"mounted by {sorted(users)}")

    for k in containers:
        who = f"{ref} container {k['name']}"
        image = k.get("image", "")
        c.check(where, f"{who}: image {image!r} pinned to a tag or digest, not latest",
                image_pinned(image))
        res = k.get("resources", {})
        c.check(where, f"{who}: requests cpu and memory, limits memory",
                {"cpu", "memory"} <= set(res.get("requests", {})) and "memory" in res.get("limits", {}),
                json.dumps(res))
        sc = k.get("securityContext", {})
        c.check(where, f"{who}: no privilege escalation, read-only root, capabilities drop ALL",
                sc.get("allowPrivilegeEscalation") is False
                and sc.get("readOnlyRootFilesystem") is True
                and "ALL" in sc.get("capabilities", {}).get("drop", []),
                json.dumps(sc))
        non_root = (
            sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True
            and sc.get("runAsUser", pod_sc.get("runAsUser")) not in (0, None)
        )
        c.check(where, f"{who}: runs as non-root (only {sorted(n for _, n in ROOT_CONTAINERS)} may not)",
                non_root or (ref, k["name"]) in ROOT_CONTAINERS)
        if repository(image) == REGCACHE_IMAGE:
            c.check(where, f"{who}: regcache runs as non-root", non_root)
            regcache_checks(c, where, who, doc, k, objects, services)
        writes_hosts = any(HOSTPATHS.get((ref, m["name"]), ("",))[0] == CERTS_D
                           for m in k.get("volumeMounts", []))
        if writes_hosts:
            for kind, obj, key, text, _ in mounted_files(k, spec, objects).values():
                c.hosts.append(HostsFile(where, f"{who}: ConfigMap/{obj} {key}", key, text))


def regcache_checks(c, where, who, doc, k, objects, services):
    """A regcache container against the config it is given."""
    spec = doc["spec"]["template"]["spec"]
    args = k.get("args", [])
    path = args[args.index("--config") + 1] if "--config" in args[:-1] else None
    files = mounted_files(k, spec, objects)
    found = files.get(path)
    if not c.check(where, f"{who}: --config names a mounted ConfigMap file",
                   found is not None and found[3] is not None, f"--config {path}"):
        return
    source = f"{who}: ConfigMap/{found[1]} {found[2]}"
    try:
        config = tomllib.loads(found[3])
    except tomllib.TOMLDecodeError as e:
        c.check(where, f"{source}: parses as TOML", False, str(e))
        return
    c.configs.append(RegcacheConfig(where, source, found[3], config))

    admin = config.get("admin_listen")
    if c.check(where, f"{source}: admin_listen is set (probes, metrics)", admin is not None):
        for probe in ("readinessProbe", "livenessProbe"):
            get = k.get(probe, {}).get("httpGet", {})
            c.check(where, f"{who}: {probe} is GET /healthz on admin_listen's port {port_of(admin)}",
                    get.get("path") == "/healthz"
                    and container_port(k, get.get("port")) == port_of(admin),
                    json.dumps(k.get(probe)))
        token_file = config.get("admin", {}).get("token_file")
        if not host_of(admin).is_loopback or token_file is not None:
            # The daemon would write a missing token file itself, on a read-only mount it
            # cannot, and a token nobody knows is no use: it comes from the operator's Secret.
            token = files.get(token_file)
            c.check(where, f"{source}: admin.token_file (admin_listen {admin}) is a mounted "
                    "Secret key, not optional",
                    token is not None and token[0] == "secret" and not token[4],
                    f"token_file {token_file}, mounted: {token}")
    listen = config.get("listen", "127.0.0.1:5000")
    c.check(where, f"{source}: listen port is the container's registry port",
            container_port(k, "registry") == port_of(listen))
    if spec.get("hostNetwork"):
        # On the node's network, an open listener would serve anyone who reaches the node.
        c.check(where, f"{source}: listen is on loopback (hostNetwork)",
                host_of(listen).is_loopback, listen)
    cache_dir = config.get("cache", {}).get("dir")
    c.check(where, f"{source}: cache.dir {cache_dir} is a volume mount",
            cache_dir in {m["mountPath"] for m in k.get("volumeMounts", [])})

    cluster = config.get("cluster")
    if cluster:
        secret = files.get(cluster.get("secret_file"))
        c.check(where, f"{source}: cluster.secret_file is a mounted Secret key, not optional",
                secret is not None and secret[0] == "secret" and not secret[4],
                cluster.get("secret_file"))
        url = urlsplit(cluster.get("members_dns", ""))
        peers = service_named(url.hostname, services)
        c.check(where, f"{source}: members_dns {url.geturl()} is a headless Service of these "
                f"pods with publishNotReadyAddresses and port {url.port}",
                peers is not None
                and peers["spec"].get("clusterIP") == "None"
                and peers["spec"].get("publishNotReadyAddresses") is True
                and url.port in service_ports(peers)
                and labels_match(peers["spec"].get("selector"), pod_labels(doc)))
    cluster_names = set()
    for upstream in config.get("upstream", []):
        for parent in upstream.get("parents", []):
            url = urlsplit(parent)
            svc = service_named(url.hostname, services)
            c.check(where, f"{source}: parent {parent} of {upstream.get('name')} is a rendered "
                    "Service with that port", svc is not None and url.port in service_ports(svc))
            if url.hostname.endswith(".svc.cluster.local"):
                cluster_names.add(url.hostname)
    if spec.get("hostNetwork") and cluster_names:
        # With the host network, other policies use the node's resolver.
        c.check(where, f"{who}: dnsPolicy ClusterFirstWithHostNet, to resolve {sorted(cluster_names)}",
                spec.get("dnsPolicy") == "ClusterFirstWithHostNet")


def hosts_checks(c):
    """Each hosts.toml against the regcache config rendered with it."""
    for hosts_file in c.hosts:
        where, source = hosts_file.where, hosts_file.source
        names, listens = set(), set()
        for config in (r.toml for r in c.configs if r.where == where):
            listens.add(port_of(config.get("listen", "127.0.0.1:5000")))
            for u in config.get("upstream", []):
                names |= {u.get("name"), urlsplit(u.get("url", "")).hostname, *u.get("aliases", [])}
        try:
            hosts = tomllib.loads(hosts_file.text or "")
        except tomllib.TOMLDecodeError as e:
            c.check(where, f"{source}: parses as TOML", False, str(e))
            continue
        server = urlsplit(hosts.get("server", ""))
        c.check(where, f"{source}: server is the registry over https (the fallback)",
                server.scheme == "https" and server.hostname is not None, hosts.get("server"))
        mirrors = hosts.get("host", {})
        local = [urlsplit(u) for u in mirrors if urlsplit(u).hostname == "127.0.0.1"]
        c.check(where, f"{source}: lists the node-local regcache, http://127.0.0.1 on its listen port",
                len(local) == 1 and local[0].scheme == "http" and local[0].port in listens,
                f"hosts {list(mirrors)}, listen ports {sorted(listens)}")
        for url, host in mirrors.items():
            c.check(where, f"{source}: {url} pulls and resolves, with a dial_timeout",
                    {"pull", "resolve"} <= set(host.get("capabilities", [])) and "dial_timeout" in host)
        c.check(where, f"{source}: regcache has an upstream answering ns={hosts_file.registry}",
                hosts_file.registry in names)


def validate(c, docs):
    """Every (where, document) against the schemas of VERSIONS, in one run."""
    run = subprocess.run(
        [str(VENV / "python"), "-c", VALIDATE],
        input=json.dumps({"docs": [d for _, d in docs], "versions": list(VERSIONS)}),
        capture_output=True, text=True,
    )
    if not c.check("kubernetes-validate", "runs", run.returncode == 0, run.stderr.strip()):
        return
    answer = json.loads(run.stdout)
    shipped = answer["shipped"]
    for version in VERSIONS:
        c.check("kubernetes-validate", f"ships Kubernetes {version}", version in shipped,
                f"it has {shipped[0]}..{shipped[-1]}")
    for i, version, error in answer["results"]:
        where, doc = docs[i]
        c.check(where, f"{name_of(doc)}: valid for Kubernetes {version} (strict)", error is None, error)


def check_config(c):
    """`regcache check-config` on every config, with a throwaway cluster secret."""
    candidates = [os.environ.get("REGCACHE_BIN")] + [
        str(ROOT / "target" / profile / "regcache") for profile in ("debug", "release")
    ]
    binary = next((b for b in candidates if b and os.access(b, os.X_OK)), None)
    if binary is None:
        print("kubernetes: SKIPPED (not counted): `regcache check-config` of the configs: "
              "no regcache binary (cargo build, or set REGCACHE_BIN)")
        if os.environ.get("REGCACHE_REQUIRE_ALL", "0") != "0":
            c.check("check-config", "a regcache binary (REGCACHE_REQUIRE_ALL is set)", False)
        return
    with tempfile.TemporaryDirectory() as tmp:
        secret = Path(tmp, "secret")
        secret.write_text("0123456789abcdef0123456789abcdef\n")
        for i, config in enumerate(c.configs):
            text = config.text
            secret_file = config.toml.get("cluster", {}).get("secret_file")
            if secret_file:
                text = text.replace(json.dumps(secret_file), json.dumps(str(secret)))
            file = Path(tmp, f"{i}.toml")
            file.write_text(text)
            run = subprocess.run([binary, "check-config", str(file)], capture_output=True, text=True)
            c.check(config.where, f"{config.source}: regcache check-config", run.returncode == 0,
                    (run.stdout + run.stderr).strip())


def main():
    kubectl = os.environ.get("KUBECTL", "kubectl")
    if shutil.which(kubectl) is None:
        missing(f"{kubectl} not found: install kubectl (Debian: kubernetes-client) or set KUBECTL")
    if not (VENV / "kubernetes-validate").exists():
        missing(f"{rel(VENV / 'kubernetes-validate')} is missing: "
                f"{rel(VENV / 'pip')} install kubernetes-validate==1.37.0 (tests/run.sh does)")
    version = subprocess.run([kubectl, "version", "--client"], capture_output=True, text=True)
    print("kubernetes: " + " ".join(version.stdout.splitlines()[:2]).strip())

    c = Checks(verbose="-v" in sys.argv[1:])
    targets = [KUBE / "namespace.yaml"] + sorted(p.parent for p in KUBE.glob("*/*/kustomization.yaml"))
    found = [rel(t) for t in targets]
    c.check("config/kubernetes", "has base/node-local, base/regional and two overlays",
            {"config/kubernetes/base/node-local", "config/kubernetes/base/regional"} <= set(found)
            and sum(w.startswith("config/kubernetes/overlays/") for w in found) >= 2, str(found))
    renders = {}
    for target in targets:
        where = rel(target)
        if target.is_dir():
            docs, error = render(kubectl, target)
            if not c.check(where, "renders with kubectl kustomize", docs, error):
                continue
        else:
            docs = [d for d in yaml.safe_load_all(target.read_text()) if d]
        renders[where] = docs

    # Parents and members are Services of any render (a node-local's parent is regional).
    services = {
        (d["metadata"].get("namespace"), d["metadata"]["name"]): d
        for docs in renders.values() for d in docs if d["kind"] == "Service"
    }
    schema_docs = []
    for where, docs in renders.items():
        objects = {(d["kind"], d["metadata"]["name"]): d for d in docs}
        for doc in docs:
            object_checks(c, where, doc, docs)
            if doc["apiVersion"].startswith("monitoring.coreos.com/"):
                service_monitor_checks(c, where, doc, docs)
            else:
                schema_docs.append((where, doc))
            if doc["kind"] in WORKLOADS:
                pod_checks(c, where, doc, objects, services)
    validate(c, schema_docs)
    hosts_checks(c)
    check_config(c)

    for failure in c.failures:
        print(f"FAILED {failure}")
    print(f"kubernetes: {c.passed} passed, {len(c.failures)} failed")
    return 1 if c.failures else 0


if __name__ == "__main__":
    sys.exit(main())
