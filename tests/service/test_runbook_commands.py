"""The commands docs/runbooks.md gives on-call to run inside a pod, run for real (EYES9 M6): the service image has
no `psql`, so a runbook's SQL must come with a way to run it that the image has (its Python, the pod's
DATABASE_URL). Each block is read from the runbook itself, so the doc and the test cannot drift apart."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from service.app.store.jobstore import JobTable
from service.app.store.registry import open_registry
from tests.support.servers import postgres_server

RUNBOOKS = Path(__file__).resolve().parents[2] / "docs" / "runbooks.md"


def runbook_block(section: str) -> str:
    """The first ```bash block of the runbook section `## <section>`."""
    text = RUNBOOKS.read_text(encoding="utf-8")
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    match = re.search(r"```bash\n(.*?)```", text[start:end], re.S)
    assert match, f"no bash block in runbooks.md ## {section}"
    return match.group(1)


def pod_python(block: str, deployment: str) -> str:
    """The program of `kubectl -n rag exec deploy/<deployment> -- python -c '<program>'` in a block."""
    argv = shlex.split(block)
    assert argv[:8] == ["kubectl", "-n", "rag", "exec", f"deploy/{deployment}", "--", "python", "-c"], argv
    assert len(argv) == 9, argv
    return argv[8]


def test_the_running_jobs_query_of_ragjobrunningtoolong_runs_with_what_the_worker_image_has() -> None:
    program = pod_python(runbook_block("ragjobrunningtoolong"), "rag-worker")
    with postgres_server("runbook_jobs") as url:
        registry = open_registry(url)
        try:
            jobs = JobTable(registry)
            jobs.insert("job-running", "acme", "doc-1", "text")
            jobs.insert("job-queued", "acme", "doc-2", "text")
            assert jobs.claim("job-running", 60.0) is not None
        finally:
            registry.close()
        env = {**os.environ, "DATABASE_URL": url}
        done = subprocess.run(
            [sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=120, check=False
        )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1, done.stdout
    job_id, document_id, holder, *_ = lines[0].split("  ")
    assert (job_id, document_id) == ("job-running", "doc-1")
    assert holder.endswith(f":{os.getpid()}")
    assert lines[0].rstrip().endswith("  1")  # attempts
