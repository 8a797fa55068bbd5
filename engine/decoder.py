"""Incremental decoding of one style: prefill, KV-cached steps, batching, streaming notes.

The service calls :meth:`StyleDecoder.start` for each ``generate`` request, then
:meth:`StyleDecoder.step` over all running generations of the style, once per token:
one batched ONNX Runtime call advances every generation by one token. Each generation
samples under its own grammar and constraints and streams each note as soon as its
``Duration`` is sampled (:meth:`Generation.drain_notes`).

Caches (transformer models, format 2):
- every running generation owns one row of the style's ``KVPool``: buffers of the context
  length that ONNX Runtime reads as the past and writes as the present through I/O binding,
  so a step writes one position per row and no cache is copied or stacked between steps;
  rows of one batched call have their own lengths and positions (a row that is not
  stepped rides along idle, ``query_seqlens`` 0, untouched);
- per session, a compact copy of the last generation's cache is kept when it ends (least
  recently used sessions are dropped); a new request whose tokens share a prefix with it
  copies that prefix into its row and prefills only the rest;
- when a row reaches the context length, the oldest entries after a few "sink" tokens are
  dropped in one in-place move and positions keep counting (RoPE is relative).
Recurrent models keep their small state per generation and are stacked per batch.

Best-of-N (``request.candidates``, transformer models): at the start of each bar of the
answer a generation forks into N candidates (copies of its state; the first takes its
own cache row, the others copy the shared prefix into rows of their own), which advance
together in the same batched calls until each has sampled the ``Bar`` that ends the bar
(or ended). The critic (``engine.critic``) scores each candidate's bar against the call;
the generation continues from the winner (its row, stream and state) and streams the
winner's notes, and the other rows are released. How many candidates a bar gets shrinks
with the time left before the bar must be out (``candidates.ready_ms`` and ``bpm``), from
the measured cost of a step at each batch size, so a bar is never late for its candidates;
with one candidate nothing is forked and the generation streams each note as it is
sampled, token for token as without best-of-N.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from engine.cache import Cache, CacheOps, KVPool, row_inputs
from engine.critic import BarCandidate, CallProfile, CriticWeights, best
from engine.forcing import LeadForcing
from engine.grammar import Grammar, VocabularyMasks
from engine.model import LoadedModel
from engine.prompt import build_prompt
from engine.sampling import make_rng, sample
from engine.steering import BarDensity, pitch_bias, steer
from models.core.exceptions import EngineError
from models.core.notes import LEAD, Note
from models.core.protocol.messages import GenerateRequest, SamplingParams
from models.core.settings import EngineSettings

logger = logging.getLogger(__name__)

REASONS = ("complete", "eos", "cancelled", "max_tokens")


class Generation:
    """One response being decoded.

    Attributes:
        id: the caller's request id (or a generated one).
        session_key: the session whose cache this generation reads and refreshes.
        request: what was asked.
        done: whether the generation has ended.
        reason: why it ended (one of ``REASONS``), ``None`` while running.
        tokens: generated tokens sampled so far.
        prefill_tokens: prompt tokens run through the model at the start.
        reused_tokens: prompt tokens taken from the session's cache instead.
        notes_emitted: notes produced so far.
        log_prob: sum of the model's log-probabilities (temperature 1, no masks) of the
            sampled tokens kept (``log_prob / tokens`` is the answer's log-likelihood).
        choices: per bar decided by best-of-N, ``(candidates, winner, scores)``; bars
            sampled with one candidate are not listed.
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
        self.density: BarDensity | None = None
        # A known lead line written into the stream between sampled accompaniment
        # (engine.forcing; offline harmonization), or None.
        self.forcing: LeadForcing | None = None
        self._notes: list[Note] = []
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
        self._held: list[Note] = []
        self._fork_tokens = 0
        self._fork_log_prob = 0.0

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
        return notes

    def _finish(self, reason: str) -> None:
        self.done = True
        self.reason = reason
        self._finished = time.perf_counter()


@dataclass
class _SessionCache:
    """What a finished generation leaves for the next request of its session."""

    stream: list[int]
    cache: Cache
    next_position: int
    slid: bool


def log_prob(logits: np.ndarray, token: int) -> float:
    """The log-probability of ``token`` under the model's own distribution (softmax of
    the raw logits: temperature 1, no masks or biases)."""
    values = np.asarray(logits, dtype=np.float64)
    top = values.max()
    return float(values[token] - top - math.log(np.exp(values - top).sum()))


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if diff.size else n


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


class StyleDecoder:
    """Decodes every generation of one loaded model.

    Attributes:
        model: the loaded ONNX model.
        settings: the ``[engine]`` settings (window, bounds, session cache size).
        tokenizer: the model's vocabulary.
        vocab: per-kind masks of that vocabulary, shared by every grammar.
        allow_eos: whether the model may end a response early with ``EOS`` (off for tests
            and offline generation that must fill the bars asked for).
    """

    def __init__(self, model: LoadedModel, settings: EngineSettings | None = None, *,
                 allow_eos: bool = True) -> None:
        self.model = model
        self.allow_eos = allow_eos
        self.settings = settings or EngineSettings()
        self.tokenizer = model.tokenizer
        self.vocab = VocabularyMasks.build(model.tokenizer)
        self.ops = CacheOps(model.card.cache)
        self._cache_inputs = list(model.card.cache.inputs)
        self._sessions: OrderedDict[Hashable, _SessionCache] = OrderedDict()
        self._ids = itertools.count(1)
        # Recurrent models: the stacked state of the running generations (in this order).
        self._batch: list[Generation] = []
        self._batch_cache: Cache | None = None
        self._batch_pads: list[int] = []
        # Transformer models: one row per running generation, and the step's binding.
        # Rows for ``max_active`` generations up front: numpy's zeros are pages the OS
        # hands out on first touch, so unused rows cost no memory, while growing the pool
        # while serving copies every row (85 ms to 16 rows, 230 ms to 32 on 2 cores for
        # the shipped models) on the engine's thread, which every session then waits for.
        self.pool = (KVPool(model.card.cache, model.context_length,
                            rows=self.settings.max_active) if self.ops.is_kv else None)
        self._step_binding: BoundCall | None = None
        # Best-of-N: the critic's weights, the measured seconds of a step by rows
        # (moving averages), and the tokens a bar takes (the most of a bar's candidates).
        self.critic_weights = CriticWeights()
        self.step_seconds: dict[int, float] = {}
        self.bar_tokens = 32.0

    # ----------------------------------------------------------------- public API
    @property
    def style(self) -> str:
        """The style this decoder serves."""
        return self.model.style

    @property
    def cached_sessions(self) -> int:
        """Sessions whose cache is kept for their next request."""
        return len(self._sessions)

    def warm_up(self) -> None:
        """Run one short request through the model and forget it.

        ONNX Runtime prepares its kernels on a session's first calls (~150-220 ms on the
        2-core machines); done at start-up, that cost never lands on the first player's
        answer, nor on every other session waiting behind it.
        """
        key = ("melodyd-warm-up",)
        request = GenerateRequest(seed=(Note(0.0, 1.0, 60, 80),), start_beat=4.0, bars=1,
                                  sampling=SamplingParams(seed=0))
        generation = self.start(key, request, "warm-up")
        for _ in range(2):
            self.step([generation])
        self.cancel(generation)
        self.drop_session(key)

    def drop_session(self, session_key: Hashable) -> None:
        """Forget a session's cache (its client left)."""
        self._sessions.pop(session_key, None)

    def start(self, session_key: Hashable, request: GenerateRequest,
              request_id: str | None = None, *, lead: Sequence[Note] = (),
              prefill: bool = True) -> Generation:
        """Encode a request, reuse the session's cached prefix and prefill the rest.

        ``lead``: notes of a lead line inside the answer's bars, written into the stream
        at their times while the model samples the rest (``engine.forcing``); they are
        not returned. Meant with ``constraints.role = "accompaniment"`` on a model with
        role tokens (offline harmonization).

        With ``prefill`` false (a key/value model), no prompt chunk runs here: every one
        waits for the next :meth:`step` calls, so a caller that interleaves other work
        (the server: other sessions' tokens, pings) keeps each piece short. Offline
        callers may keep the default, which runs the first chunk at once.

        Raises:
            EngineError: the request cannot be encoded for this model (time signature not
                in the vocabulary, no pitch left by the constraints) or the model fails.
        """
        context = self.model.context_length
        prompt = build_prompt(self.tokenizer, self.vocab, request,
                              max_tokens=max(8, context - context // 4),
                              allow_eos=self.allow_eos)
        gen = Generation(request_id or f"g{next(self._ids)}", session_key, request,
                         grammar=prompt.grammar, end_bar=prompt.end_bar,
                         max_tokens=self.settings.max_tokens_per_bar * request.bars)
        gen.pitch_bias = pitch_bias(self.vocab, request.steering)
        if lead:
            if not self.vocab.role:
                raise EngineError("a lead line to accompany needs a model with role tokens")
            gen.forcing = LeadForcing(lead, self.vocab)
        steering = request.steering
        if ((steering.notes_per_bar is not None and steering.density_strength > 0)
                or steering.min_notes > 0):
            gen.density = BarDensity.of(steering)
        tokens = prompt.tokens
        reuse, cache = self._reusable(session_key, tokens)
        new = tokens[reuse:]
        if self.pool is not None:
            gen.slot = self.pool.acquire()
            if reuse:
                self.pool.load(gen.slot, cache, reuse)
            chunk = (self.settings.prefill_chunk or len(new)) if prefill else 0
            if chunk:
                gen.logits = self.prefill(gen, new[:chunk], reuse)
            gen.prefill_rest = list(new[chunk:])
        else:
            logits, cache = self._run(np.asarray([new], dtype=np.int64), cache)
            gen.cache = cache
            gen.logits = logits[0, -1]
        # What the cache holds so far: the prompt without its chunks still to run.
        gen.stream = list(tokens[:len(tokens) - len(gen.prefill_rest)])
        gen.cache_len = len(gen.stream)
        gen.next_position = len(gen.stream)
        gen.prefill_tokens = len(new)
        gen.reused_tokens = reuse
        logger.debug("%s: prompt %d tokens (%d reused), bars %d-%d of the stream",
                     gen.id, len(tokens), reuse, prompt.start_bar, prompt.end_bar)
        return gen

    def step(self, generations: Sequence[Generation]) -> None:
        """Advance every running generation by one token with one batched model call.

        Raises:
            EngineError: the model call fails.
        """
        began = time.perf_counter()
        active = [g for g in generations if not g.done]
        prefilling = [g for g in active if g.prefill_rest]
        for gen in prefilling:
            self._prefill_next(gen)
        # A generation that ran a prompt chunk this step waits for the next one to sample:
        # one step never costs more than one chunk per generation on top of the batch.
        chunked = {id(g) for g in prefilling}
        active = [g for g in active if id(g) not in chunked]
        if self.pool is not None:
            self._fork_where_due(active)
        rows: list[Generation] = []
        for gen in active:
            if gen.branches is None:
                rows.append(gen)
            else:
                rows.extend(b for b in gen.branches if not b.done and not b.parked)
        for row in rows:
            self._sample(row)
        running = [g for g in rows if not g.done]
        for gen in rows:
            if gen.done and not gen.is_branch:
                self._retire(gen)
        # Candidates waiting for their siblings ride along idle; ONNX Runtime refuses an
        # idle row whose cache is full, so such a row slides now (as its next step would).
        waiting = [b for g in active if g.branches is not None for b in g.branches
                   if (b.parked or b.done) and b.slot is not None]
        if waiting and running:
            self._slide_if_full(waiting)
        if running:
            self._forward(running)
        for gen in active:
            if gen.branches is not None and all(b.done or b.parked for b in gen.branches):
                self._resolve(gen)
                if gen.done:
                    self._retire(gen)
        if rows and not prefilling:
            self._observe(len(rows), time.perf_counter() - began)

    def cancel(self, generation: Generation) -> None:
        """End a generation now (reason ``cancelled``); its cache stays with its session."""
        if not generation.done:
            if generation.branches is not None:
                # Mid-bar of best-of-N: keep the first candidate's stream and row (a valid
                # cache for the session), without streaming its notes.
                self._adopt(generation, 0)
                generation._notes = []
            generation._finish("cancelled")
            self._retire(generation)

    def iter_steps(self, generations: Sequence[Generation]) -> Iterator[list[list[Note]]]:
        """Step the generations together until every one is done.

        Yields:
            after each step, the notes each generation completed in it (in the order of
            ``generations``); between two yields the caller may read each generation's
            state (its logits are those the next token will be drawn from).

        Raises:
            EngineError: the model call fails.
        """
        while not all(g.done for g in generations):
            self.step(generations)
            yield [g.drain_notes() for g in generations]

    def decode_until_done(self, generations: Sequence[Generation],
                          on_step: Callable[[], None] | None = None) -> list[list[Note]]:
        """Step the generations together until every one is done; each one's notes.

        What offline tools do with a request (generate, evaluation, the jam harness):
        ``on_step`` runs after each step (a progress bar).

        Raises:
            EngineError: the model call fails.
        """
        notes: list[list[Note]] = [[] for _ in generations]
        for fresh in self.iter_steps(generations):
            for out, new in zip(notes, fresh, strict=True):
                out.extend(new)
            if on_step is not None:
                on_step()
        return notes

    # ------------------------------------------------- rows of a key/value model
    # The parts of a step on their own, for the decoder itself and for the benchmark,
    # which times the bare model call and a full recompute at chosen cache lengths.
    def prefill(self, gen: Generation, tokens: Sequence[int], past: int) -> np.ndarray:
        """Run ``tokens`` into the generation's row after its first ``past`` cached
        entries; the logits of the last token.

        The row then holds ``past + len(tokens)`` entries; the generation's own record
        (stream, positions) is the caller's to update.

        Raises:
            EngineError: the model is not a key/value model, or its call fails.
        """
        slot = self._slot(gen)
        binding = BoundCall(self.model, self.pool, start=slot, stop=slot + 1, seq=len(tokens))
        binding.set_row(0, tokens, past)
        binding.run()
        self.pool.lengths[slot] = past + len(tokens)
        return binding.logits[0, -1].copy()  # not a view that keeps [seq, vocab] alive

    def bind_row(self, gen: Generation, tokens: Sequence[int], past: int) -> BoundCall:
        """The call that runs ``tokens`` into the generation's row after ``past`` entries,
        bound once so it can run again and again (``.run()``) without touching the row's
        length: the bare model call, without grammar or sampling.

        Raises:
            EngineError: the model is not a key/value model.
        """
        slot = self._slot(gen)
        binding = BoundCall(self.model, self.pool, start=slot, stop=slot + 1, seq=len(tokens))
        binding.set_row(0, tokens, past)
        return binding

    def seek(self, gen: Generation, length: int) -> None:
        """Make the generation's row count ``length`` cached entries, whatever they hold.

        The next step then attends to that many entries and writes position ``length``:
        the benchmark times steps at a chosen cache length over random keys and values.

        Raises:
            EngineError: the model is not a key/value model, or ``length`` does not fit.
        """
        slot = self._slot(gen)
        # A full row is fine: the next step slides it, as it does a generation's.
        if not 0 <= length <= self.pool.capacity:
            raise EngineError(f"a cache length must be within 0 and the context length "
                              f"{self.pool.capacity} (received {length})")
        self.pool.lengths[slot] = length
        gen.cache_len = length
        gen.next_position = length

    def _slot(self, gen: Generation) -> int:
        if gen.slot is None:
            raise EngineError(f"{gen.id} has no cache row (a recurrent model, or it ended)")
        return gen.slot

    # ----------------------------------------------------------------- decoding
    def _reusable(self, session_key: Hashable, tokens: list[int]) -> tuple[int, Cache]:
        """How many leading tokens the session's cache already holds, and that cache."""
        cached = self._sessions.pop(session_key, None)
        if cached is None or cached.slid:
            return 0, self.ops.empty()
        # At least one token must run to give the next logits.
        reuse = min(common_prefix(cached.stream, tokens), len(tokens) - 1)
        if self.ops.is_kv:
            if reuse > 0:
                return reuse, cached.cache  # the row copies only the first ``reuse``
        elif reuse == len(cached.stream):  # a recurrent state only holds its whole stream
            return reuse, cached.cache
        return 0, self.ops.empty()

    def _sample(self, gen: Generation) -> None:
        """Draw the next token under the grammar; end the generation where it should."""
        if gen.tokens >= gen.max_tokens:
            gen._finish("max_tokens")
            return
        forcing = gen.forcing
        token = forcing.next_forced(gen.grammar) if forcing is not None else None
        if token is None:
            logits, allowed = steer(gen.logits, gen.grammar.allowed(), bias=gen.pitch_bias,
                                    density=gen.density, bar_id=self.tokenizer.bar_id,
                                    eos_id=self.tokenizer.eos_id)
            token = sample(logits, gen.request.sampling, gen.rng, allowed)
            if forcing is not None:
                token = forcing.intercept(gen.grammar, token)
        kind = self.vocab.infos[token].kind
        if kind == "EOS":
            gen._finish("eos")
            return
        if kind == "Bar" and gen.grammar.bar + 1 >= gen.end_bar:
            gen._finish("complete")
            return
        gen.log_prob += log_prob(gen.logits, token)
        gen.at_bar_start = kind == "Bar"
        if gen.at_bar_start and gen.is_branch:
            gen.parked = True  # its bar is complete: the Bar still runs in this step
        note = gen.grammar.feed(token)
        if note is not None and forcing is not None and note.role == LEAD:
            note = None  # the caller's own lead, written into the stream, not an answer
        if note is not None:
            gen._notes.append(note)
            gen.notes_emitted += 1
        if gen.density is not None:
            if kind == "Bar":
                gen.density.next_bar()
            elif note is not None:
                gen.density.add_note()
        gen.pending = token
        gen.tokens += 1

    # ----------------------------------------------------------------- best-of-N
    def step_cost(self, rows: int) -> float:
        """Estimated seconds of one step of ``rows`` rows, from the steps measured so far.

        An unmeasured batch size is scaled linearly from the nearest smaller one measured
        (a batched call costs less than that, so the estimate errs on the safe side), or
        taken from the nearest larger one; with nothing measured yet, 5 ms a row.
        """
        known = self.step_seconds
        if rows in known:
            return known[rows]
        smaller = [k for k in known if k < rows]
        if smaller:
            k = max(smaller)
            return known[k] * rows / k
        larger = [k for k in known if k > rows]
        return known[min(larger)] if larger else 0.005 * rows

    def _observe(self, rows: int, seconds: float) -> None:
        """Fold one step's measured time into the cost of its batch size."""
        old = self.step_seconds.get(rows)
        self.step_seconds[rows] = seconds if old is None else 0.8 * old + 0.2 * seconds

    def candidates_for(self, gen: Generation, other_rows: int = 0) -> int:
        """How many candidates the bar that ``gen`` starts now gets.

        The request's ``candidates.n``, less while ``bar_tokens`` steps of that many rows
        (plus ``other_rows`` of other generations) would not end before the bar's
        deadline; 1 for a recurrent model or a generation with a forced lead line.
        """
        wanted = gen.request.candidates
        if wanted.n <= 1 or self.pool is None or gen.forcing is not None:
            return 1
        if wanted.bpm is None or wanted.ready_ms is None:
            return wanted.n
        request = gen.request
        detok = gen.grammar.detok
        seconds_per_beat = 60.0 / wanted.bpm
        bar_beat = detok.bar_start + detok.offset
        beat = max(request.start_beat, bar_beat)
        deadline = (gen._started + wanted.ready_ms / 1000.0
                    + (beat - request.start_beat) * seconds_per_beat)
        left = deadline - time.perf_counter()
        # A bar entered mid-way (the answer's first) takes about its share of the tokens.
        share = min(1.0, max(0.0, bar_beat + request.bar_length - beat) / request.bar_length)
        tokens = max(1.0, self.bar_tokens * share)
        for n in range(wanted.n, 1, -1):
            if tokens * self.step_cost(n + other_rows) <= left:
                return n
        return 1

    def _fork_where_due(self, active: Sequence[Generation]) -> None:
        """Fork every generation that starts a bar now into its candidates."""
        due = [g for g in active if g.branches is None and g.at_bar_start
               and g.request.candidates.n > 1 and not g.prefill_rest]
        if not due:
            return
        total = sum(1 if g.branches is None else len(g.branches) for g in active)
        for gen in due:
            n = self.candidates_for(gen, other_rows=total - 1)
            if n > 1:
                self._fork(gen, n)
                total += n - 1

    def _fork(self, gen: Generation, n: int) -> None:
        """Split a generation at a bar start into ``n`` candidates of that bar.

        The first candidate takes the generation's row and its random generator (so it
        draws what one candidate would), the others copy the row's prefix and draw from
        generators spawned from it (reproducible with a seeded request).
        """
        assert self.pool is not None and gen.slot is not None
        if gen.call is None:
            gen.call = CallProfile.of(gen.request)
        rngs = [gen.rng, *gen.rng.spawn(n - 1)]
        gen._held, gen._notes = gen._notes, []
        gen._fork_tokens, gen._fork_log_prob = gen.tokens, gen.log_prob
        branches = []
        for index in range(n):
            branch = copy.copy(gen)
            branch.is_branch = True
            branch.parked = False
            branch.branches = None
            branch.grammar = gen.grammar.fork()
            branch.density = copy.copy(gen.density)
            branch.stream = list(gen.stream)
            branch._notes = []
            branch.rng = rngs[index]
            if index:
                branch.slot = self.pool.acquire()
                self.pool.copy_row(gen.slot, branch.slot)
            branches.append(branch)
        gen.slot = None  # the first candidate holds it now
        gen.branches = branches

    def _resolve(self, gen: Generation) -> None:
        """Every candidate finished its bar: keep the critic's choice, drop the others."""
        branches = gen.branches
        assert branches is not None and gen.call is not None
        bar_beat = gen.grammar.detok.bar_start + gen.grammar.detok.offset
        span = bar_beat + gen.request.bar_length - max(gen.request.start_beat, bar_beat)
        candidates = [BarCandidate(b._notes, b.log_prob - gen._fork_log_prob,
                                   b.tokens - gen._fork_tokens, span) for b in branches]
        winner, scores = best(candidates, gen.call, self.critic_weights)
        longest = max(c.tokens for c in candidates)
        self.bar_tokens = 0.7 * self.bar_tokens + 0.3 * max(longest, 1)
        gen.choices.append((len(branches), winner, scores))
        self._adopt(gen, winner)

    def _adopt(self, gen: Generation, winner: int) -> None:
        """Continue ``gen`` from one of its candidates; release the others' rows."""
        branches = gen.branches
        assert branches is not None and self.pool is not None
        chosen = branches[winner]
        for index, branch in enumerate(branches):
            if index != winner and branch.slot is not None:
                self.pool.release(branch.slot)
        for name in ("grammar", "density", "rng", "stream", "slot", "cache_len",
                     "next_position", "slid", "logits", "pending", "tokens", "log_prob",
                     "notes_emitted", "at_bar_start"):
            setattr(gen, name, getattr(chosen, name))
        gen._notes = gen._held + chosen._notes
        gen._held = []
        gen.branches = None
        if chosen.done:
            gen._finish(chosen.reason or "complete")

    def _retire(self, gen: Generation) -> None:
        """Take a finished generation out of the batch and keep its cache for its session."""
        if gen in self._batch:
            self._unbatch()
        if gen.slot is not None:
            gen.cache = self.pool.save(gen.slot)
            self.pool.release(gen.slot)
            gen.slot = None
        if gen.cache is None:
            return
        self._sessions[gen.session_key] = _SessionCache(gen.stream, gen.cache,
                                                        gen.next_position, gen.slid)
        self._sessions.move_to_end(gen.session_key)
        while len(self._sessions) > self.settings.max_cached_sessions:
            self._sessions.popitem(last=False)
        gen.cache = None
        gen.logits = None

    def _unbatch(self) -> None:
        """Give each generation of the batch its own cache back."""
        if self._batch_cache is not None:
            rows = self.ops.unstack(self._batch_cache, self._batch_pads)
            for gen, cache in zip(self._batch, rows, strict=True):
                gen.cache = cache
        self._batch, self._batch_cache, self._batch_pads = [], None, []

    def _slide_if_full(self, running: Sequence[Generation]) -> None:
        """Slide the cache of every generation that would pass the context length."""
        if not self.ops.is_kv:
            return
        context = self.model.context_length
        full = [g for g in running if g.cache_len + 1 > context]
        if not full:
            return
        sink = min(self.settings.sink_tokens, context // 4)
        drop = max(1, int(context * self.settings.slide_fraction))
        for gen in full:
            drop_now = min(drop, gen.cache_len - sink)
            self.pool.slide(gen.slot, sink, drop_now)
            gen.cache_len -= drop_now
            gen.slid = True
            logger.debug("%s: slid the cache window by %d tokens", gen.id, drop_now)

    def _forward(self, running: list[Generation]) -> None:
        """One model call on the pending token of every running generation."""
        if self.pool is None:
            self._forward_recurrent(running)
            return
        self._slide_if_full(running)
        pool = self.pool
        count = len(running)
        slots = np.fromiter((g.slot for g in running), dtype=np.intp, count=count)
        stop = int(slots.max()) + 1
        binding = self._step_binding
        if binding is None or binding.key != (pool.generation, 0, stop, 1):
            binding = self._step_binding = BoundCall(self.model, pool, start=0, stop=stop,
                                                     seq=1)
        # The inputs of ``row_inputs``, written for many rows of one token each. Rows not
        # stepped now (free, or a generation the caller left out) ride along idle:
        # query_seqlens 0, so their cache is untouched whatever token and position they
        # still hold from an earlier step, and their logits are ignored.
        queries = binding.query_seqlens
        queries.fill(0)
        queries[slots] = 1
        binding.input_ids[slots, 0] = np.fromiter((g.pending for g in running),
                                                  dtype=np.int64, count=count)
        binding.position_ids[slots, 0] = np.fromiter((g.next_position for g in running),
                                                     dtype=np.int64, count=count)
        total = pool.lengths[:stop] + queries
        np.maximum(total - 1, 0, out=binding.seqlens_k, casting="unsafe")
        binding.total[()] = max(int(total.max()), 1)
        binding.run()
        pool.lengths[slots] += 1
        # One copy of the stepped rows: a generation's logits must survive later calls
        # that it sits out (its row then gets an idle row's logits in the bound buffer).
        logits = binding.logits[slots, 0]
        for gen, row in zip(running, logits, strict=True):
            gen.logits = row
            gen.stream.append(gen.pending)
            gen.pending = None
            gen.next_position += 1
            gen.cache_len += 1

    def _prefill_next(self, gen: Generation) -> None:
        """Run the next chunk of a generation's prompt into its row."""
        assert gen.slot is not None  # only pool models prefill in chunks
        chunk = self.settings.prefill_chunk or len(gen.prefill_rest)
        tokens, gen.prefill_rest = gen.prefill_rest[:chunk], gen.prefill_rest[chunk:]
        gen.logits = self.prefill(gen, tokens, gen.cache_len)
        gen.stream.extend(tokens)
        gen.cache_len += len(tokens)
        gen.next_position += len(tokens)

    def _forward_recurrent(self, running: list[Generation]) -> None:
        """One call of a recurrent model: states stacked while the batch stays the same."""
        if self._batch != running:
            self._unbatch()
            self._batch_cache, self._batch_pads = self.ops.stack([g.cache for g in running])
            self._batch = list(running)
            for gen in running:
                gen.cache = None
        batch = len(running)
        input_ids = np.fromiter((g.pending for g in running), dtype=np.int64,
                                count=batch).reshape(batch, 1)
        logits, self._batch_cache = self._run(input_ids, self._batch_cache)
        for row, gen in enumerate(running):
            gen.logits = logits[row, -1]
            gen.stream.append(gen.pending)
            gen.pending = None
            gen.next_position += 1
            gen.cache_len += 1

    def _run(self, input_ids: np.ndarray, cache: Cache) -> tuple[np.ndarray, Cache]:
        """One ONNX Runtime call of a recurrent model: logits [B, S, V] and the new state.

        Raises:
            EngineError: ONNX Runtime rejects the inputs or fails.
        """
        feeds = {"input_ids": input_ids}
        feeds.update(zip(self._cache_inputs, cache, strict=True))
        outputs = self.model.run(feeds)
        return outputs[0], outputs[1:]
