"""Writing a known lead into the stream while the model writes the accompaniment
(engine.forcing), the accompaniment rules (models.core.accompaniment) and
``melody harmonize`` on them, with the tiny role-conditioned fixture model."""

from __future__ import annotations

import pytest

from engine.decoder import StyleDecoder
from engine.model import load_model
from engine.tools.harmonize import harmonize, hints_between
from models.core.accompaniment import (
    MIN_ROOM,
    accompaniment_constraints,
    accompaniment_steering,
    with_roles,
)
from models.core.exceptions import EngineError
from models.core.notes import Note
from models.core.protocol.messages import (
    ChordHint,
    Constraints,
    GenerateRequest,
    SamplingParams,
    Steering,
)
from models.core.settings import EngineSettings, InteractionSettings, Settings
from models.core.streaming import StreamingDetokenizer
from models.data.midifile import read_midi, write_midi

# A four-bar melody in 4/4 on the grid: quarters, a half, an eighth pair, a chord.
MELODY = [Note(float(i), 1.0, p, 90) for i, p in enumerate((72, 74, 76, 77))]
MELODY += [Note(4.0, 2.0, 79, 90), Note(6.0, 0.5, 77, 90), Note(6.5, 0.5, 76, 90)]
MELODY += [Note(8.0, 1.0, 74, 90), Note(8.0, 1.0, 79, 90), Note(13.0, 1.0, 72, 90)]


@pytest.fixture(scope="module")
def decoder(tiny_conditioned_onnx):
    model = load_model(tiny_conditioned_onnx, EngineSettings(intra_op_threads=1))
    return StyleDecoder(model, EngineSettings(intra_op_threads=1), allow_eos=False)


def _request(seed: int, **constraints) -> GenerateRequest:
    return GenerateRequest(seed=(), start_beat=0.0, bars=4, time_signature=(4, 4),
                           style="pop", sampling=SamplingParams(seed=seed),
                           constraints=Constraints(role="accompaniment", **constraints))


@pytest.mark.parametrize("seed", range(6))
def test_every_lead_note_is_written_at_its_time_and_only_accompaniment_returns(decoder, seed):
    generation = decoder.start("s", _request(seed), lead=MELODY)
    stream_start = len(generation.stream)
    (notes,) = decoder.decode_until_done([generation])
    assert generation.forcing.written == len(MELODY) and generation.forcing.dropped == 0
    assert all(n.role == "accompaniment" for n in notes)
    assert all(0.0 <= n.onset < 16.0 for n in notes)
    # Decoding the stream the cache holds gives back the melody, note for note, as lead.
    detok = StreamingDetokenizer(decoder.tokenizer)
    written = detok.feed_many(generation.stream[:stream_start] + _fed(generation, stream_start))
    lead = sorted((n.onset, n.pitch) for n in written if n.role == "lead")
    assert lead == sorted((n.onset, n.pitch) for n in MELODY)
    # Never the lead's pitch at the lead's onset.
    starts = {(n.onset, n.pitch) for n in MELODY}
    assert not [n for n in notes if (n.onset, n.pitch) in starts]


def _fed(generation, start: int) -> list[int]:
    """The tokens fed after the prompt (the stream plus the last pending token)."""
    tokens = list(generation.stream[start:])
    return tokens + ([generation.pending] if generation.pending is not None
                     and (not tokens or tokens[-1] != generation.pending) else [])


def test_a_model_without_role_tokens_cannot_take_a_lead(tiny_onnx_model):
    model = load_model(tiny_onnx_model, EngineSettings(intra_op_threads=1))
    plain = StyleDecoder(model, EngineSettings(intra_op_threads=1))
    request = GenerateRequest(seed=(), start_beat=0.0, bars=1, time_signature=(4, 4))
    with pytest.raises(EngineError, match="role tokens"):
        plain.start("s", request, lead=MELODY[:2])


def test_the_accompaniment_stays_under_the_lead_unless_that_leaves_no_room():
    settings = InteractionSettings()
    narrowed = accompaniment_constraints(Constraints(), MELODY[:4], settings)
    assert narrowed.role == "accompaniment" and narrowed.pitch_max == 71
    assert narrowed.max_polyphony == settings.accompany_polyphony
    low_lead = [Note(0.0, 1.0, 21 + MIN_ROOM - 1, 90)]
    assert accompaniment_constraints(Constraints(), low_lead, settings).pitch_max == 108
    free = InteractionSettings(accompany_below_lead=False, accompany_polyphony=0)
    assert accompaniment_constraints(Constraints(), MELODY, free).pitch_max == 108
    assert accompaniment_constraints(Constraints(), MELODY, free).max_polyphony is None


def test_the_steering_under_a_lead_drops_the_register_and_scales_the_density():
    heard = Steering(key=None, register_center=70.0, register_strength=3.0,
                     notes_per_bar=4.0, density_strength=2.0)
    bent = accompaniment_steering(heard, InteractionSettings(accompany_density=1.5))
    assert bent.register_center is None and bent.register_strength == 0.0
    assert bent.notes_per_bar == 6.0 and bent.density_strength == 2.0
    seed = with_roles(MELODY[:2], [Note(0.0, 2.0, 48, 70)])
    assert [(n.pitch, n.role) for n in seed] == [(48, "accompaniment"), (72, "lead"),
                                                 (74, "lead")]


def test_harmonize_accompanies_bar_by_bar_under_the_melody(decoder):
    settings = Settings()
    notes = harmonize(decoder, MELODY, settings=settings, style="pop", time_signature=(4, 4),
                      seed=3)
    assert notes and all(n.role == "accompaniment" for n in notes)
    assert all(0.0 <= n.onset < 16.0 for n in notes)
    for note in notes:  # under the lowest melody note of its bar
        bar = [m.pitch for m in MELODY if int(m.onset // 4) == int(note.onset // 4)]
        assert not bar or note.pitch < min(bar)


def test_live_harmonize_hears_only_the_melody_before_each_bar(decoder, monkeypatch):
    """As accompany mode live: a bar is asked for a bar ahead, so neither its own melody
    nor the previous bar's is heard or written into the stream, and the bar gets
    best-of-N's candidates like any live request."""
    asked: list[tuple[GenerateRequest, tuple[Note, ...]]] = []
    original = decoder.start

    def spy(session, request, request_id=None, *, lead=(), prefill=True):
        asked.append((request, tuple(lead)))
        return original(session, request, request_id, lead=lead, prefill=prefill)

    monkeypatch.setattr(decoder, "start", spy)
    settings = Settings()
    notes = harmonize(decoder, MELODY, settings=settings, style="pop", time_signature=(4, 4),
                      seed=3, live=True)
    assert notes and all(n.role == "accompaniment" and 0.0 <= n.onset < 16.0 for n in notes)
    assert [lead for _, lead in asked] == [()] * 4  # nothing forced
    assert [r.candidates.n for r, _ in asked] == [settings.sampling.candidates] * 4
    # Each bar is asked for a bar ahead: bars 1 and 2 before anything was played, bar 3
    # hearing bar 1 only.
    for request, _ in asked[:2]:
        assert not any(n.role == "lead" for n in request.seed)
        assert request.steering.notes_per_bar is None
    assert {n.pitch for n in asked[2][0].seed if n.role == "lead"} == {72, 74, 76, 77}
    offline: list[GenerateRequest] = []
    monkeypatch.setattr(decoder, "start", lambda session, request, request_id=None, *,
                        lead=(), prefill=True: offline.append(request) or original(
                            session, request, request_id, lead=lead, prefill=prefill))
    harmonize(decoder, MELODY, settings=settings, style="pop", time_signature=(4, 4), seed=3)
    assert offline[0].steering.notes_per_bar is not None  # offline bar 1 hears itself


def test_each_bar_gets_the_chord_hints_sounding_in_it():
    hints = (ChordHint(0.0, (0, 4, 7)), ChordHint(6.0, (5, 9, 0)), ChordHint(8.0, ()))
    assert hints_between(hints, 0.0, 4.0) == (ChordHint(0.0, (0, 4, 7)),)
    assert hints_between(hints, 4.0, 8.0) == (ChordHint(4.0, (0, 4, 7)), ChordHint(6.0, (5, 9, 0)))
    assert hints_between(hints, 8.0, 12.0) == (ChordHint(8.0, ()),)
    assert hints_between(hints[1:], 0.0, 4.0) == ()


def test_harmonize_leans_onto_the_chords_it_is_given(decoder):
    """Strong hints (C major, then F major from bar 2) put the random model's
    accompaniment on each bar's chord tones; without hints it is not."""
    hints = (ChordHint(0.0, (0, 4, 7)), ChordHint(8.0, (0, 5, 9)))

    def on_chord(settings: Settings) -> float:
        notes = harmonize(decoder, MELODY, settings=settings, style="pop",
                          time_signature=(4, 4), seed=5, chords=hints)
        assert notes
        return sum(n.pitch % 12 in (hints[0] if n.onset < 8.0 else hints[1]).pitch_classes
                   for n in notes) / len(notes)

    strong = Settings(interaction=InteractionSettings(chord_strength=15.0))
    off = Settings(interaction=InteractionSettings(chord_strength=0.0))
    assert on_chord(strong) > 0.95 > on_chord(off)


def test_melody_harmonize_writes_lead_and_accompaniment_tracks(tmp_path, tiny_conditioned_onnx,
                                                               capsys):
    from models.cli import main  # noqa: PLC0415

    melody = write_midi(tmp_path / "lead.mid", MELODY)
    out = tmp_path / "out.mid"
    assert main(["harmonize", str(melody), "-o", str(out), "--model",
                 str(tiny_conditioned_onnx), "--style", "pop", "--seed", "1"]) == 0
    assert "accompaniment notes under 10 melody notes, 4 bars" in capsys.readouterr().out
    written = read_midi(out)
    assert {(n.onset, n.pitch) for n in MELODY} <= {(n.onset, n.pitch) for n in written.notes}
    assert len(written.notes) > len(MELODY)


def test_melody_harmonize_refuses_a_model_without_roles(tmp_path, tiny_onnx_model, capsys):
    from models.cli import main  # noqa: PLC0415

    melody = write_midi(tmp_path / "lead.mid", MELODY)
    assert main(["harmonize", str(melody), "-o", str(tmp_path / "o.mid"), "--model",
                 str(tiny_onnx_model), "--style", str(load_model(tiny_onnx_model).style)]) != 0
    assert "no role tokens" in capsys.readouterr().err
