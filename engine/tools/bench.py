"""Engine benchmark: cached decode latency, prefill, recompute ratio, batching, memory.

Run with ``melody bench engine --model M.onnx`` (the command is ``export/bench_cli.py``;
``python -m bench.engine`` takes the same flags).
Everything is measured on the engine's own code path (``StyleDecoder.step``: the ONNX
call, the grammar mask, sampling and the streaming detokenizer), so the numbers are what
a jam gets. Caches are filled with random keys/values of the wanted length: timing does
not depend on their content.

This module needs only the engine. The comparisons that need more (PyTorch eager,
onnxruntime-genai, random models of other sizes) are ``export/compare.py``; they run
inside :func:`run_benchmark` as ``comparisons`` and add their own entries to the results.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.decoder import StyleDecoder
from engine.generation import Generation
from engine.model import LoadedModel, load_model
from models.core.notes import Note
from models.core.protocol.messages import GenerateRequest, SamplingParams
from models.core.settings import EngineSettings

logger = logging.getLogger(__name__)

# Steps between two resets of a cache to its nominal length ("decode at past P" means
# past P to P + _RESET - 1).
_RESET = 16
# Decoder -> the pool generation whose rows hold random keys/values already.
_FILLED: dict[int, int] = {}
# onnxruntime-genai refuses a batch_size above this (its GeneratorParams check); the table
# says which batches it was not asked to run.
GENAI_MAX_BATCH = 32


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """What to measure.

    Attributes:
        pasts: cache lengths of the per-token decode latency.
        prefills: prompt lengths of the prefill timing.
        batches: session counts of the batched step timing.
        batch_past: cache length of each session in the batched timing.
        steps: timed decode steps per measurement.
        realtime_rate: tokens per second a session needs to keep up with playback.
    """

    pasts: tuple[int, ...] = (64, 256, 512, 1000)
    prefills: tuple[int, ...] = (256, 512)
    batches: tuple[int, ...] = (1, 8, 20, 32, 64)
    batch_past: int = 256
    steps: int = 200
    realtime_rate: float = 40.0


@dataclasses.dataclass
class BenchContext:
    """What a comparison run inside :func:`run_benchmark` gets.

    Attributes:
        decoder: the engine's decoder of the benchmarked model (already warm).
        settings: the ``[engine]`` settings it runs with.
        config: what to measure.
        results: the results so far; a comparison adds its own entries.
        note: reports progress (``"measuring X"``).
    """

    decoder: StyleDecoder
    settings: EngineSettings
    config: BenchConfig
    results: dict[str, Any]
    note: Callable[[str], None]


# Runs after the engine's own figures and before the targets (which read what it adds).
Comparison = Callable[[BenchContext], None]


def rss_mib() -> float:
    """Resident memory of this process in MiB (Linux ``/proc``; 0 where unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def stats_ms(samples: Sequence[tuple[float, float]]) -> dict[str, float]:
    """p50, p99 and mean of ``(wall, cpu)`` durations in seconds, as milliseconds.

    The CPU time (``cpu_*``) is this process's own work: on a shared machine the wall
    time also holds the time other processes had the cores.
    """
    wall = np.asarray([w for w, _ in samples], dtype=np.float64) * 1e3
    cpu = np.asarray([c for _, c in samples], dtype=np.float64) * 1e3
    return {"p50": float(np.percentile(wall, 50)), "p99": float(np.percentile(wall, 99)),
            "mean": float(wall.mean()), "cpu_p50": float(np.percentile(cpu, 50)),
            "cpu_p99": float(np.percentile(cpu, 99)), "cpu_mean": float(cpu.mean()),
            "n": len(wall)}


class _Clock:
    """Wall and process CPU time of one timed section."""

    def __enter__(self) -> _Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sample = (time.perf_counter() - self.wall, time.process_time() - self.cpu)


def timed(fn: Callable[[], Any], reps: int, warmup: int = 3) -> list[tuple[float, float]]:
    """``(wall, cpu)`` seconds of ``reps`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(reps):
        with _Clock() as clock:
            fn()
        samples.append(clock.sample)
    return samples


def random_tokens(model: LoadedModel, count: int, seed: int = 0) -> np.ndarray:
    """``[1, count]`` random tokens of the model's vocabulary (past the special ones)."""
    rng = np.random.default_rng(seed)
    return rng.integers(4, model.tokenizer.vocab_size, size=(1, count), dtype=np.int64)


def _fill_random(decoder: StyleDecoder, seed: int = 0) -> None:
    """Random keys/values in every row of the decoder's pool (timing ignores content)."""
    rng = np.random.default_rng(seed)
    for buffer in decoder.pool.buffers:
        buffer[...] = rng.standard_normal(buffer.shape, dtype=np.float32)


def _generation(decoder: StyleDecoder, key: str) -> Generation:
    """A running generation that never ends by itself (a huge bar count)."""
    seed = tuple(Note(0.5 * i, 0.5, 60 + (i * 7) % 12, 80) for i in range(8))
    request = GenerateRequest(seed=seed, start_beat=4.0, bars=100_000,
                              sampling=SamplingParams(seed=1, temperature=1.0, top_p=0.95))
    return decoder.start(key, request)


def _set_past(decoder: StyleDecoder, gens: Sequence[Generation], past: int) -> None:
    """Give each generation a cache of length ``past`` (outside any timing)."""
    for gen in gens:
        decoder.seek(gen, past)


def _step_times(decoder: StyleDecoder, gens: list[Generation], past: int,
                steps: int) -> list[tuple[float, float]]:
    samples: list[tuple[float, float]] = []
    for _ in range(3):  # warm-up: first calls allocate ONNX Runtime's buffers
        decoder.step(gens)
    if _FILLED.get(id(decoder)) != decoder.pool.generation:  # new rows since the last fill
        _fill_random(decoder)
        _FILLED[id(decoder)] = decoder.pool.generation
    while len(samples) < steps:
        _set_past(decoder, gens, past)
        for _ in range(min(_RESET, steps - len(samples))):
            with _Clock() as clock:
                decoder.step(gens)
            samples.append(clock.sample)
    return samples


def bench_decode(decoder: StyleDecoder, past: int, steps: int) -> dict[str, float]:
    """Latency of one engine step of one session at cache length ``past``."""
    gen = _generation(decoder, f"decode{past}")
    result = stats_ms(_step_times(decoder, [gen], past, steps))
    decoder.cancel(gen)
    return result


def bench_model_call(decoder: StyleDecoder, past: int, steps: int) -> dict[str, float]:
    """The bare ONNX call of one cached token (no grammar, no sampling), in place."""
    gen = _generation(decoder, f"call{past}")
    _set_past(decoder, [gen], past)
    call = decoder.bind_row(gen, [5], past)
    result = stats_ms(timed(call.run, steps))
    decoder.cancel(gen)
    return result


def bench_recompute(decoder: StyleDecoder, past: int, reps: int) -> dict[str, float]:
    """The same next token computed without a cache: the whole ``past + 1`` tokens."""
    ids = random_tokens(decoder.model, past + 1)[0].tolist()
    gen = _generation(decoder, f"recompute{past}")
    result = stats_ms(timed(lambda: decoder.prefill(gen, ids, 0), reps, 1))
    decoder.cancel(gen)
    return result


def bench_prefill(decoder: StyleDecoder, length: int, reps: int) -> dict[str, float]:
    """Prefilling ``length`` prompt tokens into an empty cache."""
    return bench_recompute(decoder, length - 1, reps)


def bench_batched(decoder: StyleDecoder, sessions: int, past: int,
                  steps: int) -> dict[str, float]:
    """One batched step of ``sessions`` generations, each at cache length ``past``."""
    gens = [_generation(decoder, f"batch{sessions}-{i}") for i in range(sessions)]
    result = stats_ms(_step_times(decoder, gens, past, steps))
    for gen in gens:
        decoder.cancel(gen)
    for gen in gens:
        decoder.drop_session(gen.session_key)
    return result


def run_benchmark(path: str | Path, settings: EngineSettings | None = None,
                  config: BenchConfig | None = None,
                  progress: Callable[[str], None] | None = None,
                  comparisons: Sequence[Comparison] = ()) -> dict[str, Any]:
    """Measure everything and return a JSON-ready dict.

    Each of ``comparisons`` (``export.compare``: PyTorch eager, onnxruntime-genai) runs
    after the engine's own figures and adds its entries (``torch_eager`` stays empty
    without one).

    Raises:
        EngineError: the model cannot be loaded or run.
    """
    settings = settings or EngineSettings()
    config = config or BenchConfig()
    note = progress or (lambda _: None)
    before = rss_mib()
    model = load_model(path, settings)
    loaded = rss_mib()
    decoder = StyleDecoder(model, settings, allow_eos=False)
    if model.cache_kind != "kv":
        raise ValueError("the engine benchmark measures KV-cache (gpt) models")
    note("warm-up")
    bench_decode(decoder, 64, 20)
    warm = rss_mib()
    results: dict[str, Any] = {
        "model": str(path), "style": model.style, "arch": model.card.arch,
        "model_config": model.card.model_config,
        "parameters": gpt_parameters(model.card.model_config),
        "context_length": model.context_length,
        "file_mib": Path(path).stat().st_size / 2**20, "providers": model.providers,
        "threads": {"intra_op": settings.intra_op_threads,
                    "inter_op": settings.inter_op_threads},
        "machine": {"cpus": os.cpu_count(), "load_avg_at_start": list(os.getloadavg()),
                    "python": platform.python_version(), "platform": platform.platform()},
        "memory_mib": {"before_load": before, "after_load": loaded, "after_warmup": warm,
                       "model_resident": warm - before},
        "decode": {}, "model_call": {}, "recompute": {}, "torch_eager": {}, "prefill": {},
        "batched": {},
    }
    for past in config.pasts:
        note(f"decode at past {past}")
        results["decode"][past] = bench_decode(decoder, past, config.steps)
        results["model_call"][past] = bench_model_call(decoder, past, config.steps)
        results["recompute"][past] = bench_recompute(decoder, past, max(5, config.steps // 20))
    for length in config.prefills:
        note(f"prefill {length}")
        results["prefill"][length] = bench_prefill(decoder, length, max(5, config.steps // 20))
    for sessions in config.batches:
        note(f"{sessions} sessions batched")
        results["batched"][sessions] = bench_batched(decoder, sessions, config.batch_past,
                                                     max(30, config.steps // 4))
    context = BenchContext(decoder, settings, config, results, note)
    for compare in comparisons:
        compare(context)
    results["realtime"] = realtime_sessions(results["batched"], config.realtime_rate)
    results["realtime"]["past"] = config.batch_past
    results["targets"] = targets(results)
    results["load_avg_at_end"] = list(os.getloadavg())
    return results


def gpt_parameters(config: dict[str, Any]) -> int:
    """Weights of a GPT of this config (blocks, tied embedding, final LayerNorm)."""
    width, layers = int(config["n_embd"]), int(config["n_layer"])
    return layers * (12 * width * width + 13 * width) + int(config["vocab_size"]) * width \
        + 2 * width


def realtime_sessions(batched: dict[int, dict[str, float]], rate: float) -> dict[str, Any]:
    """How many sessions one batched step keeps at ``rate`` tokens per second each.

    Measured counts are checked directly; between and beyond them, the step time is
    fitted as a line in the session count (fixed call cost + per-session cost).
    """
    budget_ms = 1e3 / rate
    counts = sorted(batched)
    out: dict[str, Any] = {"rate": rate, "budget_ms": budget_ms}
    for name, key in (("", "mean"), ("cpu_", "cpu_mean")):
        measured = [n for n in counts if batched[n][key] <= budget_ms]
        estimate = max(measured, default=0)
        if len(counts) >= 2:
            slope, intercept = np.polyfit(counts, [batched[n][key] for n in counts], 1)
            if slope > 0:
                estimate = max(estimate, int((budget_ms - intercept) / slope))
        out[f"{name}measured_max"] = max(measured, default=0)
        out[f"{name}estimated_max"] = estimate
    return out


def targets(results: dict[str, Any]) -> dict[str, Any]:
    """The issues' targets and whether this run met them.

    Issue 14 (the in-place cache): step p50 at the farthest past <= 1.5x step p50 at the
    nearest, step p99 <= 1 ms at the farthest past, >= 100x full recompute, >= 3x PyTorch
    eager, >= 64 sessions real-time in a measured batch. The older, looser targets
    (60x recompute, 2x PyTorch, 20 sessions) are kept so earlier runs stay comparable.
    Each ratio is also given by CPU time, which other processes on a shared machine
    disturb less than wall time.
    """
    out: dict[str, Any] = {}
    decode = results["decode"]
    far, near = max(decode), min(decode)
    out["decode_p99_le_1ms"] = {"past": far, "value_ms": decode[far]["p99"],
                                "met": decode[far]["p99"] <= 1.0}
    out["decode_cpu_p99_le_1ms"] = {"past": far, "value_ms": decode[far]["cpu_p99"],
                                    "met": decode[far]["cpu_p99"] <= 1.0}
    for name, key in (("", "p50"), ("cpu_", "cpu_p50")):
        ratio = decode[far][key] / decode[near][key]
        out[f"flat_{name}p50_far_vs_near_le_1.5"] = {"past": [near, far], "value": ratio,
                                                     "met": ratio <= 1.5}
    for name, key in (("", "p50"), ("cpu_", "cpu_p50")):
        ratio = results["recompute"][far][key] / decode[far][key]
        out[f"recompute_{name}ratio_ge_100"] = {"past": far, "value": ratio,
                                                "met": ratio >= 100}
        out[f"recompute_{name}ratio_ge_60"] = {"past": far, "value": ratio, "met": ratio >= 60}
        if results.get("torch_eager"):
            ratio = results["torch_eager"][far][key] / decode[far][key]
            out[f"torch_{name}ratio_ge_3"] = {"past": far, "value": ratio, "met": ratio >= 3}
            out[f"torch_{name}ratio_ge_2"] = {"past": far, "value": ratio, "met": ratio >= 2}
    # Met only by a measured batch (the default batches include 64), never by the fitted
    # line alone. The mean step time is the right statistic here: notes stream ahead of
    # playback, so a slow step is absorbed as long as the average keeps the rate.
    realtime = results["realtime"]
    for goal in (64, 20):
        out[f"sessions_ge_{goal}"] = {"value": realtime["measured_max"],
                                      "cpu_value": realtime["cpu_measured_max"],
                                      "estimated_max": realtime["estimated_max"],
                                      "met": realtime["measured_max"] >= goal}
    out["resident_mib_per_model"] = results["memory_mib"]["model_resident"]
    return out


def format_table(results: dict[str, Any]) -> str:
    """A plain-text table of the results."""
    config = results["model_config"]
    lines = [f"engine benchmark: {results['style']} ({results['arch']}, "
             f"{config.get('n_layer')} layers x {config.get('n_embd')}, "
             f"{config.get('n_head')} heads of {config['n_embd'] // config['n_head']}, "
             f"{results.get('parameters', 0) / 1e6:.2f} M weights, "
             f"context {results['context_length']}), "
             f"threads {results['threads']['intra_op']}/{results['threads']['inter_op']}, "
             f"load avg {results['machine']['load_avg_at_start'][0]:.1f}",
             "",
             "times are wall clock (cpu: this process's CPU time, which excludes waiting "
             "for cores other processes hold)",
             f"{'past':>6} {'step p50':>9} {'step p99':>9} {'cpu p50':>9} {'cpu p99':>9} "
             f"{'onnx p50':>9} {'recompute':>10} {'x':>6} {'torch p50':>10} {'x':>6}"]
    for past, step in results["decode"].items():
        call = results["model_call"][past]
        full = results["recompute"][past]
        eager = (results.get("torch_eager") or {}).get(past)
        torch_cells = (f"{eager['p50']:>8.3f}ms {eager['p50'] / step['p50']:>5.1f}x"
                       if eager else f"{'-':>10} {'-':>6}")
        lines.append(f"{past:>6} {step['p50']:>7.3f}ms {step['p99']:>7.3f}ms "
                     f"{step['cpu_p50']:>7.3f}ms {step['cpu_p99']:>7.3f}ms "
                     f"{call['p50']:>7.3f}ms {full['p50']:>8.2f}ms "
                     f"{full['p50'] / step['p50']:>5.1f}x {torch_cells}")
    lines.append("")
    for length, value in results["prefill"].items():
        lines.append(f"prefill {length:>4} tokens: p50 {value['p50']:.2f} ms "
                     f"({length / value['p50'] * 1e3:,.0f} tokens/s)")
    lines.append("")
    lines.append(f"batched step (each session at past {results['realtime']['past']}):")
    for sessions, value in results["batched"].items():
        per_session = sessions / value["mean"] * 1e3 / sessions
        lines.append(f"  {sessions:>3} sessions: mean {value['mean']:.2f} ms "
                     f"(cpu {value['cpu_mean']:.2f}), p99 {value['p99']:.2f} ms -> "
                     f"{per_session:,.0f} tokens/s per session")
    realtime = results["realtime"]
    lines.append(f"sessions real-time at {realtime['rate']:.0f} tokens/s: measured >= "
                 f"{realtime['measured_max']}, estimated {realtime['estimated_max']} "
                 f"(by cpu time: {realtime['cpu_measured_max']}, "
                 f"{realtime['cpu_estimated_max']})")
    memory = results["memory_mib"]
    lines.append(f"resident memory: {memory['before_load']:.0f} MiB before load, "
                 f"{memory['after_load']:.0f} after load, {memory['after_warmup']:.0f} after "
                 f"warm-up: {memory['model_resident']:.0f} MiB for this model "
                 f"(file {results['file_mib']:.1f} MiB)")
    genai = results.get("genai")
    if genai:
        lines.append("")
        if "skipped" in genai:
            lines.append(f"onnxruntime-genai: not run ({genai['skipped']})")
        else:
            lines.append(f"onnxruntime-genai {genai['version']} on the same weights "
                         f"(greedy tokens {'agree' if genai['greedy_agrees'] else 'DIFFER'} "
                         f"with the engine's model): its generate_next_token (call + greedy "
                         f"pick) vs this engine's step (call + grammar + sampling + notes) and "
                         f"bare call, timed right after it (wall / cpu p50, ms)")
            for past, value in genai["decode"].items():
                ours = genai["engine"]["decode"][past]
                call = genai["engine"]["model_call"][past]
                lines.append(f"  past {past:>5}: genai {value['p50']:.3f} / "
                             f"{value['cpu_p50']:.3f}   engine step {ours['p50']:.3f} / "
                             f"{ours['cpu_p50']:.3f}   engine call {call['p50']:.3f} / "
                             f"{call['cpu_p50']:.3f}")
            for sessions, value in genai["batched"].items():
                ours = genai["engine"]["batched"].get(sessions)
                mine = f"{ours['mean']:.2f} / {ours['cpu_mean']:.2f}" if ours else "-"
                lines.append(f"  {sessions:>3} rows at past {results['realtime']['past']}: "
                             f"genai mean {value['mean']:.2f} / {value['cpu_mean']:.2f}   "
                             f"engine {mine}")
            if genai.get("batches_refused"):
                lines.append(f"  not run in genai: batches {genai['batches_refused']} (it "
                             f"refuses batch_size above {GENAI_MAX_BATCH})")
    lines.append("")
    lines.append("targets:")
    for name, value in results["targets"].items():
        if isinstance(value, dict):
            if "cpu_value" in value:
                lines.append(f"  {name:<32} {value['value']:>9d}  "
                             f"{'met' if value['met'] else 'NOT met'} (by cpu time: "
                             f"{value['cpu_value']})")
                continue
            shown = value.get("value_ms", value.get("value"))
            lines.append(f"  {name:<32} {shown:>9.3f}  {'met' if value['met'] else 'NOT met'}")
        else:
            lines.append(f"  {name:<32} {value:>9.1f}")
    return "\n".join(lines)


def format_sizes(runs: dict[str, dict[str, Any]]) -> str:
    """One line per model size: step p50 (wall / cpu) per past and the batched step means."""
    first = next(iter(runs.values()))
    pasts, batches = list(first["decode"]), list(first["batched"])
    lines = ["per-step cost by model size (ms, wall / cpu; batched: mean per step, "
             f"each session at past {first['realtime']['past']})",
             f"{'size':>12} {'weights':>8} " + " ".join(f"{'past ' + str(p):>13}" for p in pasts)
             + " " + " ".join(f"{'x' + str(b):>13}" for b in batches) + f" {'real-time':>9}"]
    for size, res in runs.items():
        cells = [f"{res['decode'][p]['p50']:>6.3f}/{res['decode'][p]['cpu_p50']:<6.3f}"
                 for p in pasts]
        cells += [f"{res['batched'][b]['mean']:>6.2f}/{res['batched'][b]['cpu_mean']:<6.2f}"
                  for b in batches]
        lines.append(f"{size:>12} {res.get('parameters', 0) / 1e6:>7.2f}M " + " ".join(cells)
                     + f" {res['realtime']['measured_max']:>9}")
    return "\n".join(lines)


def write_json(results: dict[str, Any], path: str | Path) -> Path:
    """Write the results as JSON (dict keys become strings)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=float) + "\n")
    return path
