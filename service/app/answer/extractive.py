"""The embedded generator: answer with the retrieved passages that best support the query, cited, or say it cannot.

No model server needed, so `make serve` answers out of the box. It quotes, it does not paraphrase: every word of
the answer is in a cited source (the one exception is the note that two sources disagree, below).

- **Units, not bare sentences.** The retrieved chunks are cut into sentences (the boundaries chunking uses), and
  the sentences are grouped into the units an answer quotes: a heading line ("timeout", "# Vacation policy") is
  never quoted, it becomes the context the sentences under it are scored with; a sentence of fewer than
  ``SHORT_WORDS`` words ("Default: 5.") joins the sentence before it under the same heading, so it is quoted
  with what it is about; a question in the text ("Can I freeze the dough?") takes the sentence that answers it.
  Until 2026-11-26 sentences under 12 characters were dropped, so "What is the default for retries?" was
  answered with the other setting's "Default: 30." (EYES5 F4).
- **Support.** Each unit, prefixed with its heading, is embedded with the query's model; its support is its cosine
  to the question plus ``COVERAGE_WEIGHT`` x the share of the question's BM25 terms it contains
  (`KeywordEvidence.coverage`). Units are ranked by support, those naming a code word of the question first
  (`KeywordEvidence.code_shares`).
- **Abstaining.** When the best unit's support is under ``MIN_SUPPORT`` (and it names no code of the question),
  or its chunk lacks a proper name of the question (`KeywordEvidence.lacks_a_name`), the retrieved text is close
  to the question but does not answer it ("How many vacation days do interns in Japan get?" against a policy for
  employees): the answer says so and cites nothing (EYES5 F5). The weight and the threshold were chosen on a
  labelled set of answerable and near-miss questions (quality/abstention.py; docs/answers.md, "Abstaining").
- **At most ``MAX_SENTENCES`` units**, each within ``RELATIVE_SUPPORT`` of the best's support and at least
  ``MIN_SUPPORT`` (or naming a code: a code question's best unit may have little support, and its padding none),
  in source order, each with its ``[n]``; numbers are dense in order of first use (`citations.clean_citations`).
- **Near-duplicates.** An exact repeat is quoted once, from the better source, and cited with every other document
  that says it ("[1, 2]": a copy does not hide its original). A unit from another document with
  nearly the same words (``NEAR_DUPLICATE``) that disagrees with a quoted one (other numbers, or a negation the
  other lacks) is quoted too, with its own source, and the answer ends with a note naming both (EYES4 E12: "26
  days [1] ... 25 days [2]" passed through without comment). The service cannot know which is right; showing one
  would hide the conflict.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher

import numpy as np

from service.app.answer.citations import clean_citations
from service.app.answer.prompt import Source
from service.app.answer.relevance import KeywordEvidence
from service.app.ingest.chunking import sentence_spans
from service.app.store.protocols import Embedder

MAX_SENTENCES = 3
MAX_CANDIDATES = 200  # units embedded per answer (bounds the cost of many long chunks)
# Below this support (cosine + COVERAGE_WEIGHT x the share of the question's terms the unit contains) the best
# unit does not answer the question. Both chosen on the labelled set (quality/abstention.py, docs/answers.md
# "Abstaining"): the weight with the best leave-one-out figures, the threshold of best balanced accuracy.
MIN_SUPPORT = 1.165
COVERAGE_WEIGHT = 1.5
# Quoted units besides the best must have at least this share of its support (no padding; measured with the
# labelled set, docs/answers.md "Abstaining").
RELATIVE_SUPPORT = 0.9
# A sentence of fewer words is quoted together with the one before it ("Default: 5.", "Yes.").
SHORT_WORDS = 3
# A line of at most this many words, starting with a letter, without digits, end punctuation or the characters of
# tables and code, alone on its line, is a heading (or a Markdown "# " heading of any length).
HEADING_WORDS = 10
# Two units whose word sequences match at least this much (difflib ratio) are near-duplicates: one or two words
# changed in a sentence of ten.
NEAR_DUPLICATE = 0.8
# Added to a unit's cosine for naming a code word of the question (an error code, an identifier), in proportion
# to how distinctive that code is among the candidate units (KeywordEvidence.code_shares).
CODE_BONUS = 0.3

DISAGREE_NOTE = "Note: {} say different things."
_MARKDOWN_HEADING = re.compile(r"#{1,6}\s+(?P<title>.*)")
_WORDS = re.compile(r"\w+")
# Characters of table rows and code ("Team | $49", "#include <unistd.h>"), never of a heading.
_CODE_CHARACTERS = frozenset("|<>{}[]=;#/\\$")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_NEGATIONS = frozenset({"not", "no", "never", "none", "cannot", "nor", "without"})


@dataclass(frozen=True)
class Extract:
    answer: str
    cited: list[int]  # prompt numbers in order of first use: [k + 1] in ``answer`` is cited[k]
    # The best unit (quoted or not): its cosine, the share of the question's terms it holds, whether it names a
    # code word of the question (then it is answered whatever the two say); None: there was nothing to score.
    cosine: float | None = None
    coverage: float | None = None
    keyword: bool = False
    unnamed: bool = False  # its chunk misses a proper name of the question (then it is not answered)

    @property
    def support(self) -> float | None:
        """What abstaining judges: cosine + COVERAGE_WEIGHT x coverage."""
        if self.cosine is None or self.coverage is None:
            return None
        return self.cosine + COVERAGE_WEIGHT * self.coverage


@dataclass(frozen=True)
class Unit:
    """What an answer may quote: consecutive sentences of one chunk, and the heading they sit under."""

    n: int  # the source's number
    document_id: str
    position: int  # of its first sentence in the chunk
    text: str  # whitespace-normalised, as quoted
    heading: str | None

    @property
    def scored(self) -> str:
        return f"{self.heading}: {self.text}" if self.heading else self.text


def _alone_on_its_line(text: str, start: int, end: int) -> bool:
    if "\n" in text[start:end]:
        return False
    before = text.rfind("\n", 0, start)
    after = text.find("\n", end)
    return not text[before + 1 : start].strip() and not text[end : len(text) if after < 0 else after].strip()


def heading_of(text: str, start: int, end: int) -> str | None:
    """The heading's title when the sentence ``text[start:end]`` is a heading line, else None."""
    raw = text[start:end].strip()
    if not _alone_on_its_line(text, start, end):
        return None
    markdown = _MARKDOWN_HEADING.fullmatch(raw)
    if markdown:
        return markdown.group("title").strip() or None
    if (
        raw[-1] in ".!?:;,"
        or not raw[0].isalpha()
        or any(char in _CODE_CHARACTERS for char in raw)
        or any(char.isdigit() for char in raw)
        or len(raw.split()) > HEADING_WORDS
    ):
        return None
    return raw


def units_of(source: Source) -> list[Unit]:
    """The quotable units of one source's chunk, in order (see the module docstring)."""
    text = source.result.text
    units: list[Unit] = []
    spans: list[list[int]] = []  # [start, end, position] of each unit being built
    heading: str | None = None
    open_unit = False  # whether the last unit is under the current heading (a short sentence may join it)
    answered = True  # whether the last unit, if it ends with "?", has taken its answer yet
    for position, (start, end) in enumerate(sentence_spans(text)):
        title = heading_of(text, start, end)
        if title is not None:
            heading, open_unit = title, False
            continue
        words = len(text[start:end].split())
        if open_unit and (words < SHORT_WORDS or not answered):
            spans[-1][1] = end
            answered = True
            continue
        spans.append([start, end, position])
        units.append(Unit(source.n, source.result.document_id, position, "", heading))
        open_unit = True
        answered = not text[start:end].rstrip().endswith("?")
    return [
        Unit(unit.n, unit.document_id, unit.position, " ".join(text[start:end].split()), unit.heading)
        for unit, (start, end, _position) in zip(units, spans, strict=True)
    ]


def _words(text: str) -> list[str]:
    return _WORDS.findall(text.lower())


def near_duplicates(a: str, b: str) -> bool:
    """Whether two units say nearly the same words (NEAR_DUPLICATE)."""
    return SequenceMatcher(None, _words(a), _words(b), autojunk=False).ratio() >= NEAR_DUPLICATE


def disagree(a: str, b: str) -> bool:
    """Whether two near-duplicate units differ where it matters: their numbers, or a negation one lacks."""
    if sorted(_NUMBER.findall(a)) != sorted(_NUMBER.findall(b)):
        return True
    negations = [sum(word in _NEGATIONS or word.endswith("n't") for word in _words(t)) for t in (a, b)]
    return negations[0] != negations[1]


def extract_answer(
    query_vector: Callable[[], Sequence[float]],
    sources: Sequence[Source],
    embedder: Embedder,
    evidence: KeywordEvidence | None = None,
) -> Extract:
    """The best-supporting units of ``sources`` for the query, each cited; empty when none supports it.

    ``query_vector`` gives the query's embedding by ``embedder`` (called only when there is a unit to score):
    the caller takes it from the query-vector cache the search just filled, so the query is not embedded twice.
    With ``evidence``, a unit that names a code word of the question (an error code, an identifier) gets up to
    CODE_BONUS on its similarity, and qualifies below MIN_SUPPORT: the embedding model reads "BILL-4031" as
    noise, so the sentence that explains the code scored below sentences that merely resemble the question's
    wording. The units naming the question's most distinctive code (the one fewest candidates name: in "What
    does ESRCH mean for sched_rr_get_interval?" the error code, not the function every sentence of its man page
    names) come first; others that name a code earn a bonus in proportion to its distinctiveness.
    """
    candidates: list[Unit] = []
    seen: dict[str, int] = {}
    # Per unit, the other documents' sources saying exactly the same: cited with it ("[1, 2]"), so a copied
    # document does not hide the original (EYES4 E12: only the copy was cited).
    same: dict[int, list[Source]] = {}
    for source in sources:
        for unit in units_of(source):
            # Neighbouring chunks overlap and copies repeat: the same unit is quoted once, from the better source.
            first = seen.get(unit.text.lower())
            if first is None:
                seen[unit.text.lower()] = len(candidates)
                candidates.append(unit)
            elif all(s.result.document_id != source.result.document_id for s in same.get(first, [])) and (
                candidates[first].document_id != source.result.document_id
            ):
                same.setdefault(first, []).append(source)
    candidates = candidates[:MAX_CANDIDATES]
    if not candidates:
        return Extract(answer="", cited=[])
    query = np.asarray(query_vector(), dtype=np.float32)
    vectors = np.asarray(embedder.embed_documents([c.scored for c in candidates]), dtype=np.float32)
    # The embedder returns L2-normalised vectors (see store/embedder.py), so the dot product is the cosine.
    scores = vectors @ query
    named = (
        evidence.code_shares([c.text for c in candidates])
        if evidence is not None
        else np.zeros(len(candidates), dtype=np.float32)
    )
    covered = (
        evidence.coverage([c.scored for c in candidates])
        if evidence is not None
        else np.zeros(len(candidates), dtype=np.float32)
    )
    confidence = scores + COVERAGE_WEIGHT * covered
    ranked = confidence + CODE_BONUS * named
    # Those naming the most distinctive code of the question (share 1) first, then by bonus-adjusted support.
    order = [int(i) for i in np.lexsort((-ranked, named < 1.0))]
    best = order[0]
    measured = {
        "cosine": float(scores[best]),
        "coverage": float(covered[best]),
        "keyword": bool(named[best] > 0),
    }
    chunk = {source.n: source.result.text for source in sources}[candidates[best].n]
    unnamed = evidence is not None and evidence.lacks_a_name(chunk)
    if not measured["keyword"] and (unnamed or float(confidence[best]) < MIN_SUPPORT):
        return Extract(answer="", cited=[], unnamed=unnamed, **measured)  # type: ignore[arg-type]
    floor = max(MIN_SUPPORT, RELATIVE_SUPPORT * float(confidence[best]))

    def qualifies(i: int) -> bool:
        return bool(named[i] > 0) or float(confidence[i]) >= floor

    chosen: list[int] = []
    for i in order:
        if len(chosen) == MAX_SENTENCES:
            break
        if not qualifies(i):
            continue
        if any(
            near_duplicates(candidates[i].text, candidates[j].text)
            and disagree(candidates[i].text, candidates[j].text)
            for j in chosen
        ):
            continue  # contradicts a quoted unit: added below, next to the note
        chosen.append(i)
    # A quoted unit contradicted by a near-duplicate in another document: quote that one too, and say so.
    conflicts: list[tuple[int, int]] = []
    for i in list(chosen):
        for j in order:
            if (
                j not in chosen
                and qualifies(j)
                and candidates[j].document_id != candidates[i].document_id
                and near_duplicates(candidates[i].text, candidates[j].text)
                and disagree(candidates[i].text, candidates[j].text)
            ):
                chosen.append(j)
                conflicts.append((i, j))
                break
    chosen.sort(key=lambda i: (candidates[i].n, candidates[i].position))
    raw = " ".join(
        f"{candidates[i].text} [{', '.join(str(n) for n in [candidates[i].n, *(s.n for s in same.get(i, []))])}]"
        for i in chosen
    )
    for i, j in conflicts:
        first, second = sorted((candidates[i].n, candidates[j].n))
        raw += " " + DISAGREE_NOTE.format(f"[{first}] and [{second}]")
    answer, cited = clean_citations(raw, {source.n for source in sources})
    return Extract(answer=answer, cited=cited, unnamed=unnamed, **measured)  # type: ignore[arg-type]
