"""The embedding models the service can run, with what each costs a service process in memory.

The service loads any ONNX text model of fastembed's `TextEmbedding` (`service.app.store.embedder`, which builds
its own ONNX Runtime session from the model's file; `service.tools.fetch_model` bakes it into the image). This is
that list at the pinned fastembed (constraints.txt), copied rather than imported so the Pulumi program needs
neither fastembed nor ONNX Runtime; `tests/infra/test_embedding_models.py` holds it to the installed fastembed, so
an upgrade that adds, drops or resizes a model fails there. Left out: fastembed's static (model2vec) models
(`minishlab/potion-*`), whose weights are a safetensors file the service's ONNX session cannot load.

`process_mib` is what `make plan`'s `pod-memory` check counts for a model (docs/infra.md, "Pod memory"). It was
measured for one model only (all-MiniLM-L6-v2, 757 MiB at the ingest peak); other models are scaled from that:
- the weights, at fastembed's download size (`size_in_GB`): ONNX Runtime holds them once when serving, but while
  a session loads it holds the parsed file and the initializers built from it at once, so a process peaks at
  twice its weights during start-up. A model counts max(weights, arena) on top of its weights;
- ONNX Runtime's arena while embedding ingest batches (~430 MiB measured at hidden size 384): the activations of a
  transformer layer grow with its hidden size, so the arena is scaled by the model's dimension (its hidden size
  for the BERT-family encoders in the list; the length of a chunk is the service's chunkSize, not the model's);
- the rest of the process (interpreter, libraries, tokenizer, the store's client): what remains of the 800 MiB
  counted for the stacks' default BAAI/bge-small-en-v1.5, so that model keeps its measured figure.
A model far from the measured one (a 2 GB multilingual-e5-large) is an estimate: measure it before trusting a
tight limit.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The fastembed version this table was taken from (constraints.txt pins it).
FASTEMBED_VERSION = "0.9.1"


@dataclass(frozen=True)
class EmbeddingModel:
    """One model of fastembed's TextEmbedding: its name, output dimension and download size."""

    name: str
    dim: int
    size_gb: float

    @property
    def weights_mib(self) -> float:
        """The model's weights in MiB (fastembed's `size_in_GB` is in 10**9 bytes)."""
        return self.size_gb * 1e9 / 2**20


MODELS: tuple[EmbeddingModel, ...] = (
    EmbeddingModel("BAAI/bge-base-en", 768, 0.42),
    EmbeddingModel("BAAI/bge-base-en-v1.5", 768, 0.21),
    EmbeddingModel("BAAI/bge-large-en-v1.5", 1024, 1.2),
    EmbeddingModel("BAAI/bge-small-en", 384, 0.13),
    EmbeddingModel("BAAI/bge-small-en-v1.5", 384, 0.067),
    EmbeddingModel("BAAI/bge-small-zh-v1.5", 512, 0.09),
    EmbeddingModel("mixedbread-ai/mxbai-embed-large-v1", 1024, 0.64),
    EmbeddingModel("snowflake/snowflake-arctic-embed-xs", 384, 0.09),
    EmbeddingModel("snowflake/snowflake-arctic-embed-s", 384, 0.13),
    EmbeddingModel("snowflake/snowflake-arctic-embed-m", 768, 0.43),
    EmbeddingModel("snowflake/snowflake-arctic-embed-m-long", 768, 0.54),
    EmbeddingModel("snowflake/snowflake-arctic-embed-l", 1024, 1.02),
    EmbeddingModel("jinaai/jina-clip-v1", 768, 0.55),
    EmbeddingModel("Qdrant/constella-zero", 1024, 0.03),
    EmbeddingModel("Qdrant/stella-en-400M-v5-doc-onnx", 1024, 1.75),
    EmbeddingModel("Qdrant/clip-ViT-B-32-text", 512, 0.25),
    EmbeddingModel("google/siglip2-base-patch16-224", 768, 1.13),
    EmbeddingModel("sentence-transformers/all-MiniLM-L6-v2", 384, 0.09),
    EmbeddingModel("jinaai/jina-embeddings-v2-base-en", 768, 0.52),
    EmbeddingModel("jinaai/jina-embeddings-v2-small-en", 512, 0.12),
    EmbeddingModel("jinaai/jina-embeddings-v2-base-de", 768, 0.64),
    EmbeddingModel("jinaai/jina-embeddings-v2-base-code", 768, 0.64),
    EmbeddingModel("jinaai/jina-embeddings-v2-base-zh", 768, 0.64),
    EmbeddingModel("jinaai/jina-embeddings-v2-base-es", 768, 0.64),
    EmbeddingModel("thenlper/gte-base", 768, 0.44),
    EmbeddingModel("thenlper/gte-large", 1024, 1.2),
    EmbeddingModel("Qdrant/constella-nano", 1024, 0.14),
    EmbeddingModel("nomic-ai/nomic-embed-text-v1.5", 768, 0.52),
    EmbeddingModel("nomic-ai/nomic-embed-text-v1.5-Q", 768, 0.13),
    EmbeddingModel("nomic-ai/nomic-embed-text-v1", 768, 0.52),
    EmbeddingModel("sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2", 384, 0.22),
    EmbeddingModel("sentence-transformers/paraphrase-multilingual-mpnet-base-v2", 768, 1.0),
    EmbeddingModel("intfloat/multilingual-e5-large", 1024, 2.24),
    EmbeddingModel("jinaai/jina-embeddings-v3", 1024, 2.29),
    EmbeddingModel("google/embeddinggemma-300m", 768, 1.24),
    EmbeddingModel("ibm-granite/granite-embedding-small-english-r2", 384, 0.18),
    EmbeddingModel("Qwen/Qwen3-Embedding-0.6B", 1024, 2.38),
    EmbeddingModel("Qwen/Qwen3-Embedding-0.6B-Q", 1024, 1.12),
)

# fastembed matches a model name case-insensitively (and fetch_model does too).
_BY_NAME = {model.name.lower(): model for model in MODELS}

#: The model the 800 MiB per service process was counted for (docs/infra.md, "Pod memory").
REFERENCE_MODEL = "BAAI/bge-small-en-v1.5"
REFERENCE_PROCESS_MIB = 800
#: ONNX Runtime's arena growth while embedding ingest batches, measured at hidden size 384, per unit of hidden size.
ARENA_MIB_PER_DIM = 430 / 384
#: A second model's own session and tokenizer beyond its weights and arena (the 560 MiB counted for a second
#: bge-small: 127 MiB of fp32 weights + ~430 MiB of arena, of which fastembed's 0.067 GB download is 64).
EXTRA_MODEL_OVERHEAD_MIB = 66


def find(name: str) -> EmbeddingModel | None:
    """The supported model called `name` (any case), or None."""
    return _BY_NAME.get(name.lower())


def _model_mib(model: EmbeddingModel) -> float:
    """The model's weights, plus the larger of a second copy (while loading) and the arena (while embedding)."""
    return model.weights_mib + max(model.weights_mib, ARENA_MIB_PER_DIM * model.dim)


#: The rest of a service process: what the reference model's figure leaves beside the model itself.
RUNTIME_MIB = REFERENCE_PROCESS_MIB - _model_mib(_BY_NAME[REFERENCE_MODEL.lower()])


def process_mib(name: str) -> float:
    """A service process serving `name`, at its peak (MiB). An unknown name (refused by the config validator;
    a promotion's record is not re-checked) counts as the reference model."""
    return RUNTIME_MIB + _model_mib(find(name) or _BY_NAME[REFERENCE_MODEL.lower()])


def extra_model_mib(name: str) -> float:
    """A second model the same process holds (the shadow while re-indexing, or the standby kept for rollback)."""
    return EXTRA_MODEL_OVERHEAD_MIB + _model_mib(find(name) or _BY_NAME[REFERENCE_MODEL.lower()])
