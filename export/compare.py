"""The engine benchmark's comparisons that need more than the engine.

``engine/tools/bench.py`` measures the engine alone (torch-free); ``melody bench engine``
(``export/bench_cli.py``) adds these to its run:

- PyTorch eager with its cache, same architecture, random weights (:func:`torch_eager`);
- onnxruntime-genai's own loop on the same weights, run by another Python (:func:`genai`);
- GPTs of other sizes with random weights, written in the engine's format
  (:func:`write_random_model`, ``--size``).

torch, onnx and the exporter are imported inside the functions that need them, so the
command still gives the engine's figures on an install without torch.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from engine.decoder import StyleDecoder
from engine.model import LoadedModel, load_model
from engine.tools.bench import (
    GENAI_MAX_BATCH,
    BenchConfig,
    BenchContext,
    Comparison,
    bench_batched,
    bench_decode,
    bench_model_call,
    random_tokens,
    stats_ms,
    timed,
)
from models.core.settings import EngineSettings


# ----------------------------------------------------------------- PyTorch eager
def torch_eager(enabled: bool = True) -> Comparison:
    """PyTorch eager at every past of the run (``results["torch_eager"]``; ``None`` when
    torch is not installed, left empty when not ``enabled``)."""

    def compare(context: BenchContext) -> None:
        if not enabled:
            return
        try:
            import torch  # noqa: F401, PLC0415 - probe only
        except ImportError:
            context.results["torch_eager"] = None
            return
        for past in context.config.pasts:
            context.note(f"PyTorch eager at past {past}")
            context.results["torch_eager"][past] = bench_torch(
                context.decoder.model, past, context.config.steps,
                context.settings.intra_op_threads)

    return compare


def bench_torch(model: LoadedModel, past: int, steps: int, threads: int) -> dict[str, float]:
    """PyTorch eager, one cached token at ``past``, same architecture, random weights."""
    import torch  # noqa: PLC0415 - only the comparison needs it

    from models.train.checkpoint import build_model  # noqa: PLC0415

    if threads:
        torch.set_num_threads(threads)
    net = build_model(model.card.arch, model.card.model_config).eval()
    spec = model.card.cache
    past_kv = [(torch.randn(1, spec.num_heads, past, spec.head_dim),
                torch.randn(1, spec.num_heads, past, spec.head_dim))
               for _ in range(spec.num_layers)]
    ids = torch.tensor([[5]])
    pos = torch.tensor([[past]])
    mask = torch.ones(1, past + 1, dtype=torch.long)

    def call() -> None:
        with torch.inference_mode():
            net(ids, past_kv, pos, mask)

    return stats_ms(timed(call, steps, warmup=5))


# ----------------------------------------------------------------- other sizes
def parse_size(text: str, head_size: int | None = None) -> tuple[int, int, int]:
    """``LAYERSxWIDTH[hHEAD]`` (e.g. ``8x384`` or ``8x384h48``) -> (layers, width, heads).

    The head size is the ``h`` suffix, else ``head_size`` when given, else 64 where the
    width allows it, else the largest of 48, 32, 16 that divides it (ONNX Runtime's
    GroupQueryAttention wants a multiple of 16).

    Raises:
        ValueError: a malformed size, or a head size that does not divide the width.
    """
    match = re.fullmatch(r"(\d+)x(\d+)(?:h(\d+))?", text.strip().lower())
    if match is None:
        raise ValueError(f"expected a size like 8x384 or 8x384h48 (layers x width, head "
                         f"size), received {text!r}")
    layers, width = int(match[1]), int(match[2])
    if match[3]:
        head_size = int(match[3])
    if layers < 1 or width < 16:
        raise ValueError(f"expected at least 1 layer and width 16, received {text!r}")
    if head_size is None:
        head_size = next((h for h in (64, 48, 32, 16) if width % h == 0), 0)
    if head_size < 16 or head_size % 16 or width % head_size:
        raise ValueError(f"no head size for width {width}: it needs a multiple of 16 that "
                         f"divides the width (received head size {head_size})")
    return layers, width, width // head_size


def write_random_model(like: str | Path, size: str, directory: str | Path, *,
                       head_size: int | None = None, seed: int = 0) -> Path:
    """A GPT of ``size`` with random weights, in the engine's format, beside nothing live.

    Vocabulary, context length and RoPE base come from the model file ``like`` (a shipped
    style), so only the width and depth differ; the graph is the one ``melody export``
    writes (float32 weights: an int8 file is dequantized when it loads, so it costs the
    same per step). No parity check: only the timing of this file is used.

    Raises:
        ValueError: a malformed size.
        EngineError: ``like`` is not a loadable GPT model.
    """
    import onnx  # noqa: PLC0415 - only this comparison needs the exporter's packages
    import torch  # noqa: PLC0415

    from export.gpt_graph import build_gpt_graph  # noqa: PLC0415
    from export.metadata import build_card, set_card  # noqa: PLC0415
    from models.train.checkpoint import model_arch  # noqa: PLC0415
    from models.train.gpt import GPT, GPTConfig  # noqa: PLC0415

    layers, width, heads = parse_size(size, head_size)
    base = load_model(like)
    if base.cache_kind != "kv":
        raise ValueError("a random size needs a GPT model to take its vocabulary from")
    config = base.card.model_config
    torch.manual_seed(seed)
    net = GPT(GPTConfig(vocab_size=base.tokenizer.vocab_size,
                        context_length=base.context_length, n_layer=layers, n_head=heads,
                        n_embd=width, rope_base=config.get("rope_base", 10000.0))).eval()
    label = f"random-{layers}x{width}h{width // heads}"
    state = {"arch": model_arch(net), "model_config": dict(vars(net.config)),
             "tokenizer": base.card.tokenizer, "data": {"source": "random", "hash": None,
                                                         "splits": {}},
             "metrics": {}, "step": 0, "train_config": {"seed": seed}}
    proto = build_gpt_graph(net)
    set_card(proto, build_card(state, style=label))
    path = Path(directory) / f"{label}.onnx"
    onnx.save(proto, str(path))
    return path


# ----------------------------------------------------------------- onnxruntime-genai
# Run by the Python that has onnxruntime-genai (maybe another environment): times genai's
# own loop (``generate_next_token``: the model call, its input updates and greedy search)
# from a random prompt of each length, and decodes a fixed prompt greedily for the check.
_GENAI_CHILD = """
import json, sys, time
import numpy as np
import onnxruntime_genai as og
folder, spec = sys.argv[1], json.loads(sys.argv[2])
model = og.Model(folder)
vocab, rng = spec["vocab"], np.random.default_rng(0)

def generator(rows, prompt):
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=spec["max_length"], do_sample=False, top_k=1,
                              batch_size=rows)
    gen = og.Generator(model, params)
    gen.append_tokens(np.ascontiguousarray(prompt, dtype=np.int32))
    return gen

def timed(rows, past, steps):
    gen = generator(rows, rng.integers(4, vocab, size=(rows, past)))
    for _ in range(3):
        gen.generate_next_token()
    out = []
    for _ in range(steps):
        wall, cpu = time.perf_counter(), time.process_time()
        gen.generate_next_token()
        out.append((time.perf_counter() - wall, time.process_time() - cpu))
    return out

check = generator(1, np.asarray([spec["check_prompt"]]))
for _ in range(spec["check_steps"]):
    check.generate_next_token()
result = {"version": getattr(og, "__version__", "?"),
          "greedy": [int(t) for t in check.get_sequence(0)][len(spec["check_prompt"]):],
          "decode": {p: timed(1, p, spec["steps"]) for p in spec["pasts"]},
          "batched": {n: timed(n, spec["batch_past"], spec["batch_steps"])
                      for n in spec["batches"]}}
print(json.dumps(result))
"""


def genai_available(python: str) -> str | None:
    """None when ``python`` imports onnxruntime_genai, else why it cannot be used."""
    probe = subprocess.run([python, "-c", "import onnxruntime_genai"], capture_output=True,
                           text=True, check=False, timeout=120)
    if probe.returncode:
        last = (probe.stderr.strip().splitlines() or ["import failed"])[-1]
        return f"{python} cannot import onnxruntime_genai ({last})"
    return None


def _greedy_reference(model: LoadedModel, prompt: list[int], steps: int) -> list[int]:
    """Greedy tokens of the engine's model by full passes (no cache shared with genai)."""
    tokens = list(prompt)
    for _ in range(steps):
        tokens.append(int(np.argmax(model.forward(tokens)[-1])))
    return tokens[len(prompt):]


def bench_genai(python: str, config: BenchConfig, settings: EngineSettings,
                decoder: StyleDecoder) -> dict[str, Any]:
    """onnxruntime-genai's decoding loop on the same weights, and a greedy agreement check.

    The folder comes from ``export.genai`` (the same graph with genai's attention-mask
    input); genai runs in a child process of ``python``, so it may live in its own
    environment. Steps at past P run P..P+steps (genai's cache is not reset). The engine
    is timed again right after the child with the same step counts (``engine``), so the
    two sides see the same load on a shared machine.

    Raises:
        RuntimeError: the child fails (its stderr's last lines are in the message).
    """
    import tempfile  # noqa: PLC0415

    from export.genai import write_genai_folder  # noqa: PLC0415 - needs onnx

    model = decoder.model
    steps = min(config.steps, 64)
    prompt = random_tokens(model, 64, seed=7)[0].tolist()
    # genai refuses a batch_size above 32 (its GeneratorParams check).
    batches = [n for n in config.batches if n <= GENAI_MAX_BATCH]
    spec = {"vocab": model.tokenizer.vocab_size, "pasts": list(config.pasts),
            "steps": steps, "batches": batches, "batch_past": config.batch_past,
            "batch_steps": 20, "check_prompt": prompt, "check_steps": 16,
            "max_length": max(model.context_length,
                              max(config.pasts) + steps + 4, config.batch_past + 24)}
    with tempfile.TemporaryDirectory(prefix="melodyd-genai-") as tmp:
        write_genai_folder(model.path, tmp, threads=settings.intra_op_threads,
                           max_length=spec["max_length"])
        child = subprocess.run([python, "-c", _GENAI_CHILD, tmp, json.dumps(spec)],
                               capture_output=True, text=True, check=False, timeout=1800)
    if child.returncode:
        raise RuntimeError("onnxruntime-genai failed: "
                           + " | ".join(child.stderr.strip().splitlines()[-3:]))
    raw = json.loads(child.stdout.strip().splitlines()[-1])
    reference = _greedy_reference(model, prompt, spec["check_steps"])
    engine = {"decode": {p: bench_decode(decoder, p, steps) for p in config.pasts},
              "model_call": {p: bench_model_call(decoder, p, steps) for p in config.pasts},
              "batched": {n: bench_batched(decoder, n, config.batch_past, spec["batch_steps"])
                          for n in batches}}
    return {"version": raw["version"], "python": python,
            "batches_refused": [n for n in config.batches if n > GENAI_MAX_BATCH],
            "greedy_agrees": raw["greedy"] == reference,
            "greedy": raw["greedy"], "greedy_reference": reference, "engine": engine,
            "decode": {int(p): stats_ms(v) for p, v in raw["decode"].items()},
            "batched": {int(n): stats_ms(v) for n, v in raw["batched"].items()}}


def genai(python: str) -> Comparison:
    """onnxruntime-genai on the same weights, run by ``python`` (``results["genai"]``: its
    figures, or ``{"skipped": reason}`` when it cannot run)."""

    def compare(context: BenchContext) -> None:
        context.note("onnxruntime-genai on the same weights")
        reason = genai_available(python)
        try:
            context.results["genai"] = (
                {"skipped": reason} if reason else
                bench_genai(python, context.config, context.settings, context.decoder))
        except (RuntimeError, subprocess.SubprocessError, ValueError) as err:
            context.results["genai"] = {"skipped": str(err)}

    return compare
