"""When should the extractive answerer say it cannot answer? Measure it on a labelled set and pick the threshold.

    python -m quality.abstention            # in-process app, real model: the sweep, the choice, leave-one-out
    python -m quality.abstention --fp32     # with fp32 query embeddings (the tests' embedder), not int8

The set is quality/answers.json (its answerable questions with their expected phrases, its unanswerable ones far
from the corpus) plus tests/fixtures/answer_abstention.json (more documents, more answerable questions, and
``near_miss`` questions close to a document that does not answer them: "How many vacation days do interns in
Japan get?" against a policy for employees). See docs/answers.md, "Abstaining".

The feature is the best quotable unit's cosine to the question (`Extract.support`, service.app.answer.extractive);
a question whose best unit names one of its code words is always answered (the embedding model reads codes as
noise), and one whose retrieval found no source is the no-context answer whatever the threshold. Abstaining is
the positive class: precision = abstentions that were right / abstentions, recall = unanswerable questions
abstained on / unanswerable questions. The threshold chosen maximises balanced accuracy (the mean of the recall
on unanswerable and the share of answerable questions answered), the lowest such one on ties (refuse less); the
leave-one-out figure picks it without the question it then judges, so it estimates how it does on new questions.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quality.answers import fold
from quality.answers import load as load_answers

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "answer_abstention.json"
MARKERS = r"\s*\[\d+(?:,\s*\d+)*\]"


@dataclass(frozen=True)
class Item:
    id: str
    query: str
    kind: str  # answerable, near_miss, far (unanswerable and far from every document)
    expect: tuple[str, ...]

    @property
    def answerable(self) -> bool:
        return self.kind == "answerable"


def load() -> tuple[list[tuple[str, str, str]], list[Item]]:
    """The documents (id, text, content type) and the labelled questions."""
    _data, documents, questions = load_answers()
    fixture = json.loads(FIXTURE.read_text(encoding="utf-8"))
    docs = [(document_id, text, "text/plain") for document_id, text in documents]
    docs += [(n["document_id"], n["text"], n["content_type"]) for n in fixture["notes"]]
    relabel = fixture["relabel"]
    items = [
        Item(q.id, q.query, "answerable", tuple(relabel[q.id]))
        if q.id in relabel
        else Item(q.id, q.query, "far" if q.kind == "unanswerable" else "answerable", q.expect)
        for q in questions
    ]
    items += [
        Item(q["id"], q["query"], "near_miss" if q["near_miss"] else "answerable", tuple(q["expect"]))
        for q in fixture["questions"]
    ]
    return docs, items


def ingest(client: Any, documents: Sequence[tuple[str, str, str]]) -> None:
    for document_id, text, content_type in documents:
        response = client.put(
            f"/v1/documents/{document_id}", json={"text": text, "content_type": content_type}
        )
        if response.status_code not in (200, 201):
            raise RuntimeError(f"ingest of {document_id} failed ({response.status_code}): {response.text}")


def quotes(body: dict[str, Any]) -> list[str]:
    """The quoted passages of an extractive answer (the text between its markers, any note left out)."""
    if not body["citations"]:
        return []
    text = re.sub(r"\s*Note: .*$", "", body["answer"])
    return [part for part in re.split(MARKERS, text) if part.strip()]


def http_rates(client: Any, items: Sequence[Item]) -> dict[str, float]:
    """Every question through POST /v1/answer (hybrid, the default): abstaining's precision and recall (an answer
    with no citations abstained), ``quoted``: answerable questions whose answer quotes an expected phrase,
    ``focus``: the share of quoted passages that hold one (the rest is padding), over answered answerable ones."""
    abstained, right, passages, holding = [], 0, 0, 0
    for item in items:
        response = client.post("/v1/answer", json={"query": item.query})
        if response.status_code != 200:
            raise RuntimeError(f"answer failed ({response.status_code}): {response.text[:300]}")
        parts = quotes(response.json())
        abstained.append(not parts)
        if item.answerable and parts:
            found = [any(fold(phrase) in fold(part) for phrase in item.expect) for part in parts]
            right += any(found)
            passages += len(parts)
            holding += sum(found)
    result = rates(abstained, items)
    result["quoted"] = right / sum(i.answerable for i in items)
    result["focus"] = holding / passages if passages else 0.0
    return result


def rates(abstained: Sequence[bool], items: Sequence[Item]) -> dict[str, float]:
    """Precision and recall of abstaining, the share of answerable questions answered, balanced accuracy."""
    right = sum(a and not i.answerable for a, i in zip(abstained, items, strict=True))
    unanswerable = sum(not i.answerable for i in items)
    answerable = len(items) - unanswerable
    answered = sum(not a and i.answerable for a, i in zip(abstained, items, strict=True))
    precision = right / sum(abstained) if any(abstained) else 1.0
    recall = right / unanswerable if unanswerable else 1.0
    kept = answered / answerable if answerable else 1.0
    return {"precision": precision, "recall": recall, "answered": kept, "balanced": (recall + kept) / 2}


@dataclass(frozen=True)
class Feature:
    """What the abstention decision sees for one question."""

    no_context: bool  # retrieval found no source: answered "nothing relevant" whatever the threshold
    cosine: float | None  # the best unit's cosine to the question
    coverage: float | None  # the share of the question's BM25 terms the best unit holds
    keyword: bool  # the best unit names a code word of the question: answered whatever its cosine
    unnamed: bool = False  # the best unit's chunk misses a proper name of the question: not answered

    def support(self, weight: float) -> float | None:
        if self.cosine is None or self.coverage is None:
            return None
        return self.cosine + weight * self.coverage

    def abstains(self, threshold: float, weight: float) -> bool:
        support = self.support(weight)
        if self.no_context or support is None:
            return True
        return not self.keyword and (self.unnamed or support < threshold)


def choose(features: Sequence[Feature], items: Sequence[Item], weight: float) -> float:
    """The threshold of best balanced accuracy at ``weight`` (the lowest on ties)."""
    supports = sorted({round(s, 4) for f in features if (s := f.support(weight)) is not None})
    candidates = [0.0, *[(a + b) / 2 for a, b in itertools.pairwise(supports)], supports[-1] + 0.01]
    scored = [(rates([f.abstains(t, weight) for f in features], items)["balanced"], -t) for t in candidates]
    return -max(scored)[1]


def leave_one_out(features: Sequence[Feature], items: Sequence[Item], weight: float) -> dict[str, float]:
    """Rates when each question is judged by the threshold chosen on all the others."""
    abstained = []
    for k in range(len(items)):
        rest_f = [f for j, f in enumerate(features) if j != k]
        rest_i = [i for j, i in enumerate(items) if j != k]
        abstained.append(features[k].abstains(choose(rest_f, rest_i, weight), weight))
    return rates(abstained, items)


def measure(client: Any, items: Sequence[Item], tenant: str = "default") -> list[Feature]:
    """The features of every question, computed by the app's own answer service (in-process)."""
    from service.app.answer.models import AnswerRequest

    service = client.app.state.services.answer

    async def one(query: str) -> Feature:
        prompt, evidence = await service._prompt(tenant, AnswerRequest(query=query))
        if not prompt.sources:
            return Feature(no_context=True, cosine=None, coverage=None, keyword=False)
        extract = service._extract(query, prompt.sources, evidence)
        return Feature(False, extract.cosine, extract.coverage, extract.keyword, extract.unnamed)

    return [client.portal.call(one, item.query) for item in items]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Measure abstaining on the labelled set, pick its threshold."
    )
    parser.add_argument("--fp32", action="store_true", help="fp32 query embeddings (the tests'), not int8")
    precision = "fp32" if parser.parse_args(argv).fp32 else "int8"
    from fastapi.testclient import TestClient

    from service.app.core.config import Settings
    from service.app.main import create_app
    from service.app.store.embedder import FastEmbedEmbedder

    documents, items = load()
    with tempfile.TemporaryDirectory(prefix="rag-abstention-") as tmp:
        # Embedded defaults confined to the temp dir; no auth, limits, cache or background collector in the way.
        settings = Settings(
            _env_file=None,
            environment="test",
            data_dir=Path(tmp),
            redis_url=None,
            auth_disabled=True,
            rate_limit_enabled=False,
            cache_enabled=False,
            gc_enabled=False,
            log_json=False,
            embedding_query_precision=precision,
        )
        # As deployed (int8 query graph by default); the tests' embedder runs fp32 queries (--fp32 to compare).
        embedder = FastEmbedEmbedder.from_settings(settings)
        with TestClient(create_app(settings, embedder=embedder)) as client:
            ingest(client, documents)
            features = measure(client, items)
            through_http = http_rates(client, items)
    print(report(features, items))
    print("\nthrough the HTTP API (hybrid): " + ", ".join(f"{k} {v:.2f}" for k, v in through_http.items()))


WEIGHTS = (0.0, 0.5, 1.0, 1.5, 2.0)


def report(features: Sequence[Feature], items: Sequence[Item]) -> str:
    """Per question its features; per coverage weight the chosen threshold, its rates and leave-one-out's."""
    lines = []
    for item, f in zip(items, features, strict=True):
        cosine = "-" if f.cosine is None else f"{f.cosine:.3f}"
        coverage = "-" if f.coverage is None else f"{f.coverage:.2f}"
        lines.append(
            f"{item.id} {item.kind:10} {cosine:>6} {coverage:>5} {'kw' if f.keyword else '  '} "
            f"{'name' if f.unnamed else '    '} {item.query}"
        )
    lines += [
        f"\n{len(items)} questions: {sum(i.answerable for i in items)} answerable, "
        f"{sum(i.kind == 'near_miss' for i in items)} near misses, {sum(i.kind == 'far' for i in items)} far\n",
        "| coverage weight | threshold | abstain precision | abstain recall | answerable answered | "
        "leave-one-out precision / recall / answered |",
        "|---|---|---|---|---|---|",
    ]
    for weight in WEIGHTS:
        threshold = choose(features, items, weight)
        r = rates([f.abstains(threshold, weight) for f in features], items)
        loo = leave_one_out(features, items, weight)
        lines.append(
            f"| {weight} | {threshold:.3f} | {r['precision']:.2f} | {r['recall']:.2f} | {r['answered']:.2f} | "
            f"{loo['precision']:.2f} / {loo['recall']:.2f} / {loo['answered']:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
