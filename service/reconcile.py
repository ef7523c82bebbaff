"""`python -m service.reconcile`: after a Qdrant or registry restore, make the vector store agree with the registry.

    python -m service.reconcile --dry-run          # report only: orphan points, documents without points
    python -m service.reconcile                    # remove orphans, re-index missing documents from kept text
    python -m service.reconcile --tenant acme      # one tenant only

Runs with the service's own settings (the environment of an API or worker pod: DATABASE_URL, QDRANT_URL or
VECTOR_STORE_URL + INTERNAL_TOKEN, the model), and is safe while the service serves: see
service.app.jobs.reconcile. On the embedded store (`make serve`) the service owns the store: stop it first
(run while it serves, this exits 2 with one line naming DATA_DIR and the service's pid); there a dry run works
on a copy in TMPDIR and changes nothing in DATA_DIR (DryRunCopy; refused up front when TMPDIR has no room for
it). A dry run never migrates a registry it opens in place (PostgreSQL, or SQLite beside a Qdrant server): one
whose schema is behind this release's is refused (dry_run_registry_refusal). Prints one JSON
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
from service.app.core.errors import ServiceUnavailable
from service.app.core.logging import configure_logging


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m service.reconcile", description=__doc__.splitlines()[0])
    root.add_argument("--dry-run", action="store_true", help="report what would change, change nothing")
    root.add_argument("--tenant", default=None, help="reconcile one tenant only (default: every tenant)")
    return root


#: Room a dry run wants in TMPDIR beyond its copy: opening the copy writes (the engine's next preallocation step is
#: 32 MiB files for the appendable segment and its WAL; SQLite's WAL), as READY_MIN_FREE_BYTES's default.
DRY_RUN_HEADROOM_BYTES = 64 * 1024 * 1024


def free_bytes(directory: str) -> int:
    """Free space for this user under ``directory`` (statvfs)."""
    import shutil

    return shutil.disk_usage(directory).free


def copy_bytes(paths: list[Any]) -> int:
    """Space a copy of these files and directories takes: the blocks of each file (copy_sparse keeps holes)."""
    from pathlib import Path

    total = 0
    for root in paths:
        root = Path(root)
        if not root.exists():
            continue
        for path in [root] if root.is_file() else root.rglob("*"):
            if path.is_file() and path.name != ".lock":
                stat = path.stat()
                total += min(stat.st_size, stat.st_blocks * 512)
    return total


def dry_run_registry_refusal(settings: Settings) -> str | None:
    """Why a dry run must not open the registry of ``settings`` in place (one line), or None.

    Opening migrates a registry whose schema is behind this release's (the service's start-up does): a dry run
    that changes nothing cannot. A registry at this release's head opens without a write; one ahead of it is run
    on without a write (a rollback), or refused by the open itself."""
    import sqlite3
    from pathlib import Path

    from sqlalchemy.engine import make_url

    from service.app.store.registry import (
        SCHEMA_HEAD,
        DocumentRegistry,
        normalize_database_url,
        schema_sequence,
    )

    url = settings.resolved_database_url
    parsed = make_url(normalize_database_url(url))
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if not database or database == ":memory:" or "mode=memory" in url:
            return None
        path = Path(database)
        if not path.is_file():
            return f"there is no registry at {path}: a dry run creates none; check DATA_DIR / DATABASE_URL"
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)  # no WAL switch, no -shm left behind
        try:
            tables = {
                row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            rows = (
                connection.execute("SELECT version_num FROM alembic_version").fetchall()
                if ("alembic_version" in tables)
                else []
            )
            pointed = "index_pointer" in tables and bool(
                connection.execute("SELECT 1 FROM index_pointer WHERE name = 'default'").fetchall()
            )
        finally:
            connection.close()
        revision = str(rows[0][0]) if len(rows) == 1 else None
        where = str(path)
    else:
        registry = DocumentRegistry(
            url,
            connect_timeout=settings.database_connect_timeout_seconds,
            tcp_timeout=settings.database_tcp_timeout_seconds,
        )
        try:
            revision = registry.schema_revision()
            where = registry.describe()
            pointed = revision is not None and registry.index_pointer() is not None
        finally:
            registry.close()
    if revision == SCHEMA_HEAD or (schema_sequence(revision) or 0) > (schema_sequence(SCHEMA_HEAD) or 0):
        if pointed:
            return None
        # Opening the services records the served index (the settings' collection) in a registry that has none.
        return (
            f"the registry ({where}) records no served index yet, and opening it would record one: a dry run "
            "changes nothing. Start the service once (it records the index), then run the dry run again"
        )
    return (
        f"the registry ({where}) is at schema {revision or 'none (no registry tables)'}, behind this release's "
        f"{SCHEMA_HEAD}, and opening it would migrate it: a dry run changes nothing. Start this release's service "
        "once (it migrates the registry), then run the dry run again"
    )


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

        # VECTOR_STORE=local: qdrant-client's store at QDRANT_PATH, which opening rewrites too (its .lock and
        # meta.json); its lock is the same kind of flock (portalocker) on its own .lock file.
        local = settings.embedded_vector_store == "local"
        edge = settings.resolved_qdrant_path if local else settings.resolved_edge_path
        self._fd: int | None = None
        lock = edge / ".lock"
        if lock.is_file():
            fd = os.open(lock, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise BackupError(
                    f"the local-mode store at {edge} (DATA_DIR={settings.data_dir}) is in use by a running "
                    "service; reconcile needs it to itself: stop that service, run this again, then start it"
                    if local
                    else in_use_message(settings, "reconcile")
                ) from None
            self._fd = fd
        url = make_url(settings.resolved_database_url)
        database = url.database
        registry = (
            Path(database)
            if url.get_backend_name() == "sqlite" and database and database != ":memory:"
            else None
        )
        copied = [edge] + ([Path(f"{registry}{suffix}") for suffix in ("", "-wal")] if registry else [])
        needed = copy_bytes(copied) + DRY_RUN_HEADROOM_BYTES
        scratch = tempfile.gettempdir()
        try:
            room = free_bytes(scratch)
        except OSError:
            room = None  # a TMPDIR that cannot be read: mkdtemp below says so
        if room is not None and room < needed:
            self._unlock()
            raise BackupError(
                f"a dry run works on a copy of the store (the engine writes to a store it opens), which needs "
                f"{needed / 2**20:.0f} MiB in TMPDIR ({scratch}: {room / 2**20:.0f} MiB free); set TMPDIR to a "
                f"directory with room for {edge} and the registry; nothing was copied or changed"
            )
        self.root = Path(tempfile.mkdtemp(prefix="reconcile-dry-run-"))
        copy = self.root / edge.name
        update: dict[str, Any] = {"qdrant_path" if local else "edge_path": copy}
        try:
            if edge.is_dir():
                shutil.copytree(
                    edge,
                    copy,
                    copy_function=copy_sparse,
                    ignore=shutil.ignore_patterns(".lock"),
                )
            if registry is not None:
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
        import shutil

        shutil.rmtree(self.root, ignore_errors=True)
        self._unlock()

    def _unlock(self) -> None:
        import os

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
            if args.dry_run and (
                settings.embedded_vector_store == "edge"
                or (
                    settings.embedded_vector_store == "local"
                    and str(settings.resolved_qdrant_path) != ":memory:"
                )
            ):
                scratch = DryRunCopy(settings)  # held until the end: no service starts on the store meanwhile
                opened = scratch.settings
            else:
                refuse_if_served(settings, "reconcile")
                opened = settings
            if args.dry_run and opened.resolved_database_url == settings.resolved_database_url:
                refusal = dry_run_registry_refusal(opened)  # the registry is opened in place, not copied
                if refusal is not None:
                    raise BackupError(refusal)
            if args.dry_run and (opened.qdrant_url or opened.embedded_vector_store == "local"):
                from service.app.store.qdrant import QdrantVectorStore

                QdrantVectorStore.read_only = (
                    True  # opened in place: only read (no collection, index, layout)
                )
            container = open_services(opened)
        except ServiceUnavailable as exc:  # the store refused to open (read-only: its collection is missing)
            print(f"reconcile: error: {exc.message}", file=sys.stderr)
            if scratch is not None:
                scratch.close()
            return 2
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
