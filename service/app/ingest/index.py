"""Index generations: which collection, model and chunking a write goes to and a search reads from.

An `IndexGeneration` is one built index: its config (model, chunk size, overlap), its collection and the
vector store, embedder and chunker that fill and read it. `ActiveIndex` holds the generation search serves
from (``current``) and, while a re-index builds a new one or keeps the old one on standby for a rollback, a
second one (``shadow``) that every write lands in as well. Both are replaced together as one immutable
`IndexState`, so an operation that reads the state once sees a consistent pair even while a switch happens.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

from service.app.ingest.chunking import CHUNKER_VERSION, Chunker
from service.app.store.protocols import Embedder
from service.app.store.sparse import ENCODER_ID
from service.app.store.vectors import VectorStore, collection_name

# The chunker version of a config persisted before the version was recorded (the index pointer and lease rows
# of a store built by an earlier release).
UNVERSIONED_CHUNKER = 1


@dataclass(frozen=True)
class IndexConfig:
    """What decides the vectors of a document: the model, the chunking settings and the chunker's rules.

    ``chunker`` is the version of the chunking code a collection was built with (CHUNKER_VERSION when it was
    built here). It is not a setting: a start-up whose settings match the served index does not re-index
    because the chunker is newer (an upgrade must not rebuild every store on its first start), but a re-index
    with the same settings is allowed then, and rebuilds every document with the current rules.
    """

    model: str
    chunk_size: int
    chunk_overlap: int
    chunker: int = CHUNKER_VERSION

    def as_dict(self) -> dict[str, str | int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, value: dict) -> IndexConfig:
        return cls(
            str(value["model"]),
            int(value["chunk_size"]),
            int(value["chunk_overlap"]),
            int(value.get("chunker", UNVERSIONED_CHUNKER)),
        )

    def same_settings(self, other: IndexConfig) -> bool:
        """Whether the operator's settings (model and chunking) are the same, whatever the chunker versions."""
        return (self.model, self.chunk_size, self.chunk_overlap) == (
            other.model,
            other.chunk_size,
            other.chunk_overlap,
        )

    def collection(self, prefix: str, dimension: int, *, legacy: bool = False) -> str:
        """The collection of this config: the historical name for the first one, else with a config hash.

        ``legacy`` keeps ``{prefix}__{model}__{dim}`` (the name every deployment before re-indexing used), so
        an upgrade serves its existing collection instead of an empty one.
        """
        base = collection_name(prefix, self.model, dimension)
        if legacy:
            return base
        # The sparse encoder is part of what a collection holds: rebuilding the same model and chunking for
        # sparse vectors (or a new encoder) gets a collection of its own, never the one being served.
        material = {**self.as_dict(), "sparse": ENCODER_ID}
        if self.chunker == UNVERSIONED_CHUNKER:
            del material["chunker"]  # the name an earlier release gave this config's collection
        digest = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:10]
        return f"{base}__{digest}"


@dataclass(frozen=True)
class IndexGeneration:
    """One built (or building) index and the adapters that fill and read it."""

    config: IndexConfig
    vectors: VectorStore
    embedder: Embedder
    chunker: Chunker

    @property
    def collection(self) -> str:
        return self.vectors.collection


@dataclass(frozen=True)
class IndexState:
    """The generation search reads, and the one writes also land in (None when there is none)."""

    current: IndexGeneration
    shadow: IndexGeneration | None = None


class ActiveIndex:
    """The process's index state, swapped atomically, and a count of writes that started without a shadow.

    A re-index sets the shadow, then waits until every write that began before (and so will not write the
    shadow) has finished; from then on its copy of the registry plus the writes' own shadow copies cover
    every document version that becomes active.
    """

    def __init__(self, current: IndexGeneration) -> None:
        self.state = IndexState(current)
        self._unshadowed = 0
        self._condition = threading.Condition()

    @property
    def current(self) -> IndexGeneration:
        return self.state.current

    def set(self, state: IndexState) -> None:
        with self._condition:
            self.state = state

    @contextmanager
    def writing(self) -> Iterator[IndexState]:
        """The state one write uses from start to end (counted while it has no shadow)."""
        with self._condition:
            state = self.state
            unshadowed = state.shadow is None
            if unshadowed:
                self._unshadowed += 1
        try:
            yield state
        finally:
            if unshadowed:
                with self._condition:
                    self._unshadowed -= 1
                    self._condition.notify_all()

    def wait_for_unshadowed_writes(self, timeout: float) -> bool:
        """Block until no write that started without a shadow is still running; False on timeout."""
        with self._condition:
            return self._condition.wait_for(lambda: self._unshadowed == 0, timeout=timeout)
