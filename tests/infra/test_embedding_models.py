"""The table of embedding models the infra accepts is the list the service can load at the pinned fastembed.

The Pulumi program does not import fastembed; this test holds its copy to the installed one, so an upgrade that
adds, drops or resizes a model fails here rather than in a pod. A model the stack names that is not in the table
is a config error naming the key and the stack file.
"""

from __future__ import annotations

from importlib.metadata import version

import pytest

from infra import embedding_models as em
from infra.config import ConfigError
from tests.infra.conftest import run


def test_the_table_is_fastembeds_onnx_text_models_at_the_pinned_version() -> None:
    from fastembed import TextEmbedding
    from fastembed.text.static_embedding import StaticTextEmbedding

    assert version("fastembed") == em.FASTEMBED_VERSION
    static = {d.model for d in StaticTextEmbedding._list_supported_models()}
    listed = {
        (d["model"], d["dim"], d["size_in_GB"])
        for d in TextEmbedding.list_supported_models()
        if d["model"] not in static
    }
    assert {(m.name, m.dim, m.size_gb) for m in em.MODELS} == listed
    # The static models are left out because their weights are no ONNX graph, which the service's session needs.
    assert all(not d.model_file.endswith(".onnx") for d in StaticTextEmbedding._list_supported_models())


def test_the_service_fetch_tool_accepts_every_model_of_the_table() -> None:
    from service.tools.fetch_model import supported_models

    assert {m.name for m in em.MODELS} <= set(supported_models())


@pytest.mark.parametrize(
    ("key", "overrides", "bad"),
    [
        ("rag:embedding.model", {"model": "foo/bar"}, "foo/bar"),
        (
            "rag:embedding.extraModels",
            {"extraModels": ["intfloat/e5-nonexistent"]},
            "intfloat/e5-nonexistent",
        ),
        ("rag:embedding.model", {"model": "minishlab/potion-base-8M"}, "minishlab/potion-base-8M"),
    ],
)
def test_a_model_the_service_cannot_load_is_refused(key: str, overrides: dict, bad: str) -> None:
    with pytest.raises(ConfigError) as caught:
        run("dev", embedding=overrides)
    assert caught.value.key == key
    assert caught.value.stack_file == "Pulumi.dev.yaml"
    assert repr(bad) in str(caught.value)
    assert "BAAI/bge-small-en-v1.5" in str(caught.value)


def test_a_model_of_the_table_is_accepted_in_any_case() -> None:
    assert em.find("baai/BGE-small-en-v1.5") is em.find("BAAI/bge-small-en-v1.5")
    result = run("dev", embedding={"model": "sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2"})
    config_map = next(
        r
        for r in result.of_type("kubernetes:core/v1:ConfigMap")
        if "EMBEDDING_MODEL" in (r.inputs.get("data") or {})
    )
    assert (
        config_map.inputs["data"]["EMBEDDING_MODEL"]
        == "sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2"
    )
