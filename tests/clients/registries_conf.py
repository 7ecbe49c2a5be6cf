"""registries.conf (podman, CRI-O, buildah, skopeo): structure, skopeo pulling through
it from a fake registry, and podman reading it."""

import json
import tempfile
import tomllib
from pathlib import Path

from common import CLIENTS, closed_port, hermetic_env, is_loopback, load, rel, run, tail
from fake_registry import FakeRegistry


def checks(c, have_podman):
    """Structure, then skopeo's pulls and podman's reading."""
    path = CLIENTS / "registries.conf"
    where = rel(path)
    config = load(c, path, tomllib.loads)
    if config is None:
        return
    registries = config.get("registry", [])
    c.check(f"{where}: has a docker.io [[registry]]",
            any(r.get("prefix") == "docker.io" for r in registries))
    for entry in registries:
        prefix = entry.get("prefix", entry.get("location"))
        mirrors = entry.get("mirror", [])
        c.check(f"{where}: {prefix}: mirrors by tag too (no mirror-by-digest-only)",
                not entry.get("mirror-by-digest-only")
                and all(m.get("pull-from-mirror", "all") == "all" for m in mirrors))
        for m in mirrors:
            host, _, upstream = m.get("location", "").partition("/")
            c.check(f"{where}: {prefix}: mirror {m.get('location')} names the registry as "
                    "its path, which regcache routes on", upstream == prefix)
            c.check(f"{where}: {prefix}: loopback mirror {host} has insecure = true "
                    "(plain HTTP)", not is_loopback(host.rsplit(":", 1)[0])
                    or m.get("insecure") is True)
    skopeo_pulls(c, path, registries)
    if have_podman:
        podman_reads(c, path, registries)
    else:
        c.skip(f"{where}: podman info lists the mirrors", "podman is not installed")


def skopeo_pulls(c, path, registries):
    """skopeo copies an image of each registry through a copy of the file whose mirrors
    are a fake registry and whose registries are a closed port (no way past loopback)."""
    where = rel(path)
    tmp_dir = tempfile.TemporaryDirectory(prefix="regcache-skopeo-", ignore_cleanup_errors=True)
    with FakeRegistry("registries.conf mirror") as mirror, tmp_dir as tmp:
        fallback = closed_port()
        text = path.read_text()
        for entry in registries:
            for m in entry.get("mirror", []):
                location = m.get("location", "")
                moved = mirror.address + location[len(location.split("/", 1)[0]):]
                text = text.replace(f'location = "{location}"', f'location = "{moved}"')
            if "location" in entry:
                text = text.replace(f'location = "{entry["location"]}"',
                                    f'location = "{fallback}"')
        rewritten = tomllib.loads(text)
        entries = rewritten.get("registry", [])
        locations = [r.get("location", "") for r in entries]
        locations += [m.get("location", "") for r in entries for m in r.get("mirror", [])]
        if not c.check(f"{where}: rewritten for skopeo to name only 127.0.0.1",
                       all(loc.startswith("127.0.0.1:") for loc in locations), str(locations)):
            return
        conf = Path(tmp, "registries.conf")
        conf.write_text(text)
        for entry in registries:
            prefix = entry.get("prefix", entry.get("location"))
            image = f"/v2/{prefix}/regcache-check/probe"
            out = Path(tmp, prefix)
            copied = run(["skopeo", "--registries-conf", str(conf), "--insecure-policy", "copy",
                          "--src-no-creds", "--retry-times", "0",
                          f"docker://{prefix}/regcache-check/probe:1", f"dir:{out}"],
                         env=hermetic_env(tmp))
            paths = [p for _, p in mirror.seen()]
            manifest = out / "manifest.json"
            c.check(f"{where}: skopeo copies a {prefix} image through the mirror, asking "
                    f"{image}/...",
                    copied.returncode == 0
                    and f"{image}/manifests/1" in paths
                    and sum(p.startswith(f"{image}/blobs/") for p in paths) == 2
                    and manifest.exists() and manifest.read_bytes() == mirror.manifest,
                    tail(copied.stderr) + f" mirror saw {paths}")


def podman_reads(c, path, registries):
    """podman info, with its storage in a temporary dir, lists the mirrors as written."""
    where = rel(path)
    tmp_dir = tempfile.TemporaryDirectory(prefix="regcache-podman-", ignore_cleanup_errors=True)
    with tmp_dir as tmp:
        info = run(["podman", "--root", f"{tmp}/root", "--runroot", f"{tmp}/runroot",
                    "--tmpdir", f"{tmp}/tmp", "--storage-driver", "vfs",
                    "info", "--format", "{{json .Registries}}"],
                   env={"CONTAINERS_REGISTRIES_CONF": str(path), **hermetic_env(tmp)})
    try:
        read = json.loads(info.stdout)
    except json.JSONDecodeError:
        c.check(f"{where}: podman info reads it", False, tail(info.stderr))
        return
    for entry in registries:
        prefix = entry.get("prefix", entry.get("location"))
        mirrors = read.get(prefix, {}).get("Mirrors") or []
        listed = {(m.get("Location"), m.get("Insecure")) for m in mirrors}
        wanted = {(m["location"], m.get("insecure", False)) for m in entry.get("mirror", [])}
        c.check(f"{where}: podman info lists {prefix}'s mirrors as written", wanted <= listed,
                f"podman has {sorted(listed)}")
