"""Build the ``melodyd`` model card from a checkpoint and store it in an ONNX file.

The card's layout and validation live in the torch-free ``models.core.model_card`` so the
engine reads exactly what this module writes; here we only gather the facts (from the
checkpoint dictionary and the model's shape) and move JSON in and out of ONNX files.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import onnx
from google.protobuf.message import DecodeError

from models.core.exceptions import ExportError, ModelError
from models.core.model_card import (
    FORMAT_VERSION,
    METADATA_KEY,
    CacheSpec,
    ModelCard,
    card_from_json,
    card_from_metadata,
    kv_cache_names,
    rnn_state_names,
)
from models.train.checkpoint import model_sources

logger = logging.getLogger(__name__)

# Config keys other code may use for the trained context; the first one present wins.
_CONTEXT_KEYS = ("context_length", "block_size", "max_seq_len", "seq_len", "max_len")
_DEFAULT_RNN_CONTEXT = 1024


def cache_spec(arch: str, model_config: Mapping[str, Any], max_batch: int | None = None,
               ) -> CacheSpec:
    """The cache description of a model from its config.

    Raises:
        ExportError: the config lacks the sizes the cache shapes are made of.
    """
    try:
        layers = int(model_config["n_layer"] if "n_layer" in model_config
                     else model_config["num_layers"])
        if arch == "gpt":
            heads = int(model_config["n_head"] if "n_head" in model_config
                        else model_config["num_heads"])
            width = int(model_config["n_embd"] if "n_embd" in model_config
                        else model_config["d_model"])
            inputs, outputs = kv_cache_names(layers)
            return CacheSpec(kind="kv", inputs=inputs, outputs=outputs, num_layers=layers,
                             num_heads=heads, head_dim=width // heads, max_batch=max_batch)
        hidden = int(model_config["hidden"] if "hidden" in model_config
                     else model_config["hidden_size"])
    except (KeyError, TypeError, ValueError) as err:
        raise ExportError(f"the {arch} model config lacks its layer sizes ({err!r})") from err
    inputs, outputs = rnn_state_names(arch)
    return CacheSpec(kind="rnn", inputs=inputs, outputs=outputs, num_layers=layers,
                     hidden=hidden, max_batch=max_batch)


def context_length(arch: str, model_config: Mapping[str, Any],
                   train_config: Mapping[str, Any] | None = None) -> int:
    """The longest sequence the model was built or trained for, in tokens."""
    for source in (model_config, train_config or {}):
        for key in _CONTEXT_KEYS:
            value = source.get(key)
            if isinstance(value, int) and value > 0:
                return value
    if arch == "gpt":
        raise ExportError("the GPT config has no context length "
                          f"(looked for {', '.join(_CONTEXT_KEYS)})")
    # A recurrent model has no positional limit: give the engine a sane window.
    return _DEFAULT_RNN_CONTEXT


def training_summary(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """Corpus, pieces, tokens, manifest hash, validation metrics and step of a checkpoint.

    ``corpus``, ``pieces`` and ``tokens`` describe its own dataset; ``corpora`` and
    ``licences`` everything its weights learned from, a fine-tune's base model included
    (a fine-tune's card adds ``sources``, the datasets, the base's first; other cards stay
    as they were before it existed).
    """
    data = checkpoint.get("data") or {}
    # models.train.batches.manifest_summary keeps pieces and tokens per split.
    splits = data.get("splits") if isinstance(data.get("splits"), Mapping) else {}
    sources = model_sources(checkpoint)
    lineage = {"sources": sources["sources"]} if checkpoint.get("init_data") else {}
    return {
        "corpus": data.get("source"),
        "pieces": data.get("pieces") or {name: info.get("pieces")
                                         for name, info in splits.items()},
        "tokens": data.get("tokens") or {name: info.get("tokens")
                                         for name, info in splits.items()},
        "manifest_hash": data.get("hash"),
        # Corpus -> licence and pieces, and every licence: a shipped model names its sources.
        "corpora": sources["corpora"],
        "licences": sources["licences"],
        **lineage,
        "metrics": dict(checkpoint.get("metrics") or {}),
        "step": checkpoint.get("step"),
    }


def build_card(checkpoint: Mapping[str, Any], *, style: str, quantization: str = "none",
               max_batch: int | None = None, exported_at: str | None = None) -> ModelCard:
    """The model card of an export of ``checkpoint``, validated like the engine will.

    Args:
        checkpoint: the dictionary of a melodyd checkpoint (``arch``, ``model_config``,
            ``tokenizer``, ``data``, ``metrics``, ``step``, ``train_config``).
        style: the style name the engine will serve the model under.
        quantization: ``"none"`` or ``"int8"``.
        max_batch: the largest batch the export was verified at.
        exported_at: an ISO-8601 time; now (UTC) when omitted.

    Raises:
        ExportError: the card would not be valid (e.g. a style name with spaces).
    """
    arch = checkpoint["arch"]
    model_config = dict(checkpoint["model_config"])
    card = {
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "model_config": model_config,
        "tokenizer": dict(checkpoint["tokenizer"]),
        "style": style,
        "context_length": context_length(arch, model_config, checkpoint.get("train_config")),
        "cache": cache_spec(arch, model_config, max_batch).__dict__,
        "training": training_summary(checkpoint),
        "quantization": quantization,
        "exported_at": exported_at or dt.datetime.now(dt.timezone.utc).isoformat(
            timespec="seconds"),
    }
    card["cache"] = {k: list(v) if isinstance(v, tuple) else v
                     for k, v in card["cache"].items() if v is not None}
    try:
        # A JSON round trip proves the card serialises and passes the engine's checks.
        return card_from_json(json.dumps(card))
    except (ModelError, TypeError, ValueError) as err:
        raise ExportError(f"cannot describe this model: {err}") from err


def set_card(model: onnx.ModelProto, card: ModelCard) -> None:
    """Store ``card`` in ``model``'s ``melodyd`` metadata property (replacing any)."""
    for index, prop in enumerate(model.metadata_props):
        if prop.key == METADATA_KEY:
            del model.metadata_props[index]
            break
    entry = model.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = card.to_json()
    model.producer_name = "melodyd"
    model.doc_string = f"melodyd {card.arch} model, style {card.style}"


def write_card(path: str | Path, card: ModelCard) -> None:
    """Rewrite the ONNX file at ``path`` with ``card`` as its metadata."""
    model = onnx.load(str(path))
    set_card(model, card)
    onnx.save(model, str(path))


def read_card(path: str | Path) -> ModelCard:
    """The validated card of an ONNX file (weights are not loaded).

    Raises:
        ModelError: the file is missing, not ONNX, or carries no valid card.
    """
    try:
        model = onnx.load(str(path), load_external_data=False)
    except FileNotFoundError as err:
        raise ModelError(f"model file not found: {path}") from err
    except (OSError, DecodeError) as err:
        raise ModelError(f"cannot read ONNX model {path}: {err}") from err
    return card_from_metadata({p.key: p.value for p in model.metadata_props}, str(path))
