"""The jam harness: scripted calls played through the bridge's decisions and the real engine.

Each call is a phrase a player might play (a C-major line, other keys, meters, tempi,
sparse and dense, held-out openings of real music). It is fed note by note into the
bridge's own ``SeedWindow`` and policy on a simulated beat clock, exactly as the daemon's
loop would (inputs first, then the policy at each time it asks to be woken), so the answer
is requested at the same beat, with the same seed and start beat, and with the same
``generate`` request (``bridge.requests``) that melodyd would send. The request is encoded
and decoded as on the wire (``models.core.protocol``, the engine's own validation) and
goes to the live decoder (``allow_eos`` as the server has it), in process, one answer at a
time as in a jam, timed on the wall clock.

Every answer is scored against its call (``score_answer``); ``engine.tools.jam_summary``
summarises the scores per style and per call family. Call-and-response is the mode measured
here; accompaniment is ``melody accompany-eval``'s (``--live`` decodes it as accompany
mode does), though ``simulate`` drives either policy.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from bridge.ear import Ear
from bridge.policy import AccompanyPolicy, CallResponsePolicy, Trigger
from bridge.requests import generate_request
from bridge.seed import SeedWindow
from engine.decoder import StyleDecoder
from engine.streams import decoder_facts
from models.analysis.music_stats import is_monotone, mean_pitch, rhythmic_similarity
from models.core import protocol
from models.core.meter import bar_length
from models.core.notes import Note
from models.core.protocol.messages import GenerateRequest
from models.core.settings import Settings
from models.core.tonality import estimate_key, scale_share

NEAR_SILENT_PER_BAR = 1.0  # an answer with fewer notes per bar is no answer
DENSITY_BAND = (0.5, 2.0)  # answer/call notes per bar counted as "following the density"
SESSION = "melodyd-jam"  # the daemon's session name is per process; one name here
COUNT_IN_BARS = 1  # calls start on bar 1, as after a count-in


# ----------------------------------------------------------------- calls
@dataclass(frozen=True)
class Call:
    """A phrase the harness plays.

    Attributes:
        name: unique name (``c_major``, ``key_A_minor``, ``heldout_folk``).
        family: what it varies (``c_major``, ``keys``, ``meters``, ``tempi``, ``texture``,
            ``held-out``).
        notes: the phrase, from beat 0 of its first bar.
        time_signature: ``(numerator, denominator)``.
        bpm: the tempo it is played at.
        source: where it comes from (``synthetic`` or a held-out piece).
    """

    name: str
    family: str
    notes: tuple[Note, ...]
    time_signature: tuple[int, int] = (4, 4)
    bpm: float = 120.0
    source: str = "synthetic"

    @property
    def bar_length(self) -> float:
        """Beats per bar."""
        return bar_length(self.time_signature)

    @property
    def bars(self) -> int:
        """Bars from the first to the one holding the last onset."""
        last = max((n.onset for n in self.notes), default=0.0)
        return math.floor(last / self.bar_length + 1e-6) + 1


MAJOR = (0, 2, 4, 5, 7, 9, 11)
HARMONIC_MINOR = (0, 2, 3, 5, 7, 8, 11)
# Scale degrees of the synthetic phrases: up, a turn, down to the tonic; as many as a
# phrase needs are taken, and the last note is always the tonic (a phrase that cadences).
_DEGREES = (0, 1, 2, 3, 4, 2, 3, 1, 2, 4, 5, 4, 3, 2, 1, 0)


def scale_phrase(tonic: int, mode: str, rhythm: tuple[Sequence[float], Sequence[float]], *,
                 bars: int, bar_length: float, velocity: int = 90) -> tuple[Note, ...]:
    """A scale-wise phrase in a key with the given rhythm repeated in every bar.

    Args:
        tonic: MIDI pitch of the tonic (60 = middle C).
        mode: ``major`` or ``minor`` (harmonic minor).
        rhythm: onsets within one bar (beats) and their durations.
        bars: how many bars.
        bar_length: beats per bar.
    """
    scale = MAJOR if mode == "major" else HARMONIC_MINOR
    onsets, durations = rhythm
    count = len(onsets) * bars
    degrees = [_DEGREES[i % len(_DEGREES)] for i in range(count - 1)] + [0]
    notes = []
    for i, degree in enumerate(degrees):
        bar, k = divmod(i, len(onsets))
        octave, step = divmod(degree, len(scale))
        notes.append(Note(bar * bar_length + onsets[k], durations[k],
                          tonic + 12 * octave + scale[step], velocity))
    return tuple(notes)


def _even(per_bar: int, bar_length: float) -> tuple[list[float], list[float]]:
    step = bar_length / per_bar
    return [i * step for i in range(per_bar)], [step * 0.9] * per_bar


def synthetic_calls(bars: int = 2) -> list[Call]:
    """The scripted calls: C major, other keys, meters, tempi, sparse and dense."""

    def phrase(tonic: int, mode: str, rhythm: tuple[Sequence[float], Sequence[float]],
               bar_length: float = 4.0) -> tuple[Note, ...]:
        return scale_phrase(tonic, mode, rhythm, bars=bars, bar_length=bar_length)

    quarters = _even(4, 4.0)
    # 6/8 in its lilt: quarter-eighth twice per bar (beats are quarter notes).
    lilt = ([0.0, 1.0, 1.5, 2.5], [0.9, 0.45, 0.9, 0.45])
    calls = [Call("c_major", "c_major", phrase(60, "major", quarters))]
    for name, tonic, mode in (("G_major", 67, "major"), ("F_major", 65, "major"),
                              ("A_minor", 57, "minor"), ("Eb_major", 63, "major")):
        calls.append(Call(f"key_{name}", "keys", phrase(tonic, mode, quarters)))
    calls.append(Call("meter_3_4", "meters", phrase(60, "major", _even(3, 3.0), 3.0), (3, 4)))
    calls.append(Call("meter_6_8", "meters", phrase(60, "major", lilt, 3.0), (6, 8)))
    for bpm in (70, 100, 120, 160):
        calls.append(Call(f"tempo_{bpm}", "tempi", phrase(60, "major", quarters),
                          bpm=float(bpm)))
    calls.append(Call("sparse_2_per_bar", "texture", phrase(60, "major", _even(2, 4.0))))
    calls.append(Call("dense_8_per_bar", "texture", phrase(60, "major", _even(8, 4.0))))
    return calls


# ----------------------------------------------------------------- the bridge, simulated
@dataclass(frozen=True)
class Requested:
    """A request the bridge made while a call was played.

    Attributes:
        beat: the simulated beat the policy fired at (when the request goes out).
        trigger: what the policy asked for.
        seed: the seed window's notes at that beat.
    """

    beat: float
    trigger: Trigger
    seed: tuple[Note, ...]


def make_policy(mode: str, settings: Settings, bar_length: float
                ) -> CallResponsePolicy | AccompanyPolicy:
    """The daemon's policy for ``mode`` (``call`` or ``accompany``), from ``[interaction]``."""
    inter = settings.interaction
    if mode == "call":
        return CallResponsePolicy.from_settings(inter, bar_length)
    return AccompanyPolicy(bar_length, inter.seed_bars)


def simulate(call: Call, settings: Settings, mode: str = "call",
             offset: float | None = None) -> list[Requested]:
    """Play ``call`` into the seed window and policy; every request the daemon would make.

    Like the daemon's loop: each input is applied at its beat, then the policy is asked;
    between inputs the clock advances to whatever beat the policy's ``next_check`` names.
    Releases sort before presses at the same beat (a legato player lifts, then presses).

    Args:
        call: the phrase.
        settings: ``[interaction]`` gives the seed length, the silence and the lead time.
        mode: ``call`` (call-and-response) or ``accompany``.
        offset: beat where the call starts (default: after a count-in bar).
    """
    bar_length = call.bar_length
    offset = COUNT_IN_BARS * bar_length if offset is None else offset
    window = SeedWindow(settings.interaction.seed_bars, bar_length)
    policy = make_policy(mode, settings, bar_length)
    lead = settings.interaction.min_lead_ms / 1000.0 * call.bpm / 60.0
    events = sorted([(n.onset + offset, 1, n.pitch, n.velocity) for n in call.notes]
                    + [(n.end + offset, 0, n.pitch, 0) for n in call.notes])
    requests: list[Requested] = []

    def ask(now: float) -> None:
        trigger = policy.due(now, window, lead)
        if trigger is not None:
            seed = window.notes(now, own_until=trigger.own_until)
            requests.append(Requested(now, trigger, tuple(seed)))

    def advance(until: float) -> None:
        now = None
        while True:
            when = policy.next_check(window, now if now is not None else until)
            if when is None or when >= until or (now is not None and when <= now):
                return
            now = when
            ask(now)

    for beat, press, pitch, velocity in events:
        advance(beat)
        if press:
            window.note_on(beat, pitch, velocity)
            # A barge-in stops an answer the player talks over; one asked ahead of a silence
            # the player breaks is dropped before it sounds, as if never asked for.
            if (policy.on_player_note(beat) and requests
                    and requests[-1].trigger.start_beat > beat):
                requests.pop()
        else:
            window.note_off(beat, pitch)
        ask(beat)
    advance(math.inf)
    return requests


def request_for(requested: Requested, call: Call, settings: Settings, *, style: str,
                facts: dict[str, Any], request_id: str) -> GenerateRequest:
    """The daemon's ``generate`` for a request, through the engine's own validation.

    A fresh ``Ear`` hears the call as the daemon's would on a jam's first phrase.

    Raises:
        ProtocolError: the engine would refuse it.
    """
    request = generate_request(settings, style=style, facts=facts,
                               temperature=settings.sampling.temperature, seed=requested.seed,
                               time_signature=call.time_signature,
                               start_beat=requested.trigger.start_beat,
                               bars=requested.trigger.bars,
                               steering=Ear(settings.interaction).steering(
                                   requested.seed, call.bar_length),
                               now_beat=requested.beat, bpm=call.bpm)
    frame = protocol.encode(protocol.GenerateMessage(request_id, SESSION, request))
    return cast(protocol.GenerateMessage, protocol.decode_request(frame)).request


# ----------------------------------------------------------------- the engine
@dataclass
class Decoded:
    """One answer from the decoder.

    Attributes:
        notes: its notes on the jam's timeline.
        reason: why it ended.
        tokens: tokens sampled.
        log_likelihood: mean log-probability (nats) of the sampled tokens under the model's
            own distribution (temperature 1, no masks); ``None`` without tokens.
        first_note_s: wall seconds from the request to the first streamed note.
        first_onset: that first streamed batch's earliest onset (beats).
        total_s: wall seconds of the whole answer.
        candidates: candidates of each bar decided by best-of-N (empty: none was).
        cut_bars: bars decided at their deadline before every candidate had finished
            (``engine.candidates.BestOfN.cut_if_late``).
    """

    notes: list[Note]
    reason: str
    tokens: int
    log_likelihood: float | None
    first_note_s: float | None
    first_onset: float | None
    total_s: float
    candidates: list[int] = field(default_factory=list)
    cut_bars: int = 0


def decode(decoder: StyleDecoder, request: GenerateRequest, session: str,
           request_id: str) -> Decoded:
    """Run one request alone through the decoder, as the server steps it, timing it.

    Raises:
        EngineError: the model fails or cannot encode the request.
    """
    started = time.perf_counter()
    cuts = decoder.best_of_n.cuts if decoder.best_of_n is not None else 0
    gen = decoder.start(session, request, request_id)
    notes: list[Note] = []
    first_s = first_onset = None
    for (fresh,) in decoder.iter_steps([gen]):
        if fresh and first_s is None:
            first_s = time.perf_counter() - started
            first_onset = min(n.onset for n in fresh)
        notes.extend(fresh)
    # The decoder keeps the log-probability of the tokens it kept (with best-of-N, the
    # winning candidates' only).
    return Decoded(notes, gen.reason or "", gen.tokens,
                   gen.log_prob / gen.tokens if gen.tokens else None,
                   first_s, first_onset, time.perf_counter() - started,
                   [n for n, _, _ in gen.choices],
                   (decoder.best_of_n.cuts - cuts) if decoder.best_of_n is not None else 0)


# ----------------------------------------------------------------- scoring
def score_answer(call: Sequence[Note], answer: Sequence[Note], *, bar_length: float,
                 call_bars: int, answer_bars: int) -> dict[str, Any]:
    """The musical scores of one answer to one call (both on their own timelines).

    Returns:
        ``call_key``/``answer_key`` (names or ``None``), ``key_agreement`` (1 same tonic
        and mode, 0 not or when the answer has too few pitch classes for a key, ``None``
        when the call has no key or the answer no notes), ``in_scale`` (duration share of
        the answer in the call key's scale), ``monotone`` (the answer dwells on one pitch:
        ``models.analysis.music_stats.is_monotone``), ``call_per_bar`` and
        ``answer_per_bar`` (notes per bar), ``density_ratio`` (answer/call), ``in_density``
        (ratio within ``DENSITY_BAND``), ``register_distance`` (semitones between mean
        pitches), ``rhythm`` (``models.analysis.music_stats.rhythmic_similarity``) and
        ``near_silent`` (fewer than ``NEAR_SILENT_PER_BAR`` notes per bar).
    """
    call_key, answer_key = estimate_key(call), estimate_key(answer)
    # An answer of one pitch class states no key: it does not keep the call's (before,
    # such answers were left out, and the tonic repeated counted as a key kept).
    agreement = (None if call_key is None or not answer else 0.0 if answer_key is None else
                 float((call_key.tonic, call_key.mode) == (answer_key.tonic, answer_key.mode)))
    call_per_bar = len(call) / max(call_bars, 1)
    answer_per_bar = len(answer) / max(answer_bars, 1)
    ratio = answer_per_bar / call_per_bar if call_per_bar > 0 else None
    call_pitch, answer_pitch = mean_pitch(call), mean_pitch(answer)
    return {
        "call_key": None if call_key is None else call_key.name,
        "answer_key": None if answer_key is None else answer_key.name,
        "key_agreement": agreement,
        "in_scale": None if call_key is None else scale_share(answer, call_key),
        "monotone": is_monotone(answer),
        "call_per_bar": call_per_bar,
        "answer_per_bar": answer_per_bar,
        "density_ratio": ratio,
        "in_density": None if ratio is None else DENSITY_BAND[0] <= ratio <= DENSITY_BAND[1],
        "register_distance": (None if call_pitch is None or answer_pitch is None
                              else abs(answer_pitch - call_pitch)),
        "rhythm": rhythmic_similarity(call, answer, bar_length),
        "near_silent": answer_per_bar < NEAR_SILENT_PER_BAR,
    }


def lead_time(decoded: Decoded, requested: Requested, bpm: float) -> dict[str, Any]:
    """How long before it must sound the first note was ready (the request goes out at
    the beat the policy fired; the note is due at its onset at the call's tempo)."""
    if decoded.first_note_s is None or decoded.first_onset is None:
        return {"lead_ms": None, "lead_beats": None}
    due_s = (decoded.first_onset - requested.beat) * 60.0 / bpm
    lead_s = due_s - decoded.first_note_s
    return {"lead_ms": 1000.0 * lead_s, "lead_beats": lead_s * bpm / 60.0,
            "first_note_ms": 1000.0 * decoded.first_note_s,
            "first_note_after_call_beats": decoded.first_onset - requested.beat}


# ----------------------------------------------------------------- a run
@dataclass
class JamConfig:
    """What one harness run plays.

    Attributes:
        repeats: answers per call and style (sampling seeds ``seed``, ``seed + 1``, ...).
        seed: the first sampling seed.
        mode: ``call`` (accompaniment is measured by ``melody accompany-eval``, with
            ``--live`` as accompany mode plays it).
    """

    repeats: int = 3
    seed: int = 0
    mode: str = "call"
    settings: Settings = field(default_factory=Settings)


Verdict = Callable[[Sequence[Note], float], dict[str, Any]]


def answer_call(decoder: StyleDecoder, style: str, call: Call, config: JamConfig, *,
                repeat: int, verdict: Verdict | None = None) -> dict[str, Any]:
    """Play one call, request and decode its answer, and score it (one JSON record).

    Raises:
        EngineError: the model fails.
        ProtocolError: the request is one the engine would refuse.
    """
    # The daemon samples with fresh entropy (seed -1); the harness fixes one per answer.
    seed = config.seed + repeat
    settings = dataclasses.replace(
        config.settings, sampling=dataclasses.replace(config.settings.sampling, seed=seed))
    made = simulate(call, settings, config.mode)
    record: dict[str, Any] = {"style": style, "call": call.name, "family": call.family,
                              "repeat": repeat, "sampling_seed": seed, "bpm": call.bpm,
                              "time_signature": list(call.time_signature),
                              "requests": len(made)}
    if not made:
        record["error"] = "the policy never asked for an answer"
        return record
    requested = made[-1]  # earlier ones were cut off by the player's next note (barge-in)
    facts = decoder_facts(decoder)
    request = request_for(requested, call, settings, style=style, facts=facts,
                          request_id=f"{call.name}/{repeat}")
    # A fresh session per answer: no cached prefix, the first answer of a jam (the
    # slowest to start).
    decoded = decode(decoder, request, f"{SESSION}/{style}/{call.name}/{repeat}",
                     f"{call.name}/{repeat}")
    start = requested.trigger.start_beat
    answer = [n.shifted(-start) for n in decoded.notes]
    offset = COUNT_IN_BARS * call.bar_length
    record.update(request_beat=requested.beat - offset, start_beat=start - offset,
                  seed_notes=len(requested.seed), bars=requested.trigger.bars,
                  reason=decoded.reason, tokens=decoded.tokens, notes=len(answer),
                  log_likelihood=decoded.log_likelihood, decode_ms=1000.0 * decoded.total_s,
                  candidates=decoded.candidates, cut_bars=decoded.cut_bars)
    record.update(lead_time(decoded, requested, call.bpm))
    record.update(score_answer(call.notes, answer, bar_length=call.bar_length,
                               call_bars=call.bars, answer_bars=requested.trigger.bars))
    if verdict is not None:
        record.update(verdict(answer, requested.trigger.bars * call.bar_length))
    record["answer"] = [[round(n.onset, 4), round(n.duration, 4), n.pitch, n.velocity]
                        for n in answer]
    return record


def classifier_verdict(classifier: Any, style: str) -> Verdict:
    """A verdict function: the classifier's style for an answer and its belief in ``style``.

    Answers too short to judge (``MIN_SEGMENT_NOTES``) get ``None``: they are counted as
    not recognised, as ``melody eval-styles`` counts them.
    """
    from models.analysis.style_classifier import MIN_SEGMENT_NOTES, Segment, feature_matrix  # noqa: PLC0415

    classes = list(classifier.classes)

    def judge(notes: Sequence[Note], length: float) -> dict[str, Any]:
        if len(notes) < MIN_SEGMENT_NOTES:
            return {"style_verdict": None, "style_prob": None}
        proba = classifier.predict_proba(feature_matrix([Segment(tuple(notes), length)]))[0]
        return {"style_verdict": classes[int(np.argmax(proba))],
                "style_prob": float(proba[classes.index(style)]) if style in classes else None}

    return judge
