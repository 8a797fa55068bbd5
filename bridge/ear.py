"""What melodyd hears in the call: its key, register and density, as the request's steering.

The daemon and the jam harness each keep one ``Ear`` per jam: it follows the player's key
across phrases (``models.core.tonality.KeyTracker``, with hysteresis and a lock) and
turns the player's notes of the seed window into ``Steering`` (docs/protocol.md) with the
``[interaction]`` strengths, scaled by the "follow" knob.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from models.core.notes import Note
from models.core.protocol.fields import MAX_STEERING_STRENGTH
from models.core.protocol.messages import Steering
from models.core.settings import InteractionSettings
from models.core.tonality import Key, KeyTracker

# A call with at least this many notes per bar gets the floor (no near-silent answer).
FLOOR_FROM_PER_BAR = 1.0


def notes_per_bar(notes: Sequence[Note], bar_length: float) -> float:
    """The call's notes per bar, over the bars it spans (first note's bar to last note's)."""
    if not notes:
        return 0.0
    first = math.floor(min(n.onset for n in notes) / bar_length)
    last = math.floor(max(n.onset for n in notes) / bar_length)
    return len(notes) / (last - first + 1)


class Ear:
    """The listening state of one jam."""

    def __init__(self, settings: InteractionSettings) -> None:
        self.settings = settings
        self.keys = KeyTracker(settings.key_margin)
        self.follow = 1.0  # the knob: 0 = ignore the call, 1 = the settings, 2 = twice

    @property
    def key(self) -> Key | None:
        """The key melodyd follows now (``None``: none heard yet, or key following off)."""
        return self.keys.key if self.settings.key_follow else None

    def lock_key(self, locked: bool) -> None:
        """Hold the current key, or follow the player again."""
        self.keys.lock(locked)

    def set_follow(self, value: int) -> None:
        """The follow knob's CC value (0-127): 64 is the settings, 0 off, 127 about twice."""
        self.follow = max(0, min(127, value)) / 64.0

    def steering(self, call: Sequence[Note], bar_length: float) -> Steering:
        """The steering for an answer to ``call`` (the player's notes of the seed window).

        Also moves the key tracker on: call it once per request.
        """
        s = self.settings

        def scaled(strength: float, on: bool) -> float:
            return min(strength * self.follow, MAX_STEERING_STRENGTH) if on else 0.0

        if not call:
            return Steering()
        key = self.keys.update(call) if s.key_follow else None
        per_bar = notes_per_bar(call, bar_length)
        floor = (s.min_notes_per_bar if s.density_follow and per_bar >= FLOOR_FROM_PER_BAR
                 else 0)
        return Steering(
            key=key,
            key_strength=scaled(s.key_strength, key is not None),
            register_center=(sum(n.pitch for n in call) / len(call)
                             if s.register_follow else None),
            register_width=s.register_width,
            register_strength=scaled(s.register_strength, s.register_follow),
            notes_per_bar=per_bar if s.density_follow else None,
            density_strength=scaled(s.density_strength, s.density_follow),
            min_notes=floor,
        )
