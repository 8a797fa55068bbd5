"""Run an exported model and its PyTorch original on the same named inputs.

``OnnxLM`` drives an ONNX Runtime session by the graph's tensor names (prefill with an
empty cache, then feed ``present.*`` back as ``past*``); ``TorchLM`` runs a recurrent
PyTorch model through the same flat wrapper the exporter traced, so both give
``{name: array}`` for identical feeds (the GPT's reference is its own forward, row by row:
see ``export.parity``). Used by the parity check, the int8 evaluation and the tests; the
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

from export.onnx_graph import RNNGraph, io_names
from models.core.exceptions import ExportError
from models.core.model_card import KV_INPUTS, LOGITS, RNN_INPUTS

logger = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]


def right_pad(rows: list[list[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad token rows into a batch: ``(input_ids, lengths)``.

    The in-place KV graph takes each row's new tokens left-aligned and its count in
    ``query_seqlens``; padding is never written to the cache.
    """
    width = max(len(row) for row in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    for b, row in enumerate(rows):
        ids[b, :len(row)] = row
    return ids, np.asarray([len(row) for row in rows], dtype=np.int64)


def kv_feeds(input_ids: np.ndarray, past_lengths: np.ndarray, query_lengths: np.ndarray,
             position_ids: np.ndarray | None = None) -> Arrays:
    """The non-cache inputs of one call of the in-place KV graph.

    Args:
        input_ids: [batch, seq] new tokens, left-aligned (right padding after each row's
            ``query_lengths`` tokens).
        past_lengths: [batch] tokens each row's cache holds before the call.
        query_lengths: [batch] valid new tokens per row (0 marks an idle row).
        position_ids: [batch, seq] absolute positions; default ``past + arange(seq)``.
    """
    input_ids = np.ascontiguousarray(input_ids, dtype=np.int64)
    batch, seq = input_ids.shape
    past = np.asarray(past_lengths, dtype=np.int64).reshape(batch)
    query = np.asarray(query_lengths, dtype=np.int64).reshape(batch)
    if position_ids is None:
        position_ids = past[:, None] + np.arange(seq, dtype=np.int64)[None, :]
    total = past + query
    return {"input_ids": input_ids,
            "position_ids": np.ascontiguousarray(position_ids, dtype=np.int64),
            # GQA needs seqlens_k >= 0 even for an idle, empty row; its output is ignored.
            "seqlens_k": np.maximum(total - 1, 0).astype(np.int32),
            "query_seqlens": query.astype(np.int32),
            "total_sequence_length": np.array(max(int(total.max(initial=0)), seq, 1),
                                              dtype=np.int32)}


class OnnxLM:
    """An ONNX Runtime session of a melodyd graph, addressed by tensor names.

    Key/value graphs keep each row's cache at the start of a ``[batch, heads, capacity,
    head_dim]`` buffer; here, outside the engine, calls are functional (ONNX Runtime
    returns a new present buffer) and callers pass the row lengths explicitly.

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
        self.kind = "kv" if "seqlens_k" in names else "rnn"
        fixed = KV_INPUTS if self.kind == "kv" else RNN_INPUTS
        self.cache_inputs = [n for n in names if n not in fixed]
        self.cache_outputs = [o.name for o in self.session.get_outputs() if o.name != LOGITS]

    def empty_cache(self, batch: int, capacity: int = 0) -> list[np.ndarray]:
        """A KV buffer of ``capacity`` positions per row, or an all-zero recurrent state."""
        cache = []
        for name in self.cache_inputs:
            dims = self._inputs[name].shape
            # kv: [batch, heads, capacity, head_dim]; rnn: [layers, batch, hidden]
            shape = ((batch, dims[1], capacity, dims[3]) if self.kind == "kv"
                     else (dims[0], batch, dims[2]))
            cache.append(np.zeros(shape, dtype=np.float32))
        return cache

    def run(self, feeds: Mapping[str, np.ndarray]) -> Arrays:
        """Every output by name for a complete set of named inputs."""
        outputs = self.session.run(None, dict(feeds))
        return {o.name: value for o, value in zip(self.session.get_outputs(), outputs,
                                                  strict=True)}

    def feeds(self, input_ids: np.ndarray, cache: list[np.ndarray],
              past_lengths: np.ndarray | None = None, query_lengths: np.ndarray | None = None,
              position_ids: np.ndarray | None = None) -> Arrays:
        """Named inputs of one call.

        For a KV graph, ``past_lengths`` default to 0 (an empty cache), ``query_lengths`` to
        the full width and positions to ``past + arange(seq)``; a buffer too short for the
        call is widened (zeros) first.
        """
        input_ids = np.asarray(input_ids, dtype=np.int64)
        feeds: Arrays = {}
        if self.kind == "kv":
            batch, seq = input_ids.shape
            past = (np.zeros(batch, np.int64) if past_lengths is None
                    else np.asarray(past_lengths, dtype=np.int64))
            query = (np.full(batch, seq, np.int64) if query_lengths is None
                     else np.asarray(query_lengths, dtype=np.int64))
            feeds.update(kv_feeds(input_ids, past, query, position_ids))
            cache = self.widen(cache, int(past.max(initial=0)) + seq)
        else:
            feeds["input_ids"] = input_ids
        feeds.update(zip(self.cache_inputs, cache, strict=True))
        return feeds

    @staticmethod
    def widen(cache: list[np.ndarray], capacity: int) -> list[np.ndarray]:
        """The KV buffers with at least ``capacity`` positions (copied only when short)."""
        if not cache or cache[0].shape[2] >= capacity:
            return cache
        wider = []
        for t in cache:
            out = np.zeros((t.shape[0], t.shape[1], capacity, t.shape[3]), dtype=t.dtype)
            out[:, :, :t.shape[2]] = t
            wider.append(out)
        return wider

    def step(self, input_ids: np.ndarray, cache: list[np.ndarray],
             past_lengths: np.ndarray | None = None, query_lengths: np.ndarray | None = None,
             position_ids: np.ndarray | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
        """Logits [batch, seq, vocab] and the cache to pass to the next call."""
        out = self.run(self.feeds(input_ids, cache, past_lengths, query_lengths, position_ids))
        return out[LOGITS], [out[name] for name in self.cache_outputs]


class TorchLM:
    """A recurrent PyTorch model run through the exporter's flat wrapper, by tensor names."""

    def __init__(self, model: nn.Module, arch: str) -> None:
        self.model = model.eval()
        self.wrapper = RNNGraph(model)
        self.input_names, self.output_names = io_names(arch, model.config.n_layer)

    def run(self, feeds: Mapping[str, np.ndarray]) -> Arrays:
        """Every output by name for the same named inputs an ``OnnxLM`` takes."""
        args = [torch.from_numpy(np.ascontiguousarray(feeds[name])) for name in self.input_names]
        with torch.no_grad():
            outputs = self.wrapper(*args)
        return {name: value.numpy() for name, value in zip(self.output_names, outputs,
                                                            strict=True)}
