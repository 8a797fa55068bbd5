"""The note, in beats: what the tokenizer, the engine and the bridge exchange."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Note:
    """One note on a beat timeline.

    Attributes:
        onset: start, in quarter-note beats from the timeline's origin.
        duration: length in quarter-note beats (> 0).
        pitch: MIDI pitch 0-127.
        velocity: MIDI velocity 1-127.
    """

    onset: float
    duration: float
    pitch: int
    velocity: int

    @property
    def end(self) -> float:
        """Beat at which the note stops sounding."""
        return self.onset + self.duration

    def to_json(self) -> dict[str, Any]:
        """The protocol's form of a note."""
        return {"onset": self.onset, "duration": self.duration,
                "pitch": self.pitch, "velocity": self.velocity}

    def shifted(self, beats: float) -> Note:
        """The same note moved by ``beats`` on the timeline."""
        return Note(self.onset + beats, self.duration, self.pitch, self.velocity)
