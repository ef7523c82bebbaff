"""Document registry: which version of each document is active, per tenant (SQLAlchemy 2, SQLite or Postgres).

The registry row is the source of truth for what a search may return: a vector point is visible only when its
(document_id, version) is the active one here (see service.app.ingest.service for the full write ordering).

Tables (created by the Alembic migrations shipped in ``migrations/``, applied by ``migrate()`` at start-up):

- ``documents(tenant_id, document_id)`` primary key, the active ``version``, ``content_hash``, ``metadata``
  (JSON), ``content_type``, ``chunk_count``, ``created_at``, ``updated_at``.
- ``document_sources(tenant_id, document_id)`` primary key, the ``version`` it belongs to and its ``text`` (the
  extracted plain text that was chunked): written in the same transaction that activates the version and
  removed with the document, so the text of every active version is kept and a re-index can re-chunk and
  re-embed it without the client (service.app.jobs.reindex). Documents written before migration 0003 have none.
- ``index_pointer(name)``: the collection search serves from and its index config (model, chunking), plus
  the previous one for a rollback; a re-index switches it in one compare-and-set update (the embedded
  engine's equivalent of a Qdrant alias change, which server mode makes alongside). ``chosen_by`` says who
  chose the served index: ``config`` (the deployed settings) or an operator (``rollback``, ``manual``), with
  the deployed settings at that moment in ``pinned_settings``; start-up honours the choice until they change.
- ``index_lease(name)``: the replica (``holder``) building the next index and its target collection/config,
  until ``expires_at``; taken and renewed with conditional updates, so of N replicas starting the same
  re-index one builds, the others dual-write into its target and wait, and one takes over when it expires.
- ``chunk_counts(tenant_id, document_id, collection)``: the ``version`` and ``chunk_count`` a write into another
  collection than the writer's current one made (a re-index's build and catch-up, every shadow write); what a
  document reports is its count in the collection search serves (``documents.chunk_count`` counts the one
  current at its write), so it stays right across a switch and a rollback. Rows of collections the pointer
  no longer names are removed after each switch.
- ``write_order(tenant_id, document_id)``: the per-document write sequence that orders writes by ACCEPTANCE.
  ``issued`` is the last ticket handed out (an async PUT takes one with its 202, before the job is queued),
  ``committed`` the ticket of the newest write or delete that took effect. A synchronous write or delete takes
  ``issued + 1`` and commits it in the same transaction (it is accepted when it is acknowledged); a job commits
  only while ``committed <= its ticket``, else it is `Superseded` (a newer write or delete was acknowledged after
  its 202) and changes nothing. A deleted document keeps its row: the tombstone an older queued job loses to.
  Rows nothing can consult any more (no ticket outstanding, no queued or running job of the document) are
  removed by ``prune_write_order`` in two passes at least a grace period apart (see there).
- ``tenants(tenant_id)`` with ``data_version``, bumped in the same transaction as every document write or delete
  of that tenant, so a cache keyed on it is invalidated by any change.
- ``schema_compat(revision)``: per applied migration, ``compatible_from``, the oldest release schema head that may
  run on it (written by migrations/env.py). A release meeting a database ahead of `SCHEMA_HEAD` starts when the
  database's revision names a ``compatible_from`` at or before its head, else refuses (`SchemaAheadError`).

Writes are compare-and-set on the version the writer started from: a concurrent writer that lost gets `Conflict`
instead of silently replacing a version it never saw. Backend failures surface as `ServiceUnavailable`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import functools
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from service.app.core.config import Settings
from service.app.core.errors import Conflict, DiskFull, InvalidInput, ServiceUnavailable
from service.app.core.files import PRIVATE_FILE_MODE, make_private_dirs
from service.app.core.metrics import FAILURES
from service.app.ingest.models import has_lone_surrogate

if TYPE_CHECKING:
    from alembic.config import Config

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# The newest shipped migration: `migrate` leaves Alembic unloaded (about 0.5 s of every start-up) when the database
# already records it. A new migration must update it (tests/service/test_registry.py checks it is Alembic's head).
SCHEMA_HEAD = "0011_schema_compat"
# The oldest release schema head that may run on the schema this release migrates to: the head migration's
# ``compatible_from`` (the image's io.rag.schema-compatible-from label; tests check they agree). See
# migrations/versions/0011_schema_compat.py for the contract.
SCHEMA_COMPATIBLE_FROM = "0011_schema_compat"
MAX_PAGE_SIZE = 100

metadata_obj = sa.MetaData()

documents = sa.Table(
    "documents",
    metadata_obj,
    sa.Column("tenant_id", sa.String(64), primary_key=True),
    sa.Column("document_id", sa.String(256), primary_key=True),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("content_hash", sa.String(64), nullable=False),
    sa.Column("metadata", sa.JSON, nullable=False),
    sa.Column("content_type", sa.String(128), nullable=False),
    sa.Column("chunk_count", sa.Integer, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

document_sources = sa.Table(
    "document_sources",
    metadata_obj,
    sa.Column("tenant_id", sa.String(64), primary_key=True),
    sa.Column("document_id", sa.String(256), primary_key=True),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("text", sa.Text, nullable=False),
)

index_pointer = sa.Table(
    "index_pointer",
    metadata_obj,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("collection", sa.String(255), nullable=False),
    sa.Column("config", sa.JSON, nullable=False),
    sa.Column("previous_collection", sa.String(255), nullable=True),
    sa.Column("previous_config", sa.JSON, nullable=True),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    # Who chose this index (0009): ``config`` (the deployed settings) or an operator (``rollback``, ``manual``),
    # and then the deployed settings the operator's choice holds against.
    sa.Column("chosen_by", sa.String(16), nullable=False, server_default="config"),
    sa.Column("pinned_settings", sa.JSON, nullable=True),
)

index_lease = sa.Table(
    "index_lease",
    metadata_obj,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("holder", sa.String(255), nullable=False),
    sa.Column("collection", sa.String(255), nullable=False),
    sa.Column("config", sa.JSON, nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
)

chunk_counts = sa.Table(
    "chunk_counts",
    metadata_obj,
    sa.Column("tenant_id", sa.String(64), primary_key=True),
    sa.Column("document_id", sa.String(256), primary_key=True),
    sa.Column("collection", sa.String(255), primary_key=True),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("chunk_count", sa.Integer, nullable=False),
    sa.Index("ix_chunk_counts_collection", "collection"),
)

write_order = sa.Table(
    "write_order",
    metadata_obj,
    sa.Column("tenant_id", sa.String(64), primary_key=True),
    sa.Column("document_id", sa.String(256), primary_key=True),
    sa.Column("issued", sa.BigInteger, nullable=False),
    sa.Column("committed", sa.BigInteger, nullable=False),
    # The pruner's mark (0010): the ``issued`` it saw with nothing outstanding, and when (prune_write_order).
    sa.Column("prune_mark", sa.BigInteger, nullable=True),
    sa.Column("marked_at", sa.DateTime(timezone=True), nullable=True),
)

tenants = sa.Table(
    "tenants",
    metadata_obj,
    sa.Column("tenant_id", sa.String(64), primary_key=True),
    sa.Column("data_version", sa.BigInteger, nullable=False),
)

jobs_table = sa.Table(
    "jobs",
    metadata_obj,
    sa.Column("job_id", sa.String(64), primary_key=True),
    sa.Column("tenant_id", sa.String(64), nullable=False),
    sa.Column("document_id", sa.String(256), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("woken_at", sa.DateTime(timezone=True)),
    sa.Column("lease_until", sa.DateTime(timezone=True)),
    sa.Column("lease_token", sa.String(32)),  # new at each claim: the fencing token (0006_job_lease)
    sa.Column("lease_holder", sa.String(255)),  # host:pid of the worker holding the lease
    sa.Column("started_at", sa.DateTime(timezone=True)),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("error", sa.Text),
    sa.Column("result", sa.JSON),
    sa.Index("ix_jobs_status_next_attempt", "status", "next_attempt_at"),
    sa.Index("ix_jobs_finished_at", "finished_at"),
)


schema_compat = sa.Table(
    "schema_compat",
    metadata_obj,
    sa.Column("revision", sa.String(64), primary_key=True),
    sa.Column("compatible_from", sa.String(64), nullable=False),  # the oldest schema head that may run on it
    sa.Column("applied_at", sa.DateTime(timezone=True)),  # None: applied before 0011 recorded it
)


def schema_sequence(revision: str | None) -> int | None:
    """A revision's place in the (linear) migration chain: its leading number (``0010_write_order_prune`` -> 10).

    Every shipped revision id starts with its sequence number (tests/service/test_schema_compat.py checks it), so a
    release can order a revision it does not ship against its own head.
    """
    number = (revision or "").split("_", 1)[0]
    return int(number) if number.isdigit() else None


def can_run_on(head: str, compatible_from: str | None) -> bool:
    """Whether a release whose schema head is ``head`` may run on a schema whose oldest compatible head is
    ``compatible_from`` (False when either is unknown)."""
    own, oldest = schema_sequence(head), schema_sequence(compatible_from)
    return own is not None and oldest is not None and own >= oldest


class SchemaAheadError(RuntimeError):
    """The database's schema is ahead of this release's and not declared compatible with it (nothing changed)."""

    def __init__(
        self, where: str, revision: str, compatible_from: str | None, *, embedded: bool = False
    ) -> None:
        self.revision = revision
        self.compatible_from = compatible_from
        needs = (
            f"it may only be run by releases at schema {compatible_from} or newer"
            if compatible_from
            else "it records no compatibility (schema_compat has no row for it), so no older release may run on it"
        )
        if embedded:
            # A SQLite registry (make serve): its backup is the embedded store's, restored by the newer release's
            # tool (an older release may not have it), not a cluster rollback (EYES9 L3).
            restore = (
                "or, with the service stopped, restore the pre-upgrade backup of DATA_DIR with the newer "
                "release's `python -m service.tools.backup restore --force <backup>` (older releases may not have "
                "that tool) and then start this release (docs/operations.md, 'Backing up and restoring the "
                "embedded store')"
            )
        else:
            restore = (
                "or restore the registry from a backup taken before that migration "
                "(docs/runbooks.md, 'Rolling back a release')"
            )
        super().__init__(
            f"the registry database ({where}) is at schema {revision}, written by a newer version (this release's "
            f"schema is {SCHEMA_HEAD}), and {needs}: this release refuses to start and changed nothing. Run a "
            f"release at schema {compatible_from or revision} or newer (fix forward), {restore}"
        )


class Superseded(Conflict):
    """A queued write lost to a newer write or delete of the same document acknowledged after its acceptance."""


class CommitFence(Protocol):
    """What a write must still own when it commits: a job's lease (service.app.store.jobstore.JobLease)."""

    def check(self) -> None:
        """Raise (a Conflict) when the writer is known to have lost what it owns: cheap, no I/O; called
        between steps of a long write so a writer that lost its job stops early."""

    def hold(self, connection: Connection) -> None:
        """Inside the commit's transaction: raise (a Conflict) unless the writer still owns it, else lock it
        until the commit."""


@dataclass(frozen=True)
class DocumentRecord:
    """One active document as the registry knows it."""

    tenant_id: str
    document_id: str
    version: int
    content_hash: str
    metadata: dict[str, Any]
    content_type: str
    chunk_count: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class DocumentSource:
    """An active document with the text its active version was built from."""

    record: DocumentRecord
    text: str


@dataclass(frozen=True)
class IndexPointer:
    """Where search is served from, where a rollback would go, and who chose it.

    ``chosen_by``: ``config`` when the served index follows the deployed settings (a start-up re-index, a first
    start, a re-index or rollback to the deployed settings), ``rollback`` / ``manual`` when an operator chose
    one that differs from them; ``pinned_settings`` is then the deployed settings (model, chunk_size,
    chunk_overlap) at that moment: the operator's choice holds until the deployed settings differ from them.
    """

    collection: str
    config: dict[str, Any]
    previous_collection: str | None
    previous_config: dict[str, Any] | None
    chosen_by: str = "config"
    pinned_settings: dict[str, Any] | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class IndexLease:
    """Which replica builds the next index (``collection`` with ``config``), held until ``expires_at``; both
    ``expires_at`` and ``read_at`` (when the row was read) are the database's clock, never a replica's."""

    holder: str
    collection: str
    config: dict[str, Any]
    expires_at: datetime
    read_at: datetime | None = None

    def live(self, now: datetime | None = None) -> bool:
        """Whether the lease was live when it was read (on the database's clock; ``now`` to ask about another
        moment of that clock)."""
        return _aware(self.expires_at) > (now or self.read_at or datetime.now(UTC))


def database_now(connection: Connection) -> datetime:
    """The database server's current time (UTC), read on ``connection`` (service.app.store.jobstore: one clock
    for every lease, the jobs' and the re-index's)."""
    if connection.dialect.name == "postgresql":
        # clock_timestamp(), not now(): now() is the start of the transaction, and a commit holding a lease
        # (JobLease.hold) runs at the end of a long one.
        value = connection.exec_driver_sql("SELECT clock_timestamp()").scalar_one()
    else:
        value = datetime.fromisoformat(
            connection.exec_driver_sql("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')").scalar_one()
        )
    return _utc(value)


def _aware(moment: datetime) -> datetime:
    # SQLite hands DateTime(timezone=True) back naive; every value written here is UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class DocumentPage:
    """A page of documents ordered by id; ``next_cursor`` is None on the last page."""

    items: list[DocumentRecord]
    next_cursor: str | None


P = ParamSpec("P")
R = TypeVar("R")


def _disk_full(exc: SQLAlchemyError) -> bool:
    """Whether the database refused for want of disk space: SQLite's SQLITE_FULL ("database or disk is full"),
    an ENOSPC, or PostgreSQL's disk_full (53100)."""
    cause = getattr(exc, "orig", None)
    if (
        isinstance(cause, sqlite3.Error)
        and (getattr(cause, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_FULL
    ):
        return True
    if isinstance(cause, OSError) and cause.errno == errno.ENOSPC:
        return True
    return getattr(cause, "sqlstate", None) == "53100"


def _guarded(func: Callable[P, R]) -> Callable[P, R]:
    """Turn backend failures into ServiceUnavailable (domain errors pass through untouched)."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except SQLAlchemyError as exc:
            FAILURES.labels(component="registry").inc()
            logger.warning("registry call %s failed: %s", func.__name__, exc)
            if _disk_full(exc):
                # The cause the operator can act on, not only in the log (EYES10: a DELETE on a full disk).
                raise DiskFull(
                    "document registry unavailable: its disk is full (the database refused the write for want "
                    "of space); nothing was changed: free space on the volume, then retry",
                    retry_after=60,
                ) from exc
            raise ServiceUnavailable("document registry unavailable; retry later") from exc

    return wrapper


def _announced(func: Callable[..., R]) -> Callable[..., R]:
    """Tell the registry's change listeners (`DocumentRegistry.on_change`) once a write or delete that reached its
    data_version bump has ended, whatever its outcome (a commit whose answer was lost may have happened). One that
    failed before (the database unreachable, a conflict) changed nothing and tells nobody. Listeners are told
    whether it succeeded: one that raised after its bump means the registry just failed."""

    @functools.wraps(func)
    def wrapper(self: DocumentRegistry, tenant_id: str, *args: Any, **kwargs: Any) -> R:
        self._writing.bumped = False
        ok = False
        try:
            result = func(self, tenant_id, *args, **kwargs)
            ok = True
            return result
        finally:
            if self._writing.bumped:
                self._changed(tenant_id, ok)

    return wrapper


def encode_cursor(document_id: str) -> str:
    """Opaque cursor: the last document id of a page, base64url-encoded."""
    return base64.urlsafe_b64encode(json.dumps({"after": document_id}).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """The document id a cursor points after; InvalidInput for anything we did not issue."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        after = json.loads(raw)["after"]
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise InvalidInput("cursor is not valid; pass back the next_cursor of a previous page") from exc
    # A forged id with a NUL byte (or a lone surrogate) made Postgres fail: a 503 for bad input. No stored id
    # can hold either, so no cursor we issued does.
    if not isinstance(after, str) or "\x00" in after or has_lone_surrogate(after):
        raise InvalidInput("cursor is not valid; pass back the next_cursor of a previous page")
    return after


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything we store is UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _with_counts(query: sa.Select[Any], served: str | sa.BindParameter[str] | None) -> sa.Select[Any]:
    """``query`` on documents, its ``chunk_count`` taken from ``served``'s row of chunk_counts for the active
    version when there is one (None: the count recorded at the write)."""
    if served is None:
        return query
    return query.add_columns(chunk_counts.c.chunk_count.label("served_chunk_count")).outerjoin(
        chunk_counts,
        sa.and_(
            chunk_counts.c.tenant_id == documents.c.tenant_id,
            chunk_counts.c.document_id == documents.c.document_id,
            chunk_counts.c.collection == served,
            chunk_counts.c.version == documents.c.version,
        ),
    )


# Built once: composing the join per call cost more than running it (SQLAlchemy's expression building is
# Python; about 1.6x a plain get per call, measured with cProfile).
_BY_KEY = (
    documents.c.tenant_id == sa.bindparam("tenant_id"),
    documents.c.document_id == sa.bindparam("document_id"),
)
_GET = sa.select(documents).where(*_BY_KEY)
_GET_SERVED = _with_counts(sa.select(documents), sa.bindparam("served")).where(*_BY_KEY)


def _record(row: sa.Row[Any]) -> DocumentRecord:
    m = row._mapping
    served = m.get("served_chunk_count")
    return DocumentRecord(
        tenant_id=m["tenant_id"],
        document_id=m["document_id"],
        version=int(m["version"]),
        content_hash=m["content_hash"],
        metadata=dict(m["metadata"] or {}),
        content_type=m["content_type"],
        chunk_count=int(served if served is not None else m["chunk_count"]),
        created_at=_utc(m["created_at"]),
        updated_at=_utc(m["updated_at"]),
    )


def normalize_database_url(url: str) -> str:
    """``postgres://`` and driver-less ``postgresql://`` URLs (as managed databases hand them out) use psycopg 3."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _create_private(database: str, *_connect: Any) -> None:
    # There already, or not creatable (SQLite's own open then reports why, as before).
    with contextlib.suppress(OSError):
        os.close(os.open(database, os.O_CREAT | os.O_EXCL | os.O_WRONLY, PRIVATE_FILE_MODE))


def _sqlite_pragmas(synchronous: str, dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers (searches) run while a write commits. In WAL mode NORMAL syncs only at checkpoints: the
    # database stays consistent, but a commit can be rolled back by a power loss or an OS crash (not by a process
    # crash); FULL syncs the WAL at every commit, so a commit that returned survives a power loss too
    # (https://www.sqlite.org/pragma.html#pragma_synchronous, WRITE_DURABILITY).
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA synchronous={synchronous}")
    cursor.close()


#: Defaults of DATABASE_CONNECT_TIMEOUT_SECONDS and DATABASE_TCP_TIMEOUT_SECONDS (service.app.core.config).
CONNECT_TIMEOUT_SECONDS = 5.0
TCP_TIMEOUT_SECONDS = 15.0


def postgres_connect_args(
    query: Mapping[str, Any], *, connect_timeout: float, tcp_timeout: float
) -> dict[str, Any]:
    """libpq keywords that bound how long a call can wait on a Postgres host that stopped answering.

    Without them libpq waits for ever on a connect (``connect_timeout`` unset: "wait indefinitely") and an
    established connection whose peer vanished (a node or zone lost, a Multi-AZ failover after an AZ loss: no
    RST, packets just dropped) is given up only by the kernel's retransmission limit, ~15 minutes on Linux
    (tcp_retries2=15). Every search reads the registry, so each such call parked a thread for that long and the
    service stopped answering long before the database came back. ``tcp_user_timeout`` drops a connection whose
    sent data stays unacknowledged that long; keepalives do the same for one waiting idle (pooled, or waiting
    for an answer) whose peer is gone. Keywords already in DATABASE_URL's query string win.
    """
    tcp = max(1, round(tcp_timeout))
    wanted = {
        # libpq takes whole seconds and treats less than 2 as 2.
        "connect_timeout": max(2, round(connect_timeout)),
        "tcp_user_timeout": tcp * 1000,
        "keepalives": 1,
        "keepalives_idle": max(1, tcp // 3),
        "keepalives_interval": max(1, tcp // 6),
        "keepalives_count": 3,
    }
    return {key: value for key, value in wanted.items() if key not in query}


def make_engine(
    url: str,
    *,
    connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
    tcp_timeout: float = TCP_TIMEOUT_SECONDS,
    durable: bool = True,
) -> Engine:
    """An engine for the registry URL; SQLite files get their directory created and a generous lock timeout,
    WAL mode and ``synchronous=FULL`` (``durable``: a commit survives a power loss) or ``NORMAL`` (a process
    crash only); Postgres connections get bounded connect and dead-peer timeouts (``postgres_connect_args``)
    and, ``durable``, never run with ``synchronous_commit=off`` (``_postgres_commit_flushed``)."""
    url = normalize_database_url(url)
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            make_private_dirs(Path(database).parent)  # it holds every document's text: 0700
        engine = sa.create_engine(url, connect_args={"timeout": 30})
        if database and database != ":memory:" and not parsed.query:
            # The file SQLite creates at the first connect gets 0644 from the usual umask (and its -wal/-shm
            # copy its mode): a tool opening a missing registry creates it owner-only, as `python -m service`.
            sa.event.listen(engine, "do_connect", functools.partial(_create_private, database))
        sa.event.listen(
            engine, "connect", functools.partial(_sqlite_pragmas, "FULL" if durable else "NORMAL")
        )
        return engine
    connect_args = postgres_connect_args(
        parsed.query, connect_timeout=connect_timeout, tcp_timeout=tcp_timeout
    )
    engine = sa.create_engine(url, pool_pre_ping=True, connect_args=connect_args)
    if durable:
        sa.event.listen(engine, "connect", _postgres_commit_flushed)
    return engine


_RAISE_SYNCHRONOUS_COMMIT = (
    "SELECT set_config('synchronous_commit', 'on', false) FROM (SELECT 1) AS one "
    "WHERE current_setting('synchronous_commit') = 'off'"
)


def _postgres_commit_flushed(dbapi_connection: Any, _record: Any) -> None:
    """WRITE_DURABILITY=power_loss on a Postgres whose ``synchronous_commit`` is ``off`` (set for the server, the
    database or the role, often to speed up bulk loads): a COMMIT returns before its WAL is flushed, so a write
    the service acknowledged is lost if the server crashes within ``wal_writer_delay`` x 3
    (https://www.postgresql.org/docs/15/wal-async-commit.html). The parameter is settable per session, so each of
    the registry's connections turns it back ``on``; every other value (``local``, ``remote_write``, ``on``,
    ``remote_apply``) flushes locally and is kept as the server has it. One round trip per new connection, in
    the pool's lifetime; the SET is committed, or the pool's reset (a rollback) would undo it."""
    with dbapi_connection.cursor() as cursor:
        cursor.execute(_RAISE_SYNCHRONOUS_COMMIT)
        raised = cursor.fetchone() is not None
    dbapi_connection.commit()
    if raised and not _warned_async_commit:
        _warned_async_commit.append(True)
        logger.warning(
            "Postgres runs with synchronous_commit=off for the registry's role or database; the registry's "
            "connections set it to on, so an acknowledged write survives a Postgres crash "
            "(WRITE_DURABILITY=power_loss; process_crash keeps the server's setting)"
        )


_warned_async_commit: list[bool] = []  # once per process, not per pooled connection


class RegistryOpenError(RuntimeError):
    """The registry database cannot be opened or migrated at start-up; the message is one line naming the
    database (the file, or DATABASE_URL without its password) and what to do."""


def open_registry(
    url: str,
    *,
    connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
    tcp_timeout: float = TCP_TIMEOUT_SECONDS,
) -> DocumentRegistry:
    """The registry at ``url``, migrated; RegistryOpenError (one line, nothing changed) when that fails.

    SQLite's own errors do not say which file, nor whether it is missing, unreadable, a directory or damaged,
    and the generic 503 reason ("retry later") is wrong advice at start-up: retrying a damaged file fails again.
    """
    registry: DocumentRegistry | None = None
    try:
        registry = DocumentRegistry(url, connect_timeout=connect_timeout, tcp_timeout=tcp_timeout)
        registry._migrate()  # unguarded: the error is described here, not logged as a 503's cause
    except Exception as exc:
        if registry is not None:
            registry.close()
        raise RegistryOpenError(describe_open_failure(url, exc)) from exc
    return registry


def describe_open_failure(url: str, exc: BaseException) -> str:
    """One line: which registry database failed to open, why, and what to do (see ``open_registry``)."""
    cause: BaseException = exc.__cause__ if isinstance(exc, ServiceUnavailable) and exc.__cause__ else exc
    if isinstance(cause, SchemaAheadError):
        return str(cause)
    detail = getattr(cause, "orig", None) or cause  # the DB-API error under SQLAlchemy's wrapper
    reason = " ".join(str(detail).split()) or type(detail).__name__
    if type(cause).__name__ == "CommandError":  # Alembic: a revision this version does not ship
        return (
            f"the registry database ({_display(url)}) has a schema this version does not know ({reason}): it was "
            "written by a newer version; run that version, or restore a backup taken before the upgrade"
        )
    parsed = sa.make_url(normalize_database_url(url))
    if parsed.get_backend_name() != "sqlite":
        return (
            f"the registry database {_display(url)} (DATABASE_URL) cannot be opened: {reason}; check the URL, "
            "the credentials and that the database server is up"
        )
    path = Path(parsed.database or "")
    unchanged = "the service changed nothing"
    if path.is_dir():
        return (
            f"the registry {path} is a directory, not a SQLite database file: move it away (or set DATA_DIR or "
            f"DATABASE_URL to another place); {unchanged}"
        )
    if isinstance(cause, OSError) or not path.parent.is_dir():
        return f"the registry {path} cannot be created ({reason}): DATA_DIR must be a writable directory"
    needed = [p for p in (path, path.parent) if p.exists() and not os.access(p, os.R_OK | os.W_OK)]
    if needed or "readonly" in reason or "unable to open" in reason:
        return (
            f"the registry {path} cannot be opened for reading and writing by this user (uid {os.getuid()}): "
            f"{reason}; SQLite needs to read and write the file and to create {path.name}-wal and "
            f"{path.name}-shm beside it in {path.parent}: fix the permissions; {unchanged}"
        )
    if "not a database" in reason or "malformed" in reason or "corrupt" in reason:
        return (
            f"the registry {path} is not a readable SQLite database (damaged or truncated: {reason}); {unchanged}. "
            f"Restore it from a backup, or recover what is readable with `sqlite3 {path} .recover | sqlite3 "
            f"{path}.recovered` and put that in its place. Do not delete it: it records which stored chunks "
            "are live, and an empty registry makes them orphans"
        )
    return f"the registry {path} cannot be opened: {reason}; {unchanged}"


def _display(url: str) -> str:
    try:
        return sa.make_url(normalize_database_url(url)).render_as_string(hide_password=True)
    except Exception:
        return "(unparsable DATABASE_URL)"


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Config:
    """An Alembic Config built in code (no alembic.ini): the shipped scripts, bound to a connection or URL."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        # ConfigParser interpolation: a literal % in a password must be doubled.
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _active_versions(connection: Connection, tenant_id: str, document_ids: Iterable[str]) -> dict[str, int]:
    ids = sorted(set(document_ids))
    if not ids:
        return {}
    # Every search runs this: plain driver SQL costs a third of building and compiling a Core select.
    mark = "?" if connection.dialect.paramstyle == "qmark" else "%s"
    sql = (
        "SELECT document_id, version FROM documents "  # noqa: S608 - only placeholders are interpolated
        f"WHERE tenant_id = {mark} AND document_id IN ({', '.join([mark] * len(ids))})"
    )
    rows = connection.exec_driver_sql(sql, (tenant_id, *ids)).all()
    return {document_id: int(version) for document_id, version in rows}


class RegistrySnapshot:
    """Reads against one registry snapshot (see `DocumentRegistry.snapshot`)."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def active_versions(self, tenant_id: str, document_ids: Iterable[str]) -> dict[str, int]:
        """document_id -> active version, as of the snapshot."""
        try:
            return _active_versions(self._connection, tenant_id, document_ids)
        except SQLAlchemyError as exc:
            FAILURES.labels(component="registry").inc()
            raise ServiceUnavailable("document registry unavailable; retry later") from exc

    def data_version(self, tenant_id: str) -> int:
        """The tenant's data_version as of the snapshot (0 before its first write)."""
        mark = "?" if self._connection.dialect.paramstyle == "qmark" else "%s"
        try:
            row = self._connection.exec_driver_sql(
                f"SELECT data_version FROM tenants WHERE tenant_id = {mark}",  # noqa: S608 - a placeholder
                (tenant_id,),
            ).first()
        except SQLAlchemyError as exc:
            FAILURES.labels(component="registry").inc()
            raise ServiceUnavailable("document registry unavailable; retry later") from exc
        return int(row[0]) if row is not None and row[0] is not None else 0


class _SqliteSnapshot(RegistrySnapshot):
    """The same reads on a plain sqlite3 connection inside one read transaction (see `_SqliteReaders`)."""

    def __init__(self, connection: sqlite3.Connection) -> None:  # the base class wraps a SQLAlchemy one
        self._raw = connection

    def active_versions(self, tenant_id: str, document_ids: Iterable[str]) -> dict[str, int]:
        ids = sorted(set(document_ids))
        if not ids:
            return {}
        sql = (
            "SELECT document_id, version FROM documents "  # noqa: S608 - only placeholders are interpolated
            f"WHERE tenant_id = ? AND document_id IN ({', '.join('?' * len(ids))})"
        )
        try:
            rows = self._raw.execute(sql, (tenant_id, *ids)).fetchall()
        except sqlite3.Error as exc:
            FAILURES.labels(component="registry").inc()
            raise ServiceUnavailable("document registry unavailable; retry later") from exc
        return {document_id: int(version) for document_id, version in rows}

    def data_version(self, tenant_id: str) -> int:
        try:
            row = self._raw.execute(
                "SELECT data_version FROM tenants WHERE tenant_id = ?", (tenant_id,)
            ).fetchone()
        except sqlite3.Error as exc:
            FAILURES.labels(component="registry").inc()
            raise ServiceUnavailable("document registry unavailable; retry later") from exc
        return int(row[0]) if row is not None and row[0] is not None else 0


class _SqliteReaders:
    """Plain sqlite3 connections kept for search snapshots of a file database (one per concurrent search).

    Why: a search opens one registry snapshot, and through SQLAlchemy (pool checkout, BEGIN, the query, rollback,
    reset on return) that cost ~240 us of CPU per search on the machine of docs/benchmarks.md, against ~30 us for
    the same statements on a kept sqlite3 connection. The connections come from the engine's pool (so they get
    the same connect hooks: WAL, synchronous) and are detached from it. The semantics are the SQLAlchemy path's:
    BEGIN, the reads, ROLLBACK; every snapshot reads the database file as it is when the snapshot's first read
    runs, so writes by this process, other processes and other tools are all seen by the next search. A
    connection is reused only when it is provably outside any transaction (a kept connection stuck in an old read
    transaction would serve that old state forever); one that failed in any way is closed, not reused.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._idle: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    def acquire(self) -> sqlite3.Connection:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        proxied = self._engine.raw_connection()  # SQLAlchemyError on failure: the caller maps it
        proxied.detach()  # ours from now on: the pool neither resets nor counts it
        connection = proxied.dbapi_connection
        assert isinstance(connection, sqlite3.Connection)
        return connection

    def release(self, connection: sqlite3.Connection) -> None:
        with self._lock:
            if not self._closed and not connection.in_transaction:
                self._idle.append(connection)
                return
        connection.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    @property
    def idle(self) -> int:
        """Connections kept for the next snapshots (for tests)."""
        return len(self._idle)


class DocumentRegistry:
    """SQLAlchemy-backed registry of active document versions; every call is scoped to one tenant."""

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
        tcp_timeout: float = TCP_TIMEOUT_SECONDS,
        durable: bool = True,
    ) -> None:
        self.url = url
        #: (the database's revision, its compatible_from) when it is ahead of this release's schema and declared
        #: compatible with it (a rollback: `_run_ahead`); None when it is at this release's head.
        self.schema_ahead: tuple[str, str | None] | None = None
        self.engine = make_engine(
            url, connect_timeout=connect_timeout, tcp_timeout=tcp_timeout, durable=durable
        )
        # Told of every write or delete this process makes, after it ends whatever its outcome (a commit whose
        # answer was lost may have happened): search's live-version copy drops the tenant's (live_versions.py).
        self._change_listeners: list[Callable[[str, bool], None]] = []
        self._writing = threading.local()  # `bumped`: the running write reached its data_version bump
        # Search snapshots of a SQLite file skip SQLAlchemy (see _SqliteReaders); Postgres and in-memory SQLite
        # (one database per connection) keep the engine's path.
        database = self.engine.url.database
        self._readers = (
            _SqliteReaders(self.engine)
            if self.dialect == "sqlite"
            and database
            and database != ":memory:"
            and "mode=memory" not in self.url
            else None
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> DocumentRegistry:
        """SQLite under DATA_DIR by default, DATABASE_URL (e.g. postgresql+psycopg://) when set."""
        return cls(
            settings.resolved_database_url,
            connect_timeout=settings.database_connect_timeout_seconds,
            tcp_timeout=settings.database_tcp_timeout_seconds,
            durable=settings.write_durability == "power_loss",
        )

    def on_change(self, listener: Callable[[str, bool], None]) -> None:
        """Call ``listener(tenant_id, ok)`` after every document write or delete this registry object makes (``ok``:
        it succeeded; False: it raised after its data_version bump, so it may or may not have committed)."""
        self._change_listeners.append(listener)

    def _changed(self, tenant_id: str, ok: bool) -> None:
        for listener in self._change_listeners:
            listener(tenant_id, ok)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def describe(self) -> str:
        """Where the registry lives, for messages: the SQLite file, or DATABASE_URL without its password."""
        database = self.engine.url.database
        if self.dialect == "sqlite" and database and database != ":memory:":
            return str(Path(database))
        return f"DATABASE_URL {_display(self.url)}"

    @_guarded
    def migrate(self) -> None:
        """Apply the shipped Alembic migrations up to head (idempotent; serialised on Postgres).

        A database already at `SCHEMA_HEAD` (every start-up but the first after an upgrade) is checked with one
        query and Alembic is not loaded; one AHEAD of it (a rollback) is run on when its revision declares this
        release compatible and refused otherwise (`_run_ahead`), without Alembic; any other revision goes through
        Alembic.
        """
        self._migrate()

    def _migrate(self) -> None:
        revision = self.schema_revision()
        if revision == SCHEMA_HEAD:
            return
        if (schema_sequence(revision) or 0) > (schema_sequence(SCHEMA_HEAD) or 0):
            self._run_ahead(revision)  # type: ignore[arg-type]  # a sequence implies a revision
            return
        from alembic import command

        with self.engine.begin() as connection:
            command.upgrade(alembic_config(connection), "head")

    def _run_ahead(self, revision: str) -> None:
        """The database is at a revision newer than this release's (a rollback): start when that revision
        declares this release's head compatible (schema_compat), else SchemaAheadError. Nothing is written."""
        compatible_from = self.schema_compatible_from(revision)
        if not can_run_on(SCHEMA_HEAD, compatible_from):
            raise SchemaAheadError(
                self.describe(), revision, compatible_from, embedded=self.dialect == "sqlite"
            )
        self.schema_ahead = (revision, compatible_from)
        logger.warning(
            "the registry database (%s) is at schema %s, ahead of this release's %s; it is declared compatible "
            "with releases from %s on, so this release runs on it without migrating (a rollback)",
            self.describe(),
            revision,
            SCHEMA_HEAD,
            compatible_from,
        )

    def schema_compatible_from(self, revision: str) -> str | None:
        """The oldest schema head ``revision`` declared compatible (schema_compat); None when it records none."""
        with self.engine.connect() as connection:
            if not sa.inspect(connection).has_table(schema_compat.name):
                return None
            value = connection.execute(
                sa.select(schema_compat.c.compatible_from).where(schema_compat.c.revision == revision)
            ).scalar()
        return str(value) if value is not None else None

    def schema_revision(self) -> str | None:
        """The revision the database's ``alembic_version`` table records; None when it has none (or several)."""
        with self.engine.connect() as connection:
            if not sa.inspect(connection).has_table("alembic_version"):
                return None
            rows = connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all()
        return str(rows[0]) if len(rows) == 1 else None

    def close(self) -> None:
        if self._readers is not None:
            self._readers.close()
        self.engine.dispose()

    @_guarded
    def ping(self) -> None:
        """Raise ServiceUnavailable unless the database answers."""
        with self.engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))

    @_guarded
    def get(self, tenant_id: str, document_id: str, *, served: str | None = None) -> DocumentRecord | None:
        """The active document; with ``served`` (the collection search serves) its chunk count there."""
        params = {"tenant_id": tenant_id, "document_id": document_id}
        statement = _GET
        if served is not None:
            statement, params["served"] = _GET_SERVED, served
        with self.engine.connect() as connection:
            row = connection.execute(statement, params).first()
        return None if row is None else _record(row)

    @_guarded
    def list(
        self, tenant_id: str, *, cursor: str | None = None, limit: int = 20, served: str | None = None
    ) -> DocumentPage:
        """Documents of a tenant ordered by id, ``limit`` (1..100) per page, resuming after ``cursor``; chunk
        counts as in ``get``."""
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise InvalidInput(f"limit must be between 1 and {MAX_PAGE_SIZE}")
        query = _with_counts(sa.select(documents), served).where(documents.c.tenant_id == tenant_id)
        if cursor:
            query = query.where(documents.c.document_id > decode_cursor(cursor))
        query = query.order_by(documents.c.document_id).limit(limit + 1)
        with self.engine.connect() as connection:
            rows = connection.execute(query).all()
        items = [_record(row) for row in rows[:limit]]
        next_cursor = encode_cursor(items[-1].document_id) if len(rows) > limit else None
        return DocumentPage(items=items, next_cursor=next_cursor)

    @_guarded
    def active_versions(self, tenant_id: str, document_ids: Iterable[str]) -> dict[str, int]:
        """document_id -> active version for those of ``document_ids`` that exist (one query)."""
        with self.engine.connect() as connection:
            return _active_versions(connection, tenant_id, document_ids)

    @contextmanager
    def snapshot(self) -> Iterator[RegistrySnapshot]:
        """One consistent view of the registry for several reads (a search judging page after page of hits).

        Postgres: a REPEATABLE READ transaction; SQLite (WAL): one read transaction, opened by an explicit
        BEGIN because the driver runs each SELECT in its own. Either way no write that commits meanwhile is
        seen, so every hit of one search is judged against the same set of active versions. A SQLite file is
        read through a kept sqlite3 connection with the same statements (`_SqliteReaders`: the per-search cost).
        """
        if self._readers is not None:
            with self._sqlite_snapshot(self._readers) as snapshot:
                yield snapshot
            return
        try:
            with self.engine.connect() as connection:
                if self.dialect == "postgresql":
                    connection = connection.execution_options(isolation_level="REPEATABLE READ")
                    connection.begin()
                else:
                    connection.exec_driver_sql("BEGIN")
                try:
                    yield RegistrySnapshot(connection)
                finally:
                    connection.rollback()
        except SQLAlchemyError as exc:
            FAILURES.labels(component="registry").inc()
            raise ServiceUnavailable("document registry unavailable; retry later") from exc

    @contextmanager
    def _sqlite_snapshot(self, readers: _SqliteReaders) -> Iterator[RegistrySnapshot]:
        try:
            connection = readers.acquire()
        except SQLAlchemyError as exc:
            FAILURES.labels(component="registry").inc()
            raise ServiceUnavailable("document registry unavailable; retry later") from exc
        try:
            # Explicit: the driver runs each SELECT on its own otherwise, and the reads of one search must share
            # one snapshot. SQLite fixes the snapshot at the first read inside the transaction.
            connection.execute("BEGIN")
        except sqlite3.Error as exc:
            connection.close()
            FAILURES.labels(component="registry").inc()
            raise ServiceUnavailable("document registry unavailable; retry later") from exc
        try:
            yield _SqliteSnapshot(connection)
        finally:
            try:
                connection.rollback()
            except sqlite3.Error:
                connection.close()
            else:
                readers.release(connection)

    @_guarded
    def active_version_pairs(self, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """(tenant_id, document_id) -> active version for the given pairs that exist (for the orphan GC)."""
        by_tenant: dict[str, set[str]] = {}
        for tenant_id, document_id in pairs:
            by_tenant.setdefault(tenant_id, set()).add(document_id)
        found: dict[tuple[str, str], int] = {}
        with self.engine.connect() as connection:
            for tenant_id, ids in by_tenant.items():
                for document_id, version in _active_versions(connection, tenant_id, ids).items():
                    found[(tenant_id, document_id)] = version
        return found

    @_guarded
    def data_version(self, tenant_id: str) -> int:
        """A counter that changes with every write or delete in the tenant (0 before the first)."""
        if self._readers is not None:  # read by every search with the result cache on: the kept connections
            with self._sqlite_snapshot(self._readers) as snapshot:
                return snapshot.data_version(tenant_id)
        with self.engine.connect() as connection:
            value = connection.execute(
                sa.select(tenants.c.data_version).where(tenants.c.tenant_id == tenant_id)
            ).scalar()
        return int(value or 0)

    @_guarded
    @_announced
    def activate(
        self,
        tenant_id: str,
        document_id: str,
        *,
        expected_version: int | None,
        version: int,
        content_hash: str,
        metadata: dict[str, Any],
        content_type: str,
        chunk_count: int,
        text: str | None = None,
        fence: CommitFence | None = None,
        ticket: int | None = None,
        before_commit: Callable[[], None] | None = None,
    ) -> DocumentRecord:
        """Make ``version`` the active one, in one transaction with the tenant's data_version bump.

        ``before_commit`` runs inside the transaction once its statements are done, just before the commit (the
        ingest waits there for the vector store's sync of the version's points, which ran meanwhile); when it
        raises, nothing is committed.

        ``ticket``: the write ticket an async write took at its acceptance (`accept_write`); the commit raises
        `Superseded` (changing nothing) when a write or delete with a newer ticket already took effect. None (a
        synchronous write) takes and commits the next ticket here, so every older accepted write loses to it.

        ``fence`` (a job's lease) is held first in the same transaction: when the writer no longer owns its job
        the fence raises and nothing changes; when it does, no other worker can take the job over until this
        commit is done.

        ``text`` (the extracted text the version was chunked from) is kept in the same transaction, so the
        active version's source is always there; None keeps no text (and drops that of the previous version).

        Compare-and-set: succeeds only if the active version is still ``expected_version`` (None: no row yet),
        otherwise raises Conflict and changes nothing.
        """
        now = datetime.now(UTC)
        values = {
            "version": version,
            "content_hash": content_hash,
            "metadata": metadata,
            "content_type": content_type,
            "chunk_count": chunk_count,
            "updated_at": now,
        }
        try:
            with self.engine.begin() as connection:
                if fence is not None:
                    fence.hold(connection)
                self._order(connection, tenant_id, document_id, ticket)
                if expected_version is None:
                    connection.execute(
                        documents.insert().values(
                            tenant_id=tenant_id, document_id=document_id, created_at=now, **values
                        )
                    )
                else:
                    result = connection.execute(
                        documents.update()
                        .where(
                            documents.c.tenant_id == tenant_id,
                            documents.c.document_id == document_id,
                            documents.c.version == expected_version,
                        )
                        .values(**values)
                    )
                    if result.rowcount != 1:
                        raise Conflict(
                            f"document {document_id!r} was changed by a concurrent request; retry",
                            document_id=document_id,
                        )
                self._keep_source(connection, tenant_id, document_id, version, text)
                self._bump(connection, tenant_id)
                row = connection.execute(
                    sa.select(documents).where(
                        documents.c.tenant_id == tenant_id, documents.c.document_id == document_id
                    )
                ).one()
                if before_commit is not None:
                    before_commit()
        except IntegrityError as exc:
            raise Conflict(
                f"document {document_id!r} was created by a concurrent request; retry",
                document_id=document_id,
            ) from exc
        return _record(row)

    @_guarded
    def accept_write(self, tenant_id: str, document_id: str) -> int:
        """Hand out the next write ticket of a document (an async write's place in the order of acceptance)."""
        with self.engine.begin() as connection:
            connection.execute(
                self._upsert(write_order)
                .values(tenant_id=tenant_id, document_id=document_id, issued=1, committed=0)
                .on_conflict_do_update(
                    index_elements=[write_order.c.tenant_id, write_order.c.document_id],
                    set_={"issued": write_order.c.issued + 1},
                )
            )
            return int(
                connection.execute(
                    sa.select(write_order.c.issued).where(
                        write_order.c.tenant_id == tenant_id, write_order.c.document_id == document_id
                    )
                ).scalar_one()
            )

    @_guarded
    def confirm_unchanged(
        self, tenant_id: str, document_id: str, version: int, ticket: int | None = None
    ) -> None:
        """Record an `unchanged` write of the active ``version`` as the newest in the write order.

        An acknowledged re-send of the active content must still win over an older queued write (which would
        otherwise replace it when its job runs). Without such a pending write (the usual case) nothing is
        written. Conflict when the active version is no longer ``version`` (a concurrent commit: retry)."""
        with self.engine.begin() as connection:
            row = connection.execute(
                sa.select(write_order.c.issued, write_order.c.committed).where(
                    write_order.c.tenant_id == tenant_id, write_order.c.document_id == document_id
                )
            ).first()
            if row is None or (ticket is None and row.issued <= row.committed):
                return
            if ticket is not None and row.committed >= ticket:
                return
            self._order(connection, tenant_id, document_id, ticket)
            active = connection.execute(
                sa.select(documents.c.version).where(
                    documents.c.tenant_id == tenant_id, documents.c.document_id == document_id
                )
            ).scalar()
            if active != version:
                raise Conflict(
                    f"document {document_id!r} was changed by a concurrent request; retry",
                    document_id=document_id,
                )

    def _order(self, connection: Connection, tenant_id: str, document_id: str, ticket: int | None) -> None:
        """Inside a commit: take this write's place in the document's write order, or raise `Superseded`."""
        key = (write_order.c.tenant_id == tenant_id, write_order.c.document_id == document_id)
        if ticket is None:
            # Accepted now: the next ticket, committed at once (every ticket handed out before it loses).
            connection.execute(
                self._upsert(write_order)
                .values(tenant_id=tenant_id, document_id=document_id, issued=1, committed=1)
                .on_conflict_do_update(
                    index_elements=[write_order.c.tenant_id, write_order.c.document_id],
                    set_={"issued": write_order.c.issued + 1, "committed": write_order.c.issued + 1},
                )
            )
            return
        # One conditional update (Postgres re-checks the condition after waiting for the row lock).
        result = connection.execute(
            write_order.update().where(*key, write_order.c.committed <= ticket).values(committed=ticket)
        )
        if result.rowcount == 1:
            return
        exists = connection.execute(sa.select(write_order.c.issued).where(*key)).first()
        if exists is None:  # no row: the registry was reset or restored; nothing newer is known
            connection.execute(
                write_order.insert().values(
                    tenant_id=tenant_id, document_id=document_id, issued=ticket, committed=ticket
                )
            )
            return
        raise Superseded(
            f"document {document_id!r} was written or deleted again after this write was accepted",
            document_id=document_id,
        )

    @_guarded
    def prune_write_order(self, grace_seconds: float, *, batch: int = 1000) -> int:
        """Delete the write-order rows that can no longer matter; how many were deleted.

        A row is consulted only by a job of its document (its commit, or `Superseded`) and by the next write,
        which recreates it. Deleting one while a job of the document may still commit would let that job
        commit over a newer acknowledged write (a job finding no row commits: "nothing newer is known"). A job
        takes its ticket (``issued + 1``) with the 202 and is inserted into ``jobs`` just after, in another
        transaction; a synchronous write in between makes ``issued == committed`` while the job row is not
        there yet. So pruning takes two passes:

        1. mark: rows with nothing outstanding (``issued <= committed``) and no queued or running job of the
           document get ``prune_mark = issued`` and ``marked_at = now``;
        2. delete, on a later pass at least ``grace_seconds`` after the mark: rows still at their mark (no
           ticket, write or delete since: each increments ``issued``, whichever release makes it), still with
           nothing outstanding and no live job. A job inserted after the mark has run by then, or is live.

        Each statement is one conditional UPDATE or DELETE (Postgres re-checks the condition on a row another
        transaction changed meanwhile; SQLite runs one writer at a time), in batches of ``batch`` rows.
        """
        from service.app.store.jobstore import QUEUED, RUNNING  # the jobs table lives in this database

        live_job = sa.exists().where(
            jobs_table.c.status.in_((QUEUED, RUNNING)),
            jobs_table.c.tenant_id == write_order.c.tenant_id,
            jobs_table.c.document_id == write_order.c.document_id,
        )
        key = sa.tuple_(write_order.c.tenant_id, write_order.c.document_id)
        settled = sa.and_(write_order.c.issued <= write_order.c.committed, ~live_job)
        cutoff = datetime.now(UTC) - timedelta(seconds=grace_seconds)
        ripe = sa.and_(
            settled, write_order.c.prune_mark == write_order.c.issued, write_order.c.marked_at < cutoff
        )
        deleted = 0
        while True:
            with self.engine.begin() as connection:
                picked = (
                    sa.select(write_order.c.tenant_id, write_order.c.document_id).where(ripe).limit(batch)
                )
                count = int(
                    connection.execute(write_order.delete().where(key.in_(picked), ripe)).rowcount or 0
                )
            deleted += count
            if count < batch:
                break
        unmarked = sa.and_(
            settled,
            sa.or_(write_order.c.prune_mark.is_(None), write_order.c.prune_mark != write_order.c.issued),
        )
        while True:
            with self.engine.begin() as connection:
                picked = (
                    sa.select(write_order.c.tenant_id, write_order.c.document_id).where(unmarked).limit(batch)
                )
                count = int(
                    connection.execute(
                        write_order.update()
                        .where(key.in_(picked), unmarked)
                        .values(prune_mark=write_order.c.issued, marked_at=datetime.now(UTC))
                    ).rowcount
                    or 0
                )
            if count < batch:
                break
        return deleted

    def _upsert(self, table: sa.Table) -> Any:
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        return insert(table)

    @_guarded
    @_announced
    def delete(self, tenant_id: str, document_id: str) -> DocumentRecord | None:
        """Remove the row (and bump data_version) atomically; the removed record, or None if there was none.

        The document's write order records the delete (a tombstone) even when there is no row, so an async write
        accepted before it (queued, or not yet created the document) is `Superseded` when its job runs."""
        with self.engine.begin() as connection:
            connection.execute(
                write_order.update()
                .where(write_order.c.tenant_id == tenant_id, write_order.c.document_id == document_id)
                .values(issued=write_order.c.issued + 1, committed=write_order.c.issued + 1)
            )
            row = connection.execute(
                sa.select(documents).where(
                    documents.c.tenant_id == tenant_id, documents.c.document_id == document_id
                )
            ).first()
            if row is None:
                return None
            result = connection.execute(
                documents.delete().where(
                    documents.c.tenant_id == tenant_id,
                    documents.c.document_id == document_id,
                    documents.c.version == row.version,
                )
            )
            if result.rowcount != 1:
                raise Conflict(
                    f"document {document_id!r} was changed by a concurrent request; retry",
                    document_id=document_id,
                )
            connection.execute(
                document_sources.delete().where(
                    document_sources.c.tenant_id == tenant_id, document_sources.c.document_id == document_id
                )
            )
            connection.execute(
                chunk_counts.delete().where(
                    chunk_counts.c.tenant_id == tenant_id, chunk_counts.c.document_id == document_id
                )
            )
            self._bump(connection, tenant_id)
        return _record(row)

    @_guarded
    def source(self, tenant_id: str, document_id: str) -> DocumentSource | None:
        """The active document and its kept text; None when there is no such document or no text was kept."""
        with self.engine.connect() as connection:
            row = connection.execute(
                sa.select(documents, document_sources.c.text)
                .join(
                    document_sources,
                    sa.and_(
                        document_sources.c.tenant_id == documents.c.tenant_id,
                        document_sources.c.document_id == documents.c.document_id,
                        document_sources.c.version == documents.c.version,
                    ),
                )
                .where(documents.c.tenant_id == tenant_id, documents.c.document_id == document_id)
            ).first()
        return None if row is None else DocumentSource(_record(row), row.text)

    @_guarded
    def source_page(
        self, after: tuple[str, str] | None = None, limit: int = 100
    ) -> tuple[list[DocumentSource], list[DocumentRecord]]:
        """One page of every tenant's active documents in (tenant_id, document_id) order, after ``after``.

        Returns the documents with their kept text, and those (of the same page) that have none (written
        before texts were kept): a re-index reports these, since only their client can send the text again.
        """
        query = sa.select(documents, document_sources.c.text).outerjoin(
            document_sources,
            sa.and_(
                document_sources.c.tenant_id == documents.c.tenant_id,
                document_sources.c.document_id == documents.c.document_id,
                document_sources.c.version == documents.c.version,
            ),
        )
        if after is not None:
            query = query.where(sa.tuple_(documents.c.tenant_id, documents.c.document_id) > sa.tuple_(*after))
        query = query.order_by(documents.c.tenant_id, documents.c.document_id).limit(limit)
        with self.engine.connect() as connection:
            rows = connection.execute(query).all()
        kept = [DocumentSource(_record(row), row.text) for row in rows if row.text is not None]
        missing = [_record(row) for row in rows if row.text is None]
        return kept, missing

    @_guarded
    def count_without_text(self) -> int:
        """Active documents of every tenant with no kept text (written before texts were kept)."""
        query = (
            sa.select(sa.func.count())
            .select_from(
                documents.outerjoin(
                    document_sources,
                    sa.and_(
                        document_sources.c.tenant_id == documents.c.tenant_id,
                        document_sources.c.document_id == documents.c.document_id,
                        document_sources.c.version == documents.c.version,
                    ),
                )
            )
            .where(document_sources.c.text.is_(None))
        )
        with self.engine.connect() as connection:
            return int(connection.execute(query).scalar() or 0)

    @_guarded
    def count_documents(self) -> int:
        """Active documents of every tenant (a re-index's total)."""
        with self.engine.connect() as connection:
            return int(connection.execute(sa.select(sa.func.count()).select_from(documents)).scalar() or 0)

    @_guarded
    def document_counts(self, cached: Mapping[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
        """(data_version, active documents) of every tenant that ever wrote (rag_documents).

        A tenant whose data_version is the one in ``cached`` keeps its cached count: nothing is scanned for it.
        Only a tenant written or deleted from since (by any process: data_version is bumped in the same
        transaction as every document insert or delete) is counted again, over its range of the primary key.
        The data_version is read before the count, so a write committed in between leaves a newer data_version
        in the table than the one cached with the count: the next call counts that tenant again, and a count is
        never kept past a change."""
        with self.engine.connect() as connection:
            versions = connection.execute(sa.select(tenants.c.tenant_id, tenants.c.data_version)).all()
            found: dict[str, tuple[int, int]] = {}
            for tenant_id, data_version in versions:
                kept = cached.get(tenant_id)
                if kept is not None and kept[0] == data_version:
                    found[tenant_id] = kept
                    continue
                count = connection.execute(
                    sa.select(sa.func.count())
                    .select_from(documents)
                    .where(documents.c.tenant_id == tenant_id)
                ).scalar()
                found[str(tenant_id)] = (int(data_version), int(count or 0))
        return found

    @_guarded
    def index_pointer(self, name: str = "default") -> IndexPointer | None:
        """The persisted index pointer, or None before the first start-up that wrote it."""
        with self.engine.connect() as connection:
            row = connection.execute(sa.select(index_pointer).where(index_pointer.c.name == name)).first()
        if row is None:
            return None
        return IndexPointer(
            row.collection,
            dict(row.config),
            row.previous_collection,
            row.previous_config,
            chosen_by=row.chosen_by or "config",
            pinned_settings=dict(row.pinned_settings) if row.pinned_settings else None,
            updated_at=_aware(row.updated_at),
        )

    @_guarded
    def switch_index(
        self,
        collection: str,
        config: dict[str, Any],
        *,
        expected: str | None,
        name: str = "default",
        keep_previous: bool = True,
        chosen_by: str = "config",
        pinned_settings: dict[str, Any] | None = None,
    ) -> IndexPointer:
        """Point search at ``collection`` if the pointer is still at ``expected`` (None: no pointer yet).

        One compare-and-set statement: of two concurrent switches one gets Conflict. The collection that was
        active becomes ``previous`` (the rollback target) unless ``keep_previous`` is False. ``chosen_by`` and
        ``pinned_settings`` record who chose it (see IndexPointer); ``config`` clears an operator's pin.
        """
        if chosen_by not in ("config", "rollback", "manual"):
            raise ValueError(f"unknown index pointer chooser {chosen_by!r}")
        pinned = pinned_settings if chosen_by != "config" else None
        now = datetime.now(UTC)
        try:
            with self.engine.begin() as connection:
                if expected is None:
                    connection.execute(
                        index_pointer.insert().values(
                            name=name,
                            collection=collection,
                            config=config,
                            updated_at=now,
                            chosen_by=chosen_by,
                            pinned_settings=pinned,
                        )
                    )
                else:
                    current = connection.execute(
                        sa.select(index_pointer).where(index_pointer.c.name == name)
                    ).first()
                    result = connection.execute(
                        index_pointer.update()
                        .where(index_pointer.c.name == name, index_pointer.c.collection == expected)
                        .values(
                            collection=collection,
                            config=config,
                            previous_collection=expected if keep_previous else None,
                            previous_config=(current.config if current is not None else None)
                            if keep_previous
                            else None,
                            updated_at=now,
                            chosen_by=chosen_by,
                            pinned_settings=pinned,
                        )
                    )
                    if result.rowcount != 1:
                        raise Conflict("the index pointer was switched by someone else; reload and retry")
        except IntegrityError as exc:
            raise Conflict("the index pointer was created by someone else; reload and retry") from exc
        pointer = self.index_pointer(name)
        assert pointer is not None
        return pointer

    @_guarded
    def follow_settings(self, collection: str, name: str = "default") -> bool:
        """Record that the deployed settings now name the served index ``collection``: an operator's choice
        becomes the configuration's (``chosen_by`` ``config``, no pin). Compare-and-set on the collection, so a
        switch made meanwhile is never relabelled; False when the pointer moved or was no operator's choice."""
        with self.engine.begin() as connection:
            result = connection.execute(
                index_pointer.update()
                .where(
                    index_pointer.c.name == name,
                    index_pointer.c.collection == collection,
                    index_pointer.c.chosen_by != "config",
                )
                .values(chosen_by="config", pinned_settings=None, updated_at=datetime.now(UTC))
            )
            return result.rowcount == 1

    @_guarded
    def index_lease(self, name: str = "default") -> IndexLease | None:
        """The re-index lease row (live or expired), or None when nobody holds or held one."""
        with self.engine.connect() as connection:
            now = database_now(connection)
            row = connection.execute(sa.select(index_lease).where(index_lease.c.name == name)).first()
        if row is None:
            return None
        return IndexLease(row.holder, row.collection, dict(row.config), _aware(row.expires_at), now)

    @_guarded
    def acquire_index_lease(
        self,
        holder: str,
        collection: str,
        config: dict[str, Any],
        ttl_seconds: float,
        name: str = "default",
        *,
        take_from: str | None = None,
    ) -> IndexLease:
        """Take the lease for ``holder`` if it is free, expired or already ``holder``'s (or ``take_from``'s, a
        holder known to be dead); return who holds it.

        One conditional statement decides (an insert, or an update guarded by holder/expiry), so of two
        replicas racing for it exactly one gets it; the caller compares the returned holder with its own.
        """
        try:
            with self.engine.begin() as connection:
                now = database_now(connection)
                takeable = [index_lease.c.holder == holder, index_lease.c.expires_at <= now]
                if take_from is not None:
                    takeable.append(index_lease.c.holder == take_from)
                values = {
                    "holder": holder,
                    "collection": collection,
                    "config": config,
                    "expires_at": now + timedelta(seconds=ttl_seconds),
                }
                connection.execute(
                    index_lease.update()
                    .where(
                        index_lease.c.name == name,
                        sa.or_(*takeable),
                    )
                    .values(**values)
                )
                exists = connection.execute(
                    sa.select(index_lease.c.name).where(index_lease.c.name == name)
                ).first()
                if exists is None:
                    connection.execute(index_lease.insert().values(name=name, **values))
        except IntegrityError:
            pass  # another replica inserted it first: it holds the lease
        lease = self.index_lease(name)
        assert lease is not None
        return lease

    @_guarded
    def renew_index_lease(self, holder: str, ttl_seconds: float, name: str = "default") -> bool:
        """Extend ``holder``'s lease; False when it no longer holds it (expired and taken over)."""
        with self.engine.begin() as connection:
            result = connection.execute(
                index_lease.update()
                .where(index_lease.c.name == name, index_lease.c.holder == holder)
                .values(expires_at=database_now(connection) + timedelta(seconds=ttl_seconds))
            )
        return result.rowcount == 1

    @_guarded
    def release_index_lease(self, holder: str, name: str = "default") -> None:
        """Give the lease up (a finished or failed build); a no-op when ``holder`` no longer holds it."""
        with self.engine.begin() as connection:
            connection.execute(
                index_lease.delete().where(index_lease.c.name == name, index_lease.c.holder == holder)
            )

    @_guarded
    def record_chunk_count(
        self, collection: str, tenant_id: str, document_id: str, version: int, chunk_count: int
    ) -> None:
        """Remember ``document_id``'s chunk count in ``collection`` for ``version`` (an older one's row is
        replaced; a newer one's is kept: writes of two versions may land in either order)."""
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        statement = insert(chunk_counts).values(
            tenant_id=tenant_id,
            document_id=document_id,
            collection=collection,
            version=version,
            chunk_count=chunk_count,
        )
        statement = statement.on_conflict_do_update(
            index_elements=[chunk_counts.c.tenant_id, chunk_counts.c.document_id, chunk_counts.c.collection],
            set_={"version": statement.excluded.version, "chunk_count": statement.excluded.chunk_count},
            where=chunk_counts.c.version <= statement.excluded.version,
        )
        with self.engine.begin() as connection:
            connection.execute(statement)

    @_guarded
    def forget_chunk_counts(self, keep: Iterable[str]) -> int:
        """Drop the chunk counts of every collection but ``keep`` (those the pointer names after a switch)."""
        with self.engine.begin() as connection:
            result = connection.execute(
                chunk_counts.delete().where(chunk_counts.c.collection.not_in(list(keep)))
            )
        return result.rowcount

    @_guarded
    def rehash(self, tenant_id: str, document_id: str, version: int, content_hash: str) -> bool:
        """Store another hash of the same content for ``version`` (a no-op when it is no longer active)."""
        with self.engine.begin() as connection:
            result = connection.execute(
                documents.update()
                .where(
                    documents.c.tenant_id == tenant_id,
                    documents.c.document_id == document_id,
                    documents.c.version == version,
                )
                .values(content_hash=content_hash)
            )
        return result.rowcount == 1

    @_guarded
    def ensure_source(self, tenant_id: str, document_id: str, version: int, text: str) -> bool:
        """Keep ``text`` for the active ``version`` if no text is kept yet (documents written before migration 0003);
        True when it was kept now."""
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        with self.engine.begin() as connection:
            active = connection.execute(
                sa.select(documents.c.version).where(
                    documents.c.tenant_id == tenant_id, documents.c.document_id == document_id
                )
            ).scalar()
            if active != version:
                return False
            result = connection.execute(
                insert(document_sources)
                .values(tenant_id=tenant_id, document_id=document_id, version=version, text=text)
                .on_conflict_do_nothing(
                    index_elements=[document_sources.c.tenant_id, document_sources.c.document_id]
                )
            )
        return result.rowcount == 1

    def _keep_source(
        self, connection: Connection, tenant_id: str, document_id: str, version: int, text: str | None
    ) -> None:
        # One row per document: the active version's text replaces the previous one in the same transaction.
        connection.execute(
            document_sources.delete().where(
                document_sources.c.tenant_id == tenant_id, document_sources.c.document_id == document_id
            )
        )
        if text is not None:
            connection.execute(
                document_sources.insert().values(
                    tenant_id=tenant_id, document_id=document_id, version=version, text=text
                )
            )

    def _bump(self, connection: Connection, tenant_id: str) -> None:
        self._writing.bumped = True
        # One atomic upsert, so two first writes of a tenant never collide on the tenants row.
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        # The next version is the clock in microseconds, or one more than the last where that is not above it:
        # it still grows with every write, and a registry restored under running processes (its versions rolled
        # back) never comes back to a version they cached (rag_documents' counts, the search cache's keys) with
        # other contents, as +1 from the restored value did (REVIEW_SERVICE19 finding 2).
        stamp = time.time_ns() // 1000
        statement = insert(tenants).values(tenant_id=tenant_id, data_version=stamp)
        following = tenants.c.data_version + 1
        connection.execute(
            statement.on_conflict_do_update(
                index_elements=[tenants.c.tenant_id],
                set_={"data_version": sa.case((following > stamp, following), else_=stamp)},
            )
        )
