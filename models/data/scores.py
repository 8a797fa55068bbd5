"""Score files (MusicXML, kern, ABC) and MIDI files -> role-named MIDI files in the cache.

One *unit* is one source file: a score that music21 parses and writes as MIDI, or a MIDI
file (native, or converted by music21 beforehand) that is only normalized. Either way the
result is a MIDI file whose tracks are named by role (``models.data.roles``). A unit runs in a
worker process with a time limit: music21 takes minutes on some string quartets and could
take forever on a pathological file, and a killed worker is replaced while the others go on.

The units of one collection are journaled as they finish (``journal.jsonl``, one JSON line
per source file, flushed at once), so an interrupted conversion keeps its work and the
next run converts only what is missing (see ``models.data.corpus``).

Torch-free; music21 is imported only inside the workers, and only for score files.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import symusic

from models.core.exceptions import DataError
from models.data.roles import normalize_score
from models.data.score_notes import score_to_symusic

logger = logging.getLogger(__name__)

# Score formats music21 reads; .rntxt (roman-numeral analyses) and Finale files are not music.
SCORE_SUFFIXES = (".mxl", ".xml", ".musicxml", ".krn", ".abc")
JOURNAL_NAME = "journal.jsonl"
# How a parsed score becomes MIDI (``Collection.score_writer``): music21's writer, or
# ``models.data.score_notes`` (one pass over the notes, repeats as notated).
SCORE_WRITER_MUSIC21 = "music21"
SCORE_WRITER_NOTES = "notes"

Unit = dict[str, Any]
Record = dict[str, Any]


def is_score_name(path: str | Path) -> bool:
    """Whether a file name has one of ``SCORE_SUFFIXES``, in any letter case."""
    return Path(path).suffix.lower() in SCORE_SUFFIXES


def stamp(path: Path) -> list[int]:
    """``[size, mtime_ns]`` of a source file (``[-1, -1]`` when it cannot be read).

    A journaled unit whose source changed since is converted again.
    """
    try:
        info = path.stat()
    except OSError:
        return [-1, -1]
    return [info.st_size, info.st_mtime_ns]


# ----------------------------------------------------------------- one unit (in a worker)
def _unshare_time_signatures(score: Any) -> None:
    """Give each measure its own TimeSignature object.

    music21's ABC reader puts one TimeSignature object into several measures when a tune
    alternates meters, and its MIDI writer then fails ("already found in this Stream").
    """
    from music21 import meter, stream  # noqa: PLC0415

    seen: set[int] = set()
    for measure in list(score.recurse().getElementsByClass(stream.Measure)):
        for signature in list(measure.getElementsByClass(meter.TimeSignature)):
            if id(signature) in seen:
                measure.replace(signature, copy.deepcopy(signature))
            else:
                seen.add(id(signature))


def _strip_repeats(score: Any) -> None:
    """Drop repeat barlines and signs, so a score with malformed repeats plays straight."""
    from music21 import bar, repeat, stream  # noqa: PLC0415

    for measure in list(score.recurse().getElementsByClass(stream.Measure)):
        for side in ("leftBarline", "rightBarline"):
            if isinstance(getattr(measure, side), bar.Repeat):
                setattr(measure, side, None)
        for mark in list(measure.getElementsByClass(repeat.RepeatExpression)):
            measure.remove(mark)


def _music21_midi(score: Any, partial: Path) -> bytes:
    """music21's MIDI file of a score (one track per part, named as the part)."""
    from music21 import repeat  # noqa: PLC0415

    _unshare_time_signatures(score)
    try:
        score.write("midi", fp=str(partial))
    except repeat.ExpanderException:
        # Some kern files carry repeat signs music21 cannot expand: play them as notated.
        logger.debug("%s: malformed repeats, written without them", partial)
        _strip_repeats(score)
        score.write("midi", fp=str(partial))
    try:
        return partial.read_bytes()
    finally:
        partial.unlink(missing_ok=True)


def _write_normalized(data: bytes | symusic.Score, target: Path, rule: str,
                      source: str) -> tuple[int, list[str]]:
    """Normalize MIDI bytes (or a score) by role into ``target`` (atomically); notes and
    roles."""
    from models.data.midifile import score_from_bytes  # noqa: PLC0415

    parsed = data if isinstance(data, symusic.Score) else score_from_bytes(data, source)
    score, roles = normalize_score(parsed, rule)
    if not score.tracks:
        raise DataError("no notes")  # not worth a file: the dataset would skip it anyway
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    score.dump_midi(str(partial))
    partial.replace(target)
    return sum(len(t.notes) for t in score.tracks), roles


def _join_voices(opus: Any) -> Any:
    """One score holding the parts of every score of an opus, all starting together."""
    from music21 import stream  # noqa: PLC0415

    joined = stream.Score()
    for score in opus.scores:
        for part in score.parts:
            joined.insert(0, part)
    return joined


def _record(unit: Unit, source: str, midi: str | None, notes: int = 0, *,
            roles: list[str] | None = None, error: str | None = None) -> Record:
    return {"source": source, "midi": midi, "notes": notes, "roles": roles or [],
            "style": unit.get("style"), "origin": unit["kind"], "error": error}


def convert_unit(unit: Unit) -> list[Record]:
    """Convert one source file into role-named MIDI files; never raises on bad input.

    Args:
        unit: ``source`` (its name in the index), ``path`` (the file to read), ``kind``
            (``"score"`` or ``"midi"``), ``out_root`` and ``midi`` (the output path
            relative to it, without suffix), ``rule`` (``models.data.roles``), ``style``,
            ``tunes_per_file`` and ``voices_as_tunes`` (ABC opus files, see
            ``models.data.corpus.Collection``).

    Returns:
        JSON-ready records, one per piece (an ABC opus gives one per tune):
        ``source, midi (relative to out_root, or None), notes, roles, style, origin,
        error``; the first also has ``seconds``, the CPU time of the unit.
    """
    started = time.process_time()
    records = (_convert_midi if unit["kind"] == "midi" else _convert_score)(unit)
    # CPU time, not wall time: what conversion costs on an idle machine, for the docs.
    records[0]["seconds"] = round(time.process_time() - started, 3)
    return records


def _convert_midi(unit: Unit) -> list[Record]:
    target = Path(unit["out_root"]) / f"{unit['midi']}.mid"
    try:
        data = Path(unit["path"]).read_bytes()
        notes, roles = _write_normalized(data, target, unit["rule"], "the file")
    except (OSError, DataError, RuntimeError, ValueError) as err:
        return [_record(unit, unit["source"], None, error=f"midi: {err}"[:300])]
    return [_record(unit, unit["source"], f"{unit['midi']}.mid", notes, roles=roles)]


def _convert_score(unit: Unit) -> list[Record]:
    from music21 import converter, stream  # noqa: PLC0415 - heavy, only in workers

    source, out_root, rel = unit["source"], Path(unit["out_root"]), unit["midi"]
    try:
        parsed = converter.parse(unit["path"])
    except Exception as err:  # music21 raises many types; a bad score is data
        return [_record(unit, source, None, error=f"parse: {type(err).__name__}: {err}"[:300])]
    if isinstance(parsed, stream.Opus) and unit.get("voices_as_tunes"):
        parsed = _join_voices(parsed)
    if isinstance(parsed, stream.Opus):
        scores = list(parsed.scores)
        if unit.get("tunes_per_file") is not None:
            scores = scores[:unit["tunes_per_file"]]
        items = []
        for index, score in enumerate(scores, start=1):
            number = getattr(score.metadata, "number", None) if score.metadata else None
            items.append((f"{source}#{number or index}", score, f"{rel}-{index:04d}.mid"))
    else:
        items = [(source, parsed, f"{rel}.mid")]
    if not items:
        return [_record(unit, source, None, error="parse: no score in the file")]
    records = []
    for name, score, midi in items:
        target = out_root / midi
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if unit.get("score_writer", SCORE_WRITER_MUSIC21) == SCORE_WRITER_NOTES:
                data = score_to_symusic(score)
            else:
                data = _music21_midi(score, target.with_name(target.name + ".m21"))
            notes, roles = _write_normalized(data, target, unit["rule"], name)
            records.append(_record(unit, name, midi, notes, roles=roles))
        except Exception as err:  # same: record it and go on
            records.append(_record(unit, name, None,
                                   error=f"midi: {type(err).__name__}: {err}"[:300]))
    return records


# ----------------------------------------------------------------- workers with a time limit
def _serve(conn: Connection) -> None:
    """Worker loop: convert each unit received, until ``None`` (or the pipe closes)."""
    with contextlib.suppress(EOFError, KeyboardInterrupt):
        while (unit := conn.recv()) is not None:
            try:
                conn.send(convert_unit(unit))
            except Exception as err:  # a library bug must not end the worker
                conn.send([_record(unit, unit["source"], None,
                                   error=f"unexpected {type(err).__name__}: {err}"[:300])])


# A unit's time limit counts the worker's CPU time where Linux shows it (/proc), so that a
# loaded machine does not skip a score an idle one converts; elsewhere the wall clock. A
# unit stuck without using the CPU (a blocking read) still ends after this many limits.
WALL_FACTOR = 4


def _cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of a process, or ``None`` where /proc is missing."""
    try:
        # Fields after the command name (which may hold spaces): utime and stime are 12th
        # and 13th.
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


class _Worker:
    """One worker process, its pipe, and the unit it is busy with (with its time limit)."""

    def __init__(self, context: Any) -> None:
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child,), daemon=True)
        self.process.start()
        child.close()
        self.unit: Unit | None = None
        self.timeout = 0.0
        self.started = 0.0
        self.cpu_start: float | None = None

    def give(self, unit: Unit, timeout: float) -> None:
        self.unit, self.timeout = unit, timeout
        self.started = time.monotonic()
        self.cpu_start = _cpu_seconds(self.process.pid)
        self.conn.send(unit)

    def left(self) -> float:
        """Seconds of its limit the current unit has left (at least that much wall time)."""
        if self.unit is None or self.timeout <= 0:
            return float("inf")
        wall = time.monotonic() - self.started
        cpu = _cpu_seconds(self.process.pid)
        used = wall if cpu is None or self.cpu_start is None else max(
            cpu - self.cpu_start, wall / WALL_FACTOR)
        return self.timeout - used

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.process.kill()
        else:
            with contextlib.suppress(OSError, BrokenPipeError):
                self.conn.send(None)
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


def run_units(units: Iterable[Unit], on_done: Callable[[Unit, list[Record]], None], *,
              jobs: int, timeout: float, progress: bool = True,
              desc: str = "scores -> MIDI") -> None:
    """Convert units in ``jobs`` worker processes, each unit within ``timeout`` seconds.

    ``on_done(unit, records)`` is called in this process as each unit finishes (in no
    particular order). A unit over its time (CPU seconds of its worker on Linux, see
    ``WALL_FACTOR``), or whose worker dies, gets one record with the error and its worker
    is replaced.

    Args:
        units: the units (see ``convert_unit``); the largest should come first.
        on_done: called with each finished unit and its records.
        jobs: worker processes (at least 1).
        timeout: seconds per unit; 0 means no limit.
        progress: show a tqdm bar.
        desc: the bar's label.
    """
    from tqdm import tqdm  # noqa: PLC0415 - CLI-only dependency at import time

    pending = deque(units)
    if not pending:
        return
    # Forked workers start at once and need no importable __main__ (spawn re-runs it);
    # elsewhere fork is unsafe or missing.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    workers = [_Worker(context) for _ in range(max(1, min(jobs, len(pending))))]
    try:
        with tqdm(total=len(pending), unit="file", desc=desc, disable=not progress) as bar:
            while True:
                for worker in workers:
                    if worker.unit is None and pending:
                        worker.give(pending.popleft(), timeout)
                busy = [w for w in workers if w.unit is not None]
                if not busy:
                    break
                left = min(w.left() for w in busy)
                ready = wait([w.conn for w in busy], timeout=None if left == float("inf")
                             else max(0.0, left))
                for index, worker in enumerate(workers):
                    unit = worker.unit
                    if unit is None:
                        continue
                    if worker.conn in ready:
                        try:
                            records = worker.conn.recv()
                        except (EOFError, OSError):
                            worker.process.join(timeout=5)
                            code = worker.process.exitcode
                            if code is not None and code > 0:
                                # Python itself failed in the worker (not one file's
                                # crash): every unit would fail the same way.
                                raise DataError(f"a conversion worker failed (exit {code}); "
                                                f"see the messages above") from None
                            records = [_record(unit, unit["source"], None,
                                               error=f"crash: the worker died (exit {code})")]
                            worker.stop(kill=True)
                            workers[index] = _Worker(context)
                        else:
                            worker.unit = None
                    elif worker.left() <= 0:
                        records = [{**_record(unit, unit["source"], None,
                                              error=f"timeout: more than {timeout:g} s"),
                                    "timeout_s": timeout}]
                        worker.stop(kill=True)
                        workers[index] = _Worker(context)
                    else:
                        continue
                    on_done(unit, records)
                    bar.update()
    finally:
        for worker in workers:
            worker.stop(kill=worker.unit is not None)


# ----------------------------------------------------------------- the journal
class Journal:
    """The finished units of one collection's conversion, one JSON line each.

    The first line is a header (what the conversion depends on); a journal with another
    header belongs to an older conversion and is discarded with its files.
    """

    def __init__(self, folder: Path, header: dict[str, Any]) -> None:
        """A journal in ``folder`` for conversions described by ``header``."""
        self.path = folder / JOURNAL_NAME
        self.header = header

    def load(self) -> dict[str, dict[str, Any]] | None:
        """Entries by source name, ``None`` if there is no journal of this conversion.

        A last line cut short by a kill is ignored (that unit is converted again).
        """
        try:
            text = self.path.read_text()
            if text and not text.endswith("\n"):
                # A kill cut the last line: end it, so the next line starts on its own.
                with open(self.path, "a") as fh:
                    fh.write("\n")
            lines = text.splitlines()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as err:
            logger.warning("ignoring unreadable journal %s: %s", self.path, err)
            return None
        try:
            if not lines or json.loads(lines[0]) != self.header:
                return None
        except json.JSONDecodeError:
            return None
        entries: dict[str, dict[str, Any]] = {}
        for number, line in enumerate(lines[1:], start=1):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                logger.warning("%s: line %d is cut short, its unit is converted again",
                               self.path, number + 1)
                continue
            if isinstance(entry, dict) and isinstance(entry.get("records"), list):
                entries[str(entry.get("source"))] = entry
        return entries

    def start(self) -> None:
        """Begin a fresh journal (only its header)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.header) + "\n")

    def append(self, source: str, source_stamp: list[int], records: list[Record]) -> None:
        """Record a finished unit, durably (a kill right after loses nothing)."""
        line = json.dumps({"source": source, "stamp": source_stamp, "records": records})
        with open(self.path, "a") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def still_valid(entry: dict[str, Any], source_stamp: list[int], out_root: Path,
                timeout: float) -> bool:
    """Whether a journaled unit can be kept: same source, files present, no shorter limit.

    A unit that ran out of time is tried again when the limit has grown since.
    """
    if entry.get("stamp") != source_stamp:
        return False
    for record in entry["records"]:
        if record.get("midi") and not (out_root / record["midi"]).is_file():
            return False
        limit = record.get("timeout_s")
        if limit is not None and (timeout <= 0 or timeout > limit):
            return False
        if str(record.get("error") or "").startswith("crash:"):
            return False  # a killed worker (out of memory?) may fare better next time
    return True
