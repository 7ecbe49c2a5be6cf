"""containerd: its config files (config dump, and a private containerd running them)
and every hosts.toml (structure, and ctr pulls through fake registries)."""

import re
import shutil
import subprocess
import tempfile
import time
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

from common import CERTS_D, CLIENTS, LOOPBACK_ONLY, TIMEOUT, closed_port, load, rel, run, tail
from fake_registry import FakeRegistry

CRI_TABLE = {2: "io.containerd.grpc.v1.cri", 3: "io.containerd.cri.v1.images"}
# Where the private containerd's CRI plugin looks for CNI configs, by config version.
CNI_TABLE = {2: "io.containerd.grpc.v1.cri", 3: "io.containerd.cri.v1.runtime"}


def major_version():
    out = run(["containerd", "--version"]).stdout
    found = re.search(r"\bv?(\d+)\.(\d+)\.\d+", out)
    return int(found[1]) if found else 1


def config_path_of(config, version):
    table = config.get("plugins", {}).get(CRI_TABLE[version], {})
    return table.get("registry", {}).get("config_path")


def dump_config_path(file):
    """(config_path in `containerd config dump` of file, error)."""
    dumped = run(["containerd", "--config", str(file), "config", "dump"])
    if dumped.returncode != 0:
        return None, tail(dumped.stderr) or "containerd config dump failed"
    config = tomllib.loads(dumped.stdout)
    return config_path_of(config, config.get("version", 2)), ""


def config_checks(c, major):
    for version in (2, 3):
        path = CLIENTS / "containerd" / f"config-v{version}.toml"
        where = rel(path)
        config = load(c, path, tomllib.loads)
        if config is None:
            continue
        registry = config.get("plugins", {}).get(CRI_TABLE[version], {}).get("registry", {})
        c.check(f"{where}: version = {version}", config.get("version") == version)
        c.check(f'{where}: [plugins."{CRI_TABLE[version]}".registry] config_path = "{CERTS_D}"',
                registry.get("config_path") == CERTS_D, str(registry.get("config_path")))
        c.check(f"{where}: no registry.mirrors or registry.configs beside config_path",
                not registry.get("mirrors") and not registry.get("configs"))
        if version == 3 and major < 2:
            print(f"STRUCTURE ONLY (not counted): {where}: containerd {major}.x here cannot "
                  f"parse a version {version} config; check it with containerd 2.x")
            continue
        found, error = dump_config_path(path)
        c.check(f"{where}: containerd --config config dump loads it with config_path "
                f'"{CERTS_D}" (one directory)', found == CERTS_D, error or f"dumped {found!r}")


# hosts.toml ------------------------------------------------------------------------


def hosts_files():
    """(registry, path) of every hosts.toml shipped."""
    files = sorted(CLIENTS.glob("**/certs.d/*/hosts.toml"))
    return [(p.parent.name, p) for p in files]


def hosts_structure(c, path):
    where = rel(path)
    hosts = load(c, path, tomllib.loads)
    if hosts is None:
        return
    server = hosts.get("server", "")
    c.check(f"{where}: server is the registry over https (the fallback)",
            urlsplit(server).scheme == "https" and bool(urlsplit(server).hostname), server)
    mirrors = hosts.get("host", {})
    c.check(f"{where}: lists a mirror host", bool(mirrors))
    for key, host in mirrors.items():
        url = urlsplit(key)
        c.check(f"{where}: host {key} has a scheme (http:// or https://)",
                url.scheme in ("http", "https") and bool(url.hostname))
        capabilities = host.get("capabilities", [])
        c.check(f"{where}: host {key} capabilities include pull and resolve, not push",
                {"pull", "resolve"} <= set(capabilities) and "push" not in capabilities,
                str(capabilities))
        c.check(f"{where}: host {key} sets dial_timeout", bool(host.get("dial_timeout")))
        c.check(f"{where}: host {key} has no skip_verify/ca (they make containerd 2.x try "
                "HTTPS on an http:// host)",
                url.scheme != "http" or not ({"skip_verify", "ca", "client"} & set(host)))


def rewrite_hosts(text, hosts, mirror, server):
    """The hosts.toml text with every host key pointed at mirror and server at server."""
    for key in hosts.get("host", {}):
        text = text.replace(f'[host."{key}"]', f'[host."http://{mirror}"]')
    return text.replace(f'server = "{hosts["server"]}"', f'server = "http://{server}"')


def only_loopback_hosts(text):
    hosts = tomllib.loads(text)
    urls = [hosts.get("server", "")] + list(hosts.get("host", {}))
    return all(urlsplit(u).hostname == "127.0.0.1" for u in urls)


class PrivateContainerd:
    """containerd as a child, with root, state, socket and CNI dir in a temporary dir."""

    def __init__(self, tmp, config_text, version):
        self.dir = Path(tmp)
        self.socket = self.dir / "containerd.sock"
        self.log = self.dir / "containerd.log"
        for sub in ("root", "state", "opt", "cni"):
            (self.dir / sub).mkdir()
        # Top-level keys go before the first table; the tables of the shipped file stay.
        self.config = self.dir / "config.toml"
        self.config.write_text(
            f'root = "{self.dir / "root"}"\nstate = "{self.dir / "state"}"\n'
            + config_text
            + f'\n[grpc]\n  address = "{self.socket}"\n'
            f'[ttrpc]\n  address = "{self.socket}.ttrpc"\n'
            f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{self.dir / "opt"}"\n'
            f'[plugins."{CNI_TABLE[version]}".cni]\n  conf_dir = "{self.dir / "cni"}"\n'
        )
        self.process = None

    def __enter__(self):
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(["containerd", "--config", str(self.config)],
                                            stdout=log, stderr=subprocess.STDOUT,
                                            env=LOOPBACK_ONLY)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and self.process.poll() is None:
            if self.socket.exists() and self.ctr("version").returncode == 0:
                return self
            time.sleep(0.2)
        return self

    def __exit__(self, *exc):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def ready(self):
        return self.process.poll() is None and self.socket.exists()

    def ctr(self, *args, timeout=TIMEOUT):
        return run(["ctr", "--address", str(self.socket), "--namespace", "regcache-check",
                    *args], timeout=timeout)

    def log_text(self):
        return self.log.read_text(errors="replace")


def live_checks(c, major):
    """A private containerd with the shipped config for its version, then the pulls."""
    version = 3 if major >= 2 else 2
    config_file = CLIENTS / "containerd" / f"config-v{version}.toml"
    where = rel(config_file)
    tmp = Path(tempfile.mkdtemp(prefix="regcache-ctrd-"))
    try:
        with PrivateContainerd(tmp, config_file.read_text(), version) as daemon:
            if not c.check(f"{where}: a private containerd {major}.x starts with it",
                           daemon.ready(), tail(daemon.log_text())):
                return
            # ctr plugins ls: TYPE ID PLATFORMS STATUS; the CRI plugin is one of these.
            wanted = (["io.containerd.grpc.v1", "cri"], ["io.containerd.cri.v1", "images"])
            rows = [line.split() for line in daemon.ctr("plugins", "ls").stdout.splitlines()]
            cri = [row for row in rows if row[:2] in wanted]
            c.check(f"{where}: its CRI plugin loads",
                    bool(cri) and all(row[-1] == "ok" for row in cri), str(cri))
            logged = re.findall(r'ConfigPath:(\S*)|"configPath":"([^"]*)"', daemon.log_text())
            paths = {a or b for a, b in logged}
            c.check(f'{where}: the running CRI plugin reads hosts.toml from "{CERTS_D}"',
                    paths == {CERTS_D}, f"logged {sorted(paths)}")
            for registry, path in hosts_files():
                hosts_pulls(c, daemon, tmp, registry, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def hosts_pulls(c, daemon, tmp, registry, path):
    """Three ctr pulls through a copy of one hosts.toml: mirror serving, mirror answering
    503, nothing listening on the mirror's port."""
    where = rel(path)
    hosts = tomllib.loads(path.read_text())
    if not hosts.get("host") or "server" not in hosts:
        return
    reference = f"{registry}/regcache-check/probe"
    for case in ("mirror", "failing", "refused"):
        with FakeRegistry(f"{where} {case} mirror", failing=case == "failing") as mirror, \
                FakeRegistry(f"{where} {case} server") as server:
            address = closed_port() if case == "refused" else mirror.address
            text = rewrite_hosts(path.read_text(), hosts, address, server.address)
            if not c.check(f"{where}: rewritten for the {case} test to name only 127.0.0.1",
                           only_loopback_hosts(text)):
                continue
            certs = tmp / "certs" / f"{where.replace('/', '_')}-{case}" / registry
            certs.mkdir(parents=True)
            (certs / "hosts.toml").write_text(text)
            started = time.monotonic()
            pulled = daemon.ctr("images", "pull", "--snapshotter", "native",
                                "--hosts-dir", str(certs.parent), f"{reference}:{case}")
            took = time.monotonic() - started
            ok = pulled.returncode == 0
            if case == "mirror":
                seen = mirror.seen()
                paths = [p for _, p in seen]
                c.check(f"{where}: ctr pulls {registry} through the mirror, with "
                        f"?ns={registry} on every request, and never asks server",
                        ok and any("/manifests/" in p for p in paths)
                        and sum("/blobs/" in p for p in paths) == 2
                        and all(p.endswith(f"ns={registry}") for p in paths)
                        and not server.seen(),
                        tail(pulled.stderr) + f" mirror saw {seen}, server saw {server.seen()}")
            else:
                what = "answers 503" if case == "failing" else "refuses connections"
                c.check(f"{where}: when the mirror {what}, ctr pulls from server "
                        f"({took:.1f} s)",
                        ok and sum("/blobs/" in p for _, p in server.seen()) == 2
                        and took < 15,
                        tail(pulled.stderr) + f" server saw {server.seen()}")
