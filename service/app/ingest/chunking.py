"""Token-aware chunking with the embedding model's own tokenizer.

A chunk holds at most ``budget = min(CHUNK_SIZE, max_tokens - special tokens)`` tokens, so with the special
tokens the model adds it never exceeds the model's maximum length and nothing is silently truncated at
embedding time. Consecutive chunks share up to CHUNK_OVERLAP tokens of whole sentences.

How text is cut, in order of preference:
1. paragraphs (blank-line separated) are the natural unit; a chunk ends at a paragraph break when that still
   leaves it at least half full;
2. otherwise at a sentence end: ``.``, ``!``, ``?`` followed by whitespace, or a line break that ends a line of
   its own (`_line_ends`);
3. only a single sentence longer than the budget is split inside, at token offsets (preferring word starts).

Hard-wrapped text (plain-text notes, READMEs, man pages, e-mail, PDF lines) breaks its lines inside sentences,
so a line break inside a paragraph is whitespace, not a sentence end, unless the lines are not running text: a
line break ends a sentence before a list item, heading, code fence, table row or quote, after a heading or table
row, around and inside fenced code, and after a line shorter than ``MIN_WRAPPED_LINE`` characters (a title, an
address line, a SYNOPSIS line, a "key: value" line: wrapped prose fills its lines) unless the next line is
indented deeper (a term and its definition under a hanging indent, as man pages list error codes). Blank lines
are paragraph breaks as before. Until CHUNKER_VERSION 3 every line break ended a sentence, so chunks and the extractive
answer's quotes were made of half-lines (EYES_SVC2 S1).

Consecutive chunks overlap by whole sentences: the overlap starts where a sentence starts, never inside one (a
sentence too long for a chunk, split at token offsets, is not repeated by the overlap).

A chunk also holds at most ``max_chars = budget * MAX_CHARS_PER_TOKEN`` characters. Real text never reaches
that cap (the project's docs, sources and fixtures average 3.4 characters a token, their densest chunk 6.6 at the
default size); it exists for text the tokenizer cannot see into: WordPiece turns a "word" of more than 100
characters (a run of letters, digits or emoji without punctuation or space) into one ``[UNK]`` token, so a
blob without spaces would otherwise be one chunk however long. An over-long sentence is then split at token
offsets within the cap too, and a single token longer than the cap is cut by characters, preferably where the
character class changes (space, letter, digit, underscore, other).

Every chunk is a span of the original text (``text[start:end]``), spans are in order and together cover every
token of the text. The text is tokenized once per paragraph; each chunk is re-tokenized at the end to prove the
limit, and split further in the (tokenizer-dependent) case where re-tokenizing a span costs more tokens.
"""

from __future__ import annotations

import bisect
import itertools
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass

from tokenizers import Encoding, Tokenizer

PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n\s*")
# A sentence ends after terminal punctuation (plus closing quotes/brackets) before whitespace, or at a line break
# that `_line_ends` keeps. Linear on any input: a match may start only at the first mark of a run and its
# quantifiers are possessive, so a long run of marks not followed by whitespace ("....", 1 MB of it) is scanned
# once, not once per position (the backtracking form was quadratic: 16 kB of dots took 4.5 s). Only the whole run
# can end a sentence either way.
SENTENCE_END = re.compile(r"(?<![.!?\u2026])[.!?\u2026]++[\"'\u201d\u2019)\]]*+(?=\s)")
# A line that starts a block of its own: a list item (-, *, +, •, "1." or "1)"), a heading, a code fence, a table
# row or a quote.
BLOCK_START = re.compile(r"[ \t]*(?:[-*+\u2022][ \t]|\d{1,3}[.)][ \t]|#{1,6}[ \t]|```|~~~|\||>)")
# A line that is a block of its own whatever follows: a heading or a table row.
BLOCK_LINE = re.compile(r"[ \t]*(?:#{1,6}[ \t]|\|)")
FENCE = re.compile(r"[ \t]*(?:```|~~~)")
ORDERED_ITEM = re.compile(r"[ \t]*\d{1,3}\.")
# Wrapped prose fills its lines (70-100 characters in the project's fixtures, man pages and e-mail); a line with
# fewer characters than this (spaces around it not counted) ends where its author ended it.
MIN_WRAPPED_LINE = 40
ENCODE_BATCH = 256
# Characters per token a chunk may average at most (see the module docstring): about 5x the densest chunk of
# real text measured (docs/service.md "Chunking"), so only text the tokenizer cannot split is ever cut by it.
MAX_CHARS_PER_TOKEN = 16
# The version of what ``Chunker.split`` makes of a text: bump it with every change that splits some input
# differently. It is part of an index's config (service.app.ingest.index.IndexConfig), so a re-index with the
# same model and chunking is allowed after such a change and rebuilds every document with the new rules.
# 1: before versioning (stores built before 2026-11-26; some documents may hold one chunk far over the
# character cap, written before the cap existed). 2: the character cap above. 3: a line break inside running text
# is not a sentence end (hard-wrapped text), and the overlap starts at a sentence start.
CHUNKER_VERSION = 3
# Runs of one character class (space, letters, digits, underscores, anything else): where an over-long token is
# preferably cut by characters.
CHARACTER_RUNS = re.compile(r"\s+|[^\W\d_]+|\d+|_+|[^\w\s]+")


@dataclass(frozen=True)
class Chunk:
    """A span ``text[start:end]`` of the source text and its token count (special tokens excluded)."""

    text: str
    start: int
    end: int
    tokens: int


@dataclass(frozen=True)
class _Unit:
    """An uncuttable piece: a sentence, or a token-bounded piece of an over-long sentence."""

    start: int
    end: int
    tokens: int
    paragraph_start: bool
    # False for the second and later pieces of a sentence split inside: an overlap never starts there.
    sentence_start: bool = True


class Chunker:
    """Splits text into chunks that fit the model; configured once from the embedder and settings."""

    def __init__(self, tokenizer: Tokenizer, *, max_tokens: int, chunk_size: int, chunk_overlap: int) -> None:
        # A private copy: never let someone else's truncation/padding settings change our counts.
        self.tokenizer = Tokenizer.from_str(tokenizer.to_str())
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.special_tokens = self.tokenizer.num_special_tokens_to_add(False)
        self.max_tokens = max_tokens
        self.budget = min(chunk_size, max_tokens - self.special_tokens)
        if self.budget < 8:
            raise ValueError(f"chunk budget of {self.budget} tokens is too small (max_tokens={max_tokens})")
        # The overlap must leave room for new text in every chunk.
        self.overlap = max(0, min(chunk_overlap, self.budget // 2))
        # Derived from the budget only, so it is not a separate chunking parameter (nor part of the content hash).
        self.max_chars = self.budget * MAX_CHARS_PER_TOKEN

    def params(self) -> dict[str, int]:
        """What, besides the text, determines the chunks (part of a document's content hash)."""
        return {"budget": self.budget, "overlap": self.overlap, "max_tokens": self.max_tokens}

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` including the special tokens the model adds."""
        return len(self.tokenizer.encode(text, add_special_tokens=True).ids)

    def split(self, text: str) -> list[Chunk]:
        """Chunks of ``text`` in order; empty when the text has no tokens."""
        units = list(self._units(text))
        if not units:
            return []
        chunks = [self._make_chunk(text, units, a, b) for a, b in self._pack(units)]
        return self._enforce_limit(text, chunks)

    # --- units -------------------------------------------------------------------------------------------
    def _paragraphs(self, text: str) -> Iterator[tuple[int, int]]:
        position = 0
        for match in PARAGRAPH_BREAK.finditer(text):
            if match.start() > position:
                yield position, match.start()
            position = match.end()
        if position < len(text):
            yield position, len(text)

    def _units(self, text: str) -> Iterator[_Unit]:
        paragraphs = list(self._paragraphs(text))
        # Computed over the whole text: a fenced code block may hold blank lines (paragraph breaks).
        line_ends = _line_ends(text)
        for batch_start in range(0, len(paragraphs), ENCODE_BATCH):
            batch = paragraphs[batch_start : batch_start + ENCODE_BATCH]
            encodings = self.tokenizer.encode_batch([text[a:b] for a, b in batch], add_special_tokens=False)
            for (offset, end), encoding in zip(batch, encodings, strict=True):
                inside = line_ends[bisect.bisect_left(line_ends, offset) : bisect.bisect_left(line_ends, end)]
                yield from self._paragraph_units(
                    text[offset:end], offset, encoding, [position - offset for position in inside]
                )

    def _paragraph_units(
        self, paragraph: str, offset: int, encoding: Encoding, line_ends: list[int]
    ) -> Iterator[_Unit]:
        starts = [s for s, _ in encoding.offsets]
        ends = [e for _, e in encoding.offsets]
        word_ids = encoding.word_ids
        first = True
        for s, e in _sentences(paragraph, line_ends):
            i0 = bisect.bisect_left(starts, s)
            i1 = bisect.bisect_left(starts, e)
            count = i1 - i0
            if count == 0:
                continue
            if count <= self.budget and e - s <= self.max_chars:
                yield _Unit(offset + s, offset + e, count, first)
                first = False
                continue
            whole = True  # the first piece starts the sentence
            for j0, j1 in self._hard_split(i0, i1, word_ids, starts, ends):
                a, b = starts[j0], ends[j1 - 1]
                if b - a <= self.max_chars:
                    yield _Unit(offset + a, offset + b, j1 - j0, first, whole)
                    first = whole = False
                    continue
                # One token longer than the cap (e.g. WordPiece's [UNK] for a 100 kB run of letters).
                for unit in self._char_split(paragraph, a, b):
                    yield _Unit(offset + unit.start, offset + unit.end, unit.tokens, first, whole)
                    first = whole = False

    def _hard_split(
        self, i0: int, i1: int, word_ids: list[int | None], starts: list[int], ends: list[int]
    ) -> Iterator[tuple[int, int]]:
        """Token ranges of at most ``budget`` tokens and ``max_chars`` characters covering [i0, i1), cut at
        word starts when possible; a single token longer than ``max_chars`` is a range of its own."""
        i = i0
        while i < i1:
            j = min(i + self.budget, i1)
            if ends[j - 1] - starts[i] > self.max_chars:
                # Token ends are in order: the furthest end within the cap, at least one token.
                j = max(i + 1, bisect.bisect_right(ends, starts[i] + self.max_chars, i, j))
            if j < i1:
                floor = i + (j - i) // 2
                k = j
                while k > floor and word_ids[k] is not None and word_ids[k] == word_ids[k - 1]:
                    k -= 1
                if k > floor:
                    j = k
            yield i, j
            i = j

    def _char_split(self, text: str, start: int, end: int) -> Iterator[_Unit]:
        """Units covering ``text[start:end]`` (one over-long token), each within both caps."""
        spans: list[tuple[int, int]] = []
        position = start
        while position < end:
            cut = _char_cut(text, position, end, self.max_chars)
            spans.extend(_trimmed(text, position, cut))
            position = cut
        encodings = self.tokenizer.encode_batch([text[a:b] for a, b in spans], add_special_tokens=False)
        for (a, b), encoding in zip(spans, encodings, strict=True):
            count = len(encoding.ids)
            if count == 0:
                continue
            if count <= self.budget:
                yield _Unit(a, b, count, False)
                continue
            # The piece re-tokenizes into more than a chunk's tokens (a piece of <= 100 characters is no longer
            # one [UNK]): split it by its own tokens, all within the character cap already.
            offsets = encoding.offsets
            piece_starts = [a + s for s, _ in offsets]
            piece_ends = [a + e for _, e in offsets]
            for j0, j1 in self._hard_split(0, count, encoding.word_ids, piece_starts, piece_ends):
                yield _Unit(piece_starts[j0], piece_ends[j1 - 1], j1 - j0, False)

    # --- packing -----------------------------------------------------------------------------------------
    def _pack(self, units: list[_Unit]) -> Iterator[tuple[int, int]]:
        """Unit ranges [a, b) of chunks: greedy fill, prefer paragraph ends, overlap whole trailing units."""
        prefix = [0]
        for unit in units:
            prefix.append(prefix[-1] + unit.tokens)
        n = len(units)
        start = 0
        while start < n:
            end = start
            while (
                end < n
                and prefix[end + 1] - prefix[start] <= self.budget
                and units[end].end - units[start].start <= self.max_chars
            ):
                end += 1
            if end < n:
                for k in range(end - 1, start, -1):
                    if units[k].paragraph_start and prefix[k] - prefix[start] >= self.budget // 2:
                        end = k
                        break
            yield start, end
            if end >= n:
                return
            new_start = end
            while new_start - 1 > start and prefix[end] - prefix[new_start - 1] <= self.overlap:
                new_start -= 1
            # The next chunk must fit the overlap plus the first new unit, and its overlap starts a sentence.
            while new_start < end and (
                not units[new_start].sentence_start
                or prefix[end + 1] - prefix[new_start] > self.budget
                or units[end].end - units[new_start].start > self.max_chars
            ):
                new_start += 1
            start = new_start

    @staticmethod
    def _make_chunk(text: str, units: list[_Unit], a: int, b: int) -> Chunk:
        start, end = units[a].start, units[b - 1].end
        return Chunk(text[start:end], start, end, sum(u.tokens for u in units[a:b]))

    def _enforce_limit(self, text: str, chunks: list[Chunk]) -> list[Chunk]:
        encodings = self.tokenizer.encode_batch([c.text for c in chunks], add_special_tokens=False)
        checked: list[Chunk] = []
        for chunk, encoding in zip(chunks, encodings, strict=True):
            checked.extend(self._fit(text, chunk, encoding))
        return checked

    def _fit(self, text: str, chunk: Chunk, encoding: Encoding) -> list[Chunk]:
        if len(encoding.ids) <= self.budget:
            return [Chunk(chunk.text, chunk.start, chunk.end, len(encoding.ids))]
        # Re-tokenizing the span cost more tokens than counted (e.g. a word cut mid-way): split by tokens again.
        pieces: list[Chunk] = []
        offsets = encoding.offsets
        step = max(1, self.budget // 2)
        for i in range(0, len(offsets), step):
            a = chunk.start + offsets[i][0]
            b = chunk.start + offsets[min(i + step, len(offsets)) - 1][1]
            piece = Chunk(text[a:b], a, b, 0)
            sub = self.tokenizer.encode(piece.text, add_special_tokens=False)
            pieces.extend(self._fit(text, piece, sub))
        return pieces


def _joins(text: str, index: int) -> bool:
    """Whether a cut before ``text[index]`` would split a grapheme (a combining mark, a variation selector or a
    zero-width joiner sequence)."""
    if unicodedata.category(text[index]) in ("Mn", "Me", "Mc", "Cf", "Sk"):
        return True
    return text[index - 1] == "\u200d"


def _char_cut(text: str, start: int, end: int, max_chars: int) -> int:
    """Where the piece starting at ``start`` ends: ``end`` if it fits in ``max_chars``, else the last change of
    character class in the second half of the window, else the last position that splits no grapheme."""
    limit = start + max_chars
    if end <= limit:
        return end
    floor = start + max_chars // 2
    # Runs of one class in the second half of the window; each run's start (but the first's) is a class change.
    changes = [match.start() for match in CHARACTER_RUNS.finditer(text, floor, limit + 1)][1:]
    for index in reversed(changes):
        if not _joins(text, index):
            return index
    for index in range(limit, floor, -1):
        if not _joins(text, index):
            return index
    return limit


def _line_ends(text: str) -> list[int]:
    """Positions of the line breaks (``\\n``) of ``text`` that end a sentence, in order (see the module docstring:
    a break inside running text is whitespace)."""
    ends: list[int] = []
    lines = text.split("\n")
    position = 0
    fenced = False
    for line, following in itertools.pairwise(lines):  # the last line has no break after it
        position += len(line)
        fence = FENCE.match(line) is not None
        if fence:
            fenced = not fenced
        if (
            fence
            or fenced
            or not following.strip()
            or BLOCK_START.match(following)
            or BLOCK_LINE.match(line)
            or (len(line.strip()) < MIN_WRAPPED_LINE and not _hangs(line, following))
        ):
            ends.append(position)
        position += 1
    return ends


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def _hangs(line: str, following: str) -> bool:
    """Whether ``following`` continues ``line`` under a hanging indent (a term and its definition, as a man page
    lists "ENOTCONN" and, indented below it, "The specified socket is not connected.")."""
    return bool(line.strip()) and _indent(following) > _indent(line)


def _is_list_number(text: str, match: re.Match[str]) -> bool:
    """Whether a sentence-end match is the number of an ordered list item ("1. Freeze: ..."), not an end."""
    line_start = text.rfind("\n", 0, match.start()) + 1
    return ORDERED_ITEM.fullmatch(text, line_start, match.end()) is not None


def _sentences(paragraph: str, line_ends: list[int]) -> Iterator[tuple[int, int]]:
    """(start, end) of each sentence of a paragraph, whitespace trimmed, in order; ``line_ends`` are the
    positions of the paragraph's line breaks that end a sentence (`_line_ends`)."""
    cuts = sorted(
        {
            match.end() for match in SENTENCE_END.finditer(paragraph) if not _is_list_number(paragraph, match)
        }.union(line_ends)
    )
    position = 0
    for cut in cuts:
        yield from _trimmed(paragraph, position, cut)
        position = cut
    yield from _trimmed(paragraph, position, len(paragraph))


def _trimmed(text: str, start: int, end: int) -> Iterator[tuple[int, int]]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if start < end:
        yield start, end


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence of ``text``, cut where chunking cuts, whitespace trimmed, in order."""
    return list(_sentences(text, _line_ends(text)))
