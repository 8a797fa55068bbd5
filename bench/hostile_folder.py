"""A hostile folder of MIDI files for ``melody data build``, and a check of its accounting.

``make_hostile_folder(root)`` writes a folder where nearly every entry is something a
dataset build must survive: a 224-byte file with huge delta times that spans millions
of bars, times that overflow symusic's 32-bit ticks, a header with 0 ticks per quarter
note, valid files named ``.Midi`` / ``.mId`` / ``.kar`` / ``.rmi``, broken links, link
loops, a FIFO, an empty file, text named ``.mid``... It returns what a build must make of
each entry: kept (``None``) or skipped with a given reason.

``check_build(out, expected, settings)`` compares a built dataset with that: every entry
accounted for with the expected outcome, nothing unexpected, no piece above
``max_tokens``. ``run_hostile_check`` does all of it (build included, timed) and returns
one JSON-ready row, for the soak benchmark.

Run: ``python -m bench.hostile_folder [--keep DIR] [--json PATH] [--jobs N]``; exits 1
when an entry is not accounted for as expected.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from models.core.settings import DataSettings
from models.data.dataset import build_dataset
from models.data.manifest import SPLITS, TokenDataset
from models.data.sources import (
    SKIP_BROKEN_LINK,
    SKIP_DUPLICATE,
    SKIP_EMPTY,
    SKIP_EMPTY_BARS,
    SKIP_LINK_LOOP,
    SKIP_NOT_MIDI,
    SKIP_NOT_MIDI_NAME,
    SKIP_NOT_REGULAR,
    SKIP_PARSE,
    SKIP_TOO_MANY_TOKENS,
)

# ----------------------------------------------------------------- raw MIDI bytes
# Written byte by byte rather than with a MIDI library: the point is to write what
# libraries refuse to write (0 ticks per quarter, times past 2**31 ticks).
_MAX_DELTA = 0x0FFFFFFF  # the largest delta time a MIDI variable-length quantity holds


def _vlq(value: int) -> bytes:
    """A MIDI variable-length quantity (7 bits a byte, high bit = more follows)."""
    if not 0 <= value <= _MAX_DELTA:
        raise ValueError(f"a MIDI delta time must be in 0..{_MAX_DELTA} (received {value})")
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


def smf(events: list[tuple[int, bytes]], division: int = 480) -> bytes:
    """A format-0 Standard MIDI File of ``(delta ticks, event bytes)`` on one track."""
    body = b"".join(_vlq(delta) + event for delta, event in events) + b"\x00\xff\x2f\x00"
    header = b"MThd" + struct.pack(">IHHH", 6, 0, 1, division)
    return header + b"MTrk" + struct.pack(">I", len(body)) + body


def _on(pitch: int, channel: int = 0) -> bytes:
    return bytes([0x90 | channel, pitch, 80])


def _off(pitch: int, channel: int = 0) -> bytes:
    return bytes([0x80 | channel, pitch, 0])


def melody(count: int = 16, *, gap: int = 480, length: int = 240, first: int = 60,
           channel: int = 0, lead: int = 0) -> list[tuple[int, bytes]]:
    """``count`` notes in a row: the first after ``lead`` ticks, then one every ``gap``."""
    events: list[tuple[int, bytes]] = []
    for index in range(count):
        pitch = first + (index * 5) % 12
        events.append((lead if index == 0 else gap - length, _on(pitch, channel)))
        events.append((length, _off(pitch, channel)))
    return events


def _time_signature(numerator: int, denominator_power: int) -> tuple[int, bytes]:
    return 0, bytes([0xFF, 0x58, 0x04, numerator, denominator_power, 24, 8])


def _rmid(data: bytes) -> bytes:
    """``data`` wrapped in a RIFF RMID container, as Windows wrote ``.rmi`` files."""
    chunk = b"data" + struct.pack("<I", len(data)) + data + b"\x00" * (len(data) & 1)
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"RMID" + chunk


def huge_delta_midi() -> bytes:
    """The file of issue 12: 18 notes 0x07000000 ticks apart at 96 ticks per quarter.

    224 bytes that span ~5.5 million bars: MidiTok made 11 million tokens of it (67 s and
    4.2 GB in ``melody data build``) before the build checked the bars a piece spans.
    """
    return smf(melody(18, gap=0x07000000 + 96, length=96, lead=0x07000000), division=96)


# ----------------------------------------------------------------- the folder
def make_hostile_folder(root: str | Path) -> dict[str, str | None]:
    """Write the hostile folder under ``root`` (created) and return what a build must do.

    Returns:
        Each entry's name relative to ``root`` -> ``None`` when the piece must be kept,
        else the skip reason (a ``models.data.sources.SKIP_*`` value) it must be reported with.
        Folders that are walked (``good/``, ``case/``) are not entries themselves.

    Links and the FIFO are left out where the platform has none.
    """
    root = Path(root)
    (root / "good").mkdir(parents=True, exist_ok=True)
    (root / "case").mkdir(exist_ok=True)
    expected: dict[str, str | None] = {}

    def write(name: str, data: bytes, outcome: str | None) -> None:
        (root / name).write_bytes(data)
        expected[name] = outcome

    # Kept: plain pieces, and valid MIDI under every name a MIDI file goes by.
    for index in range(4):
        write(f"good/tune{index + 1}.mid", smf(melody(16, first=55 + 3 * index)), None)
    write("case/Upper.Midi", smf(melody(12, first=62)), None)
    write("case/MIXED.mId", smf(melody(12, first=64)), None)
    write("case/SHOUT.MID", smf(melody(12, first=66)), None)
    lyrics = [(0, b"\xff\x05\x03La "), *melody(12, first=67)]
    write("karaoke.kar", smf(lyrics), None)  # karaoke: a Standard MIDI File with lyrics
    write("wrapped.rmi", _rmid(smf(melody(12, first=69))), None)
    # A time signature whose denominator byte is 8 (2**8, which symusic reads as a
    # denominator of 0): the tokenizer drops the signature and keeps the notes.
    write("odd_meter.mid", smf([_time_signature(3, 8), *melody(12, first=60)]), None)

    # Skipped by what the file holds.
    write("huge_delta.mid", huge_delta_midi(), SKIP_TOO_MANY_TOKENS)
    # Delta times adding up past 2**31 ticks: symusic's int32 times wrap to negative.
    write("overflow.mid", smf(melody(18, gap=_MAX_DELTA, length=480, lead=_MAX_DELTA)),
          SKIP_PARSE)
    # Onsets near 0 but notes lasting 2**28 ticks at 1 tick per quarter: MidiTok's
    # resampling to its own grid (12 ticks a quarter) overflows int32 (an OverflowError
    # inside symusic, which once escaped tokenize_file).
    long_notes = [(0 if i == 0 else 1, _on(50 + i)) for i in range(10)]
    long_notes += [(_MAX_DELTA if i == 0 else 0, _off(50 + i)) for i in range(10)]
    write("resample_overflow.mid", smf(long_notes, division=1), SKIP_PARSE)
    # 0 ticks per quarter note: every beat position would divide by zero.
    write("tpq_zero.mid", smf(melody(12), division=0), SKIP_PARSE)
    # SMPTE time division (-25 frames/s, 40 ticks/frame): not ticks per quarter note.
    write("smpte.mid", smf(melody(12), division=0xE728), SKIP_PARSE)
    write("truncated.mid", smf(melody(12))[:40], SKIP_PARSE)
    # Ten notes a hundred bars apart: few tokens, but 99 empty bars in a row.
    write("sparse.mid", smf(melody(10, gap=100 * 4 * 480)), SKIP_EMPTY_BARS)
    write("drums_only.mid", smf(melody(12, channel=9)), SKIP_EMPTY)
    write("zero.mid", b"", SKIP_EMPTY)
    write("text.mid", b"these are not the notes you are looking for\n", SKIP_NOT_MIDI)
    # Skipped by name or kind, before anything is read.
    write("notes.txt", b"a text file next to the music\n", SKIP_NOT_MIDI_NAME)
    write("no_suffix", smf(melody(12)), SKIP_NOT_MIDI_NAME)
    if hasattr(os, "link"):
        os.link(root / "good/tune2.mid", root / "hardlink.mid")
        expected["hardlink.mid"] = SKIP_DUPLICATE
    if hasattr(os, "symlink"):
        os.symlink("missing.mid", root / "dangling.mid")
        expected["dangling.mid"] = SKIP_BROKEN_LINK
        os.symlink("loop_b.mid", root / "loop_a.mid")
        os.symlink("loop_a.mid", root / "loop_b.mid")
        expected["loop_a.mid"] = expected["loop_b.mid"] = SKIP_LINK_LOOP
        os.symlink(".", root / "circle")  # a folder link back to the folder itself
        expected["circle"] = SKIP_LINK_LOOP
        os.symlink("good/tune1.mid", root / "alias.mid")
        expected["alias.mid"] = SKIP_DUPLICATE
        os.symlink("good", root / "good_again")
        expected["good_again"] = SKIP_DUPLICATE
    if hasattr(os, "mkfifo"):
        os.mkfifo(root / "pipe.mid")  # opening it to read would block the build
        expected["pipe.mid"] = SKIP_NOT_REGULAR
    return expected


# ----------------------------------------------------------------- the check
def check_build(out: str | Path, manifest: dict[str, Any], expected: dict[str, str | None],
                settings: DataSettings) -> dict[str, Any]:
    """Compare a dataset built from the hostile folder with ``expected``.

    Returns:
        ``{"entries", "kept", "skipped" (count by reason), "problems" (one line each:
        an entry missing, in the wrong place, or unexpected; a piece above max_tokens),
        "longest_piece_tokens"}``.
    """
    kept = {name for split in SPLITS for name in manifest["splits"][split]["pieces"]}
    skipped = {entry["file"]: reason for reason, entries in manifest["skipped"].items()
               for entry in entries}
    problems = []
    for name, outcome in sorted(expected.items()):
        got = "kept" if name in kept else skipped.get(name, "not accounted for")
        if got != (outcome or "kept"):
            problems.append(f"{name}: expected {outcome or 'kept'}, got {got}")
    for name in sorted((kept | set(skipped)) - set(expected)):
        problems.append(f"{name}: not an entry of the folder, yet in the manifest")
    longest = 0
    for split in SPLITS:
        data = TokenDataset(out, split)
        lengths = [int(data.offsets[i + 1] - data.offsets[i]) for i in range(len(data))]
        longest = max([longest, *lengths])
    if longest > settings.max_tokens:
        problems.append(f"a piece of {longest} tokens > max_tokens {settings.max_tokens}")
    counts: dict[str, int] = {}
    for reason in skipped.values():
        counts[reason] = counts.get(reason, 0) + 1
    return {"entries": len(expected), "kept": len(kept), "skipped": counts,
            "problems": problems, "longest_piece_tokens": longest}


def _peak_rss_mb() -> float:
    """Peak resident memory of this process and its finished children, in MB (Linux KB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, children) / 1024, 1)


def run_hostile_check(workdir: str | Path, jobs: int = 1) -> dict[str, Any]:
    """Write the hostile folder in ``workdir``, build a dataset of it, check the accounting.

    Returns:
        ``check_build``'s row plus ``build_seconds`` (wall time of ``build_dataset``) and
        ``peak_rss_mb`` (this process's peak so far, its worker processes included).
    """
    workdir = Path(workdir)
    source, out = workdir / "hostile", workdir / "dataset"
    expected = make_hostile_folder(source)
    settings = DataSettings(jobs=jobs)
    started = time.monotonic()
    manifest = build_dataset(str(source), out, settings, progress=False)
    seconds = time.monotonic() - started
    row = check_build(out, manifest, expected, settings)
    row.update(build_seconds=round(seconds, 2), peak_rss_mb=_peak_rss_mb())
    return row


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.hostile_folder``: print the accounting table; 1 on any problem."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", metavar="DIR",
                        help="write the folder and dataset here (default: a temporary folder)")
    parser.add_argument("--json", metavar="PATH", help="also write the result as JSON")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes of the build")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="melodyd-hostile-") as tmp:
        row = run_hostile_check(args.keep or tmp, jobs=args.jobs)
    print(f"hostile folder: {row['entries']} entries, {row['kept']} kept, "
          f"{sum(row['skipped'].values())} skipped, longest piece "
          f"{row['longest_piece_tokens']} tokens, build {row['build_seconds']} s, "
          f"peak RSS {row['peak_rss_mb']} MB")
    for reason, count in sorted(row["skipped"].items()):
        print(f"  {reason:<20}{count:>4}")
    for problem in row["problems"]:
        print(f"  PROBLEM {problem}")
    if args.json:
        Path(args.json).write_text(json.dumps(row, indent=1) + "\n")
    return 1 if row["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
