"""Run an exported model and its PyTorch original on the same named inputs.

``OnnxLM`` drives an ONNX Runtime session by the graph's tensor names (prefill with an
empty cache, then feed ``present.*`` back as ``past*``); ``TorchLM`` runs the PyTorch
model through the same flat wrapper the exporter traced, so both give ``{name: array}``
for identical feeds. Used by the parity check, the int8 evaluation and the tests; the
engine has its own decoder and never imports this.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from export.onnx_graph import KVGraph, RNNGraph, io_names
from models.exceptions import ExportError
from models.model_card import KV_INPUTS, LOGITS, RNN_INPUTS

logger = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]


def left_pad(rows: list[list[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray,
                                                                  np.ndarray]:
    """Left-pad token rows into a batch: ``(input_ids, attention_mask, position_ids)``.

    Positions count real tokens only (a padded row's first token is at position 0), so
    each row sees the same rotary positions it would see alone.
    """
    width = max(len(row) for row in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for b, row in enumerate(rows):
        if row:
            ids[b, width - len(row):] = row
            mask[b, width - len(row):] = 1
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    return ids, mask, positions


class OnnxLM:
    """An ONNX Runtime session of a melodyd graph, addressed by tensor names.

    Attributes:
        path: the model file.
        session: the ONNX Runtime session (CPU).
        kind: ``"kv"`` or ``"rnn"``, from the graph's inputs.
        cache_inputs: the ``past*`` input names, in graph order.
        cache_outputs: the ``present*`` output names, same order.
    """

    def __init__(self, path: str | Path, threads: int = 0) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0 lets ONNX Runtime choose
        options.log_severity_level = 3  # warnings about unused initializers are noise here
        try:
            self.session = ort.InferenceSession(str(path), options,
                                                providers=["CPUExecutionProvider"])
        except (RuntimeError, ValueError, ort.capi.onnxruntime_pybind11_state.Fail) as err:
            raise ExportError(f"ONNX Runtime cannot load {path}: {err}") from err
        self.path = Path(path)
        self._inputs = {i.name: i for i in self.session.get_inputs()}
        names = list(self._inputs)
        self.kind = "kv" if "attention_mask" in names else "rnn"
        fixed = KV_INPUTS if self.kind == "kv" else RNN_INPUTS
        self.cache_inputs = [n for n in names if n not in fixed]
        self.cache_outputs = [o.name for o in self.session.get_outputs() if o.name != LOGITS]

    def empty_cache(self, batch: int) -> list[np.ndarray]:
        """A zero-length KV cache, or an all-zero recurrent state, for ``batch`` rows."""
        cache = []
        for name in self.cache_inputs:
            dims = self._inputs[name].shape
            # kv: [batch, heads, past, head_dim]; rnn: [layers, batch, hidden]
            shape = ((batch, dims[1], 0, dims[3]) if self.kind == "kv"
                     else (dims[0], batch, dims[2]))
            cache.append(np.zeros(shape, dtype=np.float32))
        return cache

    def run(self, feeds: Mapping[str, np.ndarray]) -> Arrays:
        """Every output by name for a complete set of named inputs."""
        outputs = self.session.run(None, dict(feeds))
        return {o.name: value for o, value in zip(self.session.get_outputs(), outputs,
                                                  strict=True)}

    def feeds(self, input_ids: np.ndarray, cache: list[np.ndarray],
              position_ids: np.ndarray | None = None,
              attention_mask: np.ndarray | None = None) -> Arrays:
        """Named inputs of one call; positions and mask default to an unpadded batch."""
        feeds: Arrays = {"input_ids": np.asarray(input_ids, dtype=np.int64)}
        if self.kind == "kv":
            batch, seq = feeds["input_ids"].shape
            past = cache[0].shape[2]
            if position_ids is None:
                position_ids = np.broadcast_to(np.arange(past, past + seq), (batch, seq))
            if attention_mask is None:
                attention_mask = np.ones((batch, past + seq), dtype=np.int64)
            feeds["position_ids"] = np.ascontiguousarray(position_ids, dtype=np.int64)
            feeds["attention_mask"] = np.ascontiguousarray(attention_mask, dtype=np.int64)
        feeds.update(zip(self.cache_inputs, cache, strict=True))
        return feeds

    def step(self, input_ids: np.ndarray, cache: list[np.ndarray],
             position_ids: np.ndarray | None = None,
             attention_mask: np.ndarray | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
        """Logits [batch, seq, vocab] and the cache to pass to the next call."""
        out = self.run(self.feeds(input_ids, cache, position_ids, attention_mask))
        return out[LOGITS], [out[name] for name in self.cache_outputs]


class TorchLM:
    """The PyTorch model run through the exporter's flat wrapper, by tensor names."""

    def __init__(self, model: nn.Module, arch: str) -> None:
        self.model = model.eval()
        self.wrapper = KVGraph(model) if arch == "gpt" else RNNGraph(model)
        self.input_names, self.output_names = io_names(arch, model.config.n_layer)

    def run(self, feeds: Mapping[str, np.ndarray]) -> Arrays:
        """Every output by name for the same named inputs an ``OnnxLM`` takes."""
        args = [torch.from_numpy(np.ascontiguousarray(feeds[name])) for name in self.input_names]
        with torch.no_grad():
            outputs = self.wrapper(*args)
        return {name: value.numpy() for name, value in zip(self.output_names, outputs,
                                                            strict=True)}
