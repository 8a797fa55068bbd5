"""The engine benchmark (engine.tools.bench) measures a tiny model on the engine alone."""

from __future__ import annotations

import json

import pytest

from engine.tools.bench import (
    BenchConfig,
    BenchContext,
    format_table,
    run_benchmark,
    write_json,
)

SMALL = BenchConfig(pasts=(16, 64), prefills=(32,), batches=(1, 3), batch_past=16, steps=20)


@pytest.fixture(scope="module")
def results(tiny_onnx_model):
    seen: list[BenchContext] = []

    def compare(context: BenchContext) -> None:
        seen.append(context)
        context.results["compared"] = sorted(context.results["decode"])

    out = run_benchmark(tiny_onnx_model, config=SMALL, comparisons=[compare])
    assert len(seen) == 1 and seen[0].decoder.model.style == out["style"]
    return out


def test_the_benchmark_reports_every_engine_figure(results):
    assert set(results["decode"]) == {16, 64}
    assert results["decode"][64]["n"] == 20
    assert set(results["model_call"]) == set(results["recompute"]) == {16, 64}
    assert results["prefill"][32]["p50"] > 0
    assert set(results["batched"]) == {1, 3}
    # Resident memory is reported at each stage (the process may give pages back between
    # two readings, so the figures need not grow).
    memory = results["memory_mib"]
    assert all(memory[stage] > 0 for stage in ("before_load", "after_load", "after_warmup"))
    assert {"decode_p99_le_1ms", "recompute_ratio_ge_60", "sessions_ge_20"} <= set(
        results["targets"])
    # Without a PyTorch comparison its column stays empty and has no target.
    assert results["torch_eager"] == {}
    assert not any(name.startswith("torch_") for name in results["targets"])


def test_a_comparison_runs_after_the_engine_figures(results):
    assert results["compared"] == [16, 64]


def test_the_table_and_the_json(results, tmp_path):
    table = format_table(results)
    assert "targets:" in table and "sessions real-time" in table
    written = json.loads(write_json(results, tmp_path / "b.json").read_text())
    assert set(written["decode"]) == {"16", "64"}
