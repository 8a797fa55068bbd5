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

Best-of-N (``request.candidates``, key/value models): ``engine.candidates`` forks a
generation into a bar's candidates, which ride in the same batched calls here.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from engine.binding import BoundCall
from engine.cache import Cache, CacheOps, KVPool, common_prefix
from engine.candidates import BestOfN
from engine.forcing import LeadForcing
from engine.generation import Generation
from engine.grammar import VocabularyMasks
from engine.model import LoadedModel
from engine.pace import PrefillPace
from engine.prompt import build_prompt
from engine.sampling import log_prob, log_softmax, sample
from engine.steering import BarDensity, ChordBias, pitch_bias, steer
from models.core.exceptions import EngineError
from models.core.notes import LEAD, Note
from models.core.protocol.messages import GenerateRequest, SamplingParams
from models.core.settings import EngineSettings

logger = logging.getLogger(__name__)

@dataclass
class _SessionCache:
    """What a finished generation leaves for the next request of its session."""

    stream: list[int]
    cache: Cache
    next_position: int
    slid: bool


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
        # Best-of-N needs rows to fork into: key/value models only.
        self.best_of_n = BestOfN(self.pool) if self.pool is not None else None
        # Prompt chunks sized to a time budget from the measured cost of a prompt token.
        self.pace = PrefillPace(self.settings.prefill_chunk,
                                self.settings.prefill_chunk_ms / 1000.0)

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
        gen.chords = ChordBias.of(self.vocab, request.steering)
        if lead:
            if not self.vocab.role:
                raise EngineError("a lead line to accompany needs a model with role tokens")
            gen.forcing = LeadForcing(lead, self.vocab)
        steering = request.steering
        if ((steering.notes_per_bar is not None and steering.density_strength > 0)
                or steering.min_notes > 0):
            gen.density = BarDensity.of(steering)
        tokens = prompt.tokens
        if request.morph is not None and request.morph.amount != 0 and self.pool is not None:
            gen.twin = self._twin(gen, request, context, len(tokens))
            gen.morph_amount = request.morph.amount if gen.twin is not None else 0.0
        reuse, cache = self._reusable(session_key, tokens)
        new = tokens[reuse:]
        if self.pool is not None:
            gen.slot = self.pool.acquire()
            if reuse:
                self.pool.load(gen.slot, cache, reuse)
            chunk = self.pace.chunk(len(new)) if prefill else 0
            if chunk:
                gen.logits = self.prefill(gen, new[:chunk], reuse)
                if gen.twin is not None:
                    self._prefill_next(gen.twin)
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

    def _twin(self, gen: Generation, request: GenerateRequest, context: int,
              length: int) -> Generation | None:
        """The twin of a morphing generation: the same request under the other style's
        prompt, in a row of its own, its whole prompt still to run (in chunks)."""
        assert request.morph is not None and self.pool is not None
        other = dataclasses.replace(request, style=request.morph.style, morph=None)
        prompt = build_prompt(self.tokenizer, self.vocab, other,
                              max_tokens=max(8, context - context // 4),
                              allow_eos=self.allow_eos)
        if len(prompt.tokens) != length:  # one style token each: never expected
            logger.warning("%s: the morph prompt has %d tokens, the answer's %d; no morph",
                           gen.id, len(prompt.tokens), length)
            return None
        twin = Generation(f"{gen.id}/morph", gen.session_key, other, grammar=prompt.grammar,
                          end_bar=prompt.end_bar, max_tokens=gen.max_tokens)
        twin.slot = self.pool.acquire()
        twin.prefill_rest = list(prompt.tokens)
        return twin

    def _logits(self, gen: Generation) -> np.ndarray:
        """The distribution ``gen`` samples from: its own, or with a morph the weighted
        geometric mean of its own and its twin's (log-probabilities blended, so the result
        favours what both styles allow); a negative amount extrapolates away from the
        twin's style (guidance)."""
        twin = gen.twin
        if twin is None or twin.logits is None:
            return gen.logits
        a = gen.morph_amount
        return (1.0 - a) * log_softmax(gen.logits) + a * log_softmax(twin.logits)

    def step(self, generations: Sequence[Generation]) -> None:
        """Advance every running generation by one token with one batched model call.

        Raises:
            EngineError: the model call fails.
        """
        began = time.perf_counter()
        active = [g for g in generations if not g.done]
        prefilling = [g for g in active if g.next_prompt()]
        for gen in prefilling:
            # One chunk per generation and step: its own prompt's, then its twin's.
            self._prefill_next(gen if gen.prefill_rest else gen.twin)
        # A generation that ran a prompt chunk this step waits for the next one to sample:
        # one step never costs more than one chunk per generation on top of the batch.
        chunked = {id(g) for g in prefilling}
        active = [g for g in active if id(g) not in chunked]
        if self.best_of_n is not None:
            self.best_of_n.fork_where_due(active)
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
        waiting += [b.twin for b in waiting if b.twin is not None]
        if waiting and running:
            self._slide_if_full(waiting)
        if running:
            twins = [g.twin for g in running if g.twin is not None]
            for gen in running:
                if gen.twin is not None:
                    gen.twin.pending = gen.pending  # the twin reads what its owner drew
            self._forward(running + twins)
        for gen in active:
            if gen.branches is None:
                continue
            assert self.best_of_n is not None  # only key/value models fork
            if all(b.done or b.parked for b in gen.branches):
                self.best_of_n.resolve(gen)
            elif not self.best_of_n.cut_if_late(gen, len(rows)):
                continue
            if gen.done:
                self._retire(gen)
        if self.best_of_n is not None and rows and not prefilling:
            self.best_of_n.observe(len(rows), time.perf_counter() - began)

    def cancel(self, generation: Generation) -> None:
        """End a generation now (reason ``cancelled``); its cache stays with its session."""
        if not generation.done:
            if generation.branches is not None:
                # Mid-bar of best-of-N: keep the first candidate's stream and row (a valid
                # cache for the session), without streaming its notes.
                assert self.best_of_n is not None  # only key/value models fork
                self.best_of_n.adopt(generation, 0)
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
        began = time.perf_counter()
        binding.run()
        self.pace.record(len(tokens), time.perf_counter() - began)
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
            bias = gen.pitch_bias
            if gen.chords is not None:
                detok = gen.grammar.detok
                chord = gen.chords.at(detok.time + detok.offset)
                if chord is not None:
                    bias = chord if bias is None else bias + chord
            logits, allowed = steer(self._logits(gen), gen.grammar.allowed(), bias=bias,
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

    def _retire(self, gen: Generation) -> None:
        """Take a finished generation out of the batch and keep its cache for its session."""
        if gen in self._batch:
            self._unbatch()
        if gen.twin is not None:  # only the answer's own cache is kept
            if gen.twin.slot is not None:
                self.pool.release(gen.twin.slot)
            gen.twin = None
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
        chunk = self.pace.chunk(len(gen.prefill_rest))
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
