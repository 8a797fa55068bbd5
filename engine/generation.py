"""One response being decoded: its request, grammar, sampling state and cache row.

A :class:`Generation` is what :class:`engine.decoder.StyleDecoder` advances token by token;
while a bar of best-of-N is being decided it also holds that bar's candidates (copies of
itself, see ``engine.candidates``).
"""

from __future__ import annotations

import time
from collections.abc import Hashable

import numpy as np

from engine.cache import Cache
from engine.critic import CallProfile
from engine.forcing import LeadForcing
from engine.grammar import Grammar
from engine.sampling import make_rng
from engine.steering import BarDensity, ChordBias
from models.core.notes import Note
from models.core.protocol.messages import GenerateRequest


class Generation:
    """One response being decoded.

    Attributes:
        id: the caller's request id (or a generated one).
        session_key: the session whose cache this generation reads and refreshes.
        request: what was asked.
        done: whether the generation has ended.
        reason: why it ended (one of the protocol's ``DONE_REASONS`` but
            ``superseded``), ``None`` while running.
        tokens: generated tokens sampled so far.
        prefill_tokens: prompt tokens run through the model at the start.
        reused_tokens: prompt tokens taken from the session's cache instead.
        notes_emitted: notes produced so far.
        log_prob: sum of the model's log-probabilities (temperature 1, no masks) of the
            sampled tokens kept (``log_prob / tokens`` is the answer's log-likelihood).
        choices: per bar decided by best-of-N, ``(candidates compared, winner's index
            among all the bar's candidates, scores)``; bars sampled with one candidate are
            not listed, and a bar cut at its deadline with none finished is listed as
            ``(1, the one that went on, [])``.
    """

    def __init__(self, gen_id: str, session_key: Hashable, request: GenerateRequest, *,
                 grammar: Grammar, end_bar: int, max_tokens: int) -> None:
        self.id = gen_id
        self.session_key = session_key
        self.request = request
        self.done = False
        self.reason: str | None = None
        self.tokens = 0
        self.prefill_tokens = 0
        self.reused_tokens = 0
        self.notes_emitted = 0
        self.grammar = grammar
        self.end_bar = end_bar
        self.max_tokens = max_tokens
        self.rng = make_rng(request.sampling)
        # Steering (engine.steering): the pitch bias is built once per request by the
        # decoder; the density state follows the answer bar by bar.
        self.pitch_bias: np.ndarray | None = None
        self.chords: ChordBias | None = None  # chord hints, by the next note's beat
        # Style morph: a twin generation that runs the same tokens under the other style's
        # prompt in a row of its own (never sampled), and how much its distribution weighs.
        self.twin: Generation | None = None
        self.morph_amount = 0.0
        self.density: BarDensity | None = None
        # A known lead line written into the stream between sampled accompaniment
        # (engine.forcing; offline harmonization), or None.
        self.forcing: LeadForcing | None = None
        self._notes: list[Note] = []
        self.played: list[Note] = []  # the notes drained so far (best-of-N's variety term)
        self._started = time.perf_counter()
        self._finished: float | None = None
        # Decoding state: the stream the cache holds, the cache (None while it lives in
        # the style's batch), the next token's absolute position and the next logits.
        self.stream: list[int] = []
        self.cache: Cache | None = None   # recurrent state (kv models use ``slot``)
        self.slot: int | None = None      # this generation's row of the style's KVPool
        self.cache_len = 0
        self.next_position = 0
        self.slid = False
        self.logits: np.ndarray | None = None
        self.pending: int | None = None
        # Prompt tokens not yet run through the model (a long prompt goes in chunks, one
        # per step, so other sessions keep getting their tokens meanwhile).
        self.prefill_rest: list[int] = []
        self.log_prob = 0.0
        # Best-of-N (see the module's docstring): the candidates while a bar is forked,
        # whether this object is itself a candidate (it then never streams), whether a
        # candidate has sampled the Bar that ends its bar, and whether the next token
        # starts a bar (a fork point).
        self.branches: list[Generation] | None = None
        self.is_branch = False
        self.parked = False
        self.at_bar_start = True
        self.choices: list[tuple[int, int, list[float]]] = []
        self.call: CallProfile | None = None
        self.bar_deadline: float | None = None  # when the forked bar must be decided
        self._held: list[Note] = []
        self._fork_tokens = 0
        self._fork_log_prob = 0.0

    def next_prompt(self) -> list[int]:
        """The prompt tokens the next chunk comes from: the answer's own, then (a morph)
        its twin's; empty once both are in the cache."""
        if self.prefill_rest:
            return self.prefill_rest
        return self.twin.prefill_rest if self.twin is not None else []

    @property
    def elapsed(self) -> float:
        """Seconds from the start to the end (or to now while running)."""
        end = self._finished if self._finished is not None else time.perf_counter()
        return end - self._started

    def drain_notes(self) -> list[Note]:
        """The notes completed since the last call, on the caller's timeline (none while
        a bar's candidates are being decoded: only the winner's are ever streamed)."""
        if self.branches is not None:
            return []
        notes, self._notes = self._notes, []
        self.played.extend(notes)
        return notes

    def _finish(self, reason: str) -> None:
        self.done = True
        self.reason = reason
        self._finished = time.perf_counter()
