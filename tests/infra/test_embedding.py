"""`rag:embedding` and `rag:adminApiKey` reach what is deployed: the model the service embeds with (ConfigMap
EMBEDDING_MODEL) is the one the image the stack builds bakes in (build args), a promoted image's recorded models
are checked against it, and the admin key `ragops reindex` uses is the one the pods run with."""

from __future__ import annotations

import json

from infra.offline import StackRun
from tests.infra.conftest import run

DIGEST = "ghcr.io/example/rag-service@sha256:" + "e" * 64
BGE = "BAAI/bge-small-en-v1.5"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def _config_map(result: StackRun) -> dict[str, str]:
    return next(
        r.inputs["data"]
        for r in result.resources
        if r.type == "kubernetes:core/v1:ConfigMap" and "EMBEDDING_MODEL" in r.inputs.get("data", {})
    )


def _build_args(result: StackRun) -> dict[str, str] | None:
    images = [r for r in result.resources if r.type.startswith("docker-build:")]
    return images[0].inputs.get("buildArgs") if images else None


def test_the_default_model_is_built_into_the_image_and_configured() -> None:
    result = run("dev")
    assert _config_map(result)["EMBEDDING_MODEL"] == BGE
    assert _build_args(result) == {"EMBEDDING_MODEL": BGE, "EMBEDDING_MODELS": BGE}
    assert result.outputs["embedding"] == {
        "model": BGE,
        "chunkSize": 200,
        "chunkOverlap": 32,
        "imageModels": [BGE],
    }


def test_a_model_change_bakes_the_new_model_and_keeps_the_old_one_listed() -> None:
    result = run(
        "dev", embedding={"model": MINILM, "extraModels": [BGE]}, service={"settings": {"chunkSize": 128}}
    )
    assert _config_map(result)["EMBEDDING_MODEL"] == MINILM
    assert _config_map(result)["CHUNK_SIZE"] == "128"
    assert _build_args(result) == {"EMBEDDING_MODEL": MINILM, "EMBEDDING_MODELS": f"{MINILM} {BGE}"}
    assert result.outputs["embedding"]["imageModels"] == [MINILM, BGE]
    assert result.outputs["embedding"]["chunkSize"] == 128


def test_a_promoted_image_builds_nothing_and_exports_the_models_it_was_built_with() -> None:
    record = {
        "from": "dev",
        "digest": DIGEST,
        "at": "2026-11-22T08:00:00Z",
        "by": "ci",
        "models": [MINILM, BGE],
    }
    result = run("staging", image=DIGEST, promotion=record, embedding={"model": MINILM, "extraModels": [BGE]})
    assert _build_args(result) is None
    assert _config_map(result)["EMBEDDING_MODEL"] == MINILM
    assert result.outputs["embedding"]["imageModels"] == [MINILM, BGE]
    assert result.outputs["promotion"] == record
    # A promotion recorded before models were: nothing to check against, and nothing claimed.
    old = {k: v for k, v in record.items() if k != "models"}
    assert run("staging", image=DIGEST, promotion=old).outputs["embedding"]["imageModels"] is None


def test_the_exported_admin_key_is_the_one_the_service_runs_with() -> None:
    for result in (run("dev"), run("prod"), run("dev", adminApiKey="offline-admin-key-0123456789abcdef")):
        secret = next(
            r
            for r in result.resources
            if r.type == "kubernetes:core/v1:Secret" and "API_KEYS" in str(r.inputs)
        )
        assert "adminApiKey" in result.secret_outputs
        assert result.outputs["adminApiKey"] == secret.inputs["stringData"]["ADMIN_API_KEY"]
        assert len(result.outputs["adminApiKey"]) >= 32
    assert run("dev", adminApiKey="offline-admin-key-0123456789abcdef").outputs["adminApiKey"] == (
        "offline-admin-key-0123456789abcdef"
    )
    assert json.loads(run("dev").outputs["apiKeys"])  # the tenant key is another secret
