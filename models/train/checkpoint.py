"""Training checkpoints: one ``torch.save`` dict that describes and rebuilds its model.

The dict holds only tensors, numbers, strings, lists and dicts, so it is read back with
``torch.load(weights_only=True)``, PyTorch's restricted loader, never arbitrary pickle.

Keys: ``format`` ("melodyd-checkpoint"), ``version``, ``arch`` ("gpt", "lstm", "gru"),
``model_config`` (dict), ``tokenizer`` (the tokenizer's dict), ``data`` (dataset manifest
summary), ``model`` (state dict), ``optimizer``, ``scheduler``, ``step``, ``metrics``,
``train_config``, ``rng`` (random generator states, for the record: an exact resume
needs none, since every step reseeds from (seed, rank, step)); a fine-tune also keeps
``init_data``, the sources of the checkpoint it started from (``model_sources``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.core.exceptions import ModelError
from models.train.gpt import GPT, GPTConfig
from models.train.rnn import RecurrentLM, RNNConfig

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "melodyd-checkpoint"
CHECKPOINT_VERSION = 1
ARCHS = ("gpt", "lstm", "gru")
_REQUIRED = ("arch", "model_config", "tokenizer", "model", "step")


@dataclasses.dataclass
class Checkpoint:
    """A loaded checkpoint: the rebuilt model (eval mode) and everything saved with it.

    Attributes:
        path: the file it was read from.
        model: the rebuilt model with its weights, in eval mode.
        state: the whole saved dict (optimizer, scheduler and RNG states for a resume).
    """

    path: Path
    model: nn.Module
    state: dict[str, Any]

    @property
    def arch(self) -> str:
        """"gpt", "lstm" or "gru"."""
        return self.state["arch"]

    @property
    def model_config(self) -> dict[str, Any]:
        """The model arguments as a dict."""
        return self.state["model_config"]

    @property
    def tokenizer(self) -> dict[str, Any]:
        """The tokenizer configuration (``MelodyTokenizer.from_dict`` rebuilds it)."""
        return self.state["tokenizer"]

    @property
    def data(self) -> dict[str, Any]:
        """The training dataset's manifest summary."""
        return self.state.get("data") or {}

    @property
    def metrics(self) -> dict[str, Any]:
        """Validation metrics at the time of saving."""
        return self.state.get("metrics") or {}

    @property
    def step(self) -> int:
        """Optimizer steps taken."""
        return int(self.state["step"])


def build_model(arch: str, config: dict[str, Any]) -> nn.Module:
    """A freshly initialized model of an architecture from its config dict.

    Raises:
        ModelError: an unknown architecture or config keys that do not fit it.
    """
    try:
        if arch == "gpt":
            return GPT(GPTConfig(**config))
        if arch in ("lstm", "gru"):
            rnn = RNNConfig(**config)
            if rnn.cell != arch:
                raise ModelError(f"model config cell {rnn.cell!r} does not match arch {arch!r}")
            return RecurrentLM(rnn)
    except (TypeError, ValueError) as err:
        raise ModelError(f"invalid {arch} model config {config!r}: {err}") from err
    raise ModelError(f"unknown architecture {arch!r} (choose from {', '.join(ARCHS)})")


def model_arch(model: nn.Module) -> str:
    """The ``arch`` name of a model instance (unwraps DDP and torch.compile)."""
    model = getattr(model, "module", model)
    model = getattr(model, "_orig_mod", model)
    if isinstance(model, GPT):
        return "gpt"
    if isinstance(model, RecurrentLM):
        return model.config.cell
    raise ModelError(f"not a melodyd model: {type(model).__name__}")


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write a checkpoint atomically (a temporary file renamed over ``path``).

    ``state`` needs at least ``arch``, ``model_config``, ``tokenizer``, ``model`` and
    ``step``; ``format`` and ``version`` are added.

    Raises:
        ModelError: a required key is missing or the file cannot be written.
    """
    missing = [key for key in _REQUIRED if key not in state]
    if missing:
        raise ModelError(f"checkpoint for {path} lacks {', '.join(missing)}")
    path = Path(path)
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(payload, tmp)
        os.replace(tmp, path)  # a crash mid-write never leaves a truncated best.pt
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise ModelError(f"cannot write checkpoint {path}: {err}") from err
    return path


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The validated checkpoint dict, without building the model.

    Raises:
        ModelError: the file is missing, unreadable, not a melodyd checkpoint or of an
            unsupported version.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # The restricted loader refuses anything but tensors and plain containers.
        raise ModelError(f"cannot read checkpoint {path}: corrupt, truncated or not a "
                         f"melodyd checkpoint") from err
    except (OSError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"cannot read checkpoint {path}: {first_line}") from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ModelError(f"{path} is not a melodyd checkpoint")
    if state.get("version") != CHECKPOINT_VERSION:
        raise ModelError(f"{path} has checkpoint version {state.get('version')!r}, "
                         f"this melodyd reads version {CHECKPOINT_VERSION}")
    missing = [key for key in _REQUIRED if key not in state]
    if missing:
        raise ModelError(f"checkpoint {path} lacks {', '.join(missing)}")
    return state


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read, validate and rebuild the model of a checkpoint (in eval mode).

    Raises:
        ModelError: the file is missing, corrupt or foreign, or its weights do not fit
            its own model config.
    """
    state = read_checkpoint(path, map_location)
    model = build_model(state["arch"], state["model_config"])
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise ModelError(f"weights in {path} do not match its model config: "
                         f"{str(err).splitlines()[0]}") from err
    model.to(map_location).eval()
    return Checkpoint(path=Path(path), model=model, state=state)


def _merge_corpora(*tables: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Corpus tables (name -> licence, pieces) added up; a name's licences joined."""
    merged: dict[str, dict[str, Any]] = {}
    for table in tables:
        for name, entry in (table or {}).items():
            if not isinstance(entry, Mapping):
                continue
            into = merged.setdefault(name, {"licences": set(), "pieces": 0})
            into["licences"].add(str(entry.get("licence") or "unknown"))
            into["pieces"] += int(entry.get("pieces") or 0)
    out = {}
    for name, entry in sorted(merged.items()):
        # "unknown" only when nothing better is known of the corpus.
        licences = sorted(entry["licences"] - {"unknown"}) or ["unknown"]
        out[name] = {"licence": "; ".join(licences), "pieces": entry["pieces"]}
    return out


def model_sources(state: Mapping[str, Any]) -> dict[str, Any]:
    """What a checkpoint's weights learned from: sources, corpora (licence, pieces), licences.

    A fine-tune keeps (``init_data``) those of the checkpoint it started from, which this
    merges with its own dataset's, so that a model card names the base model's corpora as
    well as the fine-tuning folder's.
    """
    data = state.get("data") or {}
    base = state.get("init_data") or {}
    sources = [str(s) for s in base.get("sources") or [] if s]
    if data.get("source") and str(data["source"]) not in sources:
        sources.append(str(data["source"]))
    licences = sorted({str(item) for item in [*(base.get("licences") or []),
                                               *(data.get("licences") or [])]})
    return {"sources": sources, "corpora": _merge_corpora(base.get("corpora") or {},
                                                         data.get("corpora") or {}),
            "licences": licences}


def write_weights_only(source: str | Path, target: str | Path,
                       dtype: torch.dtype = torch.float16) -> Path:
    """Write a checkpoint's model for shipping: weights (as ``dtype``) and its description.

    The optimizer, scheduler and RNG states are dropped (they are twice the weights and
    only serve a resume), and floating-point weights are stored as ``dtype``:
    ``load_checkpoint`` casts them back into the model's float32 parameters, and
    fine-tuning from half-precision weights loses nothing that training does not
    immediately wash out. The result is a normal checkpoint: ``melody fine-tune --from``
    and ``melody export`` read it.

    Raises:
        ModelError: the source is not a readable checkpoint, or the target cannot be written.
    """
    state = read_checkpoint(source)
    weights = {name: tensor.to(dtype) if tensor.is_floating_point() else tensor
               for name, tensor in state["model"].items()}
    keep = ("arch", "model_config", "tokenizer", "data", "init_data", "step", "metrics",
            "train_config")
    slim = {key: state[key] for key in keep if key in state}
    return save_checkpoint(target, {**slim, "model": weights, "weights_only": True})
