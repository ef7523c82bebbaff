"""`python -m service`: migrate the registry once, then serve the app with uvicorn on HOST:PORT (WORKERS processes).

With one worker (the embedded set-up) the embedding model starts loading in a thread as soon as the settings are
read, before the web stack and the app are imported: ONNX Runtime builds its session without holding the GIL,
so the model load overlaps the imports and the migration (docs/benchmarks.md, start-up).
"""

from __future__ import annotations

import gc
import sys
from concurrent.futures import wait


def main() -> None:
    """Run the service as configured by the environment."""
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
    if settings.redis_url and settings.embedded_vector_store and settings.internal_token is None:
        raise SystemExit(
            "service: error: REDIS_URL needs QDRANT_URL: jobs run in worker processes and the embedded vector "
            f"store (VECTOR_STORE={settings.vector_store}) opens in one process only; unset REDIS_URL to run jobs "
            "in the API process, or set INTERNAL_TOKEN to lend this process's store to workers (make serve-prod)"
        )
    if settings.workers > 1 and settings.embedded_vector_store:
        raise SystemExit(
            "service: error: WORKERS > 1 needs a Qdrant server (QDRANT_URL): "
            f"the embedded vector store (VECTOR_STORE={settings.vector_store}) serves one process"
        )
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
    model = None
    if settings.workers == 1:
        # fastembed is imported here, not in the thread: only the session build runs beside the main thread's
        # imports (two threads importing overlapping module trees could meet a partially initialised module).
        import fastembed  # noqa: F401

        from service.app.core.background import start_in_thread
        from service.app.store.embedder import FastEmbedEmbedder

        model = start_in_thread(lambda: FastEmbedEmbedder.from_settings(settings), name="model-load")
    try:
        import uvicorn

        from service.app.core.server import GuardedHttpToolsProtocol
        from service.app.store.registry import DocumentRegistry

        # Migrate in the parent so that several workers never race on the schema at start-up.
        registry = DocumentRegistry.from_settings(settings)
        try:
            registry.migrate()
        finally:
            registry.close()
        if model is not None:
            from service.app.main import create_app

            app: object = create_app(settings, embedder=model)  # the lifespan waits for the model
            # create_app already routed uvicorn's loggers through the service's handler (JSON lines); uvicorn's
            # own dictConfig would put its plain handlers back.
            log_config: object = None
        else:
            app = "service.app.main:create_app"  # each worker process builds its own app (and model)
            log_config = uvicorn.config.LOGGING_CONFIG
        gc.freeze()
        gc.enable()
        uvicorn.run(
            app,  # type: ignore[arg-type]
            factory=model is None,
            log_config=log_config,  # type: ignore[arg-type]
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            log_level=settings.log_level.lower(),
            http=GuardedHttpToolsProtocol,
            timeout_keep_alive=settings.http_keep_alive_seconds,
            limit_concurrency=settings.http_limit_concurrency,
        )
    except BaseException:
        if model is not None:
            # Let a session build in native code finish: interpreter exit under it aborts the process
            # (SIGABRT), replacing this failure's exit status.
            wait([model])
        raise


if __name__ == "__main__":
    main()
