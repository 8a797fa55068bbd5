"""Export a melodyd model to one ONNX graph with its cache as inputs and outputs.

GPT models are written node by node from their weights by ``export.gpt_graph`` (an
in-place KV cache around ONNX Runtime's GroupQueryAttention; the contract is described
there and in ``docs/architecture.md``). Recurrent models are traced with torch:

    input_ids [batch, seq], past_state.h (and .c) [layers, batch, hidden] -> logits,
    present_state.h (and .c).

Exporter choice for the recurrent models: torch 2.13 offers the new ``dynamo=True``
exporter and the older TorchScript one (``dynamo=False``, deprecated but present). We use
the TorchScript exporter because it names dynamic axes exactly as the contract does and
exported in under a second where dynamo took 23 s on the busy 2-core machine. The parity
check, not the exporter, is what makes an export trustworthy, so switching when the
TorchScript path is removed only means changing ``_export``.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import onnx
import torch
from torch import Tensor, nn

from export.gpt_graph import GRAPH_OPSET, write_gpt_graph
from models.core.exceptions import ExportError
from models.core.model_card import KV_INPUTS, LOGITS, RNN_INPUTS, kv_cache_names, rnn_state_names

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 17      # LayerNormalization is a native op from 17 on
MIN_OPSET = 14          # scaled_dot_product_attention needs 14
MAX_OPSET = 20          # the highest the TorchScript exporter emits
# Example sizes for tracing: every dynamic axis gets a value > 1 and distinct from the
# others, so nothing is constant-folded to a size seen only in the example.
_EXAMPLE_BATCH, _EXAMPLE_SEQ = 2, 3


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
        axes["seqlens_k"] = {0: "batch"}
        axes["query_seqlens"] = {0: "batch"}
        axes.update({name: {0: "batch", 2: "capacity"} for name in inputs[len(KV_INPUTS):]})
        axes.update({name: {0: "batch", 2: "capacity"} for name in outputs[1:]})
    else:
        axes.update({name: {1: "batch"} for name in inputs[1:] + outputs[1:]})
    return axes


def example_inputs(model: nn.Module) -> tuple[Tensor, ...]:
    """Tracing inputs of a recurrent model, with batch > 1, in graph input order."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, model.config.vocab_size, (_EXAMPLE_BATCH, _EXAMPLE_SEQ),
                              generator=generator)
    return (input_ids, *model.initial_state(_EXAMPLE_BATCH))


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
    if arch == "gpt":
        if opset < GRAPH_OPSET:
            raise ExportError(f"the GPT graph needs opset {GRAPH_OPSET} or later "
                              f"(received {opset})")
        proto = write_gpt_graph(model, path, opset)
        problems = frozen_axes(proto, dynamic_axes(arch, num_layers))
        if problems:
            raise ExportError("the GPT graph froze dynamic axes: " + "; ".join(problems))
        return proto
    wrapper = RNNGraph(model)
    args = example_inputs(model)
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
