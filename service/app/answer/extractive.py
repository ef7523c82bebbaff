"""The embedded generator: answer with the retrieved sentences that best support the query, cited.

No model server needed, so `make serve` answers out of the box. The retrieved chunks are cut into sentences
(the boundaries chunking uses), each sentence is embedded with the same model as the query, and the
``MAX_SENTENCES`` most similar ones above ``MIN_SENTENCE_SCORE`` are quoted, in source order, each followed by
the ``[n]`` of its chunk. It quotes, it does not paraphrase: every word of the answer is in a cited source.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from service.app.answer.prompt import Source
from service.app.answer.relevance import KeywordEvidence
from service.app.ingest.chunking import sentence_spans
from service.app.store.protocols import Embedder

MAX_SENTENCES = 3
MAX_CANDIDATES = 200  # sentences embedded per answer (bounds the cost of many long chunks)
MIN_SENTENCE_SCORE = 0.2
MIN_SENTENCE_CHARS = 12
# Added to a sentence's cosine for naming a code word of the question (an error code, an identifier), in
# proportion to how distinctive that code is among the candidate sentences (KeywordEvidence.code_shares).
CODE_BONUS = 0.3


@dataclass(frozen=True)
class Extract:
    answer: str
    cited: list[int]


def extract_answer(
    query_vector: Callable[[], Sequence[float]],
    sources: Sequence[Source],
    embedder: Embedder,
    evidence: KeywordEvidence | None = None,
) -> Extract:
    """The best-supporting sentences of ``sources`` for the query, each cited; empty when none supports it.

    ``query_vector`` gives the query's embedding by ``embedder`` (called only when there is a sentence to score):
    the caller takes it from the query-vector cache the search just filled, so the query is not embedded twice.
    With ``evidence``, a sentence that names a code word of the question (an error code, an identifier) gets up to
    CODE_BONUS on its similarity, and qualifies below MIN_SENTENCE_SCORE: the embedding model reads "BILL-4031"
    as noise, so the sentence that explains the code scored below sentences that merely resemble the question's
    wording. The sentences naming the question's most distinctive code (the one fewest candidates name: in
    "What does ESRCH mean for sched_rr_get_interval?" the error code, not the function every sentence of its man
    page names) come first; others that name a code earn a bonus in proportion to its distinctiveness.
    """
    candidates: list[tuple[int, int, str]] = []  # (source n, position, sentence)
    seen: set[str] = set()
    for source in sources:
        text = source.result.text
        for position, (start, end) in enumerate(sentence_spans(text)):
            sentence = " ".join(text[start:end].split())
            # Neighbouring chunks overlap: the same sentence is quoted once, from the better-ranked source.
            if len(sentence) < MIN_SENTENCE_CHARS or sentence.lower() in seen:
                continue
            seen.add(sentence.lower())
            candidates.append((source.n, position, sentence))
    candidates = candidates[:MAX_CANDIDATES]
    if not candidates:
        return Extract(answer="", cited=[])
    query = np.asarray(query_vector(), dtype=np.float32)
    vectors = np.asarray(embedder.embed_documents([c[2] for c in candidates]), dtype=np.float32)
    # The embedder returns L2-normalised vectors (see store/embedder.py), so the dot product is the cosine.
    scores = vectors @ query
    named = (
        evidence.code_shares([c[2] for c in candidates])
        if evidence is not None
        else np.zeros(len(candidates), dtype=np.float32)
    )
    ranked = scores + CODE_BONUS * named
    # Those naming the most distinctive code of the question (share 1) first, then by bonus-adjusted similarity.
    order = np.lexsort((-ranked, named < 1.0))[:MAX_SENTENCES]
    best = [i for i in order if named[i] > 0 or scores[i] >= MIN_SENTENCE_SCORE]
    chosen = sorted(best, key=lambda i: (candidates[i][0], candidates[i][1]))
    answer = " ".join(f"{candidates[i][2]} [{candidates[i][0]}]" for i in chosen)
    cited = list(dict.fromkeys(candidates[i][0] for i in chosen))
    return Extract(answer=answer, cited=cited)
