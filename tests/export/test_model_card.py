"""The model card's torch-free parsing: what the engine relies on to read a model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from models.core.exceptions import ModelError
from models.core.model_card import (
    METADATA_KEY,
    CacheSpec,
    ModelCard,
    card_from_dict,
    card_from_json,
    card_from_metadata,
    kv_cache_names,
    rnn_state_names,
)

ROOT = Path(__file__).resolve().parents[2]


def _card(**changes) -> ModelCard:
    inputs, outputs = kv_cache_names(2)
    fields = {
        "arch": "gpt",
        "model_config": {"n_layer": 2, "n_head": 2, "n_embd": 64, "vocab_size": 390},
        "tokenizer": {"format": "melodyd-tokens", "version": 1, "vocab_size": 390},
        "style": "baroque",
        "context_length": 256,
        "cache": CacheSpec(kind="kv", inputs=inputs, outputs=outputs, num_layers=2,
                           num_heads=2, head_dim=32, max_batch=4),
        "training": {"corpus": "corpus:bach", "pieces": {"train": 10}, "tokens": {"train": 99},
                     "manifest_hash": "abc", "metrics": {"val_loss": 1.5}, "step": 7},
        "quantization": "none",
        "exported_at": "2026-01-01T00:00:00+00:00",
    }
    fields.update(changes)
    return ModelCard(**fields)


def test_json_round_trip_keeps_every_field() -> None:
    card = _card()
    assert card_from_json(card.to_json()) == card


def test_metadata_map_round_trip_and_io_names() -> None:
    card = card_from_metadata({METADATA_KEY: _card().to_json(), "other": "x"}, "m.onnx")
    assert card.input_names[:5] == ("input_ids", "position_ids", "seqlens_k", "query_seqlens",
                                    "total_sequence_length")
    assert card.input_names[5] == "past_key_values.0.key"
    assert card.output_names == ("logits", "present.0.key", "present.0.value",
                                 "present.1.key", "present.1.value")


def test_rnn_names() -> None:
    assert rnn_state_names("lstm") == (("past_state.h", "past_state.c"),
                                       ("present_state.h", "present_state.c"))
    assert rnn_state_names("gru") == (("past_state.h",), ("present_state.h",))


def test_unknown_keys_are_ignored() -> None:
    data = _card().to_dict() | {"added_later": 1}
    assert card_from_dict(data).style == "baroque"


@pytest.mark.parametrize("version", [0, 3, None, "2"])
def test_other_format_versions_are_refused(version) -> None:
    data = _card().to_dict() | {"format_version": version}
    with pytest.raises(ModelError, match="format version"):
        card_from_dict(data)


def test_an_older_format_names_the_fix_in_one_line() -> None:
    data = _card().to_dict() | {"format_version": 1}
    with pytest.raises(ModelError, match="re-export it from its checkpoint with `melody export`"
                       ) as caught:
        card_from_dict(data)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("key", ["arch", "tokenizer", "cache", "context_length", "style"])
def test_missing_keys_are_named(key: str) -> None:
    data = _card().to_dict()
    del data[key]
    with pytest.raises(ModelError, match=key):
        card_from_dict(data)


@pytest.mark.parametrize(("change", "message"), [
    ({"arch": "transformer"}, "arch"),
    ({"style": "two words"}, "style"),
    ({"context_length": 0}, "context_length"),
    ({"quantization": "int3"}, "quantization"),
])
def test_bad_values_are_named(change: dict, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        card_from_dict(_card().to_dict() | change)


def test_cache_checks() -> None:
    data = _card().to_dict()
    data["cache"]["kind"] = "rnn"
    with pytest.raises(ModelError, match="cache kind"):
        card_from_dict(data)
    data = _card().to_dict()
    data["cache"]["outputs"] = data["cache"]["outputs"][:-1]
    with pytest.raises(ModelError, match="inputs but"):
        card_from_dict(data)
    data = _card().to_dict()
    del data["cache"]["head_dim"]
    with pytest.raises(ModelError, match="head_dim"):
        card_from_dict(data)


def test_not_a_melodyd_model() -> None:
    with pytest.raises(ModelError, match="not a melodyd model"):
        card_from_metadata({}, "foreign.onnx")
    with pytest.raises(ModelError, match="not JSON"):
        card_from_metadata({METADATA_KEY: "{oops"}, "broken.onnx")
    with pytest.raises(ModelError, match="JSON object"):
        card_from_json(json.dumps([1, 2]))


def test_model_card_imports_neither_torch_nor_onnx() -> None:
    code = ("import sys, models.core.model_card; "
            "print(' '.join(sorted(m.split('.')[0] for m in sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, check=True)
    loaded = set(result.stdout.split())
    assert "torch" not in loaded
    assert "onnx" not in loaded
    assert "onnxruntime" not in loaded
