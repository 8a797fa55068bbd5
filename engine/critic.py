"""The critic of best-of-N: which of N candidate bars of an answer to keep.

The decoder samples N candidates of a bar in one batch (``engine.decoder``) and asks this
module to score each against the call. A score is a weighted sum of small, comparable
terms (each about 0 for a perfect fit and negative for a poor one, except the
likelihood, which is the model's mean log-probability per token):

- **log-likelihood**: the model's own mean log-probability (nats per token, temperature 1,
  no masks) of the candidate's tokens: the one the model finds most natural;
- **key fit**: the duration-weighted share of the bar's notes in the call's key (the
  steering's key, or the key estimated from the seed when none is steered), minus 1;
- **tonal centre**: the correlation of the bar's duration-weighted pitch classes with the
  call key's Krumhansl profile, minus 1 (0 for fewer than two pitch classes): a bar that
  leans on the key's tonic and fifth scores higher than one in the same scale that leans
  on its second degree; a choice among candidates, where a bias on every token pulled
  answers onto the tonic alone;
- **density**: ``-|log2|`` of the bar's notes over the call's notes per bar (scaled to
  the part of the bar the candidate fills), with half a note added to both so an empty
  bar is a finite, large penalty;
- **register**: semitones of the bar's mean pitch beyond ``register_width`` of the call's
  mean pitch, per octave, negated;
- **rhythmic echo**: cosine similarity of the bar's onsets on a sixteenth grid with the
  call's onset distribution on the same grid (where in the bar the call plays), minus 1;
- **variety**: a bar of three notes or more that dwells on one pitch (its commonest pitch
  carries more of its notes than half, or than the call's own commonest pitch carries of
  the call) loses twice the excess share, and so does a bar that makes the answer so far
  (the bars before it and this one) dwell so; an answer of four notes or more that has
  used only one or two pitches to a call of more loses 1 more (answers only: an
  accompaniment's bass on root and fifth is idiom, not a pedal): the key's pull towards
  the tonic and the likelihood's towards repeating both favour an answer of the tonic
  eight times (or of tonic and fifth in turn), which keeps the key and the rhythm
  perfectly and is no melody, and a sparse answer's bar of two notes cannot show it on
  its own (docs/jam.md).

No style classifier term: the classifier lives in ``models.analysis`` (a logistic
regression over statistics of whole 2-bar segments), which the live engine may not import
(docs/architecture.md), and one bar is too little for its features; the harness judges
style on the whole answer instead, and a critic that chose by the judge's own verdict would
make the harness's fidelity figure say nothing.

Pure numpy, torch-free, a few microseconds per candidate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from models.core.meter import bar_length as meter_bar_length
from models.core.notes import ACCOMPANIMENT, FEW_PITCHES, Note, dwell_share, on_few_pitches
from models.core.protocol.messages import GenerateRequest
from models.core.tonality import Key, estimate_key, key_correlation, scale_share

GRID_PER_BEAT = 4  # sixteenths: the onset grid of the rhythmic echo
_EPS = 1e-6


@dataclass(frozen=True)
class CriticWeights:
    """Weights of the critic's terms (chosen on the jam harness, docs/jam.md).

    Attributes:
        log_likelihood: weight of the mean log-probability per token.
        key: weight of the key fit.
        tonal: weight of the tonal centre.
        density: weight of the density match.
        register: weight of the register match.
        rhythm: weight of the rhythmic echo of the call.
        variety: weight of the penalty on a bar that dwells on one pitch.
    """

    log_likelihood: float = 1.0
    key: float = 2.0
    tonal: float = 3.0
    density: float = 1.0
    register: float = 1.0
    rhythm: float = 1.0
    variety: float = 3.0


@dataclass(frozen=True)
class CallProfile:
    """What the critic compares every candidate bar with; built once per request.

    Attributes:
        key: the call's key (``None``: no key term).
        register_center: the call's mean pitch (``None``: no register term).
        register_width: semitones around it without penalty.
        notes_per_bar: the call's notes per bar (``None``: no density term).
        onset_grid: the call's onsets per sixteenth of the bar, normalised (``None``: no
            rhythm term).
        bar_length: beats per bar.
        pitch_dwell: the share of the call's notes on its commonest pitch (0 without a
            call): a bar may dwell on one pitch as much as this, or half, without penalty.
        pitches: how many distinct pitches the call has (0 without a call, and for
            accompaniment: no few-pitches penalty).
        centre: the key whose tonal centre a bar is scored on (``None``: no tonal term):
            the call's key for an answer; none for accompaniment, whose harmony follows
            the melody's chords (a pull towards the tonic chord once froze it on one
            chord for whole phrases, docs/accompany.md; the term was measured on answers).
    """

    key: Key | None
    register_center: float | None
    register_width: float
    notes_per_bar: float | None
    onset_grid: np.ndarray | None
    bar_length: float
    pitch_dwell: float = 0.0
    centre: Key | None = None
    pitches: int = 0

    @classmethod
    def of(cls, request: GenerateRequest) -> CallProfile:
        """The call of a request: what its steering heard, else what its seed holds."""
        seed = [n for n in request.seed if n.onset < request.start_beat]
        steering = request.steering
        length = meter_bar_length(request.time_signature)
        key = steering.key if steering.key is not None else estimate_key(seed)
        center = steering.register_center
        if center is None and seed:
            center = float(np.mean([n.pitch for n in seed]))
        per_bar = steering.notes_per_bar
        if per_bar is None and seed:
            first = math.floor(min(n.onset for n in seed) / length + _EPS)
            last = math.floor(max(n.onset for n in seed) / length + _EPS)
            per_bar = len(seed) / (last - first + 1)
        grid = onset_grid(seed, length) if seed else None
        if grid is not None:
            grid = grid / max(float(np.linalg.norm(grid)), _EPS)
        accompaniment = request.constraints.role == ACCOMPANIMENT
        # An accompaniment's bass on root and fifth is idiom, not a pedal: the few-pitches
        # rule is the answers' (its call would count melody and accompaniment together).
        pitches = 0 if accompaniment else len({n.pitch for n in seed})
        return cls(key, center, steering.register_width, per_bar, grid, length,
                   dwell_share(seed), None if accompaniment else key, pitches)


@dataclass(frozen=True)
class BarCandidate:
    """One candidate of one bar.

    Attributes:
        notes: its notes on the caller's timeline.
        log_prob: the sum of its tokens' log-probabilities under the model.
        tokens: how many tokens it sampled.
        span: beats of the bar it fills (less than a bar for an answer starting mid-bar).
        before: the answer's notes before this bar (the bars already decided).
    """

    notes: Sequence[Note]
    log_prob: float
    tokens: int
    span: float
    before: Sequence[Note] = ()


def onset_grid(notes: Sequence[Note], bar_length: float) -> np.ndarray:
    """Onsets counted per sixteenth of the bar (position in the bar, every bar folded)."""
    cells = max(1, round(bar_length * GRID_PER_BEAT))
    grid = np.zeros(cells, dtype=np.float64)
    for note in notes:
        place = (note.onset % bar_length) * GRID_PER_BEAT
        grid[math.floor(place + 0.5) % cells] += 1.0
    return grid


def tonal_fit(notes: Sequence[Note], key: Key) -> float:
    """Correlation (-1..1) of the notes' duration-weighted pitch classes with ``key``'s
    profile, as the key estimate correlates them; 1 (no penalty) when fewer than two pitch
    classes sound: no centre to judge (a one-note bar is not worse than silence, and a
    bar dwelling on one pitch is the variety term's)."""
    correlation = key_correlation(notes, key)
    return 1.0 if correlation is None else correlation


VARIETY_MIN_NOTES = 3  # fewer notes in a bar say nothing of dwelling on a pitch
VARIETY_FREE_SHARE = 0.5  # a bar may put this share of its notes on one pitch freely


def variety(candidate: BarCandidate, call: CallProfile) -> float:
    """The variety term (0 at best, negative for a bar that dwells; see the module)."""
    free = max(VARIETY_FREE_SHARE, call.pitch_dwell)
    bar = candidate.notes
    phrase = [*candidate.before, *bar]
    excess = 0.0
    for passage in (bar, phrase):
        if len(passage) >= VARIETY_MIN_NOTES:
            excess = max(excess, dwell_share(passage) - free)
    few = on_few_pitches(phrase) and call.pitches > FEW_PITCHES
    return -2.0 * excess - (1.0 if few else 0.0)


def terms(candidate: BarCandidate, call: CallProfile) -> dict[str, float]:
    """Each term of the score (0 where the call gives nothing to compare with)."""
    notes = candidate.notes
    out = {"log_likelihood": candidate.log_prob / candidate.tokens if candidate.tokens else 0.0,
           "key": 0.0, "tonal": 0.0, "density": 0.0, "register": 0.0, "rhythm": 0.0, "variety": 0.0}
    if call.key is not None and notes:
        out["key"] = (scale_share(notes, call.key) or 0.0) - 1.0
    if call.centre is not None and notes:
        out["tonal"] = tonal_fit(notes, call.centre) - 1.0
    if call.notes_per_bar is not None:
        target = call.notes_per_bar * min(1.0, candidate.span / call.bar_length)
        out["density"] = -abs(math.log2((len(notes) + 0.5) / (target + 0.5)))
    if call.register_center is not None and notes:
        mean = float(np.mean([n.pitch for n in notes]))
        out["register"] = -max(0.0, abs(mean - call.register_center)
                               - call.register_width) / 12.0
    if call.onset_grid is not None:
        if notes:
            mine = (onset_grid(notes, call.bar_length) > 0).astype(np.float64)
            out["rhythm"] = float(mine @ call.onset_grid / max(np.linalg.norm(mine), _EPS)) - 1.0
        else:
            out["rhythm"] = -1.0  # an empty bar echoes nothing
    out["variety"] = variety(candidate, call)
    return out


def score(candidate: BarCandidate, call: CallProfile, weights: CriticWeights) -> float:
    """The weighted sum of the terms: higher is better."""
    # Every term is named as its weight is, so a new term needs no line here.
    return sum(getattr(weights, name) * value for name, value in terms(candidate, call).items())


def best(candidates: Sequence[BarCandidate], call: CallProfile,
         weights: CriticWeights) -> tuple[int, list[float]]:
    """The index of the candidate the critic prefers (the first on a tie) and every score."""
    scores = [score(c, call, weights) for c in candidates]
    return int(np.argmax(scores)), scores
