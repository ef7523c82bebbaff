"""The fused MiniLM graph `make model` writes computes what the standard-operator graph computes.

`export_minilm` writes the encoder in ONNX Runtime's fused CPU kernels (Attention, BiasGelu,
EmbedLayerNormalization; docs/model.md); `--standard-ops` writes the same math in standard ONNX operators, node by
node as transformers' BertModel. Both come from the same weights here and must agree on hidden states (for any
attention mask, not only right padding), on the pooled vectors the service stores, on the sentence-transformers
reference, and on search rankings over the test corpus.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from service.app.store.embedder import FastEmbedEmbedder
from service.tools import export_minilm

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
CORPUS = Path(__file__).resolve().parent / "fixtures" / "corpus.json"


def _session(model: onnx.ModelProto | Path, optimized: Path | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = 1
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def standard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`python -m service.tools.export_minilm --standard-ops`: the same math in standard ONNX operators."""
    out = tmp_path_factory.mktemp("standard") / "model"
    assert export_minilm.main(["--out", str(out), "--standard-ops"]) == 0
    return out


@pytest.fixture(scope="module")
def standard(standard_dir: Path) -> FastEmbedEmbedder:
    return FastEmbedEmbedder(MODEL, model_path=standard_dir, batch_size=4)


@pytest.fixture(scope="module")
def fused(model_dir: Path) -> FastEmbedEmbedder:
    return FastEmbedEmbedder(MODEL, model_path=model_dir, batch_size=4)


def test_make_model_writes_the_fused_graph(model_dir: Path) -> None:
    graph = onnx.load(str(model_dir / "model.onnx")).graph
    ops = Counter((node.domain, node.op_type) for node in graph.node)
    assert ops[("com.microsoft", "Attention")] == 6
    assert ops[("com.microsoft", "BiasGelu")] == 6
    assert ops[("com.microsoft", "EmbedLayerNormalization")] == 1
    assert not {op for domain, op in ops if domain == ""} & {"Erf", "Softmax", "Transpose", "Reshape"}
    assert json.loads((model_dir / "export_info.json").read_text())["graph"] == "onnxruntime-fused"
    # the interface fastembed and the service's session use is unchanged
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o.name for o in graph.output] == ["last_hidden_state"]


def test_onnx_runtime_keeps_the_residual_layer_norm_off_skip_layer_norm(
    model_dir: Path, tmp_path: Path
) -> None:
    """ORT would fuse Add + Add + LayerNormalization into SkipLayerNormalization, 3-4x slower on CPU (1.31)."""
    optimized = tmp_path / "optimized.onnx"
    _session(model_dir / "model.onnx", optimized)
    ops = Counter(node.op_type for node in onnx.load(str(optimized), load_external_data=False).graph.node)
    assert ops["SkipLayerNormalization"] == 0
    assert ops["LayerNormalization"] == 12
    assert ops["Attention"] == 6


def test_standard_ops_export_uses_only_standard_operators(standard_dir: Path) -> None:
    graph = onnx.load(str(standard_dir / "model.onnx")).graph
    assert {node.domain for node in graph.node} == {""}
    assert json.loads((standard_dir / "export_info.json").read_text())["graph"] == "standard"


def test_fused_hidden_states_equal_the_standard_graph_for_any_mask(
    model_dir: Path, standard_dir: Path
) -> None:
    standard = _session(standard_dir / "model.onnx")
    fused = _session(model_dir / "model.onnx")
    rng = np.random.default_rng(13)
    for batch, seq in ((1, 17), (3, 64), (2, 256)):
        ids = rng.integers(999, 30522, (batch, seq)).astype(np.int64)
        ids[:, 0] = 101
        mask = np.ones_like(ids)
        mask[1:, seq // 2 :] = 0  # right padding, as fastembed pads a batch
        mask[0, 3:6] = 0  # and keys masked in the middle: the graph must honour any mask
        token_types = np.zeros_like(ids)
        token_types[:, seq // 3 :] = 1
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": token_types}
        expected = standard.run(None, feed)[0]
        actual = fused.run(None, feed)[0]
        assert actual.shape == expected.shape == (batch, seq, 384)
        # every position, padded ones too (they are not pooled, but the output is the same tensor)
        assert np.abs(actual - expected).max() < 2e-5  # measured 4.8e-6

        def pooled(hidden: np.ndarray) -> np.ndarray:
            summed = (hidden * mask[..., None]).sum(axis=1) / mask.sum(axis=1, keepdims=True)
            return summed / np.linalg.norm(summed, axis=1, keepdims=True)

        assert np.abs(pooled(actual) - pooled(expected)).max() < 1e-6  # measured 1.1e-7


def test_both_graphs_match_the_sentence_transformers_reference(
    fused: FastEmbedEmbedder, standard: FastEmbedEmbedder
) -> None:
    reference = json.loads((FIXTURES / "minilm_reference.json").read_text(encoding="utf-8"))
    expected = np.array(reference["vectors"])
    for embedder in (fused, standard):
        actual = np.array(embedder.embed_documents(reference["sentences"]))
        assert np.abs(actual - expected).max() < 2e-6  # measured 6.3e-7 and 6.1e-7 (fixture rounded to 1e-6)


def test_search_rankings_over_the_test_corpus_are_unchanged(
    fused: FastEmbedEmbedder, standard: FastEmbedEmbedder
) -> None:
    corpus = json.loads(CORPUS.read_text(encoding="utf-8"))
    texts = [document["text"] for document in corpus["documents"].values()]
    queries = list(corpus["queries"])
    embedders = {"fused": fused, "standard": standard}
    documents = {name: np.array(e.embed_documents(texts)) for name, e in embedders.items()}
    vectors = {name: np.array([e.embed_query(q) for q in queries]) for name, e in embedders.items()}
    assert np.abs(vectors["fused"] - vectors["standard"]).max() < 1e-6
    assert np.abs(documents["fused"] - documents["standard"]).max() < 1e-6
    rankings = {
        name: np.argsort(-(vectors[name] @ documents[name].T), axis=1, kind="stable") for name in embedders
    }
    assert (rankings["fused"] == rankings["standard"]).all()  # the whole ranking, not only the top 5
