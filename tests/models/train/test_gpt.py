"""The models: cached decoding equals full recomputation, padding, RoPE, checkpoints."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="the models need torch (the train extra)")

from models.core.exceptions import ModelError  # noqa: E402
from models.train.checkpoint import (  # noqa: E402 - after the torch skip
    build_model,
    load_checkpoint,
    save_checkpoint,
)
from models.train.gpt import GPT, SIZES, gpt_config  # noqa: E402
from models.train.rnn import RecurrentLM, rnn_config  # noqa: E402

pytestmark = pytest.mark.torch

VOCAB = 97
ATOL = 1e-5


def tiny_model(arch: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    if arch == "gpt":
        return GPT(gpt_config("tiny", VOCAB)).eval()
    return RecurrentLM(rnn_config("tiny", VOCAB, arch)).eval()


@pytest.fixture
def ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (3, 24), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("arch", ["gpt", "lstm", "gru"])
@torch.no_grad()
def test_token_by_token_with_cache_equals_full_sequence(arch: str, ids: torch.Tensor) -> None:
    model = tiny_model(arch)
    full, _ = model(ids)
    past, steps = None, []
    for i in range(ids.shape[1]):
        logits, past = model(ids[:, i:i + 1], past=past)
        steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch", ["gpt", "lstm", "gru"])
@torch.no_grad()
def test_prefill_then_chunk_equals_full_sequence(arch: str, ids: torch.Tensor) -> None:
    model = tiny_model(arch)
    full, _ = model(ids)
    first, past = model(ids[:, :10])
    second, _ = model(ids[:, 10:], past=past)
    torch.testing.assert_close(torch.cat([first, second], dim=1), full, atol=ATOL, rtol=0)


@torch.no_grad()
def test_cache_shapes_follow_the_contract(ids: torch.Tensor) -> None:
    model = tiny_model("gpt")
    config = model.config
    _, present = model(ids[:, :5])
    _, present = model(ids[:, 5:7], past=present)
    assert len(present) == config.n_layer
    for key, value in present:
        assert key.shape == value.shape == (3, config.n_head, 7, config.head_dim)
    _, (h, c) = tiny_model("lstm")(ids)
    assert h.shape == c.shape == (2, 3, 64)
    _, state = tiny_model("gru")(ids)
    assert len(state) == 1 and state[0].shape == (2, 3, 64)


@torch.no_grad()
def test_left_padded_rows_give_the_same_logits_as_alone() -> None:
    model = tiny_model("gpt")
    generator = torch.Generator().manual_seed(2)
    lengths = [20, 13, 5]
    seqs = [torch.randint(0, VOCAB, (n,), generator=generator) for n in lengths]
    width = max(lengths)
    batch = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for row, seq in enumerate(seqs):
        batch[row, width - len(seq):] = seq
        mask[row, width - len(seq):] = 1
    logits, present = model(batch, attention_mask=mask)
    assert not torch.isnan(logits).any(), "padding rows must not produce NaN"
    nxt = torch.randint(0, VOCAB, (len(seqs), 1), generator=generator)
    mask2 = torch.cat([mask, torch.ones(len(seqs), 1, dtype=torch.long)], dim=1)
    step_logits, _ = model(nxt, past=present, attention_mask=mask2)
    for row, seq in enumerate(seqs):
        alone, _ = model(torch.cat([seq, nxt[row]]).unsqueeze(0))
        torch.testing.assert_close(logits[row, width - len(seq):], alone[0, :-1],
                                   atol=ATOL, rtol=0)
        torch.testing.assert_close(step_logits[row, 0], alone[0, -1], atol=ATOL, rtol=0)


@torch.no_grad()
def test_rotary_positions_are_relative_so_the_cache_can_slide(ids: torch.Tensor) -> None:
    """Shifting every position (as when decoding past the trained context) changes nothing."""
    model = tiny_model("gpt")
    plain, _ = model(ids)
    shifted = torch.arange(ids.shape[1]).expand_as(ids) + 5000
    moved, _ = model(ids, position_ids=shifted)
    torch.testing.assert_close(moved, plain, atol=1e-4, rtol=0)


def test_output_head_is_tied_to_the_embedding() -> None:
    model = tiny_model("gpt")
    assert model.lm_head.weight is model.wte.weight


def test_checkpoint_round_trip_rebuilds_the_same_model(tmp_path: Path, ids: torch.Tensor) -> None:
    model = tiny_model("gpt", seed=3)
    path = save_checkpoint(tmp_path / "m.pt", {
        "arch": "gpt", "model_config": dataclasses.asdict(model.config),
        "tokenizer": {"vocab_size": VOCAB}, "model": model.state_dict(), "step": 7})
    loaded = load_checkpoint(path)
    assert loaded.arch == "gpt" and loaded.step == 7
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids)[0], model(ids)[0], atol=0, rtol=0)


@pytest.mark.parametrize("content", [None, b"not a checkpoint", "foreign"],
                         ids=["missing", "garbage", "foreign-torch-file"])
def test_a_bad_checkpoint_raises_model_error_naming_the_path(tmp_path: Path,
                                                             content: object) -> None:
    path = tmp_path / "bad.pt"
    if content == "foreign":
        torch.save({"weights": torch.zeros(2)}, path)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelError, match=r"bad\.pt") as caught:
        load_checkpoint(path)
    assert "\n" not in str(caught.value)


def test_build_model_rejects_unknown_arch_and_bad_config() -> None:
    with pytest.raises(ModelError, match="unknown architecture"):
        build_model("transformerxl", {})
    with pytest.raises(ModelError, match="invalid gpt"):
        build_model("gpt", {"n_embd": 30, "n_head": 4})


def test_every_size_the_settings_accept_has_a_shape() -> None:
    """`[train] size` and `--size` offer exactly the sizes gpt.py can build."""
    from models.core.settings import MODEL_SIZES  # noqa: PLC0415

    assert tuple(SIZES) == MODEL_SIZES
    for size in MODEL_SIZES:
        config = gpt_config(size, vocab_size=100)
        assert config.n_embd % config.n_head == 0
