"""Score POST /v1/answer on a small labelled question set: do the cited sources hold the answer?

    python -m quality.answers                       # start the service, ingest, print the table per mode
    python -m quality.answers --modes hybrid --write-json out.json
    python -m quality.answers --url http://127.0.0.1:8000   # an already running service (its data is kept)

The set (quality/answers.json) is man pages of the CI subset (quality/ci_corpus.json) plus hard-wrapped team
notes (a runbook with error codes, an expense policy, Markdown policies), and questions of three kinds:
``keyword`` (error codes and identifiers: what hybrid retrieval exists for), ``question`` (plain words) and
``unanswerable`` (nothing in the corpus answers them; a pay code that is not in the runbook is one).

Per question and mode (the answer is the default extractive one, so every word of it is quoted):

- ``cited``: a cited source contains one of the labelled answer phrases (whitespace and case folded);
- ``quoted``: the answer text itself contains one (the extractive answer quoted the right sentence whole);
- ``wrong``: an answer was given (citations) and no cited source holds the answer;
- ``refused``: for an unanswerable question, the service said it found nothing relevant (no citations).

The gate (tests/service/test_answer_eval.py) runs this in-process and fails below the floors in the set file.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from quality.corpus import Page
from quality.evaluate import CI_CORPUS, ServiceProcess, document_text

ANSWERS = Path(__file__).with_name("answers.json")
KINDS = ("keyword", "question", "unanswerable")
MARKER = re.compile(r"\s*\[\d+(?:,\s*\d+)*\]")


@dataclass(frozen=True)
class Question:
    id: str
    kind: str
    query: str
    document_id: str | None
    expect: tuple[str, ...]


def fold(text: str) -> str:
    """Whitespace runs to one space, lower case: hard-wrapped sources match a phrase on one line."""
    return " ".join(text.split()).lower()


def load() -> tuple[dict[str, Any], list[tuple[str, str]], list[Question]]:
    """The set file, its documents as (document_id, text) and its questions."""
    data = json.loads(ANSWERS.read_text(encoding="utf-8"))
    pages = {page["document_id"]: Page(**page) for page in json.loads(CI_CORPUS.read_text())["pages"]}
    documents = [(page_id, document_text(pages[page_id])) for page_id in data["pages"]]
    documents += [(note["document_id"], note["text"]) for note in data["notes"]]
    questions = [
        Question(q["id"], q["kind"], q["query"], q["document_id"], tuple(q["expect"]))
        for q in data["questions"]
    ]
    return data, documents, questions


def ingest(client: httpx.Client, documents: Sequence[tuple[str, str]]) -> int:
    """PUT every document (plain text); the number of chunks made."""
    chunks = 0
    for document_id, text in documents:
        body = {"text": text, "content_type": "text/plain"}
        response = client.put(f"/v1/documents/{document_id}", json=body)
        if response.status_code not in (200, 201):
            raise RuntimeError(f"ingest of {document_id} failed ({response.status_code}): {response.text}")
        chunks += response.json()["chunks"]
    return chunks


def judge(question: Question, body: dict[str, Any]) -> dict[str, float]:
    """The scores of one answer (see the module docstring)."""
    citations = body["citations"]
    if question.kind == "unanswerable":
        return {"refused": float(not citations)}
    phrases = [fold(phrase) for phrase in question.expect]
    cited = any(phrase in fold(c["text"]) for c in citations for phrase in phrases)
    answer = fold(MARKER.sub("", body["answer"])) if citations else ""
    return {
        "cited": float(cited),
        "quoted": float(any(phrase in answer for phrase in phrases)),
        "wrong": float(bool(citations) and not cited),
    }


Ask = Callable[[str, str], dict[str, Any]]  # (query, mode) -> the /v1/answer response body


def http_answer(client: httpx.Client) -> Ask:
    def ask(query: str, mode: str) -> dict[str, Any]:
        response = client.post("/v1/answer", json={"query": query, "mode": mode})
        if response.status_code != 200:
            raise RuntimeError(f"answer failed ({response.status_code}): {response.text[:300]}")
        return response.json()  # type: ignore[no-any-return]

    return ask


def evaluate(ask: Ask, questions: Sequence[Question], modes: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per mode: the mean of each score per kind, and the per-question rows."""
    results: dict[str, dict[str, Any]] = {}
    for mode in modes:
        rows: dict[str, dict[str, float]] = {}
        by_kind: dict[str, list[dict[str, float]]] = defaultdict(list)
        for question in questions:
            rows[question.id] = judge(question, ask(question.query, mode))
            by_kind[question.kind].append(rows[question.id])
        kinds = {
            kind: {metric: round(statistics.fmean(r[metric] for r in found), 3) for metric in found[0]}
            for kind, found in by_kind.items()
        }
        results[mode] = {"kinds": kinds, "questions": rows}
    return results


def below_floors(results: dict[str, dict[str, Any]], floors: dict[str, Any]) -> list[str]:
    """Every ``mode/kind/metric`` under its floor, or over its ceiling for ``wrong`` (a rate to keep low)."""
    problems = []
    for mode, kinds in floors.items():
        for kind, metrics in kinds.items():
            for metric, bound in metrics.items():
                value = results[mode]["kinds"][kind][metric]
                if (value > bound) if metric == "wrong" else (value < bound):
                    problems.append(f"{mode}/{kind}/{metric} = {value} (bound {bound})")
    return problems


def format_table(results: dict[str, dict[str, Any]], counts: dict[str, int]) -> str:
    lines = [
        "| mode | keyword cited | keyword quoted | keyword wrong | question cited | question quoted | "
        "question wrong | unanswerable refused |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode, result in results.items():
        k, q, u = (result["kinds"][kind] for kind in KINDS)
        lines.append(
            f"| {mode} | {k['cited']:.2f} | {k['quoted']:.2f} | {k['wrong']:.2f} | {q['cited']:.2f} | "
            f"{q['quoted']:.2f} | {q['wrong']:.2f} | {u['refused']:.2f} |"
        )
    lines.append(
        f"\n{counts['keyword']} keyword, {counts['question']} plain, {counts['unanswerable']} unanswerable questions"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Score /v1/answer's citations on the labelled question set.")
    parser.add_argument("--modes", nargs="+", default=["dense", "sparse", "hybrid"], help="retrieval modes")
    parser.add_argument("--url", help="use a running service instead of starting one (its data is kept)")
    parser.add_argument("--write-json", type=Path, help="also write the results as JSON")
    args = parser.parse_args(argv)
    _data, documents, questions = load()
    with tempfile.TemporaryDirectory(prefix="rag-answers-") as tmp:
        service = None if args.url else ServiceProcess(Path(tmp) / "data")
        url = args.url or service.url  # type: ignore[union-attr]
        try:
            with httpx.Client(base_url=url, timeout=600) as client:
                chunks = ingest(client, documents)
                print(f"{len(documents)} documents, {chunks} chunks", file=sys.stderr)
                results = evaluate(http_answer(client), questions, args.modes)
        finally:
            if service is not None:
                service.stop()
    counts = {kind: sum(q.kind == kind for q in questions) for kind in KINDS}
    print(format_table(results, counts))
    for mode, result in results.items():
        misses = [qid for qid, row in result["questions"].items() if not row.get("cited", row.get("refused"))]
        print(f"{mode}: missed {', '.join(misses) or 'none'}")
    if args.write_json:
        args.write_json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
