"""GC_GRACE_SECONDS below the safe floor is refused with an error naming it (a write that passed its age check can
still be committing when a collection starts: with a grace of seconds the collector would remove its points), and
0 only where nothing else can write (the embedded single-process service, whose own writes then all refuse)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.app.core.config import MIN_GC_GRACE_SECONDS, Settings
from tests.service.test_startup_errors import assert_one_line_error, run_service


@pytest.mark.parametrize("grace", [0.5, 5, MIN_GC_GRACE_SECONDS - 1])
def test_a_grace_below_the_floor_is_refused_naming_the_key(grace: float) -> None:
    with pytest.raises(ValidationError, match=r"GC_GRACE_SECONDS=\S+ is below the safe floor of 60 s"):
        Settings(_env_file=None, gc_grace_seconds=grace)


@pytest.mark.parametrize(
    ("setting", "value", "named"),
    [
        ("qdrant_url", "http://qdrant:6333", "QDRANT_URL"),
        ("vector_store_url", "http://api:8000", "VECTOR_STORE_URL"),
        ("redis_url", "redis://redis:6379/0", "REDIS_URL"),
        ("workers", 2, "WORKERS>1"),
    ],
)
def test_zero_is_refused_where_another_process_may_write(setting: str, value: object, named: str) -> None:
    with pytest.raises(ValidationError, match=f"GC_GRACE_SECONDS=0 is refused with {named} set"):
        Settings(_env_file=None, gc_grace_seconds=0, **{setting: value})


def test_zero_on_the_embedded_single_process_service_and_the_floor_itself_are_accepted() -> None:
    assert Settings(_env_file=None, gc_grace_seconds=0).gc_grace_seconds == 0
    # The embedded store is locked to one process whatever the registry: a Postgres registry adds no writer to it.
    postgres = "postgresql+psycopg://rag@db/rag"
    assert Settings(_env_file=None, gc_grace_seconds=0, database_url=postgres).gc_grace_seconds == 0
    assert (
        Settings(_env_file=None, gc_grace_seconds=MIN_GC_GRACE_SECONDS).gc_grace_seconds
        == MIN_GC_GRACE_SECONDS
    )


def test_the_service_refuses_to_start_with_one_line_naming_the_key(tmp_path: Path) -> None:
    result = run_service(tmp_path / "data", GC_GRACE_SECONDS="5")
    assert_one_line_error(result, "GC_GRACE_SECONDS=5", "safe floor")
