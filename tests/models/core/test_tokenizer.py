"""Tokenizer and streaming detokenizer on real music21 corpus pieces.

MIDI -> tokens -> notes must keep every pitch, put every velocity in its bin, and move
onsets and durations by at most one grid step; the streaming detokenizer must agree
with MidiTok's batch decoding; random token streams must never crash it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import symusic
from hypothesis import given, settings
from hypothesis import strategies as st

from models.core.exceptions import TokenizerError
from models.core.notes import Note
from models.core.settings import TokensSettings
from models.core.streaming import StreamingDetokenizer
from models.core.tokenizer import MelodyTokenizer
from models.data.corpus import convert_source

pytest.importorskip("music21", reason="the round trips use the music21 corpus (train extra)")

# (readable id, music21 corpus file, tunes kept of a multi-tune ABC file)
PIECES = [
    ("bach-chorale-bwv66.6", "bach/bwv66.6.mxl", None),
    ("bach-chorale-bwv1.6", "bach/bwv1.6.mxl", None),
    ("palestrina-agnus", "palestrina/Agnus_01.krn", None),
    ("essen-folksong", "essenFolksong/altdeu10.abc", 2),
    ("ryans-reel", "ryansMammoth/7thRegimentReel.abc", None),
    ("schumann-dichterliebe-2", "schumann_robert/dichterliebe_no2.xml", None),
]


@pytest.fixture(scope="session")
def corpus_midi(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A few real pieces converted from the music21 corpus to MIDI, once per session."""
    root = tmp_path_factory.mktemp("corpus-midi")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MELODYD_CACHE", str(root / "cache"))
        files = {}
        for piece_id, source, tunes in PIECES:
            records = convert_source(source, str(root), tunes)
            converted = [r for r in records if r["midi"]]
            assert converted, f"music21 could not convert {source}: {records}"
            files[piece_id] = root / converted[0]["midi"]
    return files


@pytest.fixture(scope="module")
def tokenizer() -> MelodyTokenizer:
    return MelodyTokenizer()


def merged_notes(path: Path) -> list[Note]:
    """The notes of a MIDI file in beats, drums dropped, sorted like the tokenizer."""
    score = symusic.Score(str(path))
    tpq = score.ticks_per_quarter
    notes = [Note(n.time / tpq, n.duration / tpq, n.pitch, n.velocity)
             for track in score.tracks if not track.is_drum for n in track.notes]
    return sorted(notes, key=lambda n: (n.onset, n.pitch))


def velocity_bin(tokenizer: MelodyTokenizer, velocity: int) -> int:
    """The nearest bin of ``tokenizer.remi.velocities``; a tie goes to the louder bin."""
    bins = [int(b) for b in tokenizer.remi.velocities]
    return min(bins, key=lambda b: (abs(b - velocity), -b))


def grid_step(tokenizer: MelodyTokenizer, path: Path) -> float:
    """One grid step of the piece, in quarter notes.

    MidiTok's positions divide the time signature's beat (a half note in 2/2, an eighth
    in 6/8), so the step is (4 / denominator) / positions_per_beat; a piece that changes
    signature is held to its coarsest step.
    """
    score = symusic.Score(str(path))
    denominators = {ts.denominator for ts in score.time_signatures} or {4}
    return max(4.0 / den for den in denominators) / tokenizer.settings.positions_per_beat


def expected_duration_error(tokenizer: MelodyTokenizer, duration: float, step: float) -> float:
    """How far a decoded duration may be from the original, in quarter notes.

    One grid step up to 4 quarter notes, a quarter of the signature's beat above that, and
    anything beyond the longest duration (counted in quarter notes) is capped at it.
    """
    longest = tokenizer.settings.max_duration_beats
    beat = step * tokenizer.settings.positions_per_beat
    if duration > longest:
        return duration - longest + step
    if duration > 4:
        return 0.25 * beat
    return step


@pytest.mark.parametrize("piece_id", [p[0] for p in PIECES])
def test_round_trip_keeps_pitches_velocity_bins_and_timing(
        corpus_midi: dict[str, Path], tokenizer: MelodyTokenizer, piece_id: str) -> None:
    path = corpus_midi[piece_id]
    original = merged_notes(path)
    ids = tokenizer.encode_file(path)
    assert ids[0] == tokenizer.bos_id and ids[-1] == tokenizer.eos_id
    decoded = tokenizer.decode_notes(ids)

    assert len(decoded) == len(original)
    step = grid_step(tokenizer, path)
    # Pair notes by pitch in time order: quantization can reorder near-simultaneous notes.
    for pitch in sorted({n.pitch for n in original}):
        before = [n for n in original if n.pitch == pitch]
        after = [n for n in decoded if n.pitch == pitch]
        assert len(after) == len(before), f"pitch {pitch}"
        for old, new in zip(before, after, strict=True):
            assert new.velocity == velocity_bin(tokenizer, old.velocity)
            assert abs(new.onset - old.onset) <= step + 1e-9, (old, new)
            assert abs(new.duration - old.duration) <= (
                expected_duration_error(tokenizer, old.duration, step) + 1e-9), (old, new)


@pytest.mark.parametrize("piece_id", [p[0] for p in PIECES])
def test_streaming_detokenizer_equals_batch_decoding(
        corpus_midi: dict[str, Path], tokenizer: MelodyTokenizer, piece_id: str) -> None:
    ids = tokenizer.encode_file(corpus_midi[piece_id])
    batch = tokenizer.decode_notes(ids)
    stream = StreamingDetokenizer(tokenizer)
    streamed = sorted(stream.feed_many(ids), key=lambda n: (n.onset, n.pitch))
    assert stream.skipped == 0, stream.problems
    assert len(streamed) == len(batch)
    for got, want in zip(streamed, batch, strict=True):
        assert got.pitch == want.pitch
        assert got.velocity == want.velocity
        assert got.onset == pytest.approx(want.onset, abs=1e-6)
        assert got.duration == pytest.approx(want.duration, abs=1e-6)


def test_streaming_detokenizer_emits_each_note_on_its_duration_token(
        tokenizer: MelodyTokenizer) -> None:
    notes = [Note(0.0, 1.0, 60, 80), Note(1.0, 0.5, 64, 80), Note(4.5, 2.0, 67, 100)]
    ids = tokenizer.encode_notes(notes)
    stream = StreamingDetokenizer(tokenizer)
    emitted_at = [i for i, token in enumerate(ids) if stream.feed(token) is not None]
    assert [tokenizer.tokens[ids[i]].split("_")[0] for i in emitted_at] == ["Duration"] * 3


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(min_value=-5, max_value=500), max_size=300))
def test_random_token_streams_never_crash_and_make_valid_notes(ids: list[int]) -> None:
    tokenizer = _shared_tokenizer()
    stream = StreamingDetokenizer(tokenizer)
    for note in stream.feed_many(ids):
        assert note.duration > 0
        assert note.onset >= 0
        assert tokenizer.settings.pitch_min <= note.pitch <= tokenizer.settings.pitch_max
        assert 1 <= note.velocity <= 127


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(range(390)), max_size=200))
def test_in_vocabulary_streams_never_crash(ids: list[int]) -> None:
    # Most random ints are out of vocabulary; this one exercises the grammar itself.
    tokenizer = _shared_tokenizer()
    ids = [i % tokenizer.vocab_size for i in ids]
    stream = StreamingDetokenizer(tokenizer)
    notes = stream.feed_many(ids)
    assert all(n.duration > 0 and n.onset >= 0 for n in notes)
    assert stream.skipped == len(stream.problems) or len(stream.problems) == 32


_TOKENIZER: list[MelodyTokenizer] = []


def _shared_tokenizer() -> MelodyTokenizer:
    # hypothesis dislikes function-scoped fixtures; build the vocabulary once per module.
    if not _TOKENIZER:
        _TOKENIZER.append(MelodyTokenizer())
    return _TOKENIZER[0]


def test_config_json_round_trip_keeps_the_fingerprint(tmp_path: Path) -> None:
    custom = MelodyTokenizer(TokensSettings(pitch_min=36, pitch_max=96, num_velocities=8))
    path = tmp_path / "tokenizer.json"
    custom.save(path)
    loaded = MelodyTokenizer.load(path)
    assert loaded.fingerprint == custom.fingerprint
    assert loaded.vocab_size == custom.vocab_size
    assert loaded.settings == custom.settings
    assert loaded.fingerprint != MelodyTokenizer().fingerprint


@pytest.mark.parametrize("corruption", [
    pytest.param(lambda text: text[: len(text) // 2], id="truncated-json"),
    pytest.param(lambda text: text.replace("melodyd-tokens", "other"), id="wrong-format"),
    pytest.param(lambda text: text.replace('"version": 1', '"version": 99'), id="wrong-version"),
    pytest.param(lambda text: text.replace('"pitch_min": 21', '"pitch_min": 300'),
                 id="pitch-out-of-range"),
    pytest.param(lambda text: text.replace('"pitch_min": 21', '"pich_min": 21'),
                 id="unknown-key"),
    pytest.param(lambda text: json.dumps({**json.loads(text), "fingerprint": "0" * 16}),
                 id="fingerprint-mismatch"),
])
def test_corrupted_config_raises_tokenizer_error(tmp_path: Path, corruption) -> None:
    path = tmp_path / "tokenizer.json"
    MelodyTokenizer().save(path)
    path.write_text(corruption(path.read_text()))
    with pytest.raises(TokenizerError):
        MelodyTokenizer.load(path)


def test_missing_config_raises_tokenizer_error(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="cannot read"):
        MelodyTokenizer.load(tmp_path / "absent.json")


# ----------------------------------------------------------------- style and role tokens
CONDITIONED = TokensSettings(style_slots=8, styles=("baroque", "romantic", "pop"), roles=True)
# The fingerprint of the vocabulary every model shipped before conditioning was built on.
OLD_FINGERPRINT = "7b7d19bf7a3734a2"


@pytest.fixture(scope="module")
def conditioned() -> MelodyTokenizer:
    return MelodyTokenizer(CONDITIONED)


def test_default_settings_keep_the_old_vocabulary_and_its_saved_form() -> None:
    tokenizer = MelodyTokenizer()
    assert tokenizer.fingerprint == OLD_FINGERPRINT
    assert tokenizer.vocab_size == 390
    assert not tokenizer.has_roles and tokenizer.style_ids == [] and tokenizer.style_slots == {}
    # The saved form has no conditioning keys: old engines still read new dumps of it.
    assert set(tokenizer.to_dict()["settings"]) == {
        "pitch_min", "pitch_max", "positions_per_beat", "max_duration_beats",
        "num_velocities", "time_signatures"}
    assert not any(t.startswith(("Style_", "Role_", "Program_")) for t in tokenizer.tokens)


def test_shipped_models_saved_configs_load_unchanged() -> None:
    ort = pytest.importorskip("onnxruntime")
    from models.core.model_card import card_from_metadata  # noqa: PLC0415

    shipped = sorted((Path(__file__).parents[3] / "models" / "pretrained").glob("*.onnx"))
    assert shipped, "no shipped model found"
    for path in shipped:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        card = card_from_metadata(session.get_modelmeta().custom_metadata_map, str(path))
        tokenizer = MelodyTokenizer.from_dict(card.tokenizer)
        # The vocabulary rebuilt from the card is the one the model was trained on.
        assert tokenizer.fingerprint == card.tokenizer["fingerprint"], path.name
        assert tokenizer.to_dict() == card.tokenizer, path.name
        assert card.style_slots == tokenizer.style_slots


def test_conditioned_vocabulary_has_style_slots_and_role_tokens(
        conditioned: MelodyTokenizer) -> None:
    base = MelodyTokenizer()
    assert conditioned.vocab_size == base.vocab_size + 3 + 8
    assert [conditioned.tokens[i] for i in conditioned.style_ids] == [
        f"Style_{k}" for k in range(8)]
    assert {conditioned.tokens[i] for i in conditioned.role_ids.values()} == {
        "Role_any", "Role_lead", "Role_accompaniment"}
    assert conditioned.style_slots == {"any": 0, "baroque": 1, "romantic": 2, "pop": 3}
    assert conditioned.style_id("romantic") == conditioned.style_ids[2]
    # Unknown styles and no style are "any style" (slot 0), the dropout token.
    assert conditioned.style_id("gamelan") == conditioned.style_id(None) == conditioned.style_ids[0]
    assert conditioned.fingerprint not in (base.fingerprint, OLD_FINGERPRINT)
    loaded = MelodyTokenizer.from_dict(json.loads(json.dumps(conditioned.to_dict())))
    assert loaded.fingerprint == conditioned.fingerprint
    assert loaded.style_slots == conditioned.style_slots


def test_naming_more_styles_keeps_the_vocabulary(conditioned: MelodyTokenizer) -> None:
    more = conditioned.with_styles(["pop", "folk", "jazz"])
    assert more.fingerprint == conditioned.fingerprint
    assert more.style_slots == {"any": 0, "baroque": 1, "romantic": 2, "pop": 3, "folk": 4,
                                "jazz": 5}
    with pytest.raises(TokenizerError, match="free style slots"):
        more.with_styles(["a", "b", "c"])
    with pytest.raises(TokenizerError, match="no style tokens"):
        MelodyTokenizer().with_styles(["folk"])


@pytest.mark.parametrize("values", [
    pytest.param({"style_slots": 2, "styles": ["a", "b"]}, id="more-names-than-slots"),
    pytest.param({"style_slots": 4, "styles": ["any"]}, id="any-is-slot-0"),
    pytest.param({"style_slots": 4, "styles": ["a", "a"]}, id="twice"),
    pytest.param({"style_slots": 4, "styles": ["no spaces"]}, id="not-plain"),
])
def test_bad_style_settings_are_refused(values) -> None:
    data = MelodyTokenizer().to_dict()
    data["settings"].update(values)
    del data["fingerprint"]
    with pytest.raises(TokenizerError, match="styles"):
        MelodyTokenizer.from_dict(data)


def _song_notes() -> list[Note]:
    """A voice over a piano: lead and accompaniment on shared onsets, and an any note."""
    lead = [Note(0.0, 1.0, 72, 80, "lead"), Note(1.0, 0.5, 74, 80, "lead"),
            Note(1.5, 0.5, 76, 80, "lead"), Note(4.0, 2.0, 79, 90, "lead")]
    accompaniment = [Note(0.0, 2.0, 48, 60, "accompaniment"),
                     Note(0.0, 2.0, 55, 60, "accompaniment"),
                     Note(2.0, 2.0, 53, 60, "accompaniment"),
                     Note(4.0, 4.0, 48, 60, "accompaniment"),
                     # the piano doubling the voice: same onset and pitch, other role
                     Note(4.0, 1.0, 79, 60, "accompaniment")]
    return [*lead, *accompaniment, Note(6.0, 1.0, 60, 70)]


def _key(note: Note) -> tuple[float, int, str]:
    return (note.onset, note.pitch, note.role)


def test_style_and_roles_round_trip(conditioned: MelodyTokenizer) -> None:
    notes = _song_notes()
    ids = conditioned.encode_notes(notes, style="romantic", eos=True)
    assert ids[:2] == [conditioned.bos_id, conditioned.style_id("romantic")]
    assert conditioned.style_of(ids) == 2
    decoded = conditioned.decode_notes(ids)
    binned = [dataclasses.replace(n, velocity=velocity_bin(conditioned, n.velocity))
              for n in notes]
    assert sorted(decoded, key=_key) == sorted(binned, key=_key)
    stream = StreamingDetokenizer(conditioned)
    streamed = stream.feed_many(ids)
    assert stream.skipped == 0, stream.problems
    assert stream.style == 2
    assert sorted(streamed, key=_key) == sorted(decoded, key=_key)


def test_role_tokens_only_where_the_role_changes(conditioned: MelodyTokenizer) -> None:
    ids = conditioned.encode_notes(_song_notes(), style="pop")
    texts = [conditioned.tokens[i] for i in ids]
    roles = [t for t in texts if t.startswith("Role_")]
    # Per position: lead before accompaniment; a role token only on a change.
    # (beat 0: lead, accompaniment; 1: lead; 1.5: none; 2: accompaniment; 4: both; 6: any)
    assert roles == ["Role_lead", "Role_accompaniment", "Role_lead", "Role_accompaniment",
                     "Role_lead", "Role_accompaniment", "Role_any"]
    for index, text in enumerate(texts):
        if text.startswith("Role_"):
            assert texts[index + 1].startswith("Pitch_")


def test_roles_argument_overrides_and_is_checked(conditioned: MelodyTokenizer) -> None:
    notes = [Note(0.0, 1.0, 60, 80), Note(1.0, 1.0, 62, 80)]
    ids = conditioned.encode_notes(notes, roles=["accompaniment", "lead"])
    assert [n.role for n in conditioned.decode_notes(ids)] == ["accompaniment", "lead"]
    with pytest.raises(TokenizerError, match="one role per note"):
        conditioned.encode_notes(notes, roles=["lead"])
    with pytest.raises(TokenizerError, match="received 'bass'"):
        conditioned.encode_notes(notes, roles=["lead", "bass"])


def test_track_names_are_roles(conditioned: MelodyTokenizer) -> None:
    score = symusic.Score(480)
    score.time_signatures.append(symusic.TimeSignature(0, 4, 4))
    for name, pitch in (("lead", 72), ("accompaniment", 48), ("Piano", 60), ("any", 64)):
        track = symusic.Track(name=name, program=40)
        track.notes.append(symusic.Note(0, 480, pitch, 80))
        score.tracks.append(track)
    notes = conditioned.decode_notes(conditioned.encode_score(score, style="baroque"))
    assert {(n.pitch, n.role) for n in notes} == {
        (72, "lead"), (48, "accompaniment"), (60, "any"), (64, "any")}
    # The same score through the old vocabulary: merged, no role, no style.
    base = MelodyTokenizer()
    assert {n.role for n in base.decode_notes(base.encode_score(score, style="baroque"))} == {
        "any"}


def test_role_cost_on_a_real_song(corpus_midi: dict[str, Path],
                                  conditioned: MelodyTokenizer) -> None:
    """Role tokens cost a fraction of a token per note on a voice-and-piano song."""
    from models.data.roles import RULE_VOICE_PIANO, normalize_score  # noqa: PLC0415

    score, roles = normalize_score(symusic.Score(str(corpus_midi["schumann-dichterliebe-2"])),
                                   RULE_VOICE_PIANO)
    assert roles == ["lead", "accompaniment"]
    ids = conditioned.encode_score(score, style="romantic")
    notes = conditioned.decode_notes(ids)
    role_tokens = sum(conditioned.tokens[i].startswith("Role_") for i in ids)
    assert {n.role for n in notes} == {"lead", "accompaniment"}
    assert len(notes) == sum(len(t.notes) for t in score.tracks)
    assert 0 < role_tokens < 0.5 * len(notes)
    stream = StreamingDetokenizer(conditioned)
    streamed = stream.feed_many(ids)
    assert stream.skipped == 0
    assert sorted(streamed, key=_key) == sorted(notes, key=_key)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=420), max_size=200))
def test_conditioned_streams_never_crash(ids: list[int]) -> None:
    if len(_TOKENIZER) < 2:
        _shared_tokenizer()
        _TOKENIZER.append(MelodyTokenizer(CONDITIONED))
    tokenizer = _TOKENIZER[1]
    stream = StreamingDetokenizer(tokenizer)
    notes = stream.feed_many(ids)
    assert all(n.duration > 0 and n.onset >= 0 and n.role in ("any", "lead", "accompaniment")
               for n in notes)
