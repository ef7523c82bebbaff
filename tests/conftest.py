"""Shared test fixtures: the real embedder on the offline all-MiniLM-L6-v2 export (built by `make model`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.app.store.embedder import FastEmbedEmbedder

# A test still hanging after pytest-timeout failed it ends the run with every stack (see the module).
pytest_plugins = ["tests.support.hang_backstop"]

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_DIR = REPO_ROOT / ".models" / "all-MiniLM-L6-v2"


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The exported ONNX model directory; fails (never skips) when it has not been built."""
    if not (MODEL_DIR / "model.onnx").is_file():
        pytest.fail(f"{MODEL_DIR / 'model.onnx'} is missing: run `make model` first", pytrace=False)
    return MODEL_DIR


@pytest.fixture(scope="session")
def embedder(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> FastEmbedEmbedder:
    """One real FastEmbedEmbedder for the whole session (loading the model takes about a second)."""
    return FastEmbedEmbedder(
        "sentence-transformers/all-MiniLM-L6-v2",
        model_path=model_dir,
        cache_dir=tmp_path_factory.mktemp("fastembed-cache"),
    )
