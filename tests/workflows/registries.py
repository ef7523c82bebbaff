"""Throwaway OCI registries for the promotion-copy tests: the CNCF distribution registry (Debian's
`docker-registry`) on free loopback ports, and skopeo set up in an isolated HOME.

`isolated_home` gives skopeo its own HOME (registries.conf marking the loopback registries plain-HTTP, no auth
files) so nothing from the machine's own logins leaks in. `push_test_image` writes a small OCI layout (one image
manifest plus an attestation-style manifest in an index, like a BuildKit build with provenance) and pushes it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.servers import ServerError, free_port

USERNAME = "ci"
PASSWORD = "s3cret"
# bcrypt (cost 4) of PASSWORD: the only hash format distribution's htpasswd accepts.
HTPASSWD = f"{USERNAME}:$2b$04$tNoPHhAMKnEVktMorrB2XucILiqovVmy/kK2FX.GNmRDdjHIkiYw6\n"
READY_TIMEOUT_SECONDS = 60


def registry_binary() -> str:
    """The distribution registry binary (Debian: /usr/bin/docker-registry), or a clear error."""
    found = shutil.which("docker-registry") or shutil.which("registry")
    if found is None:
        raise ServerError("docker-registry not found: `apt-get install docker-registry` (make servers does)")
    return found


@dataclass(frozen=True)
class Registry:
    """A running registry: `host` is `127.0.0.1:<port>`."""

    host: str
    auth: bool


@contextmanager
def registry(tmp: Path, *, auth: bool) -> Iterator[Registry]:
    """A distribution registry on a free loopback port, storing under `tmp`; htpasswd auth when `auth`."""
    port = free_port()
    root = tmp / f"registry-{port}"
    root.mkdir(parents=True)
    config = [
        "version: 0.1",
        "log: {level: warn}",
        f"storage: {{filesystem: {{rootdirectory: {root / 'data'}}}}}",
        f"http: {{addr: '127.0.0.1:{port}'}}",
    ]
    if auth:
        (root / "htpasswd").write_text(HTPASSWD, encoding="utf-8")
        config.append(f"auth: {{htpasswd: {{realm: test, path: {root / 'htpasswd'}}}}}")
    (root / "config.yml").write_text("\n".join(config) + "\n", encoding="utf-8")
    log = root / "registry.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [registry_binary(), "serve", str(root / "config.yml")], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while True:
            if proc.poll() is not None:
                raise ServerError(
                    f"registry exited with {proc.returncode}:\n{log.read_text(errors='replace')}"
                )
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2)
                break
            except urllib.error.HTTPError:
                break  # 401 from an auth-enabled registry: it is serving
            except OSError:
                if time.monotonic() > deadline:
                    raise ServerError(f"registry did not start:\n{log.read_text(errors='replace')}") from None
                time.sleep(0.05)
        yield Registry(host=f"127.0.0.1:{port}", auth=auth)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def isolated_home(tmp: Path, *registries: Registry) -> dict[str, str]:
    """Environment for skopeo: its own HOME, XDG_RUNTIME_DIR and TMPDIR, the registries allowed over plain HTTP."""
    home = tmp / "home"
    (home / ".config" / "containers").mkdir(parents=True, exist_ok=True)
    (home / ".config" / "containers" / "registries.conf").write_text(
        "".join(f'[[registry]]\nlocation = "{r.host}"\ninsecure = true\n' for r in registries),
        encoding="utf-8",
    )
    runtime, scratch = tmp / "run", tmp / "scratch"
    runtime.mkdir(exist_ok=True)
    scratch.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("REGISTRY_AUTH_FILE", "DOCKER_CONFIG")}
    return {**env, "HOME": str(home), "XDG_RUNTIME_DIR": str(runtime), "TMPDIR": str(scratch)}


def docker_login(env: dict[str, str], host: str, username: str = USERNAME, password: str = PASSWORD) -> None:
    """What `docker login` leaves behind: a static credential in ~/.docker/config.json."""
    config = Path(env["HOME"]) / ".docker" / "config.json"
    config.parent.mkdir(parents=True, exist_ok=True)
    token = __import__("base64").b64encode(f"{username}:{password}".encode()).decode()
    config.write_text(json.dumps({"auths": {host: {"auth": token}}}), encoding="utf-8")


def _oci_layout(root: Path, labels: dict[str, str] | None = None) -> str:
    """A tiny OCI layout tagged `v1`: an index of an amd64 image (with `labels` in its config, when given) and an
    attestation manifest. Returns its digest."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def blob(data: bytes, media_type: str) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    def layer(name: str, data: bytes) -> tuple[dict, str]:
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w") as tar:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        diff_id = "sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()
        packed = gzip.compress(raw.getvalue(), mtime=0)
        return blob(packed, "application/vnd.oci.image.layer.v1.tar+gzip"), diff_id

    def manifest(
        layer_desc: dict,
        diff_id: str,
        platform: dict,
        annotations: dict | None = None,
        image_labels: dict | None = None,
    ) -> dict:
        image_config = {"Labels": image_labels} if image_labels else {}
        config = {**platform, "rootfs": {"type": "layers", "diff_ids": [diff_id]}, "config": image_config}
        body = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": blob(json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json"),
            "layers": [layer_desc],
        }
        desc = blob(json.dumps(body).encode(), "application/vnd.oci.image.manifest.v1+json")
        desc["platform"] = platform
        if annotations:
            desc["annotations"] = annotations
        return desc

    image = manifest(
        *layer("app/hello.txt", b"rag service\n"),
        {"architecture": "amd64", "os": "linux"},
        image_labels=labels,
    )
    attestation = manifest(
        *layer("provenance.json", b'{"predicateType": "https://slsa.dev/provenance/v0.2"}'),
        {"architecture": "unknown", "os": "unknown"},
        {"vnd.docker.reference.type": "attestation-manifest", "vnd.docker.reference.digest": image["digest"]},
    )
    index = blob(
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": [image, attestation],
            }
        ).encode(),
        "application/vnd.oci.image.index.v1+json",
    )
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}', encoding="utf-8")
    tagged = {**index, "annotations": {"org.opencontainers.image.ref.name": "v1"}}
    (root / "index.json").write_text(
        json.dumps({"schemaVersion": 2, "manifests": [tagged]}), encoding="utf-8"
    )
    return index["digest"]


def push_test_image(
    tmp: Path, env: dict[str, str], repository: str, labels: dict[str, str] | None = None
) -> str:
    """Build the OCI layout and push it (digest preserved) to `repository:build`; returns `repository@digest`."""
    layout = tmp / (
        "layout" if labels is None else f"layout-{hashlib.sha256(repr(labels).encode()).hexdigest()[:8]}"
    )
    digest = _oci_layout(layout, labels)
    subprocess.run(
        ["skopeo", "copy", "--all", "--preserve-digests", f"oci:{layout}:v1", f"docker://{repository}:build"],
        env=env,
        check=True,
        capture_output=True,
    )
    return f"{repository}@{digest}"


def raw_manifest(
    env: dict[str, str], ref: str, *, creds: str | None = None
) -> subprocess.CompletedProcess[bytes]:
    """`skopeo inspect --raw docker://ref` (bytes as the registry serves them)."""
    extra = ["--creds", creds] if creds else []
    return subprocess.run(
        ["skopeo", "inspect", "--raw", *extra, f"docker://{ref}"],
        env=env,
        capture_output=True,
        check=False,
    )
