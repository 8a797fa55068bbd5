"""Build the GPT's ONNX graph from its weights, with a KV cache that each call updates in place.

Tracing ``models.train.gpt.GPT`` gives a graph that concatenates the whole past with the new
keys/values into a fresh present tensor every step, so a step costs what the past costs.
This module writes the graph node by node instead, around ONNX Runtime's
``com.microsoft.GroupQueryAttention`` (GQA): each layer's keys and values live in a buffer
``[batch, heads, capacity, head_dim]`` that is both the ``past`` input and the ``present``
output. When the caller binds both to the same memory (I/O binding), GQA writes only the
new positions and reads only each row's valid ones; without binding, ONNX Runtime
allocates a present buffer and copies the past into it (same numbers, used by tests).

Inputs (``models.core.model_card.KV_INPUTS``, then the cache):

    input_ids [batch, seq] int64            new tokens of each row, left-aligned
    position_ids [batch, seq] int64         their absolute (RoPE) positions
    seqlens_k [batch] int32                 cached tokens of each row after the call - 1
    query_seqlens [batch] int32             valid new tokens of each row (0: idle row)
    total_sequence_length [] int32          an upper bound of seqlens_k + 1
    past_key_values.{i}.key/.value [batch, heads, capacity, head_dim]
    -> logits [batch, seq, vocab], present.{i}.key/.value (same shape as the past)

Row ``b`` holds ``seqlens_k[b] + 1 - query_seqlens[b]`` cached tokens at buffer indices
``0..``, and the call appends its new ones right after them; rows of a batch need not have
the same length. Positions are separate from buffer indices: RoPE is applied with the
given ``position_ids`` (GQA's ``do_rotary`` with a per-call table, see ``_rotary_table``),
so after the engine drops old entries positions keep counting and stored keys stay valid.

The same math as ``GPT.forward`` (pre-LayerNorm, fused QKV, rotate-half RoPE, scaled dot
product attention with a causal mask, exact GELU, tied output head); the parity check
(``export.parity``) proves the two agree before any file is written.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from models.core.exceptions import ExportError
from models.core.model_card import KV_INPUTS, LOGITS, kv_cache_names

logger = logging.getLogger(__name__)

GRAPH_OPSET = 17        # LayerNormalization is a native op from 17 on
MS_DOMAIN = "com.microsoft"
# ONNX Runtime's CPU GroupQueryAttention refuses other head sizes.
HEAD_DIM_MULTIPLE = 16
LAYER_NORM_EPS = 1e-5   # nn.LayerNorm's default, which models.train.gpt uses


class _Builder:
    """Collects nodes and initializers with unique names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def const(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], outputs: int | list[str] = 1,
           domain: str = "", **attrs: object) -> list[str]:
        self._count += 1
        if isinstance(outputs, int):
            outputs = [f"{op_type.lower()}_{self._count}_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, outputs,
                                           name=f"{op_type}_{self._count}", domain=domain,
                                           **attrs))
        return outputs

    def one(self, op_type: str, inputs: list[str], domain: str = "", **attrs: object) -> str:
        return self.op(op_type, inputs, 1, domain, **attrs)[0]


def _weights(model: nn.Module) -> dict[str, np.ndarray]:
    return {name: tensor.detach().cpu().float().numpy()
            for name, tensor in model.state_dict().items()}


def _linear(b: _Builder, x: str, weights: dict[str, np.ndarray], prefix: str,
            bias: bool = True) -> str:
    """x @ W^T (+ b): the weight stored transposed as [in, out] so MatMulNBits can take it."""
    weight = b.const(f"{prefix}.weight_t", weights[f"{prefix}.weight"].T)
    y = b.one("MatMul", [x, weight])
    if bias:
        y = b.one("Add", [y, b.const(f"{prefix}.bias", weights[f"{prefix}.bias"])])
    return y


def _layer_norm(b: _Builder, x: str, weights: dict[str, np.ndarray], prefix: str) -> str:
    return b.one("LayerNormalization",
                 [x, b.const(f"{prefix}.weight", weights[f"{prefix}.weight"]),
                  b.const(f"{prefix}.bias", weights[f"{prefix}.bias"])],
                 axis=-1, epsilon=LAYER_NORM_EPS)


def _rotary_table(b: _Builder, head_dim: int, rope_base: float) -> tuple[str, str, str]:
    """cos/sin rows for exactly this call's tokens, and GQA position ids that index them.

    GQA looks rotary angles up in a ``[rows, head_dim / 2]`` table by position id and needs
    at least ``total_sequence_length`` rows. Positions count without bound (the engine
    slides its window and keeps counting), so no fixed table is big enough; instead each
    call computes the rows of its own tokens (token ``n`` of the flattened batch -> row
    ``n``, zero rows padded up to the total) and passes ``0..batch*seq-1`` as position ids.
    The angles are computed as ``models.train.gpt.rope_cos_sin`` does: float32 position times
    float32 inverse frequency.
    """
    inv_freq = (rope_base ** (-np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    inv_freq = inv_freq.astype(np.float32).reshape(1, head_dim // 2)
    positions = b.one("Cast", ["position_ids"], to=TensorProto.FLOAT)            # (B, S)
    flat = b.one("Reshape", [positions, b.const("shape_col", np.array([-1, 1], np.int64))])
    angles = b.one("Mul", [flat, b.const("rope_inv_freq", inv_freq)])            # (B*S, D/2)
    count = b.one("Size", ["position_ids"])                                      # B*S
    total = b.one("Cast", ["total_sequence_length"], to=TensorProto.INT64)
    zero = b.const("zero_i64", np.array(0, np.int64))
    missing = b.one("Max", [b.one("Sub", [total, count]), zero])
    missing = b.one("Reshape", [missing, b.const("shape_one", np.array([1], np.int64))])
    pads = b.one("Concat", [b.const("pads_head", np.zeros(2, np.int64)), missing,
                            b.const("pads_tail", np.zeros(1, np.int64))], axis=0)
    cos = b.one("Pad", [b.one("Cos", [angles]), pads])
    sin = b.one("Pad", [b.one("Sin", [angles]), pads])
    rows = b.one("Range", [b.const("zero_start", np.array(0, np.int64)), count,
                           b.const("one_step", np.array(1, np.int64))])
    gqa_positions = b.one("Reshape", [rows, b.one("Shape", ["position_ids"])])  # (B, S)
    return cos, sin, gqa_positions


def check_head_dim(head_dim: int) -> None:
    """Raise unless ONNX Runtime's GroupQueryAttention accepts this head size.

    Raises:
        ExportError: ``head_dim`` is not a multiple of 16.
    """
    if head_dim % HEAD_DIM_MULTIPLE:
        raise ExportError(f"the in-place KV cache (ONNX Runtime GroupQueryAttention) needs a "
                          f"head size that is a multiple of {HEAD_DIM_MULTIPLE} (received "
                          f"{head_dim}); choose n_embd / n_head accordingly")


def build_gpt_graph(model: nn.Module, opset: int = GRAPH_OPSET) -> onnx.ModelProto:
    """The GPT as an ONNX model with the in-place KV cache contract described above.

    ``opset`` (17 or later) is the default domain's version; the graph's ops are the same.

    Raises:
        ExportError: the model's head size is not supported by GroupQueryAttention.
    """
    config = model.config
    layers, heads, head_dim = config.n_layer, config.n_head, config.head_dim
    width, vocab = config.n_embd, config.vocab_size
    check_head_dim(head_dim)
    weights = _weights(model)
    b = _Builder()
    cos, sin, gqa_positions = _rotary_table(b, head_dim, config.rope_base)
    x = b.one("Gather", [b.const("wte.weight", weights["wte.weight"]), "input_ids"])  # (B,S,C)
    past_names, present_names = kv_cache_names(layers)
    for i in range(layers):
        prefix = f"blocks.{i}"
        h = _layer_norm(b, x, weights, f"{prefix}.ln_1")
        qkv = _linear(b, h, weights, f"{prefix}.attn.qkv")                           # (B,S,3C)
        # Packed QKV: GQA splits it, rotates q and k, appends k/v to the buffer in place.
        attn = b.op("GroupQueryAttention",
                    [qkv, "", "", past_names[2 * i], past_names[2 * i + 1], "seqlens_k",
                     "total_sequence_length", cos, sin, gqa_positions, "", "", "", "", "", "",
                     "query_seqlens"],
                    [f"attn_{i}", present_names[2 * i], present_names[2 * i + 1]],
                    domain=MS_DOMAIN, num_heads=heads, kv_num_heads=heads, do_rotary=1,
                    rotary_interleaved=0, scale=1.0 / math.sqrt(head_dim))[0]
        x = b.one("Add", [x, _linear(b, attn, weights, f"{prefix}.attn.proj")])
        h = _layer_norm(b, x, weights, f"{prefix}.ln_2")
        # Exact (erf) GELU as F.gelu; ONNX Runtime fuses the bias Add into BiasGelu.
        h = b.one("Gelu", [_linear(b, h, weights, f"{prefix}.mlp.fc")], domain=MS_DOMAIN)
        x = b.one("Add", [x, _linear(b, h, weights, f"{prefix}.mlp.proj")])
    h = _layer_norm(b, x, weights, "ln_f")
    # The tied head as its own transposed copy: the embedding stays float for Gather while
    # the head's MatMul can be quantized.
    head = b.const("lm_head.weight_t", weights["lm_head.weight"].T)
    b.op("MatMul", [h, head], [LOGITS])

    float_cache = [helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                                 ["batch", heads, "capacity", head_dim])
                   for name in past_names]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
              helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "seq"]),
              helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, ["batch"]),
              helper.make_tensor_value_info("query_seqlens", TensorProto.INT32, ["batch"]),
              helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, []),
              *float_cache]
    assert tuple(i.name for i in inputs[:len(KV_INPUTS)]) == KV_INPUTS
    outputs = [helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, ["batch", "seq", vocab]),
               *(helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                               ["batch", heads, "capacity", head_dim])
                 for name in present_names)]
    graph = helper.make_graph(b.nodes, "melodyd_gpt", inputs, outputs, b.initializers)
    model_proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                          helper.make_opsetid(MS_DOMAIN, 1)])
    model_proto.ir_version = 8  # readable by every ONNX Runtime that has GQA's inputs
    logger.debug("built the GPT graph: %d nodes, width %d, %d layers", len(b.nodes), width,
                 layers)
    return model_proto


def write_gpt_graph(model: nn.Module, path: str | Path, opset: int = GRAPH_OPSET,
                    ) -> onnx.ModelProto:
    """Build the graph, check it with ``onnx.checker`` and save it to ``path``.

    Raises:
        ExportError: an unsupported head size, or the checker rejects the graph.
    """
    proto = build_gpt_graph(model, opset)
    try:
        onnx.checker.check_model(proto, full_check=False)
    except onnx.checker.ValidationError as err:
        raise ExportError(f"the GPT graph fails onnx.checker: {err}") from err
    onnx.save(proto, str(path))
    return proto
