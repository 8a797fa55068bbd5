"""Roles of a piece's tracks (lead, accompaniment or any), and MIDI files named by role.

Every piece the corpus cache holds is a MIDI file whose tracks are named by role:
``lead`` (the tune: a song's voice, a quartet's first violin, POP909's MELODY track),
``accompaniment`` (the piano under a voice, the lower strings, POP909's BRIDGE and PIANO)
or ``any`` (no separation: solo piano, polyphony of equal voices). Tracks of one role are
merged, so a normalized file has at most one track per role, in that order.

A *rule* says how a corpus separates its roles; it is applied to the tracks of a MIDI file
written by music21 (one track per score part, named as the part) or of a native MIDI file.

Torch-free; symusic only.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import symusic

from models.core.exceptions import DataError

LEAD = "lead"
ACCOMPANIMENT = "accompaniment"
ANY = "any"
ROLES = (LEAD, ACCOMPANIMENT, ANY)

# How a corpus separates its roles (see ``assign_roles``).
RULE_ANY = "any"                # no separation: every track is "any"
RULE_ALL_LEAD = "all-lead"      # folk tunes: every track is the tune
RULE_VOICE_PIANO = "voice-piano"  # songs: the keyboard accompanies, the rest leads
RULE_FIRST_PART = "first-part"  # quartets, chorales: the first part leads
RULE_POP909 = "pop909"          # POP909's MELODY / BRIDGE / PIANO tracks
RULES = (RULE_ANY, RULE_ALL_LEAD, RULE_VOICE_PIANO, RULE_FIRST_PART, RULE_POP909)

# Part names of accompanying instruments in the scores (keyboards, guitars, harps; English,
# German, Italian, French, Polish).
_KEYBOARD = re.compile(r"piano|klavier|clavier|keyboard|cembalo|harpsichord|organ|orgel"
                       r"|fortep|guitar|gitarr|guitare|harp|harfe|harpe|(?<![a-z])lute|laute",
                       re.IGNORECASE)
# General MIDI programs 0-7 are pianos; music21 writes 0 for a part without an instrument.
_PIANO_PROGRAMS = range(8)


def assign_roles(rule: str, tracks: Sequence[tuple[str, int]]) -> list[str]:
    """The role of each track, by a corpus's rule.

    Args:
        rule: one of ``RULES``.
        tracks: ``(name, program)`` of each track with notes, in score order.

    Raises:
        DataError: an unknown rule.
    """
    if rule == RULE_ANY:
        return [ANY] * len(tracks)
    if rule == RULE_ALL_LEAD:
        return [LEAD] * len(tracks)
    if rule == RULE_FIRST_PART:
        # A single part has nothing to accompany it: it is the tune.
        return [LEAD] + [ACCOMPANIMENT] * (len(tracks) - 1) if tracks else []
    if rule == RULE_POP909:
        names = {"MELODY": LEAD, "BRIDGE": ACCOMPANIMENT, "PIANO": ACCOMPANIMENT}
        return [names.get(name.strip().upper(), ANY) for name, _ in tracks]
    if rule == RULE_VOICE_PIANO:
        roles = [_voice_piano_role(name, program) for name, program in tracks]
        named_keyboard = any(_KEYBOARD.search(name) for name, _ in tracks)
        if LEAD not in roles and named_keyboard:
            # Beside a part named as a keyboard, an unnamed part is the voice (kern songs
            # whose vocal spine has no instrument).
            roles = [LEAD if not name.strip() else role
                     for (name, _), role in zip(tracks, roles, strict=True)]
        if ACCOMPANIMENT not in roles and len(roles) > 1:
            # Part-songs for voices alone: the top voice leads, as in a chorale.
            return assign_roles(RULE_FIRST_PART, tracks)
        # A piano piece among songs (no voice) has nothing to accompany: no roles.
        return roles if LEAD in roles else [ANY] * len(tracks)
    raise DataError(f"unknown role rule {rule!r} (known: {', '.join(RULES)})")


def _voice_piano_role(name: str, program: int) -> str:
    """A song's part: the keyboard accompanies; voices (and obbligato instruments) lead.

    An unnamed part with a piano program is the keyboard: music21 leaves unnamed the
    piano staves of many kern songs, while their voices carry a vocal program (52-54).
    """
    if _KEYBOARD.search(name):
        return ACCOMPANIMENT
    if not name.strip() and program in _PIANO_PROGRAMS:
        return ACCOMPANIMENT
    return LEAD


def normalize_score(score: symusic.Score, rule: str) -> tuple[symusic.Score, list[str]]:
    """The score with one track per role (named by role), and the roles of its tracks.

    Drum tracks and tracks without notes are dropped; tempo, time and key signatures and
    markers are kept. Notes keep their times, pitches, durations and velocities.

    Raises:
        DataError: an unknown rule.
    """
    tracks = [t for t in score.tracks if not t.is_drum and len(t.notes)]
    roles = assign_roles(rule, [(t.name, int(t.program)) for t in tracks])
    out = score.copy()
    out.tracks.clear()
    for role in ROLES:
        members = [t for t, r in zip(tracks, roles, strict=True) if r == role]
        if not members:
            continue
        merged = symusic.Track(name=role, program=0, is_drum=False)
        for member in members:
            merged.notes.extend(member.notes)
            merged.pedals.extend(member.pedals)
        merged.notes.sort()
        out.tracks.append(merged)
    return out, [t.name for t in out.tracks]


def track_roles(score: symusic.Score) -> list[str]:
    """The role of each track with notes: its name when that is a role, else ``any``.

    A file outside the corpus cache (a user's MIDI folder) has no roles: all ``any``.
    """
    return [t.name if t.name in ROLES else ANY
            for t in score.tracks if not t.is_drum and len(t.notes)]


@dataclasses.dataclass(frozen=True)
class PieceInfo:
    """What the tokenizer needs to condition on a piece.

    Attributes:
        style: the piece's style label (``romantic``, ``pop``, ...), ``None`` if unknown.
        roles: the role of each track of the piece's MIDI file, in track order.
        licence: the licence of the piece's source, ``None`` if unknown.
        corpus: the corpus or collection it comes from, ``None`` for a plain folder.
    """

    style: str | None
    roles: tuple[str, ...]
    licence: str | None = None
    corpus: str | None = None


def piece_info(source: str | Path, piece: str | None = None) -> PieceInfo:
    """Style and track roles of one piece of a built dataset or of the corpus cache.

    Args:
        source: a dataset folder (with ``manifest.json``; ``piece`` names a piece of its
            splits), or a MIDI file of the corpus cache (``piece`` omitted).
        piece: the piece's name in the dataset manifest.

    Raises:
        DataError: no such dataset, piece or file, or a dataset built before pieces
            carried their style and roles.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        manifest_path = path / "manifest.json"
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise DataError(f"cannot read the dataset manifest {manifest_path}: {err}") from err
        pieces = manifest.get("pieces") if isinstance(manifest, dict) else None
        if not isinstance(pieces, dict):
            raise DataError(f"{manifest_path} records no per-piece style and roles; rebuild "
                            f"it with `melody data build`")
        if piece not in pieces:
            raise DataError(f"{path} has no piece {piece!r} (it has {len(pieces)} pieces)")
        entry = pieces[piece]
        return PieceInfo(entry.get("style"), tuple(entry.get("roles", ())),
                         entry.get("licence"), entry.get("corpus"))
    if piece is not None:
        raise DataError(f"piece {piece!r} given, but {path} is not a dataset folder")
    from models.data.midifile import load_score  # noqa: PLC0415 - avoid an import cycle

    roles = tuple(track_roles(load_score(path)))
    record, index = _cache_record(path)
    return PieceInfo(record.get("style"), roles, index.get("licence"),
                     index.get("collection"))


def _cache_record(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The index record of a cached MIDI file (the collection's index lies above it)."""
    for folder in path.resolve().parents:
        index_path = folder / "index.json"
        if index_path.is_file():
            try:
                index = json.loads(index_path.read_text())
            except (OSError, json.JSONDecodeError) as err:
                raise DataError(f"cannot read the corpus index {index_path}: {err}") from err
            rel = path.resolve().relative_to(folder.parent).as_posix()
            for record in index.get("pieces", []):
                if record.get("midi") == rel:
                    return record, index
            raise DataError(f"{path} is not listed in {index_path}")
    raise DataError(f"{path} is not a file of the corpus cache (no index.json above it)")
