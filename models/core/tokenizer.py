"""The beat-relative, bar-aware vocabulary: MidiTok's REMI, configured from ``[tokens]``.

A piece becomes one stream (all tracks merged, drums dropped, like a piano reduction):
``BOS Bar TimeSig Position Pitch Velocity Duration ... Bar ... EOS``. Time is on a grid of
``positions_per_beat`` steps per beat, never in seconds, so output follows any tempo.
No BPE: merges would change earlier tokens and break the engine's KV cache.

Two kinds of conditioning are optional (``[tokens] style_slots`` and ``roles``; the
defaults build the vocabulary of the models trained before them, same fingerprint):

- **Style**: ``Style_k`` tokens, ``k`` a slot (slot 0 = "any style"; ``[tokens] styles``
  names slots 1, 2, ...), appended after MidiTok's vocabulary and handled here (MidiTok
  never sees them). One follows ``BOS``: ``BOS Style_k Bar ...``. Only that place is
  trained; the streaming detokenizer also accepts one between events (a mid-stream
  switch), but the engine's grammar does not offer it there.
- **Role**: each note is ``lead``, ``accompaniment`` or ``any`` (its track's name, see
  ``models.data.roles``). These are MidiTok's own ``Program`` tokens in "program change" mode
  (one stream, a Program token before a Pitch only when it differs from the previous
  note's), programs 0/1/2 standing for any/lead/accompaniment and renamed ``Role_any``,
  ``Role_lead``, ``Role_accompaniment`` here (same ids). MidiTok then orders, encodes and
  decodes roles itself; a stream's role before its first Role token is ``any`` (program 0,
  as MidiTok decodes it). Measured on Lieder, the cost is ~0.24 tokens per note (+7 %),
  against a full token per note (+29 %) for a Role before every note.

  Within one position, notes come in role order (any, lead, accompaniment), each role's
  notes by pitch: a lead is read before what accompanies it.

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

from models.core.exceptions import ConfigError, TokenizerError
from models.core.meter import parse_time_signature
from models.core.notes import ANY, ROLES, Note
from models.core.protocol.limits import STYLE_ANY
from models.core.settings import TokensSettings, _build_section

logger = logging.getLogger(__name__)

TOKENIZER_FORMAT = "melodyd-tokens"
TOKENIZER_VERSION = 1
SPECIAL_TOKENS = ("PAD", "BOS", "EOS")
# Ticks per quarter note of the scores we build from notes; miditok resamples to its own.
_NOTES_TPQ = 480
# symusic stores ticks as int32: a note ending past this tick (~4.47 million beats at
# _NOTES_TPQ) would overflow inside the library instead of failing clearly.
_MAX_TICK = 2**31 - 1
# The MidiTok program standing for each role. "any" is 0 because MidiTok decodes notes
# before any Program token as program 0; the order is the order of roles at one position.
ROLE_PROGRAMS = {role: program for program, role in enumerate(ROLES)}
# The conditioning settings, left out of ``to_dict`` at their defaults so that the saved
# configuration of an unconditioned vocabulary is exactly what it was before them.
_CONDITIONING_DEFAULTS = {"style_slots": 0, "styles": (), "roles": False}


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
        try:
            num, den = parse_time_signature(text)
        except ValueError as err:
            raise TokenizerError(str(err)) from err
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
        time_signature_range={den: sorted(nums) for den, nums in sorted(signatures.items())},
        # Roles ride on MidiTok's programs: one stream, Program tokens on changes only.
        use_programs=settings.roles,
        one_token_stream_for_programs=True,
        program_changes=settings.roles,
        programs=sorted(ROLE_PROGRAMS.values()) if settings.roles else list(range(-1, 128)),
    )


class MelodyTokenizer:
    """REMI tokens for one merged stream of notes, with a JSON configuration.

    Attributes:
        settings: the ``[tokens]`` values the vocabulary was built from.
        remi: the underlying MidiTok tokenizer (used for batch encode/decode).
        vocab: token string -> id.
        tokens: id -> token string.
        role_ids: role -> id of its ``Role`` token (empty without roles).
        style_ids: slot -> id of its ``Style`` token (empty without style slots).
    """

    def __init__(self, settings: TokensSettings | None = None) -> None:
        self.settings = settings or TokensSettings()
        self.remi = miditok.REMI(_miditok_config(self.settings))
        self.vocab: dict[str, int] = dict(self.remi.vocab)
        self.role_ids: dict[str, int] = {}
        if self.settings.roles:
            for role, program in ROLE_PROGRAMS.items():
                # Same id, a name that says what the program stands for.
                self.role_ids[role] = self.vocab.pop(f"Program_{program}")
                self.vocab[f"Role_{role}"] = self.role_ids[role]
        # Style tokens are ours: after MidiTok's ids, never passed to MidiTok.
        self._remi_size = len(self.remi.vocab)
        self.style_ids: list[int] = [self._remi_size + k
                                     for k in range(self.settings.style_slots)]
        for slot, index in enumerate(self.style_ids):
            self.vocab[f"Style_{slot}"] = index
        self.tokens: list[str] = [""] * len(self.vocab)
        for text, index in self.vocab.items():
            self.tokens[index] = text
        self.pad_id = self.vocab["PAD_None"]
        self.bos_id = self.vocab["BOS_None"]
        self.eos_id = self.vocab["EOS_None"]
        self.bar_id = self.vocab["Bar_None"]
        self._program_roles = {program: role for role, program in ROLE_PROGRAMS.items()}

    # ----------------------------------------------------------------- configuration
    @property
    def vocab_size(self) -> int:
        """Number of token ids."""
        return len(self.tokens)

    @property
    def fingerprint(self) -> str:
        """A short hash of the vocabulary: two tokenizers with equal fingerprints agree."""
        return hashlib.sha256("\n".join(self.tokens).encode()).hexdigest()[:16]

    @property
    def has_roles(self) -> bool:
        """Whether the vocabulary has Role tokens."""
        return bool(self.role_ids)

    @property
    def style_slots(self) -> dict[str, int]:
        """Style name -> slot, ``{"any": 0, <styles[0]>: 1, ...}``; empty without slots."""
        if not self.style_ids:
            return {}
        return {STYLE_ANY: 0, **{name: k + 1 for k, name in enumerate(self.settings.styles)}}

    def style_id(self, style: str | None) -> int | None:
        """Id of the ``Style`` token of a style name; ``None`` without style tokens.

        A name the vocabulary does not know (or ``None``) is slot 0, "any style": the
        model was trained with that slot standing for every style (dropout).
        """
        if not self.style_ids:
            return None
        return self.style_ids[self.style_slots.get(style or STYLE_ANY, 0)]

    def with_styles(self, names: Iterable[str]) -> MelodyTokenizer:
        """This vocabulary with ``names`` given slots (the free ones, in the order given).

        Names already known keep their slot; the token ids (and the fingerprint) do not
        change, so a model trained on this vocabulary still reads it.

        Raises:
            TokenizerError: the vocabulary has no style tokens, or too few free slots.
        """
        known = list(self.settings.styles)
        new = [n for n in dict.fromkeys(names) if n not in known and n != STYLE_ANY]
        if not new:
            return self
        if not self.style_ids:
            raise TokenizerError(f"this vocabulary has no style tokens ([tokens] style_slots "
                                 f"is 0) to give styles {new!r}")
        free = self.settings.style_slots - 1 - len(known)
        if len(new) > free:
            raise TokenizerError(
                f"{len(new)} new styles ({', '.join(new)}) but only {free} free style slots "
                f"of [tokens] style_slots {self.settings.style_slots}")
        try:
            settings = dataclasses.replace(self.settings, styles=(*known, *new))
            settings.check()
        except ConfigError as err:
            raise TokenizerError(f"cannot name styles {new!r}: {err}") from err
        return type(self)(settings)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in manifests, checkpoints and ONNX metadata.

        The conditioning settings appear only when they differ from their defaults, so an
        unconditioned vocabulary writes the same configuration as before they existed.
        """
        settings = {k: list(v) if isinstance(v, tuple) else v
                    for k, v in dataclasses.asdict(self.settings).items()
                    if k not in _CONDITIONING_DEFAULTS or _CONDITIONING_DEFAULTS[k] != v}
        return {
            "format": TOKENIZER_FORMAT,
            "version": TOKENIZER_VERSION,
            "settings": settings,
            "vocab_size": self.vocab_size,
            "fingerprint": self.fingerprint,
            "miditok_version": miditok.__version__ if hasattr(miditok, "__version__") else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MelodyTokenizer:
        """Rebuild a tokenizer and check it reproduces the saved vocabulary.

        Configurations saved before style and role tokens existed lack those settings:
        their defaults rebuild the same vocabulary.

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
        """Read a configuration written by ``save``.

        Raises:
            TokenizerError: the file cannot be read, or is no configuration this MidiTok
                rebuilds (the message names the file).
        """
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise TokenizerError(f"cannot read tokenizer configuration {path}: {err}") from err
        try:
            return cls.from_dict(data)
        except TokenizerError as err:
            raise TokenizerError(f"{path}: {err}") from err

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

    @staticmethod
    def merge_by_role(score: symusic.Score) -> symusic.Score:
        """One track per role (``any``, ``lead``, ``accompaniment``, in that order), each
        with its role's program; a track's role is its name (any other name is ``any``)."""
        merged = symusic.Score(score.ticks_per_quarter)
        merged.time_signatures = score.time_signatures.copy()
        tracks = {role: symusic.Track(name=role, program=program, is_drum=False)
                  for role, program in ROLE_PROGRAMS.items()}
        for source in score.tracks:
            if source.is_drum:
                continue
            target = tracks[source.name if source.name in tracks else ANY]
            for note in source.notes:
                target.notes.append(note)
        for track in tracks.values():
            if len(track.notes):
                track.notes.sort(key=lambda n: (n.time, n.pitch))
                merged.tracks.append(track)
        return merged

    def _head(self, bos: bool, style: str | None) -> list[int]:
        """``BOS`` and, with style tokens, the piece's ``Style`` token after it."""
        if not bos:
            return []
        style_id = self.style_id(style)
        return [self.bos_id] if style_id is None else [self.bos_id, style_id]

    def encode_score(self, score: symusic.Score, *, style: str | None = None,
                     bos: bool = True, eos: bool = True) -> list[int]:
        """Token ids of a score (tracks merged, drums dropped).

        Args:
            score: the piece; with Role tokens, each track's name is its notes' role.
            style: the piece's style name, written as a ``Style`` token after ``BOS``
                (slot 0 when unknown or ``None``); ignored by a vocabulary without styles.
            bos: start with ``BOS`` (and the style token).
            eos: end with ``EOS``.
        """
        merged = self.merge_by_role(score) if self.has_roles else self.merge_tracks(score)
        head = self._head(bos, style)
        if not any(len(track.notes) for track in merged.tracks):
            return head + [self.eos_id] * eos
        sequences = self.remi.encode(merged)
        sequence = sequences[0] if isinstance(sequences, list) else sequences
        return head + list(sequence.ids) + [self.eos_id] * eos

    def encode_file(self, path: str | Path, *, style: str | None = None) -> list[int]:
        """Token ids of a MIDI file (symusic raises on a corrupt file).

        Parsed as MIDI whatever the suffix: symusic guesses the format from the name and
        calls ``.Midi`` or ``.kar`` files an "Unknown file format".
        """
        return self.encode_score(symusic.Score(str(path), fmt="midi"), style=style)

    def notes_to_score(self, notes: Iterable[Note],
                       time_signature: tuple[int, int] = (4, 4), *,
                       roles: Sequence[str] | None = None) -> symusic.Score:
        """A score of beat-timed notes (onsets must be >= 0), one track per role used.

        Args:
            notes: the notes; each keeps its ``role`` unless ``roles`` is given.
            time_signature: the score's time signature.
            roles: one role per note, overriding the notes' own.

        Raises:
            TokenizerError: a note ends beyond the score's int32 ticks (callers encode
                times relative to a nearby bar, as the engine's prompt does), a role is
                unknown, or ``roles`` does not have one role per note.
        """
        notes = list(notes)
        if roles is None:
            roles = [note.role for note in notes]
        elif len(roles) != len(notes):
            raise TokenizerError(f"roles must give one role per note ({len(notes)} notes, "
                                 f"received {len(roles)} roles)")
        score = symusic.Score(_NOTES_TPQ)
        score.time_signatures.append(symusic.TimeSignature(0, *time_signature))
        tracks: dict[str, symusic.Track] = {}
        for note, role in zip(notes, roles, strict=True):
            if role not in ROLE_PROGRAMS:
                raise TokenizerError(f"a note's role must be one of {', '.join(ROLES)} "
                                     f"(received {role!r})")
            start = round(note.onset * _NOTES_TPQ)
            length = max(1, round(note.duration * _NOTES_TPQ))
            if start + length > _MAX_TICK:
                raise TokenizerError(
                    f"a note at beat {note.onset:g} lasting {note.duration:g} beats ends past "
                    f"beat {_MAX_TICK / _NOTES_TPQ:.0f}, the last one a score can hold")
            track = tracks.get(role)
            if track is None:
                track = tracks[role] = symusic.Track(name=role, program=ROLE_PROGRAMS[role],
                                                     is_drum=False)
            track.notes.append(symusic.Note(start, length, note.pitch, note.velocity))
        for role in ROLES:  # a fixed track order, whatever the notes' order
            if role in tracks:
                score.tracks.append(tracks[role])
        return score

    def encode_notes(self, notes: Sequence[Note], time_signature: tuple[int, int] = (4, 4),
                     *, roles: Sequence[str] | None = None, style: str | None = None,
                     bos: bool = True, eos: bool = False) -> list[int]:
        """Token ids of notes whose timeline starts on a bar at beat 0.

        Args:
            notes: the notes (each with its role; ``roles`` overrides them).
            time_signature: the bars' time signature.
            roles: one role per note, or ``None`` to use the notes' own.
            style: the style name after ``BOS`` (vocabularies with style tokens only).
            bos: start with ``BOS`` (and the style token).
            eos: end with ``EOS``.

        Raises:
            TokenizerError: see ``notes_to_score``.
        """
        score = self.notes_to_score(notes, time_signature, roles=roles)
        return self.encode_score(score, style=style, bos=bos, eos=eos)

    # ----------------------------------------------------------------- decoding
    def strip_specials(self, ids: Iterable[int]) -> list[int]:
        """Ids without PAD/BOS/Style, stopping at the first EOS: what MidiTok decodes."""
        out = []
        for raw in ids:
            token = int(raw)
            if token == self.eos_id:
                break
            if token in (self.pad_id, self.bos_id) or token >= self._remi_size:
                continue
            out.append(token)
        return out

    def style_of(self, ids: Iterable[int]) -> int | None:
        """The slot of the first ``Style`` token of a stream, ``None`` if it has none."""
        for raw in ids:
            token = int(raw)
            if token >= self._remi_size and token < self.vocab_size:
                return token - self._remi_size
        return None

    def decode_score(self, ids: Iterable[int]) -> symusic.Score:
        """MidiTok's batch decoding of ids into a score (one track, or one per role)."""
        body = self.strip_specials(ids)
        if self.has_roles:
            # One stream of programs: MidiTok takes the flat list.
            score = self.remi.decode(np.asarray(body, dtype=np.int64).tolist())
            for track in score.tracks:
                track.name = self._program_roles.get(int(track.program), ANY)
            return score
        return self.remi.decode([np.asarray(body, dtype=np.int64).tolist()])

    def decode_notes(self, ids: Iterable[int]) -> list[Note]:
        """Notes (in beats, with roles) of MidiTok's batch decoding, sorted by onset, pitch."""
        score = self.decode_score(ids)
        tpq = score.ticks_per_quarter
        notes = [Note(n.time / tpq, n.duration / tpq, n.pitch, n.velocity,
                      track.name if self.has_roles else ANY)
                 for track in score.tracks for n in track.notes]
        return sorted(notes, key=lambda n: (n.onset, n.pitch, ROLE_PROGRAMS[n.role]))
