"""Fault injection for the crash tests: ``RAG_FAULT_KILL_AT=<stage>`` makes the process SIGKILL itself there;
``RAG_FAULT_STOP_AT=<stage>`` makes it SIGSTOP itself there, once (a stalled process: a long GC or CPU-throttling
pause, a frozen VM), until the test sends SIGCONT; ``RAG_FAULT_FREE_BYTES_FILE=<path>`` caps the data volume's free
space as the service reads it at the number in that file while it exists (a disk that fills and frees).

The hook sits in the real write path (service.app.ingest.service) so tests/service/test_faults.py can prove that
a ``kill -9`` at each stage of an ingest or delete leaves nothing partial or mixed visible, and nothing the orphan
collector does not remove. It is a no-op unless the variable names the stage, and always when
ENVIRONMENT=production.

Stages: ``before_upsert`` (chunks embedded, nothing written), ``before_activate`` (points written, registry not
switched), ``before_cleanup`` (registry switched, old version's points not deleted), ``after_registry_delete``
(registry row deleted, points not); ``reindex_build`` (a re-index has written two documents into its target
and goes on building); ``reindex_catch_up`` (a re-index has built its target and starts comparing it
with the registry; nothing switched yet); ``reconcile_write`` (the restore reconciliation has removed the
orphans and rewritten one missing document); ``job_claimed`` (a worker claimed an ingestion job, before it reads
anything for it).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

FAULT_ENV = "RAG_FAULT_KILL_AT"
STOP_ENV = "RAG_FAULT_STOP_AT"
STAGES = frozenset(
    {
        "before_upsert",
        "before_activate",
        "before_cleanup",
        "after_registry_delete",
        "reindex_build",
        "reindex_catch_up",
        "reconcile_write",
        "job_claimed",
    }
)
_stopped: set[str] = set()
# Tests only: the free space the data volume reports is at most the number in this file while it exists (a disk
# that fills and frees, across processes; CI may not mount a small filesystem).
FREE_BYTES_ENV = "RAG_FAULT_FREE_BYTES_FILE"


def faked_free_bytes(real: int) -> int:
    """``real`` (statvfs), or less while RAG_FAULT_FREE_BYTES_FILE names a file holding a smaller number (tests;
    never when ENVIRONMENT=production)."""
    path = os.environ.get(FREE_BYTES_ENV)
    if not path or os.environ.get("ENVIRONMENT") == "production":
        return real
    try:
        return min(real, int(Path(path).read_text()))
    except (OSError, ValueError):
        return real


def fault_point(stage: str) -> None:
    """Die here, as by ``kill -9``, when RAG_FAULT_KILL_AT names this stage; stop here (the first time), as by
    ``kill -STOP``, when RAG_FAULT_STOP_AT does (tests only)."""
    if os.environ.get("ENVIRONMENT") == "production":
        return
    if os.environ.get(FAULT_ENV) == stage:
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get(STOP_ENV) == stage and stage not in _stopped:
        _stopped.add(stage)
        os.kill(os.getpid(), signal.SIGSTOP)
