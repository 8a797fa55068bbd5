"""Piano-roll pictures of notes, with the prime and its continuation told apart.

Matplotlib comes with the ``train`` extra, not the base install, so it is imported only
when a picture is drawn, with the Agg backend (files only, no display needed).

Torch-free.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from models.core.exceptions import ToolError
from models.core.notes import Note
from models.core.pitch_names import pitch_name

logger = logging.getLogger(__name__)

PRIME_COLOUR = "#3b6ea5"         # calm blue: what was given
CONTINUATION_COLOUR = "#e07b24"  # orange: what the model wrote
SPLIT_COLOUR = "#c0392b"
DPI = 100


def _pyplot() -> Any:
    """Matplotlib's pyplot on the file-only Agg backend.

    Raises:
        ToolError: matplotlib is not installed.
    """
    try:
        import matplotlib  # noqa: PLC0415 - optional dependency, imported only when drawing

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError as err:
        raise ToolError("drawing piano rolls needs matplotlib: pip install 'melodyd[train]' "
                        "(or pip install matplotlib)") from err
    return plt


_BLACK_KEYS = frozenset((1, 3, 6, 8, 10))


def _pitch_ticks(low: int, high: int) -> list[int]:
    """Pitches to name on the y axis: denser labels for narrower ranges."""
    span = high - low
    if span <= 18:
        return list(range(low, high + 1))
    if span <= 40:  # the white keys
        return [p for p in range(low, high + 1) if p % 12 not in _BLACK_KEYS]
    if span <= 72:  # C, E and G of every octave
        return [p for p in range(low, high + 1) if p % 12 in (0, 4, 7)]
    return [p for p in range(low, high + 1) if p % 12 == 0]


def draw_piano_roll(notes: Sequence[Note], path: str | Path, *,
                    split_beat: float | None = None, bar_length: float = 4.0,
                    title: str | None = None, width: int = 1200, height: int = 500) -> Path:
    """Draw notes as a piano roll and save it as a PNG of ``width`` x ``height`` pixels.

    Args:
        notes: beat-timed notes; those starting at or after ``split_beat`` are the
            continuation, the others the prime.
        path: the PNG file to write; parent folders are created.
        split_beat: where the continuation starts, or ``None`` to draw all notes alike.
        bar_length: beats per bar, for the bar numbers on the x axis (bar 1 at beat 0).
        title: a line above the picture.
        width: picture width in pixels.
        height: picture height in pixels.

    Raises:
        ToolError: matplotlib is missing, the size is unreasonable, or the file cannot
            be written.
    """
    if not (200 <= width <= 8000 and 150 <= height <= 8000):
        raise ToolError(f"picture size must be within 200x150 and 8000x8000 pixels "
                        f"(received {width}x{height})")
    if bar_length <= 0:
        raise ToolError(f"bar length must be positive (received {bar_length})")
    plt = _pyplot()
    from matplotlib.patches import Patch, Rectangle  # noqa: PLC0415 - optional dependency

    fig, ax = plt.subplots(figsize=(width / DPI, height / DPI), dpi=DPI)
    try:
        end = max((n.end for n in notes), default=bar_length)
        if split_beat is not None:
            end = max(end, split_beat)
        pitches = [n.pitch for n in notes] or [60]
        low, high = min(pitches) - 1, max(pitches) + 1
        for note in notes:
            continuation = split_beat is not None and note.onset >= split_beat - 1e-9
            colour = CONTINUATION_COLOUR if continuation else PRIME_COLOUR
            # Louder notes are drawn more opaque, so accents stay visible.
            alpha = 0.45 + 0.55 * min(note.velocity, 127) / 127
            ax.add_patch(Rectangle((note.onset, note.pitch - 0.4), note.duration, 0.8,
                                   facecolor=colour, edgecolor="black", linewidth=0.4,
                                   alpha=alpha))
        num_bars = max(1, math.ceil(end / bar_length - 1e-9))
        for bar in range(num_bars + 1):
            ax.axvline(bar * bar_length, color="#bbbbbb", linewidth=0.6, zorder=0)
        ax.set_xlim(0, num_bars * bar_length)
        ax.set_ylim(low - 0.5, high + 0.5)
        label_every = max(1, math.ceil(num_bars / 32))  # at most ~32 bar numbers
        bars = range(0, num_bars, label_every)
        ax.set_xticks([(b + 0.5) * bar_length for b in bars], [str(b + 1) for b in bars])
        ax.tick_params(axis="x", length=0)
        ax.set_xlabel(f"bar ({bar_length:g} beats each)")
        ticks = _pitch_ticks(low, high)
        ax.set_yticks(ticks, [pitch_name(p) for p in ticks],
                      fontsize=7 if len(ticks) > 20 else 8)
        ax.set_ylabel("pitch")
        # Black-key rows shaded like a keyboard, and a line under every C: pitches read
        # at a glance even where the axis names only some of them.
        for pitch in range(low, high + 1):
            if pitch % 12 in _BLACK_KEYS:
                ax.axhspan(pitch - 0.5, pitch + 0.5, color="#f3f3f3", zorder=0, linewidth=0)
            elif pitch % 12 == 0:
                ax.axhline(pitch - 0.5, color="#cccccc", linewidth=0.6, zorder=0)
        handles = [Patch(facecolor=PRIME_COLOUR,
                         label="prime" if split_beat is not None else "notes")]
        if split_beat is not None:
            ax.axvline(split_beat, color=SPLIT_COLOUR, linewidth=1.6, linestyle="--")
            handles += [Patch(facecolor=CONTINUATION_COLOUR, label="continuation"),
                        plt.Line2D([], [], color=SPLIT_COLOUR, linestyle="--",
                                   label="continuation starts")]
        # Above the axes, so it never hides notes.
        ax.legend(handles=handles, loc="lower right", bbox_to_anchor=(1.0, 1.0),
                  ncol=len(handles), fontsize=8, frameon=False, borderaxespad=0.2)
        if title:
            ax.set_title(title, fontsize=10, loc="left")
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI, format="png")
    except OSError as err:
        raise ToolError(f"cannot write piano roll {path}: {err}") from err
    finally:
        plt.close(fig)
    logger.info("piano roll written to %s", path)
    return path
