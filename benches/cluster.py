#!/usr/bin/env python3
"""Cluster benchmark: regcache replicas over a shared bucket, and chained mirrors, all on
127.0.0.1, measured against the scale-out issue's goals.

Starts Debian's docker-registry as the upstream (its access log counts GETs per digest),
SeaweedFS (`weed mini`, from target/venv as tests/run.sh installs it) as the bucket, and
release regcache processes with their own disks, then prints one markdown table: each
goal, what was measured and whether it was met. Progress goes to stderr.

The bucket figures put the reading replica in a memory cgroup filled with page cache
first (SteadyMemory). `bucket-per-connection` puts a Relay in front of SeaweedFS that
serves each connection at 32 MiB/s, as an object store limits a single connection.
`bucket-shaped` needs root: it runs its processes in a network namespace it creates and
shapes what leaves SeaweedFS's S3 port with tc htb to each rate of --rates; not root, it
is reported as skipped.

Python 3.11 stdlib; the load comes from curl. Every loop is bounded; everything started
is stopped and every temp dir removed at the end, also on Ctrl-C or an exception.

    cargo build --release && python3 benches/cluster.py [--quick] [--only FIGURE ...]
        [--rates 1gbit,2.5gbit]
"""

import argparse
import concurrent.futures
import contextlib
import datetime
import hashlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import side_by_side as sbs  # noqa: E402  (shared helpers: processes, registry, curl)

REPO = sbs.REPO
MiB = sbs.MiB
WEED = REPO / "target" / "venv" / "bin" / "weed"
ACCESS_KEY, SECRET_KEY = "bench-access", "bench-secret-key"
SECRET = "bench-cluster-secret-0123456789"
log = sbs.log


class Weed:
    """SeaweedFS with one bucket, every port free, telemetry off, loopback only."""

    def __init__(self, work, bucket, netns=None):
        self.dir = work / ("weed-" + netns if netns else "weed")
        self.dir.mkdir()
        self.bucket, self.netns = bucket, netns
        self.port = sbs.free_port()
        ports = {flag: sbs.free_port() for flag in (
            "master.port", "volume.port", "filer.port", "master.port.grpc",
            "volume.port.grpc", "filer.port.grpc", "s3.port.grpc", "admin.port",
            "admin.port.grpc")}
        argv = [str(WEED), "mini", f"-dir={self.dir}", "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1", "-master.telemetry=false", "-admin.ui=false",
                "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
                f"-s3.port={self.port}", f"-bucket={bucket}"]
        argv += [f"-{flag}={port}" for flag, port in ports.items()]
        env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
        self.log_path = self.dir / "weed.log"
        self.proc = sbs.Proc("weed mini", argv, self.log_path, env=env, netns=netns)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            text = self.log_path.read_text(errors="replace")
            if "All enabled components are running" in text and self.answers():
                return
            if self.proc.popen.poll() is not None:
                self.proc.fail("exited")
            time.sleep(0.1)
        self.proc.fail("was not ready within 60 s")

    def answers(self):
        if self.netns:
            return sbs.http_status(self.endpoint, netns=self.netns) is not None
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.port}"


class SteadyMemory:
    """A memory cgroup that a server's processes join, its page cache filled first by a
    scratch file, as on a host that has run a while: Linux keeps memory full of cache
    there, so a page a new write needs comes from reclaim. On a fresh VM whose balloon
    hands free pages back to the host (virtio free page reporting, as on the bench
    machine) each newly touched page costs a hypervisor fault and zeroing instead,
    4.7 s per GiB there: more than a whole verified fill, and charged to whoever writes.
    The limit plays the part of a pod's memory limit, which holds its page cache too."""

    live = []  # not yet removed, for the cleanup on exit

    def __init__(self, name, limit_mib):
        v1 = Path("/sys/fs/cgroup/memory")
        if (v1 / "cgroup.procs").exists():
            self.dir, limit_file = v1 / name, "memory.limit_in_bytes"
        elif "memory" in Path("/sys/fs/cgroup/cgroup.subtree_control").read_text():
            self.dir, limit_file = Path("/sys/fs/cgroup") / name, "memory.max"
        else:
            raise RuntimeError("no memory cgroup controller to put the server in")
        self.dir.mkdir()
        SteadyMemory.live.append(self)
        self.limit_mib = limit_mib
        (self.dir / limit_file).write_text(str(limit_mib << 20))

    def join(self, proc):
        for pid in proc.pids():
            (self.dir / "cgroup.procs").write_text(str(pid))

    def fill(self, path):
        """Charges a scratch file of 1.25x the limit to the cgroup (written from inside,
        synced so that its pages are clean), so that the cgroup starts full of cache."""
        mib = self.limit_mib * 5 // 4
        script = (f'echo $$ > "{self.dir}/cgroup.procs" && '
                  f'exec dd if=/dev/zero of="{path}" bs=1M count={mib} conv=fsync status=none')
        subprocess.run(["sh", "-c", script], check=True, timeout=300)

    def remove(self):
        """After its processes stopped; the cache charged to it moves to the parent."""
        if self in SteadyMemory.live:
            SteadyMemory.live.remove(self)
            with contextlib.suppress(OSError):
                self.dir.rmdir()


class Replica:
    """One regcache process with its own disk; `config` holds the tables besides listen,
    admin_listen and [cache]."""

    env = dict(os.environ, RUST_LOG="warn", AWS_ACCESS_KEY_ID=ACCESS_KEY,
               AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_EC2_METADATA_DISABLED="true")

    def __init__(self, work, name, port, config, netns=None):
        self.dir, self.name, self.port, self.config = work / name, name, port, config
        self.dir.mkdir()
        self.proc, self.netns = None, netns

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        self.admin_port = sbs.free_port()
        path = self.dir / "regcache.toml"
        path.write_text(f'listen = "127.0.0.1:{self.port}"\n'
                        f'admin_listen = "127.0.0.1:{self.admin_port}"\n'
                        f'[cache]\ndir = "{self.dir / "cache"}"\n{self.config}')
        argv = [str(Cluster.binary), "serve", "--config", str(path)]
        self.proc = sbs.Proc(self.name, argv, self.dir / "regcache.log", env=self.env,
                             netns=self.netns)
        self.proc.wait_ready(self.url + "/v2/")
        return self

    def kill(self):
        """SIGKILL, as a crash."""
        os.killpg(self.proc.popen.pid, signal.SIGKILL)
        self.proc.popen.wait(10)
        sbs.Proc.live.remove(self.proc)

    def stop(self):
        self.proc.stop()

    def wipe(self):
        shutil.rmtree(self.dir / "cache", ignore_errors=True)

    def metric(self, name, contains=""):
        text = sbs.http_text(f"http://127.0.0.1:{self.admin_port}/metrics", self.netns)
        return sum(float(m.group(2)) for m in re.finditer(rf"^{name}(\{{[^}}]*\}})? (\S+)$",
                                                           text, re.M)
                   if contains in (m.group(1) or ""))


class Cluster:
    binary = None

    def __init__(self, work, up, weed, size, upstream_url=None, prefix="c"):
        self.ports = [sbs.free_port() for _ in range(size)]
        members = ", ".join(f'"http://127.0.0.1:{p}"' for p in self.ports)
        secret = work / "secret"
        secret.write_text(SECRET)
        self.replicas = []
        for n, port in enumerate(self.ports):
            config = (f'[bucket]\nname = "{weed.bucket}"\nendpoint = "{weed.endpoint}"\n'
                      f'[cluster]\nmembers = [{members}]\nself = "http://127.0.0.1:{port}"\n'
                      f'secret_file = "{secret}"\n'
                      f'[[upstream]]\nname = "origin"\nurl = "{upstream_url or up.url}"\n')
            self.replicas.append(Replica(work, f"{prefix}{n}", port, config))

    def start(self):
        for r in self.replicas:
            r.start()
        return self

    def stop(self):
        for r in self.replicas:
            if r.proc:
                r.stop()

    def owner(self, key):
        """The owner of `key` by rendezvous hashing, as replicas compute it."""
        def weight(port):
            h = hashlib.sha256(f"http://127.0.0.1:{port}/\n{key}".encode()).digest()
            return int.from_bytes(h[:8], "big")
        return max(range(len(self.ports)), key=lambda n: weight(self.ports[n]))


class Relay:
    """A paced TCP relay in front of a server (the registry, the bucket): answers at
    `rate` bytes/s per connection, so a replica can be killed while its fill runs, and
    a bucket serves each connection as an object store does."""

    def __init__(self, target_port, rate):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port, self.target, self.rate = self.sock.getsockname()[1], target_port, rate
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def _accept(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client):
        try:
            server = socket.create_connection(("127.0.0.1", self.target))
        except OSError:
            client.close()
            return

        def up():
            try:
                while data := client.recv(65536):
                    server.sendall(data)
            except OSError:
                pass
        threading.Thread(target=up, daemon=True).start()
        # A token bucket with a small burst: a pooled connection that sat idle earns no
        # credit for a later body.
        burst = 256 << 10
        tokens, last = burst, time.monotonic()
        try:
            while data := server.recv(65536):
                now = time.monotonic()
                tokens = min(burst, tokens + (now - last) * self.rate) - len(data)
                last = now
                if tokens < 0:
                    time.sleep(-tokens / self.rate)
                client.sendall(data)
        except OSError:
            pass
        for s in (client, server):
            s.close()

    def close(self):
        self.sock.close()


def settle(limit=60.0):
    """Flushes dirty pages, then waits (<= limit s) until the CPUs are mostly idle (not
    waiting on I/O) for a second: what one figure left behind (written-back layers, a
    bucket digesting uploads) must not slow the next."""
    os.sync()

    def idle_total():
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        return fields[3], sum(fields)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        (i0, t0), _ = idle_total(), time.sleep(1.0)
        i1, t1 = idle_total()
        if (i1 - i0) / max(t1 - t0, 1) >= 0.85:
            return
    log("the CPUs did not settle; measuring anyway")


def random_blob(path, size):
    """A file of `size` random bytes and its digest."""
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        left = size
        while left:
            chunk = os.urandom(min(left, 4 * MiB))
            digest.update(chunk)
            out.write(chunk)
            left -= len(chunk)
    return sbs.Blob("sha256:" + digest.hexdigest(), size, path=path)


def push(up, work, name, size):
    blob = random_blob(work / name, size)
    up.push_blob("bench/big", blob)
    blob.path.unlink()
    return blob


def curls(urls, max_secs=300, netns=None):
    """One curl per URL, all at once; their parsed results (code, ttfb, total, size, and
    curl's exit status `rc`: 18 for a body cut short, 0 for one that ended cleanly)."""
    procs = [subprocess.Popen(sbs.curl_argv(u, max_secs, netns), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for u in urls]
    out = []
    for p in procs:
        stdout, _ = p.communicate(timeout=max_secs + 30)
        r = sbs.parse_curl(stdout) if stdout.strip() else {"code": 0, "size": 0}
        out.append(dict(r, rc=p.returncode))
    return out


def blob_url(base, digest, repo="bench/big"):
    return f"{base}/v2/{repo}/blobs/{digest}"


def whole(results, size):
    return sum(1 for r in results if r["code"] == 200 and r["size"] == size)


# ---------------------------------------------------------------- the figures


def fig_cold_kill_wipe(ctx, rows):
    s, up, work = ctx["s"], ctx["up"], ctx["work"]
    size = s.big
    blob = push(up, work, "cold.bin", size)
    cluster = Cluster(work, up, ctx["weed"], 3, prefix="cold").start()
    rs = cluster.replicas
    log(f"60 cold clients of a {size // MiB} MiB blob over 3 replicas")
    offset = up.log_offset()
    t0 = time.monotonic()
    res = curls([blob_url(rs[n % 3].url, blob.digest) for n in range(s.clients)])
    wall = time.monotonic() - t0
    gets, _ = up.blob_gets_since(offset, blob.digest)
    rows.append((f"upstream GETs per unique blob, 3 replicas, {s.clients} concurrent cold "
                 f"clients ({size // MiB} MiB)", "1.0",
                 f"{gets} GET; {whole(res, size)}/{s.clients} whole bodies; last done "
                 f"{wall:.1f} s", gets == 1 and whole(res, size) == s.clients))
    # Wait for the upload, then kill a replica: its share is in the bucket.
    deadline = time.monotonic() + 60
    while sum(r.metric("regcache_bucket_operations_total", 'op="put_blob",result="ok"')
              for r in rs) < 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    offset = up.log_offset()
    rs[0].kill()
    res = curls([blob_url(rs[1 + n % 2].url, blob.digest) for n in range(6)])
    rs[0].start()
    res += curls([blob_url(rs[0].url, blob.digest)])
    gets, _ = up.blob_gets_since(offset, blob.digest)
    rows.append(("a replica killed: later pulls of cached blobs", "0 upstream GETs",
                 f"{gets} GET; {whole(res, size)}/{len(res)} whole", gets == 0))
    offset = up.log_offset()
    for r in rs:
        r.stop()
        r.wipe()
    cluster.start()
    res = curls([blob_url(rs[n % 3].url, blob.digest) for n in range(6)])
    gets, _ = up.blob_gets_since(offset, blob.digest)
    rows.append(("every replica restarted with empty disks", "0 upstream GETs",
                 f"{gets} GET; {whole(res, size)}/{len(res)} whole", gets == 0))
    cluster.stop()


def fig_owner_kill(ctx, rows):
    s, up, work = ctx["s"], ctx["up"], ctx["work"]
    size = s.big
    blob = push(up, work, "kill.bin", size)
    relay = Relay(up.port, 96 * MiB)
    cluster = Cluster(work, up, ctx["weed"], 3, upstream_url=relay.url, prefix="kill").start()
    rs = cluster.replicas
    owner = cluster.owner(blob.digest)
    log(f"owner kill: {s.clients} clients, replica {owner} owns the blob")
    offset = up.log_offset()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(curls, [blob_url(rs[n % 3].url, blob.digest)
                                     for n in range(s.clients)])
        time.sleep(size / (96 * MiB) / 3)  # about a third into the fill
        rs[owner].kill()
        res = future.result()
    # A body cut by the death is a transfer error for curl; a clean short one would end
    # with status 0 and fewer bytes: none may.
    cut = [r for r in res if r["rc"] != 0]
    clean_short = [r for r in res if r["rc"] == 0 and r["size"] != size]
    gets, _ = up.blob_gets_since(offset, blob.digest)
    relay.close()
    cluster.stop()
    rows.append(("the same with the owner SIGKILLed mid-fill", "<= 2 GETs, no clean short body",
                 f"{gets} GETs; {whole(res, size)}/{len(res)} whole, {len(cut)} cut (an "
                 f"error the client retries), {len(clean_short)} clean short",
                 gets <= 2 and not clean_short))


def fig_forward_ttfb(ctx, rows):
    s, up, work = ctx["s"], ctx["up"], ctx["work"]
    cluster = Cluster(work, up, ctx["weed"], 3, prefix="ttfb").start()
    rs = cluster.replicas
    direct, forwarded = [], []
    for n in range(s.ttfb_samples):
        blob = push(up, work, f"ttfb{n}.bin", 256 * 1024)
        owner = cluster.owner(blob.digest)
        other = (owner + 1) % 3
        via = rs[owner] if n % 2 == 0 else rs[other]
        r = sbs.curl_get(blob_url(via.url, blob.digest), blob.size)
        (direct if n % 2 == 0 else forwarded).append(r["ttfb"] * 1000)
    cluster.stop()
    extra = statistics.median(forwarded) - statistics.median(direct)
    rows.append(("extra time to first byte of a forwarded cold GET, loopback", "<= 5 ms median",
                 f"{extra:+.2f} ms (cold at the owner {statistics.median(direct):.2f} ms, "
                 f"forwarded {statistics.median(forwarded):.2f} ms; "
                 f"{len(direct)}+{len(forwarded)} blobs of 256 KiB)", extra <= 5))


def bucket_reads(ctx, tag, ns=None, per_connection=None):
    """Each hot blob read twice: once with a plain GET of the bucket object (the URL a
    replica presigns for its 307) and once through a replica whose disk lacks it, so it
    streams the blob from the bucket, verifies and lands it. Medians in MiB/s, leaving
    out the first blob (it only warms connections). The reader sits in a SteadyMemory
    cgroup at the regional Deployment's 2 GiB limit (see that class: a fresh VM charges
    its first touch of every page to the writer). With `ns`, everything runs in that
    namespace (sbs.Netns), and only what leaves the bucket's S3 port is shaped. With
    `per_connection` (bytes/s), the replicas and the plain GETs reach the bucket through a
    Relay that serves each connection at that rate, as an object store does."""
    s, work = ctx["s"], ctx["work"]
    netns = ns.name if ns else None
    up = ctx["up"].twin(f"up-{tag}", netns) if ns else ctx["up"]
    weed = Weed(work, "bench", netns) if ns else ctx["weed"]
    if ns:
        ns.shape_port(weed.port)
    relay = Relay(weed.port, per_connection) if per_connection else None
    endpoint = relay.url if relay else weed.endpoint
    bucket = f'[bucket]\nname = "{weed.bucket}"\nendpoint = "{endpoint}"\n'
    upstream = f'[[upstream]]\nname = "origin"\nurl = "{up.url}"\n'
    filler = Replica(work, f"filler-{tag}", sbs.free_port(), bucket + upstream, netns).start()
    signer = Replica(work, f"signer-{tag}", sbs.free_port(),
                     bucket + 'redirect_min_bytes = "1MiB"\n' + upstream, netns).start()
    reader = Replica(work, f"reader-{tag}", sbs.free_port(), bucket + upstream, netns)
    # Pushed here: the twin in the namespace serves the same storage.
    blobs = [push(ctx["up"], work, f"hot-{tag}{n}.bin", s.hot) for n in range(s.hot_blobs + 1)]
    curls([blob_url(filler.url, b.digest) for b in blobs], netns=netns)
    deadline = time.monotonic() + 120
    while (filler.metric("regcache_bucket_operations_total", 'op="put_blob",result="ok"')
           < len(blobs) and time.monotonic() < deadline):
        time.sleep(0.2)
    # The reader runs throughout, as a replica does: each blob is new to its disk.
    reader.start()
    try:
        memory = SteadyMemory(f"regcache-bench-{os.getpid()}-{tag}", 2048)
        memory.join(reader.proc)
        memory.fill(reader.dir / "scratch")
    except (OSError, RuntimeError, subprocess.CalledProcessError) as e:
        log(f"bucket: WARNING: the reader stays out of a memory cgroup ({e}); on a fresh "
            "VM its page-cache writes then pay the host's first touch")
    settle()
    plain, through = [], []
    for n, b in enumerate(blobs):
        location = redirect(blob_url(signer.url, b.digest), netns)
        direct = sbs.curl_get(location, b.size, netns)["speed"]
        replica = sbs.curl_get(blob_url(reader.url, b.digest), b.size, netns)["speed"]
        if n > 0:
            plain.append(direct)
            through.append(replica)
    for r in (reader, filler, signer):
        r.stop()
    for memory in list(SteadyMemory.live):
        memory.remove()
    if relay:
        relay.close()
    if ns:
        weed.proc.stop()
        up.proc.stop()
    return statistics.median(through) / MiB, statistics.median(plain) / MiB, len(plain)


def redirect(url, netns):
    """The Location of the 307 that `url` must answer."""
    out = subprocess.run(sbs.ns_argv(netns, ["curl", "-sS", "-o", "/dev/null", "-w",
                                             "%{http_code} %{redirect_url}", url]),
                         capture_output=True, text=True, timeout=30)
    code, _, location = out.stdout.partition(" ")
    if code != "307":
        raise RuntimeError(f"expected a redirect from {url}, got {out.stdout!r} {out.stderr}")
    return location


def bucket_row(s, where, through, plain, n):
    ratio = through / plain
    return (f"hot blob ({s.hot // MiB} MiB) from the bucket through a replica, vs a plain "
            f"GET of it from the same SeaweedFS, {where}", ">= 0.8x",
            f"{ratio:.2f}x ({through:.0f} vs {plain:.0f} MiB/s, median of {n} blobs)",
            ratio >= 0.8)


def fig_bucket_hot(ctx, rows):
    through, plain, n = bucket_reads(ctx, "lo")
    rows.append(bucket_row(ctx["s"], "loopback (bucket, replica and curl share the 2 cores)",
                           through, plain, n))


def fig_bucket_per_connection(ctx, rows):
    """The same reads with every connection to the bucket held to 32 MiB/s, as an object
    store serves a single connection at a limited rate: the replica reads large blobs as
    parallel ranged GETs, a plain GET is one connection."""
    rate = 32 * MiB
    through, plain, n = bucket_reads(ctx, "relay", per_connection=rate)
    rows.append(bucket_row(ctx["s"], f"each connection to the bucket at {rate // MiB} MiB/s",
                           through, plain, n))


def fig_bucket_shaped(ctx, rows):
    """The same reads with the bucket behind a link of each --rates rate, as an object
    store is on another host: what leaves SeaweedFS's S3 port is shaped (htb, as in
    side_by_side.py's shaped section), in a network namespace made for it."""
    s = ctx["s"]
    if os.geteuid() != 0:
        log("bucket-shaped: SKIPPED: it needs root (ip netns add, tc)")
        rows.append(("hot blob from the bucket over a shaped link", ">= 0.8x",
                     "skipped: needs root", False))
        return
    for n, (label, bps) in enumerate(s.rates):
        ns = sbs.Netns(f"regcache-bucket-{os.getpid()}-{n}", bps)
        try:
            through, plain, n = bucket_reads(ctx, f"shaped-{bps}", ns)
        finally:
            ns.delete()
        rows.append(bucket_row(s, f"bucket link shaped to {label}", through, plain, n))


def pull_image(base, digests, sizes):
    """Every blob of the image through `base` at once; seconds until the last is done."""
    t0 = time.monotonic()
    res = curls([blob_url(base, d, "bench/chain") for d in digests])
    for r, size in zip(res, sizes):
        if r["code"] != 200 or r["size"] != size:
            raise RuntimeError(f"chain pull through {base}: {r}")
    return time.monotonic() - t0


def fig_chain(ctx, rows):
    s, up, work = ctx["s"], ctx["up"], ctx["work"]
    layers = []
    for n, size in enumerate(s.chain_layers):
        blob = random_blob(work / f"chain{n}.bin", size)
        up.push_blob("bench/chain", blob)
        blob.path.unlink()
        layers.append(blob)
    digests, sizes = [b.digest for b in layers], [b.size for b in layers]

    # The regional's registry link is paced, as the internet is slower than the VPC: the
    # goal is that nodes ride the one fill rather than queue behind each other.
    relay = Relay(up.port, s.chain_rate)

    def fleet(nodes, tag):
        regional = Replica(work, f"regional-{tag}", sbs.free_port(),
                           f'[[upstream]]\nname = "origin"\nurl = "{relay.url}"\n'
                           f'aliases = ["127.0.0.1:{up.port}"]\n').start()
        config = (f'[[upstream]]\nname = "origin"\nurl = "{up.url}"\n'
                  f'parents = ["{regional.url}"]\n')
        return regional, [Replica(work, f"node-{tag}-{n}", sbs.free_port(), config).start()
                          for n in range(nodes)]

    regional, nodes = fleet(1, "alone")
    alone = pull_image(nodes[0].url, digests, sizes)
    for r in [regional, *nodes]:
        r.stop()
    regional, nodes = fleet(s.nodes, "all")
    offset = up.log_offset()
    with concurrent.futures.ThreadPoolExecutor(len(nodes)) as pool:
        times = list(pool.map(lambda n: pull_image(n.url, digests, sizes), nodes))
    gets = [up.blob_gets_since(offset, d)[0] for d in digests]
    for r in [regional, *nodes]:
        r.stop()
    last = max(times)
    relay.close()
    rows.append((f"node-local -> regional -> registry, {s.nodes} nodes pulling one cold image "
                 f"({sum(sizes) // MiB} MiB in {len(layers)} layers) at once, registry link "
                 f"{s.chain_rate // MiB} MiB/s per connection",
                 "1 fetch per blob; last node <= 1.1x one node alone",
                 f"GETs per blob {gets}; last node {last:.2f} s vs alone {alone:.2f} s = "
                 f"{last / alone:.2f}x", all(g == 1 for g in gets) and last <= 1.1 * alone))


FIGURES = {"cold": fig_cold_kill_wipe, "kill": fig_owner_kill, "ttfb": fig_forward_ttfb,
           "bucket": fig_bucket_hot, "bucket-per-connection": fig_bucket_per_connection,
           "bucket-shaped": fig_bucket_shaped, "chain": fig_chain}


class Settings:
    def __init__(self, quick, only, rates):
        self.big = (64 if quick else 256) * MiB
        self.clients = 20 if quick else 60
        self.ttfb_samples = 10 if quick else 40
        self.hot = (32 if quick else 128) * MiB
        self.hot_blobs = 2 if quick else 4
        self.nodes = 8
        self.chain_rate = 8 * MiB
        self.chain_layers = [s * MiB for s in ((16, 8, 4) if quick else (48, 32, 16))]
        self.only = only
        self.rates = rates  # of bucket-shaped: (label, bits per second)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller blobs and fewer clients")
    p.add_argument("--only", action="append", choices=FIGURES, metavar="FIGURE",
                   help=f"run only this figure (repeatable): {', '.join(FIGURES)}")
    p.add_argument("--rates", type=sbs.parse_rates, default=sbs.parse_rates("1gbit,2.5gbit"),
                   help="bucket-shaped's link rates, in tc's units (default 1gbit,2.5gbit)")
    a = p.parse_args()
    s = Settings(a.quick, tuple(a.only or FIGURES), a.rates)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if not sbs.REGCACHE.exists() or not WEED.exists():
        sys.exit("needs target/release/regcache (cargo build --release) and target/venv/bin/weed "
                 "(tests/run.sh installs it)")
    work = Path(tempfile.mkdtemp(prefix="regcache-cluster-"))
    t0 = time.monotonic()
    rows = []
    try:
        Cluster.binary = work / "regcache"
        shutil.copy2(sbs.REGCACHE, Cluster.binary)
        up = sbs.Upstream(work)
        weed = Weed(work, "bench")
        ctx = {"s": s, "up": up, "weed": weed, "work": work}
        for name in s.only:
            settle()
            log(f"{name}: load average {sbs.loadavg()}")
            t1 = time.monotonic()
            FIGURES[name](ctx, rows)
            log(f"{name} took {time.monotonic() - t1:.0f} s")
    finally:
        for proc in list(reversed(sbs.Proc.live)):
            proc.stop()
        for ns in list(sbs.Netns.live):
            ns.delete()
        for memory in list(SteadyMemory.live):
            memory.remove()
        shutil.rmtree(work, ignore_errors=True)
        log(f"done in {time.monotonic() - t0:.0f} s; everything stopped, {work} removed")
    cpuinfo = Path("/proc/cpuinfo").read_text()
    cpu = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.M)
    rev = sbs.first_line(["git", "-C", str(REPO), "describe", "--always", "--dirty"])
    print(f"## regcache cluster\n\n- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}\n"
          f"- machine: {os.cpu_count()} CPUs ({cpu[1] if cpu else '?'}), all on 127.0.0.1\n"
          f"- command: `{' '.join(['python3', 'benches/cluster.py', *sys.argv[1:]])}`; "
          f"regcache {rev}\n")
    print(sbs.md_table(["figure", "goal", "measured", "met"],
                       [(f, g, m, "yes" if ok else "**no**") for f, g, m, ok in rows]))


if __name__ == "__main__":
    main()
