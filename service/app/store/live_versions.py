"""Live versions: a bounded-age, per-process copy of the active document versions search judges its hits by.

Why: search keeps only hits whose (document_id, version) is active in the registry, so without a copy a registry
outage (a managed database's failover: 1-2 minutes on RDS Multi-AZ or Cloud SQL) fails every search. The obvious
alternative, a full copy of every tenant's versions refreshed in the background, costs a full reload per write
(deletes leave no row to read incrementally) and answers with an unbounded-looking age; this one is filled by the
lookups search makes anyway and is exact whenever it is used.

How: per tenant, the copy holds the versions this process looked up (document_id -> active version, or None: no
such document), all as of ONE ``data_version`` of the tenant (bumped in the same transaction as every write or
delete, by any process). Every search opens one registry snapshot and reads the tenant's data_version in it first:
equal to the copy's, the copy answers for the documents it holds and the snapshot for the others (added to the
copy); different, the copy is replaced by an empty one at the new data_version. So while the registry answers a
search judges its hits exactly as one registry snapshot does, as it did before the copy existed.

When the registry cannot be read, a search is answered from the copy only if the copy was confirmed by a registry
read at most ``outage_seconds`` (REGISTRY_OUTAGE_SEARCH_SECONDS) ago AND holds every document the search must
judge; the response is then exactly what the registry held at that confirmation. Otherwise `ServiceUnavailable`
saying which of the two failed. Every write or delete this process makes drops the tenant's copy (whatever its
outcome: a commit whose answer was lost may have happened), so no change this process made or read is ever
served past. A change made by another process that this process has not read yet is the staleness the bound
allows (docs/service.md, "Search during a registry outage").

After a failed read, searches use the copy for RETRY_SECONDS without asking the registry, then one search at a
time probes it (the others keep using the copy meanwhile): a registry host that stops answering holds a read up
to DATABASE_CONNECT_TIMEOUT_SECONDS, which would otherwise be every search's latency through a failover. The
result cache's key read goes through the same rule (`read_data_version`), and a response answered from the copy is
cached only under the copy's own data_version (`storable`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from service.app.core.errors import ServiceUnavailable
from service.app.store.registry import DocumentRegistry, RegistrySnapshot

logger = logging.getLogger(__name__)

#: After a failed registry read, searches are answered from the copy this long before one probes the registry.
RETRY_SECONDS = 1.0
#: Documents held across all tenants; past it every copy is dropped (refilled by the next searches). ~100 bytes
#: each: a few MB at most.
MAX_DOCUMENTS = 65_536
_MISSING: Any = object()


@dataclass
class _Copy:
    data_version: int
    confirmed_at: float  # monotonic time of the last registry read that found this data_version
    versions: dict[str, int | None] = field(default_factory=dict)


class LiveView:
    """The active versions one search judges its hits by (from the registry, the copy, or both)."""

    def __init__(
        self,
        owner: LiveVersions,
        tenant_id: str,
        snapshot: RegistrySnapshot | None,
        copy: _Copy | None,
        generation: int,
    ) -> None:
        self._owner = owner
        self._tenant_id = tenant_id
        self._snapshot = snapshot
        self._copy = copy
        self._generation = generation

    def active_versions(self, document_ids: Iterable[str]) -> dict[str, int]:
        """document_id -> active version for those of ``document_ids`` that exist."""
        known = self._copy.versions if self._copy is not None else {}
        # ONE read per document: a concurrent search of the tenant may add to (or clear) this copy meanwhile, so a
        # document looked up twice (once for a version, once for "unknown") could fall between the two and be
        # dropped as not active. Each dict read is atomic and added values are of the copy's one data_version.
        found: dict[str, int] = {}
        unknown: list[str] = []
        for d in set(document_ids):
            v = known.get(d, _MISSING)
            if v is _MISSING:
                unknown.append(d)
            elif v is not None:
                found[d] = v
        if not unknown:
            return found
        if self._snapshot is None:
            raise ServiceUnavailable(
                "document registry unavailable; this process answers search from its copy "
                f"of the live document versions, which does not hold {len(unknown)} of the documents this search "
                "found; retry later",
                retry_after=int(RETRY_SECONDS) or 1,
            )
        read = self._snapshot.active_versions(self._tenant_id, unknown)
        found.update(read)
        if self._copy is not None:
            self._owner._remember(
                self._tenant_id, self._copy, self._generation, {d: read.get(d) for d in unknown}
            )
        return found


class LiveVersions:
    """The per-process copy (see the module docstring); one per registry, shared by every search thread."""

    def __init__(
        self,
        registry: DocumentRegistry,
        *,
        outage_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.outage_seconds = outage_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._copies: dict[str, _Copy] = {}
        self._generations: dict[str, int] = {}  # per tenant, bumped by every write or delete of this process
        self._held = 0
        self._down_until = 0.0  # monotonic; inf while one search probes the registry
        # copy_version: the copy's data_version when this thread's last search was answered from the copy alone
        self._local = threading.local()
        if outage_seconds > 0:
            registry.on_change(self.forget)

    def forget(self, tenant_id: str, ok: bool = True) -> None:
        """Drop the tenant's copy: this process changed (or may have changed) one of its documents. When the write
        succeeded (``ok``) the registry answered it moments ago, so the pause after a failed read ends; a write
        that failed (its commit's answer lost) leaves the pause as it is."""
        with self._lock:
            self._generations[tenant_id] = self._generations.get(tenant_id, 0) + 1
            if ok and self._down_until != math.inf:
                self._down_until = 0.0
            dropped = self._copies.pop(tenant_id, None)
            if dropped is not None:
                self._held -= len(dropped.versions)

    def registry_down(self) -> bool:
        """Whether searches answer from the copy without asking the registry right now (a read failed less than
        RETRY_SECONDS ago, or one search is probing it)."""
        return self.outage_seconds > 0 and self._clock() < self._down_until

    def storable(self, data_version: int) -> bool:
        """Whether the response of this thread's last search may be stored under ``data_version`` (the result
        cache's key): always when it was judged by a registry snapshot (which opened after the key's read, so at
        that version or a newer one); when it was answered from the copy alone, only if the copy is at exactly
        that version. A copy at an older version may hold documents deleted since, and a cache entry under the
        newer key would serve them with the registry up, on every replica sharing the cache."""
        judged = getattr(self._local, "copy_version", None)
        return judged is None or judged == data_version

    def read_data_version(self, tenant_id: str, read: Callable[[str], int]) -> int | None:
        """The tenant's data_version by ``read`` (the result cache's key read), or None while searches answer from
        the copy without asking the registry. Takes the probe slot like `view`: after the pause one search at a
        time asks, and a failed read starts the pause, so its search answers from the copy without a second wait
        (a lost host holds each read up to DATABASE_CONNECT_TIMEOUT_SECONDS). A successful read confirms the copy
        (a cache hit never reaches `view`)."""
        if self.outage_seconds <= 0:
            return read(tenant_id)
        if not self._take_probe():
            return None
        now = self._clock()
        try:
            data_version = read(tenant_id)
        except ServiceUnavailable as exc:
            self._failed(exc.message)
            return None
        except BaseException:
            self._release_probe()
            raise
        self._answered()
        with self._lock:
            copy = self._copies.get(tenant_id)
            if copy is not None and copy.data_version == data_version:
                copy.confirmed_at = max(copy.confirmed_at, now)
        return data_version

    def _take_probe(self) -> bool:
        """False while searches skip the registry; else True (marking this search the probe after a pause)."""
        with self._lock:
            if self._clock() < self._down_until:
                return False
            if self._down_until:
                self._down_until = math.inf  # this search probes; the others use the copy meanwhile
            return True

    def _failed(self, reason: str) -> None:
        with self._lock:
            if not self._down_until:
                logger.warning("registry read failed; search answers from the live-version copy: %s", reason)
            self._down_until = self._clock() + RETRY_SECONDS

    def _release_probe(self) -> None:
        # Never leave a probe marked in flight: every later search would skip the registry.
        with self._lock:
            if self._down_until == math.inf:
                self._down_until = self._clock() + RETRY_SECONDS

    def _answered(self) -> None:
        with self._lock:
            if self._down_until:
                logger.warning("registry answers again; search reads it")
            self._down_until = 0.0

    def held(self, tenant_id: str) -> dict[str, int | None] | None:
        """The tenant's copy (a snapshot of it, for tests and diagnostics); None when there is none."""
        with self._lock:
            copy = self._copies.get(tenant_id)
            return dict(copy.versions) if copy is not None else None

    @contextmanager
    def view(self, tenant_id: str) -> Iterator[LiveView]:
        """The versions one search judges its hits by, all as of one registry data_version (see the module)."""
        self._local.copy_version = None
        if self.outage_seconds <= 0:  # the copy is off: every search reads the registry, as before it existed
            with self.registry.snapshot() as snapshot:
                yield LiveView(self, tenant_id, snapshot, None, 0)
            return
        with self._lock:
            generation = self._generations.get(tenant_id, 0)
        now = self._clock()
        if not self._take_probe():
            yield self._outage_view(tenant_id, generation)
            return
        with ExitStack() as stack:
            try:
                snapshot = stack.enter_context(self.registry.snapshot())
                data_version = snapshot.data_version(tenant_id)
            except ServiceUnavailable as exc:
                with suppress(ServiceUnavailable):
                    stack.close()
                self._failed(exc.message)
                view = self._outage_view(tenant_id, generation)
            except BaseException:
                self._release_probe()
                raise
            else:
                self._answered()
                # Confirmed as of ``now``, read before the snapshot was taken: the age is never understated.
                copy = self._confirm(tenant_id, data_version, generation, now)
                view = LiveView(self, tenant_id, snapshot, copy, generation)
            yield view

    def _outage_view(self, tenant_id: str, generation: int) -> LiveView:
        with self._lock:
            copy = self._copies.get(tenant_id)
            if copy is None or self._generations.get(tenant_id, 0) != generation:
                raise ServiceUnavailable(
                    "document registry unavailable; this process holds no copy of the tenant's live "
                    "document versions to answer from; retry later",
                    retry_after=int(RETRY_SECONDS) or 1,
                )
            age = self._clock() - copy.confirmed_at
        if age > self.outage_seconds:
            raise ServiceUnavailable(
                "document registry unavailable for longer than REGISTRY_OUTAGE_SEARCH_SECONDS="
                f"{self.outage_seconds:g}: this process's copy of the live document versions was last confirmed "
                f"{age:.0f} s ago and is no longer served; retry later",
                retry_after=int(RETRY_SECONDS) or 1,
            )
        self._local.copy_version = copy.data_version
        return LiveView(self, tenant_id, None, copy, generation)  # the copy alone answers

    def _confirm(self, tenant_id: str, data_version: int, generation: int, now: float) -> _Copy | None:
        """The tenant's copy at ``data_version`` (a new empty one when the version moved), marked confirmed now;
        None when a write of this process started since ``generation`` was read (nothing is kept then)."""
        with self._lock:
            if self._generations.get(tenant_id, 0) != generation:
                return None
            copy = self._copies.get(tenant_id)
            if copy is not None and copy.data_version == data_version:
                copy.confirmed_at = max(copy.confirmed_at, now)
                return copy
            if copy is not None:
                self._held -= len(copy.versions)
                del self._copies[tenant_id]
                if data_version < copy.data_version:
                    # A snapshot older than the copy (a concurrent search's), or a restored registry: never let
                    # an older state replace one this process has seen; the next search starts a new copy.
                    return None
            copy = self._copies[tenant_id] = _Copy(data_version, now)
            return copy

    def _remember(
        self, tenant_id: str, copy: _Copy, generation: int, versions: dict[str, int | None]
    ) -> None:
        with self._lock:
            if self._copies.get(tenant_id) is not copy or self._generations.get(tenant_id, 0) != generation:
                return  # replaced, dropped, or a write of this process began since the snapshot: keep nothing
            if self._held + len(versions) > MAX_DOCUMENTS:
                self._copies = {tenant_id: copy}
                self._held = len(copy.versions)
                if self._held + len(versions) > MAX_DOCUMENTS:
                    copy.versions.clear()
                    self._held = 0
            added = {d: v for d, v in versions.items() if d not in copy.versions}
            copy.versions.update(added)
            self._held += len(added)
