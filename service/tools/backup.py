"""Back up and restore the embedded store (`make serve`: the SQLite registry and the qdrant-edge store).

    python -m service.tools.backup create /backups/rag-2026-11-27     # the service stopped
    python -m service.tools.backup verify /backups/rag-2026-11-27
    python -m service.tools.backup restore /backups/rag-2026-11-27    # into an empty DATA_DIR; --force: beside it

DATA_DIR, DATABASE_URL, EDGE_PATH and QDRANT_PATH come from the environment, as for the service. A local-mode
Qdrant store (an earlier release's default, DATA_DIR/qdrant) is backed up too whenever it is on disk, whatever
VECTOR_STORE says: before `migrate_store` it is where the vectors are, and it is what an older release reads
after a rollback. `restore` puts it back at QDRANT_PATH. The store has one owning
process (the `.lock` in EDGE_PATH): `create` and `restore` take that lock for their whole run, so they refuse
with one line while a service runs, and a service cannot start while they copy. Offline is what makes the copy
consistent: nothing writes while the registry (SQLite's online backup API) and the edge shards are copied.

`create` writes into ``<target>.partial`` and renames it to the target only after every file and the manifest
(`manifest.json`: each file's size and SHA-256, the registry's Alembic revision, the writing version) are on
disk, so a killed `create` leaves no target, only a ``.partial`` directory without a manifest, which `restore`
refuses. `restore` checks every file against the manifest first, copies the edge shards, and moves the registry
into place last: a `restore` killed midway leaves a store without a registry, which the service refuses to start
on (docs/service.md, start-up errors); run `restore --force` again.

Exit status: 0 done, 1 the backup is incomplete or damaged (`verify`, `restore`), 2 a refusal or usage error
(the service is running, the target exists, a server-backed store).
"""

from __future__ import annotations

import argparse
import calendar
import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from service.app.core.config import Settings, SettingsError, describe_settings_error, get_settings
from service.app.core.files import PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, make_private_dirs
from service.app.store.edge import (
    LOCK_FILE,
    DirectoryLock,
    EmbeddedStoreError,
    StoreLocked,
    copy_sparse,
    fsync_path,
)

MANIFEST = "manifest.json"
REGISTRY = "registry.db"
EDGE = "edge"
# The local-mode store of releases before qdrant-edge (QDRANT_PATH), kept under this name in a backup.
LEGACY = "qdrant"
# qdrant-client's own lock file in a local-mode directory (portalocker, an exclusive flock).
LEGACY_LOCK = ".lock"
FORMAT = 1
CHUNK = 1 << 20
# Test hook (never set in service): `create` stops for ever after copying the named part ("registry" or "edge"),
# `restore` before moving the registry into place ("restored shards"), after saying so on stderr, so a test can
# kill -9 it there.
BLOCK_AT_ENV = "BACKUP_TEST_BLOCK_AT"


class BackupError(Exception):
    """A refusal or a damaged backup; the message is one line naming the path and what to do."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


def lock_holder(directory: Path) -> int | None:
    """The pid written in ``<directory>/.lock`` by its owner, if any."""
    try:
        return int((directory / LOCK_FILE).read_text().strip() or 0) or None
    except (OSError, ValueError):
        return None


def in_use_message(settings: Settings, what: str) -> str:
    """One line for a tool that needs the embedded store while a service owns it: the data dir and the way out."""
    edge = settings.resolved_edge_path
    pid = lock_holder(edge)
    who = f" (pid {pid})" if pid else ""
    stop = f"`kill {pid}`" if pid else "stop that process"
    return (
        f"the embedded store in DATA_DIR={settings.data_dir} (EDGE_PATH {edge}) is in use by a running "
        f"service{who}; {what} needs it to itself: stop the service (Ctrl-C on `make serve`, or {stop}), run "
        "this again, then start the service"
    )


def refuse_if_served(settings: Settings, what: str) -> None:
    """Raise BackupError (one line) when a running service owns the embedded edge store of ``settings``."""
    if settings.embedded_vector_store != "edge" or not settings.resolved_edge_path.is_dir():
        return
    lock = DirectoryLock(settings.resolved_edge_path)
    try:
        lock.acquire()
    except StoreLocked:
        raise BackupError(in_use_message(settings, what)) from None
    lock.release()


def _registry_path(settings: Settings) -> Path:
    from sqlalchemy.engine import make_url

    url = make_url(settings.resolved_database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        raise BackupError(
            f"DATABASE_URL ({url.render_as_string(hide_password=True)}) is not the embedded SQLite registry: back "
            "up a PostgreSQL registry with its own tools (pg_dump, or the platform's backups)"
        )
    return Path(url.database)


def _check_embedded(settings: Settings) -> tuple[Path, Path]:
    if settings.embedded_vector_store is None:
        raise BackupError(
            "this tool backs up the embedded stores; with QDRANT_URL use Qdrant's snapshots (docs/runbooks.md)"
        )
    if str(settings.resolved_qdrant_path) == ":memory:" and settings.embedded_vector_store == "local":
        raise BackupError("QDRANT_PATH is :memory:: a throwaway store has nothing on disk to back up")
    return _registry_path(settings), settings.resolved_edge_path


def _legacy_path(settings: Settings) -> Path | None:
    """QDRANT_PATH when it holds a local-mode store (by what is on disk, not by VECTOR_STORE), else None."""
    from service.app.store.edge import legacy_local_store

    return legacy_local_store(settings)


class _LegacyLock:
    """qdrant-client's own lock on a local-mode directory, so a service of an earlier release (or one run with
    VECTOR_STORE=local) cannot open it while it is copied, and a running one makes the tool refuse."""

    def __init__(self, settings: Settings, directory: Path, what: str) -> None:
        import portalocker

        self._file = (directory / LEGACY_LOCK).open("a+")
        try:
            portalocker.lock(self._file, portalocker.LockFlags.EXCLUSIVE | portalocker.LockFlags.NON_BLOCKING)
        except portalocker.exceptions.LockException:
            self._file.close()
            raise BackupError(
                f"the local-mode store at {directory} (DATA_DIR={settings.data_dir}) is in use by a running "
                f"service (an earlier release's, or VECTOR_STORE=local); {what} needs it to itself: stop that "
                "service, run this again, then start it"
            ) from None

    def release(self) -> None:
        import portalocker

        portalocker.unlock(self._file)
        self._file.close()


def _take_lock(settings: Settings, edge: Path, what: str) -> DirectoryLock:
    lock = DirectoryLock(edge)
    try:
        lock.acquire()
    except StoreLocked:
        raise BackupError(in_use_message(settings, what)) from None
    except EmbeddedStoreError as exc:
        raise BackupError(str(exc)) from None
    return lock


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while block := source.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != LOCK_FILE)


def _make_private(root: Path) -> None:
    """Owner-only, as the service keeps them: every directory under ``root`` (and itself) 0700, every file 0600 (the
    registry holds every document's text, the stores their chunks; a copy is made with the umask, 0755/0644)."""
    if root.is_file():
        os.chmod(root, PRIVATE_FILE_MODE)
        return
    os.chmod(root, PRIVATE_DIR_MODE)
    for directory, subdirectories, names in os.walk(root):
        for name in subdirectories:
            os.chmod(Path(directory, name), PRIVATE_DIR_MODE)
        for name in names:
            os.chmod(Path(directory, name), PRIVATE_FILE_MODE)


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*"), reverse=True):
        if not path.is_symlink():
            fsync_path(path)
    fsync_path(root)


def _alembic_revision(connection: sqlite3.Connection) -> str | None:
    try:
        row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.Error:
        return None
    return row[0] if row else None


def _version() -> str:
    """The package version and, in a git checkout, its commit (what an operator rolls back to)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("rag-platform")
    except PackageNotFoundError:
        found = "unknown"
    git = shutil.which("git")
    if git is None:
        return found
    try:
        commit = subprocess.run(  # noqa: S603 (a fixed command line)
            [git, "-C", str(Path(__file__).resolve().parents[2]), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return found
    return f"{found} ({commit})" if commit else found


def _block_at(point: str) -> None:
    if os.environ.get(BLOCK_AT_ENV) == point:
        print(f"backup: test hook: blocked after copying the {point}", file=sys.stderr, flush=True)
        while True:
            time.sleep(3600)


def create(settings: Settings, target: Path) -> dict[str, Any]:
    """Copy the stopped embedded store to ``target`` (which must not exist); the manifest written."""
    registry, edge = _check_embedded(settings)
    if target.exists():
        raise BackupError(f"{target} already exists: back up into a new directory")
    if target.resolve().is_relative_to(edge.resolve()):
        raise BackupError(f"{target} is inside EDGE_PATH ({edge}), which it copies: back up somewhere else")
    if not registry.is_file():
        raise BackupError(
            f"{registry} does not exist: DATA_DIR={settings.data_dir} holds no registry to back up"
        )
    legacy = _legacy_path(settings)
    if legacy is not None and target.resolve().is_relative_to(legacy.resolve()):
        raise BackupError(
            f"{target} is inside QDRANT_PATH ({legacy}), which it copies: back up somewhere else"
        )
    partial = target.with_name(target.name + ".partial")
    # The edge store's lock keeps a service of this release from starting on DATA_DIR while it is copied; on a
    # DATA_DIR an earlier release left (qdrant/ only) taking it makes edge/, which is removed again below.
    edge_existed = edge.exists()
    lock = _take_lock(settings, edge, "a backup")
    try:
        legacy_lock = _LegacyLock(settings, legacy, "a backup") if legacy is not None else None
    except BaseException:
        lock.release()
        raise
    try:
        if partial.exists():  # a killed earlier run: nothing in it was ever a backup
            shutil.rmtree(partial)
        make_private_dirs(partial)  # the backup holds every document's text: 0700, as DATA_DIR
        # SQLite's backup API: a consistent copy of the registry with its WAL folded in, not the raw file.
        # Read-write (not mode=ro): a read-only connection to a WAL database leaves an empty -wal and -shm
        # behind, and the last connection's close checkpoints a WAL a kill -9 left and removes both.
        source = sqlite3.connect(f"file:{registry}?mode=rw", uri=True)
        copy = sqlite3.connect(partial / REGISTRY)
        try:
            source.backup(copy)
            # One self-contained file (no -wal/-shm beside it); the service turns WAL back on when it opens it.
            copy.execute("PRAGMA journal_mode=DELETE")
            revision = _alembic_revision(copy)
        finally:
            copy.close()
            source.close()
        _block_at("registry")
        if edge_existed and edge.is_dir():
            # Holes kept: the engine's files are mostly preallocated, sparse space (a one-document store is 0.4 MB on
            # disk and 194 MB apparent); a plain copy writes every zero.
            shutil.copytree(
                edge, partial / EDGE, ignore=shutil.ignore_patterns(LOCK_FILE), copy_function=copy_sparse
            )
        if legacy is not None:
            # An earlier release's store: before `migrate_store` it holds every vector, and after one it is what
            # the earlier release reads again on a rollback (migrate_store retires it as qdrant.migrated).
            shutil.copytree(
                legacy,
                partial / LEGACY,
                ignore=shutil.ignore_patterns(LEGACY_LOCK),
                copy_function=copy_sparse,
            )
        _block_at("edge")
        files = {
            path.relative_to(partial).as_posix(): {"bytes": path.stat().st_size, "sha256": _sha256(path)}
            for path in _files(partial)
        }
        manifest = {
            "format": FORMAT,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "service_version": _version(),
            "registry_revision": revision,
            "source": {
                "data_dir": str(settings.data_dir),
                "registry": str(registry),
                "edge": str(edge),
                **({"qdrant": str(legacy)} if legacy is not None else {}),
            },
            "files": files,
        }
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        _make_private(partial)
        _fsync_tree(partial)
        partial.rename(target)
        fsync_path(target.parent)
    finally:
        if legacy_lock is not None:
            legacy_lock.release()
        if not edge_existed:
            # Still under the lock: a service starting now is refused as during the copy, one after finds none.
            with contextlib.suppress(OSError):
                (edge / LOCK_FILE).unlink()
                edge.rmdir()
        lock.release()
    return manifest


def verify(source: Path) -> dict[str, Any]:
    """The manifest of a complete backup at ``source``; BackupError (status 1) naming what is missing or wrong."""
    manifest_path = source / MANIFEST
    if not manifest_path.is_file():
        hint = " (an interrupted `create`: take the backup again)" if source.name.endswith(".partial") else ""
        raise BackupError(f"{source} is not a complete backup: it has no {MANIFEST}{hint}", status=1)
    try:
        manifest = json.loads(manifest_path.read_text())
        files: dict[str, dict[str, Any]] = manifest["files"]
    except (ValueError, KeyError, TypeError) as exc:
        raise BackupError(
            f"{manifest_path} cannot be read ({exc}): the backup is damaged", status=1
        ) from None
    if manifest.get("format") != FORMAT:
        raise BackupError(
            f"{manifest_path} has format {manifest.get('format')!r}; this version reads {FORMAT}", 1
        )
    present = {p.relative_to(source).as_posix() for p in _files(source)} - {MANIFEST}
    extra = sorted(present - set(files))
    if extra:
        raise BackupError(
            f"{source} holds files its manifest does not list ({extra[0]}, ...): damaged", status=1
        )
    for name, expected in sorted(files.items()):
        path = source / name
        if not path.is_file():
            raise BackupError(f"{path} is missing: the backup is incomplete", status=1)
        if path.stat().st_size != expected["bytes"] or _sha256(path) != expected["sha256"]:
            raise BackupError(
                f"{path} does not match its manifest (size or SHA-256): the backup is damaged", 1
            )
    if REGISTRY not in files:
        raise BackupError(f"{source} has no {REGISTRY}: the backup is incomplete", status=1)
    return manifest


def _occupied(registry: Path, edge: Path, legacy: Path | None) -> list[Path]:
    found = [p for p in (registry, Path(f"{registry}-wal")) if p.exists()]
    if edge.is_dir() and any(entry.name != LOCK_FILE for entry in edge.iterdir()):
        found.append(edge)
    if legacy is not None:
        found.append(legacy)
    return found


def restore(settings: Settings, source: Path, *, force: bool = False) -> dict[str, Any]:
    """Put the backup at ``source`` in place of the stopped store; with ``force``, what was there is moved aside."""
    registry, edge = _check_embedded(settings)
    manifest = verify(source)
    if (source / LEGACY).is_dir() and str(settings.resolved_qdrant_path) == ":memory:":
        raise BackupError(
            f"{source} holds a local-mode store ({LEGACY}/) and QDRANT_PATH is :memory:: unset QDRANT_PATH (default "
            "DATA_DIR/qdrant) to restore it"
        )
    legacy = _legacy_path(settings)
    occupied = _occupied(registry, edge, legacy)
    if occupied and not force:
        raise BackupError(
            f"DATA_DIR={settings.data_dir} is not empty ({', '.join(map(str, occupied))}): restore into an empty "
            "DATA_DIR, or add --force to move what is there aside (to <name>.pre-restore-<time>)"
        )
    lock = _take_lock(settings, edge, "a restore")
    try:
        legacy_lock = _LegacyLock(settings, legacy, "a restore") if legacy is not None else None
    except BaseException:
        lock.release()
        raise
    try:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        # DATA_DIR ends as the backup had it: a local-mode store there now is moved aside whether or not the
        # backup has one (the edge-era release refuses to start beside one, an earlier release would read it).
        if legacy is not None:  # its lock (an open file inside it) is held across the rename
            legacy.rename(legacy.with_name(f"{legacy.name}.pre-restore-{stamp}"))
        if (source / LEGACY).is_dir():
            qdrant_path = settings.resolved_qdrant_path
            incoming_legacy = qdrant_path.with_name(f".{qdrant_path.name}.restoring")
            if incoming_legacy.exists():  # a killed earlier restore's partial copy
                shutil.rmtree(incoming_legacy)
            shutil.copytree(source / LEGACY, incoming_legacy, copy_function=copy_sparse)
            _make_private(incoming_legacy)
            _fsync_tree(incoming_legacy)
            incoming_legacy.rename(qdrant_path)
            fsync_path(qdrant_path.parent)
        for path in (registry, Path(f"{registry}-wal"), Path(f"{registry}-shm")):
            if path.exists():
                path.rename(path.with_name(f"{path.name}.pre-restore-{stamp}"))
        if edge.is_dir():
            aside = edge.with_name(f"{edge.name}.pre-restore-{stamp}")
            for entry in edge.iterdir():
                if entry.name != LOCK_FILE:
                    aside.mkdir(exist_ok=True)
                    entry.rename(aside / entry.name)
        make_private_dirs(edge)
        for entry in sorted((source / EDGE).iterdir()) if (source / EDGE).is_dir() else []:
            if entry.is_dir():
                shutil.copytree(entry, edge / entry.name, copy_function=copy_sparse)
            else:
                copy_sparse(str(entry), str(edge / entry.name))
            _make_private(edge / entry.name)  # a backup taken before they were kept 0600 has them 0644
        _fsync_tree(edge)
        _block_at("restored shards")
        # The registry last, by rename: until it is in place the service refuses to start on these shards.
        make_private_dirs(registry.parent)
        incoming = registry.with_name(f".{registry.name}.restoring")
        shutil.copy2(source / REGISTRY, incoming)
        os.chmod(incoming, PRIVATE_FILE_MODE)  # every document's text: 0600 whatever mode the backup had
        fsync_path(incoming)
        incoming.rename(registry)
        fsync_path(registry.parent)
    finally:
        if legacy_lock is not None:
            legacy_lock.release()
        lock.release()
    return manifest


_STAMP = "%Y%m%dT%H%M%S"  # migrate_store's `.migrated-<time>` (UTC)


def _retired_stores(qdrant_path: Path) -> list[tuple[float, Path]]:
    """The local-mode stores `migrate_store` retired beside ``qdrant_path``, oldest first, each with the time it was
    retired: the one in its name (`.migrated-<time>`), or for `.migrated` its change time (set by the rename that
    retired it; an upper bound if it was touched since)."""
    found = []
    for path in qdrant_path.parent.glob(f"{qdrant_path.name}.migrated*"):
        suffix = path.name[len(qdrant_path.name) + len(".migrated") :]
        if suffix == "":
            found.append((path.stat().st_ctime, path))
        elif suffix.startswith("-"):
            try:
                stamp = time.strptime(suffix[1:], _STAMP)
            except ValueError:
                continue
            found.append((calendar.timegm(stamp), path))
    return sorted(found)


def _utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def vectorless_rollback_hint(settings: Settings, manifest: dict[str, Any]) -> str | None:
    """A warning when a restored backup holds no vectors while DATA_DIR keeps a store `migrate_store` retired:
    a backup an earlier version of this tool took of a local-mode store (it copied the registry only, EYES10),
    which an earlier release then serves with every search empty unless that store is moved back.

    Every retired store is listed with the time it was retired; the one that matches the backup is the first
    retired at or after the backup's ``created`` (the store the release it was taken from kept writing until that
    migration): moving back another one serves vectors whose versions the registry does not name."""
    if any(name.startswith((f"{EDGE}/", f"{LEGACY}/")) for name in manifest["files"]):
        return None
    qdrant_path = settings.resolved_qdrant_path
    if str(qdrant_path) == ":memory:" or qdrant_path.exists():
        return None
    retired = _retired_stores(qdrant_path)
    if not retired:
        return None
    listed = "; ".join(f"{path} (retired {_utc(when)})" for when, path in retired)
    created = manifest.get("created")
    try:
        taken = calendar.timegm(time.strptime(str(created), "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        taken = None
    head = (
        f"this backup holds no vectors (no {EDGE}/ shards, no {LEGACY}/ store; created {created}), and DATA_DIR "
        f"keeps the local-mode stores migrate_store retired: {listed}. "
    )
    if taken is None:
        return head + (
            "The backup's creation time cannot be read, so which store matches it is unknown: move back the one "
            f"retired first after the backup was taken (`mv <it> {qdrant_path}`) before the earlier release starts "
            "here, or every search it answers is empty"
        )
    matching = next((path for when, path in retired if when >= taken), None)
    if matching is None:
        return head + (
            f"None was retired after the backup was created ({created}), so none holds its vectors: moving one back "
            "serves vectors the registry does not name"
        )
    return head + (
        f"{matching} is the one retired first after the backup was created: if the backup was taken before that "
        f"migration (by a backup tool that did not copy {LEGACY}/), run `mv {matching} {qdrant_path}` before the "
        "earlier release starts here, or every search it answers is empty"
    )


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m service.tools.backup", description=__doc__.splitlines()[0])
    commands = root.add_subparsers(dest="command", required=True)
    made = commands.add_parser("create", help="copy the stopped store into a new directory")
    made.add_argument("target", type=Path)
    checked = commands.add_parser("verify", help="check a backup against its manifest")
    checked.add_argument("source", type=Path)
    put = commands.add_parser("restore", help="put a backup in place (the service stopped)")
    put.add_argument("source", type=Path)
    put.add_argument(
        "--force", action="store_true", help="restore over a non-empty DATA_DIR, moving it aside"
    )
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "verify":
            manifest = verify(args.source)
        else:
            settings = get_settings()
            if args.command == "create":
                manifest = create(settings, args.target)
            else:
                manifest = restore(settings, args.source, force=args.force)
                hint = vectorless_rollback_hint(settings, manifest)
                if hint is not None:
                    print(f"backup: warning: {hint}", file=sys.stderr)
    except (ValidationError, SettingsError) as exc:
        print(f"backup: error: {describe_settings_error(exc)}", file=sys.stderr)
        return 2
    except BackupError as exc:
        print(f"backup: error: {exc}", file=sys.stderr)
        return exc.status
    files = manifest["files"]
    print(
        f"backup: {args.command}: {len(files)} files, "
        f"{size_summary(args.target if args.command == 'create' else args.source, files)}, registry revision "
        f"{manifest['registry_revision']}, written by {manifest['service_version']} at {manifest['created']}"
    )
    return 0


def size_summary(backup: Path, files: dict[str, dict[str, Any]]) -> str:
    """What the backup's files take on disk (their allocated blocks, what `du` says), then their apparent size.

    The engine's files are mostly preallocated holes, kept sparse here: a 70 MB backup was summed as "343268282
    bytes" (EYES10), and a copy that does not keep holes (scp, rsync without --sparse, many object-store uploads)
    writes the apparent size.
    """
    apparent = sum(entry["bytes"] for entry in files.values())
    allocated = 0
    for name in files:
        with contextlib.suppress(OSError):
            allocated += (Path(backup) / name).stat().st_blocks * 512
    summary = f"{_mb(allocated)} on disk (allocated)"
    if apparent > allocated:
        summary += (
            f", {_mb(apparent)} apparent (sparse files: a copy that does not keep holes writes that much)"
        )
    return summary


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB ({size} bytes)"


if __name__ == "__main__":
    raise SystemExit(main())
