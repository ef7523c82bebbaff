"""docs/operations.md's metrics table names every series the service exports (EYES9 L6: alerts and runbooks used
series the table did not list, so an operator reading the table could not find them)."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram, Summary

from service.app.core import metrics

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def exported_names() -> set[str]:
    names = set()
    for value in vars(metrics).values():
        if isinstance(value, Counter):
            names.add(f"{value._name}_total")
        elif isinstance(value, (Gauge, Histogram, Summary)):
            names.add(value._name)
    return names


def test_every_series_the_service_exports_is_in_the_operations_metrics_table() -> None:
    names = exported_names()
    assert len(names) > 30  # the module's metrics were found at all
    doc = DOC.read_text(encoding="utf-8")
    missing = sorted(name for name in names if f"`{name}`" not in doc)
    assert missing == [], f"docs/operations.md's metrics table lacks {missing}"
