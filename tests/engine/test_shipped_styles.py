"""The models that ship in ``models/pretrained/``: each loads, describes itself and plays.

These are the files a new user gets with ``pip install .``; nothing here is built in a
fixture. A promised style that no shipped file plays (by its own file or by a style token
of the conditioned model) fails: it is what ``melodyd --style romantic`` needs.
"""

from __future__ import annotations

import pytest

from engine.decoder import StyleDecoder
from engine.model import PRETRAINED_DIR, installed_styles, load_model
from models.analysis.primes import fur_elise_prime
from models.core.protocol.messages import GenerateRequest, SamplingParams
from models.core.settings import EngineSettings, load_settings

# The styles the README and the issue promise; the recipe may ship more.
REQUIRED = ("baroque", "folk", "pop", "renaissance", "romantic")
SHIPPED = sorted(installed_styles(PRETRAINED_DIR))


def _styles_played() -> set[str]:
    played = set()
    for path in installed_styles(PRETRAINED_DIR).values():
        model = load_model(path, EngineSettings(intra_op_threads=1))
        played |= {model.style, *model.tokenizer.style_slots}
    return played


def test_the_promised_styles_and_the_default_are_played() -> None:
    played = _styles_played()
    for style in (*REQUIRED, load_settings().styles.default):
        assert style in played, f"no model in {PRETRAINED_DIR} plays {style}"


def test_shipped_models_fit_in_the_repository_budget() -> None:
    total = sum(path.stat().st_size for path in PRETRAINED_DIR.iterdir() if path.is_file())
    assert total < 60e6, f"models/pretrained holds {total / 1e6:.1f} MB (budget 60 MB)"


@pytest.fixture(scope="module", params=SHIPPED)
def shipped(request: pytest.FixtureRequest):
    return load_model(PRETRAINED_DIR / f"{request.param}.onnx",
                      EngineSettings(intra_op_threads=1))


def test_a_shipped_model_describes_itself(shipped) -> None:
    card = shipped.card
    assert card.style == shipped.path.stem
    assert card.arch == "gpt"
    assert card.quantization in ("none", "int8")
    training = card.training
    assert training["corpus"]
    assert training["pieces"]["train"] > 0
    if shipped.tokenizer.style_slots:
        # A model trained on the named corpora names each with its licence (CC BY asks
        # for attribution; POP909's songs are commercial pop).
        corpora = training["corpora"]
        assert corpora and all(info["licence"] != "unknown" for info in corpora.values())
        assert "commercial" in corpora["pop909"]["licence"]
    assert 1.0 < training["metrics"]["perplexity"] < 20.0
    assert shipped.context_length >= 512


def test_a_shipped_model_continues_fur_elise_with_valid_notes(shipped) -> None:
    prime = fur_elise_prime()
    start = prime.length
    bars = 4
    request = GenerateRequest(seed=prime.notes, start_beat=start, bars=bars,
                              time_signature=prime.time_signature,
                              sampling=SamplingParams(seed=7, temperature=0.9, top_p=0.95))
    decoder = StyleDecoder(shipped, EngineSettings(intra_op_threads=1), allow_eos=False)
    generation = decoder.start("test", request)
    notes = []
    while not generation.done:
        decoder.step([generation])
        notes.extend(generation.drain_notes())
    assert generation.reason in ("complete", "max_tokens")
    assert len(notes) >= 4, f"{shipped.style}: only {len(notes)} notes in {bars} bars"
    end = start + bars * prime.bar_length
    step = 1.0 / shipped.tokenizer.settings.positions_per_beat
    for note in notes:
        assert start - 1e-6 <= note.onset < end, note
        assert abs(note.onset / step - round(note.onset / step)) < 1e-6, note
        assert 21 <= note.pitch <= 108, note
        assert 1 <= note.velocity <= 127
        assert note.duration > 0
    # A model that learnt music repeats pitches of its key; random weights rarely do.
    assert len({n.pitch for n in notes}) < len(notes)
