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
middle of a note), so the model always sees a well-formed piece. Bars that cannot fit are
dropped before anything is encoded, so the cost of a prompt is bounded by the budget, not
by how far the seed lies from the start or how long it is.
"""

from __future__ import annotations

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
    bar_length = request.bar_length
    ppb = tokenizer.settings.positions_per_beat
    step = (4.0 / denominator) / ppb                 # quarter notes per grid step
    per_bar = numerator * ppb                        # grid steps per bar
    start = _grid(request.start_beat, step)
    start_bar_abs, start_position = divmod(start, per_bar)
    # Notes at or after the start are the response's business, not the seed's.
    seed = sorted((n for n in request.seed if _grid(n.onset, step) < start),
                  key=lambda n: (n.onset, n.pitch))
    first_bar = min((_grid(n.onset, step) // per_bar for n in seed), default=start_bar_abs)
    first_bar = max(first_bar, _first_bar_that_can_fit(
        tokenizer, seed, step=step, per_bar=per_bar, start_bar=start_bar_abs,
        max_tokens=max_tokens))
    while True:
        window = [n for n in seed if _grid(n.onset, step) >= first_bar * per_bar]
        shifted = [Note(max(0.0, n.onset - first_bar * bar_length), n.duration, n.pitch,
                        n.velocity, n.role) for n in window]
        tokens = tokenizer.encode_notes(shifted, (numerator, denominator), style=request.style,
                                        bos=True, eos=False)
        grammar = Grammar(tokenizer, vocab, request.constraints, (numerator, denominator),
                          offset=first_bar * bar_length, allow_eos=allow_eos)
        for token in tokens:
            grammar.feed(token)
        start_bar = start_bar_abs - first_bar
        while grammar.bar < start_bar:
            for token in (tokenizer.bar_id, vocab.time_signature[(numerator, denominator)]):
                tokens.append(token)
                grammar.feed(token)
        if start_position > grammar.position:
            token = tokenizer.vocab.get(f"Position_{start_position}")
            if token is None:
                raise EngineError(f"start position {start_position} is not in the vocabulary")
            tokens.append(token)
            grammar.feed(token)
        if len(tokens) <= max_tokens:
            break
        if first_bar >= start_bar_abs:
            raise EngineError(f"the response start needs {len(tokens)} tokens, more than "
                              f"the model's budget of {max_tokens}")
        # Drop enough whole bars from the start to fit, estimated from the mean bar.
        bars = max(1, start_bar_abs - first_bar + 1)
        excess = len(tokens) - max_tokens
        first_bar = min(start_bar_abs, first_bar + max(1, math.ceil(excess * bars / len(tokens))))
    if grammar.detok.skipped:
        logger.warning("the seed encoded into %d tokens the grammar does not follow: %s",
                       grammar.detok.skipped, grammar.detok.problems[-3:])
    return Prompt(tokens=tokens, grammar=grammar, first_bar=first_bar, start_bar=start_bar,
                  end_bar=start_bar + request.bars, seed_notes=len(window))
