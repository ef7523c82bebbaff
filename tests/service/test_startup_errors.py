"""`python -m service` on broken data or settings: one line on stderr naming the file and the fix, a non-zero exit,
no traceback, and every file the user stored left byte for byte as it was.

Each case breaks a copy of one populated DATA_DIR (a migrated SQLite registry with an active document, an edge
shard holding its points) the way disks, operators and crashes do, and runs the real entry point on it.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from service.app.core.config import Settings
from service.app.store.edge import EdgeVectorStore
from service.app.store.registry import DocumentRegistry, RegistryOpenError, open_registry
from service.app.store.vectors import ChunkPoint
from tests.support.servers import free_port

REPO = Path(__file__).resolve().parents[2]
DIM = 384
# Root reads anything through CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH. The unreadable cases drop both from the
# child's capability bounding set (prctl PR_CAPBSET_DROP), so the kernel checks the file modes as for any owner.
# Not a switch to another user: the interpreter itself may live where only root can reach it (a venv on
# /root/.pyenv, as on the CI machines), which an unprivileged uid could not even execute.
PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2


@pytest.fixture(scope="module")
def populated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DATA_DIR as `make serve` leaves it: one active document in the registry, its chunks in the shard."""
    data = tmp_path_factory.mktemp("populated")
    settings = Settings(_env_file=None, data_dir=data)
    registry = DocumentRegistry.from_settings(settings)
    registry.migrate()
    registry.activate(
        "default",
        "handbook",
        expected_version=None,
        version=1,
        content_hash="h",
        metadata={},
        content_type="text/plain",
        chunk_count=2,
    )
    registry.close()
    store = EdgeVectorStore.from_settings(settings, model_name=settings.embedding_model, dimension=DIM)
    store.ensure_collection()
    store.upsert(
        [
            ChunkPoint(
                tenant_id="default",
                document_id="handbook",
                version=1,
                chunk_index=i,
                text=f"chunk {i} of the handbook",
                vector=[float(i + 1)] + [0.5] * (DIM - 1),
                metadata={},
                content_hash="h",
                model=settings.embedding_model,
            )
            for i in range(2)
        ]
    )
    store.close()
    return data


def shard_dir(data: Path) -> Path:
    (shard,) = [p for p in (data / "edge").iterdir() if p.is_dir()]
    return shard


def snapshot(data: Path) -> dict[str, str]:
    """Every regular file under ``data`` (as root reads it) with its SHA-256; directories by name."""
    files: dict[str, str] = {}
    for path in sorted(data.rglob("*")):
        relative = str(path.relative_to(data))
        if path.name in (".lock", "registry.db-shm") or relative.startswith("fastembed"):
            continue  # the lock holds the owner's pid by design; fastembed/ is the model cache, not user data
        if path.name == "registry.db-wal" and not path.stat().st_size:
            continue  # SQLite's empty write-ahead log of a registry that was opened and not changed
        if path.is_dir():
            files[relative] = "dir"
        elif path.is_file():
            files[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


def corrupt_registry(data: Path) -> str:
    registry = data / "registry.db"
    registry.write_bytes(os.urandom(registry.stat().st_size))
    return str(registry)


def registry_is_a_directory(data: Path) -> str:
    registry = data / "registry.db"
    for path in data.glob("registry.db*"):
        path.unlink()
    registry.mkdir()
    return str(registry)


def registry_unreadable(data: Path) -> str:
    registry = data / "registry.db"
    registry.chmod(0)
    return str(registry)


def registry_from_a_newer_version(data: Path) -> str:
    connection = sqlite3.connect(data / "registry.db")
    with connection:
        connection.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    connection.close()  # the last connection checkpoints the WAL into the file
    return "9999_from_the_future"


def segment_corrupted(data: Path) -> str:
    for state in (shard_dir(data) / "segments").glob("*/segment.json"):
        state.write_text("{garbage")
    return str(shard_dir(data))


def segments_unreadable(data: Path) -> str:
    (shard_dir(data) / "segments").chmod(0)
    return str(shard_dir(data))


CASES: dict[str, tuple[Callable[[Path], str], str]] = {
    # case: (break the copy -> text the error must name, words the error must say)
    "registry corrupted": (corrupt_registry, "not a readable SQLite database"),
    "registry is a directory": (registry_is_a_directory, "is a directory"),
    "registry unreadable": (registry_unreadable, "cannot be opened for reading and writing"),
    "registry from a newer version": (registry_from_a_newer_version, "newer version"),
    "shard segment corrupted": (segment_corrupted, "cannot be loaded"),
    "shard unreadable": (segments_unreadable, "Permission denied"),
}
UNPRIVILEGED = {
    "registry unreadable",
    "shard unreadable",
}  # root reads anything: run these without the DAC caps


def run_service(data: Path, *, unprivileged: bool = False, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {
        **os.environ,
        "DATA_DIR": str(data),
        "AUTH_DISABLED": "true",
        "ENVIRONMENT": "test",
        "PORT": str(free_port()),
        "HOME": str(data.parent),  # nothing of the developer's home leaks in
        **env,
    }
    for key in ("DATABASE_URL", "QDRANT_URL", "REDIS_URL", "EDGE_PATH", "VECTOR_STORE"):
        if key not in env:  # the developer's own, not the case's
            full_env.pop(key, None)

    def drop_dac_capabilities() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        for capability in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
            if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")

    return subprocess.run(
        [sys.executable, "-m", "service"],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=drop_dac_capabilities if unprivileged else None,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("service: error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("case", list(CASES))
def test_broken_data_is_one_line_naming_it_and_nothing_is_changed(
    case: str, populated: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(populated, data)
    breaks, says = CASES[case]
    names = breaks(data)
    before = snapshot(data)
    modes_before = {p: stat.S_IMODE(p.stat().st_mode) for p in data.rglob("*") if "fastembed" not in p.parts}

    result = run_service(data, unprivileged=case in UNPRIVILEGED and os.geteuid() == 0)

    assert_one_line_error(result, names, says)
    assert snapshot(data) == before  # nothing stored was removed, rewritten or added
    assert {
        p: stat.S_IMODE(p.stat().st_mode) for p in data.rglob("*") if "fastembed" not in p.parts
    } == modes_before


def test_a_model_directory_without_its_tokenizer_is_one_line_naming_the_setting(
    populated: Path, tmp_path: Path
) -> None:
    model = tmp_path / "model"
    shutil.copytree(REPO / ".models" / "all-MiniLM-L6-v2", model)
    (model / "tokenizer.json").unlink()
    data = tmp_path / "data"
    shutil.copytree(populated, data)
    before = snapshot(data)

    result = run_service(data, EMBEDDING_MODEL_PATH=str(model))

    assert_one_line_error(result, f"EMBEDDING_MODEL_PATH {model}", "tokenizer.json", "make model")
    assert snapshot(data) == before


def test_a_port_in_use_is_one_line_before_anything_is_opened(populated: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(populated, data)
    before = snapshot(data)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        result = run_service(data, PORT=str(port))

    assert_one_line_error(result, f"127.0.0.1:{port}", "PORT")
    assert snapshot(data) == before
    assert "Application startup" not in result.stdout  # refused before the app, model and store


def test_more_than_one_worker_on_the_embedded_store_is_one_line_before_anything_starts(
    populated: Path, tmp_path: Path
) -> None:
    # uvicorn's workers are processes that would each open the store: all but one would die in their lifespan
    # with a traceback (the directory lock), and the parent would stop. Refused before any of that.
    data = tmp_path / "data"
    shutil.copytree(populated, data)
    before = snapshot(data)

    result = run_service(data, WORKERS="2")

    assert result.returncode == 2
    assert_one_line_error(result, "WORKERS=2", "QDRANT_URL", str(data / "edge"), "WORKERS=1")
    assert "Application startup" not in result.stdout + result.stderr  # no worker was started
    assert snapshot(data) == before


@pytest.mark.parametrize(
    ("env", "needles"),
    [
        ({"RATE_LIMIT_INGEST": "garbage"}, ["RATE_LIMIT_INGEST is not in limits syntax", "120/minute"]),
        ({"RATE_LIMIT_SEARCH": "10/fortnight"}, ["RATE_LIMIT_SEARCH is not in limits syntax"]),
        (
            {"RATE_LIMIT_SEARCH": "0/minute", "RATE_LIMIT_ENABLED": "false"},
            ["RATE_LIMIT_SEARCH must allow at least 1"],
        ),
        ({"LLM_TOKEN_BUDGET": "lots"}, ["LLM_TOKEN_BUDGET is not in limits syntax"]),
        ({"DATABASE_URL": "mysql://u:p@db/rag"}, ["DATABASE_URL must be a PostgreSQL", "'mysql'"]),
        ({"QDRANT_URL": "qdrant:6333"}, ["QDRANT_URL must be an http(s):// URL"]),
    ],
    ids=["ingest-garbage", "search-unit", "zero", "llm-budget", "mysql", "qdrant-scheme"],
)
def test_a_malformed_setting_is_one_line_naming_it(
    tmp_path: Path, env: dict[str, str], needles: list[str]
) -> None:
    """Were: a traceback from the rate limiter inside the app's start-up (exit 3), `No module named 'MySQLdb'`."""
    result = run_service(tmp_path / "data", **env)
    assert_one_line_error(result, *needles)
    assert "p@db" not in result.stderr
    assert "Application startup" not in result.stdout + result.stderr


def test_multi_limit_rate_settings_are_accepted() -> None:
    settings = Settings(
        _env_file=None, rate_limit_search="10/second;1000/hour", rate_limit_ingest="5 per 2 minutes"
    )
    assert settings.rate_limit_search == "10/second;1000/hour"


def test_an_unreachable_qdrant_server_is_one_line_naming_qdrant_url(tmp_path: Path) -> None:
    """Was: an ERROR log line carrying a traceback, then `service: error: vector store unavailable; retry later`."""
    port = free_port()  # nothing listens there
    result = run_service(
        tmp_path / "data", QDRANT_URL=f"http://admin:s3cret@127.0.0.1:{port}", QDRANT_TIMEOUT_SECONDS="2"
    )
    line = assert_one_line_error(
        result, f"http://admin:***@127.0.0.1:{port}", "(QDRANT_URL) cannot be reached"
    )
    assert "s3cret" not in result.stdout + result.stderr
    assert "retry later" not in line


def test_a_library_warning_from_a_thread_is_a_log_line_not_text_on_stderr() -> None:
    # qdrant-client checks the server's version from a thread of its own and warns when it cannot: with an
    # unreachable QDRANT_URL that raw warning raced the one-line error onto stderr (the test above flaked).
    script = (
        "import threading, warnings\n"
        "from service.app.core.config import Settings\n"
        "from service.app.core.logging import configure_logging\n"
        "configure_logging(Settings(_env_file=None))\n"
        "thread = threading.Thread(target=lambda: warnings.warn('Failed to obtain server version', UserWarning))\n"
        "thread.start()\n"
        "thread.join()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stderr == ""
    (line,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert line["logger"] == "py.warnings"
    assert line["level"] == "WARNING"
    assert "Failed to obtain server version" in line["message"]


def test_a_failed_start_up_of_several_workers_is_one_line_each_and_a_failed_exit(tmp_path: Path) -> None:
    # WORKERS > 1 (with a Qdrant server): each uvicorn worker builds its own app. A start-up failure there was a
    # traceback per worker, and uvicorn's supervisor then exited 0 as after a clean shutdown.
    model = tmp_path / "model"
    shutil.copytree(REPO / ".models" / "all-MiniLM-L6-v2", model)
    (model / "tokenizer.json").unlink()
    data = tmp_path / "data"
    data.mkdir()

    result = run_service(
        data,
        WORKERS="2",
        QDRANT_URL=f"http://127.0.0.1:{free_port()}",  # never reached: the model fails first
        EMBEDDING_MODEL_PATH=str(model),
    )

    output = result.stdout + result.stderr
    assert result.returncode == 3, output  # uvicorn's status for a failed start-up, as with one worker
    assert "Traceback" not in output, output
    lines = result.stderr.strip().splitlines()
    # The same line from each worker that got as far as its model (uvicorn may also have replaced a worker that
    # was slow to answer its health check on a loaded machine, and the new one fails the same way).
    assert len(set(lines)) == 1, result.stderr
    assert lines[0].startswith("service: error: "), result.stderr
    for needle in (f"EMBEDDING_MODEL_PATH {model}", "tokenizer.json", "make model"):
        assert needle in lines[0], lines[0]
    assert "failed to start" in result.stdout  # the supervisor's own line, as JSON on stdout


def test_an_unreachable_database_url_is_one_line_without_its_password() -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(RegistryOpenError) as refused:
        open_registry(f"postgresql://rag:s3cret-pw@127.0.0.1:{port}/rag")
    message = str(refused.value)
    assert "\n" not in message
    assert f"127.0.0.1:{port}/rag" in message
    assert "DATABASE_URL" in message
    assert "s3cret-pw" not in message


def delete_registry(data: Path) -> None:
    for path in data.glob("registry.db*"):
        path.unlink()


def truncate_registry(data: Path) -> None:
    delete_registry(data)
    (data / "registry.db").write_bytes(b"")


def stored_chunks(data: Path) -> list[tuple[str, str, int, int, str]]:
    """Every chunk the embedded store holds (its own maintenance may rewrite files: the chunks must stay)."""
    settings = Settings(_env_file=None, data_dir=data)
    store = EdgeVectorStore.from_settings(settings, model_name=settings.embedding_model, dimension=DIM)
    store.ensure_collection()
    try:
        return sorted(
            (v.tenant_id, v.document_id, v.version, v.points, hit.text)
            for v in store.versions()
            for hit in store.search(v.tenant_id, [1.0] + [0.5] * (DIM - 1), limit=10)
        )
    finally:
        store.close()


@pytest.mark.parametrize("lose", [delete_registry, truncate_registry], ids=["deleted", "zero bytes"])
def test_a_lost_registry_beside_a_filled_store_refuses_to_start_and_keeps_every_chunk(
    lose: Callable[[Path], None], populated: Path, tmp_path: Path
) -> None:
    # With an empty registry every stored chunk is an orphan: starting would let the collector delete them all
    # (at once here: no grace).
    data = tmp_path / "data"
    shutil.copytree(populated, data)
    lose(data)
    before = stored_chunks(data)
    assert len(before) == 2
    files = snapshot(data)

    for _attempt in range(2):  # the registry the refused start created must not make the next start succeed
        result = run_service(data, GC_GRACE_SECONDS="0")
        line = assert_one_line_error(result, str(data / "registry.db"), "2 chunks of 1 documents", "backup")
        assert "GC_GRACE_SECONDS" in line
        # Nor stay behind: the refused start removed the registry it created (or emptied the zero-byte one
        # it filled), so "nothing changed" holds for the registry as for the chunks (stop 17 left a migrated
        # empty registry.db, and -wal/-shm files, there).
        assert sorted(p.name for p in data.glob("registry.db*")) == sorted(
            p for p in files if p.startswith("registry.db")
        )
        assert {k: v for k, v in snapshot(data).items() if k.startswith("registry.db")} == {
            k: v for k, v in files.items() if k.startswith("registry.db")
        }
        assert stored_chunks(data) == before


def test_a_refused_first_start_leaves_no_registry_behind(tmp_path: Path) -> None:
    # A first start with wrong settings (here a model directory missing its tokenizer) is refused after the
    # registry was created and migrated: the empty DATA_DIR must stay as it was (stop 17 left registry.db).
    model = tmp_path / "model"
    shutil.copytree(REPO / ".models" / "all-MiniLM-L6-v2", model)
    (model / "tokenizer.json").unlink()
    data = tmp_path / "data"
    data.mkdir()

    result = run_service(data, EMBEDDING_MODEL_PATH=str(model))

    assert_one_line_error(result, f"EMBEDDING_MODEL_PATH {model}", "tokenizer.json")
    assert not list(data.glob("registry.db*")), sorted(p.name for p in data.iterdir())


def test_a_registry_with_documents_but_no_index_pointer_is_an_upgrade_not_a_lost_registry(
    populated: Path, tmp_path: Path
) -> None:
    # Registries from before the index pointer know their documents: those start as before.
    from service.app.main import refuse_unregistered_store

    data = tmp_path / "data"
    shutil.copytree(populated, data)
    settings = Settings(_env_file=None, data_dir=data)
    registry = open_registry(settings.resolved_database_url)
    store = EdgeVectorStore.from_settings(settings, model_name=settings.embedding_model, dimension=DIM)
    store.ensure_collection()
    try:
        assert registry.index_pointer() is None
        refuse_unregistered_store(registry, store)  # documents known: no refusal
        with registry.engine.begin() as connection:
            connection.exec_driver_sql("DELETE FROM documents")
        with pytest.raises(RegistryOpenError, match="holds 2 chunks of 1 documents"):
            refuse_unregistered_store(registry, store)
        store.delete_version("default", "handbook", 1)
        refuse_unregistered_store(registry, store)  # a real first start: empty registry, empty store
    finally:
        store.close()
        registry.close()


def test_another_embedding_model_without_a_local_dir_is_one_line_naming_embedding_model(
    populated: Path, tmp_path: Path
) -> None:
    # EYES7 M2: with the repo's .models present, a changed EMBEDDING_MODEL was loaded from the MiniLM dir and
    # failed naming that file. The `make model` dir holds the default model only; another comes from the cache.
    data = tmp_path / "data"
    shutil.copytree(populated, data)

    result = run_service(data, EMBEDDING_MODEL="BAAI/bge-small-en-v1.5", HF_HUB_OFFLINE="1")

    line = assert_one_line_error(result, "EMBEDDING_MODEL 'BAAI/bge-small-en-v1.5'", "fetch_model")
    assert "all-MiniLM" not in line


def test_a_local_dir_of_another_model_is_one_line_naming_both_settings(
    populated: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(populated, data)
    minilm = REPO / ".models" / "all-MiniLM-L6-v2"

    result = run_service(
        data, EMBEDDING_MODEL="BAAI/bge-small-en-v1.5", EMBEDDING_MODEL_PATH=str(minilm), HF_HUB_OFFLINE="1"
    )

    assert_one_line_error(
        result, "EMBEDDING_MODEL 'BAAI/bge-small-en-v1.5' with EMBEDDING_MODEL_PATH", "unset it"
    )


def test_an_empty_embedding_model_path_means_unset() -> None:
    settings = Settings(_env_file=None, embedding_model="BAAI/bge-small-en-v1.5", embedding_model_path="")
    assert settings.embedding_model_path is None
    assert settings.resolved_model_path is None
