"""The exported graph: ONNX Runtime equals PyTorch, the in-place cache equals recomputation,
batched rows of different lengths equal rows alone, and the metadata describes the model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="export needs torch (the train extra)")
onnx = pytest.importorskip("onnx", reason="export needs onnx (the train extra)")
import onnxruntime as ort  # noqa: E402

from engine.cache import window_feeds  # noqa: E402
from export.genai import GENAI_CONFIG, write_genai_folder  # noqa: E402
from export.metadata import read_card  # noqa: E402
from export.onnx_graph import DEFAULT_OPSET, dynamic_axes, export_graph  # noqa: E402
from export.parity import ParityReport, check_parity, raise_on_failure  # noqa: E402
from export.runtime import OnnxLM, right_pad  # noqa: E402
from models.core.exceptions import ExportError  # noqa: E402
from models.core.model_card import card_from_metadata  # noqa: E402
from models.train.checkpoint import load_checkpoint, read_checkpoint  # noqa: E402

pytestmark = pytest.mark.torch

# tiny_onnx_model has 2 heads of 16 (width 32, see tests/fixtures/make_tiny_models.py).
HEAD_DIM = 16
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
    assert shapes["seqlens_k"] == ["batch"]
    assert shapes["query_seqlens"] == ["batch"]
    assert shapes["total_sequence_length"] == []
    assert shapes["past_key_values.0.key"] == ["batch", 2, "capacity", HEAD_DIM]
    assert shapes["past_key_values.1.value"] == ["batch", 2, "capacity", HEAD_DIM]
    assert shapes["logits"] == ["batch", "seq", 390]
    # present is the same buffer as past: the graph writes into it, never concatenates.
    assert shapes["present.1.value"] == ["batch", 2, "capacity", HEAD_DIM]
    assert len(model.graph.input) == 5 + 4
    assert model.opset_import[0].version == DEFAULT_OPSET
    ops = {node.op_type for node in model.graph.node}
    assert "GroupQueryAttention" in ops
    assert "Concat" not in {n.op_type for n in model.graph.node
                            if any(i.startswith("past_key_values") for i in n.input)}


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


def test_prefill_starts_from_an_empty_buffer(tiny_onnx_model: Path) -> None:
    lm = OnnxLM(tiny_onnx_model)
    cache = lm.empty_cache(2, capacity=8)
    assert cache[0].shape == (2, 2, 8, HEAD_DIM)
    logits, present = lm.step(np.array([[1, 2, 3], [4, 5, 6]]), cache)
    assert logits.shape == (2, 3, 390)
    assert present[0].shape == (2, 2, 8, HEAD_DIM)  # the same capacity: written, not grown
    assert np.isfinite(logits).all()


def _in_place_session(path: Path) -> tuple[ort.InferenceSession, list[str], list[str]]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()][5:]
    outputs = [o.name for o in session.get_outputs()][1:]
    return session, names, outputs


def _run_in_place(session, names, outputs, feeds, buffers) -> np.ndarray:
    """One call with past and present bound to the same memory (as the engine runs)."""
    binding = session.io_binding()
    for name, value in feeds.items():
        binding.bind_cpu_input(name, value)
    for past, present, buffer in zip(names, outputs, buffers, strict=True):
        binding.bind_input(past, "cpu", 0, np.float32, list(buffer.shape), buffer.ctypes.data)
        binding.bind_output(present, "cpu", 0, np.float32, list(buffer.shape),
                            buffer.ctypes.data)
    binding.bind_output("logits", "cpu")
    session.run_with_iobinding(binding)
    return binding.copy_outputs_to_cpu()[-1]


def test_in_place_cached_decoding_equals_the_full_pass(tiny_onnx_model: Path) -> None:
    from export.runtime import kv_feeds  # noqa: PLC0415

    lm = OnnxLM(tiny_onnx_model)
    ids = np.array(_rng_rows([24], 390))
    full, _ = lm.step(ids, lm.empty_cache(1))
    session, names, outputs = _in_place_session(tiny_onnx_model)
    buffers = [np.zeros((1, 2, 32, HEAD_DIM), np.float32) for _ in names]
    prefix = 7
    first = _run_in_place(session, names, outputs,
                          kv_feeds(ids[:, :prefix], np.array([0]), np.array([prefix])), buffers)
    steps = [first]
    before = [b.copy() for b in buffers]
    for t in range(prefix, ids.shape[1]):
        steps.append(_run_in_place(session, names, outputs,
                                   kv_feeds(ids[:, t:t + 1], np.array([t]), np.array([1])),
                                   buffers))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=ATOL, rtol=0)
    # Only new positions were written: the prefix entries kept their exact bytes.
    for old, new in zip(before, buffers, strict=True):
        assert np.array_equal(old[:, :, :prefix], new[:, :, :prefix])
        assert np.abs(new[:, :, prefix:ids.shape[1]]).sum() > 0


def test_batch_rows_with_different_histories_equal_each_row_alone(
        tiny_onnx_model: Path) -> None:
    lm = OnnxLM(tiny_onnx_model)
    rows = _rng_rows([11, 4, 7], 390, seed=5)
    ids, lengths = right_pad(rows)
    # Rows also sit at different absolute positions (one as if its window had slid).
    starts = np.array([0, 500, 3])
    positions = starts[:, None] + np.arange(ids.shape[1])[None, :]
    batch_logits, cache = lm.step(ids, lm.empty_cache(3, 16), np.zeros(3, np.int64), lengths,
                                  positions)
    rng = np.random.default_rng(9)
    new_tokens = rng.integers(1, 390, (3, 5))
    batch_steps = []
    past = lengths.copy()
    for t in range(new_tokens.shape[1]):
        logits, cache = lm.step(new_tokens[:, t:t + 1], cache, past, np.ones(3, np.int64),
                                (starts + past)[:, None])
        past = past + 1
        batch_steps.append(logits[:, 0])
    for b, row in enumerate(rows):
        n = len(row)
        alone, alone_cache = lm.step(np.array([row]), lm.empty_cache(1),
                                     position_ids=starts[b] + np.arange(n)[None, :])
        np.testing.assert_allclose(batch_logits[b, :n], alone[0], atol=ATOL, rtol=0)
        for t in range(new_tokens.shape[1]):
            logits, alone_cache = lm.step(new_tokens[b:b + 1, t:t + 1], alone_cache,
                                          np.array([n + t]), None,
                                          np.array([[starts[b] + n + t]]))
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
    _, state = lm.step(ids[:, :5], lm.empty_cache(1))  # recurrent state: no lengths
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
    assert (card.cache.num_layers, card.cache.num_heads, card.cache.head_dim) == (2, 2, HEAD_DIM)
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
    with pytest.raises(ExportError, match="opset 17"):
        export_graph(model, "gpt", tmp_path / "m.onnx", opset=15)


def test_a_head_size_gqa_refuses_is_named() -> None:
    from export.gpt_graph import check_head_dim  # noqa: PLC0415

    check_head_dim(64)
    with pytest.raises(ExportError, match="multiple of 16"):
        check_head_dim(24)


def test_dynamic_axes_cover_every_cache_tensor() -> None:
    axes = dynamic_axes("gpt", 3)
    assert axes["past_key_values.2.value"] == {0: "batch", 2: "capacity"}
    assert axes["present.2.key"] == {0: "batch", 2: "capacity"}
    assert dynamic_axes("lstm", 2)["present_state.c"] == {1: "batch"}


def test_a_frozen_axis_is_detected(tiny_onnx_model: Path) -> None:
    from export.onnx_graph import frozen_axes  # noqa: PLC0415

    model = onnx.load(str(tiny_onnx_model))
    assert frozen_axes(model, dynamic_axes("gpt", 2)) == []
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1  # batch frozen to 1
    assert frozen_axes(model, dynamic_axes("gpt", 2)) == [
        "input_ids[0] should be 'batch' (got 1)"]


def test_the_genai_folder_holds_the_same_model_behind_an_attention_mask(
        tiny_onnx_model: Path, tmp_path: Path) -> None:
    # bench --genai-python times onnxruntime-genai on this folder: it must be the engine's
    # graph and weights, with the cache lengths computed from genai's attention mask.
    folder = write_genai_folder(tiny_onnx_model, tmp_path / "genai", max_length=300)
    config = json.loads((folder / GENAI_CONFIG).read_text())
    assert config["search"]["past_present_share_buffer"] is True
    assert config["search"]["max_length"] == config["model"]["context_length"] == 300
    plain = ort.InferenceSession(str(tiny_onnx_model), providers=["CPUExecutionProvider"])
    genai = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    spec = card_from_metadata(plain.get_modelmeta().custom_metadata_map).cache
    ids = np.random.default_rng(3).integers(4, 200, size=12)
    feeds = window_feeds(spec, ids)
    expected = plain.run(["logits"], feeds)[0]
    genai_feeds = {name: value for name, value in feeds.items()
                   if name not in ("seqlens_k", "query_seqlens", "total_sequence_length")}
    genai_feeds["attention_mask"] = np.ones((1, len(ids)), dtype=np.int64)
    np.testing.assert_allclose(genai.run(["logits"], genai_feeds)[0], expected, atol=1e-5)
