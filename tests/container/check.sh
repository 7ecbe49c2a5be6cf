#!/usr/bin/env bash
# The container image, end to end: builds it with container/build.sh from
# target/debug/regcache (or $REGCACHE_BINARY), runs it with podman on the host network
# with a mounted config, a cache volume and a read-only root, and pulls an image through
# it with skopeo from a real upstream (Debian's docker-registry) on 127.0.0.1. Checks the
# daemon runs as 65532:65532, that every digest pulled through it equals the pushed one,
# that the blobs landed in the volume and that /metrics counted the misses. Also starts
# the image with its own CMD (no config, no network) to see that `podman run IMAGE` works
# and writes its admin token into the cache volume (its admin listener is on 0.0.0.0).
#
# Exit 0 with "container: 1 passed, 0 failed" last; 1 on a failure; 2 when podman is not
# installed; 3 when podman is installed but cannot run a container on this machine (the
# caller decides whether that may pass). Every server listens on 127.0.0.1, every wait is
# bounded, and everything started is removed on exit. Works from any cwd.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
binary=${REGCACHE_BINARY:-$repo/target/debug/regcache}
image=localhost/regcache:test
repository=regcache-test/hello
tag=v1

# Everything here is on loopback: no proxy may take part.
unset http_proxy https_proxy all_proxy no_proxy HTTP_PROXY HTTPS_PROXY ALL_PROXY NO_PROXY

say() { echo "container: $*"; }
fail() {
    say "FAILED: $*"
    say "0 passed, 1 failed"
    exit 1
}
skip() {
    say "SKIPPED (not a pass): $*"
    exit 3
}

if ! command -v podman >/dev/null; then
    say "podman is not installed"
    exit 2
fi
for tool in skopeo docker-registry python3; do
    command -v "$tool" >/dev/null || fail "$tool is not installed"
done
[[ -x $binary ]] || fail "$binary is missing (cargo build)"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/regcache-container.XXXXXX")
name=regcache-check-$$
volume=regcache-check-$$
registry_pid=
built=0
cleanup() {
    set +e
    # One at a time: a name that does not exist would stop the others' removal.
    for container in "$name" "$name-cmd" "$name-files"; do
        podman rm -f -v "$container" >/dev/null 2>&1
    done
    podman volume rm -f "$volume" >/dev/null 2>&1
    ((built)) && podman rmi -f "$image" >/dev/null 2>&1
    if [[ -n $registry_pid ]]; then
        kill "$registry_pid" 2>/dev/null
        wait "$registry_pid" 2>/dev/null
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

# GET http://127.0.0.1:PORT/PATH; prints the body, fails on no answer within 2 s or a non-200.
http_get() {
    python3 - "$1" <<'EOF'
import sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
with opener.open(sys.argv[1], timeout=2) as response:
    sys.stdout.write(response.read().decode())
EOF
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# --- 1. Can podman run a container here at all? -------------------------------------------
# A probe rootfs of the host's `true` and its libraries, run with --rootfs: a failure here
# is this machine's, not the image's. Known limits are worked around, and said so:
# - crun refuses cgroup v1/v2 hybrid hosts whose v2 hierarchy holds a controller; runc
#   runs there;
# - without CAP_SYS_RESOURCE, root podman's default rlimits (nofile and nproc 1048576)
#   cannot be set, so modest explicit ones are given.
timeout 60 podman info >"$tmp/podman-info.log" 2>&1 ||
    skip "podman info failed: $(tail -n 3 "$tmp/podman-info.log")"
probe=$tmp/probe
true_bin=$(type -P true)
mkdir -p "$probe$(dirname "$true_bin")"
cp "$true_bin" "$probe$true_bin"
while read -r first arrow path _; do
    lib=
    if [[ $arrow == '=>' && $path == /* ]]; then lib=$path; elif [[ $first == /* ]]; then lib=$first; fi
    if [[ -n $lib ]]; then
        mkdir -p "$probe$(dirname "$lib")"
        cp -L "$lib" "$probe$lib"
    fi
done < <(ldd "$true_bin")
podman_global=()
run_flags=()
probe_run() {
    timeout 60 podman "${podman_global[@]}" run --rm --network=none "${run_flags[@]}" \
        --rootfs "$probe" "$true_bin" >"$tmp/probe.log" 2>&1
}
probed=0
for _ in 1 2 3; do
    if probe_run; then
        probed=1
        break
    fi
    if grep -q 'hybrid mode not supported' "$tmp/probe.log" && ((${#podman_global[@]} == 0)); then
        command -v runc >/dev/null ||
            skip "crun cannot run containers on this cgroup hybrid host and runc is not installed (apt-get install runc)"
        podman_global=(--runtime runc)
    elif grep -qiE 'rlimit' "$tmp/probe.log" && ((${#run_flags[@]} == 0)); then
        nofile=$(ulimit -Hn)
        [[ $nofile == unlimited || $nofile -gt 65536 ]] && nofile=65536
        run_flags=(--ulimit "nofile=$nofile:$nofile" --ulimit nproc=4096:4096)
    else
        break
    fi
done
((probed)) || skip "podman cannot run a container here: $(tail -n 3 "$tmp/probe.log")"
if ((${#podman_global[@]} + ${#run_flags[@]} > 0)); then
    say "podman runs containers here with: ${podman_global[*]} ${run_flags[*]}"
fi
pod() { podman "${podman_global[@]}" "$@"; }

# --- 2. The upstream: docker-registry on 127.0.0.1 -----------------------------------------
registry_port=$(free_port)
cat >"$tmp/registry.yml" <<EOF
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: $tmp/registry-data
http:
  addr: 127.0.0.1:$registry_port
  secret: regcache-container-test-not-a-secret
EOF
docker-registry serve "$tmp/registry.yml" >"$tmp/registry.log" 2>&1 &
registry_pid=$!
deadline=$((SECONDS + 20))
until http_get "http://127.0.0.1:$registry_port/v2/" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || fail "docker-registry did not answer in 20 s: $(tail -n 5 "$tmp/registry.log")"
    kill -0 "$registry_pid" 2>/dev/null || fail "docker-registry exited: $(tail -n 5 "$tmp/registry.log")"
    sleep 0.2
done

# --- 3. A small image pushed to it ----------------------------------------------------------
# An OCI layout with two gzip layers (a text file; 1 MiB of seeded random bytes), written
# here so the test needs no image from anywhere.
python3 - "$tmp/src" "$tag" <<'EOF'
import gzip, hashlib, io, json, os, random, sys, tarfile

layout, tag = sys.argv[1], sys.argv[2]
blobs = os.path.join(layout, "blobs", "sha256")
os.makedirs(blobs)

def put(data):
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, digest), "wb") as f:
        f.write(data)
    return "sha256:" + digest, len(data)

def layer(name, content):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(content), 0o644, 0
        tar.addfile(info, io.BytesIO(content))
    diff_id = "sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()
    digest, size = put(gzip.compress(raw.getvalue(), mtime=0))
    return diff_id, {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                     "digest": digest, "size": size}

layers = [layer("hello.txt", b"hello through regcache\n"),
          layer("noise.bin", random.Random(7).randbytes(1 << 20))]
config = {"architecture": "amd64", "os": "linux", "config": {},
          "rootfs": {"type": "layers", "diff_ids": [d for d, _ in layers]}}
config_digest, config_size = put(json.dumps(config).encode())
manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest, "size": config_size},
            "layers": [d for _, d in layers]}
manifest_digest, manifest_size = put(json.dumps(manifest).encode())
index = {"schemaVersion": 2, "manifests": [{
    "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest,
    "size": manifest_size, "annotations": {"org.opencontainers.image.ref.name": tag}}]}
with open(os.path.join(layout, "index.json"), "w") as f:
    json.dump(index, f)
with open(os.path.join(layout, "oci-layout"), "w") as f:
    json.dump({"imageLayoutVersion": "1.0.0"}, f)
EOF
timeout 120 skopeo copy --quiet --preserve-digests --dest-tls-verify=false \
    "oci:$tmp/src:$tag" "docker://127.0.0.1:$registry_port/$repository:$tag" ||
    fail "skopeo could not push the test image to docker-registry"

# --- 4. The image ---------------------------------------------------------------------------
built=1
timeout 300 "$repo/container/build.sh" --binary "$binary" --tag "$image" >"$tmp/build.log" 2>&1 ||
    fail "container/build.sh failed: $(tail -n 20 "$tmp/build.log")"
size=$(pod image inspect --format '{{.Size}}' "$image")
say "built $image ($((size / 1000 / 1000)) MB)"
pod create --name "$name-files" "$image" >/dev/null
pod export "$name-files" | tar -t >"$tmp/files.txt"
pod rm -v "$name-files" >/dev/null
grep -qx 'usr/local/bin/regcache' "$tmp/files.txt" || fail "the image has no usr/local/bin/regcache"
if grep -E '(^|/)(sh|bash|dash|busybox)$' "$tmp/files.txt"; then
    fail "the image has a shell"
fi

# --- 5. The image's own CMD starts (no config, no network at all) ---------------------------
pod run -d --name "$name-cmd" --network=none --read-only "${run_flags[@]}" "$image" >/dev/null ||
    fail "podman run $image (its own CMD) failed"
# (Colour codes, should a build print them, are dropped before matching.)
deadline=$((SECONDS + 30))
until pod logs "$name-cmd" 2>&1 | sed 's/\x1b\[[0-9;]*m//g' >"$tmp/cmd.log" &&
    grep -q 'regcache listening addr=0.0.0.0:5000' "$tmp/cmd.log"; do
    [[ $(pod inspect --format '{{.State.Running}}' "$name-cmd") == true ]] ||
        fail "the image's own CMD exited: $(tail -n 10 "$tmp/cmd.log")"
    ((SECONDS < deadline)) || fail "the image's own CMD did not listen in 30 s: $(tail -n 10 "$tmp/cmd.log")"
    sleep 0.2
done
# Its admin listener on 0.0.0.0 needs a token: the CMD names a file in the cache volume,
# which the daemon creates before it listens.
grep -q 'wrote a new admin token path=/var/cache/regcache/admin-token' "$tmp/cmd.log" ||
    fail "the image's own CMD did not write its admin token into the cache volume: $(tail -n 10 "$tmp/cmd.log")"
pod rm -f -v "$name-cmd" >/dev/null

# --- 6. regcache in the container, on loopback, in front of docker-registry -----------------
api_port=$(free_port)
admin_port=$(free_port)
cat >"$tmp/regcache.toml" <<EOF
listen = "127.0.0.1:$api_port"
admin_listen = "127.0.0.1:$admin_port"

[cache]
dir = "/var/cache/regcache"

[[upstream]]
name = "local"
url = "http://127.0.0.1:$registry_port"
default = true
EOF
chmod 0644 "$tmp/regcache.toml"
pod volume create "$volume" >/dev/null
pod run -d --name "$name" --network=host --read-only "${run_flags[@]}" \
    -v "$tmp/regcache.toml:/etc/regcache/regcache.toml:ro" \
    -v "$volume:/var/cache/regcache" \
    "$image" --config /etc/regcache/regcache.toml >/dev/null ||
    fail "podman run $image failed"
logs() { pod logs "$name" 2>&1 | tail -n 20; }
deadline=$((SECONDS + 30))
until [[ $(http_get "http://127.0.0.1:$admin_port/healthz" 2>/dev/null) == ok* ]]; do
    [[ $(pod inspect --format '{{.State.Running}}' "$name") == true ]] ||
        fail "regcache exited in the container: $(logs)"
    ((SECONDS < deadline)) || fail "no 200 ok from /healthz in 30 s: $(logs)"
    sleep 0.2
done

[[ $(pod inspect --format '{{.HostConfig.ReadonlyRootfs}}' "$name") == true ]] ||
    fail "the container's root filesystem is not read-only"
pid=$(pod inspect --format '{{.State.Pid}}' "$name")
# Real, effective, saved and filesystem ids, as the kernel sees them.
ids=$(grep -E '^(Uid|Gid):' "/proc/$pid/status" | tr -s '\t ' ' ')
[[ $ids == $'Uid: 65532 65532 65532 65532\nGid: 65532 65532 65532 65532' ]] ||
    fail "regcache does not run as 65532:65532: $ids"
user=$(pod top "$name" user | tail -n 1 | tr -d ' ')
[[ $user == regcache ]] || fail "podman top names the user '$user', not regcache"
say "regcache runs as 65532:65532 ($user) on a read-only root, healthy"

# --- 7. A pull through it -------------------------------------------------------------------
timeout 120 skopeo copy --quiet --preserve-digests --src-tls-verify=false \
    "docker://127.0.0.1:$api_port/$repository:$tag" "oci:$tmp/out:$tag" ||
    fail "skopeo could not pull through regcache: $(logs)"
raw_direct=$(timeout 30 skopeo inspect --raw --tls-verify=false "docker://127.0.0.1:$registry_port/$repository:$tag")
raw_proxied=$(timeout 30 skopeo inspect --raw --tls-verify=false "docker://127.0.0.1:$api_port/$repository:$tag")
[[ $raw_direct == "$raw_proxied" ]] || fail "the manifest through regcache differs from the upstream's"
python3 - "$tmp/src" "$tmp/out" <<'EOF' || fail "the pulled image does not match the pushed one"
import hashlib, json, os, sys

def layout(path):
    index = json.load(open(os.path.join(path, "index.json")))
    manifest = index["manifests"][0]["digest"]
    blobs = {}
    directory = os.path.join(path, "blobs", "sha256")
    for name in os.listdir(directory):
        data = open(os.path.join(directory, name), "rb").read()
        if hashlib.sha256(data).hexdigest() != name:
            sys.exit(f"{path}: blob {name} does not hash to its name")
        blobs["sha256:" + name] = data
    wanted = json.loads(blobs[manifest])
    wanted = [wanted["config"]["digest"]] + [l["digest"] for l in wanted["layers"]]
    missing = [d for d in wanted if d not in blobs]
    if missing:
        sys.exit(f"{path}: blobs missing: {missing}")
    return manifest, sorted(blobs)

pushed, pulled = layout(sys.argv[1]), layout(sys.argv[2])
if pushed != pulled:
    sys.exit(f"pushed {pushed}, pulled {pulled}")
print(f"container: pulled {pulled[0]} and {len(pulled[1]) - 1} blobs, digests equal to the pushed ones")
EOF

# Every object of the image is in the volume under its digest, written by 65532 (the
# store may write behind the response, so this waits up to 10 s).
mountpoint=$(pod volume inspect --format '{{.Mountpoint}}' "$volume")
owner=$(stat -c %u:%g "$mountpoint")
[[ $owner == 65532:65532 ]] || fail "the cache volume is owned by $owner, not 65532:65532"
python3 - "$tmp/src" "$mountpoint" <<'EOF' || fail "the cache volume does not hold the image"
import hashlib, os, sys, time

wanted = set(os.listdir(os.path.join(sys.argv[1], "blobs", "sha256")))
deadline = time.monotonic() + 10
while True:
    found = {}
    for directory, _, files in os.walk(sys.argv[2]):
        for name in files:
            if name in wanted:
                found[name] = os.path.join(directory, name)
    if len(found) == len(wanted) or time.monotonic() > deadline:
        break
    time.sleep(0.2)
if len(found) != len(wanted):
    sys.exit(f"not in the cache volume: {sorted(wanted - set(found))}")
for name, path in found.items():
    data = open(path, "rb").read()
    if os.sep + "manifests" + os.sep in path:
        data = data.split(b"\n", 1)[1]  # after the "<media type>\n" line
    if hashlib.sha256(data).hexdigest() != name:
        sys.exit(f"{path} does not hash to its name")
    if os.stat(path).st_uid != 65532:
        sys.exit(f"{path} is owned by uid {os.stat(path).st_uid}, not 65532")
print(f"container: the cache volume holds all {len(found)} objects, owned by 65532")
EOF

# /metrics counted the pull as misses that went upstream.
metrics=$(http_get "http://127.0.0.1:$admin_port/metrics") || fail "GET /metrics failed"
misses=$(awk '/^regcache_requests_total\{/ && /result="miss"/ { n += $NF } END { print n + 0 }' <<<"$metrics")
((misses > 0)) || fail "regcache_requests_total shows no miss: $(grep '^regcache_requests_total' <<<"$metrics")"
say "regcache_requests_total counted $misses misses"

# As PID 1 it still stops cleanly on SIGTERM (podman stop), well before the SIGKILL.
timeout 30 podman "${podman_global[@]}" stop -t 15 "$name" >/dev/null || fail "podman stop failed"
code=$(pod inspect --format '{{.State.ExitCode}}' "$name")
[[ $code == 0 ]] || fail "regcache exited with $code on SIGTERM, not 0: $(logs)"

say "1 passed, 0 failed"
