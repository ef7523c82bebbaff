"""Two `make plan` runs of one config write the same plan.json, byte for byte, whatever the interpreter's hash
seed (set iteration order): a diff of two plans then shows only what changed (EYES11 L1)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def _plan(out: Path, seed: str) -> bytes:
    env = {**os.environ, "PYTHONHASHSEED": seed}
    command = [sys.executable, "-m", "infra.render", "--stack", "staging", "--out", str(out)]
    subprocess.run(command, cwd=REPO_ROOT, env=env, check=True, capture_output=True, timeout=300)
    return (out / "plan.json").read_bytes()


def test_plan_json_does_not_depend_on_the_hash_seed(tmp_path: Path) -> None:
    first = _plan(tmp_path / "a", "1")
    assert first == _plan(tmp_path / "b", "2")
    assert first == _plan(tmp_path / "c", "3")
