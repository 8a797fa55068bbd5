"""The daemon's status line and its per-response log lines."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from typing import TextIO

from models.core.notes import Note
from models.core.pitch_names import pitch_name

logger = logging.getLogger(__name__)


@dataclass
class Response:
    """One generate request and what came of it (for the status line and --verbose).

    Attributes:
        id: the request id.
        trigger_t: wall time the request was sent.
        trigger_beat: beat at that time.
        start_beat: where the response starts.
        bars: its length.
        first_lead_ms: how long before its due time the first note arrived (negative:
            late), or ``None`` before any note.
        latency_ms: trigger to the first note received.
        notes: the notes received.
        done: whether the engine ended the stream.
    """

    id: str
    trigger_t: float
    trigger_beat: float
    start_beat: float
    bars: int
    first_lead_ms: float | None = None
    latency_ms: float | None = None
    notes: list[Note] = field(default_factory=list)
    done: bool = False

    def describe(self, reason: str) -> str:
        """One line for ``--verbose``: trigger, lead time, notes."""
        lead = "no notes" if self.first_lead_ms is None else (
            f"first note {self.latency_ms:.0f} ms after trigger, "
            f"{self.first_lead_ms:.0f} ms ahead of its time")
        notes = " ".join(f"{pitch_name(n.pitch)}@{n.onset:g}" for n in self.notes[:32])
        more = f" (+{len(self.notes) - 32})" if len(self.notes) > 32 else ""
        return (f"response {self.id}: trigger at beat {self.trigger_beat:.2f}, start beat "
                f"{self.start_beat:g}, {self.bars} bar(s), {reason}; {lead}; "
                f"{len(self.notes)} notes: {notes}{more}")


class StatusLine:
    """Rewrites one line on a terminal; elsewhere logs it at debug level (for --verbose)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty()
        self._width = 0

    @property
    def visible(self) -> bool:
        """Whether showing it does anything (a terminal, or debug logging on)."""
        return self._tty or logger.isEnabledFor(logging.DEBUG)

    def show(self, text: str) -> None:
        """Display ``text`` as the current status."""
        if self._tty:
            pad = max(0, self._width - len(text))
            self._stream.write("\r" + text + " " * pad)
            self._stream.flush()
            self._width = len(text)
        else:
            logger.debug("status: %s", text)

    def clear(self) -> None:
        """End the status line so later output starts on a fresh line."""
        if self._tty and self._width:
            self._stream.write("\n")
            self._stream.flush()
            self._width = 0


def format_status(*, bpm: float | None, mode: str, bar: int | None, latency_ms: float | None,
                  sent: int, dropped: int, engine: str, style: str) -> str:
    """The status text: tempo, mode, bar, last response latency, notes sent and dropped."""
    tempo = "waiting for MIDI clock" if bpm is None else f"{bpm:6.1f} BPM"
    where = "-" if bar is None else str(bar + 1)  # musicians count bars from 1
    latency = "-" if latency_ms is None else f"{latency_ms:.0f} ms"
    return (f"{tempo} | {mode} | {style} | bar {where} | latency {latency} | "
            f"sent {sent} dropped {dropped} | engine {engine}")
