"""The `pod-memory` deployability check: each service pod's memory limit holds what runs in it.

The API pod runs the service process (with its embedding model), the extraction forkserver and EXTRACT_WORKERS
extraction processes, each capped at EXTRACT_MEMORY_MB of address space; the worker pod runs the service process
only (jobs carry extracted text). Each test puts a defect back in the real program (the limits the stacks had, a
larger pool, a second model, a worker without room for its model) and shows the check fails on it.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest

from infra import deployability as d
from infra import embedding_models as em
from infra.components import rag_service as rs
from infra.offline import StackRun
from tests.infra.conftest import STACKS, TARGETS, run


def pod_memory(result: StackRun) -> list[d.Finding]:
    return [f for f in d.analyse(result, waivers={}).findings if f.check == "pod-memory"]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("stack", STACKS)
def test_every_stack_on_every_target_holds_its_pods(stack: str, target: str) -> None:
    assert pod_memory(run(stack, target)) == []


def test_the_api_pod_must_hold_the_extraction_pool() -> None:
    # The limits the stacks had before the check: prod's 2Gi, the 1Gi default (staging) and dev's 768Mi.
    for stack, limit in (("prod", "2Gi"), ("staging", "1Gi"), ("dev", "768Mi")):
        result = run(stack, service={"resources": {"limits": {"memory": limit}}})
        (finding,) = pod_memory(result)
        assert finding.name == "rag-api", stack
        assert f"memory limit {limit}" in finding.message
        assert "EXTRACT_WORKERS x EXTRACT_MEMORY_MB" in finding.message
        assert "service.resources.limits.memory" in finding.fix


def test_the_pool_size_and_the_address_space_limit_count() -> None:
    base = run("prod", "eks")
    limit = base.by_name("rag-api").inputs["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert pod_memory(base) == []
    (finding,) = pod_memory(run("prod", "eks", service={"settings": {"extractWorkers": 3}}))
    assert "(3 x 512)" in finding.message
    assert "lower service.settings.extractWorkers or extractMemoryMb" in finding.fix
    (finding,) = pod_memory(run("prod", "eks", service={"settings": {"extractMemoryMb": 1024}}))
    assert "(2 x 1024)" in finding.message
    # Fewer, smaller workers fit a smaller pod: the rule follows the settings, not a fixed size.
    small = run(
        "prod",
        "eks",
        service={"resources": {"limits": {"memory": "1536Mi"}}, "settings": {"extractWorkers": 1}},
    )
    assert pod_memory(small) == []
    assert limit["memory"] != "1536Mi"


def test_the_worker_pod_holds_its_model_but_runs_no_extraction() -> None:
    # dev's worker had 768Mi: less than one service process embedding a batch.
    (finding,) = pod_memory(run("dev", service={"worker": {"resources": {"limits": {"memory": "768Mi"}}}}))
    assert finding.name == "rag-worker"
    assert "service.worker.resources.limits.memory" in finding.fix
    assert "EXTRACT" not in finding.message
    # A larger extraction pool grows the API's need only: the worker never starts one.
    wide = run("prod", "eks", service={"settings": {"extractWorkers": 8}})
    assert {f.name for f in pod_memory(wide)} == {"rag-api"}


def test_a_second_embedding_model_is_counted_while_the_image_holds_two() -> None:
    server = {"QDRANT_URL": "http://q:6333", "EMBEDDING_MODEL": "BAAI/bge-small-en-v1.5"}
    one = rs.pod_memory_mib("worker", server, ["BAAI/bge-small-en-v1.5"])
    two = rs.pod_memory_mib(
        "worker", server, ["BAAI/bge-small-en-v1.5", "sentence-transformers/all-MiniLM-L6-v2"]
    )
    assert two - one >= em.extra_model_mib("sentence-transformers/all-MiniLM-L6-v2")
    # One more model at most: the largest of the others (shadow or standby), not every model the image holds.
    three = rs.pod_memory_mib(
        "worker",
        server,
        ["BAAI/bge-small-en-v1.5", "sentence-transformers/all-MiniLM-L6-v2", "BAAI/bge-large-en-v1.5"],
    )
    assert three == rs.pod_memory_mib("worker", server, ["BAAI/bge-small-en-v1.5", "BAAI/bge-large-en-v1.5"])
    assert d.image_models({"embedding": {"model": "a", "extraModels": []}}) == ("a",)
    assert d.image_models({"embedding": {"model": "a", "extraModels": ["b", "c"]}}) == ("a", "b", "c")
    assert d.image_models(
        {"image": "x", "promotion": {"models": ["a", "b"]}, "embedding": {"model": "a"}}
    ) == (
        "a",
        "b",
    )
    # A worker limit that holds one model but not two fails once a model change bakes the old model in too.
    limit = f"{int(one) + 1}Mi"
    assert (
        pod_memory(run("prod", "eks", service={"worker": {"resources": {"limits": {"memory": limit}}}})) == []
    )
    changing = run(
        "prod",
        "eks",
        service={"worker": {"resources": {"limits": {"memory": limit}}}},
        embedding={"extraModels": ["sentence-transformers/all-MiniLM-L6-v2"]},
    )
    (finding,) = [f for f in pod_memory(changing) if f.name == "rag-worker"]
    assert "a second embedding model per process (sentence-transformers/all-MiniLM-L6-v2)" in finding.message


def test_the_model_the_stack_serves_sizes_the_process() -> None:
    # The stacks' default keeps its measured 800 MiB; a 2.24 GB multilingual-e5-large does not fit dev's pods.
    assert em.process_mib("BAAI/bge-small-en-v1.5") == pytest.approx(em.REFERENCE_PROCESS_MIB)
    assert em.extra_model_mib("BAAI/bge-small-en-v1.5") == pytest.approx(560, abs=1)
    # The measured model (757 MiB at its ingest peak) is covered by what is counted for it.
    assert em.process_mib("sentence-transformers/all-MiniLM-L6-v2") >= 757
    # Twice the weights while a session loads: a 2.24 GB model needs more than 2 x 2136 MiB.
    assert em.process_mib("intfloat/multilingual-e5-large") > 2 * 2.24e9 / 2**20
    assert pod_memory(run("dev")) == []
    large = pod_memory(run("dev", embedding={"model": "intfloat/multilingual-e5-large"}))
    assert {f.name for f in large} == {"rag-api", "rag-worker"}
    for finding in large:
        assert "service process(es) with intfloat/multilingual-e5-large" in finding.message
    # A large extra model held beside the served one (the standby after a switch) counts too.
    standby = pod_memory(run("dev", embedding={"extraModels": ["intfloat/multilingual-e5-large"]}))
    assert {f.name for f in standby} == {"rag-api", "rag-worker"}
    assert all(
        "a second embedding model per process (intfloat/multilingual-e5-large)" in f.message for f in standby
    )
    # The memory follows the served model from the rendered settings, case as fastembed matches it.
    env = {"QDRANT_URL": "x", "EMBEDDING_MODEL": "intfloat/Multilingual-E5-Large"}
    assert (
        rs.pod_memory_mib("worker", env)
        > rs.pod_memory_mib("worker", {**env, "EMBEDDING_MODEL": "BAAI/bge-small-en-v1.5"}) + 3000
    )


def test_what_the_api_process_holds_follows_its_settings() -> None:
    server = {"QDRANT_URL": "http://qdrant:6333", "EXTRACT_WORKERS": "2", "EXTRACT_MEMORY_MB": "512"}
    parts = dict(rs.pod_memory_parts("api", server))
    assert parts["EXTRACT_WORKERS x EXTRACT_MEMORY_MB (2 x 512)"] == 1024
    assert "the embedded vector store (100k chunks)" not in parts
    # No QDRANT_URL: the process holds the embedded store too.
    embedded = dict(rs.pod_memory_parts("api", {k: v for k, v in server.items() if k != "QDRANT_URL"}))
    assert embedded["the embedded vector store (100k chunks)"] == rs.EMBEDDED_STORE_MIB
    # Two uvicorn processes: each has its model, its forkserver and its own pool.
    double = rs.pod_memory_mib("api", {**server, "WORKERS": "2"})
    assert double > 2 * (rs.pod_memory_mib("api", server) - rs.HEADROOM_MIN_MIB) * 0.99
    # The service's defaults apply to what the settings leave out (service/app/core/config.py).
    assert rs.pod_memory_parts("api", {"QDRANT_URL": "x"}) == rs.pod_memory_parts("api", server)


def test_the_service_defaults_the_rule_assumes_are_the_services() -> None:
    from service.app.core.config import Settings

    fields = Settings.model_fields
    assert fields["extract_workers"].default == rs.SERVICE_DEFAULTS["EXTRACT_WORKERS"]
    assert fields["extract_memory_mb"].default == rs.SERVICE_DEFAULTS["EXTRACT_MEMORY_MB"]
    assert fields["workers"].default == rs.SERVICE_DEFAULTS["WORKERS"]
    assert fields["embedding_model"].default == rs.SERVICE_DEFAULTS["EMBEDDING_MODEL"]


def test_make_plan_reports_the_finding_with_the_fix(tmp_path: Path) -> None:
    from infra import render

    result = run("prod", "eks", service={"resources": {"limits": {"memory": "2Gi"}}})
    report = render.render_run(result, tmp_path, environment="prod")
    assert not report.ok
    plan = (tmp_path / "plan.md").read_text()
    assert "pod-memory" in plan
    assert "rag-api" in plan


def with_api_limit(result: StackRun, limit: str) -> StackRun:
    resource = result.by_name("rag-api")
    inputs = copy.deepcopy(resource.inputs)
    inputs["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] = limit
    new = dataclasses.replace(resource, inputs=inputs)
    return dataclasses.replace(result, resources=[new if r is resource else r for r in result.resources])


def test_a_limit_in_other_units_is_read_as_bytes() -> None:
    result = run("prod", "eks")
    env = {"QDRANT_URL": "x", "EXTRACT_WORKERS": "2", "EXTRACT_MEMORY_MB": "512"}
    need = rs.pod_memory_mib("api", {**env, "EMBEDDING_MODEL": "BAAI/bge-small-en-v1.5"})
    short = with_api_limit(result, str(int(need * 2**20) - 2**20))  # plain bytes, 1 MiB short
    assert [f.name for f in pod_memory(short)] == ["rag-api"]
    assert pod_memory(with_api_limit(result, f"{(need + 1) / 1024:.3f}Gi")) == []
