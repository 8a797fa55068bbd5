"""Recover a GPT checkpoint from a format-1 int8 melodyd model, to re-export it in format 2.

The shipped style models were exported (format 1) with ONNX Runtime's dynamic int8
quantization, and their fine-tuned float checkpoints were not kept. Their weights are
still in the file: every ``MatMulInteger`` weight is int8 codes with a per-output-channel
scale and zero point, and everything else (embedding, biases, LayerNorms) is float. This
module dequantizes those codes (``(q - zero_point) * scale``, exact in float32) into a
checkpoint dictionary of the same GPT, so ``export_checkpoint`` can write it with the
in-place graph: the weights a user ran before are the weights the new file holds.

    python -m export.reexport models/pretrained/romantic.onnx [...]

rewrites each file in place (after the export's own checks passed).
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from models.core.exceptions import ExportError
from models.core.model_card import METADATA_KEY

logger = logging.getLogger(__name__)

# The order in which the traced format-1 graph runs its projections, per block.
_BLOCK_LINEARS = ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")


def recover_state(path: str | Path) -> dict[str, Any]:
    """A melodyd checkpoint dictionary rebuilt from a format-1 GPT ONNX file.

    Raises:
        ExportError: the file is not a format-1 melodyd GPT with int8 MatMul weights.
    """
    model = onnx.load(str(path))
    meta = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in meta:
        raise ExportError(f"{path} is not a melodyd model")
    card = json.loads(meta[METADATA_KEY])
    if card.get("arch") != "gpt" or card.get("format_version") != 1:
        raise ExportError(f"{path}: expected a format-1 melodyd GPT (received "
                          f"{card.get('arch')!r}, format {card.get('format_version')!r})")
    arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    state: dict[str, torch.Tensor] = {}
    for name, value in arrays.items():
        if name.startswith("model."):
            state[name.removeprefix("model.")] = torch.from_numpy(value.astype(np.float32))
    weights = []
    for node in model.graph.node:
        if node.op_type == "MatMulInteger":
            base = node.input[1].removesuffix("_quantized")
            codes = arrays[f"{base}_quantized"].astype(np.float32)
            zero = arrays[f"{base}_zero_point"].astype(np.float32)
            scale = arrays[f"{base}_scale"].astype(np.float32)
            weights.append((codes - zero) * scale)  # [in, out]
    layers = card["model_config"]["n_layer"]
    if len(weights) != 4 * layers + 1:
        raise ExportError(f"{path}: expected {4 * layers + 1} int8 MatMul weights "
                          f"(received {len(weights)})")
    for i in range(layers):
        for j, linear in enumerate(_BLOCK_LINEARS):
            state[f"blocks.{i}.{linear}.weight"] = torch.from_numpy(
                np.ascontiguousarray(weights[4 * i + j].T))
    # The head is tied to the float embedding: its int8 copy was quantized from it.
    state["lm_head.weight"] = state["wte.weight"]
    training = card.get("training") or {}
    return {
        "arch": "gpt",
        "model_config": card["model_config"],
        "tokenizer": card["tokenizer"],
        "data": {"source": training.get("corpus"), "hash": training.get("manifest_hash"),
                 "pieces": training.get("pieces"), "tokens": training.get("tokens")},
        "model": state,
        "step": training.get("step"),
        "metrics": training.get("metrics") or {},
        "train_config": {"style": card["style"],
                         "recovered_from": f"format-1 int8 model exported {card['exported_at']}"},
        "style": card["style"],
    }


def reexport(path: str | Path) -> None:
    """Rewrite a format-1 int8 model file as a format-2 int8 model of the same weights.

    Raises:
        ExportError: the file cannot be recovered or the new export fails its checks.
    """
    from export.pipeline import export_checkpoint  # noqa: PLC0415
    from models.train.checkpoint import save_checkpoint  # noqa: PLC0415

    path = Path(path)
    state = recover_state(path)
    with tempfile.TemporaryDirectory(prefix="melodyd-reexport-") as tmp:
        checkpoint = save_checkpoint(Path(tmp) / f"{path.stem}.pt", state)
        result = export_checkpoint(checkpoint, path, int8=True, style=state["style"])
    logger.info("re-exported %s: %s; %s", path, result.parity.summary(),
                result.quant.summary() if result.quant else "")


def main(argv: list[str] | None = None) -> int:
    """Re-export each model file named on the command line."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for name in (sys.argv[1:] if argv is None else argv):
        reexport(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
