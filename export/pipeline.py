"""Checkpoint -> verified, self-describing ONNX file: the steps behind ``melody export``.

Everything is built in a hidden temporary folder beside the output and moved into place
only after it passed every check (onnx.checker, parity with PyTorch, the int8 thresholds),
so a failed export never leaves a half-verified model where the engine would load it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from pathlib import Path

import onnx

from export.metadata import build_card, set_card
from export.onnx_graph import DEFAULT_OPSET, export_graph
from export.parity import MIN_DECODE_STEPS, ParityReport, check_parity, raise_on_failure
from export.quantize import (
    MAX_KL,
    MIN_AGREEMENT,
    QuantReport,
    check_thresholds,
    compare_models,
    dataset_windows,
    music21_windows,
    quantize_int8,
)
from export.runtime import OnnxLM
from models.core.exceptions import ExportError
from models.core.model_card import STYLE_PATTERN, ModelCard
from models.core.tokenizer import MelodyTokenizer
from models.train.checkpoint import load_checkpoint

logger = logging.getLogger(__name__)

MAX_BATCH_LIMIT = 64


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What an export wrote and how it was verified.

    Attributes:
        path: the ONNX file written.
        card: the metadata stored in it.
        size_bytes: its size on disk.
        fp32_size_bytes: the size of the fp32 graph (equal to ``size_bytes`` without int8).
        parity: ONNX Runtime vs PyTorch on the fp32 graph.
        quant: int8 vs fp32, or None without ``--int8``.
    """

    path: Path
    card: ModelCard
    size_bytes: int
    fp32_size_bytes: int
    parity: ParityReport
    quant: QuantReport | None


def check_output_path(output: str | Path) -> Path:
    """The output path, if a file can be created there.

    Raises:
        ExportError: its directory does not exist, or it names a directory.
    """
    path = Path(output).expanduser()
    if path.is_dir():
        raise ExportError(f"output path is a directory: {path} (give a file name such as "
                          f"{path / 'model.onnx'})")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ExportError(f"output directory does not exist: {parent}")
    if not os.access(parent, os.W_OK):
        raise ExportError(f"output directory is not writable: {parent}")
    return path


def default_style(state: dict, output: Path) -> str:
    """The style a checkpoint names (``style``, or ``train_config.style``), else the file stem."""
    train_config = state.get("train_config") or {}
    for candidate in (state.get("style"), train_config.get("style")):
        if isinstance(candidate, str) and candidate:
            return candidate
    return output.stem


def trained_on(state: dict) -> Path | None:
    """The dataset folder the checkpoint was trained on, when it is still there.

    Its validation split is the natural check of an int8 model: real tokens of the
    model's own music that it never trained on.
    """
    recorded = (state.get("train_config") or {}).get("data_dir")
    if recorded and (Path(recorded) / "manifest.json").is_file():
        logger.info("int8 check on the validation split of %s (the training data)", recorded)
        return Path(recorded)
    return None


def export_checkpoint(checkpoint: str | Path, output: str | Path, *, int8: bool = False,
                      opset: int = DEFAULT_OPSET, style: str | None = None,
                      max_batch: int = 4, data_dir: str | Path | None = None,
                      min_agreement: float = MIN_AGREEMENT, max_kl: float = MAX_KL,
                      steps: int = MIN_DECODE_STEPS, seed: int = 0,
                      show_progress: bool = False) -> ExportResult:
    """Export a checkpoint to ``output`` and prove it.

    Args:
        checkpoint: a melodyd checkpoint (``melody train`` / ``fine-tune``).
        output: the ONNX file to write (its directory must exist).
        int8: write the weight-only int8 model instead of fp32.
        opset: ONNX opset version.
        style: the style name in the metadata; default from the checkpoint or file name.
        max_batch: the batch of the mixed-history parity check, ``max(2, max_batch)``,
            besides batch 1 (the graph itself takes any batch).
        data_dir: a built dataset whose validation split checks the int8 model (default:
            the checkpoint's training dataset when it still exists, else music21 chorales).
        min_agreement: the lowest int8 top-1 agreement accepted.
        max_kl: the highest int8 mean KL (nats) accepted.
        steps: decode steps after each parity prefill.
        seed: seeds the parity inputs.
        show_progress: progress bars on stderr.

    Raises:
        ModelError: the checkpoint is missing, corrupt or of an unknown architecture.
        ExportError: a bad argument, a failed export, failed parity or a refused int8 model.
        DataError: ``data_dir`` is unusable for the int8 check.
    """
    output = check_output_path(output)
    if not 1 <= max_batch <= MAX_BATCH_LIMIT:
        raise ExportError(f"--max-batch must be within 1 and {MAX_BATCH_LIMIT} "
                          f"(received {max_batch})")
    loaded = load_checkpoint(checkpoint)
    style = style or default_style(loaded.state, output)
    if not STYLE_PATTERN.match(style):
        raise ExportError(f"style must be a plain name of letters, digits, '.', '_' or '-' "
                          f"(received {style!r}); pass --style NAME")
    tokenizer = MelodyTokenizer.from_dict(loaded.tokenizer) if int8 else None
    parity_batch = max(2, max_batch)
    with tempfile.TemporaryDirectory(prefix=f".{output.name}.", dir=output.parent) as tmp:
        fp32_path = Path(tmp) / "fp32.onnx"
        proto = export_graph(loaded.model, loaded.arch, fp32_path, opset)
        card = build_card(loaded.state, style=style, max_batch=parity_batch)
        set_card(proto, card)
        onnx.save(proto, str(fp32_path))
        fp32 = OnnxLM(fp32_path)
        parity = check_parity(loaded.model, loaded.arch, fp32, batch=parity_batch, steps=steps,
                              seed=seed, show_progress=show_progress)
        raise_on_failure(parity)
        final, quant = fp32_path, None
        if int8:
            final = Path(tmp) / "int8.onnx"
            quantize_int8(fp32_path, final)
            card = dataclasses.replace(card, quantization="int8")
            quantized = onnx.load(str(final))
            set_card(quantized, card)
            onnx.save(quantized, str(final))
            try:
                onnx.checker.check_model(str(final), full_check=True)
            except onnx.checker.ValidationError as err:
                raise ExportError(f"the int8 graph fails onnx.checker: {err}") from err
            if data_dir is None:
                data_dir = trained_on(loaded.state)
            if data_dir is not None:
                windows, source = dataset_windows(data_dir, tokenizer)
            else:
                windows, source = music21_windows(tokenizer)
            quant = compare_models(fp32, OnnxLM(final), windows, source, show_progress)
            logger.debug("int8: %s", quant.summary())
            check_thresholds(quant, min_agreement, max_kl)
        fp32_size = fp32_path.stat().st_size
        os.replace(final, output)
    return ExportResult(path=output, card=card, size_bytes=output.stat().st_size,
                        fp32_size_bytes=fp32_size, parity=parity, quant=quant)
