"""What the client checks share: paths, the pass/fail tally, and running clients with
nothing but loopback in reach."""

import os
import socket
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = ROOT / "config" / "clients"
CERTS_D = "/etc/containerd/certs.d"
REGCACHE_IMAGE = "ghcr.io/regcache/regcache"
TIMEOUT = 60


class Checks:
    """The tally: one printed line per check, skips said so and not counted."""

    def __init__(self):
        self.passed = 0
        self.failed = 0
        self.require_all = os.environ.get("REGCACHE_REQUIRE_ALL", "0") != "0"

    def check(self, what, ok, why=""):
        if ok:
            self.passed += 1
            print(f"ok   {what}")
        else:
            self.failed += 1
            print(f"FAIL {what}" + (f": {why}" if why else ""))
        return ok

    def skip(self, what, why):
        print(f"SKIPPED (not counted): {what}: {why}")
        if self.require_all:
            self.check(f"{what} (REGCACHE_REQUIRE_ALL is set)", False, why)


def rel(path):
    return str(Path(path).relative_to(ROOT))


def closed_port():
    """A loopback address nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def loopback_only_proxies():
    """Every proxy variable naming a closed loopback port, with no exemptions. A client
    that tries a registry other than the fakes (a hosts.toml containerd cannot parse
    makes it fall back to the registry itself) then fails at once instead of reaching
    out; Go's clients never send requests for loopback addresses through a proxy."""
    proxy = f"http://{closed_port()}"
    env = {"NO_PROXY": "", "no_proxy": ""}
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        env[name] = env[name.lower()] = proxy
    return env


# The environment of every client and daemon this script starts.
LOOPBACK_ONLY = {**os.environ, **loopback_only_proxies()}


def run(args, timeout=TIMEOUT, env=None):
    """A finished process, or one with returncode None and the reason in stderr. `env`
    adds to LOOPBACK_ONLY."""
    env = {**LOOPBACK_ONLY, **(env or {})}
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(args, None, "", f"no answer within {timeout} s")


def tail(text, lines=6):
    return " | ".join(text.strip().splitlines()[-lines:])


def hermetic_env(tmp):
    """HOME, runtime dir and auth file of their own for skopeo and podman, so no user's
    credentials or per-user registries.conf take part."""
    tmp = Path(tmp)
    for sub in ("home", "run", "config"):
        (tmp / sub).mkdir(mode=0o700, exist_ok=True)
    (tmp / "auth.json").write_text("{}")
    return {"HOME": str(tmp / "home"), "XDG_RUNTIME_DIR": str(tmp / "run"),
            "XDG_CONFIG_HOME": str(tmp / "config"), "REGISTRY_AUTH_FILE": str(tmp / "auth.json")}


def load(c, path, parse):
    try:
        return parse(path.read_text())
    except Exception as e:  # any parser's error is the finding
        c.check(f"{rel(path)}: parses", False, str(e))
        return None


def is_http_url(value):
    url = urlsplit(value if isinstance(value, str) else "")
    return url.scheme in ("http", "https") and bool(url.hostname)


def is_loopback(host):
    return host in ("127.0.0.1", "localhost", "::1")
