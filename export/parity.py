"""Prove an export: ONNX Runtime and PyTorch agree on every output, step after step.

Each case runs a prefill of random length (from an empty cache) and then single-token
decode steps, feeding each side its own cache back, so errors that accumulate in the
cache show up.

Key/value graphs: a batched case gives every row its own history length and its own
absolute positions (rows start at random positions, as after the engine slid a window),
prefills all rows in one right-padded call, decodes them together (one step leaves a row
idle) and compares every row with the PyTorch model run on that row alone, through its
own forward and concatenating cache: logits at each valid position and the row's part of
every present buffer. Recurrent models have no per-row length, so their batched rows
share one length and are compared through the traced wrapper.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from export.runtime import OnnxLM, TorchLM, right_pad
from models.core.exceptions import ExportError
from models.core.model_card import LOGITS

logger = logging.getLogger(__name__)

DEFAULT_ATOL = 1e-4
MIN_DECODE_STEPS = 16


@dataclasses.dataclass
class ParityReport:
    """Largest absolute difference of each output over every case and step.

    Attributes:
        max_diff: output name -> largest |onnx - torch| seen (``inf`` for NaN, Inf or a
            shape mismatch).
        atol: the tolerance the check used.
        cases: a line per case run, e.g. ``"batch 3: prefill 17 + 16 steps"``.
    """

    max_diff: dict[str, float] = dataclasses.field(default_factory=dict)
    atol: float = DEFAULT_ATOL
    cases: list[str] = dataclasses.field(default_factory=list)

    @property
    def largest(self) -> float:
        """The largest difference over all outputs."""
        return max(self.max_diff.values(), default=0.0)

    @property
    def failures(self) -> dict[str, float]:
        """Outputs whose largest difference exceeds the tolerance, worst first."""
        bad = {k: v for k, v in self.max_diff.items() if not v <= self.atol}
        return dict(sorted(bad.items(), key=lambda kv: -kv[1]))

    @property
    def ok(self) -> bool:
        """Whether every output agreed within the tolerance."""
        return not self.failures

    def record(self, onnx_out: dict[str, np.ndarray], torch_out: dict[str, np.ndarray]) -> None:
        """Fold one call's outputs into the running maxima."""
        for name, expected in torch_out.items():
            got = onnx_out.get(name)
            if got is None or got.shape != expected.shape:
                diff = float("inf")
            else:
                diff = float(np.max(np.abs(got.astype(np.float64) - expected), initial=0.0))
                if not np.isfinite(diff):
                    diff = float("inf")
            self.max_diff[name] = max(self.max_diff.get(name, 0.0), diff)

    def summary(self) -> str:
        """One line: the largest difference and where it was."""
        if not self.max_diff:
            return "no outputs compared"
        worst = max(self.max_diff, key=self.max_diff.__getitem__)
        return (f"max |onnx - torch| {self.largest:.2e} ({worst}) over "
                f"{len(self.cases)} cases, tolerance {self.atol:.0e}")

    def failure_message(self) -> str:
        """Names each failing output with its largest difference."""
        parts = ", ".join(f"{name} {diff:.3e}" for name, diff in self.failures.items())
        return f"ONNX Runtime disagrees with PyTorch beyond {self.atol:.0e}: {parts}"


def _compare(onnx_lm: OnnxLM, torch_lm: TorchLM, feeds: dict[str, np.ndarray],
             torch_cache: list[np.ndarray], report: ParityReport,
             ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Run one recurrent call on both sides (each with its own state); return both states."""
    onnx_out = onnx_lm.run(feeds)
    torch_feeds = dict(feeds)
    torch_feeds.update(zip(onnx_lm.cache_inputs, torch_cache, strict=True))
    torch_out = torch_lm.run(torch_feeds)
    report.record(onnx_out, torch_out)
    return ([onnx_out[n] for n in onnx_lm.cache_outputs],
            [torch_out[n] for n in onnx_lm.cache_outputs])


def _run_rnn_case(onnx_lm: OnnxLM, torch_lm: TorchLM, rng: np.random.Generator, *,
                  batch: int, vocab: int, max_prefill: int, steps: int, report: ParityReport,
                  progress: tqdm | None) -> str:
    length = int(rng.integers(2, max_prefill + 1))
    ids = rng.integers(1, vocab, (batch, length))
    cache = onnx_lm.empty_cache(batch)
    onnx_cache, torch_cache = _compare(onnx_lm, torch_lm, onnx_lm.feeds(ids, cache), cache,
                                       report)
    for _ in range(steps):
        token = rng.integers(1, vocab, (batch, 1))
        onnx_cache, torch_cache = _compare(onnx_lm, torch_lm, onnx_lm.feeds(token, onnx_cache),
                                           torch_cache, report)
        if progress is not None:
            progress.update(1)
    return f"batch {batch}: rows of {length} tokens + {steps} steps"


def _torch_row(model: nn.Module, tokens: np.ndarray, positions: np.ndarray,
               past: list | None) -> tuple[np.ndarray, list]:
    """PyTorch logits [S, V] and the row's new cache, for one row alone."""
    with torch.no_grad():
        logits, present = model(torch.from_numpy(tokens[None, :].astype(np.int64)), past=past,
                                position_ids=torch.from_numpy(positions[None, :]))
    return logits[0].numpy(), present


def _record_kv(report: ParityReport, onnx_out: dict[str, np.ndarray], cache_outputs: list[str],
               row: int, length: int, *, torch_logits: np.ndarray, onnx_logits: np.ndarray,
               torch_cache: list) -> None:
    """Fold one row's logits and its valid part of every present buffer into ``report``."""
    expected = {LOGITS: torch_logits}
    got = {LOGITS: onnx_logits}
    for index, name in enumerate(cache_outputs):
        expected[name] = torch_cache[index // 2][index % 2][0].numpy()
        got[name] = onnx_out[name][row, :, :length]
    report.record(got, expected)


def _run_kv_case(onnx_lm: OnnxLM, model: nn.Module, rng: np.random.Generator, *, batch: int,
                 vocab: int, max_prefill: int, steps: int, report: ParityReport,
                 progress: tqdm | None) -> str:
    longest = int(rng.integers(2, max_prefill + 1))
    lengths = [longest, *(int(n) for n in rng.integers(1, longest + 1, batch - 1))]
    # Row 0 starts at position 0; the others anywhere, as after a slide of the window.
    starts = [0, *(int(n) for n in rng.integers(0, 4 * max_prefill, batch - 1))]
    rows = [rng.integers(1, vocab, n) for n in lengths]
    ids, query = right_pad([r.tolist() for r in rows])
    positions = np.zeros_like(ids)
    for b, (start, n) in enumerate(zip(starts, lengths, strict=True)):
        positions[b, :n] = start + np.arange(n)
    capacity = longest + steps
    cache = onnx_lm.empty_cache(batch, capacity)
    out = onnx_lm.run(onnx_lm.feeds(ids, cache, np.zeros(batch, np.int64), query, positions))
    torch_caches = []
    for b, n in enumerate(lengths):
        logits, present = _torch_row(model, rows[b], positions[b, :n], None)
        _record_kv(report, out, onnx_lm.cache_outputs, b, n, torch_logits=logits,
                   onnx_logits=out[LOGITS][b, :n], torch_cache=present)
        torch_caches.append(present)
    cache = [out[name] for name in onnx_lm.cache_outputs]
    past = np.asarray(lengths, dtype=np.int64)
    idle_step = steps // 2 if batch > 1 else -1
    for step in range(steps):
        token = rng.integers(1, vocab, (batch, 1))
        active = np.ones(batch, np.int64)
        if step == idle_step:
            active[-1] = 0  # a row left out of this step must keep its cache unchanged
        pos = (np.asarray(starts, np.int64) + past)[:, None]
        out = onnx_lm.run(onnx_lm.feeds(token, cache, past, active, pos))
        for b in range(batch):
            if active[b]:
                logits, torch_caches[b] = _torch_row(model, token[b], pos[b], torch_caches[b])
            else:
                logits = None
            n = int(past[b] + active[b])
            if logits is not None:
                _record_kv(report, out, onnx_lm.cache_outputs, b, n, torch_logits=logits,
                           onnx_logits=out[LOGITS][b, :1], torch_cache=torch_caches[b])
            else:  # the idle row's cache must still equal PyTorch's
                _record_kv(report, out, onnx_lm.cache_outputs, b, n, torch_logits=np.zeros(1),
                           onnx_logits=np.zeros(1), torch_cache=torch_caches[b])
        cache = [out[name] for name in onnx_lm.cache_outputs]
        past = past + active
        if progress is not None:
            progress.update(1)
    return (f"batch {batch}: rows of {'/'.join(map(str, lengths))} tokens at positions "
            f"{'/'.join(map(str, starts))} + {steps} steps")


def run_case(onnx_lm: OnnxLM, model: nn.Module, torch_lm: TorchLM | None,
             rng: np.random.Generator, *, batch: int, vocab: int, max_prefill: int, steps: int,
             report: ParityReport, progress: tqdm | None = None) -> None:
    """One prefill then ``steps`` decode steps at ``batch``, recorded into ``report``."""
    if onnx_lm.kind == "kv":
        case = _run_kv_case(onnx_lm, model, rng, batch=batch, vocab=vocab,
                            max_prefill=max_prefill, steps=steps, report=report,
                            progress=progress)
    else:
        case = _run_rnn_case(onnx_lm, torch_lm, rng, batch=batch, vocab=vocab,
                             max_prefill=max_prefill, steps=steps, report=report,
                             progress=progress)
    report.cases.append(case)


def check_parity(model: nn.Module, arch: str, onnx_lm: OnnxLM, *, batch: int = 3,
                 steps: int = MIN_DECODE_STEPS, max_prefill: int = 48,
                 atol: float = DEFAULT_ATOL, seed: int = 0,
                 show_progress: bool = False) -> ParityReport:
    """Compare ONNX Runtime with PyTorch at batch 1 and at ``batch``.

    Args:
        model: the PyTorch model that was exported.
        arch: its architecture name.
        onnx_lm: the exported graph in an ONNX Runtime session.
        batch: the batched case's size (> 1 to test different lengths per row).
        steps: decode steps after each prefill (at least 16).
        max_prefill: the longest random prefill.
        atol: the largest absolute difference allowed on any output.
        seed: seeds the random lengths and tokens.
        show_progress: draw a progress bar over the decode steps.

    Returns:
        The report (also when it failed; ``raise_on_failure`` turns that into an error).

    Raises:
        ExportError: ``steps`` below the minimum.
    """
    if steps < MIN_DECODE_STEPS:
        raise ExportError(f"parity needs at least {MIN_DECODE_STEPS} decode steps "
                          f"(received {steps})")
    rng = np.random.default_rng(seed)
    model = model.eval()
    torch_lm = TorchLM(model, arch) if arch != "gpt" else None
    report = ParityReport(atol=atol)
    vocab = model.config.vocab_size
    sizes = [1, batch] if batch > 1 else [1]
    # Each call is a few small matmuls: intra-op threads only add overhead, and on a busy
    # 2-core machine their spin-waiting made every PyTorch call ~100x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tqdm(total=steps * len(sizes), desc="parity", unit="step", leave=False,
                  disable=not show_progress) as bar:
            for size in sizes:
                run_case(onnx_lm, model, torch_lm, rng, batch=size, vocab=vocab,
                         max_prefill=max_prefill, steps=steps, report=report, progress=bar)
    finally:
        torch.set_num_threads(threads)
    logger.debug("parity: %s", report.summary())
    if LOGITS not in report.max_diff:
        raise ExportError("parity check compared no logits")
    return report


def raise_on_failure(report: ParityReport) -> None:
    """Raise if any output disagreed beyond the tolerance.

    Raises:
        ExportError: naming each failing output with its largest difference.
    """
    if not report.ok:
        raise ExportError(report.failure_message())
