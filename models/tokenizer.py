"""The beat-relative, bar-aware vocabulary: MidiTok's REMI, configured from ``[tokens]``.

A piece becomes one stream (all tracks merged, drums dropped, like a piano reduction):
``BOS Bar TimeSig Position Pitch Velocity Duration ... Bar ... EOS``. Time is on a grid of
``positions_per_beat`` steps per beat, never in seconds, so output follows any tempo.
No BPE: merges would change earlier tokens and break the engine's KV cache.

Torch-free: the engine encodes seeds with this module.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

# MidiTok's __init__ imports its optional PyTorch helpers (miditok.pytorch_data), and so
# torch itself (~1 s, ~200 MB), whenever torch is installed. The engine and the bridge must
# not load torch, and nothing here uses those helpers: a None entry in sys.modules makes
# that optional import fail the way MidiTok expects when torch is absent.
if "miditok" not in sys.modules:
    sys.modules.setdefault("miditok.pytorch_data", None)

import miditok
import numpy as np
import symusic

from models.exceptions import ConfigError, TokenizerError
from models.notes import Note
from models.settings import TOKEN_MAX_DENOMINATOR, TokensSettings, _build_section

logger = logging.getLogger(__name__)

TOKENIZER_FORMAT = "melodyd-tokens"
TOKENIZER_VERSION = 1
SPECIAL_TOKENS = ("PAD", "BOS", "EOS")
# Ticks per quarter note of the scores we build from notes; miditok resamples to its own.
_NOTES_TPQ = 480
# symusic stores ticks as int32: a note ending past this tick (~4.47 million beats at
# _NOTES_TPQ) would overflow inside the library instead of failing clearly.
_MAX_TICK = 2**31 - 1
# Powers of two up to the vocabulary's largest denominator (1, 2, 4, 8, 16).
_DENOMINATORS = tuple(2**k for k in range(TOKEN_MAX_DENOMINATOR.bit_length()))


def _parse_time_signature(text: str) -> tuple[int, int]:
    try:
        num, den = (int(part) for part in str(text).split("/"))
    except ValueError as err:
        raise TokenizerError(f"time signature must look like '3/4' (received {text!r})") from err
    if num < 1 or den not in _DENOMINATORS:
        raise TokenizerError(f"time signature {text!r} is not a valid n/2^k signature")
    return num, den


def _miditok_config(settings: TokensSettings) -> miditok.TokenizerConfig:
    """Translate ``[tokens]`` into MidiTok's configuration."""
    if settings.pitch_min > settings.pitch_max:
        raise TokenizerError(
            f"[tokens] pitch_min ({settings.pitch_min}) is above pitch_max ({settings.pitch_max})")
    ppb = settings.positions_per_beat
    # Exact grid up to four beats, then coarser steps for long notes (a quarter beat).
    beat_res = {(0, min(4, settings.max_duration_beats)): ppb}
    if settings.max_duration_beats > 4:
        beat_res[(4, settings.max_duration_beats)] = min(ppb, 4)
    signatures: dict[int, list[int]] = {}
    for text in settings.time_signatures:
        num, den = _parse_time_signature(text)
        signatures.setdefault(den, []).append(num)
    return miditok.TokenizerConfig(
        pitch_range=(settings.pitch_min, settings.pitch_max + 1),
        beat_res=beat_res,
        num_velocities=settings.num_velocities,
        special_tokens=list(SPECIAL_TOKENS),
        use_velocities=True,
        use_chords=False,
        use_rests=False,
        use_tempos=False,
        use_time_signatures=True,
        use_sustain_pedals=False,
        use_pitch_bends=False,
        use_programs=False,
        time_signature_range={den: sorted(nums) for den, nums in sorted(signatures.items())},
    )


class MelodyTokenizer:
    """REMI tokens for one merged stream of notes, with a JSON configuration.

    Attributes:
        settings: the ``[tokens]`` values the vocabulary was built from.
        remi: the underlying MidiTok tokenizer (used for batch encode/decode).
        vocab: token string -> id.
        tokens: id -> token string.
    """

    def __init__(self, settings: TokensSettings | None = None) -> None:
        self.settings = settings or TokensSettings()
        self.remi = miditok.REMI(_miditok_config(self.settings))
        self.vocab: dict[str, int] = dict(self.remi.vocab)
        self.tokens: list[str] = [""] * len(self.vocab)
        for text, index in self.vocab.items():
            self.tokens[index] = text
        self.pad_id = self.vocab["PAD_None"]
        self.bos_id = self.vocab["BOS_None"]
        self.eos_id = self.vocab["EOS_None"]
        self.bar_id = self.vocab["Bar_None"]

    # ----------------------------------------------------------------- configuration
    @property
    def vocab_size(self) -> int:
        """Number of token ids."""
        return len(self.tokens)

    @property
    def fingerprint(self) -> str:
        """A short hash of the vocabulary: two tokenizers with equal fingerprints agree."""
        return hashlib.sha256("\n".join(self.tokens).encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in manifests, checkpoints and ONNX metadata."""
        return {
            "format": TOKENIZER_FORMAT,
            "version": TOKENIZER_VERSION,
            "settings": {k: list(v) if isinstance(v, tuple) else v
                         for k, v in dataclasses.asdict(self.settings).items()},
            "vocab_size": self.vocab_size,
            "fingerprint": self.fingerprint,
            "miditok_version": miditok.__version__ if hasattr(miditok, "__version__") else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MelodyTokenizer:
        """Rebuild a tokenizer and check it reproduces the saved vocabulary.

        Raises:
            TokenizerError: the dictionary is not a melodyd tokenizer configuration, or
                this MidiTok builds a different vocabulary from it.
        """
        if not isinstance(data, dict) or data.get("format") != TOKENIZER_FORMAT:
            raise TokenizerError("not a melodyd tokenizer configuration")
        if data.get("version") != TOKENIZER_VERSION:
            raise TokenizerError(
                f"tokenizer configuration version must be {TOKENIZER_VERSION} "
                f"(received {data.get('version')!r})")
        try:
            settings = _build_section("tokens", TokensSettings, data.get("settings", {}))
        except ConfigError as err:
            # A saved configuration is data, not the user's config.toml: say where it is from.
            raise TokenizerError(f"invalid tokenizer configuration: {err}") from err
        tokenizer = cls(settings)
        expected = data.get("fingerprint")
        if expected is not None and expected != tokenizer.fingerprint:
            raise TokenizerError(
                f"the installed MidiTok builds a different vocabulary from this configuration "
                f"(fingerprint {tokenizer.fingerprint}, saved {expected})")
        return tokenizer

    def save(self, path: str | Path) -> None:
        """Write the configuration as JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> MelodyTokenizer:
        """Read a configuration written by ``save``."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise TokenizerError(f"cannot read tokenizer configuration {path}: {err}") from err
        return cls.from_dict(data)

    # ----------------------------------------------------------------- encoding
    @staticmethod
    def merge_tracks(score: symusic.Score) -> symusic.Score:
        """One piano-style track holding the notes of every non-drum track."""
        merged = symusic.Score(score.ticks_per_quarter)
        merged.time_signatures = score.time_signatures.copy()
        track = symusic.Track(name="merged", program=0, is_drum=False)
        for source in score.tracks:
            if source.is_drum:
                continue
            for note in source.notes:
                track.notes.append(note)
        track.notes.sort(key=lambda n: (n.time, n.pitch))
        merged.tracks.append(track)
        return merged

    def encode_score(self, score: symusic.Score, *, bos: bool = True,
                     eos: bool = True) -> list[int]:
        """Token ids of a score (tracks merged, drums dropped)."""
        merged = self.merge_tracks(score)
        if not merged.tracks[0].notes:
            return [self.bos_id] * bos + [self.eos_id] * eos
        sequences = self.remi.encode(merged)
        sequence = sequences[0] if isinstance(sequences, list) else sequences
        return [self.bos_id] * bos + list(sequence.ids) + [self.eos_id] * eos

    def encode_file(self, path: str | Path) -> list[int]:
        """Token ids of a MIDI file (symusic raises on a corrupt file).

        Parsed as MIDI whatever the suffix: symusic guesses the format from the name and
        calls ``.Midi`` or ``.kar`` files an "Unknown file format".
        """
        return self.encode_score(symusic.Score(str(path), fmt="midi"))

    def notes_to_score(self, notes: Iterable[Note],
                       time_signature: tuple[int, int] = (4, 4)) -> symusic.Score:
        """A one-track score of beat-timed notes (onsets must be >= 0).

        Raises:
            TokenizerError: a note ends beyond the score's int32 ticks (callers encode
                times relative to a nearby bar, as the engine's prompt does).
        """
        score = symusic.Score(_NOTES_TPQ)
        score.time_signatures.append(symusic.TimeSignature(0, *time_signature))
        track = symusic.Track(name="notes", program=0, is_drum=False)
        for note in notes:
            start = round(note.onset * _NOTES_TPQ)
            length = max(1, round(note.duration * _NOTES_TPQ))
            if start + length > _MAX_TICK:
                raise TokenizerError(
                    f"a note at beat {note.onset:g} lasting {note.duration:g} beats ends past "
                    f"beat {_MAX_TICK / _NOTES_TPQ:.0f}, the last one a score can hold")
            track.notes.append(symusic.Note(start, length, note.pitch, note.velocity))
        score.tracks.append(track)
        return score

    def encode_notes(self, notes: Sequence[Note], time_signature: tuple[int, int] = (4, 4),
                     *, bos: bool = True, eos: bool = False) -> list[int]:
        """Token ids of notes whose timeline starts on a bar at beat 0."""
        return self.encode_score(self.notes_to_score(notes, time_signature), bos=bos, eos=eos)

    # ----------------------------------------------------------------- decoding
    def strip_specials(self, ids: Iterable[int]) -> list[int]:
        """Ids without PAD/BOS/EOS, stopping at the first EOS."""
        out = []
        for raw in ids:
            token = int(raw)
            if token == self.eos_id:
                break
            if token in (self.pad_id, self.bos_id):
                continue
            out.append(token)
        return out

    def decode_score(self, ids: Iterable[int]) -> symusic.Score:
        """MidiTok's batch decoding of ids into a one-track score."""
        body = self.strip_specials(ids)
        return self.remi.decode([np.asarray(body, dtype=np.int64).tolist()])

    def decode_notes(self, ids: Iterable[int]) -> list[Note]:
        """Notes (in beats) of MidiTok's batch decoding, sorted by onset then pitch."""
        score = self.decode_score(ids)
        tpq = score.ticks_per_quarter
        notes = [Note(n.time / tpq, n.duration / tpq, n.pitch, n.velocity)
                 for track in score.tracks for n in track.notes]
        return sorted(notes, key=lambda n: (n.onset, n.pitch))
