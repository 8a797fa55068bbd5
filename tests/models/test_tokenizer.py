"""Tokenizer and streaming detokenizer on real music21 corpus pieces.

MIDI -> tokens -> notes must keep every pitch, put every velocity in its bin, and move
onsets and durations by at most one grid step; the streaming detokenizer must agree
with MidiTok's batch decoding; random token streams must never crash it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import symusic
from hypothesis import given, settings
from hypothesis import strategies as st

from models.corpus import convert_source
from models.exceptions import TokenizerError
from models.notes import Note
from models.settings import TokensSettings
from models.streaming import StreamingDetokenizer
from models.tokenizer import MelodyTokenizer

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
