"""``ragops reconcile``: after a restore, make a deployed stack's vector store agree with its registry again.

The service does the work (``python -m service.reconcile``, service.app.jobs.reconcile: orphan points removed,
documents whose points are missing re-indexed from the registry's kept text, the rest reported by id), inside
the stack's own pods, which hold its settings and reach its Qdrant and database. This module runs it there:

* the cluster: the stack's ``kubeconfig`` output (written to a private temporary file for the one call), or
  kubectl's own configuration when the stack has none (an existing cluster reached by context);
* the namespace: ``--namespace``, else the one in the stack's ``qdrantEndpoint`` output
  (``http://qdrant.<namespace>.svc:6333``; an ephemeral stack's namespace is its name);
* the pod: ``kubectl exec deploy/rag-worker`` (``--deployment rag`` for the API pod of a stack without workers).

The command's report (JSON) and exit status pass through: 0 consistent, 1 documents left that only their clients
can restore (or, with ``--dry-run``, work to do).

The call is bounded (``--timeout``, default DEFAULT_TIMEOUT): a kubectl that hangs (an API server that stopped
answering mid-stream, a pod stuck terminating) would otherwise hold the terminal or a CI job for ever. At the bound
kubectl and anything it started are killed and the command fails naming what it waited for. Killing ``kubectl
exec`` ends the stream, not necessarily the command in the pod (a non-TTY exec is not signalled when its client
goes), hence the hint in the error.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import IO
from urllib.parse import urlparse

from infra.workflows.stacks import Context, UsageError, WorkflowError

DEFAULT_DEPLOYMENT = "rag-worker"
DEFAULT_TIMEOUT = 7200.0
"""Seconds `ragops reconcile` waits for kubectl: the reconciliation re-indexes every document whose points are
missing, which after a lost Qdrant volume is the whole store (~46 chunks/s per embedding process: docs/benchmarks.md)."""


def namespace_of(qdrant_endpoint: object) -> str:
    """The namespace in a ``qdrantEndpoint`` output (``http://qdrant.<ns>.svc:6333``)."""
    host = urlparse(str(qdrant_endpoint or "")).hostname or ""
    parts = host.split(".")
    if len(parts) < 3 or parts[2] != "svc" or not parts[1]:
        raise WorkflowError(
            f"cannot tell the stack's namespace from its qdrantEndpoint output {qdrant_endpoint!r}: pass --namespace"
        )
    return parts[1]


def reconcile_argv(
    namespace: str,
    *,
    kubeconfig: str | None,
    deployment: str = DEFAULT_DEPLOYMENT,
    dry_run: bool = False,
    tenant: str | None = None,
    kubectl: str = "kubectl",
) -> list[str]:
    """The kubectl call running ``python -m service.reconcile`` in one pod of ``deployment``."""
    argv = [kubectl]
    if kubeconfig is not None:
        argv += ["--kubeconfig", kubeconfig]
    argv += [
        "--namespace",
        namespace,
        "exec",
        f"deploy/{deployment}",
        "--",
        "python",
        "-m",
        "service.reconcile",
    ]
    if dry_run:
        argv.append("--dry-run")
    if tenant is not None:
        argv += ["--tenant", tenant]
    return argv


@contextlib.contextmanager
def _kubeconfig_file(content: str) -> Iterator[str]:
    """The kubeconfig in a file only this user can read, removed afterwards (it holds cluster credentials)."""
    handle, path = tempfile.mkstemp(prefix="ragops-kubeconfig-", suffix=".yaml")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(content)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


class KubectlTimeout(WorkflowError):
    """kubectl did not finish within its bound; it was killed."""


class ReconcileNotRun(WorkflowError):
    """`ragops reconcile` got no report: kubectl failed or timed out (exit code RECONCILE_NOT_RUN, not 1)."""


RECONCILE_NOT_RUN = 3
"""`ragops reconcile`'s exit code when the reconciliation did not run or its report never came; 1 means it ran and
documents are left."""
_REPORTED_INCONSISTENT = re.compile(r'"consistent":\s*false')


def _pump(stream: IO[str], on_output: Callable[[str], None]) -> None:
    for line in stream:
        on_output(line.rstrip("\n"))


def _kill_group(process: subprocess.Popen[str]) -> None:
    # kubectl runs in a session of its own (start_new_session): its group is kubectl and whatever it started.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.kill()


def run_bounded(argv: list[str], *, timeout: float, what: str, on_output: Callable[[str], None]) -> int:
    """Run ``argv`` passing each output line to ``on_output``; its exit status. After ``timeout`` seconds it and
    its process group are killed and KubectlTimeout names ``what`` it was waiting for.

    The output is read on a thread so that the wait itself has the bound (a read loop blocks for as long as the
    child writes nothing)."""
    try:
        process = subprocess.Popen(  # noqa: S603 - a fixed argv, no shell
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
    except FileNotFoundError:
        raise WorkflowError(f"{argv[0]} is not on PATH (https://kubernetes.io/docs/tasks/tools/)") from None
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    reader = threading.Thread(
        target=_pump, args=(process.stdout, on_output), name="kubectl-output", daemon=True
    )
    reader.start()
    try:
        code = process.wait(timeout=max(0.0, deadline - time.monotonic()))
        # Output a child of kubectl still holds open ends with the same bound.
        reader.join(timeout=max(0.0, deadline - time.monotonic()))
        if not reader.is_alive():
            return code
    except subprocess.TimeoutExpired:
        pass
    finally:
        if process.returncode is None or reader.is_alive():
            _kill_group(process)
            process.wait()
            reader.join(timeout=10)
            process.stdout.close()
    raise KubectlTimeout(
        f"gave up after {timeout:g} s waiting for {what}; killed kubectl. The command may still be running in "
        "the pod: check before running it again (--timeout to wait longer)"
    )


def reconcile(
    ctx: Context,
    stack: str,
    *,
    dry_run: bool = False,
    tenant: str | None = None,
    namespace: str | None = None,
    deployment: str = DEFAULT_DEPLOYMENT,
    kubectl: str = "kubectl",
    timeout: float = DEFAULT_TIMEOUT,
    on_output: Callable[[str], None] = print,
) -> int:
    """Run the reconciliation in the stack's pod; its exit status (0 consistent, 1 documents left: the report
    said so). ReconcileNotRun when it did not run or its report never came: kubectl failed (it exits 1 too, as does
    a traceback in the pod) or was killed after ``timeout`` seconds (KubectlTimeout)."""
    if tenant is not None and not tenant.strip():
        raise UsageError("--tenant must not be empty")
    outputs = {k: v.value for k, v in ctx.workspace().stack_outputs(stack).items()}
    ns = namespace or namespace_of(outputs.get("qdrantEndpoint"))
    kubeconfig = outputs.get("kubeconfig") or None
    with contextlib.ExitStack() as stack_files:
        path = stack_files.enter_context(_kubeconfig_file(str(kubeconfig))) if kubeconfig else None
        argv = reconcile_argv(
            ns, kubeconfig=path, deployment=deployment, dry_run=dry_run, tenant=tenant, kubectl=kubectl
        )
        seen: list[str] = []

        def passed_on(line: str) -> None:
            seen.append(line)
            on_output(line)

        try:
            code = run_bounded(
                argv,
                timeout=timeout,
                what=f"kubectl exec deploy/{deployment} in namespace {ns} (python -m service.reconcile)",
                on_output=passed_on,
            )
        except KubectlTimeout as exc:
            raise ReconcileNotRun(str(exc)) from exc
    # `python -m service.reconcile` exits 1 only after printing its report with "consistent": false; kubectl's own
    # failures (no cluster, no pod, a refused exec) and a traceback in the pod exit 1 as well, without one.
    if code == 0 or (code == 1 and _REPORTED_INCONSISTENT.search("\n".join(seen))):
        return code
    raise ReconcileNotRun(
        f"the reconciliation did not run or did not finish (kubectl exited {code}, no report): is "
        f"deploy/{deployment} running in namespace {ns}? (--deployment rag for the API pods of a stack without "
        "workers; the output above says more)"
    )
