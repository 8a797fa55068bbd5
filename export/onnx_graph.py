"""Trace a melodyd model into one ONNX graph with its cache as inputs and outputs.

The GPT graph serves both prefill and decode: a prefill passes zero-length past tensors
(ONNX Runtime accepts a dimension of size 0; the parity check exercises it on every
export), a decode step passes the previous step's ``present.*`` outputs. Names and
dynamic axes follow ``docs/architecture.md``:

    input_ids [batch, seq], position_ids [batch, seq], attention_mask [batch, past_seq],
    past_key_values.{i}.key/.value [batch, heads, past, head_dim]
    -> logits [batch, seq, vocab], present.{i}.key/.value [batch, heads, past_seq, head_dim]

Recurrent models: input_ids, past_state.h (and .c) [layers, batch, hidden] -> logits,
present_state.h (and .c).

Exporter choice: torch 2.13 offers the new ``dynamo=True`` exporter and the older
TorchScript one (``dynamo=False``, deprecated but present). Both passed the parity check
on the tiny GPT (max difference 4.8e-7 with dynamo, 3.6e-7 with TorchScript, zero-length
past included). We use the TorchScript exporter because it names dynamic axes exactly as
the contract does (``batch``, ``seq``, ``past``, ``past_seq``; torch.export invents
``s11``-style names and cannot declare ``past_seq = past + seq`` on an input), and it
exported the tiny GPT in 0.7 s where dynamo took 23 s on the busy 2-core machine. The
parity check, not the exporter, is what makes an export trustworthy, so switching when
the TorchScript path is removed only means changing ``_export``.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import onnx
import torch
from torch import Tensor, nn

from models.exceptions import ExportError
from models.model_card import KV_INPUTS, LOGITS, RNN_INPUTS, kv_cache_names, rnn_state_names

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 17      # LayerNormalization is a native op from 17 on
MIN_OPSET = 14          # scaled_dot_product_attention needs 14
MAX_OPSET = 20          # the highest the TorchScript exporter emits
# Example sizes for tracing: every dynamic axis gets a value > 1 and distinct from the
# others, so nothing is constant-folded to a size seen only in the example.
_EXAMPLE_BATCH, _EXAMPLE_SEQ, _EXAMPLE_PAST = 2, 3, 5


class KVGraph(nn.Module):
    """The GPT with flat, named-tensor inputs and outputs, as the ONNX graph sees it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.num_layers = model.config.n_layer

    def forward(self, input_ids: Tensor, position_ids: Tensor, attention_mask: Tensor,
                *past_flat: Tensor) -> tuple[Tensor, ...]:
        """(input_ids, position_ids, attention_mask, k0, v0, k1, v1, ...) -> (logits, k0', ...)."""
        past = [(past_flat[2 * i], past_flat[2 * i + 1]) for i in range(self.num_layers)]
        logits, present = self.model(input_ids, past=past, position_ids=position_ids,
                                     attention_mask=attention_mask)
        return (logits, *(t for layer in present for t in layer))


class RNNGraph(nn.Module):
    """A RecurrentLM with its state as separate named tensors."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        """(input_ids, h[, c]) -> (logits, h'[, c'])."""
        logits, present = self.model(input_ids, past=tuple(state))
        return (logits, *present)


def io_names(arch: str, num_layers: int) -> tuple[list[str], list[str]]:
    """Graph input and output names of an architecture."""
    if arch == "gpt":
        past, present = kv_cache_names(num_layers)
        return [*KV_INPUTS, *past], [LOGITS, *present]
    past, present = rnn_state_names(arch)
    return [*RNN_INPUTS, *past], [LOGITS, *present]


def dynamic_axes(arch: str, num_layers: int) -> dict[str, dict[int, str]]:
    """Named dynamic axes of every input and output."""
    inputs, outputs = io_names(arch, num_layers)
    axes: dict[str, dict[int, str]] = {"input_ids": {0: "batch", 1: "seq"},
                                       LOGITS: {0: "batch", 1: "seq"}}
    if arch == "gpt":
        axes["position_ids"] = {0: "batch", 1: "seq"}
        axes["attention_mask"] = {0: "batch", 1: "past_seq"}
        axes.update({name: {0: "batch", 2: "past"} for name in inputs[len(KV_INPUTS):]})
        axes.update({name: {0: "batch", 2: "past_seq"} for name in outputs[1:]})
    else:
        axes.update({name: {1: "batch"} for name in inputs[1:] + outputs[1:]})
    return axes


def example_inputs(model: nn.Module, arch: str) -> tuple[Tensor, ...]:
    """Tracing inputs with batch > 1 and a non-empty past, in graph input order."""
    batch, seq, past = _EXAMPLE_BATCH, _EXAMPLE_SEQ, _EXAMPLE_PAST
    vocab = model.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, vocab, (batch, seq), generator=generator)
    if arch != "gpt":
        return (input_ids, *model.initial_state(batch))
    cfg = model.config
    position_ids = (torch.arange(seq) + past).unsqueeze(0).repeat(batch, 1)
    attention_mask = torch.ones(batch, past + seq, dtype=torch.int64)
    cache = [torch.randn(batch, cfg.n_head, past, cfg.head_dim, generator=generator)
             for _ in range(2 * cfg.n_layer)]
    return (input_ids, position_ids, attention_mask, *cache)


def frozen_axes(model: onnx.ModelProto, axes: dict[str, dict[int, str]]) -> list[str]:
    """Inputs/outputs whose declared dynamic axes came out as fixed numbers."""
    problems = []
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        for index, name in axes.get(value.name, {}).items():
            if index >= len(dims) or dims[index].dim_param != name:
                got = dims[index].dim_value if index < len(dims) else "missing"
                problems.append(f"{value.name}[{index}] should be '{name}' (got {got})")
    return problems


def _export(wrapper: nn.Module, args: tuple[Tensor, ...], path: Path, *, arch: str,
            num_layers: int, opset: int) -> None:
    inputs, outputs = io_names(arch, num_layers)
    with warnings.catch_warnings():
        # The deprecation notice of the TorchScript exporter and tracer notes about
        # shape arithmetic are expected here; the parity check is the real guard.
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, args, str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=dynamic_axes(arch, num_layers), opset_version=opset,
                          do_constant_folding=True, dynamo=False)


def export_graph(model: nn.Module, arch: str, path: str | Path,
                 opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Export ``model`` to ``path`` and check the result.

    Args:
        model: a ``GPT`` or ``RecurrentLM`` (put in eval mode here).
        arch: ``gpt``, ``lstm`` or ``gru``.
        path: where to write the ONNX file (its directory must exist).
        opset: ONNX opset version, ``MIN_OPSET`` to ``MAX_OPSET``.

    Returns:
        The exported model as loaded back from ``path`` (checked).

    Raises:
        ExportError: an unsupported opset or architecture, the exporter failed, the
            checker rejected the graph, or a dynamic axis was frozen to a number.
    """
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"opset must be within {MIN_OPSET} and {MAX_OPSET} (received {opset})")
    if arch not in ("gpt", "lstm", "gru"):
        raise ExportError(f"cannot export architecture {arch!r}")
    path = Path(path)
    model = model.eval()
    num_layers = model.config.n_layer
    wrapper = KVGraph(model) if arch == "gpt" else RNNGraph(model)
    args = example_inputs(model, arch)
    try:
        with torch.no_grad():
            _export(wrapper, args, path, arch=arch, num_layers=num_layers, opset=opset)
    except (RuntimeError, TypeError, ValueError, torch.onnx.errors.OnnxExporterError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportError(f"torch.onnx.export failed for the {arch} model: {first}") from err
    proto = onnx.load(str(path))
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise ExportError(f"the exported graph fails onnx.checker: {err}") from err
    problems = frozen_axes(proto, dynamic_axes(arch, num_layers))
    if problems:
        raise ExportError("the exported graph froze dynamic axes: " + "; ".join(problems))
    logger.debug("exported %s graph with %d nodes to %s", arch, len(proto.graph.node), path)
    return proto
