"""`ragops reconcile`: runs `python -m service.reconcile` in the stack's worker pod through kubectl.

A stand-in `kubectl` on PATH records its argv and the kubeconfig file it was handed (which must hold the stack's
kubeconfig output while it runs, be private, and be gone afterwards), prints a report and exits as told.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from infra.workflows import restore
from infra.workflows.cli import app
from infra.workflows.stacks import Context, WorkflowError
from tests.workflows.fake_pulumi import FakeBackend

runner = CliRunner()
KUBECONFIG = "apiVersion: v1\nkind: Config\nclusters: []\n# token: secret-token-123\n"
FAKE_KUBECTL = """#!{python}
import json, os, stat, sys
argv = sys.argv[1:]
record = {{"argv": argv}}
if "--kubeconfig" in argv:
    path = argv[argv.index("--kubeconfig") + 1]
    record["kubeconfig"] = open(path).read()
    record["mode"] = stat.S_IMODE(os.stat(path).st_mode)
    record["path"] = path
with open({log!r}, "a") as out:
    out.write(json.dumps(record) + "\\n")
print(json.dumps({{"consistent": True, "reindexed": 2}}))
sys.exit(int(os.environ.get("FAKE_KUBECTL_EXIT", "0")))
"""


@pytest.fixture
def kubectl_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "kubectl.log"
    script = bin_dir / "kubectl"
    script.write_text(FAKE_KUBECTL.format(python=sys.executable, log=str(log)))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


def _calls(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def _stack(backend: FakeBackend, name: str = "staging", kubeconfig: str = KUBECONFIG) -> None:
    backend.add_stack(
        name, outputs={"kubeconfig": kubeconfig, "qdrantEndpoint": f"http://qdrant.{name}-ns.svc:6333"}
    )
    backend.stacks[name].secret_outputs = {"kubeconfig"}


def test_runs_the_reconciliation_in_the_worker_pod_with_the_stacks_kubeconfig(
    ctx: Context, backend: FakeBackend, kubectl_log: Path
) -> None:
    _stack(backend)
    result = runner.invoke(app, ["reconcile", "-s", "staging", "--dry-run", "--tenant", "acme"], obj=ctx)
    assert result.exit_code == 0, result.output
    assert '"reindexed": 2' in result.output  # the service's report passes through
    (call,) = _calls(kubectl_log)
    path = call["path"]
    assert call["argv"] == [
        "--kubeconfig",
        path,
        "--namespace",
        "staging-ns",
        "exec",
        "deploy/rag-worker",
        "--",
        "python",
        "-m",
        "service.reconcile",
        "--dry-run",
        "--tenant",
        "acme",
    ]
    assert call["kubeconfig"] == KUBECONFIG
    assert call["mode"] == 0o600
    assert not Path(path).exists()  # cluster credentials do not outlive the call


def test_exit_1_passes_through_and_other_failures_say_what_to_check(
    ctx: Context, backend: FakeBackend, kubectl_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _stack(backend)
    monkeypatch.setenv("FAKE_KUBECTL_EXIT", "1")
    assert runner.invoke(app, ["reconcile", "-s", "staging"], obj=ctx).exit_code == 1
    monkeypatch.setenv("FAKE_KUBECTL_EXIT", "127")
    result = runner.invoke(app, ["reconcile", "-s", "staging", "--deployment", "rag"], obj=ctx)
    assert result.exit_code == 1
    assert "is deploy/rag running in namespace staging-ns" in " ".join(result.output.split())


def test_a_stack_without_kubeconfig_uses_kubectls_own_configuration(
    ctx: Context, backend: FakeBackend, kubectl_log: Path
) -> None:
    _stack(backend, "dev", kubeconfig="")
    result = runner.invoke(app, ["reconcile", "-s", "dev", "--namespace", "rag"], obj=ctx)
    assert result.exit_code == 0, result.output
    (call,) = _calls(kubectl_log)
    assert call["argv"][:2] == ["--namespace", "rag"]


def test_namespace_comes_from_the_qdrant_endpoint() -> None:
    assert restore.namespace_of("http://qdrant.pr-123.svc:6333") == "pr-123"
    for bad in ("", None, "http://10.0.0.5:6333", "qdrant:6333"):
        with pytest.raises(WorkflowError, match="--namespace"):
            restore.namespace_of(bad)
