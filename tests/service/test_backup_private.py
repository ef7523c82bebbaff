"""`backup create` / `restore` keep the store owner-only, and the vectorless-rollback warning names the right store.

- REVIEW_SERVICE20 F4: the service keeps DATA_DIR's directories 0700 and registry.db 0600 (every document's text);
  a backup (its directory made with the umask, the registry copy made by sqlite3) and a restored registry were
  0755/0644 again. Run here under umask 022, as a real shell has it.
- REVIEW_SERVICE20 F10: with two stores migrate_store retired, the warning printed the `mv` of the newest one; a
  backup an earlier tool took before the first migration belongs with the oldest (`qdrant.migrated`).
"""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

from tests.service.service_process import REPO_ROOT
from tests.service.test_backup import _env


def _backup(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.tools.backup", *args],
        cwd=REPO_ROOT,
        env=_env(data_dir),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        umask=0o022,
    )


def _modes(root: Path) -> dict[str, int]:
    """The permission bits of ``root`` and of everything under it (but the tools' lock files: they hold no data)."""
    return {
        str(path.relative_to(root)): stat.S_IMODE(path.stat().st_mode)
        for path in [root, *sorted(root.rglob("*"))]
        if path.name != ".lock"
    }


def _assert_private(root: Path) -> None:
    modes = _modes(root)
    assert len(modes) > 1, modes
    for name, mode in modes.items():
        expected = 0o700 if (root / name).is_dir() else 0o600
        assert mode == expected, f"{root / name}: {oct(mode)} {modes}"


def _source(data_dir: Path) -> None:
    """A stopped DATA_DIR: a registry, an edge shard and a local-mode store, written by an older release (0644)."""
    (data_dir / "edge" / "shard-0").mkdir(parents=True)
    (data_dir / "edge" / "shard-0" / "points.bin").write_bytes(b"chunk text")
    (data_dir / "qdrant" / "collection").mkdir(parents=True)
    (data_dir / "qdrant" / "meta.json").write_text('{"collections": {}}')
    sqlite3.connect(data_dir / "registry.db").close()
    for path in [data_dir, *data_dir.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


def test_a_backup_and_a_restored_store_are_owner_only(tmp_path: Path) -> None:
    source, target = tmp_path / "source", tmp_path / "target"
    _source(source)
    backup = tmp_path / "backups" / "one"

    made = _backup("create", str(backup), data_dir=source)
    assert made.returncode == 0, made.stderr
    _assert_private(backup)
    assert stat.S_IMODE(backup.parent.stat().st_mode) == 0o700  # the directory create made for it

    restored = _backup("restore", str(backup), data_dir=target)
    assert restored.returncode == 0, restored.stderr
    _assert_private(target)

    # A backup taken before this (its files 0644: the manifest checks contents, not modes) restores 0600 too.
    for path in backup.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    forced = _backup("restore", "--force", str(backup), data_dir=target)
    assert forced.returncode == 0, forced.stderr
    assert stat.S_IMODE((target / "registry.db").stat().st_mode) == 0o600
    _assert_private(target / "edge")
    _assert_private(target / "qdrant")


def _registry_only_backup(tmp_path: Path) -> Path:
    """What an earlier version of the tool made of a local-mode DATA_DIR: the registry, no vectors."""
    source = tmp_path / "source"
    source.mkdir()
    sqlite3.connect(source / "registry.db").close()
    backup = tmp_path / "registry-only"
    made = _backup("create", str(backup), data_dir=source)
    assert made.returncode == 0, made.stderr
    return backup


def _stamp(seconds: float) -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(seconds))


def _warning(backup: Path, target: Path, *retired: str) -> str:
    for name in retired:
        (target / name / "collection").mkdir(parents=True)
    rolled_back = _backup("restore", "--force", str(backup), data_dir=target)
    assert rolled_back.returncode == 0, rolled_back.stderr
    assert rolled_back.stderr.startswith("backup: warning: this backup"), rolled_back.stderr
    for name in retired:  # every retired copy is listed, with its time
        assert f"{target / name} (retired " in rolled_back.stderr, rolled_back.stderr
    return rolled_back.stderr


def test_the_rollback_warning_names_the_store_retired_first_after_the_backup(tmp_path: Path) -> None:
    backup = _registry_only_backup(tmp_path)
    target = tmp_path / "target"
    later = _stamp(time.time() + 3600)
    # Migrated after the backup (`qdrant.migrated`), rolled back and migrated again later (`-<time>`).
    stderr = _warning(backup, target, "qdrant.migrated", f"qdrant.migrated-{later}")
    assert f"mv {target / 'qdrant.migrated'} {target / 'qdrant'}" in stderr
    assert f"mv {target / f'qdrant.migrated-{later}'}" not in stderr
    assert f"(retired {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.strptime(later, '%Y%m%dT%H%M%S'))})" in stderr


def test_the_rollback_warning_skips_stores_retired_before_the_backup(tmp_path: Path) -> None:
    backup = _registry_only_backup(tmp_path)
    target = tmp_path / "target"
    earlier, later = _stamp(time.time() - 86400), _stamp(time.time() + 3600)
    stderr = _warning(backup, target, f"qdrant.migrated-{earlier}", f"qdrant.migrated-{later}")
    assert f"mv {target / f'qdrant.migrated-{later}'} {target / 'qdrant'}" in stderr
    assert f"mv {target / f'qdrant.migrated-{earlier}'}" not in stderr

    os.rename(target / f"qdrant.migrated-{later}", tmp_path / "elsewhere")
    only_older = _warning(backup, target)
    assert "None was retired after the backup was created" in only_older
    assert "`mv " not in only_older
