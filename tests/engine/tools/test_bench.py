"""The engine benchmark runs end to end on a tiny model and reports every number."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from models.cli import main

REPO = Path(__file__).resolve().parents[3]


def test_bench_engine_prints_a_table_and_writes_json(tiny_onnx_model, tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["bench", "engine", "--model", str(tiny_onnx_model), "--steps", "20",
                 "--pasts", "16,64", "--prefills", "32", "--batches", "1,3",
                 "--batch-past", "16", "--no-torch", "--json", str(out)])
    assert code == 0
    table = capsys.readouterr().out
    assert "targets:" in table and "sessions real-time" in table
    results = json.loads(out.read_text())
    assert set(results["decode"]) == {"16", "64"}
    assert results["decode"]["64"]["n"] == 20
    assert results["prefill"]["32"]["p50"] > 0
    assert set(results["batched"]) == {"1", "3"}
    assert results["memory_mib"]["after_load"] >= results["memory_mib"]["before_load"]
    assert {"decode_p99_le_1ms", "recompute_ratio_ge_60", "sessions_ge_20"} <= set(
        results["targets"])


def test_bench_engine_runs_as_a_script(tiny_onnx_model, tmp_path):
    out = tmp_path / "script.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.engine", "--model", str(tiny_onnx_model), "--steps", "5",
         "--pasts", "16", "--prefills", "16", "--batches", "1", "--batch-past", "8",
         "--no-torch", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=240, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "targets:" in result.stdout
    assert json.loads(out.read_text())["decode"]["16"]["n"] == 5
