"""`python -m service.reconcile`: after a Qdrant or registry restore, make the vector store agree with the registry.

    python -m service.reconcile --dry-run          # report only: orphan points, documents without points
    python -m service.reconcile                    # remove orphans, re-index missing documents from kept text
    python -m service.reconcile --tenant acme      # one tenant only

Runs with the service's own settings (the environment of an API or worker pod: DATABASE_URL, QDRANT_URL or
VECTOR_STORE_URL + INTERNAL_TOKEN, the model), and is safe while the service serves: see
service.app.jobs.reconcile. On the embedded store (`make serve`) the service owns the store: stop it first
(run while it serves, this exits 2 with one line naming DATA_DIR and the service's pid). Prints one JSON
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
    if owned:
        from service.app.store.edge import StoreLocked
        from service.tools.backup import BackupError, in_use_message, refuse_if_served

        # Before the registry is opened (and migrated): one line, not a traceback from inside the container.
        try:
            refuse_if_served(settings, "reconcile")
            container = open_services(settings)
        except BackupError as exc:
            print(f"reconcile: error: {exc}", file=sys.stderr)
            return 2
        except StoreLocked as exc:  # a service that started between the check and the open; or local mode
            edge = settings.embedded_vector_store == "edge"
            print(
                f"reconcile: error: {in_use_message(settings, 'reconcile') if edge else exc}", file=sys.stderr
            )
            return 2
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
    print(json.dumps(report.as_dict(), indent=2, sort_keys=True))
    return 0 if report.consistent else 1


if __name__ == "__main__":
    sys.exit(main())
