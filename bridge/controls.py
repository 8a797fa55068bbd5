"""Live controls: MIDI control changes mapped (in ``[midi]``) to the daemon's knobs."""

from __future__ import annotations

from dataclasses import dataclass

from models.core.settings import MidiSettings

TEMPERATURE_RANGE = (0.2, 2.0)  # a knob's full turn; beyond these the music falls apart
MAX_KNOB_BARS = 8


@dataclass(frozen=True)
class Control:
    """What a control change asks for.

    Attributes:
        kind: ``"temperature"``, ``"length"``, ``"mode"``, ``"style"``, ``"key_lock"``,
            ``"follow"``, ``"accompany_density"``, ``"accompany_key_strength"``,
            ``"morph"`` or ``"panic"``.
        value: the new temperature (float), length in bars (int), mode name (str),
            style index (int), key lock on or off (bool), follow knob value 0-127 (int),
            the factor on the accompaniment's setting (float: 1.0 at the knob's centre),
            the morph amount (float 0-1), or ``None`` for panic.
    """

    kind: str
    value: float | int | str | None


class ControlMap:
    """Turns a CC number and value into a ``Control`` (or ``None`` if unmapped)."""

    def __init__(self, midi: MidiSettings) -> None:
        # -1 disables a control; later keys win if two share a number.
        self._by_cc = {cc: kind for kind, cc in (
            ("temperature", midi.cc_temperature), ("length", midi.cc_length),
            ("mode", midi.cc_mode), ("style", midi.cc_style), ("key_lock", midi.cc_key_lock),
            ("follow", midi.cc_follow), ("accompany_density", midi.cc_accompany_density),
            ("accompany_key_strength", midi.cc_accompany_key_strength),
            ("morph", midi.cc_morph), ("panic", midi.cc_panic))
            if cc >= 0}

    def interpret(self, control: int, value: int, n_styles: int = 1) -> Control | None:
        """The control a CC ``control`` = ``value`` (0-127) asks for."""
        kind = self._by_cc.get(control)
        if kind is None:
            return None
        if kind == "temperature":
            low, high = TEMPERATURE_RANGE
            return Control(kind, round(low + (high - low) * value / 127, 3))
        if kind == "length":
            return Control(kind, 1 + value * MAX_KNOB_BARS // 128)
        if kind == "mode":
            return Control(kind, "accompany" if value >= 64 else "call")
        if kind == "key_lock":
            return Control(kind, value >= 64)
        if kind == "follow":
            return Control(kind, value)
        if kind == "accompany_density":
            # Busyness is heard in ratios: each quarter turn from the centre doubles or
            # halves the notes per bar (a quarter at 0, about four times at 127).
            return Control(kind, round(2.0 ** ((value - 64) / 32), 3))
        if kind == "accompany_key_strength":
            return Control(kind, round(value / 64, 3))  # 0 = the model's own harmony
        if kind == "morph":
            return Control(kind, round(value / 127, 3))  # 0 = the style, 1 = morph_style
        if kind == "style":
            return Control(kind, min(value * max(n_styles, 1) // 128, max(n_styles, 1) - 1))
        return Control(kind, None)
