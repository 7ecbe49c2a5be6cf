#!/usr/bin/env python3
"""Side-by-side load benchmark of regcache against its peers, everything on 127.0.0.1.

One run starts Debian's docker-registry as the upstream, pushes generated images to it
over the registry HTTP API, puts the caches in front of it (regcache, docker-registry
in proxy mode, nginx with proxy_cache, and nginx serving the big layer from disk with
sendfile as the practical ceiling), measures them in rotating turns and prints one
markdown table per section on stdout. Progress goes to stderr. Each target talks to
its own registry process on the shared storage, so what each fetched is counted apart.

Python 3.11 stdlib only; the load comes from wrk (GET), oha (HEAD), curl and skopeo.
Every load loop is bounded in count and time, and everything started is stopped (by
process group) and every temp dir removed at the end, also on Ctrl-C or an exception.

    python3 benches/side_by_side.py [--quick] [--rounds N] [--only SECTION ...] [--no-build]

The `tls` section (in the default run, about a minute) serves the hot big blob over
HTTPS: it makes a self-signed P-256 certificate for 127.0.0.1 with the openssl command,
starts regcache with [server] tls_cert_file/tls_key_file and nginx proxy_cache with
`listen ... ssl` and `ssl_protocols TLSv1.3` on it, and compares their MiB/s and CPU per
GiB with 8 wrk clients over TLS 1.3. No openssl command: the section says so and is
skipped.

The `shaped` section is not in the default run (it needs root and takes ~5 minutes):

    python3 benches/side_by_side.py --only shaped [--rates 1gbit,2.5gbit] [--no-build]

Upstreams in the field sit behind a NAT gateway or a CDN edge, not on loopback. This
section creates a private network namespace (`ip netns add regcache-bench-<pid>`) and
runs everything in it: the origin registries, regcache, nginx, the registry proxy and
the curl clients. On its loopback an htb qdisc shapes only what leaves the origins'
ports (a u32 filter on the source port) to each rate of --rates in turn; what the caches
send to the clients is not shaped. It measures the big blob fetched directly from the
origin, one cold client and a herd of 8 cold clients through each cache, and what the
origin sent. The namespace is deleted at the end, also on Ctrl-C or an exception. Not
root, or `ip netns`/`tc` failing: the section prints why and is skipped.
"""

import argparse
import contextlib
import datetime
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ASSETS = Path(__file__).resolve().parent / "side_by_side"
REGCACHE = REPO / "target" / "release" / "regcache"
MiB = 1 << 20

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
ACCEPT = f"{OCI_MANIFEST}, {OCI_INDEX}"

SECTIONS = ("hot-blob", "manifests", "cold", "herd", "pull", "tls", "shaped")
DEFAULT_SECTIONS = SECTIONS[:-1]  # shaped needs root and is long: asked for with --only
OWN_TARGETS = {"tls", "shaped"}  # sections that start (and stop) targets of their own
IMAGES = ("big", "multi", "small", "index")


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Settings:
    rounds: int
    blob_bytes: int  # the single layer of bench/big
    multi_layer_bytes: int  # each of the 5 layers of bench/multi
    hot_secs: int  # per wrk run on the hot blob
    manifest_secs: int  # per wrk/oha run on manifests
    only: tuple
    concurrencies: tuple = (1, 8, 32)
    herd_clients: int = 32
    tls_clients: int = 8
    build: bool = True  # False: use target/release/regcache as it is
    shaped_rounds: int = 2
    rates: tuple = ()  # of the shaped section: (label, bits per second)
    shaped_herd: int = 8


# ---------------------------------------------------------------- tools and processes


def ensure_tools(build=True):
    """Installs what is missing: apt packages first (one update), then oha from crates.io."""
    os.environ["PATH"] += os.pathsep + os.pathsep.join(
        ["/usr/sbin", "/sbin", str(Path.home() / ".cargo" / "bin")])
    wanted = {"docker-registry": ["docker-registry"], "nginx": ["nginx-light", "nginx"],
              "wrk": ["wrk"], "skopeo": ["skopeo"], "curl": ["curl"]}
    missing = [cmd for cmd in wanted if not shutil.which(cmd)]
    if missing:
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        log(f"installing {missing} with apt-get")
        subprocess.run(sudo + ["apt-get", "update", "-q"], check=True, env=env)
        for cmd in missing:
            # nginx-light is enough; fall back to nginx where that package is gone.
            if not any(subprocess.run(sudo + ["apt-get", "install", "-y", "-q", pkg],
                                      env=env).returncode == 0 for pkg in wanted[cmd]):
                sys.exit(f"could not install {cmd} ({wanted[cmd]})")
    if not shutil.which("oha"):
        log("installing oha with cargo (a few minutes)")
        subprocess.run(["cargo", "install", "oha", "--locked"], check=True)
    if not build:
        if not REGCACHE.is_file():
            sys.exit(f"--no-build: {REGCACHE} does not exist")
        log(f"--no-build: using {REGCACHE} as it is")
        return
    log("building regcache (cargo build --release)")
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=REPO, check=True)


_ports_given = set()


def free_port():
    """A port free here, never handed out before: a server in the network namespace
    does not hold its port in this one, so the kernel could offer it again."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _ports_given:
            _ports_given.add(port)
            return port


def ns_argv(netns, argv):
    """argv run in network namespace `netns` (None: here). `ip netns exec` execs the
    command, so the pid (and process group) is the command's own."""
    return ["ip", "netns", "exec", netns, *argv] if netns else list(argv)


def http_status(url, method="GET", headers=None, timeout=2.0, netns=None):
    """Status of one request, or None if nothing answered; reads (and drops) the body."""
    if netns:  # only reachable from inside the namespace: ask curl there
        argv = ["curl", "-s", "-k", "-o", "/dev/null", "-w", "%{http_code}", "--max-time",
                str(timeout), *(["--head"] if method == "HEAD" else ["-X", method])]
        for k, v in (headers or {}).items():
            argv += ["-H", f"{k}: {v}"]
        try:
            out = subprocess.run(ns_argv(netns, argv + [url]), capture_output=True, text=True,
                                 timeout=timeout + 10)
        except subprocess.TimeoutExpired:
            return None
        code = int(out.stdout) if out.stdout.strip().isdigit() else 0
        return code or None  # curl says 000 when nothing answered
    u = urllib.parse.urlsplit(url)
    conn = connect(u, timeout)
    try:
        conn.request(method, u.path or "/", headers=headers or {})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except OSError:
        return None
    finally:
        conn.close()


def connect(u, timeout):
    """A connection for the split URL `u`; https does not verify: the bench's
    certificate is self-signed."""
    if u.scheme == "https":
        return http.client.HTTPSConnection(u.hostname, u.port, timeout=timeout,
                                           context=ssl._create_unverified_context())
    return http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)


def tls_session(port):
    """(protocol, cipher) the server on `port` agrees to with an OpenSSL client that
    offers what wrk's does (OpenSSL's defaults, no ALPN)."""
    ctx = ssl._create_unverified_context()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return tls.version(), tls.cipher()[0]


def http_text(url, netns=None, timeout=5):
    """The body of a GET answered 200 (through curl in the namespace when `netns`)."""
    if netns:
        out = subprocess.run(ns_argv(netns, ["curl", "-sS", "-f", "--max-time", str(timeout),
                                             url]), capture_output=True, text=True,
                             timeout=timeout + 10)
        if out.returncode != 0:
            raise RuntimeError(f"GET {url} in {netns}: {out.stderr.strip()}")
        return out.stdout
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        conn.request("GET", u.path)
        resp = conn.getresponse()
        text = resp.read().decode()
    finally:
        conn.close()
    if resp.status != 200:
        raise RuntimeError(f"GET {url}: HTTP {resp.status}")
    return text


class Proc:
    """A server in its own process group, so stopping it also stops its workers."""

    live = []  # every Proc not yet stopped, for the cleanup on exit

    def __init__(self, name, argv, log_path, env=None, netns=None):
        self.name, self.log_path, self.netns = name, Path(log_path), netns
        with open(self.log_path, "ab") as out:
            self.popen = subprocess.Popen(ns_argv(netns, argv), stdin=subprocess.DEVNULL,
                                          stdout=out, stderr=subprocess.STDOUT, env=env,
                                          start_new_session=True)
        Proc.live.append(self)

    def wait_ready(self, url, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                self.fail(f"exited with status {self.popen.returncode}")
            if http_status(url, netns=self.netns) == 200:
                return
            time.sleep(0.05)
        self.fail(f"did not answer 200 on {url} within {timeout:.0f} s")

    def fail(self, why):
        self.stop()
        tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"{self.name} {why}; tail of {self.log_path}:\n{tail}")

    def pids(self):
        """The process group: master and workers for nginx, the one process otherwise."""
        pgid, found = self.popen.pid, []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                except OSError:
                    continue
                # Fields after the ")" closing comm: state ppid pgrp ...
                if int(stat.rsplit(")", 1)[1].split()[2]) == pgid:
                    found.append(int(entry))
        return found

    def cpu_secs(self):
        """User + system CPU seconds of the live processes of the group."""
        total = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime in clock ticks
        return total / os.sysconf("SC_CLK_TCK")

    def rss_bytes(self):
        total = 0
        for pid in self.pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            m = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
            total += int(m.group(1)) * 1024 if m else 0
        return total

    def stop(self):
        if self in Proc.live:
            Proc.live.remove(self)
        if self.popen.poll() is not None:
            return
        for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.popen.wait(grace)
                return
            except subprocess.TimeoutExpired:
                continue


class PeakRss:
    """Samples a Proc's summed VmRSS every 100 ms on a thread, keeping the peak."""

    def __init__(self, proc):
        self.proc, self.peak, self.done = proc, 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.done.is_set():
            self.peak = max(self.peak, self.proc.rss_bytes())
            self.done.wait(0.1)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()


class Netns:
    """A private network namespace with its loopback up. An htb qdisc on that loopback
    sends what leaves the ports given to `shape_port` through class 1:10, held to the
    rate of `set_rate`, and the rest through 1:20, far above what loopback can do
    (netem is not available on this kernel; htb and u32 are)."""

    live = []  # not yet deleted, for the cleanup on exit

    def __init__(self, name, bps):
        self.name = name
        self._run(["ip", "netns", "add", name])
        Netns.live.append(self)
        try:
            self.exec(["ip", "link", "set", "lo", "up"])
            self.tc("qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "20")
            self.tc("class", "add", "dev", "lo", "parent", "1:", "classid", "1:20", "htb",
                    "rate", "100gbit", "ceil", "100gbit", "quantum", "200000")
            self.set_rate(bps)
        except BaseException:
            self.delete()
            raise

    @staticmethod
    def _run(argv):
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            raise RuntimeError(f"`{' '.join(argv)}` failed: {out.stderr.strip()}")
        return out.stdout

    def exec(self, argv):
        return self._run(ns_argv(self.name, argv))

    def tc(self, *args):
        return self.exec(["tc", *args])

    def set_rate(self, bps):
        # burst 256 KiB: a few of loopback's 64 KiB segments; quantum: one of them.
        self.tc("class", "replace", "dev", "lo", "parent", "1:", "classid", "1:10", "htb",
                "rate", f"{bps}bit", "ceil", f"{bps}bit", "burst", "256k", "cburst", "256k",
                "quantum", "65536")

    def shape_port(self, port):
        self.tc("filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio", "1",
                "u32", "match", "ip", "sport", str(port), "0xffff", "flowid", "1:10")

    def shaped_bytes(self):
        """Bytes sent through the shaped class so far, to check that the filter matches."""
        out = self.tc("-s", "class", "show", "dev", "lo", "classid", "1:10")
        m = re.search(r"Sent (\d+) bytes", out)
        return int(m[1]) if m else 0

    def delete(self):
        """Stop what runs in it first: the namespace lives on while a process is in it."""
        if self in Netns.live:
            Netns.live.remove(self)
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30)


# ---------------------------------------------------------------- upstream and images


@dataclass
class Blob:
    digest: str
    size: int
    path: Path = None  # a layer file on disk, or
    data: bytes = None  # a config in memory


@dataclass
class Images:
    big: Blob  # the one layer of bench/big, also served by nginx-sendfile
    small_manifest: str  # digest of bench/small:v1, the manifest of the manifest section
    sizes: dict = field(default_factory=dict)  # image -> total bytes pulled


class Upstream:
    """Debian's docker-registry with filesystem storage and its access log on.

    Each target gets its own `twin`: another registry process on the same storage with
    its own port and log, so what a target fetched (even a background fill finishing
    after its turn) is never counted against the next target. A twin can run in a
    network namespace (`netns`); pushes go to one here."""

    def __init__(self, work, name="upstream", data=None, netns=None):
        self.dir = work / "upstreams" / name
        self.dir.mkdir(parents=True)
        self.data = data or self.dir / "data"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = self.dir / "config.yml"
        config.write_text(f"""version: 0.1
log:
  level: warn
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {self.data}
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{self.port}
  secret: side-by-side-bench
""")
        self.log_path = self.dir / "registry.log"
        self.proc = Proc(f"docker-registry ({name})", ["docker-registry", "serve", str(config)],
                         self.log_path, netns=netns)
        self.proc.wait_ready(self.url + "/v2/")

    def twin(self, name, netns=None):
        return Upstream(self.dir.parent.parent, name, self.data, netns)

    def log_offset(self):
        return self.log_path.stat().st_size

    def wait_quiet(self, quiet=0.3, limit=5.0):
        """Waits (<= limit s) until the access log has not grown for `quiet` s: the
        registry writes a line just after each response, so a client can finish first."""
        last, deadline = -1, time.monotonic() + limit
        while time.monotonic() < deadline:
            size = self.log_offset()
            if size == last:
                return
            last = size
            time.sleep(quiet)

    def blob_gets_since(self, offset, digest):
        """(count, bytes) of GETs of `digest` logged after `offset`. The access log is
        Apache combined format: `... "GET /path HTTP/1.1" 200 <bytes sent> ...`."""
        self.wait_quiet()
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        count = total = 0
        for m in re.finditer(r'^\S+ \S+ \S+ \[[^\]]*\] "GET (\S+) [^"]*" \d{3} (\d+)', text, re.M):
            if m.group(1).endswith("/blobs/" + digest):
                count, total = count + 1, total + int(m.group(2))
        return count, total

    # Pushing, as a client would: POST an upload, PUT the bytes with the digest.

    def push_blob(self, repo, blob):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600, blocksize=MiB)
        try:
            conn.request("POST", f"/v2/{repo}/blobs/uploads/", headers={"Content-Length": "0"})
            resp = conn.getresponse()
            resp.read()
            if resp.status != 202:
                raise RuntimeError(f"upload start for {repo}: HTTP {resp.status}")
            loc = urllib.parse.urlsplit(resp.getheader("Location"))
            query = (loc.query + "&" if loc.query else "") + urllib.parse.urlencode(
                {"digest": blob.digest})
            headers = {"Content-Length": str(blob.size),
                       "Content-Type": "application/octet-stream"}
            if blob.path:
                with open(blob.path, "rb") as body:  # streamed, never all in memory
                    conn.request("PUT", f"{loc.path}?{query}", body=body, headers=headers)
            else:
                conn.request("PUT", f"{loc.path}?{query}", body=blob.data, headers=headers)
            resp = conn.getresponse()
            resp.read()
            if resp.status != 201:
                raise RuntimeError(f"blob PUT for {repo}: HTTP {resp.status}")
        finally:
            conn.close()

    def put_manifest(self, repo, ref, media_type, body):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request("PUT", f"/v2/{repo}/manifests/{ref}", body=body,
                         headers={"Content-Type": media_type})
            resp = conn.getresponse()
            text = resp.read()
            if resp.status != 201:
                raise RuntimeError(f"manifest PUT {repo}:{ref}: HTTP {resp.status} {text[:300]}")
        finally:
            conn.close()
        return sha256_ref(body)


def sha256_ref(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write_layer(path, size):
    """An uncompressed tar holding one file of `size` random (incompressible) bytes."""
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        def put(chunk):
            digest.update(chunk)
            out.write(chunk)
        info = tarfile.TarInfo("data.bin")
        info.size, info.mtime, info.mode = size, 0, 0o644
        put(info.tobuf(tarfile.GNU_FORMAT))
        left = size
        while left:
            chunk = os.urandom(min(left, 4 * MiB))
            put(chunk)
            left -= len(chunk)
        put(b"\0" * (-size % 512) + b"\0" * 1024)  # pad the member, then end-of-archive
        written = out.tell()
    return Blob("sha256:" + digest.hexdigest(), written, path=path)


def push_image(up, repo, ref, layers, arch="amd64"):
    """Pushes the layers, a valid config (os, architecture, rootfs.diff_ids: for an
    uncompressed layer the diff_id is its digest) and an OCI manifest under `ref` (by
    its own digest when None, as the children of an index are); returns (digest, size)."""
    config = json.dumps({
        "architecture": arch, "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [b.digest for b in layers]},
    }).encode()
    config_blob = Blob(sha256_ref(config), len(config), data=config)
    for blob in [*layers, config_blob]:
        up.push_blob(repo, blob)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_blob.digest, "size": config_blob.size},
        "layers": [{"mediaType": OCI_LAYER, "digest": b.digest, "size": b.size} for b in layers],
    }).encode()
    return up.put_manifest(repo, ref or sha256_ref(manifest), OCI_MANIFEST, manifest), len(manifest)


def load_images(up, work, s):
    """bench/big (one layer of s.blob_bytes), bench/multi (5 layers), bench/small (one
    256 KiB layer) and bench/index (an OCI index of two platforms)."""
    layers = work / "layers"
    layers.mkdir()
    log(f"generating and pushing images (big layer {s.blob_bytes // MiB} MiB)")
    big = write_layer(layers / "big.tar", s.blob_bytes)
    push_image(up, "bench/big", "v1", [big])
    multi = [write_layer(layers / f"multi{i}.tar", s.multi_layer_bytes) for i in range(5)]
    push_image(up, "bench/multi", "v1", multi)
    small = write_layer(layers / "small.tar", 256 * 1024)
    small_manifest, _ = push_image(up, "bench/small", "v1", [small])
    children = []
    for arch in ("amd64", "arm64"):
        layer = write_layer(layers / f"index-{arch}.tar", 512 * 1024)
        digest, size = push_image(up, "bench/index", None, [layer], arch)
        children.append({"mediaType": OCI_MANIFEST, "digest": digest, "size": size,
                         "platform": {"architecture": arch, "os": "linux"}})
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children}).encode()
    up.put_manifest("bench/index", "v1", OCI_INDEX, index)
    for p in layers.iterdir():  # keep only the big layer, for nginx-sendfile
        if p != big.path:
            p.unlink()
    sizes = {"big": big.size, "multi": sum(b.size for b in multi), "small": small.size,
             "index": 2 * 512 * 1024}
    return Images(big=big, small_manifest=small_manifest, sizes=sizes)


# ---------------------------------------------------------------- the targets


class Target:
    """One server under test. `restart_empty` gives it a fresh, empty cache (and a new
    port, so no restart waits on a port in TIME_WAIT)."""

    name = "?"
    caches = True  # False: nothing to empty (the upstream itself, nginx-sendfile)
    scheme = "http"

    def __init__(self, work, upstream, netns=None):
        self.upstream, self.proc, self.generation = upstream, None, 0
        self.netns = netns  # its processes run in this network namespace (None: here)
        self.dir = work / "targets" / (self.name + ("-netns" if netns else ""))
        self.dir.mkdir(parents=True)

    @property
    def url(self):
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self):
        self.generation += 1
        self.port = free_port()
        self.state = self.dir / f"run{self.generation}"  # cache dir, config, log
        self.state.mkdir()
        self.proc = self.spawn()
        self.proc.wait_ready(self.url + "/v2/")

    def stop(self):
        if self.proc:
            self.proc.stop()
            self.proc = None

    def restart_empty(self):
        self.stop()
        shutil.rmtree(self.state, ignore_errors=True)  # bounds the disk a long run uses
        self.start()


class Regcache(Target):
    name = "regcache"
    warnings = []
    binary = REGCACHE  # run() points this at a copy made right after the build

    def spawn(self):
        self.admin_port = free_port()
        argv = [str(self.binary), "serve", "--listen", f"127.0.0.1:{self.port}",
                "--admin-listen", f"127.0.0.1:{self.admin_port}",
                "--upstream", self.upstream.url, "--cache-dir", str(self.state / "cache"),
                *self.config_args()]
        return Proc(self.name, argv, self.state / "regcache.log",
                    env=dict(os.environ, RUST_LOG="warn"), netns=self.netns)

    def config_args(self):
        return []  # the embedded default config, with the flags above

    def stop(self):
        """Also keeps what it logged (RUST_LOG=warn: warnings and errors only), for the
        summary at the end; the log itself goes with the cache dir."""
        if self.proc:
            self.proc.stop()
            text = (self.state / "regcache.log").read_text(errors="replace")
            self.warnings += [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in text.splitlines()]
            self.proc = None

    def upstream_bytes_metric(self):
        """regcache's own count of upstream bytes since it started (for cross-checks)."""
        text = http_text(f"http://127.0.0.1:{self.admin_port}/metrics", self.netns)
        return sum(float(m.group(1)) for m in
                   re.finditer(r"^regcache_upstream_bytes_total\{[^}]*\} (\S+)", text, re.M))


class RegistryProxy(Target):
    name = "registry-proxy"

    def spawn(self):
        config = self.state / "config.yml"
        config.write_text(f"""version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {self.state}/data
  cache:
    blobdescriptor: inmemory
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{self.port}
  secret: side-by-side-bench
proxy:
  remoteurl: {self.upstream.url}
""")
        return Proc(self.name, ["docker-registry", "serve", str(config)],
                    self.state / "registry.log", netns=self.netns)


class NginxCache(Target):
    name = "nginx-cache"
    template = "nginx-cache.conf"

    def values(self):
        return {"UPSTREAM_PORT": str(self.upstream.port)}

    def spawn(self):
        for sub in ("tmp", "cache"):
            (self.state / sub).mkdir()
        values = {"DIR": str(self.state), "PORT": str(self.port),
                  # As root, workers would otherwise drop to nobody and lose the temp dirs.
                  "USER": "user root;" if os.geteuid() == 0 else "", **self.values()}
        conf = self.state / "nginx.conf"
        conf.write_text(self.conf_text(values))
        argv = ["nginx", "-p", str(self.state), "-e", str(self.state / "error.log"),
                "-c", str(conf), "-g", "daemon off;"]
        return Proc(self.name, argv, self.state / "nginx.out", netns=self.netns)

    def conf_text(self, values):
        text = (ASSETS / self.template).read_text()
        for key, value in values.items():
            text = text.replace(f"@@{key}@@", value)
        return text


class NginxSendfile(NginxCache):
    name = "nginx-sendfile"
    template = "nginx-sendfile.conf"
    caches = False

    def __init__(self, work, upstream, big):
        super().__init__(work, upstream)
        # The URL path of the blob, as a link under the document root.
        link = self.dir / "www" / "v2" / "bench" / "big" / "blobs" / big.digest
        link.parent.mkdir(parents=True)
        link.symlink_to(big.path)

    def values(self):
        return {"ROOT": str(self.dir / "www")}


class Direct(Target):
    """The upstream registry itself, for the cost of having no cache in between."""
    name = "upstream"
    caches = False

    def start(self):
        self.port, self.proc = self.upstream.port, self.upstream.proc

    def stop(self):
        pass


@dataclass
class Cert:
    cert: Path  # PEM: the self-signed certificate for 127.0.0.1
    key: Path  # PEM: its P-256 private key


def make_cert(where):
    """A self-signed P-256 certificate for IP 127.0.0.1, valid 2 days, made once per run."""
    where.mkdir()
    cert = Cert(where / "cert.pem", where / "key.pem")
    out = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(cert.key),
         "-out", str(cert.cert)], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"openssl req failed: {out.stderr.strip()}")
    return cert


class TlsTarget:
    """Mixed in before a target class: the same server on HTTPS with the run's Cert."""
    scheme = "https"

    def __init__(self, work, upstream, cert):
        super().__init__(work, upstream)
        self.cert = cert


class RegcacheTls(TlsTarget, Regcache):
    name = "regcache-tls"

    def config_args(self):
        # The flags still set listen, upstream and cache dir; the file adds only TLS.
        config = self.state / "regcache.toml"
        config.write_text(f"""[server]
tls_cert_file = "{self.cert.cert}"
tls_key_file = "{self.cert.key}"
""")
        return ["--config", str(config)]


class NginxCacheTls(TlsTarget, NginxCache):
    name = "nginx-cache-tls"

    def conf_text(self, values):
        """nginx-cache.conf with its listener on TLS 1.3 only (regcache's rustls also
        offers 1.2; with OpenSSL clients both settle on 1.3, which sec_tls checks)."""
        text, listen = super().conf_text(values), f"listen 127.0.0.1:{self.port};"
        if listen not in text:
            raise RuntimeError(f"{self.template} has no `{listen}` to put TLS on")
        return text.replace(listen, f"""listen 127.0.0.1:{self.port} ssl;
        ssl_certificate {self.cert.cert};
        ssl_certificate_key {self.cert.key};
        ssl_protocols TLSv1.3;""")


# ---------------------------------------------------------------- load generators


def wrk(url, conns, secs, headers=()):
    """{'bytes', 'requests', 'secs', 'errors'} of one wrk run (keep-alive connections)."""
    argv = ["wrk", f"-t{min(2, conns)}", f"-c{conns}", f"-d{secs}s", "--timeout", "120s",
            "-s", str(ASSETS / "report.lua")]
    for h in headers:
        argv += ["-H", h]
    out = subprocess.run(argv + [url], capture_output=True, text=True, timeout=secs + 120)
    m = re.search(r"^WRK_RESULT (.*)$", out.stdout, re.M)
    if not m:
        raise RuntimeError(f"wrk failed: {out.stdout}\n{out.stderr}")
    dur, reqs, nbytes, *errors = map(int, m.group(1).split())
    return {"bytes": nbytes, "requests": reqs, "secs": dur / 1e6, "errors": sum(errors)}


def oha_head(url, conns, secs, headers=()):
    """Requests/s and non-2xx count of HEAD requests, with oha (wrk cannot HEAD well)."""
    argv = ["oha", "-m", "HEAD", "-c", str(conns), "-z", f"{secs}s", "--no-tui",
            "--output-format", "json"]
    for h in headers:
        argv += ["-H", h]
    out = subprocess.run(argv + [url], capture_output=True, text=True, timeout=secs + 60)
    if out.returncode != 0:
        raise RuntimeError(f"oha failed: {out.stderr}")
    report = json.loads(out.stdout)
    codes = report.get("statusCodeDistribution", {})
    bad = sum(n for code, n in codes.items() if not code.startswith("2"))
    return {"rps": report["summary"]["requestsPerSec"], "errors": bad}


CURL_FORMAT = "%{http_code} %{time_starttransfer} %{time_total} %{size_download} %{speed_download}"


def curl_argv(url, max_secs=300, netns=None):
    insecure = ["-k"] if url.startswith("https:") else []  # the bench's self-signed cert
    return ns_argv(netns, ["curl", "-sS", *insecure, "-o", "/dev/null", "--max-time",
                           str(max_secs), "-w", CURL_FORMAT, url])


def parse_curl(out):
    code, ttfb, total, size, speed = out.split()
    return {"code": int(code), "ttfb": float(ttfb), "total": float(total),
            "size": int(size), "speed": float(speed)}


def curl_get(url, expect_size=None, netns=None, max_secs=300):
    out = subprocess.run(curl_argv(url, max_secs, netns), capture_output=True, text=True,
                         timeout=max_secs + 30)
    r = parse_curl(out.stdout)
    if r["code"] != 200 or (expect_size is not None and r["size"] != expect_size):
        raise RuntimeError(f"GET {url}: HTTP {r['code']}, {r['size']} bytes "
                           f"(expected {expect_size}); {out.stderr.strip()}")
    return r


def curl_herd(url, n, netns=None, max_secs=300):
    """n curls started at once on `url`: (wall s until the last is done, each one's
    parse_curl result, their distinct error messages)."""
    t0 = time.monotonic()
    clients = [subprocess.Popen(curl_argv(url, max_secs, netns), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(n)]
    try:
        outs = [p.communicate(timeout=max(1.0, t0 + max_secs + 30 - time.monotonic()))
                for p in clients]
    finally:
        for p in clients:
            if p.poll() is None:
                p.kill()
                p.wait()
    wall = time.monotonic() - t0
    done = [parse_curl(o) if o.strip() else {"code": 0, "size": 0} for o, _ in outs]
    return wall, done, sorted({e.strip() for _, e in outs if e.strip()})


def skopeo_copy(url_ref, dest, policy, all_images):
    argv = ["skopeo", "--policy", str(policy), "copy", "--src-tls-verify=false", "-q"]
    if all_images:
        argv.append("--all")
    t0 = time.monotonic()
    out = subprocess.run(argv + [f"docker://{url_ref}", f"oci:{dest}:v1"],
                         capture_output=True, text=True, timeout=600)
    elapsed = time.monotonic() - t0
    shutil.rmtree(dest, ignore_errors=True)
    if out.returncode != 0:
        raise RuntimeError(f"skopeo copy {url_ref} failed: {out.stderr.strip()}")
    return elapsed


# ---------------------------------------------------------------- results and tables


class Results:
    """Samples per (section, row, column); printed as `median (min..max)` over rounds."""

    def __init__(self):
        self.samples, self.notes = {}, []

    def add(self, section, row, col, value):
        self.samples.setdefault((section, row, col), []).append(value)

    def get(self, section, row, col):
        return self.samples.get((section, row, col), [])


def fmt_num(x):
    if x == int(x):
        return str(int(x))
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}" if abs(x) >= 0.1 else f"{x:.3f}"


def cell(vals):
    if not vals:
        return "-"
    med = statistics.median(vals)
    if len(vals) == 1 or min(vals) == max(vals):
        return fmt_num(med)
    return f"{fmt_num(med)} ({fmt_num(min(vals))}..{fmt_num(max(vals))})"


def md_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def print_section(res, section, title, rows, cols, ratio_cols=None, base="regcache"):
    """A table of cells, then one of the ratios base / peer of the medians. A row key
    is (group, target); in each group the `base` target (regcache) is compared with
    every other target."""
    first = "image" if rows[0][0] else "target"
    label = lambda g, t: f"{g} {t}" if g else t  # noqa: E731
    out = [f"### {title}", "", md_table([first] + [c for c, _ in cols], [
        [label(g, t)] + [cell(res.get(section, (g, t), k)) for _, k in cols] for g, t in rows])]
    ratio_cols = cols if ratio_cols is None else ratio_cols
    ratio_rows = []
    for g, t in rows:
        if t == base:
            continue
        row = [label(g, f"{base} / {t}")]
        for _, k in ratio_cols:
            a, b = res.get(section, (g, base), k), res.get(section, (g, t), k)
            ok = a and b and statistics.median(b)
            row.append(f"{statistics.median(a) / statistics.median(b):.2f}" if ok else "-")
        ratio_rows.append(row)
    if ratio_rows and ratio_cols:
        out += ["", md_table(["ratio of medians"] + [c for c, _ in ratio_cols], ratio_rows)]
    notes = [n for s, n in res.notes if s == section]
    if notes:
        out += [""] + [f"- {n}" for n in notes]
    print("\n".join(out) + "\n", flush=True)


def rotated(targets, r):
    """The round's order: each round starts one target later, so no target always
    runs first (on a cold machine) or last (after the others warmed caches and CPU)."""
    k = r % len(targets)
    return targets[k:] + targets[:k]


# ---------------------------------------------------------------- the sections


@dataclass
class Ctx:
    s: Settings
    res: Results
    img: Images
    targets: dict  # name -> Target
    work: Path
    up: "Upstream" = None  # the registry pushed to, on the storage every twin shares

    def pick(self, *names):
        return [self.targets[n] for n in names]

    def big_path(self):
        return f"/v2/bench/big/blobs/{self.img.big.digest}"


def sec_hot_blob(ctx):
    """Aggregate MiB/s on the cached big blob with 1, 8 and 32 keep-alive clients, and
    the serving processes' peak RSS during the largest run."""
    s, big, path = ctx.s, ctx.img.big, ctx.big_path()
    targets = ctx.pick("regcache", "registry-proxy", "nginx-cache", "nginx-sendfile")
    for t in targets:  # one full GET puts the blob in each cache
        curl_get(t.url + path, big.size)
    time.sleep(1)  # let a cache that commits after the response finish before we count
    offsets, top = {t: t.upstream.log_offset() for t in targets}, max(s.concurrencies)
    for r in range(s.rounds):
        for t in rotated(targets, r):
            for c in s.concurrencies:
                log(f"hot-blob round {r + 1}: {t.name}, {c} clients")
                cpu0 = t.proc.cpu_secs()
                with PeakRss(t.proc) if c == top else contextlib.nullcontext() as rss:
                    w = wrk(t.url + path, c, s.hot_secs)
                ctx.res.add("hot-blob", (None, t.name), c, w["bytes"] / w["secs"] / MiB)
                if c == top:  # the server's own cost, less sensitive to a busy machine
                    ctx.res.add("hot-blob", (None, t.name), "rss", rss.peak / MiB)
                    ctx.res.add("hot-blob", (None, t.name), "cpu",
                                (t.proc.cpu_secs() - cpu0) / (w["bytes"] / (1 << 30)))
                if w["errors"]:
                    ctx.res.notes.append(("hot-blob", f"{t.name}, {c} clients, round {r + 1}: "
                                          f"{w['errors']} wrk errors"))
    gets = sum(t.upstream.blob_gets_since(o, big.digest)[0] for t, o in offsets.items())
    ctx.res.notes.append(("hot-blob", f"upstream blob GETs during the measurement: {gets} "
                          "(0 means every byte came from the caches)"))
    cols = [(f"{c} client{'s' if c > 1 else ''} MiB/s", c) for c in s.concurrencies]
    print_section(ctx.res, "hot-blob",
                  f"Hot blob: cached {big.size // MiB} MiB layer, aggregate MiB/s "
                  f"(wrk, {s.hot_secs} s per run; higher is better)",
                  [(None, t.name) for t in targets],
                  cols + [(f"peak RSS at {top} (MiB)", "rss"),
                          (f"server CPU s per GiB at {top}", "cpu")])


def sec_manifests(ctx):
    """Requests/s on one hot manifest: GET (wrk) and HEAD (oha), by digest and by tag,
    16 keep-alive connections."""
    s = ctx.s
    targets = ctx.pick("regcache", "registry-proxy", "nginx-cache", "upstream")
    paths = {"digest": f"/v2/bench/small/manifests/{ctx.img.small_manifest}",
             "tag": "/v2/bench/small/manifests/v1"}
    headers = [f"Accept: {ACCEPT}"]
    for t in targets:  # warm, and check that every target answers what we will ask
        for p in paths.values():
            for method in ("GET", "HEAD"):
                status = http_status(t.url + p, method, {"Accept": ACCEPT}, timeout=10)
                if status != 200:
                    raise RuntimeError(f"{t.name}: {method} {p} answered {status}")
    cases = [(m, ref) for m in ("GET", "HEAD") for ref in ("digest", "tag")]
    for r in range(s.rounds):
        for t in rotated(targets, r):
            for method, ref in cases:
                log(f"manifests round {r + 1}: {t.name}, {method} by {ref}")
                url, cpu0 = t.url + paths[ref], t.proc.cpu_secs()
                if method == "GET":
                    w = wrk(url, 16, s.manifest_secs, headers)
                    rps, errors, n = w["requests"] / w["secs"], w["errors"], w["requests"]
                else:
                    o = oha_head(url, 16, s.manifest_secs, headers)
                    rps, errors, n = o["rps"], o["errors"], o["rps"] * s.manifest_secs
                ctx.res.add("manifests", (None, t.name), f"{method} {ref}", rps)
                if (method, ref) == ("GET", "digest"):
                    ctx.res.add("manifests", (None, t.name), "cpu",
                                (t.proc.cpu_secs() - cpu0) / max(n, 1) * 1e6)
                if errors:
                    ctx.res.notes.append(("manifests", f"{t.name} {method} by {ref}, round "
                                          f"{r + 1}: {errors} errors or non-2xx answers"))
    print_section(ctx.res, "manifests",
                  f"Hot manifests: requests/s, 16 connections, {s.manifest_secs} s per run "
                  "(GET: wrk, HEAD: oha; higher is better)",
                  [(None, t.name) for t in targets],
                  [(f"{m} by {ref}", f"{m} {ref}") for m, ref in cases]
                  + [("server CPU µs per GET by digest", "cpu")])


def sec_cold(ctx):
    """One client pulling the uncached big blob: TTFB, MiB/s, and what reached upstream."""
    big, path = ctx.img.big, ctx.big_path()
    targets = ctx.pick("regcache", "registry-proxy", "nginx-cache", "upstream")
    for r in range(ctx.s.rounds):
        for t in rotated(targets, r):
            log(f"cold round {r + 1}: {t.name}")
            if t.caches:
                t.restart_empty()
            offset, cpu0 = t.upstream.log_offset(), t.proc.cpu_secs()
            c = curl_get(t.url + path, big.size)
            cpu = (t.proc.cpu_secs() - cpu0) / (big.size / (1 << 30))
            upstream_bytes = settle_and_count(t, offset, big)[1]
            for col, value in (("ttfb", c["ttfb"] * 1000), ("mibs", c["speed"] / MiB),
                               ("total", c["total"]), ("up", upstream_bytes / MiB),
                               ("cpu", cpu)):
                ctx.res.add("cold", (None, t.name), col, value)
    print_section(ctx.res, "cold",
                  f"Cold blob: one client, uncached {big.size // MiB} MiB layer (curl; "
                  "the upstream row is the registry itself, file in page cache)",
                  [(None, t.name) for t in targets],
                  [("TTFB ms", "ttfb"), ("MiB/s", "mibs"), ("total s", "total"),
                   ("upstream MiB", "up"), ("server CPU s per GiB", "cpu")])


def settle_and_count(t, offset, big):
    """(GETs, bytes) of the big blob that target `t`'s upstream served since `offset`.
    A caching target is stopped first (after its upstream went quiet for a second), so a
    fill still running in the background is counted here, as far as it got."""
    if t.caches:
        t.upstream.wait_quiet(quiet=1.0, limit=30)
        t.stop()
    return t.upstream.blob_gets_since(offset, big.digest)


def sec_herd(ctx):
    """32 clients at once on the same uncached big blob: when the last one is done, and
    how many bytes the upstream had to send."""
    s, big, path = ctx.s, ctx.img.big, ctx.big_path()
    targets = ctx.pick("regcache", "registry-proxy", "nginx-cache")
    n = s.herd_clients
    for r in range(s.rounds):
        for t in rotated(targets, r):
            log(f"herd round {r + 1}: {t.name}, {n} clients")
            t.restart_empty()
            offset = t.upstream.log_offset()
            wall, done, errs = curl_herd(t.url + path, n)
            ok = sum(1 for d in done if d["code"] == 200 and d["size"] == big.size)
            metric = t.upstream_bytes_metric() if isinstance(t, Regcache) else None
            gets, up_bytes = settle_and_count(t, offset, big)
            key = (None, t.name)
            for col, value in (("last", wall), ("up", up_bytes / MiB), ("gets", gets),
                               ("ok", ok)):
                ctx.res.add("herd", key, col, value)
            if metric is not None:
                if abs(metric - up_bytes) > 0.01 * big.size:
                    ctx.res.notes.append(("herd", f"round {r + 1}: regcache_upstream_bytes_total "
                                          f"says {metric / MiB:.1f} MiB, the upstream's access "
                                          f"log {up_bytes / MiB:.1f} MiB"))
            if ok < n:
                ctx.res.notes.append(("herd", f"{t.name} round {r + 1}: only {ok}/{n} clients "
                                      f"got the whole blob; {errs[:3]}"))
    for t in targets:  # the single cold client of the cold section, for comparison
        key, single = (None, t.name), ctx.res.get("cold", (None, t.name), "total")
        ctx.res.samples[("herd", key, "single")] = list(single)
        last = ctx.res.get("herd", key, "last")
        if single and last:
            ctx.res.add("herd", key, "slow", statistics.median(last) / statistics.median(single))
    print_section(ctx.res, "herd",
                  f"Thundering herd: {n} clients at once on the uncached {big.size // MiB} MiB "
                  "layer (curl)",
                  [(None, t.name) for t in targets],
                  [("last client done s", "last"), ("1 cold client s", "single"),
                   ("herd / single", "slow"), ("upstream MiB", "up"), ("upstream GETs", "gets"),
                   ("clients OK", "ok")],
                  ratio_cols=[("last client done s", "last"), ("upstream MiB", "up")])


def sec_pull(ctx):
    """skopeo copy of each image to an OCI layout, cold (right after an empty restart)
    and warm (again), wall time."""
    targets = ctx.pick("regcache", "registry-proxy", "nginx-cache", "upstream")
    policy = ctx.work / "policy.json"
    policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    dest = ctx.work / "pulled"
    for r in range(ctx.s.rounds):
        for t in rotated(targets, r):
            if t.caches:
                t.restart_empty()
            for phase in ("cold", "warm"):
                for img in IMAGES:
                    log(f"pull round {r + 1}: {t.name}, {img} {phase}")
                    secs = skopeo_copy(f"127.0.0.1:{t.port}/bench/{img}:v1", dest, policy,
                                       all_images=img == "index")
                    ctx.res.add("pull", (img, t.name), phase, secs)
    sizes = ", ".join(f"{i} {ctx.img.sizes[i] / MiB:.1f} MiB" for i in IMAGES)
    print_section(ctx.res, "pull",
                  f"Real pull: skopeo copy to an OCI layout, wall s (lower is better; {sizes}; "
                  "index with --all)",
                  [(img, t.name) for img in IMAGES for t in targets],
                  [("cold s", "cold"), ("warm s", "warm")])


def sec_tls(ctx):
    """The cached big blob over HTTPS with TLS 1.3: aggregate MiB/s of 8 keep-alive wrk
    clients and the server's CPU per GiB, regcache against nginx proxy_cache, both on
    the run's self-signed certificate. Started here, on their own upstream twins."""
    if not shutil.which("openssl"):
        return skip_tls("the openssl command is missing (Debian package openssl)")
    try:
        cert = make_cert(ctx.work / "tls")
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        return skip_tls(str(e))
    s, big, path, c, res = ctx.s, ctx.img.big, ctx.big_path(), ctx.s.tls_clients, ctx.res
    targets = []
    try:
        for cls in (RegcacheTls, NginxCacheTls):
            targets.append(cls(ctx.work, ctx.up.twin(cls.name), cert))
            targets[-1].start()
        for t in targets:
            curl_get(t.url + path, big.size)  # one full GET puts the blob in the cache
            version, cipher = tls_session(t.port)
            res.notes.append(("tls", f"{t.name}: {version}, {cipher}"
                              + ("" if version == "TLSv1.3" else " **not TLS 1.3**")))
        time.sleep(1)  # let a cache that commits after the response finish before we count
        offsets = {t: t.upstream.log_offset() for t in targets}
        for r in range(s.rounds):
            for t in rotated(targets, r):
                log(f"tls round {r + 1}: {t.name}, {c} clients")
                cpu0 = t.proc.cpu_secs()
                with PeakRss(t.proc) as rss:
                    w = wrk(t.url + path, c, s.hot_secs)
                key = (None, t.name)
                res.add("tls", key, c, w["bytes"] / w["secs"] / MiB)
                res.add("tls", key, "rss", rss.peak / MiB)
                res.add("tls", key, "cpu", (t.proc.cpu_secs() - cpu0) / (w["bytes"] / (1 << 30)))
                if w["errors"]:
                    res.notes.append(("tls", f"{t.name}, round {r + 1}: {w['errors']} wrk "
                                      "errors"))
        gets = sum(t.upstream.blob_gets_since(o, big.digest)[0] for t, o in offsets.items())
        res.notes.append(("tls", f"upstream blob GETs during the measurement: {gets} (0 "
                          "means every byte came from the caches)"))
    finally:
        for t in targets:
            t.stop()
            t.upstream.proc.stop()
    sni = sum("Illegal SNI extension" in line for line in Regcache.warnings)
    if sni:  # so the log summary at the end is not read as a fault of this section
        res.notes.append(("tls", f"regcache logged rustls's `Illegal SNI extension` warning "
                          f"{sni} time(s): wrk sends the IP address as SNI (RFC 6066 allows "
                          "only host names), once per connection; rustls ignores it"))
    print_section(res, "tls",
                  f"Hot blob over TLS 1.3: cached {big.size // MiB} MiB layer, {c} keep-alive "
                  f"clients, aggregate MiB/s (wrk over https, {s.hot_secs} s per run; "
                  "self-signed P-256 certificate; higher is better)",
                  [(None, t.name) for t in targets],
                  [(f"{c} clients MiB/s", c), (f"peak RSS at {c} (MiB)", "rss"),
                   (f"server CPU s per GiB at {c}", "cpu")], base="regcache-tls")


def skip_tls(why):
    log(f"tls: SKIPPED: {why}")
    print(f"### Hot blob over TLS 1.3\n\nSkipped: {why}.\n", flush=True)


def sec_shaped(ctx):
    """Cold and herd on the big blob when the link from the origin is slower than
    loopback (see the module docstring), at each rate of --rates."""
    if os.geteuid() != 0:
        return skip_shaped("it needs root (ip netns add, tc)")
    if not (shutil.which("ip") and shutil.which("tc")):
        return skip_shaped("`ip` or `tc` is missing (Debian package iproute2)")
    try:
        ns = Netns(f"regcache-bench-{os.getpid()}", ctx.s.rates[0][1])
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        return skip_shaped(str(e))
    targets = []
    try:
        # Each target gets its own origin twin in the namespace, on the storage pushed to
        # here; only what leaves those origins' ports is shaped.
        for cls in (Direct, Regcache, NginxCache, RegistryProxy):
            origin = ctx.up.twin(f"netns-{cls.name}", ns.name)
            ns.shape_port(origin.port)
            targets.append(cls(ctx.work, origin, ns.name))
            targets[-1].start()
        for label, bps in ctx.s.rates:
            ns.set_rate(bps)
            shaped_rate(ctx, ns, targets, label, bps)
    finally:
        for t in targets:
            t.stop()
            t.upstream.proc.stop()
        ns.delete()


def skip_shaped(why):
    log(f"shaped: SKIPPED: {why}")
    print(f"### Shaped upstream link\n\nSkipped: {why}.\n", flush=True)


def shaped_rate(ctx, ns, targets, label, bps):
    """One table: per target, one cold client and a herd of cold clients in seconds and
    against a direct download from the origin in the same round, and the origin's bytes
    as a multiple of the blob. targets[0] is the origin itself (Direct)."""
    s, big, path, res = ctx.s, ctx.img.big, ctx.big_path(), ctx.res
    sec, n, direct = f"shaped {label}", s.shaped_herd, targets[0]
    expect = big.size * 8 / bps  # the transfer alone at the shaped rate
    limit = int(30 + 15 * expect)  # per curl; the registry proxy's herd fetches n times
    # The shaping must be real: a direct download takes about size / rate, and the
    # bytes went through the shaped class.
    sent0 = ns.shaped_bytes()
    c = curl_get(direct.url + path, big.size, ns.name, limit)
    through = (ns.shaped_bytes() - sent0) / big.size
    check = (f"shaping check: a direct download took {c['total']:.2f} s, "
             f"{c['total'] / expect:.2f}x the {expect:.2f} s that {big.size / MiB:.0f} MiB "
             f"take at {label}; {through:.3f}x the blob went through the shaped class")
    log(check)
    res.notes.append((sec, check))
    if not (0.9 < c["total"] / expect < 1.3 and through > 0.99):
        res.notes.append((sec, "**the shaping does not work as intended: do not trust "
                               "this table**"))
    for r in range(s.shaped_rounds):
        cold, herd, hot = {}, {}, {}
        for t in rotated(targets, r):
            key = (None, t.name)
            log(f"shaped {label} round {r + 1}: {t.name}, 1 cold client")
            if t.caches:
                t.restart_empty()
            offset = t.upstream.log_offset()
            cold[t.name] = curl_get(t.url + path, big.size, ns.name, limit)["total"]
            res.add(sec, key, "cold", cold[t.name])
            res.add(sec, key, "up_cold", settle_and_count(t, offset, big)[1] / big.size)
            if not t.caches:
                continue
            log(f"shaped {label} round {r + 1}: {t.name}, herd of {n} cold clients")
            t.restart_empty()
            offset = t.upstream.log_offset()
            herd[t.name], done, errs = curl_herd(t.url + path, n, ns.name, limit)
            ok = sum(1 for d in done if d["code"] == 200 and d["size"] == big.size)
            metric = t.upstream_bytes_metric() if isinstance(t, Regcache) else None
            t.upstream.wait_quiet(quiet=1.0, limit=30)
            gets, up_bytes = t.upstream.blob_gets_since(offset, big.digest)
            # The same herd on the blob now cached: what this machine delivers to n clients
            # at once, a floor under any cache's cold herd (n curls share the cores).
            log(f"shaped {label} round {r + 1}: {t.name}, herd of {n} on the cached blob")
            hot[t.name] = curl_herd(t.url + path, n, ns.name, limit)[0]
            t.stop()
            for col, value in (("herd", herd[t.name]), ("up_herd", up_bytes / big.size),
                               ("gets", gets), ("ok", ok), ("hot", hot[t.name])):
                res.add(sec, key, col, value)
            if metric is not None and abs(metric - up_bytes) > 0.01 * big.size:
                res.notes.append((sec, f"round {r + 1}: regcache_upstream_bytes_total says "
                                  f"{metric / MiB:.1f} MiB, the origin's access log "
                                  f"{up_bytes / MiB:.1f} MiB"))
            if ok < n:
                res.notes.append((sec, f"{t.name} round {r + 1}: only {ok}/{n} clients got "
                                  f"the whole blob; {errs[:3]}"))
        # Against this round's direct download, so a slower round does not skew them.
        # Cold as a speed (direct s / cold s, higher is better), the herd as a time (herd
        # s / direct s, lower is better), as the goals are put.
        for name, secs in cold.items():
            res.add(sec, (None, name), "cold_x", cold[direct.name] / secs)
        for name, secs in herd.items():
            res.add(sec, (None, name), "herd_x", secs / cold[direct.name])
            res.add(sec, (None, name), "hot_x", hot[name] / cold[direct.name])
    res.notes.append((sec, shaped_goals(res, sec, n)))
    print_section(res, sec,
                  f"Shaped upstream link, {label}: origin -> cache shaped (htb), cache -> "
                  f"client not; {big.size // MiB} MiB blob, curl, {s.shaped_rounds} round(s)",
                  [(None, t.name) for t in targets],
                  [("cold s", "cold"), ("cold speed x direct", "cold_x"),
                   (f"herd of {n}: last done s", "herd"), ("herd time x direct", "herd_x"),
                   (f"hot herd of {n} s", "hot"), ("hot herd time x direct", "hot_x"),
                   ("upstream x blob, cold", "up_cold"), ("upstream x blob, herd", "up_herd"),
                   ("upstream GETs, herd", "gets"), ("herd clients OK", "ok")],
                  ratio_cols=[])


def shaped_goals(res, sec, n):
    """regcache's medians against the goals of the shaped-link issue."""
    get = lambda col: res.get(sec, (None, "regcache"), col)  # noqa: E731
    cold_x, herd_x = statistics.median(get("cold_x")), statistics.median(get("herd_x"))
    hot_x = statistics.median(get("hot_x"))
    once = all(x == 1 for x in get("up_cold") + get("up_herd"))
    verdict = lambda ok: "met" if ok else "MISSED"  # noqa: E731
    return (f"regcache against the goals: cold {cold_x:.2f}x direct speed (goal >= 0.98: "
            f"{verdict(cold_x >= 0.98)}); herd of {n} {herd_x:.2f}x direct time (goal <= "
            f"1.05: {verdict(herd_x <= 1.05)}; the same herd on the cached blob took "
            f"{hot_x:.2f}x, this machine's floor); upstream bytes exactly 1x the blob in "
            f"every cold and herd turn: {verdict(once)}")


SECTION_FUNCS = {"hot-blob": sec_hot_blob, "manifests": sec_manifests, "cold": sec_cold,
                 "herd": sec_herd, "pull": sec_pull, "tls": sec_tls, "shaped": sec_shaped}


# ---------------------------------------------------------------- header and main


def first_line(argv):
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "?"


def version(argv):
    """A tool's version without the banner around it."""
    line = first_line(argv)
    m = re.search(r"\d+\.\d+(\.\d+)?", line)
    return f"{argv[0]} {m[0]}" if m else f"{argv[0]} ?"


def loadavg():
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def print_header(s):
    cpuinfo = Path("/proc/cpuinfo").read_text()
    cpu = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.M)
    mem_kb = int(re.search(r"^MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text(), re.M)[1])
    rev = first_line(["git", "-C", str(REPO), "describe", "--always", "--dirty"])
    rounds = ", ".join(f"{s.shaped_rounds if n == 'shaped' else s.rounds} ({n})" for n in s.only)
    print(f"""## regcache side by side

- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}
- machine: {os.cpu_count()} CPUs ({cpu[1] if cpu else '?'}), {mem_kb / 1024 / 1024:.1f} GiB \
memory, Linux {os.uname().release}; clients and servers share the CPUs, all on 127.0.0.1
- command: `{' '.join(['python3', 'benches/' + Path(sys.argv[0]).name, *sys.argv[1:]])}`
- regcache {rev}; {'; '.join(version([tool, flag]) for tool, flag in (
    ('nginx', '-v'), ('docker-registry', '--version'), ('wrk', '-v'), ('oha', '--version'),
    ('curl', '--version'), ('skopeo', '--version'), ('openssl', 'version')))}
- load average at the start: {loadavg()} (anything else running skews the numbers)
- {rounds} round(s), targets rotated each round; cells are median (min..max) over rounds;
  big layer {s.blob_bytes // MiB} MiB, multi 5 x {s.multi_layer_bytes // MiB} MiB
""", flush=True)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 1 round, 2 s runs, a 64 MiB big layer")
    p.add_argument("--rounds", type=int,
                   help="rounds per section (default 3, shaped 2, quick 1)")
    p.add_argument("--only", action="append", choices=SECTIONS, metavar="SECTION",
                   help=f"run only this section (repeatable): {', '.join(SECTIONS)}; "
                        f"the default is all but shaped")
    p.add_argument("--rates", type=parse_rates, default=parse_rates("1gbit,2.5gbit"),
                   help="the shaped section's link rates, in tc's units (default "
                        "1gbit,2.5gbit)")
    p.add_argument("--no-build", action="store_true",
                   help="use target/release/regcache as it is, without cargo build")
    a = p.parse_args()
    return Settings(rounds=a.rounds or (1 if a.quick else 3),
                    blob_bytes=(64 if a.quick else 512) * MiB,
                    multi_layer_bytes=(4 if a.quick else 20) * MiB,
                    hot_secs=2 if a.quick else 8, manifest_secs=2 if a.quick else 5,
                    only=tuple(a.only or DEFAULT_SECTIONS), build=not a.no_build,
                    shaped_rounds=a.rounds or (1 if a.quick else 2), rates=a.rates)


def parse_rates(text):
    """'1gbit,2.5gbit' -> (('1 Gbit/s', 1000000000), ('2.5 Gbit/s', 2500000000))."""
    units = {"kbit": 10**3, "mbit": 10**6, "gbit": 10**9}
    rates = []
    for part in text.split(","):
        m = re.fullmatch(r"(\d+(?:\.\d+)?)([kmg]bit)", part.strip().lower())
        if not m:
            raise argparse.ArgumentTypeError(f"{part!r}: expected a rate like 1gbit or 2500mbit")
        rates.append((f"{m[1]} {m[2][0].upper()}bit/s", int(float(m[1]) * units[m[2]])))
    return tuple(rates)


def run(s, work):
    # A copy, so a rebuild by someone else during the run cannot swap the binary
    # between two restarts.
    Regcache.binary = work / "regcache"
    shutil.copy2(REGCACHE, Regcache.binary)
    up = Upstream(work)
    images = load_images(up, work, s)
    targets = {}
    if set(s.only) - OWN_TARGETS:
        targets = {"regcache": Regcache(work, up.twin("regcache")),
                   "registry-proxy": RegistryProxy(work, up.twin("registry-proxy")),
                   "nginx-cache": NginxCache(work, up.twin("nginx-cache")),
                   "nginx-sendfile": NginxSendfile(work, up, images.big),
                   "upstream": Direct(work, up.twin("direct"))}
        for t in targets.values():
            t.start()
        log("all targets answer on /v2/: "
            + ", ".join(f"{n} {t.url}" for n, t in targets.items()))
    ctx = Ctx(s, Results(), images, targets, work, up)
    try:
        for name in SECTIONS:
            if name in s.only:
                log(f"{name}: load average {loadavg()}")
                t0 = time.monotonic()
                SECTION_FUNCS[name](ctx)
                log(f"{name} took {time.monotonic() - t0:.0f} s")
    finally:
        if "regcache" in targets:
            targets["regcache"].stop()
        print_regcache_log(Regcache.warnings)


def print_regcache_log(lines):
    """What regcache logged at warn level or above over the whole run, for bug hunting."""
    # Group by the message, without the timestamp that starts each line.
    kinds = {}
    for line in lines:
        key = re.sub(r"^\S+\s+", "", line.strip())[:200]
        if key:
            kinds[key] = kinds.get(key, 0) + 1
    print(f"### regcache log\n\n{len(lines)} line(s) at warn level or above over the run; "
          f"load average at the end: {loadavg()}.")
    for key, n in sorted(kinds.items(), key=lambda kv: -kv[1])[:10]:
        print(f"- {n} x `{key}`")
    print(flush=True)


def main():
    s = parse_args()
    # SIGTERM unwinds like Ctrl-C, through the cleanup below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ensure_tools(s.build)
    print_header(s)
    work = Path(tempfile.mkdtemp(prefix="regcache-sbs-"))
    t0 = time.monotonic()
    try:
        run(s, work)
    finally:
        for proc in list(reversed(Proc.live)):
            proc.stop()
        for ns in list(Netns.live):  # after its processes: it lives on while one is in it
            ns.delete()
        shutil.rmtree(work, ignore_errors=True)
        log(f"done in {time.monotonic() - t0:.0f} s; everything stopped, {work} removed")


if __name__ == "__main__":
    main()
