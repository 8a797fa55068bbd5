"""The exported graph: ONNX Runtime equals PyTorch, the cache equals recomputation,
batched rows equal rows alone, and the metadata describes the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="export needs torch (the train extra)")
onnx = pytest.importorskip("onnx", reason="export needs onnx (the train extra)")

from export.metadata import read_card  # noqa: E402
from export.onnx_graph import DEFAULT_OPSET, dynamic_axes, export_graph  # noqa: E402
from export.parity import ParityReport, check_parity, raise_on_failure  # noqa: E402
from export.runtime import OnnxLM, left_pad  # noqa: E402
from models.checkpoint import load_checkpoint, read_checkpoint  # noqa: E402
from models.exceptions import ExportError  # noqa: E402
from models.model_card import card_from_metadata  # noqa: E402

pytestmark = pytest.mark.torch
ATOL = 1e-4


def _rng_rows(lengths: list[int], vocab: int, seed: int = 1) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, vocab, n).tolist() for n in lengths]


def test_graph_inputs_and_outputs_are_named_and_symbolic(tiny_onnx_model: Path) -> None:
    model = onnx.load(str(tiny_onnx_model))
    onnx.checker.check_model(model, full_check=True)
    shapes = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*model.graph.input, *model.graph.output]}
    assert shapes["input_ids"] == ["batch", "seq"]
    assert shapes["position_ids"] == ["batch", "seq"]
    assert shapes["attention_mask"] == ["batch", "past_seq"]
    assert shapes["past_key_values.0.key"] == ["batch", 2, "past", 32]
    assert shapes["past_key_values.1.value"] == ["batch", 2, "past", 32]
    assert shapes["logits"] == ["batch", "seq", 390]
    assert shapes["present.1.value"] == ["batch", 2, "past_seq", 32]
    assert len(model.graph.input) == 3 + 4
    assert model.opset_import[0].version == DEFAULT_OPSET


def test_onnx_equals_pytorch(tiny_checkpoint: Path, tiny_onnx_model: Path) -> None:
    model = load_checkpoint(tiny_checkpoint).model
    report = check_parity(model, "gpt", OnnxLM(tiny_onnx_model), batch=3, steps=16, seed=3)
    assert report.ok, report.failure_message()
    assert set(report.max_diff) == {"logits", *(f"present.{i}.{p}" for i in range(2)
                                                for p in ("key", "value"))}
    assert report.largest < ATOL
    assert len(report.cases) == 2


def test_parity_fails_and_names_outputs_when_the_model_differs(tiny_checkpoint: Path,
                                                               tiny_onnx_model: Path) -> None:
    model = load_checkpoint(tiny_checkpoint).model
    with torch.no_grad():
        # The final LayerNorm acts after every cache tensor: only logits change.
        model.ln_f.bias += torch.linspace(0.0, 0.05, model.config.n_embd)
    report = check_parity(model, "gpt", OnnxLM(tiny_onnx_model), batch=2, steps=16)
    assert not report.ok
    assert "logits" in report.failures
    assert "present.1.key" not in report.failures
    with pytest.raises(ExportError, match=r"logits \d\.\d+e-0\d"):
        raise_on_failure(report)


def test_parity_report_treats_nan_and_shape_mismatch_as_failure() -> None:
    report = ParityReport(atol=ATOL)
    report.record({"a": np.array([np.nan]), "b": np.zeros(2)}, {"a": np.zeros(1),
                                                                  "b": np.zeros(3)})
    assert report.failures == {"a": float("inf"), "b": float("inf")}


def test_prefill_accepts_a_zero_length_past(tiny_onnx_model: Path) -> None:
    lm = OnnxLM(tiny_onnx_model)
    cache = lm.empty_cache(2)
    assert cache[0].shape == (2, 2, 0, 32)
    logits, present = lm.step(np.array([[1, 2, 3], [4, 5, 6]]), cache)
    assert logits.shape == (2, 3, 390)
    assert present[0].shape == (2, 2, 3, 32)
    assert np.isfinite(logits).all()


def test_cached_step_by_step_equals_full_sequence(tiny_onnx_model: Path) -> None:
    lm = OnnxLM(tiny_onnx_model)
    ids = np.array(_rng_rows([24], 390))
    full, _ = lm.step(ids, lm.empty_cache(1))
    prefix = 7
    logits, cache = lm.step(ids[:, :prefix], lm.empty_cache(1))
    steps = [logits]
    for t in range(prefix, ids.shape[1]):
        logits, cache = lm.step(ids[:, t:t + 1], cache)
        steps.append(logits)
    stepped = np.concatenate(steps, axis=1)
    np.testing.assert_allclose(stepped, full, atol=ATOL, rtol=0)
    assert cache[0].shape[2] == ids.shape[1]


def test_batch_rows_with_different_histories_equal_each_row_alone(
        tiny_onnx_model: Path) -> None:
    lm = OnnxLM(tiny_onnx_model)
    rows = _rng_rows([11, 4, 7], 390, seed=5)
    ids, mask, positions = left_pad(rows)
    batch_logits, cache = lm.step(ids, lm.empty_cache(3), positions, mask)
    rng = np.random.default_rng(9)
    new_tokens = rng.integers(1, 390, (3, 5))
    batch_steps = []
    next_pos = positions[:, -1:] + 1
    for t in range(new_tokens.shape[1]):
        mask = np.concatenate([mask, np.ones((3, 1), dtype=np.int64)], axis=1)
        logits, cache = lm.step(new_tokens[:, t:t + 1], cache, next_pos, mask)
        next_pos = next_pos + 1
        batch_steps.append(logits[:, 0])
    for b, row in enumerate(rows):
        alone, alone_cache = lm.step(np.array([row]), lm.empty_cache(1))
        # Real (unpadded) positions of the batched prefill match the row run alone.
        np.testing.assert_allclose(batch_logits[b, -len(row):], alone[0], atol=ATOL, rtol=0)
        for t in range(new_tokens.shape[1]):
            logits, alone_cache = lm.step(new_tokens[b:b + 1, t:t + 1], alone_cache)
            np.testing.assert_allclose(batch_steps[t][b], logits[0, 0], atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch", ["lstm", "gru"])
def test_recurrent_export_parity(arch: str, tiny_onnx_factory) -> None:
    path = tiny_onnx_factory(arch)
    model = load_checkpoint(path.with_suffix(".pt")).model
    lm = OnnxLM(path)
    assert lm.kind == "rnn"
    names = ["past_state.h", "past_state.c"] if arch == "lstm" else ["past_state.h"]
    assert lm.cache_inputs == names
    report = check_parity(model, arch, lm, batch=3, steps=16, seed=2)
    assert report.ok, report.failure_message()
    assert "present_state.h" in report.max_diff
    # Cached stepping equals the full sequence for the recurrent graph too.
    ids = np.array(_rng_rows([12], 390))
    full, _ = lm.step(ids, lm.empty_cache(1))
    _, state = lm.step(ids[:, :5], lm.empty_cache(1))
    for t in range(5, 12):
        logits, state = lm.step(ids[:, t:t + 1], state)
        np.testing.assert_allclose(logits[0, 0], full[0, t], atol=ATOL, rtol=0)


def test_metadata_round_trip(tiny_checkpoint: Path, tiny_onnx_model: Path) -> None:
    state = read_checkpoint(tiny_checkpoint)
    card = read_card(tiny_onnx_model)
    assert card.arch == "gpt"
    assert card.style == "tiny"
    assert card.model_config == state["model_config"]
    assert card.tokenizer == state["tokenizer"]
    assert card.context_length == state["model_config"]["context_length"]
    assert card.cache.kind == "kv"
    assert (card.cache.num_layers, card.cache.num_heads, card.cache.head_dim) == (2, 2, 32)
    assert card.cache.inputs[0] == "past_key_values.0.key"
    assert card.cache.outputs[-1] == "present.1.value"
    assert card.quantization == "none"
    assert card.training["corpus"] == "random"
    assert card.training["step"] == 0
    # The engine reads the same card through ONNX Runtime, without onnx or torch.
    meta = OnnxLM(tiny_onnx_model).session.get_modelmeta().custom_metadata_map
    assert card_from_metadata(meta) == card
    # Every name the card promises is a real graph input or output.
    session = OnnxLM(tiny_onnx_model).session
    assert tuple(i.name for i in session.get_inputs()) == card.input_names
    assert tuple(o.name for o in session.get_outputs()) == card.output_names


def test_bad_opset_is_refused(tmp_path: Path, tiny_checkpoint: Path) -> None:
    model = load_checkpoint(tiny_checkpoint).model
    with pytest.raises(ExportError, match="opset"):
        export_graph(model, "gpt", tmp_path / "m.onnx", opset=9)


def test_dynamic_axes_cover_every_cache_tensor() -> None:
    axes = dynamic_axes("gpt", 3)
    assert axes["past_key_values.2.value"] == {0: "batch", 2: "past"}
    assert axes["present.2.key"] == {0: "batch", 2: "past_seq"}
    assert dynamic_axes("lstm", 2)["present_state.c"] == {1: "batch"}


def test_a_frozen_axis_is_detected(tiny_onnx_model: Path) -> None:
    from export.onnx_graph import frozen_axes  # noqa: PLC0415

    model = onnx.load(str(tiny_onnx_model))
    assert frozen_axes(model, dynamic_axes("gpt", 2)) == []
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1  # batch frozen to 1
    assert frozen_axes(model, dynamic_axes("gpt", 2)) == [
        "input_ids[0] should be 'batch' (got 1)"]
