"""`ragops reconcile`: runs `python -m service.reconcile` in the stack's worker pod through kubectl.

A stand-in `kubectl` on PATH records its argv and the kubeconfig file it was handed (which must hold the stack's
kubeconfig output while it runs, be private, and be gone afterwards), prints a report and exits as told.
"""

from __future__ import annotations

import json
import os
import select
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
code = int(os.environ.get("FAKE_KUBECTL_EXIT", "0"))
if os.environ.get("FAKE_KUBECTL_ERROR"):  # kubectl's own failure: its error line, exit 1, no report
    print(os.environ["FAKE_KUBECTL_ERROR"], file=sys.stderr)
else:
    print(json.dumps({{"consistent": code == 0, "reindexed": 2}}, indent=2))
sys.exit(code)
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
    assert result.exit_code == restore.RECONCILE_NOT_RUN == 3
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


HANGING_KUBECTL = """#!/bin/sh
echo $$ > {pids}/kubectl
echo "$2" > {pids}/kubeconfig
sleep 1000 &
echo $! > {pids}/child
echo "connected to the pod"
wait
"""


def _dead(pid: int) -> bool:
    """Whether `pid` has exited (or exits within 10 s: a SIGKILL is delivered asynchronously, and the process
    closes its files, which ended our read, before it is done exiting)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        # A pidfd becomes readable when its process terminates (pidfd_open(2)), zombie or reaped.
        return bool(select.select([pidfd], [], [], 10)[0])
    finally:
        os.close(pidfd)


def test_a_hanging_kubectl_is_killed_at_the_timeout_with_what_it_waited_for(
    ctx: Context, backend: FakeBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`process.wait()` had no bound: a kubectl whose stream stalls held `ragops reconcile` (and a CI job) for ever.
    Now kubectl and what it started are killed at `--timeout` and the command exits 3 naming the call."""
    bin_dir, pids = tmp_path / "bin", tmp_path / "pids"
    bin_dir.mkdir()
    pids.mkdir()
    script = bin_dir / "kubectl"
    script.write_text(HANGING_KUBECTL.format(pids=pids))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    _stack(backend)
    # The bound is the command's own; 5 s leaves a loaded machine ample time to start the stand-in's shell.
    result = runner.invoke(app, ["reconcile", "-s", "staging", "--timeout", "5"], obj=ctx)
    output = " ".join(result.output.split())
    assert result.exit_code == 3, result.output  # not 1: nothing says documents are left
    assert "connected to the pod" in output  # what kubectl printed before it stalled still passes through
    assert (
        "gave up after 5 s waiting for kubectl exec deploy/rag-worker in namespace staging-ns "
        "(python -m service.reconcile); killed kubectl"
    ) in output
    kubectl_pid, child_pid = (int((pids / name).read_text()) for name in ("kubectl", "child"))
    assert _dead(kubectl_pid)
    assert _dead(child_pid)  # the whole process group, not only kubectl
    # The kubeconfig file with the stack's credentials is gone as after a normal run.
    kubeconfig = Path((pids / "kubeconfig").read_text().strip())
    assert kubeconfig.name.startswith("ragops-kubeconfig-")
    assert not kubeconfig.exists()


def test_run_bounded_returns_the_exit_status_and_every_line_when_kubectl_finishes(tmp_path: Path) -> None:
    lines: list[str] = []
    code = restore.run_bounded(
        ["sh", "-c", "echo one; echo two; exit 3"], timeout=60, what="sh", on_output=lines.append
    )
    assert (code, lines) == (3, ["one", "two"])
    # A child that outlives the command and keeps its output open is bounded too (and killed).
    marker = tmp_path / "grandchild"
    with pytest.raises(restore.KubectlTimeout, match="waiting for the stand-in"):
        restore.run_bounded(
            ["sh", "-c", f"sh -c 'echo $$ > {marker}; exec sleep 1000' & echo started"],
            timeout=5,
            what="the stand-in",
            on_output=lines.append,
        )
    assert "started" in lines
    assert _dead(int(marker.read_text()))


def test_kubectl_failing_with_exit_1_is_not_documents_left(
    ctx: Context, backend: FakeBackend, kubectl_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kubectl exits 1 for its own errors (no route to the cluster, the pod gone, an expired token), as
    `service.reconcile` does for documents left: only the report tells them apart. A failed kubectl said
    "documents left", and an operator re-ran a restore step instead of fixing the connection."""
    _stack(backend)
    monkeypatch.setenv("FAKE_KUBECTL_EXIT", "1")
    monkeypatch.setenv("FAKE_KUBECTL_ERROR", "error: unable to upgrade connection: pod does not exist")
    result = runner.invoke(app, ["reconcile", "-s", "staging"], obj=ctx)
    output = " ".join(result.output.split())
    assert result.exit_code == 3, result.output
    assert "did not run or did not finish (kubectl exited 1, no report)" in output
    assert "pod does not exist" in output  # kubectl's own line passes through
    # The same exit status with the report's verdict is the service's "documents left".
    monkeypatch.delenv("FAKE_KUBECTL_ERROR")
    result = runner.invoke(app, ["reconcile", "-s", "staging"], obj=ctx)
    assert result.exit_code == 1, result.output
    assert '"consistent": false' in result.output
