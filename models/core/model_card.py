"""The ``melodyd`` model card: what an ONNX model file says about itself.

Every exported model carries one JSON object in its ``melodyd`` metadata property
(see ``docs/architecture.md``). This module parses and validates that JSON and nothing
else, so the engine can read a model's card through ONNX Runtime
(``session.get_modelmeta().custom_metadata_map``) without importing torch or onnx.
``export.metadata`` builds cards from checkpoints and writes them into ONNX files.

Torch-free and onnx-free.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from typing import Any

from models.core.exceptions import ModelError

METADATA_KEY = "melodyd"
# 2: the GPT graph keeps its keys/values in a buffer shared by past and present that each
#    call writes in place (ONNX Runtime's GroupQueryAttention), fed by per-row lengths;
#    "int8" means weight-only MatMulNBits. 1 concatenated the whole cache every step and
#    quantized activations on the fly; its files are refused (re-export them).
FORMAT_VERSION = 2
ARCHS = ("gpt", "lstm", "gru")
QUANTIZATIONS = ("none", "int8", "int4")
# Style names travel in protocol messages and file names: keep them plain.
STYLE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

# The fixed, non-cache inputs and outputs of each kind of graph (architecture.md). For a
# KV graph: ``seqlens_k`` [batch] int32 is each row's cached tokens after the call minus
# one, ``query_seqlens`` [batch] int32 its valid (left-aligned) new tokens, and
# ``total_sequence_length`` [] int32 an upper bound of ``seqlens_k + 1`` (ONNX Runtime's
# names for GroupQueryAttention's inputs, passed to it unchanged).
KV_INPUTS = ("input_ids", "position_ids", "seqlens_k", "query_seqlens", "total_sequence_length")
RNN_INPUTS = ("input_ids",)
LOGITS = "logits"

_REQUIRED = ("format_version", "arch", "model_config", "tokenizer", "style", "context_length",
             "cache", "training", "quantization", "exported_at")
_CACHE_REQUIRED = ("kind", "inputs", "outputs", "num_layers")


def kv_cache_names(num_layers: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Names of the past (input) and present (output) key/value tensors, layer by layer.

    Returns:
        ``(inputs, outputs)``: ``past_key_values.{i}.key``, ``past_key_values.{i}.value``,
        ... and ``present.{i}.key``, ``present.{i}.value``, ... in the same order.
    """
    inputs = tuple(f"past_key_values.{i}.{part}" for i in range(num_layers)
                   for part in ("key", "value"))
    outputs = tuple(f"present.{i}.{part}" for i in range(num_layers)
                    for part in ("key", "value"))
    return inputs, outputs


def rnn_state_names(arch: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Names of the recurrent state inputs and outputs: ``h`` (and ``c`` for an LSTM)."""
    parts = ("h", "c") if arch == "lstm" else ("h",)
    return (tuple(f"past_state.{p}" for p in parts),
            tuple(f"present_state.{p}" for p in parts))


@dataclasses.dataclass(frozen=True)
class CacheSpec:
    """How a model's cache is fed back from one call to the next.

    Attributes:
        kind: ``"kv"`` (transformer keys/values) or ``"rnn"`` (recurrent state).
        inputs: cache input names; ``outputs[i]`` is fed back as ``inputs[i]``.
        outputs: cache output names, in the same order as ``inputs``.
        num_layers: transformer blocks or recurrent layers.
        num_heads: attention heads (kv only).
        head_dim: size of one head (kv only); caches are ``[batch, heads, past, head_dim]``.
        hidden: recurrent state size (rnn only); states are ``[layers, batch, hidden]``.
        max_batch: the largest batch the export was verified at.
    """

    kind: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    num_layers: int
    num_heads: int | None = None
    head_dim: int | None = None
    hidden: int | None = None
    max_batch: int | None = None


@dataclasses.dataclass(frozen=True)
class ModelCard:
    """The validated content of a model file's ``melodyd`` metadata.

    Attributes:
        arch: ``gpt``, ``lstm`` or ``gru``.
        model_config: the model's constructor arguments (JSON).
        tokenizer: ``MelodyTokenizer.to_dict()`` of the vocabulary the model was trained on.
        style: the style name the engine serves the model under.
        context_length: the longest sequence the model was trained on (tokens).
        cache: names and shapes of the cache tensors.
        training: corpus, pieces, tokens, manifest_hash, metrics (validation), step.
        quantization: ``"none"`` or ``"int8"``.
        exported_at: ISO-8601 UTC time of the export.
        format_version: version of this card's layout.
    """

    arch: str
    model_config: dict[str, Any]
    tokenizer: dict[str, Any]
    style: str
    context_length: int
    cache: CacheSpec
    training: dict[str, Any]
    quantization: str
    exported_at: str
    format_version: int = FORMAT_VERSION

    @property
    def input_names(self) -> tuple[str, ...]:
        """Every graph input, fixed ones first, then the cache inputs."""
        fixed = KV_INPUTS if self.cache.kind == "kv" else RNN_INPUTS
        return fixed + self.cache.inputs

    @property
    def style_slots(self) -> dict[str, int]:
        """Style name -> slot of a style-conditioned vocabulary (``{}`` without one).

        The map lives in the tokenizer configuration (``[tokens] styles``, slot 0 being
        "any style"), so every checkpoint and model file of the vocabulary carries it.
        """
        settings = self.tokenizer.get("settings")
        slots = settings.get("style_slots", 0) if isinstance(settings, Mapping) else 0
        if not isinstance(slots, int) or slots <= 0:
            return {}
        names = settings.get("styles") or []
        return {"any": 0, **{str(name): k + 1 for k, name in enumerate(names)}}

    @property
    def output_names(self) -> tuple[str, ...]:
        """Every graph output: ``logits`` then the cache outputs."""
        return (LOGITS, *self.cache.outputs)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object stored in the ``melodyd`` metadata property."""
        data = dataclasses.asdict(self)
        cache = data["cache"]
        cache["inputs"], cache["outputs"] = list(cache["inputs"]), list(cache["outputs"])
        data["cache"] = {k: v for k, v in cache.items() if v is not None}
        return data

    def to_json(self) -> str:
        """``to_dict`` as compact, key-sorted JSON."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))


def _need(condition: bool, message: str) -> None:
    if not condition:
        raise ModelError(f"invalid melodyd model card: {message}")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _parse_cache(arch: str, raw: Any) -> CacheSpec:
    _need(isinstance(raw, Mapping), f"cache must be an object (received {raw!r})")
    missing = [key for key in _CACHE_REQUIRED if key not in raw]
    _need(not missing, f"cache lacks {', '.join(missing)}")
    kind = raw["kind"]
    expected_kind = "kv" if arch == "gpt" else "rnn"
    _need(kind == expected_kind, f"cache kind of a {arch} must be {expected_kind!r} "
                                 f"(received {kind!r})")
    inputs, outputs = raw["inputs"], raw["outputs"]
    for name, names in (("inputs", inputs), ("outputs", outputs)):
        _need(isinstance(names, list) and all(isinstance(n, str) for n in names),
              f"cache {name} must be a list of names (received {names!r})")
    _need(len(inputs) == len(outputs) > 0,
          f"cache has {len(inputs)} inputs but {len(outputs)} outputs")
    _need(_positive_int(raw["num_layers"]),
          f"cache num_layers must be a positive integer (received {raw['num_layers']!r})")
    sizes = ("num_heads", "head_dim") if kind == "kv" else ("hidden",)
    for key in sizes:
        _need(_positive_int(raw.get(key)),
              f"cache {key} must be a positive integer (received {raw.get(key)!r})")
    max_batch = raw.get("max_batch")
    _need(max_batch is None or _positive_int(max_batch),
          f"cache max_batch must be a positive integer (received {max_batch!r})")
    return CacheSpec(kind=kind, inputs=tuple(inputs), outputs=tuple(outputs),
                     num_layers=raw["num_layers"], num_heads=raw.get("num_heads"),
                     head_dim=raw.get("head_dim"), hidden=raw.get("hidden"),
                     max_batch=max_batch)


def card_from_dict(data: Any) -> ModelCard:
    """Validate a parsed ``melodyd`` object into a ``ModelCard``.

    Unknown extra keys are ignored so that a newer exporter can add optional facts
    without breaking older engines; a different ``format_version`` is refused.

    Raises:
        ModelError: the object is not a card of this format version, or a required key
            is missing or has the wrong type.
    """
    _need(isinstance(data, Mapping), f"expected a JSON object (received {type(data).__name__})")
    version = data.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version < FORMAT_VERSION:
        raise ModelError(f"model format version {version} is from an older melodyd (this one "
                         f"reads version {FORMAT_VERSION}, whose KV cache is updated in place): "
                         f"re-export it from its checkpoint with `melody export`")
    if version != FORMAT_VERSION:
        raise ModelError(f"unsupported melodyd model format version {version!r} "
                         f"(this melodyd reads version {FORMAT_VERSION})")
    missing = [key for key in _REQUIRED if key not in data]
    _need(not missing, f"missing {', '.join(missing)}")
    arch = data["arch"]
    _need(arch in ARCHS, f"arch must be one of {', '.join(ARCHS)} (received {arch!r})")
    for key in ("model_config", "tokenizer", "training"):
        _need(isinstance(data[key], Mapping), f"{key} must be an object")
    style = data["style"]
    _need(isinstance(style, str) and bool(STYLE_PATTERN.match(style)),
          f"style must be a plain name (received {style!r})")
    _need(_positive_int(data["context_length"]),
          f"context_length must be a positive integer (received {data['context_length']!r})")
    _need(data["quantization"] in QUANTIZATIONS,
          f"quantization must be one of {', '.join(QUANTIZATIONS)} "
          f"(received {data['quantization']!r})")
    _need(isinstance(data["exported_at"], str), "exported_at must be a string")
    return ModelCard(arch=arch, model_config=dict(data["model_config"]),
                     tokenizer=dict(data["tokenizer"]), style=style,
                     context_length=data["context_length"],
                     cache=_parse_cache(arch, data["cache"]), training=dict(data["training"]),
                     quantization=data["quantization"], exported_at=data["exported_at"],
                     format_version=version)


def card_from_json(text: str) -> ModelCard:
    """Parse and validate the JSON text of a ``melodyd`` metadata property.

    Raises:
        ModelError: the text is not JSON, or not a valid card (see ``card_from_dict``).
    """
    try:
        data = json.loads(text)
    except (TypeError, json.JSONDecodeError) as err:
        raise ModelError(f"invalid melodyd model card: not JSON ({err})") from err
    return card_from_dict(data)


def card_from_metadata(metadata: Mapping[str, str], source: str = "model") -> ModelCard:
    """The card from an ONNX metadata map, e.g. ORT's ``custom_metadata_map``.

    Args:
        metadata: metadata property name -> string value.
        source: what to call the model in error messages (usually its path).

    Raises:
        ModelError: the map has no ``melodyd`` property, or its value is not a valid card.
    """
    if METADATA_KEY not in metadata:
        raise ModelError(f"{source} is not a melodyd model (no '{METADATA_KEY}' metadata)")
    try:
        return card_from_json(metadata[METADATA_KEY])
    except ModelError as err:
        raise ModelError(f"{source}: {err}") from err
