"""int8 dynamic quantization, accepted only if it still predicts like the fp32 model.

ONNX Runtime's dynamic quantization stores weights as int8 and quantizes activations on
the fly. We quantize ``MatMul`` only: these hold nearly all transformer weights (the
attention and MLP projections and the output head), while quantizing ``Gather`` (the
token embedding) would shift every input vector, and ORT's LSTM/GRU kernels are left in
float so the recurrent state does not drift over long sequences.

The result is measured on real token windows, each a prefill from an empty cache:
top-1 agreement (the fp32 and int8 argmax are the same token) and the mean KL divergence
KL(p_fp32 || p_int8) in nats over all positions. It is refused unless agreement is at
least ``MIN_AGREEMENT`` (0.95) and mean KL at most ``MAX_KL`` (0.05 nats): past those
points sampling visibly changes which notes come out.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from pathlib import Path

import numpy as np
from onnxruntime.quantization import QuantType, quantize_dynamic
from tqdm import tqdm

from export.runtime import OnnxLM
from models.exceptions import DataError, ExportError
from models.tokenizer import MelodyTokenizer

logger = logging.getLogger(__name__)

QUANT_OP_TYPES = ("MatMul",)
MIN_AGREEMENT = 0.95
MAX_KL = 0.05
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
    """

    agreement: float
    mean_kl: float
    positions: int
    accuracy_fp32: float
    accuracy_int8: float
    source: str

    def summary(self) -> str:
        """One line for the export summary."""
        return (f"top-1 agreement {self.agreement:.4f}, mean KL {self.mean_kl:.3g} nats over "
                f"{self.positions} positions of {self.source} (next-token accuracy fp32 "
                f"{self.accuracy_fp32:.3f}, int8 {self.accuracy_int8:.3f})")


def quantize_int8(source: str | Path, target: str | Path) -> None:
    """Write an int8 (weights) copy of the fp32 ONNX model ``source`` to ``target``.

    Raises:
        ExportError: ONNX Runtime's quantizer failed.
    """
    # The quantizer logs a line per tensor on the root logger, and a hint to run its
    # pre-processing (shape inference and graph fusions), which we skip on purpose: the
    # accuracy check below measures the result either way, and ORT fuses at load time.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        # Per-channel scales: on the random `small` GPT they cut the mean KL from 4.8e-5
        # to 3.3e-5 nats (agreement 0.956 -> 0.967) for 1% more file size.
        quantize_dynamic(str(source), str(target), op_types_to_quantize=list(QUANT_OP_TYPES),
                         weight_type=QuantType.QInt8, per_channel=True)
    except (RuntimeError, ValueError, KeyError) as err:
        raise ExportError(f"int8 quantization failed: {err}") from err
    finally:
        root.setLevel(level)


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
    return QuantReport(agreement=agree / positions, mean_kl=kl / positions,
                       positions=int(positions), accuracy_fp32=correct32 / max(predicted, 1),
                       accuracy_int8=correct8 / max(predicted, 1), source=source)


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
    from models.dataset import TokenDataset  # noqa: PLC0415 - only for --int8

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
