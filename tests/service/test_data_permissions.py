"""What the service creates under DATA_DIR is owner-only (EYES10: registry.db, every document's full text, was
created 0644 in a 0755 DATA_DIR, readable by every user of a shared VM): directories 0700, the registry 0600 and
SQLite's -wal/-shm beside it likewise; a stricter umask still wins; a directory that exists keeps its mode."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.__main__ import create_fresh_registry
from service.app.core.config import Settings
from service.app.core.files import make_private_dirs
from service.app.store.edge import DirectoryLock
from service.app.store.registry import DocumentRegistry


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def usual_umask() -> Iterator[None]:
    """The common 022 umask (under which the files were world-readable), whatever this process runs with."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def test_every_directory_made_is_owner_only_and_an_existing_one_is_left_alone(
    tmp_path: Path, usual_umask: None
) -> None:
    existing = tmp_path / "srv"
    existing.mkdir(mode=0o755)
    existing.chmod(0o755)
    make_private_dirs(existing / "rag" / "data")
    assert mode(existing) == 0o755
    assert mode(existing / "rag") == 0o700
    assert mode(existing / "rag" / "data") == 0o700
    make_private_dirs(existing / "rag" / "data")  # exists: fine, as mkdir(exist_ok=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError):
        make_private_dirs(tmp_path / "file")


def test_a_stricter_umask_wins(tmp_path: Path) -> None:
    previous = os.umask(0o277)
    try:
        make_private_dirs(tmp_path / "strict")
    finally:
        os.umask(previous)
    assert mode(tmp_path / "strict") == 0o500


def test_the_registry_and_the_store_create_data_dir_owner_only(tmp_path: Path, usual_umask: None) -> None:
    data = tmp_path / "new" / "data"
    registry = DocumentRegistry.from_settings(Settings(_env_file=None, data_dir=data))
    try:
        registry.migrate()
    finally:
        registry.close()
    assert mode(tmp_path / "new") == 0o700
    assert mode(data) == 0o700

    edge = tmp_path / "other" / "data" / "edge"
    lock = DirectoryLock(edge)
    lock.acquire()
    lock.release()
    assert [mode(p) for p in (tmp_path / "other", edge.parent, edge)] == [0o700] * 3


def test_the_registry_file_the_service_creates_is_owner_only_with_its_wal(
    tmp_path: Path, usual_umask: None
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    path = data / "registry.db"
    assert create_fresh_registry(path) is not None  # what `python -m service` does on a first start
    assert mode(path) == 0o600
    registry = DocumentRegistry.from_settings(Settings(_env_file=None, data_dir=data))
    try:
        registry.migrate()
        wal = [p for p in data.iterdir() if p.name.startswith("registry.db-")]
        assert {p.name for p in wal} >= {
            "registry.db-wal"
        }  # open while the registry is: SQLite gives it the file's mode
        assert {p.name: mode(p) for p in wal} == {p.name: 0o600 for p in wal}
    finally:
        registry.close()
    assert mode(path) == 0o600
