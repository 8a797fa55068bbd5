"""From a request to the token stream the model continues.

The seed notes are re-based so that the first bar of the seed window is the stream's bar 0,
encoded with the request's time signature, and then the start of the response is forced
into the stream: ``Bar TimeSig`` up to the start bar and a ``Position`` for the start beat.
The model therefore starts exactly where the caller asked, on the caller's bar grid.

A model whose vocabulary has style tokens gets ``BOS Style_k`` first, ``k`` the slot its
tokenizer configuration gives the request's style (slot 0, "any style", for a name it
does not know); with role tokens, each seed note is encoded with its role. A vocabulary
without them gets exactly the stream it always got.

A seed longer than the model's budget loses whole bars from its start (never a cut in the
middle of a note), so the model always sees a well-formed piece; the cut falls on a bar
whose index is a multiple of ``CUT_STEP_BARS`` where one fits, so the prompts of a
session's successive requests keep one start and share their cached prefix. Bars that cannot fit are
dropped before anything is encoded, so the cost of a prompt is bounded by the budget, not
by how far the seed lies from the start or how long it is. The rest is encoded once and,
if still too long, cut at a ``Bar`` token (repairing the ``Role`` of the first note kept),
which gives the same tokens as encoding the shorter seed without a second encoding: a
maximal seed is prepared in one pass on the engine's thread.
"""

from __future__ import annotations

import bisect
import logging
import math
from dataclasses import dataclass

from engine.grammar import Grammar, VocabularyMasks
from models.core.exceptions import EngineError
from models.core.notes import Note
from models.core.protocol.messages import GenerateRequest
from models.core.tokenizer import MelodyTokenizer

logger = logging.getLogger(__name__)


@dataclass
class Prompt:
    """The stream to prefill and where the response lies in it.

    Attributes:
        tokens: ``BOS``, the encoded seed and the forced start tokens.
        grammar: the stream's grammar, already fed with ``tokens``.
        first_bar: the caller's bar index of the stream's bar 0.
        start_bar: stream bar in which the response starts.
        end_bar: stream bar at whose start the response ends.
        seed_notes: seed notes the prompt holds (after trimming).
    """

    tokens: list[int]
    grammar: Grammar
    first_bar: int
    start_bar: int
    end_bar: int
    seed_notes: int


def _grid(beats: float, step: float) -> int:
    """Grid index of a time in beats (rounded like the tokenizer's quantization)."""
    return math.floor(beats / step + 0.5)


# The fewest tokens a seed note encodes into (Pitch, Velocity, Duration; its Position may
# be shared) and a bar (Bar TimeSig: MidiTok's REMI repeats the signature every bar, and
# the bars up to the start are forced as both), for ``_first_bar_that_can_fit``.
_MIN_TOKENS_PER_NOTE = 3
# A seed cut to fit starts on a bar whose index is a multiple of this (see ``_cut_bars``).
CUT_STEP_BARS = 4
_MIN_TOKENS_PER_BAR = 2


def _first_bar_that_can_fit(tokenizer: MelodyTokenizer, seed: list[Note], *, step: float,
                            per_bar: int, start_bar: int, max_tokens: int) -> int:
    """The earliest seed bar from which the prompt could still fit in ``max_tokens``.

    A window from bar ``b`` to the start needs at least ``BOS``, ``Bar TimeSig`` per bar
    and three tokens per distinct note the vocabulary can hold; any earlier bar would be
    trimmed by ``build_prompt`` anyway, so it is never encoded. Returns ``start_bar``
    when no seed bar fits (the response then starts without seed notes).
    """
    counts: dict[int, int] = {}
    seen: set[tuple[int, int]] = set()
    for note in seed:
        grid = _grid(note.onset, step)
        # MidiTok drops notes outside its vocabulary's pitches; identical (onset, pitch)
        # pairs are counted once in case a MidiTok merges them. The bound must stay a
        # lower bound, or bars that fit would be dropped.
        if (grid, note.pitch) in seen or f"Pitch_{note.pitch}" not in tokenizer.vocab:
            continue
        seen.add((grid, note.pitch))
        bar = grid // per_bar
        counts[bar] = counts.get(bar, 0) + 1
    first = start_bar
    notes = 0
    for bar in sorted(counts, reverse=True):
        notes += counts[bar]
        needed = 1 + _MIN_TOKENS_PER_BAR * (start_bar - bar) + _MIN_TOKENS_PER_NOTE * notes
        if needed > max_tokens:
            break
        first = bar
    return first


def build_prompt(tokenizer: MelodyTokenizer, vocab: VocabularyMasks, request: GenerateRequest,
                 max_tokens: int, *, allow_eos: bool = True) -> Prompt:
    """Encode a request's seed and force its start.

    The seed is encoded once; when the prompt does not fit, whole bars are cut from the
    front of the encoded tokens (see ``_cut_bars``), so the result is token for token the
    prompt of the trimmed seed, and the grammar follows the final tokens once.

    Args:
        tokenizer: the model's vocabulary.
        vocab: the per-kind masks of that vocabulary.
        request: the seed, start beat, bars, time signature and constraints.
        max_tokens: most prompt tokens; earlier seed bars are dropped to fit.
        allow_eos: whether the response may end with ``EOS`` before its last bar.

    Raises:
        EngineError: the time signature is not in the vocabulary, the constraints leave no
            pitch, or the start alone does not fit in ``max_tokens``.
    """
    numerator, denominator = request.time_signature
    time_signature = (numerator, denominator)
    bar_length = request.bar_length
    ppb = tokenizer.settings.positions_per_beat
    step = (4.0 / denominator) / ppb                 # quarter notes per grid step
    per_bar = numerator * ppb                        # grid steps per bar
    start = _grid(request.start_beat, step)
    start_bar_abs, start_position = divmod(start, per_bar)
    # Notes at or after the start are the response's business, not the seed's.
    seed = sorted((n for n in request.seed if _grid(n.onset, step) < start),
                  key=lambda n: (n.onset, n.pitch))
    grids = [_grid(n.onset, step) for n in seed]     # ascending, as the onsets are
    seed_bar = grids[0] // per_bar if grids else start_bar_abs
    first_bar = max(seed_bar, _first_bar_that_can_fit(
        tokenizer, seed, step=step, per_bar=per_bar, start_bar=start_bar_abs,
        max_tokens=max_tokens))
    # The grammar's refusals (time signature, constraints) before anything is encoded.
    Grammar(tokenizer, vocab, request.constraints, time_signature)
    signature_id = vocab.time_signature[time_signature]
    window = seed[bisect.bisect_left(grids, first_bar * per_bar):]
    shifted = [Note(max(0.0, n.onset - first_bar * bar_length), n.duration, n.pitch,
                    n.velocity, n.role) for n in window]
    encoded = tokenizer.encode_notes(shifted, time_signature, style=request.style,
                                     bos=True, eos=False)
    head = next((i for i, t in enumerate(encoded) if t == tokenizer.bar_id), len(encoded))
    cut = _cut_bars(tokenizer, vocab, encoded, head, signature_id=signature_id,
                    first_bar=first_bar, start_bar=start_bar_abs,
                    start_position=start_position, max_tokens=max_tokens,
                    whole=first_bar == seed_bar)
    tokens, first_bar = cut.tokens, cut.first_bar
    start_bar = start_bar_abs - first_bar
    for token in cut.tail:
        if token is None:
            raise EngineError(f"start position {start_position} is not in the vocabulary")
    tokens.extend(cut.tail)
    if len(tokens) > max_tokens:
        raise EngineError(f"the response start needs {len(tokens)} tokens, more than "
                          f"the model's budget of {max_tokens}")
    grammar = Grammar(tokenizer, vocab, request.constraints, time_signature,
                      offset=first_bar * bar_length, allow_eos=allow_eos)
    for token in tokens:
        grammar.feed(token)
    if grammar.detok.skipped:
        logger.warning("the seed encoded into %d tokens the grammar does not follow: %s",
                       grammar.detok.skipped, grammar.detok.problems[-3:])
    kept = len(seed) - bisect.bisect_left(grids, first_bar * per_bar)
    return Prompt(tokens=tokens, grammar=grammar, first_bar=first_bar, start_bar=start_bar,
                  end_bar=start_bar + request.bars, seed_notes=kept)


@dataclass
class _Cut:
    """What ``_cut_bars`` keeps: the prompt's tokens before its forced start, the
    caller's bar index of their bar 0, and the forced start (``None`` stands for a
    ``Position`` the vocabulary lacks)."""

    tokens: list[int]
    first_bar: int
    tail: list[int | None]


def _start_tail(tokenizer: MelodyTokenizer, signature_id: int, *, bar: int, position: int,
                start_bar: int, start_position: int) -> list[int | None]:
    """The tokens that force the start after a stream whose state is ``bar`` (-1 before
    the first ``Bar``) and ``position`` (-1 before a ``Position`` in that bar): ``Bar
    TimeSig`` up to the start bar, then the start's ``Position`` unless the stream is
    already there. Relative bars; what the grammar will then agree with."""
    tail: list[int | None] = []
    while bar < start_bar:
        tail += [tokenizer.bar_id, signature_id]
        bar += 1
        position = -1
    if start_position > position:
        tail.append(tokenizer.vocab.get(f"Position_{start_position}"))
    return tail


def _cut_bars(tokenizer: MelodyTokenizer, vocab: VocabularyMasks, encoded: list[int],
              head: int, *, signature_id: int, first_bar: int, start_bar: int,
              start_position: int, max_tokens: int, whole: bool = True) -> _Cut:
    """Drop leading bars of an encoded seed for the prompt to fit (on a step bar).

    ``encoded`` is ``BOS [Style]`` (its first ``head`` tokens) and MidiTok's REMI of a
    seed whose bar 0 is the caller's ``first_bar``: one ``Bar TimeSig`` per bar from
    bar 0 (empty ones too) and nothing after the last note. Cutting it just before the
    ``Bar`` of a bar ``j`` that holds a note gives what encoding the seed's notes from bar
    ``first_bar + j`` on gives, with one repair: MidiTok names the role of a stream's
    first note (a ``Role`` token before its ``Pitch``) and after that only changes of
    role, so where the first note after the cut has none, the role in force there is
    written before its ``Pitch``. The forced start after the seed depends only on its last
    bar, which every cut keeps; when even the last bar does not fit, no seed is left and
    the stream starts at the start bar. ``whole``: ``encoded`` is the whole seed (no bar
    was dropped before encoding), which is then kept whole if it fits.
    """
    bar_id = tokenizer.bar_id
    infos = vocab.infos
    bars = [i for i in range(head, len(encoded)) if encoded[i] == bar_id]
    if bars:
        last_position = -1
        for token in reversed(encoded[bars[-1]:]):
            if infos[token].kind == "Position":
                last_position = int(vocab.position[token])
                break
        tail = _start_tail(tokenizer, signature_id, bar=len(bars) - 1,
                           position=last_position, start_bar=start_bar - first_bar,
                           start_position=start_position)
        # Bars that hold a note: (bar, index of its Bar token, index of its first Pitch,
        # the Role token to write before that Pitch or None), in order.
        candidates: list[tuple[int, int, int, int | None]] = []
        role: int | None = None          # the Role token in force
        bar, named, noted = -1, False, True
        for i in range(bars[0], len(encoded)):
            token = encoded[i]
            kind = infos[token].kind
            if token == bar_id:
                bar, named, noted = bar + 1, False, False
            elif kind == "Role":
                role, named = token, True
            elif kind == "Pitch" and not noted:
                noted = True
                repair = role if tokenizer.has_roles and not named else None
                candidates.append((bar, bars[bar], i, repair))
        # The whole seed if it fits. Otherwise the first cut on a bar whose index on the
        # caller's timeline is a multiple of CUT_STEP_BARS: successive requests of a
        # session (accompany mode asks every bar) then keep the same first bar until the
        # cut has to move by a whole step, so each prompt begins like the previous one
        # and the engine reuses its cache; cutting the fewest bars would move the first
        # bar, and with it every token, at each request. Any cut that fits otherwise.
        fitting = [c for c in candidates
                   if head + len(encoded) - c[1] + (c[3] is not None) + len(tail) <= max_tokens]
        if fitting:
            uncut = fitting[0] if whole and fitting[0] is candidates[0] else None
            aligned = next((c for c in fitting if (first_bar + c[0]) % CUT_STEP_BARS == 0),
                           None)
            bar, at, pitch_at, repair = uncut or aligned or fitting[0]
            body = encoded[at:]
            if repair is not None:
                body.insert(pitch_at - at, repair)
            return _Cut(encoded[:head] + body, first_bar + bar, tail)
    # No seed bar fits (or there is none): the stream starts at the start bar.
    return _Cut(encoded[:head], start_bar,
                _start_tail(tokenizer, signature_id, bar=-1, position=-1, start_bar=0,
                            start_position=start_position))
