"""The committed tiny models (tests/fixtures/models/) equal what the export makes today.

The torch-free CI job tests the live path on those committed files; were they stale (an
older export format, an older vocabulary), it would test an engine against models the
export no longer writes. Each one is rebuilt here from its fixed seed and compared: the
same card (all but the export time, so the same format version) and the same logits on a
fixed input. After a change to the export, rebuild them with
``python tests/fixtures/make_tiny_models.py``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import make_tiny_models  # tests/conftest.py puts tests/fixtures on the path
import numpy as np
import pytest

from engine.cache import window_feeds
from engine.model import LoadedModel, load_model
from models.core.model_card import FORMAT_VERSION

pytestmark = pytest.mark.torch

TOLERANCE = 1e-5


def _card(model: LoadedModel) -> dict[str, Any]:
    card = dataclasses.asdict(model.card)
    card.pop("exported_at")  # the one field that differs from one build to the next
    return card


def _logits(model: LoadedModel) -> np.ndarray:
    """Logits ``[S, V]`` of a fixed window of valid token ids, from an empty cache."""
    vocab = model.tokenizer.vocab_size
    ids = np.random.default_rng(7).integers(4, vocab, size=48)
    (logits,) = model.session.run(["logits"], window_feeds(model.card.cache, ids))
    return logits[0]


def test_every_committed_file_is_a_known_model() -> None:
    committed = {p.name for p in make_tiny_models.COMMITTED.glob("*")}
    assert committed == {spec.file for spec in make_tiny_models.MODELS.values()}


@pytest.mark.parametrize("name", list(make_tiny_models.MODELS))
def test_the_committed_model_is_current(name: str, tiny_model_dir: Path) -> None:
    pytest.importorskip("torch", reason="the models are rebuilt with torch (train extra)")
    pytest.importorskip("music21", reason="the int8 export's check tokenizes music21 pieces")
    spec = make_tiny_models.MODELS[name]
    fresh_path = tiny_model_dir / spec.file  # the session's own build, when one was made
    if not fresh_path.exists():
        make_tiny_models.build(name, tiny_model_dir)
    fresh, committed = load_model(fresh_path), load_model(spec.committed)
    hint = f"{spec.committed} is stale: python tests/fixtures/make_tiny_models.py {name}"
    assert committed.card.format_version == FORMAT_VERSION, hint
    assert _card(committed) == _card(fresh), hint
    np.testing.assert_allclose(_logits(committed), _logits(fresh), rtol=0, atol=TOLERANCE,
                               err_msg=hint)
