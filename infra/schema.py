"""The registry schema a service image carries, for the rollback check (EYES_OPS3 O5).

Every registry migration declares ``compatible_from``: the oldest release schema head that may run on the schema
it produces (service/app/store/migrations/versions/0011_schema_compat.py states the contract). A build labels
the image with its schema head (``io.rag.schema-head``) and that head's ``compatible_from``
(``io.rag.schema-compatible-from``), read from the migration scripts in the build context (`schema_labels`), and
`ragops rollback` reads both labels back from the registry (`read_image_labels`) to refuse, before it changes
anything, a release that cannot start on the schema the stack's database has (`infra.workflows.promote`).

Revision ids start with their place in the linear chain (``0010_write_order_prune``), so any release orders a
revision it does not ship; the service's tests check that every shipped id does.
"""

from __future__ import annotations

import ast
import json
import shlex
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

LABEL_HEAD = "io.rag.schema-head"
LABEL_COMPATIBLE_FROM = "io.rag.schema-compatible-from"
MIGRATIONS = Path("service/app/store/migrations/versions")
INSPECT_TIMEOUT_SECONDS = 120


class ImageLabelError(Exception):
    """The image's labels cannot be read from its registry (the message says why and how to fix it)."""


def sequence(revision: str | None) -> int | None:
    """A revision's place in the migration chain: its leading number (``0010_write_order_prune`` -> 10)."""
    number = (revision or "").split("_", 1)[0]
    return int(number) if number.isdigit() else None


def schema_labels(context_dir: str | Path) -> dict[str, str]:
    """The schema labels of an image built from ``context_dir``: its head and the head's ``compatible_from``.

    Read from the migration files (not imported: the build machine need not have the service's dependencies).
    ValueError when the scripts do not form one chain, or the head declares no ``compatible_from``.
    """
    declared: dict[str, dict[str, Any]] = {}
    for path in sorted((Path(context_dir) / MIGRATIONS).glob("*.py")):
        values: dict[str, Any] = {}
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None
            if isinstance(target, ast.Name) and target.id in {"revision", "down_revision", "compatible_from"}:
                values[target.id] = ast.literal_eval(node.value)
        if "revision" in values:
            declared[values["revision"]] = values
    parents = {v.get("down_revision") for v in declared.values()}
    heads = [r for r in declared if r not in parents]
    if len(heads) != 1:
        raise ValueError(
            f"{Path(context_dir) / MIGRATIONS}: expected one migration head, found {heads or 'none'}"
        )
    head = heads[0]
    compatible_from = declared[head].get("compatible_from")
    if not isinstance(compatible_from, str):
        raise ValueError(f"migration {head} declares no compatible_from (see 0011_schema_compat.py)")
    return {LABEL_HEAD: head, LABEL_COMPATIBLE_FROM: compatible_from}


def read_image_labels(
    ref: str, *, run: Callable[[str, bool], bytes] | None = None, env: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The labels of the image ``ref`` (``REGISTRY/REPO@sha256:...``) as its registry serves them.

    Reads the manifest (for an index: the first image manifest that is not an attestation, so the labels do not
    depend on this machine's platform) and then that image's config, with skopeo and the same registry logins
    the promotion copy uses (``env``: the environment skopeo runs in; None: this process's). ImageLabelError
    when it cannot.
    """
    runner = run or _skopeo_script(ref, env)
    repository = ref.rsplit("@", 1)[0]
    raw = _json(runner(ref, False), ref)
    if "manifests" in raw:  # an index (a multi-platform or attested build)
        images = [
            m
            for m in raw.get("manifests") or []
            if (m.get("platform") or {}).get("os") not in (None, "unknown")
            and (m.get("annotations") or {}).get("vnd.docker.reference.type") != "attestation-manifest"
        ]
        if not images:
            raise ImageLabelError(f"{ref}: the index names no image manifest")
        manifest_ref = f"{repository}@{images[0]['digest']}"
    else:
        manifest_ref = ref
    config = _json(runner(manifest_ref, True), manifest_ref)
    labels = (config.get("config") or {}).get("Labels") or {}
    return {str(k): str(v) for k, v in labels.items()}


def _json(data: bytes, ref: str) -> Mapping[str, Any]:
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise ImageLabelError(f"{ref}: the registry's answer is not JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise ImageLabelError(f"{ref}: the registry's answer is not a JSON object")
    return value


def _skopeo_script(ref: str, env: Mapping[str, str] | None) -> Callable[[str, bool], bytes]:
    # Imported here: the component module loads the Pulumi provider SDKs.
    from infra.components.image import _AUTH_FILE, _host, _login_lines, registry_login

    host = _host(ref)

    def run(target: str, config: bool) -> bytes:
        inspect = f'skopeo inspect --raw {"--config " if config else ""}--authfile "$auth" '
        script = [
            *_AUTH_FILE,
            *_login_lines((host,), registry_login),
            inspect + shlex.quote("docker://" + target),
        ]
        try:
            result = subprocess.run(  # noqa: S603 - a fixed interpreter; every value in the script is quoted
                ["/bin/sh", "-c", "\n".join(script)],
                capture_output=True,
                check=False,
                timeout=INSPECT_TIMEOUT_SECONDS,
                env=None if env is None else dict(env),
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ImageLabelError(f"cannot run skopeo to read {ref}: {exc}") from exc
        if result.returncode != 0:
            error = result.stderr.decode(errors="replace").strip() or "no error output"
            raise ImageLabelError(
                f"cannot read {ref} from this machine (skopeo, with the login `ragops promote` uses for {host}): "
                f"{error}"
            )
        return result.stdout

    return run
