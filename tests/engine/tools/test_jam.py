"""The jam harness: calls played through the bridge's decisions, answers from the real
decoder, and the metrics that score them."""

from __future__ import annotations

import dataclasses
import json
import time

import mido
import pytest

from bridge.clock import InternalClock
from bridge.daemon import Daemon
from bridge.drivers.base import OutputPort
from bridge.listener import InputQueue
from bridge.policy import Trigger
from bridge.scheduler import Scheduler
from bridge.seed import SeedWindow
from engine.decoder import StyleDecoder
from engine.model import load_model
from engine.tools.jam import (
    Call,
    JamConfig,
    answer_call,
    request_for,
    score_answer,
    simulate,
    synthetic_calls,
)
from engine.tools.jam_summary import summarise_records
from models.analysis.music_stats import onset_histogram, rhythmic_similarity
from models.core import protocol
from models.core.notes import Note
from models.core.settings import Settings

CALLS = {c.name: c for c in synthetic_calls()}


def _line(pitches: list[int], step: float = 1.0, start: float = 0.0) -> list[Note]:
    return [Note(start + i * step, step * 0.9, p, 80) for i, p in enumerate(pitches)]


C_MAJOR = _line([60, 62, 64, 65, 67, 69, 71, 72])


# ----------------------------------------------------------------- metrics
def test_a_c_major_answer_to_a_c_major_call_keeps_the_key():
    answer = _line([72, 71, 69, 67, 65, 64, 62, 60])
    scores = score_answer(C_MAJOR, answer, bar_length=4.0, call_bars=2, answer_bars=2)
    assert scores["call_key"] == scores["answer_key"] == "C major"
    assert scores["key_agreement"] == 1.0
    assert scores["near_silent"] is False


def test_an_answer_in_another_key_disagrees():
    f_sharp = _line([66, 68, 70, 71, 73, 75, 77, 78])
    scores = score_answer(C_MAJOR, f_sharp, bar_length=4.0, call_bars=2, answer_bars=2)
    assert scores["key_agreement"] == 0.0


def test_a_silent_answer_is_flagged_near_silent():
    scores = score_answer(C_MAJOR, [], bar_length=4.0, call_bars=2, answer_bars=2)
    assert scores["near_silent"] is True
    assert scores["key_agreement"] is None and scores["register_distance"] is None
    assert scores["density_ratio"] == 0.0 and scores["in_density"] is False
    # One note in two bars is below one note per bar: still no answer.
    one = score_answer(C_MAJOR, [Note(0, 1, 60, 80)], bar_length=4.0, call_bars=2,
                       answer_bars=2)
    assert one["near_silent"] is True


def test_an_answer_on_the_tonic_eight_times_is_monotone_however_well_it_keeps_the_key():
    """The shipped defaults once answered C C C C C C C C to the C-major call: every note
    in the key and on the call's beats, so only this score shows what a player hears."""
    pedal = _line([60, 62, 60, 60, 60, 62, 60, 60])
    scores = score_answer(C_MAJOR, pedal, bar_length=4.0, call_bars=2, answer_bars=2)
    assert scores["monotone"] is True and scores["in_scale"] == 1.0
    tonic_only = score_answer(C_MAJOR, _line([60] * 8), bar_length=4.0, call_bars=2,
                              answer_bars=2)
    assert tonic_only["answer_key"] is None and tonic_only["key_agreement"] == 0.0
    tune = _line([64, 65, 64, 60, 62, 64, 62, 60])  # returns to the tonic, moves between
    assert score_answer(C_MAJOR, tune, bar_length=4.0, call_bars=2,
                        answer_bars=2)["monotone"] is False
    one_pitch_most = _line([67, 67, 67, 67, 67, 64, 65, 62])  # 5 of 8 on G
    assert score_answer(C_MAJOR, one_pitch_most, bar_length=4.0, call_bars=2,
                        answer_bars=2)["monotone"] is True


def test_the_scale_share_counts_the_relative_minor_as_the_calls_key():
    a_minor_in_c = _line([69, 71, 72, 74, 76, 74, 72, 69])  # reads as A minor, C's notes
    scores = score_answer(C_MAJOR, a_minor_in_c, bar_length=4.0, call_bars=2, answer_bars=2)
    assert scores["key_agreement"] == 0.0 and scores["in_scale"] == 1.0
    half_out = _line([60, 61, 62, 63])  # C# and D# outside C major: half the time
    assert score_answer(C_MAJOR, half_out, bar_length=4.0, call_bars=2,
                        answer_bars=2)["in_scale"] == pytest.approx(0.5)


def test_density_ratio_and_register_distance_are_exact():
    answer = _line([48, 50, 52, 53], step=2.0)  # 4 notes in 2 bars, an octave lower
    scores = score_answer(C_MAJOR, answer, bar_length=4.0, call_bars=2, answer_bars=2)
    assert scores["call_per_bar"] == 4.0 and scores["answer_per_bar"] == 2.0
    assert scores["density_ratio"] == 0.5 and scores["in_density"] is True
    call_mean = sum(n.pitch for n in C_MAJOR) / 8
    assert scores["register_distance"] == pytest.approx(call_mean - 50.75)


def test_rhythmic_similarity_compares_onset_positions_in_the_bar():
    # The same rhythm a bar later and with other pitches is the same rhythm.
    assert rhythmic_similarity(C_MAJOR, _line([50] * 8, start=4.0), 4.0) == pytest.approx(1.0)
    offbeats = _line([60] * 8, start=0.5)
    assert rhythmic_similarity(C_MAJOR, offbeats, 4.0) == pytest.approx(0.0)
    half = _line([60] * 4, step=2.0)  # beats 1 and 3 only: half of the call's mass
    assert rhythmic_similarity(C_MAJOR, half, 4.0) == pytest.approx(0.5)
    assert rhythmic_similarity(C_MAJOR, [], 4.0) is None
    hist = onset_histogram(C_MAJOR, 4.0)
    assert len(hist) == 16 and hist[0] == hist[4] == pytest.approx(0.25)


def test_synthetic_calls_are_in_their_keys_meters_and_densities():
    from models.core.tonality import estimate_key  # noqa: PLC0415

    assert estimate_key(CALLS["c_major"].notes).name == "C major"
    assert estimate_key(CALLS["key_A_minor"].notes).name == "A minor"
    assert CALLS["meter_6_8"].bar_length == 3.0 and CALLS["meter_3_4"].bars == 2
    assert len(CALLS["sparse_2_per_bar"].notes) == 4
    assert len(CALLS["dense_8_per_bar"].notes) == 16
    assert {c.bpm for c in CALLS.values() if c.family == "tempi"} == {70, 100, 120, 160}


# ----------------------------------------------------------------- the bridge, simulated
def test_the_policy_answers_on_the_next_bar_after_the_silence():
    """The C-major call (bars 1-2 after a count-in, last release at beat 11.9): one
    request at 11.9 + 1 beat of silence, starting on the next bar line, with every call
    note in the seed (what test_daemon's phrase test asserts of the live daemon)."""
    (made,) = simulate(CALLS["c_major"], Settings())
    assert made.beat == pytest.approx(12.9)
    assert made.trigger == Trigger(16.0, 2)
    assert [n.pitch for n in made.seed] == [n.pitch for n in CALLS["c_major"].notes]
    assert made.seed[0].onset == 4.0


def test_a_rest_inside_a_call_triggers_early_and_the_last_trigger_is_kept():
    gap = Call("gap", "test", (Note(0, 0.5, 60, 80), Note(3, 0.5, 62, 80), Note(4, 0.5, 64, 80)))
    made = simulate(gap, Settings())
    assert len(made) == 2  # the first answer is barged in on by the next note
    assert made[-1].trigger.start_beat == 12.0 and len(made[-1].seed) == 3


def test_an_answer_asked_ahead_of_a_silence_the_call_breaks_is_never_made():
    """A rest of just over half the silence before a bar line gets an answer asked ahead
    (default ``request_ahead_beats``); the next note drops it unheard, so the harness keeps
    only the answer to the whole call, as the daemon plays only that one."""
    call = Call("rest", "test", (Note(0, 0.5, 60, 80), Note(1, 0.5, 62, 80),
                                 Note(2, 0.4, 64, 80), Note(3, 0.5, 65, 80)))
    (made,) = simulate(call, Settings())
    assert made.beat == pytest.approx(8.5)  # after the count-in bar: 3.5 + 1 beat + 4
    assert made.trigger.start_beat == 12.0 and len(made.seed) == 4
    asked_after_the_silence = dataclasses.replace(Settings().interaction,
                                                  request_ahead_beats=0.0)
    (late,) = simulate(call, dataclasses.replace(Settings(), interaction=asked_after_the_silence))
    assert late == made


def test_a_call_ending_a_beat_before_the_line_is_asked_for_a_beat_and_a_half_ahead():
    call = Call("short", "test", (Note(0, 0.5, 60, 80), Note(1, 1.0, 62, 80)))
    (made,) = simulate(call, Settings())
    # Silence complete at 4 + 2 + 1 = 7, a beat before the line at 8: asked at 6.5.
    assert made.beat == pytest.approx(6.5) and made.trigger.start_beat == 8.0


class _RecordingClient:
    """Just enough of ``EngineClient`` for ``Daemon._request``."""

    def __init__(self) -> None:
        self.sent: list[dict] = []

    def generate(self, session: str, request: protocol.GenerateRequest) -> str:
        request_id = f"r{len(self.sent) + 1}"
        message = protocol.GenerateMessage(request_id, session, request)
        self.sent.append(json.loads(protocol.encode(message)))
        return request_id


class _NullOutput(OutputPort):
    def __init__(self) -> None:
        super().__init__("null")

    def _send(self, message: mido.Message) -> None:
        pass

    def _close(self) -> None:
        pass


def test_the_harness_request_is_the_daemons(tiny_onnx_model):
    """Same seed window, same trigger: the daemon's ``generate`` and the harness's request
    carry the same fields (the request-building code is shared)."""
    settings = Settings()
    call = CALLS["c_major"]
    (made,) = simulate(call, settings)
    client = _RecordingClient()
    clock = InternalClock(120.0)
    daemon = Daemon(settings, clock, scheduler=Scheduler(_NullOutput(), clock), client=client,
                    style="tiny", inputs=InputQueue())
    daemon._style_facts = {"tiny": {"pitch_min": 30, "pitch_max": 90}}
    daemon.seed = SeedWindow(settings.interaction.seed_bars, call.bar_length)
    for note in call.notes:
        daemon.seed.note_on(note.onset + 4.0, note.pitch, note.velocity)
        daemon.seed.note_off(note.end + 4.0, note.pitch)
    daemon._request(made.trigger, 0.0, made.beat)
    (sent,) = client.sent
    request = request_for(made, call, settings, style="tiny",
                          facts={"pitch_min": 30, "pitch_max": 90}, request_id="x")
    assert sent["start_beat"] == request.start_beat == 16.0
    assert sent["bars"] == request.bars == 2
    assert [n["pitch"] for n in sent["seed"]] == [n.pitch for n in request.seed]
    assert [n["onset"] for n in sent["seed"]] == [n.onset for n in request.seed]
    assert (sent["constraints"]["pitch_min"], sent["constraints"]["pitch_max"]) == (
        request.constraints.pitch_min, request.constraints.pitch_max) == (30, 90)
    assert sent["sampling"]["top_p"] == request.sampling.top_p
    daemon.inputs.close()


# ----------------------------------------------------------------- the engine
@pytest.fixture(scope="module")
def tiny_decoder(tiny_onnx_model):
    return StyleDecoder(load_model(tiny_onnx_model))


@pytest.mark.parametrize("name", ["c_major", "meter_6_8", "tempo_70", "dense_8_per_bar"])
def test_every_call_gets_one_scored_answer(tiny_decoder, name):
    call = CALLS[name]
    (made,) = simulate(call, Settings())
    record = answer_call(tiny_decoder, "tiny", call, JamConfig(repeats=1), repeat=0)
    assert record["requests"] == 1 and "error" not in record
    offset = call.bar_length  # the count-in bar
    assert record["start_beat"] == made.trigger.start_beat - offset
    assert record["request_beat"] == pytest.approx(made.beat - offset)
    assert record["seed_notes"] == len(call.notes)
    assert record["notes"] == len(record["answer"])
    # The answer lies within the bars asked for, on its own timeline.
    assert all(0 <= onset < 2 * call.bar_length for onset, *_ in record["answer"])
    assert record["tokens"] > 0 and record["log_likelihood"] < 0
    if record["notes"]:
        assert record["lead_ms"] is not None
        # Lead time: when the note is due at this tempo minus when it was ready.
        due_ms = record["first_note_after_call_beats"] * 60000.0 / call.bpm
        assert record["lead_ms"] == pytest.approx(due_ms - record["first_note_ms"])
    assert record["near_silent"] == (record["notes"] / 2 < 1)


def test_repeats_differ_and_a_seed_repeats(tiny_decoder):
    call = CALLS["c_major"]
    config = JamConfig(repeats=2, seed=7)
    first = answer_call(tiny_decoder, "tiny", call, config, repeat=0)
    again = answer_call(tiny_decoder, "tiny", call, config, repeat=0)
    other = answer_call(tiny_decoder, "tiny", call, config, repeat=1)
    assert first["answer"] == again["answer"]
    assert first["sampling_seed"] == 7 and other["sampling_seed"] == 8
    assert (first["tokens"], first["answer"]) != (other["tokens"], other["answer"])


def test_an_answer_counts_the_bars_decided_at_their_deadline(tiny_onnx_model):
    decoder = StyleDecoder(load_model(tiny_onnx_model))
    looks: list[float] = []

    def late_after_the_first_look() -> float:
        # The first bar's N is chosen with time to spare; from then on its deadline has
        # passed (the bar ran longer than the estimate said).
        looks.append(0.0)
        return time.perf_counter() + (0.0 if len(looks) == 1 else 3600.0)

    decoder.best_of_n.clock = late_after_the_first_look
    decoder.best_of_n.step_seconds = {1: 1e-6, 4: 1e-6}
    decoder.best_of_n.observe = lambda rows, seconds: None
    settings = Settings()
    settings = dataclasses.replace(
        settings, sampling=dataclasses.replace(settings.sampling, candidates=4))
    record = answer_call(decoder, "tiny", CALLS["c_major"],
                         JamConfig(repeats=1, settings=settings), repeat=0)
    assert record["cut_bars"] == 1
    assert len(record["candidates"]) == 1  # the second bar had no time to fork at all
    summary = summarise_records([record, {**record, "cut_bars": 2}], None)
    assert summary["cut_bars"] == 3


def test_the_cli_writes_one_record_per_call_and_repeat(tiny_onnx_model, tmp_path, capsys):
    from engine.tools.jam_cli import main  # noqa: PLC0415

    out = tmp_path / "jam.json"
    code = main(["--model", str(tiny_onnx_model), "--calls", "c_major,meters",
                 "--repeats", "2", "--json", str(out)])
    assert code == 0
    results = json.loads(out.read_text())
    assert [(a["call"], a["repeat"]) for a in results["answers"]] == [
        (c, r) for c in ("c_major", "meter_3_4", "meter_6_8") for r in (0, 1)]
    summary = results["summary"]["tiny"]
    assert summary["all"]["answers"] == 6 and summary["meters"]["answers"] == 4
    assert "| tiny | all | 6 |" in capsys.readouterr().out


def test_summary_shares():
    records = [{"style": "s", "family": "f", "key_agreement": k, "in_density": d,
                "in_scale": 1.0 if k else 0.5, "monotone": k == 0.0,
                "density_ratio": 1.0, "near_silent": s, "call_per_bar": 4.0,
                "register_distance": 2.0, "rhythm": 0.5, "log_likelihood": -1.0,
                "lead_ms": 500.0, "lead_beats": 1.0, "answer_per_bar": 3.0,
                "style_verdict": v}
               for k, d, s, v in ((1.0, True, False, "s"), (0.0, False, True, None),
                                  (None, True, False, "t"), (1.0, True, False, "s"))]
    stats = summarise_records(records, real_recall=0.5)
    assert stats["key_kept"] == pytest.approx(2 / 3)
    assert stats["in_scale"] == 0.75 and stats["monotone"] == 0.25
    assert stats["in_density"] == 0.75 and stats["near_silent"] == 0.25
    assert stats["silent_to_busy"] == 1
    assert stats["style_ok"] == 0.5 and stats["fidelity"] == 1.0


def test_a_conditioned_model_jams_each_asked_style_by_its_token(tiny_conditioned_onnx):
    import argparse  # noqa: PLC0415

    from engine.tools.jam_cli import _decoders  # noqa: PLC0415
    from models.core.exceptions import MelodyError  # noqa: PLC0415
    from models.core.settings import Settings  # noqa: PLC0415

    args = argparse.Namespace(model=[str(tiny_conditioned_onnx)], styles="baroque,romantic")
    decoders = _decoders(args, Settings())
    assert set(decoders) == {"baroque", "romantic"}
    assert decoders["baroque"] is decoders["romantic"]
    with pytest.raises(MelodyError, match="no style 'folk'"):
        _decoders(argparse.Namespace(model=[str(tiny_conditioned_onnx)], styles="folk"),
                  Settings())
