"""Download the configured embedding model into fastembed's cache, for an image's build stage.

    EMBEDDING_MODEL=BAAI/bge-small-en-v1.5 EMBEDDING_CACHE_DIR=/models python -m service.tools.fetch_model

Defaults come from the service settings (EMBEDDING_MODEL, EMBEDDING_CACHE_DIR); `--model`/`--cache-dir` override
them. The model is loaded once after the download, so a broken or partial fetch fails the build, not the first
request. At run time the service finds it in the same cache dir and downloads nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from service.app.core.config import Settings


def supported_models() -> list[str]:
    """The model names fastembed's TextEmbedding can fetch and run."""
    from fastembed import TextEmbedding

    return [description["model"] for description in TextEmbedding.list_supported_models()]


def parse_args(argv: list[str] | None, settings: Settings | None = None) -> argparse.Namespace:
    """Parse the command line; what the flags leave out comes from `settings` (read from the environment)."""
    parser = argparse.ArgumentParser(
        prog="python -m service.tools.fetch_model", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model", default=None, help="fastembed model name (default: EMBEDDING_MODEL)")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="fastembed cache directory (default: EMBEDDING_CACHE_DIR)",
    )
    args = parser.parse_args(argv)
    # Settings are only read when needed: a build stage passing both flags need not hold a valid service config.
    if args.model is None or args.cache_dir is None:
        settings = Settings() if settings is None else settings
        args.model = args.model or settings.embedding_model
        args.cache_dir = args.cache_dir or settings.resolved_embedding_cache_dir
    return args


def fetch(model: str, cache_dir: Path) -> Path:
    """Download `model` into `cache_dir`, load it once, and return the model's directory."""
    from fastembed import TextEmbedding

    known = {name.lower() for name in supported_models()}
    if model.lower() not in known:
        raise ValueError(
            f"EMBEDDING_MODEL {model!r} is not a fastembed model (see TextEmbedding.list_supported_models())"
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    embedding = TextEmbedding(model, cache_dir=str(cache_dir))
    model_dir = Path(embedding.model._model_dir)
    if not (model_dir / "tokenizer.json").is_file():
        raise ValueError(f"{model} was fetched to {model_dir} but has no tokenizer.json")
    next(iter(embedding.embed(["build-time check"])))
    return model_dir


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; one error line and exit 1 on failure."""
    args = parse_args(argv)
    try:
        model_dir = fetch(args.model, args.cache_dir)
    except ValueError as exc:
        print(f"fetch_model: error: {exc}", file=sys.stderr)
        return 1
    print(f"fetch_model: {args.model} ready in {model_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
