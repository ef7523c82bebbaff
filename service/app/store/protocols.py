"""The small protocols the domain services depend on; adapters implement them, tests inject real-but-local ones.

Every storage call takes the tenant explicitly: tenancy is part of the data model, not a filter bolted on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from tokenizers import Tokenizer


@runtime_checkable
class Embedder(Protocol):
    """Turns text into vectors with one model; exposes that model's tokenizer for token-aware chunking."""

    model_name: str  # e.g. "sentence-transformers/all-MiniLM-L6-v2"
    dimension: int  # vector size, e.g. 384
    max_tokens: int  # the model's max sequence length in tokens, special tokens included (256 for MiniLM)

    @property
    def tokenizer(self) -> Tokenizer:
        """The model's own tokenizer (truncation/padding disabled), used to count and split tokens."""
        ...

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed passages in batches; one normalised vector per text, in order."""
        ...

    def embed_query(self, text: str) -> list[float]:
        """Embed one search query (models with query prefixes apply them here)."""
        ...


class Cache(Protocol):
    """Search-result cache. Failures never propagate: implementations log, count and behave as a miss."""

    def get(self, key: str) -> bytes | None: ...

    def set(self, key: str, value: bytes, ttl_seconds: int) -> None: ...
