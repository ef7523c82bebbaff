"""Which retrieved chunks are relevant enough to be an answer's sources, per retrieval mode.

A search returns its ``top_k`` best chunks however poor they are, so an answer needs a cut, and the cut must
fit the ranking that found the chunks. The scores of the three modes are not comparable: ``dense`` scores are
cosine similarities, ``sparse`` scores BM25 sums (unbounded, collection-dependent) and ``hybrid`` scores
reciprocal-rank fusion values (rank-based: every query's best hit scores about 0.5 whatever it matched). So:

- **dense**: the chunk's cosine similarity is at least the threshold (``ANSWER_MIN_SCORE``, or the request's
  ``score_threshold``), as before;
- **sparse** and **hybrid**: the cosine threshold OR keyword evidence (`KeywordEvidence.supports`): the chunk
  contains every term of an identifier or code the question names (``BILL-4031``, ``EMFILE``,
  ``sched_rr_get_interval``), or at least half of the question's distinct BM25 terms (two at least). The BM25 terms
  are the sparse encoder's (stop words dropped, stemmed), so "deploys on Fridays" matches "deploy on Friday".
  Hybrid retrieval ranks an error-code runbook first exactly because its keyword side does; a cosine-only cut
  (the dense model sees "BILL-4031" as noise) threw that chunk away and cited whatever resembled the
  question's wording instead.

In every mode, a question that names identifiers or codes is answered only from chunks that contain one of
them (`KeywordEvidence.names_a_code`): a chunk that never mentions ``PAY-9999`` does not say what it means,
however similar its wording. A question nothing in the corpus answers still gets no answer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from service.app.store.sparse import SparseEncoder, default_encoder

# Word-like tokens of a question, keeping the joiners identifiers use (BILL-4031, CAP_SYS_RAWIO, io.Reader).
_WORD = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.\-]*[A-Za-z0-9])?")
# Share of the question's distinct BM25 terms a chunk must contain to count as keyword evidence on its own.
MIN_TERM_SHARE = 1 / 2
# All-capital words this long are codes (EMFILE, ESRCH, SIGALRM); shorter ones are mostly acronyms (API, TLS).
MIN_CAPS_CODE = 5


def code_words(text: str) -> list[str]:
    """The identifiers and codes in ``text``: words with letters and digits (BILL-4031, E2BIG), with an
    underscore (CAP_SYS_RAWIO), camelCase (removeListener), or all capitals of MIN_CAPS_CODE letters or more."""
    found = []
    for word in _WORD.findall(text):
        letters = sum(char.isalpha() for char in word)
        digits = sum(char.isdigit() for char in word)
        if (
            (letters and digits)
            or "_" in word
            or re.search(r"[a-z][A-Z]", word)
            or (word.isupper() and letters >= MIN_CAPS_CODE)
        ):
            found.append(word)
    return list(dict.fromkeys(found))


def proper_names(text: str) -> list[str]:
    """Capitalised words of a question that are not its first word, "I" or a code word (``code_words``): the
    places, people and products it names ("interns in Japan", "on-call pay in Brazil")."""
    words = _WORD.findall(text)
    codes = set(code_words(text))
    return list(
        dict.fromkeys(
            word
            for word in words[1:]
            if word[0].isupper() and word != "I" and word not in codes and not word.isupper()
        )
    )


class KeywordEvidence:
    """The question's BM25 terms and code words, to judge chunks against (see the module docstring)."""

    def __init__(self, query: str, encoder: SparseEncoder | None = None) -> None:
        self._encoder = encoder or default_encoder()
        self.terms = frozenset(self._encoder.query(query).indices)
        # Each code word as its own term set: "BILL-4031" is the terms "bill" and "4031", both required.
        self.codes = [
            terms
            for terms in (frozenset(self._encoder.query(word).indices) for word in code_words(query))
            if terms
        ]
        self.names = [
            terms
            for terms in (frozenset(self._encoder.query(word).indices) for word in proper_names(query))
            if terms
        ]

    def _terms_of(self, text: str) -> frozenset[int]:
        return frozenset(self._encoder.document(text).indices)

    def names_a_code(self, text: str) -> bool:
        """Whether ``text`` contains one of the question's code words (True when it names none)."""
        if not self.codes:
            return True
        terms = self._terms_of(text)
        return any(code <= terms for code in self.codes)

    def lacks_a_name(self, text: str) -> bool:
        """Whether ``text`` misses a proper name of the question (``proper_names``): a policy for employees that
        never mentions Japan does not say what interns in Japan get, however close its wording."""
        if not self.names:
            return False
        terms = self._terms_of(text)
        return any(not name <= terms for name in self.names)

    def supports(self, text: str) -> bool:
        """Whether ``text`` matches the question's keywords well enough to be a source on that alone."""
        if not self.terms:
            return False
        terms = self._terms_of(text)
        if self.codes:
            return any(code <= terms for code in self.codes)
        matched = len(self.terms & terms)
        return matched >= min(2, len(self.terms)) and matched >= MIN_TERM_SHARE * len(self.terms)

    def coverage(self, texts: Sequence[str]) -> np.ndarray:
        """Per text, in [0, 1]: the share of the question's distinct BM25 terms it contains (zeros when the
        question has none). An answer usually repeats the words of its question ("the daily meal allowance");
        text close in meaning that lacks them ("interns", "Japan") is often about something else."""
        if not self.terms:
            return np.zeros(len(texts), dtype=np.float32)
        return np.array(
            [len(self.terms & self._terms_of(text)) / len(self.terms) for text in texts], dtype=np.float32
        )

    def code_shares(self, sentences: Sequence[str]) -> np.ndarray:
        """Per sentence, in [0, 1]: how distinctive the most distinctive code word of the question it names is,
        relative to the most distinctive one of all; zeros when the question names none.

        Distinctive = named by few of ``sentences`` (log(n / sentences naming it)): in "What does ESRCH mean for
        sched_rr_get_interval?" every sentence of the man page names the function, one names ESRCH."""
        shares = np.zeros(len(sentences), dtype=np.float32)
        if not self.codes or not sentences:
            return shares
        terms = [self._terms_of(sentence) for sentence in sentences]
        named = np.array([[code <= found for code in self.codes] for found in terms], dtype=bool)
        counts = named.sum(axis=0)
        weights = np.log1p(len(sentences) / np.maximum(counts, 1))
        weights[counts == 0] = 0.0
        if not weights.any():
            return shares
        return (np.where(named, weights, 0.0).max(axis=1) / weights.max()).astype(np.float32)
