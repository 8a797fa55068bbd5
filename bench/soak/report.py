"""The soak's report: the table printed at the end, the verdict against the issue's
targets and the JSON file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

STOP_TITLES = {"sigterm": "clean stops SIGTERM", "sigint": "clean stops SIGINT",
               "ctrl-c": "clean stops Ctrl-C (group)", "sigkill": "melodyd SIGKILL",
               "engine-kill": "engine child SIGKILL", "jack-stop": "JACK server stop"}


def table_rows(result: dict) -> list[tuple[str, str]]:
    """(name, value) rows of the final table, part after part."""
    return (_stop_rows(result.get("stops", [])) + _downbeat_rows(result.get("downbeat", []))
            + _fuzz_rows(result.get("fuzz")) + _dataset_rows(result.get("dataset")))


def _stop_rows(stops: list[dict]) -> list[tuple[str, str]]:
    """One row per kill kind and JACK client."""
    rows = []
    for row in stops:
        title = f"{STOP_TITLES[row['kind']]} ({row['client']})"
        n = f"{row['answered']} runs"
        if row["answered"] != row["runs"]:
            n += f" (of {row['runs']}; {row['runs'] - row['answered']} without an answer)"
        stop = (f", stop p50/max {row['stop_s_p50']:.2f}/{row['stop_s_max']:.2f} s"
                if row["stop_s_max"] is not None else "")
        if row["kind"] == "jack-stop":
            value = (f"{n}, exits {row['exit_codes']}, {row['hung']} hung, "
                     f"{row['tracebacks']} tracebacks, {row['children_left']} children left"
                     f"{stop}")
        else:
            value = (f"{n}, {row['stuck_runs']} stuck ({row['stuck_notes']} notes), "
                     f"{row['missing_final_panics']} missing panics, exits "
                     f"{row['exit_codes']}{stop}")
            if row["kind"] == "engine-kill":
                value += (f"; at the loss: {row['stuck_runs_at_loss']} stuck, "
                          f"{row['missing_loss_panics']} missing panics, "
                          f"{row['loss_not_logged']} not logged")
            if row["tracebacks"] or row["children_left"]:
                value += (f"; {row['tracebacks']} tracebacks, {row['children_left']} "
                          "children left")
        if row["not_up"]:
            value += f"; {row['not_up']} did not come up"
        rows.append((title, value))
    return rows


def _downbeat_rows(downbeat: list[dict]) -> list[tuple[str, str]]:
    """One row per case and JACK client (or the reason the part did not run)."""
    rows = []
    for row in downbeat:
        if "case" not in row:
            rows.append(("downbeat", row.get("skipped") or row.get("error", "?")))
            continue
        rows.append((f"downbeat {row['case']} ({row['client']})",
                     f"{row['starts']} starts, {row['misses']} misses ({row['no_request']} "
                     f"no request, {row['engine_errors']} engine errors), "
                     f"{row['seed_short']} short seeds, {row['stuck_after_stop']} stuck "
                     "after Stop"))
    return rows


def _fuzz_rows(fuzz: dict | None) -> list[tuple[str, str]]:
    """Replies to the fuzzed messages, the other client's pings, the engine's cost."""
    if not fuzz:
        return []
    if "error" in fuzz:
        return [("fuzz", fuzz["error"])]
    p = fuzz["ping_ms"]
    rows = [("fuzz", f"{fuzz['messages']} messages, {fuzz['internal']} internal, "
                     f"{fuzz['unanswered']} unanswered, {fuzz['hangs']} hangs, "
                     f"{fuzz['crashes']} crashes, {fuzz['streams_without_done']} "
                     "streams without done"),
            ("fuzz: other client's ping",
             f"p50/p99/max {p['p50']:.1f}/{p['p99']:.1f}/{p['max']:.1f} ms "
             f"(idle p50 {p['idle_p50']:.1f}), {fuzz['pings_over_100ms']} of "
             f"{fuzz['pings']} over 100 ms, {fuzz['pings_lost']} lost")]
    slowest = fuzz["slowest_requests_ms"][0] if fuzz["slowest_requests_ms"] else None
    if slowest:
        rows.append(("fuzz: slowest request", f"{slowest[0]:.0f} ms ({slowest[1]})"))
    rows.append(("fuzz: engine", f"RSS {fuzz['engine_rss_mb']['start']:.0f} -> "
                                 f"{fuzz['engine_rss_mb']['end']:.0f} MB, log +"
                                 f"{fuzz['engine_log_bytes'] / 1024:.0f} KB, "
                                 f"{fuzz['engine_log_tracebacks']} tracebacks"))
    return rows


def _dataset_rows(data: dict | None) -> list[tuple[str, str]]:
    """The hostile folder's build: entries kept and skipped, problems, cost."""
    if not data:
        return []
    rows = []
    if "first_build_failed" in data:
        rows.append(("hostile dataset: first build", f"failed: {data['first_build_failed']}"
                                                     f" (retried without "
                                                     f"{data['retried_without']})"))
    if "error" in data:
        rows.append(("hostile dataset", data["error"]))
    else:
        rows.append(("hostile dataset",
                     f"{data['entries']} entries: {data['kept']} kept, "
                     f"{data['skipped_total']} skipped, {len(data['problems'])} problems "
                     f"(not accounted for / unexpected fate); longest piece "
                     f"{data['longest_piece_tokens']} tokens (limit {data['max_tokens']}), "
                     f"build {data['seconds']:.1f} s, peak RSS {data['peak_rss_mb']} MB"))
        rows += [("hostile dataset: problem", line) for line in data["problems"][:10]]
    return rows


def print_table(result: dict) -> None:
    """The table on stdout, under a line naming the model, tempo, periods and probe."""
    rows = table_rows(result)
    width = max((len(name) for name, _ in rows), default=0)
    print(f"melodyd soak: model {Path(result['model']).name}, {result['bpm']:g} BPM, "
          f"JACK periods {result['periods']}, probe {result['probe']}")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def verdict(result: dict) -> list[str]:
    """The targets missed (empty when every measured part met the issue's targets)."""
    missed = []
    for row in result.get("stops", []):
        if row["failed_runs"]:
            missed.append(f"stops {row['kind']} ({row['client']}): {row['failed_runs']} "
                          "failed runs")
    for row in result.get("downbeat", []):
        if row.get("misses"):
            missed.append(f"downbeat {row['case']} ({row['client']}): {row['misses']} misses")
        if row.get("seed_short"):
            # Answered, but the note on "one" never reached the seed: silently dropped.
            missed.append(f"downbeat {row['case']} ({row['client']}): {row['seed_short']} "
                          "seeds without the downbeat note")
    fuzz = result.get("fuzz") or {}
    for key in ("internal", "unanswered", "hangs", "crashes", "pings_over_100ms"):
        if fuzz.get(key):
            missed.append(f"fuzz: {fuzz[key]} {key}")
    data = result.get("dataset") or {}
    if data.get("error"):
        missed.append(f"dataset: {data['error']}")
    if data.get("first_build_failed"):
        missed.append(f"dataset: the build failed on {data['retried_without']}: "
                      f"{data['first_build_failed']}")
    if data.get("problems"):
        missed.append(f"dataset: {len(data['problems'])} entries not accounted for as expected")
    return missed


def write_json(result: dict[str, Any], path: Path) -> None:
    """The whole result as JSON at ``path`` (its folder made if need be)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {path}")
