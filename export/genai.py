"""A melodyd GPT file as an onnxruntime-genai model folder, for side-by-side timing.

onnxruntime-genai (``onnxruntime_genai``) runs its own decoding loop over a decoder-only
ONNX graph whose inputs it knows by name. The melodyd graph (``export.gpt_graph``) already
uses its names for ``input_ids``, ``position_ids``, ``past_key_values.{i}.key/.value``,
``logits`` and ``present.{i}.key/.value``, but takes each row's cache length as
``seqlens_k``/``total_sequence_length``/``query_seqlens``, which genai never feeds: it
feeds an ``attention_mask [batch, total]`` instead (its own model builder computes the GQA
lengths from that mask inside the graph). So the folder written here holds the same graph
and the same weights with a few nodes in front:

    seqlens_k             = int32(ReduceSum(attention_mask, axis 1) - 1)
    total_sequence_length = int32(Shape(attention_mask)[1])

and GroupQueryAttention without ``query_seqlens`` (every row of a genai batch runs the same
number of new tokens), plus a ``genai_config.json`` that names the inputs and asks for a
past/present buffer of the context length (``past_present_share_buffer``), as the engine
uses. Only the benchmark uses this; nothing live imports it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from models.core.exceptions import ExportError
from models.core.model_card import METADATA_KEY

GENAI_CONFIG = "genai_config.json"
_DERIVED = ("seqlens_k", "total_sequence_length", "query_seqlens")


def _card(model: onnx.ModelProto, path: Path) -> dict:
    meta = {prop.key: prop.value for prop in model.metadata_props}
    if METADATA_KEY not in meta:
        raise ExportError(f"{path} is not a melodyd model")
    card = json.loads(meta[METADATA_KEY])
    if card.get("arch") != "gpt" or card.get("format_version", 1) < 2:
        raise ExportError(f"{path}: onnxruntime-genai needs a format-2 GPT (the in-place "
                          f"cache graph); re-export it with `melody export`")
    return card


def write_genai_folder(model_path: str | Path, folder: str | Path, *, threads: int = 1,
                       max_length: int | None = None) -> Path:
    """Write ``model.onnx`` and ``genai_config.json`` for ``model_path`` into ``folder``.

    Args:
        model_path: a format-2 melodyd GPT file.
        folder: the output folder (created if needed).
        threads: ONNX Runtime intra-op threads of genai's session.
        max_length: genai's buffer length (default: the model's context length).

    Raises:
        ExportError: the file is not a format-2 melodyd GPT.
    """
    model_path, folder = Path(model_path), Path(folder)
    model = onnx.load(str(model_path))
    card = _card(model, model_path)
    graph = model.graph
    inputs = [value for value in graph.input if value.name not in _DERIVED]
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64,
                                         ["batch", "total"])
    del graph.input[:]
    graph.input.extend([*inputs[:2], mask, *inputs[2:]])
    graph.initializer.extend([
        numpy_helper.from_array(np.array([1], np.int64), "genai_axis_1"),
        numpy_helper.from_array(np.array(1, np.int64), "genai_one"),
    ])
    front = [
        helper.make_node("ReduceSum", ["attention_mask", "genai_axis_1"], ["genai_mask_sum"],
                         keepdims=0),
        helper.make_node("Sub", ["genai_mask_sum", "genai_one"], ["genai_seqlens_k"]),
        helper.make_node("Cast", ["genai_seqlens_k"], ["seqlens_k"], to=TensorProto.INT32),
        helper.make_node("Shape", ["attention_mask"], ["genai_mask_shape"]),
        helper.make_node("Gather", ["genai_mask_shape", "genai_one"], ["genai_total"]),
        helper.make_node("Cast", ["genai_total"], ["total_sequence_length"],
                         to=TensorProto.INT32),
    ]
    for node in graph.node:
        if node.op_type == "GroupQueryAttention":
            names = list(node.input)
            while names and names[-1] in ("query_seqlens", ""):
                names.pop()  # an optional trailing input may simply be left out
            del node.input[:]
            node.input.extend(names)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend([*front, *nodes])
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "model.onnx"))

    config = card["model_config"]
    layers, width, heads = config["n_layer"], config["n_embd"], config["n_head"]
    # genai refuses a buffer longer than its context length; positions past the trained
    # context are only timed, never listened to (the engine slides its window there).
    context = max(int(card["context_length"]), max_length or 0)
    genai = {
        "model": {
            "type": "llama",  # any decoder-only type: genai only uses it to pick its loop
            "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
            "context_length": context, "vocab_size": config["vocab_size"],
            "decoder": {
                "filename": "model.onnx",
                "session_options": {"intra_op_num_threads": threads,
                                    "inter_op_num_threads": 1, "log_id": "melodyd-genai",
                                    "provider_options": []},
                "head_size": width // heads, "hidden_size": width,
                "num_attention_heads": heads, "num_key_value_heads": heads,
                "num_hidden_layers": layers,
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                           "position_ids": "position_ids",
                           "past_key_names": "past_key_values.%d.key",
                           "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
            },
        },
        "search": {"max_length": context, "past_present_share_buffer": True,
                   "do_sample": False, "top_k": 1, "num_beams": 1, "batch_size": 1},
    }
    (folder / GENAI_CONFIG).write_text(json.dumps(genai, indent=2) + "\n")
    return folder
