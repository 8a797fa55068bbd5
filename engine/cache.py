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

from models.model_card import CacheSpec

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
