"""`--help` of the commands configured by the environment only (EYES9 L1): `python -m service --help` started
the server, `python -m service.tools.serve_prod --help` started Postgres, Redis, the API and the worker, and
`python -m service.worker --help` failed on a missing REDIS_URL. Each now prints its usage and exits 0 without
starting anything, and refuses any other argument (exit 2)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.servers import free_port

REPO = Path(__file__).resolve().parents[2]


def run(module: str, *args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(free_port()),
        "DATA_DIR": str(tmp_path / "data"),
        "AUTH_DISABLED": "true",
    }
    for name in ("REDIS_URL", "DATABASE_URL", "QDRANT_URL"):
        env.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,  # a command that starts serving instead runs into this and fails the test
        check=False,
    )


@pytest.mark.parametrize(
    ("module", "mentions"),
    [
        ("service", "API_KEYS_FILE"),
        ("service.worker", "REDIS_URL"),
        ("service.tools.serve_prod", "API_KEYS"),
    ],
)
def test_help_prints_the_usage_and_starts_nothing(module: str, mentions: str, tmp_path: Path) -> None:
    done = run(module, "--help", tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: python -m {module}"), done.stdout
    assert mentions in " ".join(done.stdout.split())
    assert "error" not in done.stderr.lower(), done.stderr
    assert not (tmp_path / "data").exists()  # nothing was opened or created


@pytest.mark.parametrize("module", ["service", "service.worker", "service.tools.serve_prod"])
def test_an_unknown_argument_is_a_usage_error(module: str, tmp_path: Path) -> None:
    done = run(module, "--port", "9000", tmp_path=tmp_path)
    assert done.returncode == 2
    assert "unrecognized arguments: --port 9000" in done.stderr
    assert not (tmp_path / "data").exists()
