"""`python -m service`: migrate the registry once, then serve the app with uvicorn on HOST:PORT (WORKERS processes).

With one worker (the embedded set-up) the embedding model starts loading in a thread as soon as the settings are
read, before the web stack and the app are imported: ONNX Runtime builds its session without holding the GIL,
so the model load overlaps the imports and the migration (docs/benchmarks.md, start-up).
"""

from __future__ import annotations

import contextlib
import gc
import os
import socket
import sys
from concurrent.futures import wait
from pathlib import Path
from typing import Any


def main() -> None:
    """Run the service as configured by the environment."""
    from service.app.core.usage import parse_no_arguments

    parse_no_arguments(
        "python -m service",
        "Serve the RAG API with uvicorn on HOST:PORT (WORKERS processes), after migrating the registry once.",
        "Configured by environment variables only (e.g. HOST, PORT, WORKERS, DATA_DIR, DATABASE_URL, "
        "QDRANT_URL, REDIS_URL, API_KEYS, API_KEYS_FILE, ADMIN_API_KEY, AUTH_DISABLED, ENVIRONMENT, "
        "EMBEDDING_MODEL) or a .env file; see docs/operations.md.",
    )
    # Start-up allocates hundreds of thousands of objects that all stay alive (modules, classes, pydantic and
    # FastAPI schemas); the cyclic collector's passes over them were about a quarter of the import CPU time. Off
    # until the app is built, then those objects are frozen out of every later collection.
    gc.disable()
    from pydantic import ValidationError

    from service.app.core.config import SettingsError, describe_settings_error, get_settings

    try:
        settings = get_settings()
        settings.load_api_keys()  # a broken API_KEYS_FILE is one line here, not a traceback from the lifespan
    except (SettingsError, ValidationError) as exc:
        print(f"service: error: {describe_settings_error(exc)}", file=sys.stderr)
        raise SystemExit(2) from None
    refusal = embedded_store_refusal(settings)
    if refusal:
        print(f"service: error: {refusal}", file=sys.stderr)
        raise SystemExit(2)
    # The port is bound (not listened on yet) before anything is loaded or opened, and this socket is the one
    # uvicorn serves on: uvicorn's own bind came after the whole start-up, after the fresh registry's mark was
    # cleared (registry_served_refusal), so a port taken meanwhile left a migrated registry behind.
    listener = bind_port(settings.host, settings.port)
    if isinstance(listener, str):
        print(f"service: error: {listener}", file=sys.stderr)
        raise SystemExit(2)
    if settings.embedded_vector_store == "edge":
        # Fail here with one line rather than with a traceback from inside the app's lifespan.
        from service.app.store.edge import DirectoryLock, EmbeddedStoreError, refuse_legacy_store

        try:
            refuse_legacy_store(settings)
            lock = DirectoryLock(settings.resolved_edge_path)
            lock.acquire()
            lock.release()
        except EmbeddedStoreError as exc:
            print(f"service: error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        except OSError as exc:  # DATA_DIR (or a directory above it) that this user may not enter
            print(
                f"service: error: {exc.filename or settings.data_dir} cannot be accessed ({exc.strerror}): "
                f"DATA_DIR and EDGE_PATH must be directories this user (uid {os.getuid()}) can read and write",
                file=sys.stderr,
            )
            raise SystemExit(2) from None
    if settings.embedded_vector_store == "local":
        from service.app.store.edge import EmbeddedStoreError, refuse_local_beside_edge

        try:
            refuse_local_beside_edge(settings)
        except EmbeddedStoreError as exc:
            print(f"service: error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
    # A SQLite registry this start created (or filled: a zero-byte file), marked as this process's: a refused
    # start removes what it made, so "nothing changed" holds and the next start sees the DATA_DIR as the operator
    # left it; a registry any process served is never removed (see undo_fresh_registry).
    fresh: list[tuple[Path, bool, int]] = []
    try:
        serve(settings, fresh, listener)
    except BaseException as exc:
        if fresh and is_refused_start(exc):
            undo_fresh_registry(*fresh[0])
        raise
    finally:
        listener.close()


def serve(settings: Any, fresh: list[tuple[Path, bool, int]], listener: socket.socket) -> None:
    """Migrate the registry in this process, then run uvicorn on ``listener`` (one process, or WORKERS worker
    processes). ``fresh`` receives the SQLite registry file this start creates, if it does (see
    create_fresh_registry)."""
    model = None
    if settings.workers == 1:
        # fastembed is imported here, not in the thread: only the session build runs beside the main thread's
        # imports (two threads importing overlapping module trees could meet a partially initialised module).
        import fastembed  # noqa: F401

        from service.app.core.background import start_in_thread
        from service.app.store.embedder import FastEmbedEmbedder

        model = start_in_thread(lambda: load_model(settings, FastEmbedEmbedder), name="model-load")
    try:
        from service.app.core.server import GuardedHttpToolsProtocol
        from service.app.store.registry import RegistryOpenError, open_registry

        # Migrate in the parent so that several workers never race on the schema at start-up.
        created = fresh_sqlite_registry(settings.resolved_database_url)
        if created is not None:
            token = create_fresh_registry(created[0])
            if token is not None:
                fresh.append((*created, token))
        try:
            open_registry(
                settings.resolved_database_url,
                connect_timeout=settings.database_connect_timeout_seconds,
                tcp_timeout=settings.database_tcp_timeout_seconds,
            ).close()
        except RegistryOpenError as exc:
            print(f"service: error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        if model is not None:
            from service.app.main import create_app

            # The lifespan waits for the model and opens the store: a failure there is one line too.
            app: object = StartupGuard(create_app(settings, embedder=model), settings.resolved_database_url)
            # create_app already routed uvicorn's loggers through the service's handler (JSON lines); uvicorn's
            # own dictConfig would put its plain handlers back.
            log_config: object = None
        else:
            from service.app.core.logging import configure_logging

            # Each worker process builds its own app (and model) with guarded_app; the parent's own lines
            # (workers started and stopped) go through the service's handler as the workers' do.
            configure_logging(settings)
            app = "service.__main__:guarded_app"
            log_config = None
        gc.freeze()
        gc.enable()
        options = server_options(settings, log_config, GuardedHttpToolsProtocol)
        if model is not None:
            run_server(app, listener, options)
        else:
            serve_workers(str(app), settings.workers, options, listener)
    except BaseException:
        if model is not None:
            # Let a session build in native code finish: interpreter exit under it aborts the process
            # (SIGABRT), replacing this failure's exit status.
            wait([model])
        raise


def fresh_sqlite_registry(url: str) -> tuple[Path, bool] | None:
    """(the file, whether it exists) when ``url`` is a SQLite registry file that is missing or zero bytes long,
    with no -wal beside it (nothing was ever committed to it); else None (a server database, or a registry
    with content, which a refused start never touches)."""
    path = sqlite_registry_path(url)  # None: refused later with its own message, or not a SQLite file
    if path is None:
        return None
    try:
        if Path(f"{path}-wal").exists() or (path.exists() and (not path.is_file() or path.stat().st_size)):
            return None
    except OSError:
        return None
    return path, path.exists()


def is_refused_start(exc: BaseException) -> bool:
    """Whether ``exc`` ends a start-up that never served: one of the one-line refusals (exit 2), uvicorn's
    failed start-up (3), or an error before uvicorn ran. A shutdown after serving exits 0 (or re-raises
    SIGTERM/SIGINT), so a registry that took writes is never undone."""
    if isinstance(exc, SystemExit):
        return exc.code not in (0, None)
    return not isinstance(exc, KeyboardInterrupt)


#: PRAGMA user_version of a fresh registry file: 0 once any process served it (or for a registry of any other
#: origin: nothing else in the service sets it), the creating process's token until then, and this value once
#: a refused start removed it (read by a process that opened the file before it was unlinked).
REMOVED_MARK = -1


def _sqlite_transaction(path: Path) -> Any:
    """A connection to the existing file ``path`` in a BEGIN IMMEDIATE transaction: no other process commits
    anything to it until this one commits or rolls back."""
    import sqlite3

    connection = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=30, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")
    except BaseException:
        connection.close()
        raise
    return connection


def create_fresh_registry(path: Path) -> int | None:
    """Create the missing (or zero-byte) SQLite registry ``path`` marked as this process's fresh one: a random
    token in its user_version, set in the transaction that checks the file is still empty. The token, or None
    when the file was not ours to create (another process got there first, or it cannot be written: the
    migration then reports it)."""
    import secrets
    import sqlite3

    from service.app.core.files import PRIVATE_FILE_MODE

    token = secrets.randbelow(2**31 - 2) + 1
    try:
        path.touch(mode=PRIVATE_FILE_MODE, exist_ok=True)  # every document's text: 0600 (and its -wal, -shm)
        connection = _sqlite_transaction(path)
        try:
            tables = connection.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if tables or connection.execute("PRAGMA user_version").fetchone()[0]:
                connection.execute("ROLLBACK")
                return None
            connection.execute(f"PRAGMA user_version = {token}")
            connection.execute("COMMIT")
        finally:
            connection.close()
    except (OSError, sqlite3.Error):
        return None
    return token


def registry_served_refusal(url: str) -> str | None:
    """Record, before this process serves, that the SQLite registry at ``url`` has served (its fresh mark is
    cleared, in one transaction with the check): no refused start removes it after this. Why this process must
    not serve (one line) when a refused start of another process removed the file it opened; else None."""
    import sqlite3

    found = sqlite_registry_path(url)
    if found is None:
        return None
    removed = (
        f"the registry {found} was removed by a refused start of another process while this one started; "
        "start it again"
    )
    try:
        # A read first, without the write lock: a registry that served carries 0 for good (only an empty file
        # is ever marked, and only a marked one is removed), so the usual start takes no lock and waits for no
        # writer (up to 30 s behind another process's transaction).
        reader = sqlite3.connect(f"file:{found}?mode=rw", uri=True, timeout=30)
        try:
            if reader.execute("PRAGMA user_version").fetchone()[0] == 0:
                return None
        finally:
            reader.close()
        connection = _sqlite_transaction(found)
    except sqlite3.Error:
        # Gone from its path since this process opened it: no later start would see what it wrote.
        return None if found.exists() else removed
    try:
        mark = connection.execute("PRAGMA user_version").fetchone()[0]
        if mark == REMOVED_MARK:
            connection.execute("ROLLBACK")
            return removed
        if mark:
            connection.execute("PRAGMA user_version = 0")
        connection.execute("COMMIT")
    except sqlite3.Error:
        return None
    finally:
        connection.close()
    return None


def sqlite_registry_path(url: str) -> Path | None:
    """The file of a SQLite registry URL (None: a server database, memory, or a URL refused elsewhere)."""
    from sqlalchemy.engine import make_url

    from service.app.store.registry import normalize_database_url

    try:
        parsed = make_url(normalize_database_url(url))
    except Exception:
        return None
    database = parsed.database
    if (
        parsed.get_backend_name() != "sqlite"
        or not database
        or database == ":memory:"
        or "mode=memory" in url
    ):
        return None
    return Path(database)


def undo_fresh_registry(path: Path, existed: bool, token: int) -> None:
    """Remove the registry this refused start created (or empty again the zero-byte file it filled), with its
    -wal/-shm, only while it still carries this process's mark: no process served it (each clears the mark
    before it serves, see registry_served_refusal) and, as a second guard, it records no document and no job.
    The check and the removed mark are one transaction, so no process can commit in between; one that opened
    the file before it was unlinked finds the removed mark and refuses to serve."""
    import sqlite3

    try:
        connection = _sqlite_transaction(path)
        try:
            tables = {
                row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            used = any(
                table in tables and connection.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone()  # noqa: S608
                for table in ("documents", "jobs")
            )
            if used or connection.execute("PRAGMA user_version").fetchone()[0] != token:
                connection.execute("ROLLBACK")
                return  # another process served it (or wrote to it): keep it
            connection.execute(f"PRAGMA user_version = {REMOVED_MARK}")
            connection.execute("COMMIT")
        finally:
            connection.close()
        if existed:
            with path.open("r+b") as file:
                file.truncate(0)
        else:
            path.unlink(missing_ok=True)
        for leftover in (Path(f"{path}-wal"), Path(f"{path}-shm")):
            leftover.unlink(missing_ok=True)
    except (OSError, sqlite3.Error):
        return  # not ours to explain: the refusal's own line has been printed


def server_options(settings: Any, log_config: object, protocol: type) -> dict[str, Any]:
    """uvicorn's options for this service: httptools (the guarded protocol) and uvloop, both named rather than
    left to uvicorn's ``auto`` (which falls back to h11 / asyncio's loop without a word when a package is
    missing: ~0.1 / ~0.03 ms more of the loop's CPU per request, docs/benchmarks.md "Where one small-collection
    search goes"); both are pinned in service/requirements.txt, which the image installs."""
    return {
        "log_config": log_config,
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level.lower(),
        "http": protocol,
        "loop": "uvloop",
        # Its lines are dropped anyway (service.app.core.logging: the request middleware logs each request
        # with its id and route); off, uvicorn does not build them on every response either.
        "access_log": False,
        "timeout_keep_alive": settings.http_keep_alive_seconds,
        "limit_concurrency": settings.http_limit_concurrency,
        # Unset, uvicorn waits for in-flight requests without end: a long bulk outlived the pod's grace period
        # (SIGKILL mid-request) and Ctrl-C seemed to hang (EYES7 M5). Cut requests are not acknowledged.
        "timeout_graceful_shutdown": settings.shutdown_grace_seconds,
    }


def guarded_app() -> Any:
    """One uvicorn worker's app (WORKERS > 1), built as the one-process path builds it: the model loads beside
    the app's imports and a failure to load it names the setting; known start-up failures are one line."""
    from service.app.core.background import start_in_thread
    from service.app.core.config import get_settings
    from service.app.main import create_app
    from service.app.store.embedder import FastEmbedEmbedder

    settings = get_settings()
    model = start_in_thread(lambda: load_model(settings, FastEmbedEmbedder), name="model-load")
    return StartupGuard(create_app(settings, embedder=model), settings.resolved_database_url)


def run_server(app: Any, listener: socket.socket, options: dict[str, Any]) -> None:
    """``uvicorn.run(app, **options)`` on the socket main() bound: uvicorn listens on it once the lifespan's
    start-up completed (as it binds then otherwise), with uvicorn.run's exit status for a failed start-up (3)."""
    import logging

    import uvicorn
    from uvicorn.config import STARTUP_FAILURE

    server = uvicorn.Server(uvicorn.Config(app, **options))
    host, port = listener.getsockname()[:2]
    # uvicorn logs this line itself only for a socket it binds
    logging.getLogger("uvicorn.error").info(
        "Uvicorn running on http://%s:%d (Press CTRL+C to quit)", host, port
    )
    with contextlib.suppress(KeyboardInterrupt):  # as uvicorn.run: Ctrl-C is a clean stop
        server.run(sockets=[listener])
    if not server.started:
        raise SystemExit(STARTUP_FAILURE)


def serve_workers(app: str, workers: int, options: dict[str, Any], listener: socket.socket) -> None:
    """``uvicorn.run(app, factory=True, workers=N)``, with the exit status uvicorn drops: when a worker fails its
    start-up, uvicorn's supervisor stops the others and returns as after a clean shutdown (exit 0, so a process
    manager would not see the failure). Here that is exit 3, uvicorn's own status for a failed start-up of one
    process."""
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    config = uvicorn.Config(app, factory=True, workers=workers, **options)
    supervisor = Multiprocess(config, sockets=[listener])
    supervisor.run()
    if any(worker.process.exitcode == STARTUP_FAILURE for worker in supervisor.processes):
        raise SystemExit(STARTUP_FAILURE)


def embedded_store_refusal(settings: Any) -> str | None:
    """Why these settings would open the embedded store in more than one process (one line), or None.

    The embedded store (qdrant-edge, or qdrant-client local mode) is owned by one process: its directory lock
    refuses a second one. uvicorn workers are separate processes that would each open it, and all but the
    first would fail their start-up with a traceback each; this names the setting before anything starts.
    """
    store = settings.embedded_vector_store
    if store is None:
        return None
    if settings.redis_url and settings.internal_token is None:
        return (
            "REDIS_URL needs QDRANT_URL: jobs run in worker processes and the embedded vector "
            f"store (VECTOR_STORE={store}) opens in one process only; unset REDIS_URL to run jobs "
            "in the API process, or set INTERNAL_TOKEN to lend this process's store to workers (make serve-prod)"
        )
    if settings.workers > 1:
        path = settings.resolved_edge_path if store == "edge" else settings.resolved_qdrant_path
        return (
            f"WORKERS={settings.workers} needs a Qdrant server (QDRANT_URL): the embedded vector store "
            f"(VECTOR_STORE={store}, {path}) is owned by one process; set WORKERS=1 and scale with replicas "
            "over a Qdrant server, or set QDRANT_URL"
        )
    return None


def bind_port(host: str, port: int) -> socket.socket | str:
    """The socket bound to HOST:PORT as uvicorn binds one (SO_REUSEADDR, inheritable by WORKERS processes; not
    listening yet, so a connection is refused until the service serves), or why it cannot be (one line)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        return (
            f"cannot listen on {host}:{port} ({exc.strerror or exc}): another process is using the port, "
            "or HOST is not an address of this machine; set PORT (or HOST) to another value, or stop the "
            "other process"
        )
    listener.set_inheritable(True)
    return listener


def load_model(settings: Any, loader: Any) -> Any:
    """The embedder the settings describe; any failure is an EmbeddingModelError naming the setting."""
    from loguru import logger as fastembed_logger  # fastembed's logger

    from service.app.core.config import DEFAULT_EMBEDDING_MODEL
    from service.app.store.embedder import EmbeddingModelError

    # fastembed logs each source it failed to load a model from on stderr; the error below says it in one line.
    fastembed_logger.disable("fastembed")
    try:
        return loader.from_settings(settings)
    except EmbeddingModelError as exc:
        path = settings.embedding_model_path
        if path is None or settings.embedding_model == DEFAULT_EMBEDDING_MODEL:
            raise
        # A local dir given for another model: the two settings must name the same model.
        raise EmbeddingModelError(
            f"EMBEDDING_MODEL {settings.embedding_model!r} with EMBEDDING_MODEL_PATH {path}: {exc}; "
            "EMBEDDING_MODEL_PATH must hold that model's files (unset it to load EMBEDDING_MODEL from "
            "fastembed's cache, fetched by `python -m service.tools.fetch_model`)"
        ) from exc
    except Exception as exc:  # fastembed and ONNX Runtime raise plain ValueError/RuntimeError
        path = settings.resolved_model_path
        where = (
            f"EMBEDDING_MODEL_PATH {path}"
            if path is not None
            else f"EMBEDDING_MODEL {settings.embedding_model!r} (in {settings.resolved_embedding_cache_dir})"
        )
        reason = " ".join(str(exc).split()) or type(exc).__name__
        fix = (
            "rebuild it with `make model`, or fetch it with `python -m service.tools.fetch_model`"
            if path is not None
            else "fetch it with `python -m service.tools.fetch_model --model ...` (or, for the default model, "
            "`make model`)"
        )
        raise EmbeddingModelError(f"{where} cannot be loaded ({reason}); {fix}") from exc
    finally:
        fastembed_logger.enable("fastembed")


class StartupGuard:
    """The app, with its lifespan's known start-up failures reported as one line on stderr.

    Starlette hands uvicorn a failing lifespan's formatted traceback, which uvicorn logs. For the failures that
    are the operator's to fix (a model that cannot be loaded, a store that cannot be opened: their messages
    name the setting or path and the fix) this prints ``service: error: <message>`` instead and reports the
    start-up as failed without the traceback, so uvicorn exits non-zero. Anything else (a bug) keeps its
    traceback.
    """

    def __init__(self, app: Any, registry_url: str | None = None) -> None:
        self.app = app
        self.registry_url = registry_url

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        held: list[Any] = []

        async def hold_failure(message: Any) -> None:
            if message["type"] == "lifespan.startup.failed":
                held.append(message)  # sent below, once the exception says whether it is a known one
                return
            if message["type"] == "lifespan.startup.complete" and self.registry_url is not None:
                # The last step before serving (the port is bound already, main() did): from here on no refused
                # start may remove this registry. SQLite may wait for another process's lock: off the loop.
                import anyio.to_thread

                refusal = await anyio.to_thread.run_sync(registry_served_refusal, self.registry_url)
                if refusal is not None:
                    print(f"service: error: {refusal}", file=sys.stderr, flush=True)
                    await send({"type": "lifespan.startup.failed", "message": ""})
                    return
            await send(message)

        try:
            await self.app(scope, receive, hold_failure)
        except Exception as exc:
            if held and is_operator_error(exc):
                print(f"service: error: {exc}", file=sys.stderr, flush=True)
                await send({"type": "lifespan.startup.failed", "message": ""})
                return
            if held:
                await send(held[0])
            raise


def is_operator_error(exc: BaseException) -> bool:
    """Whether a start-up failure is bad configuration or data the message explains (not a bug)."""
    from service.app.core.errors import RagError
    from service.app.store.embedder import EmbeddingModelError
    from service.app.store.registry import RegistryOpenError

    known: tuple[type[BaseException], ...] = (EmbeddingModelError, RegistryOpenError, RagError)
    edge = sys.modules.get("service.app.store.edge")
    if edge is not None:
        known += (edge.EmbeddedStoreError,)
    return isinstance(exc, known)


if __name__ == "__main__":
    main()
