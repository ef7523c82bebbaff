"""The chat prompt: numbered sources, best first, as many as fit the model's context after the answer's share.

Token counting is done with a real tokenizer, never a characters-per-token guess: LLM_TOKENIZER_PATH (the served
model's ``tokenizer.json``) counts exactly; without it the embedding model's own WordPiece tokenizer is used.
That is an estimate of another model's tokenizer: for English prose WordPiece yields more tokens than the
byte-level BPE of current LLMs, so it errs on the safe side; it can under-count scripts outside its vocabulary
(one ``[UNK]`` per word), which is what LLM_TOKENIZER_PATH is for. Each chat message also costs a few framing
tokens (``MESSAGE_OVERHEAD``, the figure OpenAI documents for its chat format), counted here too.

Budget: ``LLM_CONTEXT_TOKENS - LLM_MAX_TOKENS`` for the whole prompt. Sources are added best first; one that
does not fit is skipped and smaller ones after it may still fit. Numbers are given in order of inclusion, so
``[1]`` is the best source.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tokenizers import Tokenizer

from service.app.core.errors import InvalidInput
from service.app.search.models import SearchResult

MESSAGE_OVERHEAD = 4  # tokens of chat framing per message
REPLY_PRIMING = 3  # tokens that open the assistant's reply

SYSTEM_PROMPT = (
    "You answer questions using only the numbered sources the user gives you. "
    "After every sentence that uses a source, cite it with its number in square brackets, like [1] or [2][3]. "
    "Cite only numbers that appear in the sources. If the sources do not contain the answer, say that you do "
    "not know, in one sentence. Be concise."
)


class TokenCounter(Protocol):
    def count(self, text: str) -> int: ...


class TokenizerCounter:
    """Counts tokens with a Hugging Face ``tokenizers`` tokenizer (no truncation, no special tokens)."""

    def __init__(self, tokenizer: Tokenizer, name: str) -> None:
        self._tokenizer = tokenizer
        self.name = name

    @classmethod
    def from_file(cls, path: Path) -> TokenizerCounter:
        tokenizer = Tokenizer.from_file(str(path))
        tokenizer.no_truncation()
        tokenizer.no_padding()
        return cls(tokenizer, name=str(path))

    def count(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)


@dataclass(frozen=True)
class Source:
    """A retrieved chunk as it appears in the prompt, numbered."""

    n: int
    result: SearchResult


@dataclass(frozen=True)
class Prompt:
    messages: list[dict[str, str]]
    sources: list[Source]
    prompt_tokens: int  # counted locally, framing included


def format_source(n: int, result: SearchResult) -> str:
    return f"[{n}] (from {result.document_id}, part {result.chunk_index})\n{result.text.strip()}\n\n"


def build_prompt(
    query: str,
    results: Sequence[SearchResult],
    counter: TokenCounter,
    *,
    context_tokens: int,
    max_tokens: int,
) -> Prompt:
    """Messages holding the best sources that fit in ``context_tokens - max_tokens``; 422 if the query alone cannot."""
    budget = context_tokens - max_tokens
    question = f"Question: {query.strip()}"
    fixed = counter.count(SYSTEM_PROMPT) + counter.count("Sources:\n\n" + question)
    used = fixed + 2 * MESSAGE_OVERHEAD + REPLY_PRIMING
    if used > budget:
        raise InvalidInput(
            f"query: {used} tokens with the instructions, over the {budget} this model's context leaves "
            "(LLM_CONTEXT_TOKENS - LLM_MAX_TOKENS)"
        )
    sources: list[Source] = []
    parts: list[str] = []
    for result in results:
        text = format_source(len(sources) + 1, result)
        cost = counter.count(text)
        if used + cost > budget:
            continue
        used += cost
        sources.append(Source(n=len(sources) + 1, result=result))
        parts.append(text)
    user = "Sources:\n\n" + "".join(parts) + question
    return Prompt(
        messages=[{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}],
        sources=sources,
        prompt_tokens=used,
    )
