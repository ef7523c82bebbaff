"""`python -m service.reconcile`: after a Qdrant or registry restore, make the vector store agree with the registry.

    python -m service.reconcile --dry-run          # report only: orphan points, documents without points
    python -m service.reconcile                    # remove orphans, re-index missing documents from kept text
    python -m service.reconcile --tenant acme      # one tenant only

Runs with the service's own settings (the environment of an API or worker pod: DATABASE_URL, QDRANT_URL or
VECTOR_STORE_URL + INTERNAL_TOKEN, the model), and is safe while the service serves: see
service.app.jobs.reconcile. On the embedded store (`make serve`) the service owns the store: stop it first
(run while it serves, this exits 2 with one line naming DATA_DIR and the service's pid); there a dry run works
on a copy in TMPDIR and changes nothing in DATA_DIR (DryRunCopy). Prints one JSON
report (per collection and tenant, with document ids).
Exit status: 0 when the store matches the registry (after a dry run: nothing needed doing), 1 when documents
remain that only their client can restore (no kept text; their ids are listed) or a dry run found work,
2 for a usage or settings error, or an embedded store a running service owns.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from typing import Any

from pydantic import ValidationError

from service.app.core.config import Settings, SettingsError, describe_settings_error, get_settings
from service.app.core.logging import configure_logging


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m service.reconcile", description=__doc__.splitlines()[0])
    root.add_argument("--dry-run", action="store_true", help="report what would change, change nothing")
    root.add_argument("--tenant", default=None, help="reconcile one tenant only (default: every tenant)")
    return root


def open_services(settings: Settings) -> Any:
    """The worker's container (service.worker): same registry, vector store and model as the API."""
    from service.worker import _default_services

    return asyncio.run(_default_services(settings))


class DryRunCopy:
    """A dry run's own copy of the embedded store: the shards (holes kept) and the SQLite registry, in a scratch
    directory under TMPDIR, with the settings that open it.

    Opening the store writes to it even when nothing is changed: qdrant-edge rewrites edge_config.json and
    compacts its trackers on load, the service's store starts its optimizer and a consolidation, and SQLite
    migrates the registry and leaves -wal/-shm files after a read-only open (EYES7 L2: a dry run optimized the
    store for 5 s). The copy takes all of that; the originals are only read. The store's lock is held (through
    a read-only descriptor: the lock file's pid is not rewritten) from before the copy until ``close``, so no
    service starts on the store while the report is made; one that runs already is refused as before.
    """

    def __init__(self, settings: Settings) -> None:
        import fcntl
        import os
        import shutil
        import tempfile
        from pathlib import Path

        from sqlalchemy.engine import make_url

        from service.app.store.edge import copy_sparse
        from service.tools.backup import BackupError, in_use_message

        edge = settings.resolved_edge_path
        self._fd: int | None = None
        lock = edge / ".lock"
        if lock.is_file():
            fd = os.open(lock, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise BackupError(in_use_message(settings, "reconcile")) from None
            self._fd = fd
        self.root = Path(tempfile.mkdtemp(prefix="reconcile-dry-run-"))
        update: dict[str, Any] = {"edge_path": self.root / "edge"}
        try:
            if edge.is_dir():
                shutil.copytree(
                    edge,
                    self.root / "edge",
                    copy_function=copy_sparse,
                    ignore=shutil.ignore_patterns(".lock"),
                )
            url = make_url(settings.resolved_database_url)
            database = url.database
            if url.get_backend_name() == "sqlite" and database and database != ":memory:":
                registry = Path(database)
                # The file and its WAL as they are (the service is stopped: no -shm needed, SQLite rebuilds it).
                for suffix in ("", "-wal"):
                    source = Path(f"{registry}{suffix}")
                    if source.is_file():
                        shutil.copy2(source, self.root / f"registry.db{suffix}")
                update["database_url"] = f"sqlite:///{(self.root / 'registry.db').as_posix()}"
        except OSError as exc:
            self.close()
            raise BackupError(
                f"a dry run works on a copy of the store (the engine writes to a store it opens) and it could "
                f"not be made in {self.root.parent} ({exc.strerror or exc}): set TMPDIR to a directory with room "
                f"for {edge} and the registry"
            ) from None
        self.settings = settings.model_copy(update=update)

    def close(self) -> None:
        import os
        import shutil

        shutil.rmtree(self.root, ignore_errors=True)
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd = None


def main(argv: list[str] | None = None, *, services: Any = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = services.settings if services is not None else get_settings()
    except (ValidationError, SettingsError) as exc:
        print(f"reconcile: {describe_settings_error(exc)}", file=sys.stderr)
        return 2
    from service.app.jobs.reconcile import reconcile, served_generations

    owned = services is None
    if owned:
        configure_logging(settings)
        # The report is stdout; the log lines (the service's format) go to stderr, so both can be piped.
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
                handler.setStream(sys.stderr)
    scratch: DryRunCopy | None = None
    if owned:
        from service.app.store.edge import StoreLocked
        from service.tools.backup import BackupError, in_use_message, refuse_if_served

        # Before the registry is opened (and migrated): one line, not a traceback from inside the container.
        try:
            if args.dry_run and settings.embedded_vector_store == "edge":
                scratch = DryRunCopy(settings)  # held until the end: no service starts on the store meanwhile
                opened = scratch.settings
            else:
                refuse_if_served(settings, "reconcile")
                opened = settings
            container = open_services(opened)
        except BackupError as exc:
            print(f"reconcile: error: {exc}", file=sys.stderr)
            if scratch is not None:
                scratch.close()
            return 2
        except StoreLocked as exc:  # a service that started between the check and the open; or local mode
            edge = settings.embedded_vector_store == "edge"
            print(
                f"reconcile: error: {in_use_message(settings, 'reconcile') if edge else exc}", file=sys.stderr
            )
            if scratch is not None:
                scratch.close()
            return 2
        except BaseException:
            if scratch is not None:
                scratch.close()
            raise
    else:
        container = services
    try:
        report = reconcile(
            container.registry,
            container.ingest,
            served_generations(container.ingest),
            grace_seconds=settings.gc_grace_seconds,
            dry_run=args.dry_run,
            tenant_id=args.tenant,
        )
    finally:
        if owned:
            container.close()
        if scratch is not None:
            scratch.close()
    print(json.dumps(report.as_dict(), indent=2, sort_keys=True))
    return 0 if report.consistent else 1


if __name__ == "__main__":
    sys.exit(main())
