"""Weight-only int8 quantization, accepted only if it still predicts like the fp32 model.

Every ``MatMul`` whose weight is a constant (the attention and MLP projections and the
output head: nearly all transformer weights) stores that weight as int8 with one float
scale per output channel (symmetric, ``scale = max |w| / 127``), followed by ``Cast`` and
``Mul`` nodes that ONNX Runtime constant-folds when the session loads. The file is ~4x
smaller; the arithmetic stays float32 on the dequantized weights, so a row's logits never
depend on the other rows of its batch nor on how its tokens were split into calls. That
is the point: the format-1 models used ONNX Runtime's dynamic quantization, whose
activation scales came from each call's inputs, and cached decoding differed from a full
pass by up to 0.18 in the logits. The embedding (``Gather``) and recurrent kernels stay
float.

(ONNX Runtime's faster int8 kernels were measured and not used: ``MatMulNBits`` with 8
bits and float compute took ~5 ms per step on the `small` GPT, and the fused
``DequantizeLinear`` + ``MatMul`` path quantizes activations per block again.)

The result is measured on real token windows, each a prefill from an empty cache:
top-1 agreement (the fp32 and int8 argmax are the same token) and the mean KL divergence
KL(p_fp32 || p_int8) in nats over all positions. It is refused unless agreement is at
least ``MIN_AGREEMENT`` (0.95) and mean KL at most ``MAX_KL`` (0.05 nats), and unless
decoding the first window token by token with the cache equals its full pass within
``MAX_CACHED_DIFF`` (1e-3).
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tqdm import tqdm

from export.runtime import OnnxLM
from models.core.exceptions import DataError, ExportError
from models.core.tokenizer import MelodyTokenizer

logger = logging.getLogger(__name__)

QUANT_OP_TYPES = ("MatMul",)
MIN_AGREEMENT = 0.95
MAX_KL = 0.05
MAX_CACHED_DIFF = 1e-3
EVAL_WINDOWS = 16
EVAL_LENGTH = 128
# Public-domain chorales inside music21: the fallback when no dataset is given.
FALLBACK_PIECES = ("bach/bwv66.6", "bach/bwv1.6", "bach/bwv10.7", "bach/bwv101.7",
                   "bach/bwv102.7", "bach/bwv103.6")


@dataclasses.dataclass(frozen=True)
class QuantReport:
    """How closely the int8 model follows the fp32 one.

    Attributes:
        agreement: share of positions where both argmax tokens are equal.
        mean_kl: mean KL(p_fp32 || p_int8) per position, in nats.
        positions: number of positions compared.
        accuracy_fp32: next-token accuracy of the fp32 model on the same tokens.
        accuracy_int8: next-token accuracy of the int8 model.
        source: where the tokens came from.
        cached_diff: largest |logit| difference of the int8 model's cached decoding
            against its own full pass on the first window.
    """

    agreement: float
    mean_kl: float
    positions: int
    accuracy_fp32: float
    accuracy_int8: float
    source: str
    cached_diff: float = 0.0

    def summary(self) -> str:
        """One line for the export summary."""
        return (f"top-1 agreement {self.agreement:.4f}, mean KL {self.mean_kl:.3g} nats over "
                f"{self.positions} positions of {self.source} (next-token accuracy fp32 "
                f"{self.accuracy_fp32:.3f}, int8 {self.accuracy_int8:.3f}); cached decoding "
                f"vs full pass {self.cached_diff:.1e}")


def _int8_per_channel(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 codes and per-column scales of a [in, out] weight."""
    scale = (np.abs(weight).max(axis=0) / 127.0).astype(np.float32)
    scale[scale == 0] = 1.0  # an all-zero column: any scale reproduces it
    codes = np.clip(np.rint(weight / scale), -127, 127).astype(np.int8)
    return codes, scale


def quantize_int8(source: str | Path, target: str | Path) -> int:
    """Write a weight-only int8 copy of the fp32 ONNX model ``source`` to ``target``.

    Returns:
        The number of weights quantized.

    Raises:
        ExportError: the model has no constant ``MatMul`` weight to quantize.
    """
    model = onnx.load(str(source))
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    dequantize: list[onnx.NodeProto] = []
    for name, tensor in list(initializers.items()):
        consumers = users.get(name, [])
        if (len(tensor.dims) != 2 or tensor.data_type != TensorProto.FLOAT or not consumers
                or any(n.op_type not in QUANT_OP_TYPES or list(n.input).index(name) != 1
                       for n in consumers)):
            continue
        codes, scale = _int8_per_channel(numpy_helper.to_array(tensor))
        graph.initializer.remove(tensor)
        graph.initializer.extend([numpy_helper.from_array(codes, f"{name}.int8"),
                                  numpy_helper.from_array(scale, f"{name}.scale")])
        dequantize += [helper.make_node("Cast", [f"{name}.int8"], [f"{name}.int8_float"],
                                        name=f"{name}.cast", to=TensorProto.FLOAT),
                       helper.make_node("Mul", [f"{name}.int8_float", f"{name}.scale"], [name],
                                        name=f"{name}.dequantize")]
    if not dequantize:
        raise ExportError(f"{source} has no constant MatMul weight to quantize")
    # Dequantization first keeps the node list topologically sorted.
    nodes = [*dequantize, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(target))
    return len(dequantize) // 2


def cached_vs_full(lm: OnnxLM, window: np.ndarray, prefix: int = 8) -> float:
    """Largest |logit| difference between a full pass and cached token-by-token decoding.

    Both start from an empty cache; the cached side prefills ``prefix`` tokens and then
    runs one token per call. A KV graph keeps one buffer throughout, as the engine does.
    """
    ids = np.asarray(window, dtype=np.int64)[None, :]
    prefix = max(1, min(prefix, ids.shape[1] - 1))
    full, _ = lm.step(ids, lm.empty_cache(1))
    if lm.kind == "kv":
        cache = lm.empty_cache(1, ids.shape[1])
        logits, cache = lm.step(ids[:, :prefix], cache, np.zeros(1, np.int64))
        parts = [logits]
        for t in range(prefix, ids.shape[1]):
            logits, cache = lm.step(ids[:, t:t + 1], cache, np.array([t]))
            parts.append(logits)
    else:
        logits, cache = lm.step(ids[:, :prefix], lm.empty_cache(1))
        parts = [logits]
        for t in range(prefix, ids.shape[1]):
            logits, cache = lm.step(ids[:, t:t + 1], cache)
            parts.append(logits)
    return float(np.abs(np.concatenate(parts, axis=1) - full).max())


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def compare_models(fp32: OnnxLM, int8: OnnxLM, windows: list[np.ndarray], source: str,
                   show_progress: bool = False) -> QuantReport:
    """Top-1 agreement and mean KL of ``int8`` against ``fp32`` on token windows.

    Raises:
        ExportError: no window has at least two tokens.
    """
    agree = kl = correct32 = correct8 = positions = 0.0
    for window in tqdm(windows, desc="int8 check", unit="window", leave=False,
                       disable=not show_progress):
        if len(window) < 2:
            continue
        ids = np.asarray(window, dtype=np.int64)[None, :]
        logp32 = _log_softmax(fp32.step(ids, fp32.empty_cache(1))[0][0])
        logp8 = _log_softmax(int8.step(ids, int8.empty_cache(1))[0][0])
        top32, top8 = logp32.argmax(-1), logp8.argmax(-1)
        targets = ids[0, 1:]
        agree += float((top32 == top8).sum())
        kl += float((np.exp(logp32) * (logp32 - logp8)).sum())
        correct32 += float((top32[:-1] == targets).sum())
        correct8 += float((top8[:-1] == targets).sum())
        positions += len(window)
    if positions == 0:
        raise ExportError("no token windows to compare the int8 model on")
    predicted = positions - len([w for w in windows if len(w) >= 2])
    first = next(w for w in windows if len(w) >= 2)
    return QuantReport(agreement=agree / positions, mean_kl=kl / positions,
                       positions=int(positions), accuracy_fp32=correct32 / max(predicted, 1),
                       accuracy_int8=correct8 / max(predicted, 1), source=source,
                       cached_diff=cached_vs_full(int8, first))


def check_thresholds(report: QuantReport, min_agreement: float = MIN_AGREEMENT,
                     max_kl: float = MAX_KL) -> None:
    """Refuse an int8 model that strays too far from fp32.

    Raises:
        ExportError: agreement below ``min_agreement`` or mean KL above ``max_kl``.
    """
    problems = []
    if report.agreement < min_agreement:
        problems.append(f"top-1 agreement {report.agreement:.4f} < {min_agreement}")
    if report.mean_kl > max_kl:
        problems.append(f"mean KL {report.mean_kl:.3g} > {max_kl}")
    if not report.cached_diff <= MAX_CACHED_DIFF:
        problems.append(f"cached decoding differs from a full pass by {report.cached_diff:.2e} "
                        f"> {MAX_CACHED_DIFF}")
    if problems:
        raise ExportError("int8 model refused: " + " and ".join(problems)
                          + "; export without --int8, or train longer and retry")


def _cut(sequences: list[np.ndarray], count: int, length: int) -> list[np.ndarray]:
    """Up to ``count`` windows of at most ``length`` tokens, from the start of each piece."""
    windows = []
    for seq in sequences:
        for start in range(0, max(len(seq) - 1, 1), length):
            if len(windows) == count:
                return windows
            window = np.asarray(seq[start:start + length], dtype=np.int64)
            if len(window) >= 2:
                windows.append(window)
    return windows


def dataset_windows(data_dir: str | Path, tokenizer: MelodyTokenizer,
                    count: int = EVAL_WINDOWS, length: int = EVAL_LENGTH,
                    ) -> tuple[list[np.ndarray], str]:
    """Windows of a built dataset's validation split (held-out pieces).

    Raises:
        DataError: the dataset is missing or malformed, has no validation pieces, or was
            built with a different vocabulary than the model's.
    """
    from models.data.manifest import TokenDataset  # noqa: PLC0415 - only for --int8

    dataset = TokenDataset(data_dir, "validation")
    if dataset.tokenizer.fingerprint != tokenizer.fingerprint:
        raise DataError(f"{data_dir} was built with a different vocabulary than the model "
                        f"(fingerprint {dataset.tokenizer.fingerprint}, model "
                        f"{tokenizer.fingerprint})")
    windows = _cut([dataset[i] for i in range(len(dataset))], count, length)
    if not windows:
        raise DataError(f"{data_dir} has no validation tokens to check int8 against")
    return windows, f"{data_dir} validation"


def music21_windows(tokenizer: MelodyTokenizer, count: int = EVAL_WINDOWS,
                    length: int = EVAL_LENGTH) -> tuple[list[np.ndarray], str]:
    """Windows of a few Bach chorales from music21's bundled corpus, tokenized here.

    These may be training pieces (not held out); ``--data`` gives a real validation split.

    Raises:
        DataError: music21 is not installed or none of the pieces could be read.
    """
    try:
        from music21 import corpus  # noqa: PLC0415 - heavy, optional (train extra)
        from music21.exceptions21 import Music21Exception  # noqa: PLC0415
    except ImportError as err:
        raise DataError("--int8 needs tokens to check against: pass --data DIR (a dataset "
                        "from `melody data build`) or install music21") from err
    sequences = []
    with tempfile.TemporaryDirectory(prefix="melodyd-int8-") as tmp:
        for name in FALLBACK_PIECES:
            target = Path(tmp) / (name.replace("/", "_") + ".mid")
            try:
                corpus.parse(name).write("midi", fp=str(target))
                sequences.append(np.asarray(tokenizer.encode_file(target), dtype=np.int64))
            except (Music21Exception, OSError, RuntimeError, ValueError) as err:
                logger.warning("skipping %s for the int8 check: %s", name, err)
    windows = _cut(sequences, count, length)
    if not windows:
        raise DataError("could not tokenize any music21 piece for the int8 check; "
                        "pass --data DIR")
    return windows, "music21 Bach chorales"
