"""docs/operations.md's metrics table names every series the service exports (EYES9 L6: alerts and runbooks used
series the table did not list, so an operator reading the table could not find them).

The names come from what a real `python -m service` answers on /metrics (so families rendered by the route
itself, such as `rag_documents`, are seen), together with every metric object of service.app.core.metrics (some
are only sampled by the worker's port); each must be the first cell of a row of the table under "## Metrics",
not merely mentioned somewhere in the file."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from prometheus_client import Counter, Gauge, Histogram, Summary

from service.app.core import metrics
from tests.support.processes import _stop, start_api

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
_TYPE_LINE = re.compile(r"^# TYPE (rag_\w+) (\w+)$", re.MULTILINE)
_ROW = re.compile(r"^\| `(rag_\w+)` \|", re.MULTILINE)


def module_names() -> set[str]:
    names = set()
    for value in vars(metrics).values():
        if isinstance(value, Counter):
            names.add(f"{value._name}_total")
        elif isinstance(value, (Gauge, Histogram, Summary)):
            names.add(value._name)
    return names


def scraped_names(body: str) -> set[str]:
    """Family names of a Prometheus text body, counters with their `_total` as they are queried."""
    names = set()
    for name, kind in _TYPE_LINE.findall(body):
        if name.endswith("_created") and kind == "gauge":
            continue  # prometheus_client's creation time of a counter or histogram, not a series of its own
        names.add(name if kind != "counter" or name.endswith("_total") else f"{name}_total")
    return names


def table_rows(doc: str) -> set[str]:
    """Metric names in the first cell of the rows of the table in the "## Metrics" section."""
    section = doc.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    return set(_ROW.findall(section))


def test_table_rows_are_told_apart_from_mentions() -> None:
    doc = "# Ops\n\n## Metrics\n\nsee `rag_a` and `rag_b_total`\n\n| `rag_c` | gauge | |\n\n## Next\n\n| `rag_d` | gauge | |\n"
    assert table_rows(doc) == {"rag_c"}
    assert scraped_names(
        "# TYPE rag_x counter\n# TYPE rag_y_total counter\n# TYPE rag_z gauge\n# TYPE go_q gauge\n# TYPE rag_x_created gauge\n"
    ) == {
        "rag_x_total",
        "rag_y_total",
        "rag_z",
    }


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> str:
    """What a real `python -m service` answers on /metrics after one write (no consolidation has run)."""
    api = start_api(tmp_path_factory.mktemp("metrics"), auth_disabled="true")
    try:
        assert httpx.put(f"{api.url}/v1/documents/d", json={"text": "one"}, timeout=60).status_code == 201
        return httpx.get(f"{api.url}/metrics", timeout=60).text
    finally:
        _stop(api.proc)


def test_counters_have_no_created_twins_and_fixed_labels_start_at_zero(scraped: str) -> None:
    """EYES10: every counter had a `_created` series nothing reads, and `rag_edge_consolidations_total` had no
    sample until the first consolidation (an alert or rate() on it saw nothing rather than 0)."""
    assert "rag_http_requests_total" in scraped  # the scrape is the service's
    assert "_created" not in scraped
    samples = dict(line.rsplit(" ", 1) for line in scraped.splitlines() if line and not line.startswith("#"))
    for outcome in ("swapped", "unchanged", "skipped", "replay_limit", "discarded"):
        assert samples[f'rag_edge_consolidations_total{{outcome="{outcome}"}}'] == "0.0", outcome
    for reason in ("header_timeout", "body_idle", "body_slow"):
        assert samples[f'rag_http_connections_closed_total{{reason="{reason}"}}'] == "0.0", reason
    assert samples['rag_documents_ingested_total{status="created"}'] == "1.0"
    assert samples['rag_documents_ingested_total{status="superseded"}'] == "0.0"
    assert samples['rag_extractions_total{outcome="extract_memory_mb",where="worker"}'] == "0.0"


def test_every_series_the_service_exports_is_a_row_of_the_operations_metrics_table(scraped: str) -> None:
    body = scraped
    scraped = scraped_names(body)
    assert "rag_documents" in scraped  # rendered by the route, not by service.app.core.metrics
    names = scraped | module_names()
    assert len(names) > 30  # the families were found at all
    rows = table_rows(DOC.read_text(encoding="utf-8"))
    missing = sorted(names - rows)
    assert missing == [], f"docs/operations.md's metrics table (## Metrics) has no row for {missing}"
