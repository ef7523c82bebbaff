"""Which metadata keys get a payload index: a bounded, persisted set per collection (both vector-store engines).

Metadata keys are the tenants' own (service.app.ingest.models caps them at 64 per document, not overall), and
each indexed key costs every later write (each index is updated per point) and a build over the collection's
points. In qdrant-edge-py 0.9.0 one ``create_field_index`` holds the GIL for 0.3-0.8 s and costs more with every
index the shard already has (docs/benchmarks.md, "Metadata payload indexes"): built inside the request, as they
were, a few hundred new keys froze the whole process for minutes. So:

- At most ``METADATA_INDEX_MAX_KEYS`` keys per collection are ever indexed, first come first served. Keys past
  the cap are stored and filtered like any other (both engines filter unindexed payload fields, by checking
  each candidate's payload: slower on large collections, never wrong); each is logged once and counted once
  in ``rag_metadata_keys_unindexed_total`` per process.
- The set is shared by every tenant: a payload index covers a field of the whole collection, which all tenants
  share (tenancy is a filter on ``tenant_id``), so a per-tenant budget would not bound the indexes the
  collection holds (N tenants x budget).
- ``admit`` only decides; the caller builds the index off the request path (service.app.store.edge: a paced
  background thread; service.app.store.qdrant: the server's asynchronous ``wait=False``).
- The admitted set is what is persisted (``persist``, before the write that uses a new key is acknowledged), so
  a key admitted but not yet built when the process stops is built after the restart, and a restart cannot
  reopen the budget the built indexes already spent.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from service.app.core.metrics import METADATA_KEYS_UNINDEXED

logger = logging.getLogger(__name__)

IndexKind = Literal["keyword", "integer", "float", "bool"]
KINDS: tuple[IndexKind, ...] = ("keyword", "integer", "float", "bool")
# Keys refused are remembered (to log and count each once) up to this many per collection and process; a
# hostile client sending millions of distinct keys must not grow the process's memory with them.
REMEMBERED_REFUSALS = 10_000


def index_kind(value: Any) -> IndexKind | None:
    """The payload-index type a metadata value asks for (None: the value type gets no index).

    Integers and floats both get a ``float`` index: one key often holds both (``{"price": 12}``, then
    ``{"price": 9.99}``), and an ``integer`` index (what an integer first seen used to get) has no entry for a
    float, so the engine answered range and equality conditions on the key from it and silently dropped every
    float-valued document. A ``float`` index holds integers too (as f64) and answers range conditions only;
    equality on an integer is answered from the payload (exact past 2**53), as on an unindexed key. Checked on
    qdrant-edge: indexed and unindexed keys select the same documents for mixed values
    (tests/service/test_metadata_indexes.py). ``integer`` indexes built by earlier releases are rebuilt as
    ``float`` when the store opens (`rebuilt_kind`).
    """
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "float"
    if isinstance(value, str | list):
        return "keyword"
    return None


def rebuilt_kind(kind: IndexKind) -> IndexKind:
    """The kind an existing index of ``kind`` must have now: ``integer`` ones (earlier releases) become ``float``."""
    return "float" if kind == "integer" else kind


class MetadataKeyBudget:
    """The collection's admitted metadata keys (indexed or queued to be), capped at ``limit``; thread-safe.

    ``existing`` are keys already admitted (indexed, or persisted by an earlier process): they are kept even
    past a lowered limit (an index is never dropped by this), and only new keys are refused. ``refresh``, when
    given, returns the keys indexed by others (a Qdrant server's payload schema, which every replica writes): it
    is merged in before a new key is admitted, so replicas share one budget (up to the keys admitted by two
    replicas at the same moment).
    """

    def __init__(
        self,
        limit: int,
        *,
        store: str,
        collection: str,
        existing: Mapping[str, IndexKind] | None = None,
        persist: Callable[[dict[str, IndexKind]], None] | None = None,
        refresh: Callable[[], Mapping[str, IndexKind]] | None = None,
    ) -> None:
        self.limit = limit
        self.store = store
        self.collection = collection
        self._admitted: dict[str, IndexKind] = dict(existing or {})
        self._persist = persist
        self._refresh = refresh
        self._refused: set[str] = set()
        self._forgetting = False
        self._lock = threading.Lock()

    @property
    def admitted(self) -> dict[str, IndexKind]:
        with self._lock:
            return dict(self._admitted)

    @property
    def refused(self) -> int:
        """Distinct keys refused an index so far (as remembered: at most REMEMBERED_REFUSALS)."""
        with self._lock:
            return len(self._refused)

    def admit(self, metadata_items: Iterable[Mapping[str, Any]]) -> list[tuple[str, IndexKind]]:
        """Admit the new keys of these metadata objects while the budget lasts; returns the ones admitted now
        (in order), after persisting the new set. Cheap when nothing is new: one dict lookup per key."""
        new: list[tuple[str, IndexKind]] = []
        refreshed = False
        with self._lock:
            for metadata in metadata_items:
                for key, value in metadata.items():
                    if key in self._admitted:
                        continue
                    kind = index_kind(value)
                    if kind is None:
                        continue
                    if not refreshed and self._refresh is not None and len(self._admitted) < self.limit:
                        refreshed = True
                        self._merge_refreshed()
                        if key in self._admitted:
                            continue
                    if len(self._admitted) >= self.limit:
                        self._refuse(key)
                        continue
                    self._admitted[key] = kind
                    new.append((key, kind))
            if new and self._persist is not None:
                try:
                    self._persist(dict(self._admitted))
                except BaseException:  # the write fails with it; its keys are not admitted either
                    for key, _ in new:
                        del self._admitted[key]
                    raise
        return new

    def _merge_refreshed(self) -> None:
        assert self._refresh is not None
        try:
            others = self._refresh()
        except (
            Exception
        ) as exc:  # only the budget's precision depends on it: go on with what this process knows
            logger.warning(
                "could not read the indexed metadata keys of collection %s: %s", self.collection, exc
            )
            return
        for key, kind in others.items():
            self._admitted.setdefault(key, kind)

    def forget(self, key: str) -> None:
        """Give a key's place back (its index could not be requested: e.g. the server refused it)."""
        with self._lock:
            self._admitted.pop(key, None)
            if self._persist is not None:
                self._persist(dict(self._admitted))

    def _refuse(self, key: str) -> None:
        if key in self._refused:
            return
        if len(self._refused) >= REMEMBERED_REFUSALS:
            if not self._forgetting:
                self._forgetting = True
                logger.warning(
                    "more than %d metadata keys of collection %s were refused an index: further ones are "
                    "neither logged nor counted",
                    REMEMBERED_REFUSALS,
                    self.collection,
                )
            return
        self._refused.add(key)
        METADATA_KEYS_UNINDEXED.labels(store=self.store).inc()
        logger.warning(
            "metadata.%s gets no payload index: collection %s already has METADATA_INDEX_MAX_KEYS=%d indexed "
            "metadata keys (it is stored and filtered without an index)",
            key,
            self.collection,
            self.limit,
        )


def read_admitted(path: Path) -> dict[str, IndexKind]:
    """The admitted keys persisted at ``path`` ({} when there is no readable file: the caller then starts from
    the indexes the collection has, so a lost file only loses the keys queued and not yet built)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        keys = data["keys"]
        return {str(k): rebuilt_kind(v) for k, v in keys.items() if v in KINDS}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        logger.warning(
            "ignoring unreadable %s (%s): the built indexes are kept, queued ones are lost", path, exc
        )
        return {}


def write_admitted(path: Path, admitted: Mapping[str, IndexKind]) -> None:
    """Persist the admitted keys atomically and durably (temp file, fsync, rename, fsync of the directory)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        json.dump({"keys": dict(admitted)}, out)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
