"""How many prompt tokens one engine step may prefill: a time budget, not a token count.

The server runs a long prompt in chunks, one per step, so that other sessions' tokens and
pings are served between them (issue 12: no request may hold the others for 100 ms). A
fixed chunk of tokens costs what the model and the machine make of it: 64 tokens take
16-25 ms on the shipped 6 x 384 model on an idle 2-core CPU, twice that under load, and a
larger model more again. :class:`PrefillPace` measures what a prompt token costs in the
engine's own prefill calls and sizes each chunk to ``[engine] prefill_chunk_ms``, never
above ``prefill_chunk`` tokens and never below :data:`MIN_CHUNK_TOKENS` (so a prompt
always makes progress, however slow the machine).
"""

from __future__ import annotations

# The smallest chunk a time budget may ask for. Below this, a call's fixed cost dominates:
# on the shipped model 8 tokens take 4-6 ms, 4 tokens nearly as much.
MIN_CHUNK_TOKENS = 8
# Weight of the newest measurement: a few chunks follow a change of load or of cache
# length, while one preempted call does not halve the next chunks for long.
_SMOOTHING = 0.3


class PrefillPace:
    """Seconds per prompt token, measured on the engine's prefill calls, and the chunk that
    fits the time budget.

    Args:
        max_tokens: the largest chunk (``[engine] prefill_chunk``); 0 = no chunking.
        budget_s: the time one chunk should take (``[engine] prefill_chunk_ms`` / 1000);
            0 = always ``max_tokens``.
    """

    def __init__(self, max_tokens: int, budget_s: float) -> None:
        self.max_tokens = max_tokens
        self.budget_s = budget_s
        self.seconds_per_token: float | None = None

    def record(self, tokens: int, seconds: float) -> None:
        """Note one prefill call of ``tokens`` tokens that took ``seconds``.

        Calls shorter than :data:`MIN_CHUNK_TOKENS` are not counted: their cost is mostly
        the call's fixed part, and counting it per token would shrink every later chunk.
        """
        if tokens < MIN_CHUNK_TOKENS or seconds < 0:
            return
        rate = seconds / tokens
        if self.seconds_per_token is None:
            self.seconds_per_token = rate
        else:
            self.seconds_per_token += _SMOOTHING * (rate - self.seconds_per_token)

    def chunk(self, remaining: int) -> int:
        """Tokens of a prompt with ``remaining`` tokens still to run that the next chunk
        takes (all of them when chunking is off)."""
        if not self.max_tokens:
            return remaining
        size = self.max_tokens
        if self.budget_s > 0 and self.seconds_per_token:
            fits = int(self.budget_s / self.seconds_per_token)
            size = max(min(MIN_CHUNK_TOKENS, self.max_tokens), min(size, fits))
        return min(size, remaining)

    @property
    def step_tokens(self) -> int:
        """Prompt tokens all of one step's chunks may take together (0 = no limit)."""
        return self.chunk(self.max_tokens) if self.max_tokens else 0
