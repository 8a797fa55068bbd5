"""The model's cache between calls: transformer keys/values or recurrent state.

A cache is a list of numpy arrays in the order of the card's cache inputs. Key/value
tensors are ``[batch, heads, past, head_dim]``; recurrent states ``[layers, batch, hidden]``.
This module holds the few array operations the decoder needs: an empty cache, cutting a
cache to a prefix, sliding the window past the context length, and stacking rows of
different lengths into one left-padded batch and back.

RoPE keys are stored already rotated at their absolute positions and attention depends
only on distances, so dropping old entries never changes the remaining ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from models.core.model_card import CacheSpec

Cache = list[np.ndarray]


@dataclass(frozen=True)
class CacheOps:
    """Array operations for one model's cache layout.

    Attributes:
        spec: the card's cache description.
    """

    spec: CacheSpec

    @property
    def is_kv(self) -> bool:
        """Whether the cache holds transformer keys/values (else recurrent state)."""
        return self.spec.kind == "kv"

    @property
    def batch_axis(self) -> int:
        """The batch axis of every cache tensor."""
        return 0 if self.is_kv else 1

    def empty(self, batch: int = 1) -> Cache:
        """A cache before any token: zero past length, or a zero recurrent state."""
        spec = self.spec
        if self.is_kv:
            shape = (batch, spec.num_heads, 0, spec.head_dim)
        else:
            shape = (spec.num_layers, batch, spec.hidden)
        return [np.zeros(shape, dtype=np.float32) for _ in spec.inputs]

    def length(self, cache: Cache) -> int:
        """Tokens held by a key/value cache (0 for recurrent state, which has no length)."""
        return int(cache[0].shape[2]) if self.is_kv else 0

    def prefix(self, cache: Cache, length: int) -> Cache:
        """The first ``length`` cached tokens of a key/value cache (contiguous copies)."""
        return [np.ascontiguousarray(t[:, :, :length]) for t in cache]

    def slide(self, cache: Cache, sink: int, drop: int) -> Cache:
        """Drop ``drop`` entries after the first ``sink`` ones (the oldest besides the sinks)."""
        return [np.concatenate((t[:, :, :sink], t[:, :, sink + drop:]), axis=2) for t in cache]

    def stack(self, caches: Sequence[Cache]) -> tuple[Cache, list[int]]:
        """One batch of rows; key/value rows are left-padded with zeros to the longest.

        Returns:
            the batched cache and the padding of each row (zeros for recurrent state).
        """
        if len(caches) == 1:
            return list(caches[0]), [0]  # one row needs neither padding nor a copy
        if not self.is_kv:
            return ([np.concatenate(parts, axis=1) for parts in zip(*caches, strict=True)],
                    [0] * len(caches))
        lengths = [self.length(c) for c in caches]
        longest = max(lengths)
        pads = [longest - n for n in lengths]
        batched = []
        for parts in zip(*caches, strict=True):
            first = parts[0]
            out = np.zeros((len(parts), first.shape[1], longest, first.shape[3]),
                           dtype=first.dtype)
            for row, (part, pad) in enumerate(zip(parts, pads, strict=True)):
                out[row, :, pad:] = part[0]
            batched.append(out)
        return batched, pads

    def unstack(self, batched: Cache, pads: Sequence[int]) -> list[Cache]:
        """The rows of a batch without their padding (inverse of ``stack``)."""
        if len(pads) == 1 and pads[0] == 0:
            return [list(batched)]
        rows = []
        for row, pad in enumerate(pads):
            if self.is_kv:
                rows.append([np.ascontiguousarray(t[row:row + 1, :, pad:]) for t in batched])
            else:
                rows.append([np.ascontiguousarray(t[:, row:row + 1]) for t in batched])
        return rows


class KVPool:
    """Key/value buffers that every call of the in-place graph reads and writes directly.

    One array ``[rows, heads, capacity, head_dim]`` per cache input, allocated once (and
    doubled in rows when more generations run at once); a running generation owns one
    row (its slot) from its prefill to its end. ONNX Runtime gets pointers into these
    arrays as both the past input and the present output, so a decode step writes one
    position per row and nothing is copied between steps. Row ``r`` holds
    ``lengths[r]`` valid entries at indices ``0..``; the rest is scratch.

    Attributes:
        spec: the card's cache description.
        capacity: positions per row (the model's context length).
        buffers: the arrays, in the order of the card's cache inputs.
        lengths: valid entries per row.
    """

    def __init__(self, spec: CacheSpec, capacity: int, rows: int = 4) -> None:
        self.spec = spec
        self.capacity = capacity
        self.buffers: list[np.ndarray] = []
        self.lengths = np.zeros(0, dtype=np.int64)
        self._free: list[int] = []
        self.generation = 0  # bumped whenever the buffers move (bindings must be rebuilt)
        self._grow(rows)

    @property
    def rows(self) -> int:
        """Rows allocated."""
        return len(self.lengths)

    def _grow(self, rows: int) -> None:
        spec = self.spec
        shape = (rows, spec.num_heads, self.capacity, spec.head_dim)
        old, used = self.buffers, self.rows
        self.buffers = [np.zeros(shape, dtype=np.float32) for _ in spec.inputs]
        for new, previous in zip(self.buffers, old, strict=False):
            new[:used] = previous
        self.lengths = np.concatenate([self.lengths, np.zeros(rows - used, dtype=np.int64)])
        self._free = sorted({*self._free, *range(used, rows)})
        self.generation += 1

    def acquire(self) -> int:
        """A free row (the lowest, so running rows stay packed at the front)."""
        if not self._free:
            self._grow(2 * self.rows)
        slot = self._free.pop(0)
        self.lengths[slot] = 0
        return slot

    def release(self, slot: int) -> None:
        """Give a row back."""
        self.lengths[slot] = 0
        self._free.append(slot)
        self._free.sort()

    def busy_rows(self) -> int:
        """How many rows are held now."""
        return self.rows - len(self._free)

    def used_rows(self) -> int:
        """One past the highest row in use (0 when none is)."""
        free = set(self._free)
        busy = [r for r in range(self.rows) if r not in free]
        return max(busy) + 1 if busy else 0

    def load(self, slot: int, cache: Cache, length: int) -> None:
        """Copy the first ``length`` entries of a compact cache ``[1, H, n, D]`` into a row."""
        for buffer, part in zip(self.buffers, cache, strict=True):
            buffer[slot, :, :length] = part[0, :, :length]
        self.lengths[slot] = length

    def copy_row(self, source: int, target: int) -> None:
        """Copy a row's valid entries into another row (best-of-N forks a prefix)."""
        length = int(self.lengths[source])
        for buffer in self.buffers:
            buffer[target, :, :length] = buffer[source, :, :length]
        self.lengths[target] = length

    def save(self, slot: int) -> Cache:
        """A compact copy ``[1, H, length, D]`` of a row's valid entries."""
        length = int(self.lengths[slot])
        return [buffer[slot:slot + 1, :, :length].copy() for buffer in self.buffers]

    def slide(self, slot: int, sink: int, drop: int) -> None:
        """Drop ``drop`` entries after the first ``sink`` ones of a row, in place."""
        length = int(self.lengths[slot])
        for buffer in self.buffers:
            row = buffer[slot]
            # Overlapping ranges: numpy copies through a temporary when they overlap.
            row[:, sink:length - drop] = row[:, sink + drop:length]
        self.lengths[slot] = length - drop


def row_inputs(tokens: Sequence[int] | np.ndarray, past: int) -> dict[str, np.ndarray]:
    """The inputs besides the cache that run ``tokens`` [S] into one row after ``past``
    cached entries (the in-place key/value graph): ids and positions ``[1, S]``, the row's
    lengths ``[1]`` and the call's total length.

    Every call that runs a prompt (the decoder's prefill, a one-window evaluation) builds its
    inputs here; the decoder's batched step writes the same numbers for many rows at once.
    """
    ids = np.asarray(tokens, dtype=np.int64).reshape(1, -1)
    seq = ids.shape[1]
    return {"input_ids": ids,
            "position_ids": np.arange(past, past + seq, dtype=np.int64)[None, :],
            "seqlens_k": np.array([past + seq - 1], dtype=np.int32),
            "query_seqlens": np.array([seq], dtype=np.int32),
            "total_sequence_length": np.array(past + seq, dtype=np.int32)}


def window_feeds(spec: CacheSpec, ids: np.ndarray) -> dict[str, np.ndarray]:
    """Inputs of one call that runs a whole window ``ids`` [S] from an empty cache.

    For a key/value graph the buffer is exactly as long as the window; ONNX Runtime
    returns a new present buffer (no binding), which a one-off evaluation can afford.
    """
    ids = np.asarray(ids, dtype=np.int64)
    ops = CacheOps(spec)
    if ops.is_kv:
        feeds = row_inputs(ids, 0)
        cache = [np.zeros((1, spec.num_heads, len(ids), spec.head_dim), dtype=np.float32)
                 for _ in spec.inputs]
    else:
        feeds = {"input_ids": ids[None, :]}
        cache = ops.empty(1)
    feeds.update(zip(spec.inputs, cache, strict=True))
    return feeds


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if diff.size else n
