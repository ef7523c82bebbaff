"""Validate ``[n]`` citation markers in generated text, also while it streams token by token.

A marker survives only when every number in it names a source that was in the prompt: ``[2]`` is kept,
``[7]`` with five sources is removed, ``[2, 7]`` becomes ``[2]``. Streaming makes this stateful: a marker can
arrive split over tokens (``"["``, ``"1"``, ``"]"``), so a possibly-unfinished marker at the end of the text
seen so far is held back until the next token decides it. What is held back is bounded (a run of digits, commas
and spaces after ``[``), so plain text with a bracket is never delayed for long.

Markers are renumbered densely in order of first use (EYES4 E12): the source first cited is ``[1]``, the next new
one ``[2]``, whatever their numbers in the prompt, so an answer never cites ``[1]`` and ``[3]`` without ``[2]``.
A marker is decided as a whole, in order, so this works while streaming too; ``cited`` keeps the prompt's numbers
in that order (``cited[k]`` is the source the answer calls ``[k + 1]``).
"""

from __future__ import annotations

import re

MARKER = re.compile(r"(\s*)\[(\d{1,4}(?:\s*,\s*\d{1,4})*)\]")
# The start of something that may still become a marker: optional whitespace, "[", digits/commas/spaces.
PARTIAL = re.compile(r"\s*\[[\d,\s]{0,24}$")


class CitationFilter:
    """Feed generated text in pieces; get back the same text with invalid markers removed."""

    def __init__(self, valid: range | set[int]) -> None:
        self._valid = valid
        self._pending = ""
        self.cited: list[
            int
        ] = []  # valid prompt numbers in order of first use; [k + 1] in the text is cited[k]

    def feed(self, text: str) -> str:
        """The part of ``pending + text`` that is decided, cleaned; the rest waits for the next piece."""
        buffer = self._pending + text
        match = PARTIAL.search(buffer)
        if match:
            self._pending = buffer[match.start() :]
            buffer = buffer[: match.start()]
        else:
            self._pending = ""
        return self._clean(buffer)

    def finish(self) -> str:
        """Whatever is still held back, cleaned (the stream ended)."""
        rest, self._pending = self._pending, ""
        return self._clean(rest)

    def _clean(self, text: str) -> str:
        return MARKER.sub(self._replace, text)

    def _replace(self, match: re.Match[str]) -> str:
        numbers = [int(part) for part in match.group(2).split(",")]
        kept = [n for n in dict.fromkeys(numbers) if n in self._valid]
        for n in kept:
            if n not in self.cited:
                self.cited.append(n)
        if not kept:
            return ""
        dense = [self.cited.index(n) + 1 for n in kept]
        if dense == numbers:
            return match.group(0)
        return f"{match.group(1)}[{', '.join(str(n) for n in dense)}]"


def clean_citations(text: str, valid: range | set[int]) -> tuple[str, list[int]]:
    """``text`` with invalid markers removed and the rest renumbered densely, and the prompt numbers it cites in
    order of first use (``[k + 1]`` in the text is the returned list's ``k``-th)."""
    citations = CitationFilter(valid)
    cleaned = citations.feed(text) + citations.finish()
    return cleaned, citations.cited
