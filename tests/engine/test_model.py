"""Loading models: a foreign or broken file gets one clear error; styles resolve."""

from __future__ import annotations

from pathlib import Path

import pytest

import engine.model
from engine.model import (
    MIN_ONNXRUNTIME,
    installed_styles,
    load_model,
    resolve_model_path,
    session_options,
)
from models.core.exceptions import EngineError
from models.core.settings import EngineSettings


def test_a_text_file_is_refused_with_a_clear_error(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("not a model\n")
    with pytest.raises(EngineError,
                       match=r"notes\.onnx is not a readable ONNX model.*melody export"):
        load_model(path)


def test_an_onnxruntime_too_old_for_the_graph_is_named_with_the_fix(tiny_onnx_model,
                                                                     monkeypatch):
    """onnxruntime 1.31 refuses the graph's GroupQueryAttention (17 inputs) as an invalid
    model: the error names the version needed, not a broken file."""

    def refuse(*_args, **_kwargs):
        raise engine.model.ort.capi.onnxruntime_pybind11_state.InvalidGraph(
            "has input size 17 not in range [min=7, max=16]")

    monkeypatch.setattr(engine.model.ort, "InferenceSession", refuse)
    monkeypatch.setattr(engine.model.ort, "__version__", "1.31.1")
    with pytest.raises(EngineError, match=r"onnxruntime 1\.31\.1 is older than 1\.32.*pip"):
        load_model(tiny_onnx_model)
    # A current runtime that refuses the file: the file is the problem.
    monkeypatch.setattr(engine.model.ort, "__version__", "1.32.0")
    with pytest.raises(EngineError, match="is not a readable ONNX model"):
        load_model(tiny_onnx_model)


def test_the_install_asks_for_the_runtime_the_engine_needs():
    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    needed = ".".join(map(str, MIN_ONNXRUNTIME))
    assert f'"onnxruntime>={needed}"' in pyproject
    assert f'"onnxruntime-gpu>={needed}"' in pyproject


@pytest.mark.torch  # the onnx package (train extra) writes the foreign model
def test_a_foreign_onnx_model_is_refused(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper  # noqa: PLC0415

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    path = tmp_path / "identity.onnx"
    onnx.save(proto, str(path))
    with pytest.raises(EngineError, match=r"identity\.onnx is not a melodyd model.*melody export"):
        load_model(path)


def test_a_missing_file_is_refused(tmp_path):
    with pytest.raises(EngineError, match="not found"):
        load_model(tmp_path / "absent.onnx")


def test_styles_resolve_in_the_pretrained_folder(tmp_path):
    (tmp_path / "romantic.onnx").write_bytes(b"")
    assert installed_styles(tmp_path) == {"romantic": tmp_path / "romantic.onnx"}
    assert resolve_model_path(style="romantic", directory=tmp_path) == tmp_path / "romantic.onnx"
    with pytest.raises(EngineError, match="installed: romantic"):
        resolve_model_path(style="baroque", directory=tmp_path)
    with pytest.raises(EngineError, match="either"):
        resolve_model_path()
    assert resolve_model_path(model=str(tmp_path / "romantic.onnx")) == Path(
        tmp_path / "romantic.onnx")


def test_session_threads_come_from_settings_and_never_spin():
    options = session_options(EngineSettings(intra_op_threads=2, inter_op_threads=1))
    assert options.intra_op_num_threads == 2
    assert options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"


def test_a_tiny_model_loads_with_its_card(tiny_onnx_model):
    model = load_model(tiny_onnx_model)
    assert model.style == "tiny"
    assert model.cache_kind == "kv"
    assert model.tokenizer.vocab_size == model.facts()["vocab_size"]
    assert model.providers == ["CPUExecutionProvider"]


def test_cuda_falls_back_to_the_cpu_with_a_warning(tiny_onnx_model, caplog):
    import onnxruntime as ort  # noqa: PLC0415

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: nothing falls back")
    with caplog.at_level("INFO", logger="engine.model"):
        model = load_model(tiny_onnx_model, EngineSettings(provider="cuda"))
    assert model.providers == ["CPUExecutionProvider"]
    assert "CUDAExecutionProvider" in caplog.text
    assert "on CPUExecutionProvider" in caplog.text
