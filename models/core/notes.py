"""The note, in beats: what the tokenizer, the engine and the bridge exchange."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# The role of a note in its piece (see ``models.data.roles``): the tune, what accompanies it,
# or unknown (no separation in the source). A vocabulary with Role tokens keeps it.
LEAD = "lead"
ACCOMPANIMENT = "accompaniment"
ANY = "any"
ROLES = (ANY, LEAD, ACCOMPANIMENT)


@dataclass(frozen=True, slots=True)
class Note:
    """One note on a beat timeline.

    Attributes:
        onset: start, in quarter-note beats from the timeline's origin.
        duration: length in quarter-note beats (> 0).
        pitch: MIDI pitch 0-127.
        velocity: MIDI velocity 1-127.
        role: ``"any"``, ``"lead"`` or ``"accompaniment"`` (``ROLES``).
    """

    onset: float
    duration: float
    pitch: int
    velocity: int
    role: str = ANY

    @property
    def end(self) -> float:
        """Beat at which the note stops sounding."""
        return self.onset + self.duration

    def to_json(self) -> dict[str, Any]:
        """The protocol's form of a note (``role`` only when it is not ``"any"``, so a
        model without roles sends exactly what it always sent)."""
        data: dict[str, Any] = {"onset": self.onset, "duration": self.duration,
                                "pitch": self.pitch, "velocity": self.velocity}
        if self.role != ANY:
            data["role"] = self.role
        return data

    def shifted(self, beats: float) -> Note:
        """The same note moved by ``beats`` on the timeline."""
        return Note(self.onset + beats, self.duration, self.pitch, self.velocity, self.role)


# A passage of this many notes or more on FEW_PITCHES pitches or fewer is a pedal or a
# trill, not a line (the jam harness's monotony, the critic's variety term).
FEW_PITCHES = 2
FEW_PITCHES_MIN_NOTES = 4


def on_few_pitches(notes: Sequence[Note]) -> bool:
    """Whether a passage of ``FEW_PITCHES_MIN_NOTES`` notes or more uses only
    ``FEW_PITCHES`` distinct pitches or fewer (shorter passages: ``False``)."""
    return (len(notes) >= FEW_PITCHES_MIN_NOTES
            and len({n.pitch for n in notes}) <= FEW_PITCHES)


def dwell_share(notes: Sequence[Note]) -> float:
    """The share of ``notes`` on their commonest pitch (0 for none): how much a passage
    dwells on one pitch (the critic's variety term, the jam harness's monotony)."""
    if not notes:
        return 0.0
    return Counter(n.pitch for n in notes).most_common(1)[0][1] / len(notes)
