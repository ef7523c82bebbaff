"""Start-up loads only what the configuration uses: `python -m service` on embedded defaults never imports
qdrant-client, openai, arq/redis or pebble (seconds of imports, docs/benchmarks.md), and a configuration that
needs one of them still gets it and serves.

Each case runs the real entry point (`python -m service` through runpy) until /readyz answers, ingests and
searches over HTTP, stops it with SIGTERM and reads the modules the process had loaded (written at exit).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.service.service_process import REPO_ROOT, wait_for
from tests.support.servers import free_port

# What the embedded defaults must not load, and the configuration that needs each.
OPTIONAL = {
    "qdrant_client": "a Qdrant server (QDRANT_URL) or local mode (VECTOR_STORE=local)",
    "openai": "an LLM (LLM_BASE_URL)",
    "purgatory": "an LLM (LLM_BASE_URL)",
    "arq": "durable jobs (REDIS_URL)",
    "redis": "REDIS_URL",
    "pebble": "the first HTML or PDF extraction in a worker process",
}

# uvicorn re-raises the SIGTERM it handled once it has shut down: exit through SystemExit so atexit runs.
RUN_SERVICE = """
import atexit, json, os, runpy, signal, sys
atexit.register(lambda: open(os.environ["MODULES_OUT"], "w").write(json.dumps(sorted(sys.modules))))
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
runpy.run_module("service", run_name="__main__", alter_sys=True)
"""


def run_service(tmp_path: Path, model_dir: Path, env: dict[str, str]) -> set[str]:
    """Start the service, ingest and search once, stop it; the names of the modules it had imported."""
    port = free_port()
    out = tmp_path / "modules.json"
    full_env = {
        **os.environ,
        "ENVIRONMENT": "test",
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "DATA_DIR": str(tmp_path / "data"),
        "EMBEDDING_MODEL_PATH": str(model_dir),
        "AUTH_DISABLED": "true",
        "RATE_LIMIT_ENABLED": "false",
        "MODULES_OUT": str(out),
        **env,
    }
    for inherited in ("DATABASE_URL", "REDIS_URL", "QDRANT_URL", "QDRANT_PATH", "EDGE_PATH", "LLM_BASE_URL"):
        if inherited not in env:
            full_env.pop(inherited, None)
    if "VECTOR_STORE" not in env:
        full_env.pop("VECTOR_STORE", None)
    log = tmp_path / "service.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-c", RUN_SERVICE],
            cwd=REPO_ROOT,
            env=full_env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"service exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                return httpx.get(f"{url}/readyz", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, "the service to be ready")
        with httpx.Client(base_url=url, timeout=60) as client:
            put = client.put(
                "/v1/documents/leave", json={"text": "Employees get 25 days of paid leave a year."}
            )
            assert put.status_code == 201, put.text
            found = client.post("/v1/search", json={"query": "how many vacation days?", "top_k": 1})
            assert found.status_code == 200, found.text
            assert [hit["document_id"] for hit in found.json()["results"]] == ["leave"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert out.is_file(), f"the service wrote no module list:\n{log.read_text()[-3000:]}"
    return {name.split(".")[0] for name in json.loads(out.read_text())}


def test_embedded_defaults_import_no_optional_client(tmp_path: Path, model_dir: Path) -> None:
    loaded = run_service(tmp_path, model_dir, {})
    unexpected = {name: why for name, why in OPTIONAL.items() if name in loaded}
    assert not unexpected, f"imported on embedded defaults, but only needed for: {unexpected}"
    assert "qdrant_edge" in loaded  # the store it did use


@pytest.mark.parametrize(
    ("env", "needed"),
    [
        (
            {"VECTOR_STORE": "local", "LLM_BASE_URL": "http://127.0.0.1:9/v1", "LLM_MODEL": "m"},
            {"qdrant_client", "openai", "purgatory"},
        ),
    ],
)
def test_configured_features_load_their_clients(
    tmp_path: Path, model_dir: Path, env: dict[str, str], needed: set[str]
) -> None:
    loaded = run_service(tmp_path, model_dir, env)
    assert needed <= loaded, f"missing: {needed - loaded}"


def start_and_fail(tmp_path: Path, model_dir: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full_env = {
        **os.environ,
        "ENVIRONMENT": "test",
        "HOST": "127.0.0.1",
        "PORT": str(free_port()),
        "DATA_DIR": str(tmp_path / "data"),
        "EMBEDDING_MODEL_PATH": str(model_dir),
        "AUTH_DISABLED": "true",
        **env,
    }
    for inherited in ("REDIS_URL", "QDRANT_URL", "QDRANT_PATH", "EDGE_PATH", "VECTOR_STORE", "LLM_BASE_URL"):
        full_env.pop(inherited, None)
    return subprocess.run(
        [sys.executable, "-m", "service"],
        cwd=REPO_ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_registry_failure_while_the_model_loads_exits_with_its_error(
    tmp_path: Path, model_dir: Path
) -> None:
    # The migration fails while the model may still be loading in its thread: the process reports the database
    # error in one line and exits 2, as for any other start-up refusal. (An interpreter exit during the native
    # session build aborts the
    # process, SIGABRT: seen when the store-lock refusal ran after the thread had started. The timing is not
    # forced here, so this checks the outcome, not that window.)
    broken = tmp_path / "registry.db"
    broken.write_bytes(b"not a database, " * 512)
    result = start_and_fail(tmp_path, model_dir, {"DATABASE_URL": f"sqlite:///{broken}"})
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert f"service: error: the registry {broken} is not a readable SQLite database" in result.stderr
    assert "file is not a database" in result.stderr


def test_a_model_that_cannot_load_fails_start_up_with_its_message(tmp_path: Path, model_dir: Path) -> None:
    empty = tmp_path / "no-model"
    empty.mkdir()
    result = start_and_fail(tmp_path, empty, {})
    output = result.stdout + result.stderr
    assert result.returncode == 3, output[-2000:]  # uvicorn's start-up failure
    assert f"EMBEDDING_MODEL_PATH {empty} has no model.onnx; run `make model` to build it" in output
