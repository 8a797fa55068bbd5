"""One ONNX Runtime call bound by pointer to rows of a key/value pool.

The decoder binds its batched step once and each prefill chunk on its own; the benchmark
binds one row to time the bare model call.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine.cache import KVPool, row_inputs
from engine.model import LoadedModel


class BoundCall:
    """One model call bound to rows ``[start, stop)`` of a pool, with its input arrays.

    The small inputs and the logits live in arrays bound by pointer once, so a call only
    writes numbers into them; the cache inputs and outputs point at the same pool memory.
    The decoder binds its batched step once and each prefill chunk on its own; the
    benchmark binds one row to time the bare model call (:meth:`StyleDecoder.bind_row`).

    Attributes:
        inputs: the bound input arrays by ONNX name (``input_ids``, ``position_ids``
            ``[rows, seq]``; ``seqlens_k``, ``query_seqlens`` ``[rows]``; the scalar
            ``total_sequence_length``).
        logits: where each call writes its logits ``[rows, seq, vocab]``.
        key: what the binding depends on (pool buffers, rows, tokens per row).
    """

    def __init__(self, model: LoadedModel, pool: KVPool, *, start: int, stop: int,
                 seq: int) -> None:
        rows = stop - start
        self.model = model
        self.binding = model.session.io_binding()
        self.inputs = {"input_ids": np.zeros((rows, seq), dtype=np.int64),
                       "position_ids": np.zeros((rows, seq), dtype=np.int64),
                       "seqlens_k": np.zeros(rows, dtype=np.int32),
                       "query_seqlens": np.zeros(rows, dtype=np.int32),
                       "total_sequence_length": np.zeros((), dtype=np.int32)}
        self.input_ids = self.inputs["input_ids"]
        self.position_ids = self.inputs["position_ids"]
        self.seqlens_k = self.inputs["seqlens_k"]
        self.query_seqlens = self.inputs["query_seqlens"]
        self.total = self.inputs["total_sequence_length"]
        # ONNX Runtime writes the logits here on every call: no output is allocated per
        # step, and a step binding lives as long as the pool's rows do.
        self.logits = np.empty((rows, seq, model.tokenizer.vocab_size), dtype=np.float32)
        self.key = (pool.generation, start, stop, seq)
        for name, array in self.inputs.items():
            self._bind(name, array, output=False)
        cache = model.card.cache
        for past, present, buffer in zip(cache.inputs, cache.outputs, pool.buffers,
                                         strict=True):
            rows_view = buffer[start:stop]
            self._bind(past, rows_view, output=False)
            self._bind(present, rows_view, output=True)
        self._bind(model.card.output_names[0], self.logits, output=True)

    def _bind(self, name: str, array: np.ndarray, *, output: bool) -> None:
        bind = self.binding.bind_output if output else self.binding.bind_input
        bind(name, "cpu", 0, array.dtype, list(array.shape), array.ctypes.data)

    def set_row(self, row: int, tokens: Sequence[int], past: int) -> None:
        """Inputs that run ``tokens`` (all ``seq`` of them) into ``row`` after ``past``
        cached entries; the total is this row's (a one-row call)."""
        for name, value in row_inputs(tokens, past).items():
            target = self.inputs[name]
            if target.ndim:
                target[row] = value[0]
            else:
                target[()] = value

    def run(self) -> np.ndarray:
        """Run the call; the logits ``[rows, seq, vocab]`` land in ``logits``.

        Raises:
            EngineError: ONNX Runtime rejects the inputs or fails.
        """
        self.model.run_bound(self.binding)
        return self.logits
