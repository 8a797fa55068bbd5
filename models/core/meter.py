"""Time signatures: the one rule for which ones melodyd takes, and the one ``"N/D"`` parser.

Every part checks a time signature here: the settings (``[clock] time_signature``, and so
the bridge's ``--time-signature`` flag; ``[tokens] time_signatures``), the tokenizer and
the engine protocol (``time_signature: [N, D]``). A signature one of them takes is taken
by all; before, ``--time-signature 4/32`` passed the config and every answer was refused
by the engine.
"""

from __future__ import annotations

import re

MAX_NUMERATOR = 32
# Powers of two down to sixteenth notes: MidiTok's time-signature tokens stop at 16, so no
# vocabulary (and no engine) has a finer denominator.
DENOMINATORS = (1, 2, 4, 8, 16)

TimeSignature = tuple[int, int]

_TEXT = re.compile(r"^\s*(\d{1,6})\s*/\s*(\d{1,6})\s*$")


def _problem(numerator: int, denominator: int) -> str | None:
    if not 1 <= numerator <= MAX_NUMERATOR:
        return f"a time signature's numerator must be within 1 and {MAX_NUMERATOR}"
    if denominator not in DENOMINATORS:
        allowed = ", ".join(str(d) for d in DENOMINATORS[:-1]) + f" or {DENOMINATORS[-1]}"
        return (f"a time signature's denominator must be {allowed}, the note values the "
                "model's vocabulary knows")
    return None


def is_valid_time_signature(numerator: object, denominator: object) -> bool:
    """Whether ``numerator/denominator`` is a signature melodyd takes (ints only, no bools)."""
    if any(isinstance(v, bool) or not isinstance(v, int) for v in (numerator, denominator)):
        return False
    return _problem(numerator, denominator) is None  # type: ignore[arg-type]


def check_time_signature(numerator: int, denominator: int) -> TimeSignature:
    """``(numerator, denominator)`` when melodyd takes it.

    Raises:
        ValueError: not two integers, a numerator outside 1-32 or a denominator other than
            1, 2, 4, 8 or 16; the message shows the signature received.
    """
    if not is_valid_time_signature(numerator, denominator):
        shown = f"{numerator!r}/{denominator!r}"
        if any(isinstance(v, bool) or not isinstance(v, int) for v in (numerator, denominator)):
            raise ValueError(f"a time signature is two integers (received {shown})")
        raise ValueError(f"{_problem(numerator, denominator)} (received {shown!r})")
    return numerator, denominator


def parse_time_signature(text: str) -> TimeSignature:
    """``"6/8"`` -> ``(6, 8)``.

    Raises:
        ValueError: not ``N/D``, or a signature ``check_time_signature`` refuses; the
            message shows the text received.
    """
    match = _TEXT.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"a time signature looks like 4/4 or 6/8 (received {text!r})")
    numerator, denominator = int(match.group(1)), int(match.group(2))
    problem = _problem(numerator, denominator)
    if problem is not None:
        raise ValueError(f"{problem} (received {text!r})")
    return numerator, denominator


def format_time_signature(signature: TimeSignature) -> str:
    """``(6, 8)`` -> ``"6/8"``."""
    return f"{signature[0]}/{signature[1]}"


def bar_length(signature: TimeSignature) -> float:
    """Length of one bar in quarter-note beats (``6/8`` -> 3.0)."""
    return signature[0] * 4.0 / signature[1]
