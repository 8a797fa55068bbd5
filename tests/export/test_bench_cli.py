"""``melody bench engine`` (export.bench_cli): the engine's figures with or without torch,
the PyTorch and ``--size`` comparisons with it, and the checkout's ``bench/engine.py``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from export import bench_cli

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
QUICK = ["--steps", "5", "--pasts", "16", "--prefills", "16", "--batches", "1",
         "--batch-past", "8"]


def test_melody_bench_is_this_module():
    # The dispatcher finds commands through the installed entry points: this line is what
    # `pip install -e .` turns into them.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["entry-points"]["melody.commands"]["bench"] == "export.bench_cli"


def test_bench_engine_prints_a_table_and_writes_json(tiny_onnx_model, tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = bench_cli.main(["--model", str(tiny_onnx_model), "--steps", "20", "--pasts",
                           "16,64", "--prefills", "32", "--batches", "1,3", "--batch-past",
                           "16", "--no-torch", "--json", str(out)])
    assert code == 0
    table = capsys.readouterr().out
    assert "targets:" in table and "sessions real-time" in table
    results = json.loads(out.read_text())
    assert set(results["decode"]) == {"16", "64"}
    assert results["decode"]["64"]["n"] == 20
    assert results["prefill"]["32"]["p50"] > 0
    assert set(results["batched"]) == {"1", "3"}
    assert results["torch_eager"] == {}


def _run(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *(["-c", code] if code else []), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=240, check=False)


# A torch-free install: importing torch or onnx fails, as where they are not installed.
WITHOUT_TORCH = ("import sys; sys.modules['torch'] = None; sys.modules['onnx'] = None; "
                 "from export.bench_cli import main; sys.exit(main(sys.argv[1:]))")


def test_without_torch_the_engine_figures_still_come(tiny_onnx_model, tmp_path):
    out = tmp_path / "free.json"
    result = _run(WITHOUT_TORCH, "--model", str(tiny_onnx_model), *QUICK, "--json", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "targets:" in result.stdout
    results = json.loads(out.read_text())
    assert results["decode"]["16"]["n"] == 5
    assert results["torch_eager"] is None  # asked for, not installed


def test_without_torch_size_says_what_it_needs(tiny_onnx_model, tmp_path):
    result = _run(WITHOUT_TORCH, "--model", str(tiny_onnx_model), *QUICK, "--size", "1x32",
                  "--json", str(tmp_path / "x.json"))
    assert result.returncode == 2
    assert "error: --size builds models with the exporter, which needs torch" in result.stderr
    assert "Traceback" not in result.stderr


def test_bench_engine_runs_as_a_script(tiny_onnx_model, tmp_path):
    out = tmp_path / "script.json"
    result = _run("", "-m", "bench.engine", "--model", str(tiny_onnx_model), *QUICK,
                  "--no-torch", "--json", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "targets:" in result.stdout
    assert json.loads(out.read_text())["decode"]["16"]["n"] == 5


@pytest.mark.torch
def test_pytorch_and_random_sizes_are_compared(tiny_onnx_model, tmp_path, capsys):
    pytest.importorskip("torch", reason="the comparisons need torch (the train extra)")
    pytest.importorskip("onnx", reason="--size writes models with onnx (the train extra)")
    out = tmp_path / "sizes.json"
    code = bench_cli.main(["--model", str(tiny_onnx_model), *QUICK, "--size", "1x32h16",
                           "--json", str(out)])
    assert code == 0
    assert "per-step cost by model size" in capsys.readouterr().out
    run = json.loads(out.read_text())["sizes"]["1x32h16"]
    assert run["style"] == "random-1x32h16"
    assert run["torch_eager"]["16"]["n"] == 5
    assert {"torch_ratio_ge_3", "torch_cpu_ratio_ge_2"} <= set(run["targets"])
