"""A stack that builds its image, planned outside a git checkout (E7 of EYES4): one line, not a traceback.

The image is labelled with the commit it is built from (`infra.components.image.current_git_sha`). A source
tarball or a CI artifact has no `.git`: `make plan` then says what to do in one line, and RAG_GIT_SHA names the
commit instead. Run as a separate process on a copy of the tracked files, the way a user would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from infra.components import image as im

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_outside_a_checkout_the_commit_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(im.GitCommitError) as raised:
        im.current_git_sha(tmp_path, environ={})
    message = str(raised.value)
    assert "\n" not in message
    assert "not a git checkout" in message
    assert "RAG_GIT_SHA" in message
    assert "rag:image" in message
    assert im.current_git_sha(tmp_path, environ={"RAG_GIT_SHA": "ABC1234DEF"}) == "abc1234def"
    with pytest.raises(im.GitCommitError, match="not a commit id"):
        im.current_git_sha(tmp_path, environ={"RAG_GIT_SHA": "main"})
    # In a checkout git wins over the variable.
    assert im.current_git_sha(REPO_ROOT, environ={"RAG_GIT_SHA": "abc1234"}) != "abc1234"


def copy_tracked_files(target: Path) -> None:
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO_ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def test_make_plan_outside_a_checkout(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    copy_tracked_files(tree)
    env = {k: v for k, v in os.environ.items() if k != "RAG_GIT_SHA"}
    env["GIT_CEILING_DIRECTORIES"] = str(tmp_path)  # no repository above the copy either
    command = [sys.executable, "-m", "infra.render", "--stack", "dev", "--out", str(tmp_path / "out")]
    failed = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, timeout=600)
    assert failed.returncode == 2, failed.stderr
    assert "Traceback" not in failed.stderr
    (line,) = failed.stderr.strip().splitlines()
    assert line.startswith(f"error: a build of this stack is labelled with the git commit, but {tree} ")
    passed = subprocess.run(
        command,
        cwd=tree,
        env={**env, "RAG_GIT_SHA": "0123456789abcdef0123456789abcdef01234567"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert passed.returncode == 0, passed.stdout[-2000:] + passed.stderr[-2000:]
    assert "PASS" in passed.stdout
