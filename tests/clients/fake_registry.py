"""A registry on 127.0.0.1 that records what clients ask of it, for tests/clients/check.py.

It serves one tiny OCI image (one layer holding one file) under every repository name
and every tag, so a client's pull can complete, and it records each request's method,
path and query. With `failing=True` it answers 503 to everything but the /v2/ probe, to
see a client move on to its fallback. Nothing here reaches past loopback.
"""

import gzip
import hashlib
import http.server
import io
import json
import re
import tarfile
import threading

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"

ROUTE = re.compile(r"^/v2/(?P<name>.+)/(?P<kind>manifests|blobs)/(?P<reference>[^/]+)$")


def digest_of(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def build_image(label):
    """(manifest bytes, {digest: blob bytes}) of a linux/amd64 image with one small layer
    whose file holds `label`: registries with different labels serve different digests."""
    content = f"pulled from the fake registry {label}\n".encode()
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = len(content)
        info.mtime = 0
        tar.addfile(info, io.BytesIO(content))
    layer_tar = tar_bytes.getvalue()
    layer = gzip.compress(layer_tar, mtime=0)
    config = json.dumps({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [digest_of(layer_tar)]},
    }, sort_keys=True).encode()
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": digest_of(config), "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER, "digest": digest_of(layer), "size": len(layer)}],
    }, sort_keys=True).encode()
    return manifest, {digest_of(config): config, digest_of(layer): layer}


class FakeRegistry:
    """`with FakeRegistry("a label") as registry:` serves on `registry.address` (host:port)
    until the block ends; the label makes its image differ from other instances'."""

    def __init__(self, label, failing=False):
        self.label = label
        self.failing = failing
        self.manifest, self.blobs = build_image(label)
        self.requests = []
        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def address(self):
        host, port = self._server.server_address[:2]
        return f"{host}:{port}"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def seen(self):
        """[(method, path with query)] so far."""
        with self._lock:
            return list(self.requests)

    def _record(self, method, path):
        with self._lock:
            self.requests.append((method, path))

    def _answer(self, raw_path):
        """(status, headers, body) for a GET or HEAD of raw_path."""
        json_type = {"Content-Type": "application/json"}
        path = raw_path.split("?", 1)[0]
        if path in ("/v2", "/v2/"):
            return 200, json_type, b"{}"
        if self.failing:
            return 503, json_type, error("UNAVAILABLE", "failing on purpose")
        route = ROUTE.match(path)
        if route and route["kind"] == "manifests":
            digest = digest_of(self.manifest)
            reference = route["reference"]
            if reference.startswith("sha256:") and reference != digest:
                return 404, json_type, error("MANIFEST_UNKNOWN", "no such manifest")
            headers = {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": digest}
            return 200, headers, self.manifest
        if route and route["kind"] == "blobs" and route["reference"] in self.blobs:
            headers = {"Content-Type": "application/octet-stream",
                       "Docker-Content-Digest": route["reference"]}
            return 200, headers, self.blobs[route["reference"]]
        return 404, json_type, error("NAME_UNKNOWN", "not served here")

    def _handler(self):
        registry = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self, with_body):
                registry._record(self.command, self.path)
                status, headers, body = registry._answer(self.path)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Docker-Distribution-API-Version", "registry/2.0")
                self.end_headers()
                if with_body:
                    self.wfile.write(body)

            def do_GET(self):
                self._serve(True)

            def do_HEAD(self):
                self._serve(False)

            def log_message(self, *args):
                pass

        return Handler


def error(code, message):
    return json.dumps({"errors": [{"code": code, "message": message}]}).encode()
